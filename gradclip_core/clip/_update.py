"""Update clipping: rules on the optimizer's *update* (the step ``delta = w_new - w_old``), not the gradient.

Both rules are built with ``on_update=True`` (see :class:`gradclip_core.Rule`): their
``update(deltas, state, params)`` receives the optimizer's update and the weights
*before* the step, and adapters that own the optimizer run them after it
(``gradclip_optax.wrap``, ``gradclip_keras.Optimizer``, ``gradclip_torch.attach``).

- :func:`clippy` (Tang et al. 2023, "Improving Training Stability for Multitask Ranking
  Models in Recommender Systems", arXiv 2302.09178; reference ``shrink_by_references``
  in ``tensorflow_recommenders/experimental/optimizers/clippy_adagrad.py``): one scale
  per array, the largest ``s`` in ``[0, 1]`` with ``s * |delta_i| <= absolute + relative * |w_i|``
  for every element ``i``.
- :func:`clip_update_norm` (Levanter's ``clip_update_by_historical_norm``): the global
  norm of the update is clipped at ``mean + sigma * max(std, 1e-6)`` of a rolling window
  of the previous (unclipped) update norms, once the window holds enough of them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .._effect import Keep, Scale
from .._nonfinite import check_policy, guard_update
from .._numerics import acc_dtype, fraction, stack_norm
from .._rule import EmptyState, Rule, factory
from .._stateless import check_params
from .._validate import check_threshold
from ..backend._collective import active, all_reduce
from ..backend._namespace import namespace
from ..backend._primitives import difference_min_bound_ratio, min_bound_ratio
from ..backend._tree import tree_where
from ._history import NormHistory, check_size, history_init, push
from ._norm import _global_norm, difference_norms_over_shards

__all__ = ["clippy", "clip_update_norm"]

_STD_FLOOR = 1e-6  # Levanter: jnp.maximum(std, 1e-6), and max_norm / jnp.maximum(norm, 1e-6)


def _min(xp: Any, x: Any) -> Any:
    """The smallest element of ``x`` (no NaN here); a 0-d ``x`` is its own minimum.

    (Not ``-max(-x)``: in a TensorFlow graph, Keras' train step, that gave ``-x`` for 0-d ``x``.)
    """
    return x if x.ndim == 0 else xp.min(x)


@factory
def clippy(relative: float = 0.1, absolute: float = 1e-7, *, nonfinite: str = "propagate") -> Rule:
    """Clippy: scale each array's update so that ``|delta_i| <= relative * |w_i| + absolute`` everywhere.

    The formula of the reference (``shrink_by_references`` of ``tensorflow_recommenders``'
    ``ClippyAdagrad``, with the weights as its one reference), per array::

        bound = absolute + relative * |w|                 # w: the weights before the step
        s     = min(1, min_i bound_i / |delta_i|)         # over the elements with delta_i != 0
        delta = delta * s

    So Clippy keeps the update's direction within each array (one scale per tensor, not
    an element-wise clamp): the element that is furthest over its bound decides. An
    array whose update is all zeros, or a size-0 array, keeps ``s = 1``. Computed in
    float32 at least (bf16/fp16 upcast), the scale is cast to the array's dtype. The
    reference's ``accumulator_relative_threshold`` (a bound relative to Adagrad's
    ``1/sqrt(accumulator)``) is Adagrad-specific and not offered; its defaults
    (``variable_relative_threshold=0.1``, ``absolute_threshold=1e-7``) are these.

    This rule acts on the optimizer's update (``rule.on_update``): use it with
    ``gradclip_optax.wrap(rule, optimizer)`` (or put ``gradclip_optax.transform(rule)``
    *after* the optimizer in an ``optax.chain``), ``gradclip_keras.Optimizer(inner, rule)``
    or ``gradclip_torch.attach(optimizer, rule)``; the last two keep a copy of the weights
    during the step (see there). ``rule.update(delta, state, params)`` needs the weights
    before the step as ``params``.

    Non-finite updates: an element whose ``delta`` is NaN does not take part in the scale
    (it stays NaN; the canonical global-norm clip does the same); an infinite element gives
    ``s = 0`` (and NaN from ``inf * 0``). ``nonfinite="skip"`` drops such a step instead.

    Args:
      relative: ``lambda_rel >= 0``, the bound relative to ``|w|``.
      absolute: ``lambda_abs >= 0``, the absolute part of the bound (with 0, an array
        with a zero weight whose update is not zero gets ``s = 0``).
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``, applied to the update.

    Returns:
      A stateless :class:`Rule` with ``on_update`` and ``needs_params``; info has
      ``min_scale`` (the smallest per-array scale, 1 when nothing was clipped) and
      ``clipped_fraction`` (the fraction of arrays scaled down).

    Raises:
      ValueError: a negative or non-finite ``relative`` / ``absolute``, or an unknown policy.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clippy(relative=0.5, absolute=0.0)
      >>> w = [np.array([2.0, 4.0], np.float32)]
      >>> delta = [np.array([2.0, 1.0], np.float32)]     # |2| > 0.5 * 2: s = 1 / 2
      >>> out, _, info = rule.update(delta, rule.init(w), w)
      >>> out[0].tolist(), float(info["min_scale"])
      ([1.0, 0.5], 0.5)
    """
    relative = check_threshold("relative", relative)
    absolute = check_threshold("absolute", absolute)
    check_policy(nonfinite)

    def effect(xp: Any, mins: list, state: Any) -> tuple:
        scales = xp.stack(mins)
        if active():  # shards of each array: the smallest ratio over every participant (one collective)
            scales = -all_reduce(xp, -scales, "max")
        factors = tuple(scales[i] for i in range(len(mins)))
        info = {"min_scale": _min(xp, scales), "clipped_fraction": fraction(xp, [scales < 1.0], [len(mins)])}
        return Scale(factors), state, info

    def update_effect(deltas: Sequence[Any], state: Any, params: Sequence[Any] | None = None):
        deltas = list(deltas)
        params = check_params("clippy", deltas, params)
        if not deltas:
            return Keep(), state, {}
        xp = namespace(*deltas)
        return effect(xp, min_bound_ratio(xp, deltas, params, relative, absolute, acc_dtype(xp, deltas)), state)

    def update_effect_from_weights(after: Sequence[Any], before: Sequence[Any], state: Any):
        after = list(after)
        before = check_params("clippy", after, before)
        if not after:
            return Keep(), state, {}
        xp = namespace(*after)
        return effect(xp, difference_min_bound_ratio(xp, after, before, relative, absolute, acc_dtype(xp, after)), state)

    return Rule(
        init=lambda params: EmptyState(),
        update_effect=guard_update(update_effect, nonfinite),
        # (a policy must see the update's elements: its guard runs on the formed update, the default)
        update_effect_from_weights=update_effect_from_weights if nonfinite == "propagate" else None,
        name="clippy",
        needs_params=True,
        on_update=True,
    )


@factory
def clip_update_norm(
    sigma: float = 3.0,
    history: int = 128,
    *,
    min_history: int | None = None,
    nonfinite: str = "propagate",
) -> Rule:
    """Clip the update's global norm at ``mean + sigma * std`` of the previous update norms (Levanter).

    Levanter's ``clip_update_by_historical_norm`` (``ClipUpdateNormConfig``:
    ``rolling_interval_length=128``, ``sigma_factor=3.0``), step by step:

    1. ``n = ||delta||`` (global 2-norm of the optimizer's update, float32 at least).
    2. Over the valid entries of the ring buffer (the last ``history`` norms):
       ``mean``, population ``std``, ``threshold = mean + sigma * max(std, 1e-6)``.
    3. With at least ``min_history`` norms in the buffer (default
       ``max(2, history // 2)``, Levanter's ``min_data_points``), the bound is that
       threshold, else ``+inf`` (no clipping).
    4. If ``n > bound``: ``delta *= bound / max(n, 1e-6)``.
    5. The *unclipped* ``n`` is pushed into the buffer (Levanter: "to prevent collapse").

    Deliberate differences: a non-finite norm is kept out of the buffer (in Levanter one
    NaN step makes the mean NaN and switches the clip off for ``history`` steps);
    ``min_history`` is capped at ``history`` (Levanter never clips with ``history=1``).
    The norm is gradclip's canonical float32 norm (optax's ``global_norm`` sums squares
    in the update dtype), so results agree within float32 rounding.

    This rule acts on the optimizer's update (``rule.on_update``): use it with
    ``gradclip_optax.wrap(rule, optimizer)`` (or ``gradclip_optax.transform(rule)`` after
    the optimizer in an ``optax.chain``, as Levanter does), ``gradclip_keras.Optimizer``
    or ``gradclip_torch.attach`` (which keep a copy of the weights during the step).

    Args:
      sigma: ``sigma_factor >= 0``.
      history: ring-buffer size (int >= 1), the rolling window.
      min_history: norms needed before the clip acts (int in ``[1, history]``), or ``None``
        for ``min(history, max(2, history // 2))``.
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``, applied to the update;
        ``"skip"`` also keeps the buffer as it was.

    Returns:
      A :class:`Rule` with ``on_update`` and state :class:`~gradclip_core.NormHistory`;
      info has ``norm`` (the update's norm before clipping), ``scale``, ``threshold`` (the
      bound applied, ``+inf`` before ``min_history`` norms) and ``clipped`` (int32 0/1).

    Raises:
      ValueError: a negative ``sigma``, a ``history`` / ``min_history`` out of range, or
        an unknown policy.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_update_norm(sigma=1.0, history=4, min_history=2)
      >>> state = rule.init([np.zeros(1, np.float32)])
      >>> for n in [1.0, 3.0, 10.0]:                  # mean 2, std 1: bound 3
      ...     out, state, info = rule.update([np.array([n], np.float32)], state)
      >>> out[0].tolist(), float(info["threshold"]), int(info["clipped"])
      ([3.0], 3.0, 1)
    """
    sigma = check_threshold("sigma", sigma)
    history = check_size("history", history)
    if min_history is None:
        min_history = min(history, max(2, history // 2))
    elif isinstance(min_history, bool) or not isinstance(min_history, int) or not 1 <= min_history <= history:
        raise ValueError(f"min_history must be an int in [1, history={history}] or None, got {min_history!r}")
    check_policy(nonfinite)
    size_ = history

    def check_state(state: Any) -> None:
        if not isinstance(state, NormHistory):
            raise ValueError(f"clip_update_norm: state must be the NormHistory made by rule.init, got {type(state).__name__}")

    def update_effect(deltas: Sequence[Any], state: NormHistory, params: Sequence[Any] | None = None):
        del params
        deltas = list(deltas)
        check_state(state)
        if not deltas:
            return Keep(), state, {}
        xp = namespace(*deltas)
        return effect(xp, _global_norm(xp, deltas, 2.0, "canonical"), len(deltas), state)

    def update_effect_from_weights(after: Sequence[Any], before: Sequence[Any], state: NormHistory):
        after = list(after)
        before = check_params("clip_update_norm", after, before)
        check_state(state)
        if not after:
            return Keep(), state, {}
        xp = namespace(*after)
        norm = stack_norm(xp, difference_norms_over_shards(xp, after, before, acc_dtype(xp, after)), 2.0)
        return effect(xp, norm, len(after), state)

    def effect(xp: Any, norm: Any, n_arrays: int, state: NormHistory) -> tuple:
        n = xp.astype(norm, xp.float32) if norm.dtype != xp.float32 else norm
        slots = xp.arange(size_, dtype=xp.int32)
        valid = slots < state.count
        zeros = xp.zeros_like(state.norms)
        count = xp.astype(xp.maximum(state.count, xp.ones_like(state.count)), xp.float32)
        mean = xp.sum(xp.where(valid, state.norms, zeros)) / count
        dev = xp.where(valid, state.norms - mean, zeros)
        std = xp.sqrt(xp.sum(dev * dev) / count)
        threshold = mean + sigma * xp.maximum(std, xp.full_like(std, _STD_FLOOR))
        bound = xp.where(state.count >= min_history, threshold, xp.full_like(threshold, math.inf))
        clipped = n > bound
        safe = xp.where(clipped, xp.maximum(n, xp.full_like(n, _STD_FLOOR)), xp.ones_like(n))
        scale = xp.where(clipped, bound / safe, xp.ones_like(n))
        pushed = push(xp, state, n)
        new_state = tree_where(xp, xp.isfinite(n), pushed, state)
        info = {"norm": norm, "scale": scale, "threshold": bound, "clipped": xp.astype(clipped, xp.int32)}
        return Scale((scale,) * n_arrays), new_state, info

    return Rule(init=history_init(size_), update_effect=guard_update(update_effect, nonfinite),
                update_effect_from_weights=update_effect_from_weights if nonfinite == "propagate" else None,
                name="clip_update_norm", on_update=True)
