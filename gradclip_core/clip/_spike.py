"""Skip on spike: skip the optimizer step when the gradient norm (and optionally the loss) spikes.

What OLMo-core's ``SkipStepOptimizer`` and Levanter's ``skipstep`` do, as one rule with
array state. On every step, with ``g`` the global 2-norm of the gradients (float32, before
any clipping) and the statistics of the last ``window`` *accepted* norms::

    mean = sum(w) / n,   std = sqrt(sum((w - mean)**2) / (n - ddof)),   n = number of norms in w
    skip = n >= warmup  and  g > mean + k * max(std, min_std)

and the same test, over a second window, for the loss when ``loss=True`` and a loss was
given for the step (:func:`gradclip_core.feed_loss`). A step is skipped when either test
fires, or when ``g`` or the given loss is NaN/Inf (also during the warm-up). On a step
that is not skipped ``g`` (and the loss) enter their windows (ring buffers: the oldest
value leaves); a skipped step leaves the rule's state exactly as it was, so neither
non-finite values nor the spikes themselves ever enter the window, and every adapter's
true skip (which keeps the whole rule state) agrees with the rule itself.

The decision is a 0-d bool array (no host sync); the rule's effect is
``Skip(Keep(), skip)``: the gradients are left alone, or all zeros on a skipped step, and
adapters that own the optimizer skip its step instead (:class:`gradclip_core.Skip`).

Differences from the two references (both keep a rolling window of the last ``N`` values
and need at least half of it before they skip):

- OLMo-core (``get_step_factor``): two-sided ``|x - mean| / std <= sigma_factor`` with
  ``torch.std_mean`` (``ddof=1``); the current value counts toward the warm-up
  (``len >= max(20, N // 2)``, i.e. ``warmup = max(19, N // 2 - 1)`` previous values here);
  every value enters the window, spikes and NaN included. This rule is one-sided (an
  unusually *low* loss is not a reason to skip) and keeps skipped values out.
- Levanter (``SkipStepConfig.wrap``): ``x <= mean + sigma_factor * max(std, 1e-6)`` with
  population std (``ddof=0``, NaN-aware), over ``N + 1`` slots, ``warmup = max(2, N // 2)``;
  every value enters the window. ``skip_on_spike(N + 1, k, warmup=max(2, N // 2), ddof=0,
  min_std=1e-6)`` is that test on steps whose window holds no skipped value.

Keeping spikes out of the window means that a *lasting* jump of the norm (or loss) by
more than ``k`` standard deviations is skipped on every step; ``info["skipped"]`` shows
it. Choose ``k`` generously (6, as both references) for that reason.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

from .._effect import Keep, Skip
from .._rule import Rule, factory
from .._validate import check_threshold, is_number
from ..backend._namespace import device_kw, namespace, state_namespace
from ..backend._tree import tree_where
from ._history import NormHistory, check_size, init_history, push
from ._norm import _global_norm

__all__ = ["skip_on_spike", "SpikeState", "feed_loss", "needs_loss", "skips_finite"]


class SpikeState(NamedTuple):
    """State of :func:`gradclip_core.skip_on_spike`.

    Attributes:
      norms: :class:`~gradclip_core.NormHistory` of the last accepted global norms.
      losses: :class:`~gradclip_core.NormHistory` of the last accepted losses (one unused
        slot when ``loss=False``).
      loss: float32 0-d, the loss given for the coming step (:func:`gradclip_core.feed_loss`);
        reset to 0 by every update.
      has_loss: int32 0-d, 1 when a loss was given for the coming step; reset to 0 by every update.
    """

    norms: NormHistory
    losses: NormHistory
    loss: Any
    has_loss: Any


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


def _stats(xp: Any, hist: NormHistory, ddof: int) -> tuple[Any, Any]:
    """Mean and standard deviation (``ddof``) of the valid entries (0 where undefined), float32."""
    values = hist.norms
    valid = xp.arange(values.shape[0], dtype=xp.int32) < hist.count
    zero = xp.zeros_like(values)
    n = xp.astype(hist.count, xp.float32)
    safe_n = xp.maximum(n, xp.ones_like(n))
    mean = xp.sum(xp.where(valid, values, zero)) / safe_n
    dev = xp.where(valid, values - mean, zero)
    dof = n - float(ddof)
    var = xp.sum(dev * dev) / xp.maximum(dof, xp.ones_like(dof))
    std = xp.where(dof > 0, xp.sqrt(var), xp.zeros_like(var))
    return mean, std


def _test(xp: Any, x: Any, hist: NormHistory, k: float, warmup: int, ddof: int, min_std: float) -> tuple:
    """``(spike, mean, std, threshold, z)`` of ``x`` against the window ``hist``."""
    mean, std = _stats(xp, hist, ddof)
    s = xp.maximum(std, xp.full_like(std, min_std)) if min_std > 0 else std
    thr = mean + k * s
    ready = hist.count >= warmup
    spike = xp.logical_and(ready, x > thr)
    safe = xp.where(s > 0, s, xp.ones_like(s))
    above = xp.where(x > mean, xp.full_like(x, math.inf), xp.zeros_like(x))  # std 0: any larger value is infinitely far
    z = xp.where(ready, xp.where(s > 0, (x - mean) / safe, above), xp.zeros_like(x))
    thr = xp.where(ready, thr, xp.full_like(thr, math.inf))
    return spike, mean, std, thr, z


@factory
def skip_on_spike(
    window: int = 128,
    k: float = 6.0,
    *,
    warmup: int | None = None,
    loss: bool = False,
    ddof: int = 1,
    min_std: float = 0.0,
) -> Rule:
    """Skip the optimizer step when the global gradient norm (or the loss) exceeds mean + k·std of a window.

    The rule never changes the gradients it lets through: it only decides, on the device,
    whether the step happens. Adapters that own the optimizer make that a true skip
    (weights, optimizer moments and step count unchanged): ``gradclip_optax.wrap``,
    ``gradclip_keras.Optimizer``, and ``gradclip_torch.attach`` (``found_inf`` of fused
    optimizers, else one host sync per step). As a chain element (``gradclip_optax.transform``,
    ``gradclip_torch.apply_``) a skipped step hands on all-zero gradients.

    Place it first in a :func:`~gradclip_core.chain` (it must see the gradients before any
    clipping): ``chain(skip_on_spike(), clip_by_global_norm(1.0))``.

    The loss reaches the rule through its state (:func:`gradclip_core.feed_loss`); the
    adapters do that for you: ``update(grads, state, params, loss=loss)`` in optax,
    ``handle.set_loss(loss)`` in torch, and the loss the Keras trainer computes (or
    ``optimizer.set_loss(loss)`` in a custom loop). See the module docstring for the exact
    rule and how it differs from OLMo-core's and Levanter's.

    Args:
      window: number of past accepted values the statistics are taken over (int >= 2).
      k: the threshold in standard deviations (> 0).
      warmup: number of values the window must hold before a step can be skipped for a
        spike (int in ``[max(2, ddof + 1), window]``); default ``max(2, window // 2)``.
        Non-finite values are skipped from the first step.
      loss: also test the loss (a second window); each step then needs a loss.
      ddof: delta degrees of freedom of the standard deviation, 1 (sample std, as
        ``torch.std_mean`` in OLMo-core) or 0 (population std, as Levanter).
      min_std: floor of the standard deviation (>= 0; Levanter uses 1e-6), so that a
        window of identical values does not skip every slightly larger one.

    Returns:
      A :class:`Rule` with state :class:`SpikeState` and effect ``Skip(Keep(), skip)``;
      info has ``skipped`` (int32 0/1), ``norm`` (global norm, float32), ``mean``, ``std``
      (of the norm window before this step), ``threshold`` (``+inf`` during the warm-up),
      ``z`` (``(norm - mean) / std``, 0 during the warm-up) and ``nonfinite`` (int32 0/1);
      with ``loss=True`` also ``loss``, ``loss_mean``, ``loss_std``, ``loss_threshold``
      and ``loss_z`` (NaN / 0 on a step without a loss).

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.skip_on_spike(window=8, k=3.0, warmup=4)
      >>> state = rule.init([np.zeros(1, np.float32)])
      >>> for norm in [1.0, 1.1, 0.9, 1.0, 1.05, 50.0]:
      ...     g, state, info = rule.update([np.array([norm], np.float32)], state)
      >>> int(info["skipped"]), g[0].tolist(), int(state.norms.count)  # the spike never entered the window
      (1, [0.0], 5)
    """
    window = _check_int("window", window, 2)
    k = check_threshold("k", k, positive=True)
    if not is_number(k):
        raise ValueError(f"k must be a finite number > 0, got {k!r}")
    if ddof not in (0, 1) or isinstance(ddof, bool):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    if warmup is None:
        warmup = max(2, window // 2)
    warmup = _check_int("warmup", warmup, max(2, ddof + 1))
    if warmup > window:
        raise ValueError(f"warmup must be <= window ({window}), got {warmup!r}")
    if not isinstance(loss, bool):
        raise ValueError(f"loss must be a bool, got {loss!r}")
    min_std = check_threshold("min_std", min_std)
    if not is_number(min_std):
        raise ValueError(f"min_std must be a finite number >= 0, got {min_std!r}")
    check_size("window", window)
    loss_size = window if loss else 1

    def init(params: Sequence[Any]) -> SpikeState:
        params = list(params)
        xp = state_namespace(params)
        kw = device_kw(params)
        return SpikeState(init_history(xp, window, **kw), init_history(xp, loss_size, **kw),
                          xp.zeros((), dtype=xp.float32, **kw), xp.zeros((), dtype=xp.int32, **kw))

    def update(grads: Sequence[Any], state: SpikeState, params: Sequence[Any] | None = None):
        del params
        grads = list(grads)
        if not isinstance(state, SpikeState):
            raise ValueError(f"skip_on_spike: state must be the SpikeState made by rule.init, got {type(state).__name__}")
        if not grads:
            return Keep(), state, {}
        xp = namespace(*grads)
        norm = _global_norm(xp, grads, 2.0, "canonical")
        g = xp.astype(norm, xp.float32) if norm.dtype != xp.float32 else norm
        spike, mean, std, thr, z = _test(xp, g, state.norms, k, warmup, ddof, min_std)
        bad = xp.logical_not(xp.isfinite(g))
        skip = xp.logical_or(spike, bad)
        info = {"norm": norm, "mean": mean, "std": std, "threshold": thr, "z": z}
        new_losses = state.losses
        if loss:
            given = state.has_loss != 0
            lv = state.loss
            l_spike, l_mean, l_std, l_thr, l_z = _test(xp, lv, state.losses, k, warmup, ddof, min_std)
            l_bad = xp.logical_and(given, xp.logical_not(xp.isfinite(lv)))
            skip = xp.logical_or(skip, xp.logical_or(xp.logical_and(given, l_spike), l_bad))
            bad = xp.logical_or(bad, l_bad)
            new_losses = tree_where(xp, xp.logical_and(given, xp.logical_not(skip)), push(xp, state.losses, lv),
                                    state.losses)
            info.update({
                "loss": xp.where(given, lv, xp.full_like(lv, math.nan)),
                "loss_mean": l_mean,
                "loss_std": l_std,
                "loss_threshold": l_thr,
                "loss_z": xp.where(given, l_z, xp.zeros_like(l_z)),
            })
        new_norms = tree_where(xp, skip, state.norms, push(xp, state.norms, g))
        info["skipped"] = xp.astype(skip, xp.int32)
        info["nonfinite"] = xp.astype(bad, xp.int32)
        new_state = SpikeState(new_norms, new_losses, xp.zeros_like(state.loss), xp.zeros_like(state.has_loss))
        return Skip(Keep(), skip), new_state, info

    return Rule(init=init, update_effect=update, name="skip_on_spike")


def _as_loss(xp: Any, like: Any, loss: Any) -> Any:
    if is_number(loss):
        return xp.full_like(like, float(loss))
    if getattr(loss, "shape", None) is None:
        raise ValueError(f"loss must be a number or a 0-d array, got {type(loss).__name__}")
    size = math.prod(int(d) for d in loss.shape)
    if size != 1:
        raise ValueError(f"loss must be a scalar (a 0-d array), got shape {tuple(loss.shape)}")
    value = xp.reshape(loss, ())
    return xp.astype(value, xp.float32) if value.dtype != xp.float32 else value


def feed_loss(state: Any, loss: Any) -> Any:
    """``state`` with ``loss`` given for the next update of every :func:`skip_on_spike` rule in it.

    Walks any rule state (a :func:`~gradclip_core.chain`'s tuple of states included), so
    callers need not know where the rule sits. Pure and branch-free (runs under jit);
    the adapters call it for you.

    Args:
      state: a rule state (``rule.init(params)`` or the last update's).
      loss: the step's loss, a number or a 0-d array (one element) of the state's framework
        (detach it from the autograd graph first; it is cast to float32).

    Returns:
      The state with the loss filled in (the same object when it holds no ``SpikeState``).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.chain(gc.skip_on_spike(window=4, warmup=2, loss=True), gc.clip_by_global_norm(1.0))
      >>> state = gc.feed_loss(rule.init([np.zeros(2, np.float32)]), 2.5)
      >>> float(state[0].loss), int(state[0].has_loss)
      (2.5, 1)
    """
    if isinstance(state, SpikeState):
        xp = namespace(state.loss)
        value = _as_loss(xp, state.loss, loss)
        return state._replace(loss=value, has_loss=xp.ones_like(state.has_loss))
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        new = tuple(feed_loss(s, loss) for s in state)
        return state if all(a is b for a, b in zip(new, state)) else new
    if isinstance(state, tuple):  # another NamedTuple: its fields may hold states
        new = [feed_loss(s, loss) for s in state]
        return state if all(a is b for a, b in zip(new, state)) else type(state)(*new)
    if isinstance(state, list):
        return [feed_loss(s, loss) for s in state]
    return state


def needs_loss(rule: Rule) -> bool:
    """Whether ``rule`` (or a rule inside it) is a ``skip_on_spike(loss=True)`` that needs a loss each step.

    Example:
      >>> import gradclip_core as gc
      >>> needs_loss(gc.chain(gc.skip_on_spike(loss=True), gc.clip_by_global_norm(1.0))), needs_loss(gc.zclip())
      (True, False)
    """
    config = rule.config or {}
    if config.get("rule") == "skip_on_spike" and config.get("loss"):
        return True
    return any(needs_loss(r) for r in rule.parts)


def skips_finite(rule: Rule) -> bool:
    """Whether ``rule`` (or a rule inside it) may skip steps whose gradients are finite (:func:`skip_on_spike`).

    Adapters use it to choose a true skip that costs a host sync where their optimizer has
    no branch-free one (``gradclip_torch.attach``'s ``sync_skip="auto"``); a
    ``nonfinite="skip"`` rule only skips NaN/Inf steps and does not count.

    Example:
      >>> import gradclip_core as gc
      >>> skips_finite(gc.chain(gc.skip_on_spike(), gc.clip_by_global_norm(1.0))), skips_finite(gc.zclip(nonfinite="skip"))
      (True, False)
    """
    if (rule.config or {}).get("rule") == "skip_on_spike":
        return True
    return any(skips_finite(r) for r in rule.parts)
