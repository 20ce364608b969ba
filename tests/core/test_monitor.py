"""gc.monitor and gc.update_ratio: telemetry against NumPy formulas written out here."""

from __future__ import annotations

import numpy as np
import pytest

import gradclip_core as gc
from gradclip_core.backend import _primitives


def _norm(xs):
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in xs)))


def _grads(rng, scale):
    return [(rng.standard_normal((4, 3)) * scale).astype(np.float32), (rng.standard_normal(5) * scale).astype(np.float32)]


@pytest.mark.parametrize(
    "inner",
    [
        gc.clip_by_global_norm(1.0),
        gc.clip_by_norm(0.5),
        gc.clip_by_value(0.3),
        gc.adaptive_clip(0.05, axis="out_first"),
        gc.chain(gc.clip_by_value(2.0), gc.clip_by_global_norm(1.0)),
        gc.clip_by_global_norm(1.0, nonfinite="skip"),
    ],
    ids=["global", "per-array", "value", "agc", "chain", "skip"],
)
def test_norms_before_after_and_clip_rate(inner):
    """norm / norm/<i> / post_norm are the norms of the arrays in and out; clip_rate is the bias-corrected EMA."""
    rng = np.random.default_rng(0)
    rule = gc.monitor(inner, decay=0.8)
    w = _grads(rng, 1.0)
    state, ref_state = rule.init(w), inner.init(w)
    ema, weight = 0.0, 0.0
    for step, scale in enumerate([3.0, 0.01, 2.0, 0.02, float("nan")]):
        g = _grads(rng, scale)
        if step == 4:
            g[0][0, 0] = np.nan
        out, state, info = rule.update(g, state, params=w)
        ref_out, ref_state, ref_info = inner.update(g, ref_state, params=w)
        for a, b in zip(out, ref_out):  # the wrapped rule acts exactly as alone
            np.testing.assert_array_equal(a, b)
        pre, post = _norm(g), _norm(out)
        np.testing.assert_allclose(float(info["norm"]), pre, rtol=1e-6)
        for i, x in enumerate(g):
            np.testing.assert_allclose(float(info[f"norm/{i}"]), _norm([x]), rtol=1e-6)
        np.testing.assert_allclose(float(info["post_norm"]), post, rtol=1e-5)
        clipped = float(post < pre and np.isfinite(pre))
        assert float(info["clipped"]) == clipped
        ema, weight = 0.8 * ema + 0.2 * clipped, 0.8 * weight + 0.2
        np.testing.assert_allclose(float(info["clip_rate"]), ema / weight, rtol=1e-6)
        for k, v in ref_info.items():  # the wrapped rule's info, under its name (a chain's keys as they are)
            key = k if inner.name == "chain" else f"{inner.name}/{k}"
            np.testing.assert_array_equal(np.asarray(info[key]), np.asarray(v))
    assert int(state.count) == 5


def test_one_read_of_the_gradients(monkeypatch):
    """monitor(clip_by_global_norm) computes the per-array norms once: the clip reuses them."""
    calls = []
    real = _primitives._array_norms
    monkeypatch.setattr(_primitives, "_array_norms", lambda *a: calls.append(1) or real(*a))
    g = _grads(np.random.default_rng(1), 3.0)
    rule = gc.monitor(gc.clip_by_global_norm(1.0))
    rule.update(g, rule.init(g))
    assert len(calls) == 1
    calls.clear()
    gc.clip_by_global_norm(1.0).update(g, ())
    assert len(calls) == 1


def test_identity_and_options():
    g = _grads(np.random.default_rng(2), 1.0)
    rule = gc.monitor(per_array=False)
    out, _, info = rule.update(g, rule.init(g))
    assert all(a is b for a, b in zip(out, g))
    assert sorted(info) == ["clip_rate", "clipped", "norm", "post_norm"]
    assert float(info["clipped"]) == 0.0 and float(info["post_norm"]) == float(info["norm"])
    effect, _, _ = gc.monitor(gc.clip_by_global_norm(1.0)).update_effect(g, rule.init(g))
    assert type(effect).__name__ == "Scale"  # still one global scale: foldable into a fused optimizer


def test_config_round_trip_and_repr():
    rule = gc.monitor(gc.chain(gc.clip_by_value(1.0), gc.clip_by_global_norm(2.0)), per_array=False, decay=0.9)
    again = gc.from_config(rule.config)
    assert again.config == rule.config and repr(again) == repr(rule)
    assert repr(gc.monitor()) == "monitor(None, per_array=True, decay=0.99)"
    assert gc.from_config(gc.update_ratio(per_array=True).config).config == gc.update_ratio(per_array=True).config


def test_monitor_of_a_pruning_rule_projects():
    w = [np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5]
    rule = gc.monitor(gc.magnitude_prune(0.5))
    state = rule.init(w)
    out, state, info = rule.project(w, state)
    assert float(info["magnitude_prune/sparsity"]) == 0.5 and int(np.sum(out[0] == 0)) == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rule": "clip"}, "rule must be a gradclip Rule"), ({"decay": 1.0}, "decay must be a number in"),
     ({"decay": 0}, "decay must be"), ({"per_array": 1}, "per_array must be")],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gc.monitor(**kwargs)


def test_update_ratio():
    rng = np.random.default_rng(3)
    w = _grads(rng, 1.0)
    w.append(np.zeros(2, np.float32))  # zero weights: ratio inf where the update moves them, 0 where not
    delta = [x * np.float32(1e-3) for x in _grads(rng, 1.0)] + [np.array([0.0, 1e-3], np.float32)]
    rule = gc.update_ratio(per_array=True)
    out, _, info = rule.update(delta, rule.init(w), params=w)
    assert all(a is b for a, b in zip(out, delta))
    np.testing.assert_allclose(float(info["update_norm"]), _norm(delta), rtol=1e-6)
    np.testing.assert_allclose(float(info["weight_norm"]), _norm(w), rtol=1e-6)
    np.testing.assert_allclose(float(info["ratio"]), _norm(delta) / _norm(w), rtol=1e-6)
    for i in range(2):
        np.testing.assert_allclose(float(info[f"ratio/{i}"]), _norm([delta[i]]) / _norm([w[i]]), rtol=1e-6)
    assert float(info["ratio/2"]) == float("inf")
    _, _, info = rule.update([np.zeros(2, np.float32)], (), params=[np.zeros(2, np.float32)])
    assert float(info["ratio"]) == 0.0
    assert gc.update_ratio().on_update and gc.update_ratio().needs_params
    with pytest.raises(ValueError, match="update_ratio"):
        gc.update_ratio().update(delta, ())
    with pytest.raises(ValueError, match="per_array must be"):
        gc.update_ratio(per_array="yes")


def test_names_for_per_array_keys():
    from gradclip_core.backend import name_info

    info = {"norm": 1, "norm/1": 2, "chain/x/norm/0": 3, "ratio/0": 4, "clip_by_norm/scale": 5}
    assert list(name_info(info, ["w", "b"])) == ["norm", "norm/b", "chain/x/norm/w", "ratio/w", "clip_by_norm/scale"]
