"""Per-example (DP-SGD) clipping in the core, against the published formulas written in NumPy.

- Opacus 1.6 ``DPOptimizer``: ``per_param_norms = [g.reshape(len(g), -1).norm(2, -1)]``,
  ``per_sample_norms = stack(per_param_norms, 1).norm(2, 1)``,
  ``factor = (max_grad_norm / (per_sample_norms + 1e-6)).clamp(max=1)``,
  ``summed = einsum("i,i...", factor, g)``, ``grad = (summed + N(0, (sigma*C)^2)) / expected_batch_size``.
- optax 0.2.8 ``per_example_global_norm_clip``: ``multipliers = nan_to_num(min(C / norms, 1), nan=1)``,
  ``tensordot(multipliers, g, axes=1)`` (the *sum*); ``differentially_private_aggregate``
  adds ``noise_std = C * sigma`` to it and divides by the batch size.

The real optax and Opacus functions are compared in tests/parity/test_per_example.py.
"""


import numpy as np
import pytest

import gradclip_core as gc

from ..fixtures import clip_per_example_reference as ref
from .util import NAMESPACES, to_np, to_xp

SHAPES = [(3, 4), (5,), (), (0, 2)]


def per_example(seed, B, scales):
    rng = np.random.default_rng(seed)
    out = []
    for s in SHAPES:
        g = rng.normal(size=(B,) + s)
        g = g * np.asarray(scales).reshape((B,) + (1,) * len(s))
        out.append(g.astype(np.float32))
    return out


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("sem", [None, "opacus", "optax"])
@pytest.mark.parametrize("C", [0.5, 3.0, 0.0])
def test_clip_and_mean_match_formulas(xp, sem, C):
    grads = per_example(0, 6, [0.01, 0.5, 1.0, 3.0, 0.0, 10.0])
    out, info = gc.clip_per_example(to_xp(xp, grads), C, semantics=sem)
    want, _ = ref(grads, C, sem or "canonical", denom=6)
    norms = np.sqrt(sum(np.sum(np.asarray(g, np.float64).reshape(6, -1) ** 2, axis=1) for g in grads))
    for o, w, g in zip(to_np(out), want, grads):
        assert o.shape == g.shape[1:] and o.dtype == np.float32
        np.testing.assert_allclose(o, w, rtol=2e-6, atol=1e-7)
    assert float(info["clipped_fraction"]) == pytest.approx(np.mean(norms > C))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_noise_is_added_to_the_sum(xp):
    grads = per_example(1, 4, [1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(5)
    noise = [rng.normal(size=g.shape[1:]).astype(np.float32) for g in grads]
    out, _ = gc.clip_per_example(to_xp(xp, grads), 1.5, noise_multiplier=0.7, noise=to_xp(xp, noise), batch_size=8)
    want, _ = ref(grads, 1.5, "canonical", noise, 0.7, denom=8)
    for o, w in zip(to_np(out), want):
        np.testing.assert_allclose(o, w, rtol=3e-6, atol=1e-7)
    out_sum, _ = gc.clip_per_example(to_xp(xp, grads), 1.5, reduction="sum")
    want_sum, _ = ref(grads, 1.5, "canonical")
    for o, w in zip(to_np(out_sum), want_sum):
        np.testing.assert_allclose(o, w, rtol=3e-6, atol=1e-7)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_seeded_noise_is_deterministic_and_standard_normal(xp):
    grads = [xp.asarray(np.zeros((2, 50000), np.float32))]
    a, _ = gc.clip_per_example(grads, 2.0, noise_multiplier=1.5, seed=7, counter=3, reduction="sum")
    b, _ = gc.clip_per_example(grads, 2.0, noise_multiplier=1.5, seed=7, counter=3, reduction="sum")
    c, _ = gc.clip_per_example(grads, 2.0, noise_multiplier=1.5, seed=7, counter=4, reduction="sum")
    z = np.asarray(a[0]) / 3.0
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert abs(np.mean(z**3)) < 0.05 and abs(np.mean(z**4) - 3) < 0.1  # skew 0, kurtosis 3
    assert abs(np.corrcoef(z, np.asarray(c[0]) / 3.0)[0, 1]) < 0.02


def test_gaussian_noise_same_for_array_seed_and_int_seed():
    import array_api_compat.numpy as xp

    a = gc.gaussian_noise(xp, [(3, 3), (4,)], 123, 9)
    b = gc.gaussian_noise(xp, [(3, 3), (4,)], np.asarray(123, np.int32), np.asarray(9, np.int32))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0].ravel()[:4], a[1])  # arrays use different streams


def test_empty_batch():
    out, info = gc.clip_per_example([np.zeros((0, 3), np.float32)], 1.0)
    assert out[0].shape == (3,) and np.all(out[0] == 0) and float(info["clipped_fraction"]) == 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda g: gc.clip_per_example(g, -1.0), "max_norm"),
        (lambda g: gc.clip_per_example(g, 1.0, noise_multiplier=-1.0), "noise_multiplier"),
        (lambda g: gc.clip_per_example(g, 1.0, noise_multiplier=1.0), "seed"),
        (lambda g: gc.clip_per_example(g, 1.0, reduction="max"), "reduction"),
        (lambda g: gc.clip_per_example(g, 1.0, semantics="keras"), "semantics"),
        (lambda g: gc.clip_per_example(g + [np.zeros((3, 1), np.float32)], 1.0), "batch size"),
        (lambda g: gc.clip_per_example([np.float32(1.0)], 1.0), "batch axis"),
        (lambda g: gc.clip_per_example([], 1.0), "at least one"),
        (lambda g: gc.clip_per_example(g, 1.0, noise_multiplier=1.0, noise=[np.zeros(3)]), "noise"),
    ],
)
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call([np.ones((2, 4), np.float32)])
