"""Complex arrays (issue 16): norm-based rules use |z|; rules on values refuse complex, naming the array.

Per rule family (documented in the README's rule notes):

- norm-based rules (gradient clipping by a norm or RMS, AGC, AutoClip, ZClip, record_norms,
  and the norm constraints max_norm / min_max_norm / unit_norm) treat a complex element as
  its modulus: the factor applied to ``z`` is the one applied to ``|z|`` (phase kept);
- rules that compare, clamp, threshold or rank the values themselves (clip_by_value,
  clip_weights, non_neg, soft / MCP thresholding, every pruning rule, clip_per_example)
  raise ``TypeError`` naming the array: before, they cast to float32 and silently dropped
  the imaginary parts.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradclip_core as gc
import gradclip_core.backend as gcb

from .util import NAMESPACES, to_np, to_xp

SHAPES = [(5, 3), (7,), (), (0, 4), (2, 3, 2)]

NORM_RULES = {
    "global": lambda: gc.clip_by_global_norm(1.0),
    "global-torch": lambda: gc.clip_by_global_norm(1.0, semantics="torch"),
    "global-optax": lambda: gc.clip_by_global_norm(1.0, semantics="optax"),
    "global-keras": lambda: gc.clip_by_global_norm(1.0, semantics="keras"),
    "global-inf": lambda: gc.clip_by_global_norm(1.0, ord="inf"),
    "global-l1": lambda: gc.clip_by_global_norm(1.0, ord=1),
    "norm": lambda: gc.clip_by_norm(1.0),
    "norm-optax": lambda: gc.clip_by_norm(1.0, semantics="optax"),
    "norm-keras": lambda: gc.clip_by_norm(1.0, semantics="keras"),
    "block-rms": lambda: gc.clip_by_block_rms(0.3),
    "update-rms": lambda: gc.clip_update_rms(0.3),
    "agc": lambda: gc.adaptive_clip(0.01, axis="out_first"),
    "autoclip": lambda: gc.autoclip(50.0, 4),
    "zclip": lambda: gc.zclip(warmup_steps=1, max_norm=1.0),
    "record": lambda: gc.record_norms(3),
    "adagc": lambda: gc.adagc(warmup_steps=1, lambda_abs=0.5),
}
WEIGHT_RULES = {
    "max-norm": lambda: gc.max_norm(0.5, axis="out_first"),
    "min-max-norm": lambda: gc.min_max_norm(0.5, 1.0, axis="out_first"),
    "unit-norm": lambda: gc.unit_norm(axis="out_first"),
}
REAL_ONLY = {
    "clip_by_value": (lambda: gc.clip_by_value(1.0), "update"),
    "clip_weights": (lambda: gc.clip_weights(1.0), "project"),
    "non_neg": (lambda: gc.non_neg(), "project"),
    "soft_threshold": (lambda: gc.soft_threshold(0.1), "project"),
    "mcp_threshold": (lambda: gc.mcp_threshold(0.1, 3.0), "project"),
    "magnitude_prune": (lambda: gc.magnitude_prune(0.5), "project"),
    "global_magnitude_prune": (lambda: gc.global_magnitude_prune(0.5), "update"),
    "random_prune": (lambda: gc.random_prune(0.5), "project"),
    "ln_structured_prune": (lambda: gc.ln_structured_prune(0.5, axis="out_first"), "project"),
    "nm_prune": (lambda: gc.nm_prune(2, 4, axis=-1), "project"),
}


def _complex(seed: int, scale: float = 3.0) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, scale, s) + 1j * rng.normal(0, scale, s)).astype(np.complex64) for s in SHAPES]


def _same_factors(z: list, out_z: list, m: list, out_m: list) -> None:
    """``out_z == z * (out_m / m)``: the complex result is the real one's factor applied to ``z``."""
    for a, b, c, d in zip(z, out_z, m, out_m):
        assert b.dtype == a.dtype
        live = c > 0
        np.testing.assert_allclose(b[live], a[live] * (d[live] / c[live]), rtol=3e-6, atol=1e-7)


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("name", sorted(NORM_RULES))
def test_norm_rules_act_on_the_modulus(xp, name):
    z = _complex(0)
    m = [np.abs(a).astype(np.float32) for a in z]
    rule = NORM_RULES[name]()
    zx, mx = to_xp(xp, z), to_xp(xp, m)
    out_z, _, info_z = rule.update(zx, rule.init(zx), zx)
    out_m, _, info_m = rule.update(mx, rule.init(mx), mx)
    assert set(info_z) == set(info_m)
    for k in info_z:
        np.testing.assert_allclose(float(info_z[k]), float(info_m[k]), rtol=2e-6)
    _same_factors(z, to_np(out_z), m, to_np(out_m))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_issue_example_and_complex128(xp):
    rule = gc.clip_by_global_norm(1.0)
    for dtype, acc in ((np.complex64, np.float32), (np.complex128, np.float64)):
        g = to_xp(xp, [np.array([3 + 4j, 0], dtype)])
        out, _, info = rule.update(g, rule.init(g))
        assert float(info["norm"]) == 5.0 and np.asarray(info["norm"]).dtype == acc
        np.testing.assert_allclose(to_np(out)[0], [0.6 + 0.8j, 0], rtol=1e-6)
    mixed = to_xp(xp, [np.array([3 + 4j], np.complex64), np.array([12.0], np.float32)])  # sqrt(25 + 144) = 13
    _, _, info = rule.update(mixed, rule.init(mixed))
    assert float(info["norm"]) == 13.0


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("name", sorted(WEIGHT_RULES))
def test_norm_constraints_act_on_the_modulus(xp, name):
    z = [a for a in _complex(1) if a.ndim >= 2]
    m = [np.abs(a).astype(np.float32) for a in z]
    rule = WEIGHT_RULES[name]()
    out_z, _, _ = rule.project(to_xp(xp, z), rule.init([]))
    out_m, _, _ = rule.project(to_xp(xp, m), rule.init([]))
    _same_factors(z, to_np(out_z), m, to_np(out_m))


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("name", sorted(REAL_ONLY))
def test_value_rules_refuse_complex_and_name_the_array(xp, name):
    make, where = REAL_ONLY[name]
    rule = make()
    w = to_xp(xp, [np.ones((4, 4), np.float32), np.ones((4, 4), np.complex64)])
    state = rule.init(w)
    call = (lambda: rule.update(w, state, w)) if where == "update" else (lambda: rule.project(w, state))
    with pytest.raises(TypeError, match=rf"{name}: array 1 is .*complex64.*defined for real arrays only"):
        call()
    with gcb.array_names(["encoder.weight", "decoder.weight"]), pytest.raises(TypeError, match="'decoder.weight'"):
        call()


def test_per_example_clipping_refuses_complex():
    g = [np.ones((3, 2), np.complex64)]
    with pytest.raises(TypeError, match="clip_per_example: array 0 is complex64"):
        gc.clip_per_example(g, 1.0)


def test_restricted_rules_name_the_arrays_as_the_caller_knows_them():
    # A rule restricted to some arrays (gc.on, the pruning default "weights") sees a subset:
    # its errors still name the caller's array (position or name), not the subset position.
    w = [np.ones(3, np.float32), np.ones(2, np.float32), np.ones((2, 2), np.complex64)]
    rule = gc.magnitude_prune(0.5)  # acts on rank >= 2 only: the third array
    with pytest.raises(TypeError, match="magnitude_prune: array 2 is complex64"):
        rule.project(w, rule.init(w))
    with gcb.array_names(["b1", "b2", "kernel"]), pytest.raises(TypeError, match="magnitude_prune: 'kernel' is"):
        rule.project(w, rule.init(w))
    assert not gc.on(gc.non_neg(), "weights").has_update and gc.on(gc.non_neg(), "weights").has_project
