"""AutoClip and the exact ring-buffer percentile, against the paper's algorithm and NumPy.

Reference (Seetharaman et al. 2020, github.com/pseeth/autoclip, transcribed)::

    grad_history.append(total_norm)
    clip_value = np.percentile(grad_history, clip_percentile)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_value)

The rule's history is a window of the last ``history`` norms (the paper's is unbounded),
so the reference below takes the percentile of ``grad_history[-history:]``; with a
window longer than the run it is the paper's list exactly.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradclip_core as gc
from gradclip_core.clip._history import percentile

from .util import NAMESPACES, to_np, to_xp


def norm_sequence(seed, steps=30):
    rng = np.random.default_rng(seed)
    norms = np.abs(rng.normal(1.0, 0.3, steps))
    norms[steps // 2] = 40.0  # a spike
    return norms


def grads_of_norm(n, rng):
    a, b = rng.normal(size=(3, 2)), rng.normal(size=(4,))
    s = n / math.sqrt(np.sum(a * a) + np.sum(b * b))
    return [(a * s).astype(np.float32), (b * s).astype(np.float32)]


def paper_reference(grads_seq, p, window, include_current=True, torch_eps=0.0):
    """Clip factors and thresholds of the paper's code (float64 host arithmetic)."""
    history, out = [], []
    for grads in grads_seq:
        n = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads))
        if include_current:
            history.append(n)
            thr = float(np.percentile(history[-window:], p))
        else:
            thr = float(np.percentile(history[-window:], p)) if history else math.inf
            history.append(n)
        scale = min(1.0, thr / (n + torch_eps)) if math.isfinite(thr) else 1.0
        out.append((thr, scale))
    return out


def run(rule, xp, grads_seq):
    state = rule.init(to_xp(xp, grads_seq[0]))
    res = []
    for grads in grads_seq:
        out, state, info = rule.update(to_xp(xp, grads), state)
        res.append((to_np(out), {k: float(v) for k, v in info.items()}))
    return res, state


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("p, window", [(10.0, 64), (50.0, 8), (90.0, 5), (0.0, 3), (100.0, 4), (37.5, 1)])
@pytest.mark.parametrize("include_current", [True, False])
def test_matches_paper_algorithm(xp, p, window, include_current):
    rng = np.random.default_rng(1)
    grads_seq = [grads_of_norm(n, rng) for n in norm_sequence(0)]
    got, _ = run(gc.autoclip(p, window, include_current=include_current), xp, grads_seq)
    ref = paper_reference(grads_seq, p, window, include_current)
    for step, ((out, info), (thr, scale), grads) in enumerate(zip(got, ref, grads_seq)):
        assert info["threshold"] == pytest.approx(thr, rel=2e-6), step
        assert info["scale"] == pytest.approx(scale, rel=2e-6), step
        for o, g in zip(out, grads):
            np.testing.assert_allclose(o, g * scale, rtol=3e-6, atol=1e-12)


def test_first_step_paper_vs_package_order():
    g = [np.array([3.0, 4.0], np.float32)]
    paper = gc.autoclip(10.0, 4)
    _, _, info = paper.update(g, paper.init(g))
    assert float(info["threshold"]) == 5.0 and float(info["scale"]) == 1.0
    pkg = gc.autoclip(10.0, 4, include_current=False)
    _, state, info = pkg.update(g, pkg.init(g))
    assert math.isinf(float(info["threshold"])) and float(info["scale"]) == 1.0
    assert int(state.count) == 1


def test_torch_semantics_is_clip_grad_norm_formula():
    rng = np.random.default_rng(2)
    grads_seq = [grads_of_norm(n, rng) for n in norm_sequence(3, 12)]
    got, _ = run(gc.autoclip(25.0, 16, semantics="torch"), NAMESPACES[0].values[0], grads_seq)
    ref = paper_reference(grads_seq, 25.0, 16, torch_eps=1e-6)
    for (out, info), (thr, scale) in zip(got, ref):
        assert info["scale"] == pytest.approx(scale, rel=2e-6)


