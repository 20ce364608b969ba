"""skip_on_spike against a NumPy reference of the window statistics, OLMo-core's and Levanter's rules.

``SpikeRef`` is the rule's definition in float64 NumPy (lists, not ring buffers): the
window holds the last ``window`` accepted values, the statistics are ``np.mean`` /
``np.std(ddof=)``, a step is skipped when the window holds ``>= warmup`` values and the
value exceeds ``mean + k * max(std, min_std)``, or when a value is non-finite; a skipped
step leaves both windows as they were.

``olmo_skips`` transcribes OLMo-core's ``SkipStepOptimizer.get_step_factor`` (the lists
of the last ``N + 1`` losses and grad norms, ``torch.std_mean`` over all but the latest,
i.e. ``ddof=1``; no skip while fewer than ``max(20, N // 2)`` losses were set; a step
is taken when ``|x - mean| / std <= sigma_factor`` for the loss and the norm).
``levanter_skips`` transcribes Levanter's ``SkipStepConfig.wrap`` (``N + 1`` slots,
``nanmean`` / ``nanstd`` (``ddof=0``), ``std`` floored at 1e-6, at least ``max(2, N // 2)``
previous values). Both keep every value in their window, skipped ones included; the
rule keeps skipped values out, so they are compared where that makes no difference: on
sequences up to (and including) their first skip.
"""

import math

import numpy as np
import pytest
from array_api_compat import numpy as compat_np

import gradclip_core as gc

from .util import NAMESPACES, to_xp


class SpikeRef:
    def __init__(self, window, k, warmup, ddof=1, min_std=0.0, loss=False):
        self.window, self.k, self.warmup, self.ddof, self.min_std, self.loss = window, k, warmup, ddof, min_std, loss
        self.norms, self.losses = [], []

    def _spike(self, x, hist):
        if len(hist) < self.warmup:
            return False, math.inf
        w = np.array(hist, np.float64)
        thr = w.mean() + self.k * max(w.std(ddof=self.ddof), self.min_std)
        return x > thr, thr

    def step(self, norm, loss=None):
        """Returns (skipped, norm threshold, window mean, window std) before the update."""
        spike, thr = self._spike(norm, self.norms)
        w = np.array(self.norms, np.float64)
        mean = w.mean() if len(w) else 0.0
        std = w.std(ddof=self.ddof) if len(w) > self.ddof else 0.0
        skip = spike or not math.isfinite(norm)
        if self.loss and loss is not None:
            l_spike, _ = self._spike(loss, self.losses)
            skip = skip or l_spike or not math.isfinite(loss)
        if not skip:
            self.norms = (self.norms + [norm])[-self.window:]
            if self.loss and loss is not None:
                self.losses = (self.losses + [loss])[-self.window:]
        return skip, thr, mean, std


