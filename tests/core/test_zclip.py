"""ZClip against a transcription of the authors' reference (``zclip`` package, ``ZClip.step``).

``ZClipRef`` below is ``zclip.ZClip`` (v1.0.0) with the torch parts removed: it takes
the global norm and returns the clip coefficient, keeping the package's update order
(warm-up buffer -> EMA init; z-score -> clip value; clip to ``min(clip_val,
max_grad_norm)``; EMA update with the clip value, the variance with the new mean) and
its float64 host arithmetic. The coefficient formulas are the package's
(``bound / (g + 1e-6)`` when ``g > bound``; ``clip_grad_norm_`` during warm-up); the
rule uses the canonical ``min(1, bound / g)``, a documented relative difference of at
most ``1e-6 / g``. The torch test (tests/torch/test_adaptive.py) runs the real package.
"""

import math

import numpy as np
import pytest

import gradclip_core as gc

from .util import NAMESPACES, to_xp


class ZClipRef:
    def __init__(self, alpha=0.97, z_thresh=2.5, max_grad_norm=1.0, eps=1e-6, warmup_steps=25, mode="zscore",
                 clip_option="adaptive_scaling", clip_factor=1.0, skip_update_on_spike=False):
        self.alpha, self.z_thresh, self.max_grad_norm, self.eps = alpha, z_thresh, max_grad_norm, eps
        self.warmup_steps, self.mode, self.clip_option = warmup_steps, mode, clip_option
        self.clip_factor, self.skip_update_on_spike = clip_factor, skip_update_on_spike
        self.buffer, self.initialized, self.mean, self.var = [], False, None, None

    def _compute_clip_val(self, g):
        std = self.var ** 0.5
        if self.mode == "percentile":
            threshold = self.mean + self.z_thresh * std
            return threshold if g > threshold else None
        z = (g - self.mean) / (std + self.eps)
        if z > self.z_thresh:
            if self.clip_option == "adaptive_scaling":
                eta = z / self.z_thresh
                return (self.mean + (self.z_thresh * std) / eta) * self.clip_factor
            return self.mean
        return None

    def step(self, g):
        """Returns the bound the gradients are clipped to (inf: none)."""
        if not self.initialized:
            self.buffer.append(g)
            if len(self.buffer) >= self.warmup_steps:
                self.mean = sum(self.buffer) / len(self.buffer)
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
                self.initialized, self.buffer = True, []
            return math.inf if self.max_grad_norm is None or g <= self.max_grad_norm else self.max_grad_norm
        clip_val = self._compute_clip_val(g)
        adaptive = clip_val if clip_val is not None else g
        bound = adaptive if self.max_grad_norm is None else min(adaptive, self.max_grad_norm)
        if not (clip_val is not None and self.skip_update_on_spike):
            v = clip_val if clip_val is not None else g
            self.mean = self.alpha * self.mean + (1 - self.alpha) * v
            self.var = self.alpha * self.var + (1 - self.alpha) * (v - self.mean) ** 2
        return bound if bound < g else math.inf


def norm_sequence(seed, steps=40):
    rng = np.random.default_rng(seed)
    norms = np.abs(rng.normal(2.0, 0.2, steps))
    norms[[12, 13, 25]] = [9.0, 4.0, 30.0]  # spikes, one right after another
    return norms.astype(np.float32)


CONFIGS = [
    dict(),
    dict(alpha=0.9, z_thresh=2.0, warmup_steps=1),
    dict(warmup_steps=5, clip_option="mean"),
    dict(warmup_steps=5, mode="percentile", z_thresh=1.0),
    dict(warmup_steps=4, clip_factor=0.7, skip_update_on_spike=True),
    dict(warmup_steps=3, max_norm=2.1),
]


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_matches_reference(xp, cfg):
    cfg = dict(cfg)
    max_norm = cfg.pop("max_norm", None)
    ref = ZClipRef(max_grad_norm=max_norm, **cfg)
    rule = gc.zclip(max_norm=max_norm, **cfg)
    state = rule.init(to_xp(xp, [np.zeros(2, np.float32)]))
    spikes = 0
    for step, n in enumerate(norm_sequence(0)):
        g = [xp.asarray(np.array([n * 0.6, n * 0.8], np.float32))]
        out, state, info = rule.update(g, state)
        bound = ref.step(float(info["norm"]))
        want = 1.0 if math.isinf(bound) else bound / float(info["norm"])
        assert float(info["scale"]) == pytest.approx(want, rel=5e-6), step
        np.testing.assert_allclose(np.asarray(out[0]), np.asarray(g[0]) * want, rtol=5e-6)
        if ref.initialized and step >= cfg.get("warmup_steps", 25):
            assert float(state.mean) == pytest.approx(ref.mean, rel=2e-6)
            assert float(state.var) == pytest.approx(ref.var, rel=2e-5, abs=1e-9)
        spikes += int(info["spike"])
    assert spikes >= (0 if cfg.get("warmup_steps", 25) > 25 else 1)


def test_state_layout_and_warmup():
    rule = gc.zclip(warmup_steps=3)
    state = rule.init([np.zeros(1, np.float32)])
    assert isinstance(state, gc.ZClipState)
    assert state.count.dtype == np.int32 and state.warmup.shape == (3,) and state.mean.dtype == np.float32
    for n in [1.0, 2.0, 3.0]:
        _, state, info = rule.update([np.array([n], np.float32)], state)
        assert int(info["spike"]) == 0 and math.isinf(float(info["threshold"]))
    assert int(state.count) == 3
    assert float(state.mean) == pytest.approx(2.0) and float(state.var) == pytest.approx(2.0 / 3.0)


def test_skip_policy_keeps_state():
    rule = gc.zclip(warmup_steps=2, nonfinite="skip")
    g = [np.array([1.0], np.float32)]
    state = rule.init(g)
    _, state, _ = rule.update(g, state)
    _, state2, info = rule.update([np.array([np.inf], np.float32)], state)
    assert int(info["skipped"]) == 1
    for a, b in zip(state, state2):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 1.0}, "alpha"),
        ({"z_thresh": 0}, "z_thresh"),
        ({"warmup_steps": 0}, "warmup_steps"),
        ({"mode": "mad"}, "mode"),
        ({"clip_option": "max"}, "clip_option"),
        ({"clip_factor": 0}, "clip_factor"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"eps": -1.0}, "eps"),
        ({"skip_update_on_spike": "yes"}, "skip_update_on_spike"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gc.zclip(**kwargs)


def test_state_leaves_are_distinct_arrays():
    # Issue 16: mean and var shared one zero array; torch.compile then guarded on
    # `state.var is state.mean` and recompiled once they differed.
    state = gc.zclip().init([np.zeros(3, np.float32)])
    leaves = [state.count, state.warmup, state.mean, state.var]
    assert len({id(x) for x in leaves}) == len(leaves)
