"""Update clipping (``Rule.on_update``): Clippy and Levanter's historical update-norm clip, against their references.

``shrink_by_references`` below is the reference's function
(``tensorflow_recommenders/experimental/optimizers/clippy_adagrad.py``) written in
NumPy, with the weights as its one reference: ``max_delta = absolute + |w| * relative``;
``per_element = where(delta == 0, 1, divide_no_nan(max_delta, |delta|))``;
``scale = min(1, reduce_min(per_element))``; ``delta * scale``.

``LevanterRef`` is ``levanter``'s ``clip_update_by_historical_norm`` ``update_fn``
written in NumPy float32 (``jnp.mean`` / ``jnp.std`` with ``where=valid``, the
``max(2, L // 2)`` warm-up, ``max(std, 1e-6)``, the unclipped norm pushed to the ring).
"""

import math

import numpy as np
import pytest

import gradclip_core as gc

from .util import NAMESPACES, to_np, to_xp


def shrink_by_references(delta, w, relative, absolute):
    delta = np.asarray(delta, np.float32)
    max_delta = np.float32(absolute) + np.abs(np.asarray(w, np.float32)) * np.float32(relative)
    a = np.abs(delta)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(a == 0, np.float32(0), max_delta / np.where(a == 0, np.float32(1), a))  # divide_no_nan
    per_element = np.where(delta == 0, np.float32(1), ratio)
    scale = np.minimum(np.float32(1), per_element.min() if per_element.size else np.float32(np.inf))
    return delta * scale, np.float32(scale)