def olmo_skips(losses, norms, N, sigma):
    """OLMo-core SkipStepOptimizer.get_step_factor, step by step (every value enters the lists)."""
    out, L, G = [], [], []
    for loss, norm in zip(losses, norms):
        L = (L + [loss])[-(N + 1):]
        G = (G + [norm])[-(N + 1):]
        if len(L) < max(20, N // 2):
            out.append(False)
            continue
        lm, ls = np.mean(L[:-1]), np.std(L[:-1], ddof=1)
        gm, gs = np.mean(G[:-1]), np.std(G[:-1], ddof=1)
        ok = abs(L[-1] - lm) / ls <= sigma and abs(G[-1] - gm) / gs <= sigma
        out.append(not ok)
    return out


def levanter_skips(losses, norms, N, sigma):
    """Levanter SkipStepConfig.wrap, step by step (N + 1 slots, decision on the previous values)."""
    out, L, G = [], [], []
    for loss, norm in zip(losses, norms):
        ready = len(L) >= max(2, N // 2)
        lt = np.mean(L) + sigma * max(np.std(L), 1e-6) if L else 0.0
        gt = np.mean(G) + sigma * max(np.std(G), 1e-6) if G else 0.0
        out.append(bool(ready and not (loss <= lt and norm <= gt)))
        L = (L + [loss])[-(N + 1):]
        G = (G + [norm])[-(N + 1):]
    return out


def _run(rule, xp, norms, losses=None):
    """The rule on one-element gradients ``[norm]``; per step: (skipped, info, grads out)."""
    state = rule.init(to_xp(xp, [np.zeros(1, np.float32)]))
    out = []
    for i, n in enumerate(norms):
        if losses is not None:
            state = gc.feed_loss(state, losses[i])
        g, state, info = rule.update(to_xp(xp, [np.array([n], np.float32)]), state)
        out.append((bool(int(info["skipped"])), {k: float(v) for k, v in info.items()}, np.asarray(g[0])))
    return out, state


def _series(seed, n, spikes=(), scale=50.0):
    rng = np.random.default_rng(seed)
    x = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    for i in spikes:
        x[i] *= scale
    return [float(v) for v in x]


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("ddof, min_std", [(1, 0.0), (0, 1e-6)])
def test_matches_the_numpy_reference_of_the_window(xp, ddof, min_std):
    norms = _series(0, 40, spikes=(7, 8, 20, 33))
    norms[12] = math.nan
    norms[25] = math.inf
    rule = gc.skip_on_spike(window=6, k=3.0, warmup=4, ddof=ddof, min_std=min_std)
    got, state = _run(rule, xp, norms)
    ref = SpikeRef(6, 3.0, 4, ddof, min_std)
    for i, (n, (skip, info, g)) in enumerate(zip(norms, got)):
        want, thr, mean, std = ref.step(np.float64(np.float32(n)))
        assert skip == want, (i, n, info)
        assert info["nonfinite"] == float(not math.isfinite(n)), i
        np.testing.assert_allclose(info["mean"], mean, rtol=2e-6, err_msg=f"step {i}")
        np.testing.assert_allclose(info["std"], std, rtol=2e-5, atol=1e-7, err_msg=f"step {i}")
        if math.isfinite(thr):
            np.testing.assert_allclose(info["threshold"], thr, rtol=2e-6, err_msg=f"step {i}")
        else:
            assert info["threshold"] == math.inf and info["z"] == 0.0
        # the gradients are untouched, or all zeros on a skipped step
        assert g.tolist() == ([0.0] if skip else [np.float32(n)]), (i, g)
    skips = [i for i, (s, _, _) in enumerate(got) if s]
    assert {7, 8, 12, 20, 25, 33} <= set(skips), skips  # every spike (spike 8 follows spike 7: not in the window)
    # the window holds the last 6 accepted norms, in ring order
    accepted = [np.float32(n) for i, n in enumerate(norms) if i not in skips][-6:]
    assert int(state.norms.count) == 6
    assert sorted(np.asarray(state.norms.norms).tolist()) == sorted(float(a) for a in accepted)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_loss_window_and_loss_skip(xp):
    norms = _series(1, 30)
    losses = _series(2, 30, spikes=(15,), scale=3.0)
    losses[22] = math.nan
    rule = gc.skip_on_spike(window=8, k=4.0, warmup=5, loss=True)
    got, state = _run(rule, xp, norms, losses)
    ref = SpikeRef(8, 4.0, 5, loss=True)
    for i, (skip, info, _) in enumerate(got):
        want = ref.step(np.float64(np.float32(norms[i])), np.float64(np.float32(losses[i])))[0]
        assert skip == want, (i, info)
    assert {15, 22} <= {i for i, (s, _, _) in enumerate(got) if s}
    assert got[15][1]["loss_z"] > 4.0 and got[15][1]["z"] < 4.0  # the loss, not the norm, skipped step 15
    assert got[22][1]["nonfinite"] == 1.0 and math.isnan(got[22][1]["loss"])
    assert int(state.losses.count) == 8 and int(state.has_loss) == 0


@pytest.mark.parametrize("xp", NAMESPACES)
def test_a_step_without_a_loss_tests_the_norm_only(xp):
    rule = gc.skip_on_spike(window=4, k=3.0, warmup=2, loss=True)
    g = to_xp(xp, [np.ones(2, np.float32)])
    state = rule.init(g)
    for _ in range(3):
        _, state, info = rule.update(g, gc.feed_loss(state, 1.0))
    _, state2, info = rule.update(g, state)  # no loss fed: the loss window is not touched
    assert int(info["skipped"]) == 0 and math.isnan(float(info["loss"])) and float(info["loss_z"]) == 0.0
    assert int(state2.losses.count) == 3 and int(state2.norms.count) == 4


def test_matches_olmo_core_until_its_first_skip():
    """OLMo-core's rule where both apply: upward spikes, up to the first skip (after it OLMo keeps the spike)."""
    N, sigma = 40, 4.0
    for seed in range(6):
        norms = _series(10 + seed, 60, spikes=(45,), scale=3.0)
        losses = _series(20 + seed, 60, spikes=(30 + seed,) if seed % 2 else (), scale=2.0)
        olmo = olmo_skips(losses, norms, N, sigma)
        rule = gc.skip_on_spike(window=N, k=sigma, warmup=max(20, N // 2) - 1, ddof=1, loss=True)
        got = [s for s, _, _ in _run(rule, compat_np, norms, losses)[0]]
        first = olmo.index(True)
        assert got[: first + 1] == olmo[: first + 1], (seed, got, olmo)
        assert first == (30 + seed if seed % 2 else 45)


def test_matches_levanter_until_its_first_skip():
    N, sigma = 20, 3.0
    for seed in range(6):
        norms = _series(30 + seed, 50, spikes=(25 + seed,), scale=2.0)
        losses = _series(40 + seed, 50)
        lev = levanter_skips(losses, norms, N, sigma)
        rule = gc.skip_on_spike(window=N + 1, k=sigma, warmup=max(2, N // 2), ddof=0, min_std=1e-6, loss=True)
        got = [s for s, _, _ in _run(rule, compat_np, norms, losses)[0]]
        first = lev.index(True)
        assert got[: first + 1] == lev[: first + 1], (seed, got, lev)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_skipped_step_keeps_the_state_and_warmup_never_skips_finite_values(xp):
    rule = gc.skip_on_spike(window=4, k=1.0, warmup=3)
    g = lambda v: to_xp(xp, [np.array([v, 0.0], np.float32)])  # noqa: E731
    state = rule.init(g(0.0))
    for v in [1.0, 1000.0]:  # warm-up: a huge value is accepted
        _, state, info = rule.update(g(v), state)
        assert int(info["skipped"]) == 0
    _, state, info = rule.update(g(math.nan), state)  # non-finite: skipped even in the warm-up
    assert int(info["skipped"]) == 1 and int(state.norms.count) == 2
    _, state, _ = rule.update(g(2.0), state)
    before = [np.asarray(x).copy() for x in state.norms]
    out, after, info = rule.update(g(1e6), state)
    assert int(info["skipped"]) == 1 and np.asarray(out[0]).tolist() == [0.0, 0.0]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, after.norms))


def test_effect_is_a_skip_of_nothing():
    rule = gc.skip_on_spike(window=2, k=1.0, warmup=2)
    g = [np.ones(3, np.float32)]
    effect, _, _ = rule.update_effect(g, rule.init(g))
    assert isinstance(effect, gc.Skip) and isinstance(effect.effect, gc.Keep) and not bool(effect.skip)


def test_chain_feed_loss_and_helpers():
    rule = gc.chain(gc.skip_on_spike(window=4, warmup=2, loss=True), gc.clip_by_global_norm(1.0))
    assert gc.needs_loss(rule) and gc.skips_finite(rule)
    assert not gc.needs_loss(gc.skip_on_spike()) and gc.skips_finite(gc.skip_on_spike())
    assert not gc.skips_finite(gc.clip_by_global_norm(1.0, nonfinite="skip"))
    g = [np.array([3.0, 4.0], np.float32)]
    state = rule.init(g)
    fed = gc.feed_loss(state, np.float32(2.0))
    assert float(fed[0].loss) == 2.0 and int(fed[0].has_loss) == 1 and fed[1] is state[1]
    assert gc.feed_loss(gc.clip_by_value(1.0).init(g), 1.0) == gc.EmptyState()
    out, new, info = rule.update(g, fed)
    assert int(info["skip_on_spike/skipped"]) == 0 and float(info["skip_on_spike/loss"]) == 2.0
    assert int(new[0].has_loss) == 0 and int(new[0].losses.count) == 1  # the fed loss is consumed
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    with pytest.raises(ValueError, match="scalar"):
        gc.feed_loss(state, np.ones(2, np.float32))
    assert gc.from_config(rule.config).config == rule.config


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=1), "window must be an int >= 2"),
    (dict(window=2.0), "window must be an int"),
    (dict(k=0.0), "k must be a finite number > 0"),
    (dict(k=math.inf), "k must be a finite number > 0"),
    (dict(warmup=1), "warmup must be an int >= 2"),
    (dict(window=8, warmup=9), r"warmup must be <= window \(8\)"),
    (dict(ddof=2), "ddof must be 0 or 1"),
    (dict(loss=1), "loss must be a bool"),
    (dict(min_std=-1.0), "min_std must be a finite number >= 0"),
])
def test_bad_arguments_raise_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gc.skip_on_spike(**kwargs)