def test_ring_buffer_window_and_state():
    rule = gc.autoclip(100.0, 3)  # the max of the last 3 norms
    g0 = [np.zeros(1, np.float32)]
    state = rule.init(g0)
    thresholds = []
    for n in [5.0, 1.0, 2.0, 3.0, 1.0]:
        _, state, info = rule.update([np.array([n], np.float32)], state)
        thresholds.append(float(info["threshold"]))
    assert thresholds == [5.0, 5.0, 5.0, 3.0, 3.0]
    assert isinstance(state, gc.NormHistory)
    assert state.count.dtype == np.int32 and state.norms.dtype == np.float32 and state.norms.shape == (3,)
    assert int(state.count) == 3 and int(state.index) == 2


def test_nonfinite_skip_keeps_state_and_propagate_poisons_window():
    g = [np.array([1.0], np.float32)]
    bad = [np.array([np.nan], np.float32)]
    skip = gc.autoclip(50.0, 2, nonfinite="skip")
    state = skip.init(g)
    _, state, _ = skip.update(g, state)
    out, state2, info = skip.update(bad, state)
    assert int(info["skipped"]) == 1 and np.all(out[0] == 0)
    assert int(state2.count) == int(state.count) and np.array_equal(state2.norms, state.norms)
    prop = gc.autoclip(50.0, 2)
    state = prop.init(g)
    for grads, expect_nan in [(bad, True), (g, True), (g, False)]:
        _, state, info = prop.update(grads, state)
        assert math.isnan(float(info["threshold"])) == expect_nan


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"percentile": 101}, "percentile"),
        ({"percentile": -1}, "percentile"),
        ({"history": 0}, "history"),
        ({"history": None}, "fixed-size"),
        ({"history": 2.5}, "history"),
        ({"method": "nearest"}, "method"),
        ({"semantics": "optax"}, "semantics"),
        ({"include_current": 1}, "include_current"),
        ({"nonfinite": "ignore"}, "nonfinite"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gc.autoclip(**kwargs)


def test_config_round_trip():
    rule = gc.autoclip(20.0, 7, include_current=False)
    assert gc.from_config(rule.config).config == rule.config


# ------------------------------------------------------------------ the percentile itself


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1e6, width=32), min_size=1, max_size=12),
    extra=st.integers(0, 4),
    # percentiles with up to 4 decimals are exact; longer ones fall back to a float32
    # position (documented in gradclip_core/_history.py) and may pick a neighbour.
    p=st.one_of(st.integers(0, 100).map(float), st.floats(0.0, 100.0).map(lambda x: round(x, 4))),
    method=st.sampled_from(["linear", "lower"]),
)
def test_percentile_matches_numpy(values, extra, p, method):
    import array_api_compat.numpy as xp

    v = np.asarray(values + [7.0] * extra, np.float32)  # junk beyond the valid entries
    valid = np.arange(v.size) < len(values)
    got = float(percentile(xp, v, valid, p, method))
    want = np.percentile(np.asarray(values, np.float64), p, method=method)
    if method == "lower":
        assert got == want  # an observed value, bit for bit
    else:
        # exact position for short decimals; a float32 position otherwise (t off by ~1e-7)
        gap = max(values) - min(values)
        assert got == pytest.approx(float(np.float32(want)), rel=3e-7, abs=1e-6 * gap + 1e-30)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_percentile_exact_index_and_empty(xp):
    v = xp.asarray(np.arange(11, dtype=np.float32))
    valid = xp.asarray(np.ones(11, bool))
    assert float(percentile(xp, v, valid, 70.0, "lower")) == 7.0  # 0.7 * 10 in float32 would floor to 6
    assert float(percentile(xp, v, valid, 99.9, "linear")) == pytest.approx(9.99)
    assert math.isnan(float(percentile(xp, v, xp.asarray(np.zeros(11, bool)), 50.0)))
