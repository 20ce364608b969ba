"""record_norms / suggest_threshold against NumPy's statistics of the recorded norms."""

import math

import numpy as np
import pytest

import gradclip_core as gc

from .util import NAMESPACES, rand_arrays, to_np, to_xp


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("steps, n_steps", [(16, 10), (5, 12), (1, 3)])
def test_statistics_of_last_window(xp, steps, n_steps):
    rule = gc.record_norms(steps)
    shapes = [(3, 4), (5,), ()]
    state = rule.init(to_xp(xp, rand_arrays(0, shapes)))
    norms = []
    for i in range(n_steps):
        grads = rand_arrays(i + 1, shapes, scale=float(i % 4 + 1))
        out, state, info = rule.update(to_xp(xp, grads), state)
        for o, g in zip(to_np(out), grads):
            assert np.array_equal(o, g)  # identity
        norms.append(float(info["norm"]))
    window = np.asarray(norms[-steps:], np.float64)
    stats = {k: float(v) for k, v in gc.suggest_threshold(state).items()}
    for q in (50, 90, 99):
        assert stats[f"p{q}"] == pytest.approx(np.percentile(window, q), rel=1e-6)
    assert stats["max"] == pytest.approx(window.max(), rel=1e-7)
    assert stats["mean"] == pytest.approx(window.mean(), rel=1e-6)
    assert stats["count"] == len(window) and stats["nonfinite"] == 0


def test_nonfinite_norms_are_left_out_and_counted():
    rule = gc.record_norms(8)
    state = rule.init([np.zeros(1, np.float32)])
    for n in [1.0, np.nan, 3.0, np.inf]:
        _, state, _ = rule.update([np.array([n], np.float32)], state)
    stats = gc.suggest_threshold(state, percentiles=[50, 99.9])
    assert float(stats["p50"]) == 2.0 and float(stats["max"]) == 3.0
    assert "p99.9" in stats and float(stats["count"]) == 2 and float(stats["nonfinite"]) == 2


def test_empty_history_is_nan():
    rule = gc.record_norms(4)
    stats = gc.suggest_threshold(rule.init([np.zeros(1, np.float32)]))
    assert all(math.isnan(float(stats[k])) for k in ("p50", "p90", "p99", "max", "mean"))
    assert float(stats["count"]) == 0


def test_finds_history_in_nested_states():
    rule = gc.chain(gc.record_norms(4), gc.clip_by_global_norm(1.0))
    g = [np.array([3.0, 4.0], np.float32)]
    _, state, _ = rule.update(g, rule.init(g))
    assert float(gc.suggest_threshold({"opt": (state, ())})["max"]) == 5.0
    with pytest.raises(ValueError, match="found 0"):
        gc.suggest_threshold(gc.clip_by_global_norm(1.0).init(g))
    two = gc.chain(gc.record_norms(4), gc.autoclip(10.0, 4))
    with pytest.raises(ValueError, match="found 2"):
        gc.suggest_threshold(two.init(g))


def test_validation():
    with pytest.raises(ValueError, match="steps"):
        gc.record_norms(0)
    with pytest.raises(ValueError, match="ord"):
        gc.record_norms(4, ord=3)
    state = gc.record_norms(2).init([np.zeros(1, np.float32)])
    with pytest.raises(ValueError, match="percentiles"):
        gc.suggest_threshold(state, percentiles=[120])
