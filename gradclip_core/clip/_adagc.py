"""AdaGC (Wang et al. 2025, "AdaGC: Improving Training Stability for Large Language Model Pretraining").

Per-tensor *relative* clipping: each array ``i`` is clipped against ``lambda_rel``
times an exponential moving average ``gamma_i`` of its own *clipped* norms, after a
warm-up of ordinary global-norm clipping that initialises ``gamma``. The paper's
Algorithm 1 (arXiv 2502.11034), for step ``t = 1, 2, ...`` and array ``i``::

    warm-up (the first warmup_steps steps):
        h_t      = min(1, lambda_abs / ||g_t||)            # g_t: all arrays together
        g~_{t,i} = h_t * g_{t,i}
        gamma_i  = min(gamma_i, ||g~_{t,i}||)              # gamma_i starts at +inf
    after it:
        h_{t,i}  = min(1, lambda_rel * gamma_i / ||g_{t,i}||)
        g~_{t,i} = h_{t,i} * g_{t,i}
        gamma_i  = beta * gamma_i + (1 - beta) * ||g~_{t,i}||

All norms are 2-norms, accumulated in float32 at least. ``||g~_{t,i}||`` is computed as
``h * ||g_{t,i}||`` (exact in real arithmetic, and no second read of the gradients: the
authors' Megatron-LM code does the same, using ``lambda_rel * gamma`` as the clipped
norm). The clip factors use the canonical ``min(1, bound / norm)`` (a zero norm gives
1, never NaN); the state is arrays (an int32 step count and one float32 ``gamma`` per
array), so the rule runs under ``jax.jit``, ``tf.function`` and ``torch.compile`` and
a checkpointed state resumes exactly.

Differences from ``pytorch_optimizer.AdaGC`` (v4.1.0; an Adam optimizer with AdaGC
built in), recorded here because this rule follows the paper:

- warm-up length: ``warmup_steps=W`` here is ``W`` global-clip steps; pytorch-optimizer
  counts its steps from 1 and clips globally while ``step < warmup_steps`` (the paper's
  ``t < T_start``), i.e. ``W - 1`` steps (and at least 1): its ``warmup_steps=W + 1`` is
  this rule's ``warmup_steps=W``. The authors' Megatron-LM patch clips globally while
  ``step <= start_clip_steps``: its ``start_clip_steps=W`` is ``warmup_steps=W`` here.
- ``eps``: pytorch-optimizer floors ``gamma`` and the norm at its ``eps`` (1e-8, also
  Adam's epsilon) in the relative clip and divides by ``norm + eps`` in the warm-up;
  the paper has no epsilon. ``eps=0`` (default) is the paper; ``eps=1e-8`` reproduces
  pytorch-optimizer's clip factors.
- the clipped norm entering ``gamma`` is ``h * ||g||`` here, ``||h * g||`` recomputed in
  pytorch-optimizer (equal up to rounding, a few float32 ulp); its EMA is
  ``gamma.lerp_(c, 1 - beta)``, the paper's ``beta * gamma + (1 - beta) * c`` here.
- non-finite norms in the warm-up: pytorch-optimizer's ``torch.minimum`` makes ``gamma``
  NaN; this rule, like the authors' code (``if norm < gamma``), keeps ``gamma`` unless
  the new norm is smaller (a NaN on the first step still becomes ``gamma``). After the
  warm-up a NaN norm makes that array's ``gamma`` NaN in all three; from then on
  pytorch-optimizer's factor is NaN (the gradient becomes NaN), while here, as in the
  authors' code (``if norm > lambda_rel * gamma``), the array is no longer clipped.
  Use ``nonfinite="skip"``.

A caveat of the paper's formula (kept): an array whose gradient is exactly zero on a
warm-up step gets ``gamma = 0`` and is clipped to zero on every later step (its
``gamma`` never grows again); pytorch-optimizer's ``eps`` floor lets only
``lambda_rel * eps`` through. Arrays that can have all-zero gradients early (unused
embeddings, MoE experts that got no tokens) are better left out with
:func:`gradclip_core.on`, or the warm-up started after they receive gradients.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

from .._effect import Keep, Scale
from .._nonfinite import check_policy, guard_update
from .._numerics import acc_dtype, min_ratio
from .._rule import Rule, factory
from .._validate import check_threshold, is_number
from ..backend._namespace import device_kw, namespace, state_namespace
from ._norm import _unstack, norms_over_shards

__all__ = ["adagc", "AdaGCState"]


class AdaGCState(NamedTuple):
    """State of :func:`gradclip_core.adagc`.

    Attributes:
      count: int32 0-d, warm-up steps done (saturates at ``warmup_steps``).
      gamma: float32 ``(n,)``, per array the EMA of its clipped norm (the running
        minimum during the warm-up; meaningless before the first step).
    """

    count: Any
    gamma: Any


def _positive(name: str, value: Any) -> float:
    if not is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@factory
def adagc(
    lambda_rel: float = 1.05,
    beta: float = 0.98,
    *,
    lambda_abs: float = 1.0,
    warmup_steps: int = 100,
    eps: float = 0.0,
    nonfinite: str = "propagate",
) -> Rule:
    """AdaGC: clip each array relative to an EMA of its own clipped norm, after a global-clip warm-up.

    Defaults are pytorch-optimizer's (the paper's first version): ``lambda_rel=1.05``,
    ``beta=0.98``, ``lambda_abs=1.0``, a warm-up of 100 steps; the authors' Megatron-LM
    scripts use ``lambda_rel=1.04, beta=0.99``.

    Args:
      lambda_rel: relative threshold ``> 0``: after the warm-up an array is scaled to
        at most ``lambda_rel * gamma`` (its EMA of clipped norms).
      beta: EMA smoothing factor in ``[0, 1)``.
      lambda_abs: the global-norm bound ``> 0`` of the warm-up (a number or a 0-d array).
      warmup_steps: number of global-clip steps (int >= 1) that initialise ``gamma``
        (the paper's ``T_start - 1``; pytorch-optimizer's ``warmup_steps - 1``).
      eps: ``>= 0``; with ``eps > 0`` the warm-up divides by ``norm + eps`` and the
        relative clip floors ``gamma`` and the norm at ``eps``, as pytorch-optimizer
        does. 0 (default) is the paper's formula.
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``. With ``"propagate"`` an
        Inf gradient in the warm-up clips everything to 0 (so ``gamma`` becomes 0) and a
        NaN norm after it makes that array's ``gamma`` NaN (the array is then never
        clipped again), as the paper's formula and the authors' code do; ``"skip"``
        keeps the state (recommended).

    Returns:
      A :class:`Rule` with state :class:`AdaGCState`; its effect is one
      :class:`~gradclip_core.Scale` factor per array (applied in place by the torch
      adapter). Info: ``norm`` (global 2-norm before clipping), ``clipped`` (int32,
      arrays scaled down this step), ``clipped_fraction`` (of the arrays),
      ``min_scale`` (smallest factor applied) and ``warmup`` (int32, 1 on a
      global-clip warm-up step).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.adagc(lambda_rel=1.05, beta=0.98, lambda_abs=1.0, warmup_steps=1)
      >>> g = [np.array([3.0, 4.0], np.float32), np.array([0.0, 0.5], np.float32)]
      >>> state = rule.init(g)
      >>> _, state, info = rule.update(g, state)   # warm-up: the global norm 5.02 clipped to 1
      >>> int(info["warmup"]), state.gamma.astype(float).round(4).tolist()
      (1, [0.995, 0.0995])
      >>> g = [np.array([6.0, 8.0], np.float32), np.array([0.0, 0.1], np.float32)]
      >>> out, state, info = rule.update(g, state)  # array 0 jumped: clipped to 1.05 * 0.995
      >>> [o.astype(float).round(4).tolist() for o in out], int(info["clipped"])
      ([[0.6269, 0.8358], [0.0, 0.1]], 1)
    """
    lambda_rel = _positive("lambda_rel", lambda_rel)
    if not is_number(beta) or not (0.0 <= float(beta) < 1.0):
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    beta = float(beta)
    lambda_abs = check_threshold("lambda_abs", lambda_abs, positive=True)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
    eps = check_threshold("eps", eps)
    if not is_number(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    check_policy(nonfinite)
    W = warmup_steps

    def init(params: Sequence[Any]) -> AdaGCState:
        params = list(params)
        xp = state_namespace(params)
        kw = device_kw(params)
        return AdaGCState(xp.zeros((), dtype=xp.int32, **kw), xp.zeros((len(params),), dtype=xp.float32, **kw))

    def update(grads: Sequence[Any], state: AdaGCState, params: Sequence[Any] | None = None):
        del params
        grads = list(grads)
        if not isinstance(state, AdaGCState):
            raise ValueError(f"adagc: state must be the AdaGCState made by rule.init, got {type(state).__name__}")
        if tuple(state.gamma.shape) != (len(grads),):
            raise ValueError(
                f"adagc: the state has {tuple(state.gamma.shape)} gamma entries for {len(grads)} arrays; "
                "init the rule with the same arrays it updates"
            )
        if not grads:
            return Keep(), state, {}
        xp = namespace(*grads)
        v = xp.stack(norms_over_shards(xp, grads, 2.0, acc_dtype(xp, grads)))  # per-array norms, one pass
        norm = xp.linalg.vector_norm(v)  # the global norm, from the per-array norms
        count, gamma = state.count, state.gamma
        warm = count < W

        # warm-up: one global factor h = min(1, lambda_abs / ||g||)
        h_glob = min_ratio(xp, lambda_abs, norm + eps if eps else norm)
        # relative: h_i = min(1, lambda_rel * gamma_i / ||g_i||)
        g_floor = xp.maximum(gamma, xp.full_like(gamma, eps)) if eps else gamma
        bound = lambda_rel * g_floor
        bound = xp.astype(bound, v.dtype) if bound.dtype != v.dtype else bound
        v_floor = xp.maximum(v, xp.full_like(v, eps)) if eps else v
        h_rel = min_ratio(xp, bound, v_floor)
        scale = xp.where(warm, h_glob, h_rel)

        clipped = scale * v  # ||h * g_i|| = h * ||g_i||
        clipped = xp.astype(clipped, xp.float32) if clipped.dtype != xp.float32 else clipped
        take = xp.logical_or(count == 0, clipped < gamma)  # running minimum; NaN never replaces a value
        g_warm = xp.where(take, clipped, gamma)
        g_ema = beta * gamma + (1.0 - beta) * clipped
        new_gamma = xp.where(warm, g_warm, g_ema)
        new_count = xp.where(warm, count + 1, count)

        n_clipped = xp.sum(xp.astype(scale < 1, xp.int32), dtype=xp.int32)
        info = {
            "norm": norm,
            "clipped": n_clipped,
            "clipped_fraction": xp.astype(n_clipped, xp.float32) / float(len(grads)),
            "min_scale": -xp.max(-scale),  # (min: the TF namespace has max only)
            "warmup": xp.astype(warm, xp.int32),
        }
        return Scale(tuple(_unstack(xp, scale, len(grads)))), AdaGCState(new_count, new_gamma), info

    return Rule(init=init, update_effect=guard_update(update, nonfinite), name="adagc")