class LevanterRef:
    def __init__(self, rolling_interval_length=128, sigma_factor=3.0):
        self.L, self.sigma = rolling_interval_length, sigma_factor
        self.norms = np.zeros(self.L, np.float32)
        self.valid = np.zeros(self.L, bool)
        self.idx, self.count = 0, 0

    def update(self, updates):
        norm = np.float32(np.sqrt(sum(np.sum(np.asarray(u, np.float64) ** 2) for u in updates)))
        can_clip = self.count >= max(2, self.L // 2)
        v = self.norms[self.valid]
        mean = np.float32(v.mean()) if v.size else np.float32(np.nan)
        std = np.float32(v.std()) if v.size else np.float32(np.nan)
        threshold = mean + np.float32(self.sigma) * max(std, np.float32(1e-6))
        max_norm = threshold if can_clip else np.float32(np.inf)
        scale = max_norm / max(norm, np.float32(1e-6)) if norm > max_norm else np.float32(1.0)
        self.norms[self.idx], self.valid[self.idx] = norm, True
        self.idx, self.count = (self.idx + 1) % self.L, min(self.count + 1, self.L)
        return [np.asarray(u, np.float32) * np.float32(scale) for u in updates], np.float32(scale), norm, max_norm


def _arrays(rng, scale=1.0):
    shapes = [(5, 4), (7,), (), (0, 3), (2, 3, 3)]
    return [rng.normal(0.0, scale, s).astype(np.float32) for s in shapes]


# ----------------------------------------------------------------------------------- clippy


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("relative, absolute", [(0.1, 1e-7), (0.5, 1e-2), (0.0, 0.05), (1.0, 0.0)])
def test_clippy_matches_the_reference(xp, relative, absolute):
    rng = np.random.default_rng([3, int(relative * 10), int(absolute * 1e7)])
    rule = gc.clippy(relative, absolute)
    for step in range(4):
        w = _arrays(rng)
        delta = _arrays(rng, 10.0 ** (step - 2))  # 0.01 .. 10: unclipped to heavily clipped
        delta[1][2] = 0.0  # a zero element never decides
        out, _, info = rule.update(to_xp(xp, delta), rule.init(to_xp(xp, w)), to_xp(xp, w))
        expected = [shrink_by_references(d, p, relative, absolute) for d, p in zip(delta, w)]
        for got, (want, _) in zip(to_np(out), expected):
            np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
        scales = [s for _, s in expected]
        assert float(info["min_scale"]) == pytest.approx(min(scales), rel=2e-7)
        assert float(info["clipped_fraction"]) == pytest.approx(sum(s < 1 for s in scales) / len(scales))


def test_clippy_bounds_every_element_and_keeps_the_direction():
    rng = np.random.default_rng(0)
    w, delta = _arrays(rng), _arrays(rng, 5.0)
    rule = gc.clippy(0.2, 1e-3)
    out, _, info = rule.update(delta, rule.init(w), w)
    for d, o, p in zip(delta, out, w):
        assert np.all(np.abs(o) <= (1e-3 + 0.2 * np.abs(p)) * (1 + 1e-6))  # the bound, up to rounding
        if d.size:
            s = (o.ravel() @ d.ravel()) / max(d.ravel() @ d.ravel(), 1e-30)
            np.testing.assert_allclose(o, d * np.float32(s), rtol=1e-6)  # one factor per array
    assert 0 < float(info["min_scale"]) < 1


def test_clippy_leaves_small_updates_bit_for_bit():
    w = [np.array([1.0, -2.0, 0.0], np.float32)]
    delta = [np.array([0.05, -0.2, 0.0], np.float32)]  # 0.05 <= 0.1 + 1e-7, 0.2 <= 0.2 + 1e-7
    rule = gc.clippy(0.1, 1e-7)
    out, _, info = rule.update(delta, rule.init(w), w)
    assert out[0].tobytes() == delta[0].tobytes()
    assert float(info["min_scale"]) == 1.0 and float(info["clipped_fraction"]) == 0.0


def test_clippy_zero_weight_and_zero_absolute_stops_the_array():
    w = [np.array([0.0, 1.0], np.float32), np.array([1.0], np.float32)]
    delta = [np.array([0.5, 0.0], np.float32), np.array([0.01], np.float32)]
    rule = gc.clippy(0.5, 0.0)
    out, _, info = rule.update(delta, rule.init(w), w)
    assert out[0].tolist() == [0.0, 0.0] and out[1].tolist() == [pytest.approx(0.01)]
    assert float(info["min_scale"]) == 0.0 and float(info["clipped_fraction"]) == 0.5


def test_clippy_nonfinite_updates():
    w = [np.ones(3, np.float32)]
    nan = [np.array([np.nan, 2.0, 0.01], np.float32)]
    rule = gc.clippy(0.5, 0.0)
    out, _, _ = rule.update(nan, rule.init(w), w)  # NaN takes no part in the scale: 2.0 decides (s = 0.25)
    assert np.isnan(out[0][0]) and out[0][1:].tolist() == [0.5, pytest.approx(0.0025)]
    skip = gc.clippy(0.5, 0.0, nonfinite="skip")
    out, state, info = skip.update(nan, skip.init(w), w)
    assert out[0].tolist() == [0.0, 0.0, 0.0] and int(info["skipped"]) == 1 and state == skip.init(w)
    with pytest.raises(FloatingPointError):
        gc.clippy(nonfinite="raise").update(nan, gc.EmptyState(), w)


def test_clippy_needs_the_weights_and_flags_the_update():
    rule = gc.clippy()
    assert rule.on_update and rule.needs_params and not rule.has_project
    with pytest.raises(ValueError, match="needs the current parameters"):
        rule.update([np.ones(2, np.float32)], rule.init([]))
    assert gc.from_config(rule.config).config == rule.config
    assert repr(rule) == "clippy(relative=0.1, absolute=1e-07, nonfinite='propagate')"


@pytest.mark.parametrize("kwargs, name", [
    ({"relative": -0.1}, "relative"), ({"relative": math.inf}, "relative"), ({"absolute": -1.0}, "absolute"),
    ({"absolute": math.nan}, "absolute"), ({"relative": "0.1"}, "relative"), ({"nonfinite": "ignore"}, "nonfinite"),
])
def test_clippy_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        gc.clippy(**kwargs)


# ------------------------------------------------------------------------- clip_update_norm


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("history, sigma", [(8, 3.0), (4, 1.0), (2, 0.5)])
def test_clip_update_norm_matches_levanter(xp, history, sigma):
    rng = np.random.default_rng([history, int(sigma * 10)])
    rule = gc.clip_update_norm(sigma, history)  # default min_history: Levanter's max(2, L // 2)
    ref = LevanterRef(history, sigma)
    state = rule.init(to_xp(xp, _arrays(rng)))
    clipped = 0
    for spread in [1, 1.2, 0.9, 1.1, 8.0, 1.0, 0.8, 30.0, 1.0, 1.3, 12.0, 1.0]:
        delta = _arrays(rng, spread)
        out, state, info = rule.update(to_xp(xp, delta), state)
        want, scale, norm, bound = ref.update(delta)
        for got, w in zip(to_np(out), want):
            np.testing.assert_allclose(got, w, rtol=1e-6, atol=0)
        assert float(info["norm"]) == pytest.approx(float(norm), rel=1e-6)
        assert float(info["scale"]) == pytest.approx(float(scale), rel=1e-6)
        assert float(info["threshold"]) == pytest.approx(float(bound), rel=1e-6)
        assert int(info["clipped"]) == int(scale < 1)
        clipped += int(info["clipped"])
    assert clipped >= 2  # the spikes were clipped
    assert int(np.asarray(state.count)) == history  # the ring is full


def test_clip_update_norm_history_one_clips_against_the_last_norm():
    """Levanter never clips with L = 1 (it needs 2 norms in a ring of 1); the default here caps the warm-up at 1."""
    rule = gc.clip_update_norm(0.0, 1)
    state = rule.init([np.zeros(1, np.float32)])
    out, state, info = rule.update([np.array([2.0], np.float32)], state)
    assert math.isinf(float(info["threshold"])) and out[0].tolist() == [2.0]
    out, state, info = rule.update([np.array([5.0], np.float32)], state)
    assert out[0].tolist() == [pytest.approx(2.0)] and int(info["clipped"]) == 1  # bound 2 + 0 * 1e-6


def test_clip_update_norm_default_warmup_is_levanters():
    rule = gc.clip_update_norm(history=128)
    state = rule.init([np.zeros(1, np.float32)])
    for step in range(64):  # 64 = max(2, 128 // 2) norms are needed before the clip acts
        _, state, info = rule.update([np.array([1.0 + step % 2], np.float32)], state)
        assert math.isinf(float(info["threshold"]))
    _, state, info = rule.update([np.array([100.0], np.float32)], state)
    assert int(info["clipped"]) == 1 and float(info["threshold"]) == pytest.approx(1.5 + 3 * 0.5, rel=1e-6)


def test_clip_update_norm_keeps_nonfinite_norms_out_of_the_history():
    rule = gc.clip_update_norm(1.0, history=4, min_history=2)
    state = rule.init([np.zeros(2, np.float32)])
    for n in (1.0, 2.0):
        _, state, _ = rule.update([np.array([n, 0.0], np.float32)], state)
    before = [np.asarray(x).copy() for x in state]
    out, state, info = rule.update([np.array([np.nan, 1.0], np.float32)], state)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, state))  # NaN not pushed
    assert np.isnan(out[0][0])
    out, state, info = rule.update([np.array([30.0, 0.0], np.float32)], state)  # still clips: mean 1.5, std 0.5
    assert out[0].tolist() == [pytest.approx(2.0), 0.0] and float(info["threshold"]) == pytest.approx(2.0)
    skip = gc.clip_update_norm(1.0, history=4, nonfinite="skip")
    st = skip.init([np.zeros(1, np.float32)])
    out, st2, info = skip.update([np.array([np.inf], np.float32)], st)
    assert out[0].tolist() == [0.0] and int(info["skipped"]) == 1 and int(np.asarray(st2.count)) == 0


