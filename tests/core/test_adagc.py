"""AdaGC against the paper's Algorithm 1 (arXiv 2502.11034), written out in NumPy below.

``AdaGCPaper`` is the algorithm as the paper states it, in float64 on the host: a
warm-up of global-norm clipping whose per-array clipped norms set ``gamma`` to their
running minimum, then per-array clipping to ``lambda_rel * gamma`` with ``gamma`` an
EMA of the clipped norms (each norm recomputed from the clipped array, as written).
The rule computes in float32 and takes the clipped norm as ``h * ||g||``, so the
comparison is relative (a few float32 ulp per step, accumulated over the EMA).
pytorch-optimizer's ``AdaGC`` is compared in tests/torch/test_adagc.py.
"""

import math

import numpy as np
import pytest

import gradclip_core as gc

from .util import NAMESPACES, to_np, to_xp


class AdaGCPaper:
    """Algorithm 1: ``warmup_steps`` global-clip steps (``t < T_start``), then per-array relative clipping."""

    def __init__(self, lambda_abs=1.0, lambda_rel=1.05, beta=0.98, warmup_steps=100):
        self.lambda_abs, self.lambda_rel, self.beta, self.warmup_steps = lambda_abs, lambda_rel, beta, warmup_steps
        self.t = 0
        self.gamma = None  # gamma_0 = +inf: the first warm-up step sets it

    @staticmethod
    def _norm(x):
        return float(np.sqrt(np.sum(np.square(np.asarray(x, np.float64)))))

    def step(self, grads):
        """The clipped gradients (float64) and the factors ``h`` applied, one per array."""
        self.t += 1
        norms = [self._norm(g) for g in grads]
        if self.t <= self.warmup_steps:
            total = math.sqrt(sum(n * n for n in norms))
            h = 1.0 if total == 0 else min(self.lambda_abs / total, 1.0)
            hs = [h] * len(grads)
        else:
            hs = [1.0 if n == 0 else min(self.lambda_rel * gm / n, 1.0) for gm, n in zip(self.gamma, norms)]
        clipped = [h * np.asarray(g, np.float64) for h, g in zip(hs, grads)]
        c = [self._norm(x) for x in clipped]
        if self.t <= self.warmup_steps:
            self.gamma = c if self.gamma is None else [min(a, b) for a, b in zip(self.gamma, c)]
        else:
            self.gamma = [self.beta * gm + (1 - self.beta) * ci for gm, ci in zip(self.gamma, c)]
        return clipped, hs


SHAPES = [(5, 3), (7,), (), (2, 3, 2)]


