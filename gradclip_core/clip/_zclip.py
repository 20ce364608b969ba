"""ZClip (Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training").

A z-score test of the global gradient norm against an EMA of its mean and variance.
The update order is that of the authors' reference implementation (the ``zclip`` PyPI
package, ``ZClip.step``), step by step:

1. ``g = ||grads||`` (global 2-norm, before clipping).
2. Warm-up (the first ``warmup_steps`` steps): ``g`` is stored; only ``max_norm`` (if
   given) clips. On the last warm-up step the EMA starts from the stored norms:
   ``mean = sum(buf) / W``, ``var = sum((buf - mean)**2) / W`` (population variance).
   The EMA is *not* updated on warm-up steps.
3. After warm-up, with ``std = sqrt(var)``:

   - ``mode="zscore"``: ``z = (g - mean) / (std + eps)``; a spike is ``z > z_thresh``;
     the clip value is ``(mean + (z_thresh * std) / (z / z_thresh)) * clip_factor``
     (``clip_option="adaptive_scaling"``, the paper's reciprocal rule) or ``mean``
     (``clip_option="mean"``);
   - ``mode="percentile"``: the clip value is ``mean + z_thresh * std``, a spike is
     ``g`` above it.

   ``clip_val`` is that value on a spike, else ``g``; the gradients are clipped to
   ``min(clip_val, max_norm)``.
4. EMA update with ``clip_val`` (the clipped norm on a spike, ``max_norm`` not
   included), mean first, the variance with the *new* mean::

       mean = alpha * mean + (1 - alpha) * clip_val
       var  = alpha * var  + (1 - alpha) * (clip_val - mean)**2

   skipped on a spike when ``skip_update_on_spike``.

Deliberate differences from the reference: the state is float32 arrays (the reference
keeps Python floats, i.e. float64, on the host, one sync per step); the clip uses the
canonical ``min(1, bound / g)`` where the reference uses ``bound / (g + 1e-6)`` when
``g > bound`` (and ``clip_grad_norm_`` during warm-up), a relative difference of at
most ``1e-6 / g``; ``max_norm`` defaults to ``None`` here (the package's
``max_grad_norm`` defaults to 1.0: pass ``max_norm=1.0`` to reproduce it).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

from .._effect import Keep
from .._nonfinite import check_policy, guard_update
from .._rule import Rule, factory
from .._validate import check_choice, check_threshold, is_number
from ..backend._namespace import device_kw, namespace, state_namespace
from ._norm import _global_apply, _global_norm

__all__ = ["zclip", "ZClipState"]


class ZClipState(NamedTuple):
    """State of :func:`gradclip_core.zclip`.

    Attributes:
      count: int32 0-d, warm-up steps seen (saturates at ``warmup_steps``).
      warmup: float32 ``(warmup_steps,)``, the norms of the warm-up steps.
      mean: float32 0-d, EMA of the norm (valid once ``count == warmup_steps``).
      var: float32 0-d, EMA of its variance.
    """

    count: Any
    warmup: Any
    mean: Any
    var: Any


def _check_unit(name: str, value: Any) -> float:
    if not is_number(value) or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


@factory
def zclip(
    alpha: float = 0.97,
    z_thresh: float = 2.5,
    *,
    warmup_steps: int = 25,
    mode: str = "zscore",
    clip_option: str = "adaptive_scaling",
    clip_factor: float = 1.0,
    max_norm: float | None = None,
    eps: float = 1e-6,
    skip_update_on_spike: bool = False,
    nonfinite: str = "propagate",
) -> Rule:
    """ZClip: clip gradient-norm spikes detected by a z-score against an EMA of the norm.

    Defaults are those of the reference ``zclip`` package, except ``max_norm``.

    Args:
      alpha: EMA smoothing factor in ``[0, 1)``.
      z_thresh: z-score threshold ``> 0``.
      warmup_steps: steps (int >= 1) whose norms initialise the mean and variance.
      mode: ``"zscore"`` (paper) or ``"percentile"`` (always clip to ``mean + z_thresh * std``).
      clip_option: with ``mode="zscore"``, ``"adaptive_scaling"`` (clip to
        ``mean + z_thresh**2 * std / z``, times ``clip_factor``) or ``"mean"``.
      clip_factor: multiplier ``> 0`` of the adaptive-scaling clip value.
      max_norm: optional fixed bound ``>= 0`` on the global norm, also during warm-up.
      eps: ``>= 0``, added to ``std`` in the z-score.
      skip_update_on_spike: keep the EMA unchanged on spike steps.
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``; with ``"propagate"`` a
        NaN norm makes the EMA NaN (as in the reference), ``"skip"`` keeps the state.

    Returns:
      A :class:`Rule` with state :class:`ZClipState`; info has ``norm`` (before
      clipping), ``scale``, ``threshold`` (the bound applied, ``+inf`` when none),
      ``mean`` and ``std`` (of the EMA before this step's update) and ``spike``
      (int32 0/1).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.zclip(alpha=0.9, z_thresh=2.0, warmup_steps=3)
      >>> state = rule.init([np.zeros(1, np.float32)])
      >>> for norm in [1.0, 2.0, 3.0, 100.0]:
      ...     g, state, info = rule.update([np.array([norm], np.float32)], state)
      >>> int(info["spike"]), round(float(info["threshold"]), 4)   # 2 + 2**2 * 0.8165 / z
      (1, 2.0272)
    """
    alpha = _check_unit("alpha", alpha)
    z_thresh = check_threshold("z_thresh", z_thresh, positive=True)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
    check_choice("mode", mode, ("zscore", "percentile"))
    check_choice("clip_option", clip_option, ("adaptive_scaling", "mean"))
    clip_factor = check_threshold("clip_factor", clip_factor, positive=True)
    if max_norm is not None:
        max_norm = check_threshold("max_norm", max_norm)
    eps = check_threshold("eps", eps)
    if not isinstance(skip_update_on_spike, bool):
        raise ValueError(f"skip_update_on_spike must be a bool, got {skip_update_on_spike!r}")
    check_policy(nonfinite)
    W = warmup_steps

    def init(params: Sequence[Any]) -> ZClipState:
        params = list(params)
        xp = state_namespace(params)
        kw = device_kw(params)
        # One tensor per leaf: a shared zero for mean and var made torch.compile guard on
        # `state.var is state.mean` (and recompile once they differ), and a torch Pruner
        # would register one tensor under two buffer names.
        return ZClipState(xp.zeros((), dtype=xp.int32, **kw), xp.zeros((W,), dtype=xp.float32, **kw),
                          xp.zeros((), dtype=xp.float32, **kw), xp.zeros((), dtype=xp.float32, **kw))

    def update(grads: Sequence[Any], state: ZClipState, params: Sequence[Any] | None = None):
        del params
        grads = list(grads)
        if not isinstance(state, ZClipState):
            raise ValueError(f"zclip: state must be the ZClipState made by rule.init, got {type(state).__name__}")
        if not grads:
            return Keep(), state, {}
        xp = namespace(*grads)
        norm = _global_norm(xp, grads, 2.0, "canonical")
        g = xp.astype(norm, xp.float32) if norm.dtype != xp.float32 else norm
        count, mean, var = state.count, state.mean, state.var
        warm = count < W
        slots = xp.arange(W, dtype=xp.int32)
        buf = xp.where(slots == count, g, state.warmup)  # count == W never matches: unchanged
        init_now = count == W - 1
        mean0 = xp.sum(buf) / float(W)
        dev = buf - mean0
        var0 = xp.sum(dev * dev) / float(W)

        std = xp.sqrt(var)
        if mode == "zscore":
            z = (g - mean) / (std + eps)
            spike = z > z_thresh
            if clip_option == "adaptive_scaling":
                eta = z / z_thresh
                safe_eta = xp.where(spike, eta, xp.ones_like(eta))
                thr = (mean + (z_thresh * std) / safe_eta) * clip_factor
            else:
                thr = mean
        else:
            thr = mean + z_thresh * std
            spike = g > thr
        spike = xp.logical_and(spike, xp.logical_not(warm))
        clip_val = xp.where(spike, thr, g)

        # The reference clips to min(clip_val, max_norm); without a spike clip_val is the
        # norm itself, which never scales: +inf says the same without a float32 round trip.
        bound = xp.where(spike, thr, xp.full_like(g, math.inf))
        if max_norm is not None:
            bound = xp.minimum(bound, xp.full_like(g, max_norm))
        bound_n = xp.astype(bound, norm.dtype) if norm.dtype != bound.dtype else bound
        effect, scale = _global_apply(xp, grads, norm, bound_n, "canonical")

        new_mean = alpha * mean + (1.0 - alpha) * clip_val
        d = clip_val - new_mean
        new_var = alpha * var + (1.0 - alpha) * (d * d)
        if skip_update_on_spike:
            new_mean = xp.where(spike, mean, new_mean)
            new_var = xp.where(spike, var, new_var)
        new_mean = xp.where(warm, xp.where(init_now, mean0, mean), new_mean)
        new_var = xp.where(warm, xp.where(init_now, var0, var), new_var)
        new_count = xp.where(warm, count + 1, count)
        info = {
            "norm": norm,
            "scale": scale,
            "threshold": bound,
            "mean": mean,
            "std": std,
            "spike": xp.astype(spike, xp.int32),
        }
        return effect, ZClipState(new_count, buf, new_mean, new_var), info

    return Rule(init=init, update_effect=guard_update(update, nonfinite), name="zclip")