def test_clip_update_norm_flags_and_config():
    rule = gc.clip_update_norm(2.0, 16)
    assert rule.on_update and not rule.needs_params and not rule.has_project
    assert gc.from_config(rule.config).config == rule.config
    assert isinstance(rule.init([np.zeros(1, np.float32)]), gc.NormHistory)


@pytest.mark.parametrize("kwargs, name", [
    ({"sigma": -1.0}, "sigma"), ({"history": 0}, "history"), ({"history": 2.5}, "history"), ({"history": None}, "history"),
    ({"history": 4, "min_history": 5}, "min_history"), ({"min_history": 0}, "min_history"),
    ({"min_history": True}, "min_history"), ({"nonfinite": "nan"}, "nonfinite"),
])
def test_clip_update_norm_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        gc.clip_update_norm(**kwargs)


# ------------------------------------------------------------------------------ composition


def test_chain_keeps_update_rules_apart_from_gradient_rules():
    both = gc.chain(gc.clippy(), gc.clip_update_norm())
    assert both.on_update and both.needs_params
    with_constraint = gc.chain(gc.clippy(), gc.non_neg())  # a weight rule has no update part: fine
    assert with_constraint.on_update and with_constraint.has_project
    assert not gc.chain(gc.clip_by_global_norm(1.0), gc.non_neg()).on_update
    with pytest.raises(ValueError, match="clippy.*clip_by_global_norm|on the gradients"):
        gc.chain(gc.clip_by_global_norm(1.0), gc.clippy())


def test_chain_of_update_rules_runs_both():
    w = [np.full(4, 1.0, np.float32)]
    rule = gc.chain(gc.clippy(0.5, 0.0), gc.clip_update_norm(1.0, history=2, min_history=1))
    state = rule.init(w)
    _, state, _ = rule.update([np.full(4, 0.1, np.float32)], state, w)
    out, state, info = rule.update([np.full(4, 2.0, np.float32)], state, w)  # clippy: 0.5 each; norm 1 > 0.2 + 1e-6
    assert float(info["clippy/min_scale"]) == 0.25 and int(info["clip_update_norm/clipped"]) == 1
    np.testing.assert_allclose(out[0], np.full(4, 0.1, np.float32) * np.float32(1 + 1e-6 * 5), rtol=1e-6)


def test_on_keeps_the_flag():
    rule = gc.on(gc.clippy(), gc.Params(min_ndim=2))
    assert rule.on_update and rule.needs_params
    w = [np.ones((2, 2), np.float32), np.ones(3, np.float32)]
    out, _, _ = rule.update([np.full((2, 2), 5.0, np.float32), np.full(3, 5.0, np.float32)], rule.init(w), w)
    assert np.allclose(out[0], 0.1) and out[1].tolist() == [5.0, 5.0, 5.0]  # the vector is not selected


def test_rule_rejects_a_non_bool_on_update():
    with pytest.raises(ValueError, match="on_update"):
        gc.Rule(on_update=1)