def grad_sequence(seed, steps=40):
    """Per-step gradients: a slowly decaying scale, single-array spikes, a global spike and a dip."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        scale = 1.0 / (1.0 + 0.05 * t)
        g = [rng.normal(0.0, scale, s) for s in SHAPES]
        if t in (12, 13):
            g[1] = g[1] * 20.0  # one array spikes, the others are normal
        if t == 25:
            g = [x * 50.0 for x in g]  # everything spikes
        if t == 30:
            g[0] = g[0] * 0.01
        out.append([np.asarray(x, np.float32) for x in g])
    return out


CONFIGS = [
    dict(warmup_steps=5),
    dict(warmup_steps=1, lambda_rel=1.0, beta=0.9),
    dict(warmup_steps=8, lambda_abs=0.5, lambda_rel=1.2, beta=0.5),
    dict(warmup_steps=3, lambda_abs=100.0, beta=0.0),
]


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_matches_paper_algorithm(xp, cfg):
    ref = AdaGCPaper(**cfg)
    rule = gc.adagc(**cfg)
    seq = grad_sequence(0)
    state = rule.init(to_xp(xp, seq[0]))
    clipped_after_warmup = 0
    for t, grads in enumerate(seq):
        want, hs = ref.step(grads)
        out, state, info = rule.update(to_xp(xp, grads), state)
        for j, (a, b) in enumerate(zip(to_np(out), want)):
            np.testing.assert_allclose(a.astype(np.float64), b, rtol=3e-5, atol=1e-30, err_msg=f"step {t} array {j}")
        np.testing.assert_allclose(np.asarray(state.gamma, np.float64), ref.gamma, rtol=3e-5, err_msg=f"step {t}")
        assert int(info["warmup"]) == int(t < cfg["warmup_steps"])
        n_clipped = sum(h < 1 for h in hs)
        assert int(info["clipped"]) == n_clipped, t
        assert float(info["clipped_fraction"]) == pytest.approx(n_clipped / len(SHAPES))
        assert float(info["min_scale"]) == pytest.approx(min(hs), rel=3e-5)
        total = math.sqrt(sum(float(np.sum(np.square(g.astype(np.float64)))) for g in grads))
        assert float(info["norm"]) == pytest.approx(total, rel=1e-6)
        if t >= cfg["warmup_steps"]:
            clipped_after_warmup += n_clipped
    assert clipped_after_warmup >= 2  # the spikes were clipped per array: the comparison covered both phases


def test_per_array_relative_clipping():
    # After the warm-up one array spikes: only that array is scaled, to lambda_rel * gamma.
    rule = gc.adagc(lambda_rel=1.5, beta=0.5, warmup_steps=2)
    state = rule.init([np.zeros(2, np.float32)] * 2)
    for _ in range(2):
        g = [np.array([0.3, 0.4], np.float32), np.array([0.0, 0.2], np.float32)]
        _, state, info = rule.update(g, state)
    np.testing.assert_allclose(state.gamma, [0.5, 0.2], rtol=1e-6)  # global norm < 1: nothing clipped
    g = [np.array([3.0, 4.0], np.float32), np.array([0.0, 0.25], np.float32)]
    out, state, info = rule.update(g, state)
    np.testing.assert_allclose(out[0], [0.45, 0.6], rtol=1e-6)  # norm 5 -> 1.5 * 0.5
    np.testing.assert_allclose(out[1], [0.0, 0.25], rtol=1e-6)  # 0.25 <= 1.5 * 0.2: unchanged
    assert int(info["clipped"]) == 1 and float(info["clipped_fraction"]) == 0.5 and int(info["warmup"]) == 0
    np.testing.assert_allclose(state.gamma, [0.5 * 0.5 + 0.5 * 0.75, 0.5 * 0.2 + 0.5 * 0.25], rtol=1e-6)
    assert int(state.count) == 2  # saturated at warmup_steps


def test_state_layout_and_effect():
    rule = gc.adagc(warmup_steps=3)
    params = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32), np.zeros((), np.float32)]
    state = rule.init(params)
    assert isinstance(state, gc.AdaGCState)
    assert state.count.dtype == np.int32 and state.count.shape == ()
    assert state.gamma.dtype == np.float32 and state.gamma.shape == (3,)
    effect, _, _ = rule.update_effect([np.ones_like(p) for p in params], state)
    assert isinstance(effect, gc.Scale) and len(effect.factors) == 3
    assert all(tuple(f.shape) == () for f in effect.factors)


def test_zero_gradient_in_warmup_zeroes_the_array_later():
    # The paper's running minimum: a warm-up step with an all-zero gradient sets gamma to 0,
    # and the relative clip then scales that array to 0 for good (documented caveat).
    # eps > 0 (pytorch-optimizer's floors) lets lambda_rel * eps through instead.
    g0 = [np.array([1.0], np.float32), np.array([0.0], np.float32)]
    g1 = [np.array([1.0], np.float32), np.array([2.0], np.float32)]
    for eps, want in ((0.0, 0.0), (1e-3, 2.0 * 1.05 * 1e-3 / 2.0)):
        rule = gc.adagc(warmup_steps=1, eps=eps)
        _, state, _ = rule.update(g0, rule.init(g0))
        assert float(state.gamma[1]) == 0.0
        out, state, info = rule.update(g1, state)
        assert float(out[1][0]) == pytest.approx(want, rel=1e-6)
        assert float(out[0][0]) == 1.0 and int(info["clipped"]) == 1


def test_eps_in_warmup_divides_by_norm_plus_eps():
    g = [np.array([3.0, 4.0], np.float32)]
    out, _, _ = gc.adagc(warmup_steps=1, eps=1e-3).update(g, gc.adagc(warmup_steps=1).init(g))
    np.testing.assert_allclose(out[0], np.array([3.0, 4.0]) / 5.001, rtol=1e-6)


def test_nan_in_warmup_keeps_gamma_and_skip_keeps_state():
    g = [np.array([1.0, 0.0], np.float32), np.array([2.0], np.float32)]
    bad = [np.array([np.nan, 0.0], np.float32), np.array([0.5], np.float32)]
    rule = gc.adagc(warmup_steps=3)
    _, state, _ = rule.update(g, rule.init(g))
    _, state, _ = rule.update(bad, state)  # propagate: a NaN norm does not enter the running minimum
    np.testing.assert_allclose(state.gamma, [1.0 / math.sqrt(5.0), 0.5], rtol=1e-6)
    skip = gc.adagc(warmup_steps=3, nonfinite="skip")
    _, s1, _ = skip.update(g, skip.init(g))
    out, s2, info = skip.update(bad, s1)
    assert int(info["skipped"]) == 1 and all(not np.any(o) for o in out)
    for a, b in zip(s1, s2):
        assert np.array_equal(a, b)


def test_state_of_other_arrays_is_refused():
    rule = gc.adagc()
    state = rule.init([np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match="2 arrays"):
        rule.update([np.ones(2, np.float32), np.ones(1, np.float32)], state)
    with pytest.raises(ValueError, match="AdaGCState"):
        rule.update([np.ones(2, np.float32)], gc.zclip().init([np.zeros(2, np.float32)]))


def test_empty_grads_are_kept():
    rule = gc.adagc()
    state = rule.init([])
    out, state2, info = rule.update([], state)
    assert out == [] and info == {} and state2 is state


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lambda_rel": 0}, "lambda_rel"),
        ({"lambda_rel": float("inf")}, "lambda_rel"),
        ({"lambda_rel": "1"}, "lambda_rel"),
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"lambda_abs": 0.0}, "lambda_abs"),
        ({"lambda_abs": -1.0}, "lambda_abs"),
        ({"warmup_steps": 0}, "warmup_steps"),
        ({"warmup_steps": 2.0}, "warmup_steps"),
        ({"warmup_steps": True}, "warmup_steps"),
        ({"eps": -1e-8}, "eps"),
        ({"eps": np.array(1e-8, np.float32)}, "eps"),
        ({"nonfinite": "ignore"}, "nonfinite"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gc.adagc(**kwargs)


def test_config_round_trip():
    rule = gc.adagc(1.1, 0.9, warmup_steps=7, eps=1e-8, nonfinite="skip")
    again = gc.from_config(rule.config)
    assert again.config == rule.config
    assert repr(rule).startswith("adagc(lambda_rel=1.1, beta=0.9, lambda_abs=1.0, warmup_steps=7")
