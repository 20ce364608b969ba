"""Pruning schedules: *when* masks are recomputed and *which* sparsity they target.

A schedule is a :class:`Schedule` (a NamedTuple of plain Python values, so it sits
in a rule's ``config`` and survives ``from_config``; a dict with its fields is
accepted too). The step counter is an int32 0-d array in the rule state, advanced
by every ``project`` call (one per optimizer step); step ``t`` is the ``t``-th call
(0-based). Presets:

- :func:`one_shot` ``(step=0)``: prune to the target once, at ``step``.
- :func:`constant_schedule` ``(begin_step, end_step, frequency)``: tfmot's
  ``ConstantSparsity``: recompute at ``begin_step``, every ``frequency`` steps, up to
  ``end_step`` (``-1``: forever).
- :func:`polynomial_schedule` ``(begin_step, end_step, frequency, initial_sparsity,
  power=3)``: Zhu & Gupta (2017), tfmot ``PolynomialDecay``, jaxpruner
  ``PolynomialSchedule``: on the steps ``t = begin_step + i * frequency <= end_step``
  the target is ``s_f + (s_i - s_f) * (1 - (t - t0) / (end_step - t0)) ** power``.
  (As in tfmot, ``end_step`` itself is a pruning step only if ``end_step - begin_step``
  is a multiple of ``frequency``.)

  The final sparsity is reached *at* step ``end_step``, i.e. in the ``end_step + 1``-th
  optimizer step: after exactly ``end_step`` steps the last recomputation was at
  ``end_step - frequency`` (``polynomial_schedule(0, 40, 10)`` to 0.8 gives 0.7875 after
  40 steps, 0.8 after 41). That is tfmot's count up to 0.5.0: ``UpdatePruningStep`` set the
  pruning step to ``optimizer.iterations`` at the start of each batch (0 for the first),
  and ``PolynomialDecay`` prunes on ``begin_step <= step <= end_step`` with
  ``(step - begin_step) % frequency == 0``, so 40 batches end with the mask of step 30
  (``tests/core/test_prune.py`` replays tfmot's definition). To be at the final sparsity
  after ``N`` steps, pass ``end_step=N - 1`` (with ``N - 1 - begin_step`` a multiple of
  ``frequency``).

  Since tfmot 0.5.1 (commit 782fd70, "Update the
  way of incrementing pruning_step") its ``PruneLowMagnitude`` wrapper increments its
  ``pruning_step`` in the train step *before* it prunes, so the first batch is step 1:
  ``first_step=1`` gives that count (every preset takes it; ``polynomial_schedule(0, 40,
  10, first_step=1)`` is at the final sparsity after 40 steps). ``gradclip_keras``'s tfmot
  API (``PolynomialDecay``, ``ConstantSparsity``) builds its schedules with it.

Every preset takes ``first_step`` (default 0): the number the schedule gives the first
``project`` call. The schedule sees step ``count + first_step``.

The scheduled target is computed on the device in float32 (``jax.jit`` without x64
has nothing wider): ``p = float32(t - t0) / (t1 - t0)``, ``(1 - p)`` raised by repeated
multiplication for integer powers, then ``k = round_half_even(target * float32(n))``,
identical in every framework (for ``n > 2**24`` within float32's rounding of the
product). Constant targets (one-shot, constant) are rounded exactly in Python.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, NamedTuple, Sequence

from ..backend._collective import active, all_reduce

__all__ = ["Schedule", "one_shot", "constant_schedule", "polynomial_schedule", "check_schedule", "ROUNDINGS", "RELATIVE",
           "iterative_sparsity"]

ROUNDINGS = ("prune", "keep", "tfmot")


class Schedule(NamedTuple):
    """When masks are recomputed (see the module docstring); build with the presets."""

    kind: str = "one_shot"
    begin_step: int = 0
    end_step: int = -1
    frequency: int = 1
    initial_sparsity: float = 0.0
    power: float = 3
    first_step: int = 0

    # ------------------------------------------------------------------ device side
    def active(self, xp: Any, t: Any) -> Any:
        """0-d bool array: masks are recomputed at the ``t``-th ``project`` call (``t``: int32 0-d, from 0)."""
        if self.first_step:
            t = t + self.first_step
        if self.kind == "one_shot":
            return t == self.begin_step
        on = t >= self.begin_step
        if self.end_step >= 0:
            on = on & (t <= self.end_step)
        if self.frequency > 1:
            on = on & (xp.remainder(t - self.begin_step, self.frequency) == 0)
        return on

    def target(self, xp: Any, t: Any, final: float) -> Any:
        """The target sparsity at step ``t``: a Python float, or a float32 0-d array."""
        if self.kind != "polynomial":
            return final
        if self.first_step:
            t = t + self.first_step
        span = float(self.end_step - self.begin_step)
        p = xp.astype(t - self.begin_step, xp.float32) / span
        p = xp.minimum(xp.maximum(p, xp.zeros_like(p)), xp.ones_like(p))
        q = 1.0 - p
        power = float(self.power)
        if power.is_integer() and power >= 1:
            acc = q
            for _ in range(int(power) - 1):
                acc = acc * q
        else:
            acc = xp.pow(q, power)
        return final + (float(self.initial_sparsity) - final) * acc


def _int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def one_shot(step: int = 0, *, first_step: int = 0) -> Schedule:
    """Prune once, at optimizer step ``step`` (0: the first ``project`` call).

    Args:
      step: the step to prune at.
      first_step: the number of the first ``project`` call (see the module docstring;
        1: tfmot >= 0.5.1's count).

    Example:
      >>> one_shot(10).begin_step
      10
    """
    return Schedule("one_shot", begin_step=_int("step", step, 0), first_step=_int("first_step", first_step, 0))


def constant_schedule(begin_step: int = 0, end_step: int = -1, frequency: int = 1, *, first_step: int = 0) -> Schedule:
    """Recompute the masks at the target sparsity every ``frequency`` steps (tfmot ``ConstantSparsity``).

    Masks are recomputed on the steps ``begin_step + i * frequency``, up to ``end_step``
    (``-1``: for ever). ``first_step``: the number of the first ``project`` call (1:
    tfmot >= 0.5.1's count, see the module docstring).

    Example:
      >>> constant_schedule(0, 100, 10).frequency
      10
    """
    begin_step = _int("begin_step", begin_step, 0)
    if isinstance(end_step, bool) or not isinstance(end_step, int) or (end_step != -1 and end_step < begin_step):
        raise ValueError(f"end_step must be -1 or an int >= begin_step, got {end_step!r}")
    return Schedule("constant", begin_step, end_step, _int("frequency", frequency, 1),
                    first_step=_int("first_step", first_step, 0))


def polynomial_schedule(
    begin_step: int, end_step: int, frequency: int = 1, initial_sparsity: float = 0.0, power: float = 3,
    *, first_step: int = 0,
) -> Schedule:
    """Gradual pruning (Zhu & Gupta 2017; tfmot ``PolynomialDecay``): cubic by default.

    The final sparsity is the rule's ``amount``, reached at step ``end_step`` (the
    ``end_step + 1``-th optimizer step, as in tfmot; see the module docstring).

    Args:
      begin_step: first step of the schedule (int >= 0).
      end_step: the step at which the target reaches the final sparsity (int > begin_step).
      frequency: recompute the masks every ``frequency`` steps from ``begin_step``.
      initial_sparsity: the target at ``begin_step``, in ``[0, 1]``.
      power: the exponent (> 0) of the decay.
      first_step: the number of the first ``project`` call (0; 1 is tfmot >= 0.5.1's
        count, whose first batch is step 1: see the module docstring).

    Returns:
      A :class:`Schedule`.

    Example:
      >>> polynomial_schedule(0, 1000, 100).power
      3
    """
    begin_step = _int("begin_step", begin_step, 0)
    if isinstance(end_step, bool) or not isinstance(end_step, int) or end_step <= begin_step:
        raise ValueError(f"end_step must be an int > begin_step, got {end_step!r}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power <= 0:
        raise ValueError(f"power must be a finite number > 0, got {power!r}")
    return Schedule("polynomial", begin_step, end_step, _int("frequency", frequency, 1),
                    _fraction("initial_sparsity", initial_sparsity), power, _int("first_step", first_step, 0))


def check_schedule(schedule: Any) -> Schedule:
    """``None`` (one-shot at step 0), a :class:`Schedule`, or a dict/list of its fields (JSON configs)."""
    if schedule is None:
        return one_shot(0)
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Mapping):
        schedule = Schedule(**schedule)
    elif isinstance(schedule, (list, tuple)):
        schedule = Schedule(*schedule)
    else:
        raise ValueError(f"schedule must be None or a gradclip schedule (one_shot, constant_schedule, polynomial_schedule), got {schedule!r}")
    first = schedule.first_step
    if schedule.kind == "one_shot":
        return one_shot(schedule.begin_step, first_step=first)
    if schedule.kind == "constant":
        return constant_schedule(schedule.begin_step, schedule.end_step, schedule.frequency, first_step=first)
    if schedule.kind == "polynomial":
        return polynomial_schedule(schedule.begin_step, schedule.end_step, schedule.frequency, schedule.initial_sparsity,
                                   schedule.power, first_step=first)
    raise ValueError(f"schedule kind must be one_shot, constant or polynomial, got {schedule.kind!r}")


RELATIVE = ("all", "remaining")


def check_amount(amount: Any, name: str = "amount", schedule: Schedule | None = None) -> float | int:
    """``amount`` as torch.nn.utils.prune reads it: an int is a count, a float a fraction.

    Args:
      amount: an int ``>= 0`` (how many elements or units to prune) or a float in ``[0, 1]``
        (which fraction of them). ``1`` prunes one element, ``1.0`` all of them.
      name: the argument's name, for errors.
      schedule: the rule's schedule: a count cannot follow a polynomial schedule.

    Returns:
      The count (``int``) or the fraction (``float``).

    Raises:
      ValueError: a bool, a negative int, a float outside ``[0, 1]``, or a count with a
        polynomial schedule.

    Example:
      >>> check_amount(3), check_amount(0.25)
      (3, 0.25)
    """
    if isinstance(amount, numbers.Integral) and not isinstance(amount, bool):
        if amount < 0:
            raise ValueError(f"{name} must be an int >= 0 (a count) or a float in [0, 1] (a fraction), got {amount!r}")
        if schedule is not None and schedule.kind == "polynomial":
            raise ValueError(
                f"{name}={amount!r} is an int, i.e. a count of elements (as in torch.nn.utils.prune); a polynomial "
                f"schedule interpolates fractions: pass the final sparsity as a float (e.g. {name}=0.8)"
            )
        return int(amount)
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise ValueError(f"{name} must be an int >= 0 (a count) or a float in [0, 1] (a fraction), got {amount!r}")
    return _fraction(name, float(amount))


def check_relative(relative_to: Any) -> str:
    """``relative_to=``: ``"all"`` elements, or the ``"remaining"`` (unpruned) ones."""
    if relative_to not in RELATIVE:
        raise ValueError(f"relative_to must be one of {list(RELATIVE)}, got {relative_to!r}")
    return relative_to


def check_rounding(rounding: Any) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {list(ROUNDINGS)}, got {rounding!r}")
    return rounding


def alive_counts(xp: Any, masks: Sequence[Any]) -> list:
    """The number of kept elements of each mask (0-d integer arrays), of the full arrays under sharding."""
    counts = [xp.count_nonzero(m) for m in masks]
    if active() and counts:
        v = all_reduce(xp, xp.stack(counts), "sum")
        counts = [v[i] for i in range(len(counts))]
    return counts


def prune_count(xp: Any, target: Any, n: int, rounding: str, alive: Any = None, where: str = "the arrays") -> Any:
    """How many of ``n`` elements to prune for sparsity ``target`` (a fraction) or a count ``target`` (an int).

    ``"prune"`` (torch.nn.utils.prune): ``k = round_half_even(target * n)``.
    ``"keep"`` (tfmot / jaxpruner): ``kept = max(1, round_half_even((1 - target) * n))``,
    ``k = n - kept`` (``k = 0`` for ``n = 0``). Python ints for constant targets
    (exact, float64 products), int32-safe 0-d arrays for scheduled (float32) ones.
    ``"tfmot"``: ``"keep"`` computed as tfmot's ``pruning_impl.Pruning._update_mask``
    does, in float32 for constant targets too: ``kept = max(1, round_half_even(float32(n)
    * (1 - float32(target))))`` (``"keep"`` differs from it for constant targets where
    the float64 product lies on the other side of a ``.5`` than the float32 one: 0.3 of
    45 elements keeps 31 with ``"keep"``, 32 in tfmot; the same for scheduled targets).
    An int ``target`` is the count itself (torch's int ``amount``; at most ``n``).

    ``alive`` (``relative_to="remaining"``): the number of elements still kept (a 0-d
    integer array); then the count applies to them, as torch's ``PruningContainer`` does
    when a pruned tensor is pruned again: ``k = (n - alive) + round_half_even(target *
    alive)`` (float32 product; ``"keep"``: ``alive - max(1, round((1 - target) * alive))``),
    or ``(n - alive) + min(target, alive)`` for a count. Elements pruned before rank first
    in the selection, so they are the first ``n - alive`` of the ``k``.

    Raises:
      ValueError: a count larger than ``n`` (torch raises too), naming ``where``.
    """
    if n == 0:
        return 0
    if isinstance(target, int):
        if target > n:
            raise ValueError(
                f"amount={target} is an int, i.e. a count (as in torch.nn.utils.prune), larger than the {n} "
                f"elements of {where}; pass a float in [0, 1] for a fraction"
            )
        if alive is None:
            return target
        a = xp.astype(alive, xp.int64 if n >= 2**31 else xp.int32)
        return (n - a) + xp.minimum(a, xp.full_like(a, target))
    if alive is not None:
        a = xp.astype(alive, xp.float32)
        if rounding == "prune":
            more = xp.round(target * a)
        else:
            kept = xp.minimum(xp.maximum(xp.round((1.0 - target) * a), xp.ones_like(a)), a)
            more = a - kept
        k = (float(n) - a) + more
        return xp.astype(k, xp.int32) if n < 2**31 else xp.astype(k, xp.int64)
    if isinstance(target, float):
        if rounding == "prune":
            return min(n, int(round(target * n)))
        if rounding == "tfmot":  # float32, as tf.cast(tf.size(w), tf.float32) * (1 - sparsity) with a float32 sparsity
            import numpy as np

            kept = int(np.rint(np.float32(n) * (np.float32(1.0) - np.float32(target))))
            return n - min(n, max(1, kept))
        return n - min(n, max(1, int(round((1.0 - target) * n))))
    nf = float(n)
    if rounding == "prune":
        k = xp.round(target * nf)
    else:
        kept = xp.maximum(xp.round((1.0 - target) * nf), xp.ones_like(target))
        k = nf - xp.minimum(kept, xp.full_like(target, nf))
    return xp.astype(k, xp.int32) if n < 2**31 else xp.astype(k, xp.int64)


def iterative_sparsity(amount: float, rounds: int) -> float:
    """The sparsity after ``rounds`` rounds that each prune ``amount`` of what remains: ``1 - (1 - amount) ** rounds``.

    What ``relative_to="remaining"`` reaches (up to the rounding of each round's count):
    a rule ``global_magnitude_prune(0.2, relative_to="remaining", schedule=...)`` that
    recomputes its masks once per round is at ``iterative_sparsity(0.2, r)`` after ``r``
    rounds (lottery-ticket pruning: 20%, 36%, 48.8%, ...).

    Args:
      amount: the fraction of the remaining weights pruned per round, in ``[0, 1]``.
      rounds: the number of rounds (int >= 0).

    Returns:
      The overall sparsity, a float.

    Example:
      >>> [round(iterative_sparsity(0.2, r), 4) for r in range(4)]
      [0.0, 0.2, 0.36, 0.488]
    """
    a = _fraction("amount", amount)
    r = _int("rounds", rounds, 0)
    return 1.0 - (1.0 - a) ** r
