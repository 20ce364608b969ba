"""Effects: what a rule does to its arrays, declared before anything is written.

Most rules do one of a few things to the arrays they are given: scale them (a global
factor, one per array, or one per unit), mask them, clamp them, or nothing. A rule
declares that *effect* (``rule.update_effect`` / ``rule.project_effect``) and the
adapter applies it the cheapest way its framework allows: torch scales the ``.grad``
buffers in place with ``_foreach_mul_`` (or folds a global scale into a fused
optimizer's ``grad_scale``), JAX and TensorFlow let XLA fuse the multiply. Everything
an effect holds is computed (and checked) before any array is written, so an adapter
that applies it in place never leaves an update half-applied.

Effects (NamedTuples, so they are pytrees; ``None`` entries leave an array as it is):

- :class:`Keep`: the arrays are unchanged.
- :class:`Scale` ``(factors, divide=False)``: ``x * f`` (``x / f`` with ``divide``) for each
  array and its factor: a 0-d array (one object shared by every array means a global
  scale), or an array broadcastable to ``x`` (one factor per unit). Each factor is cast
  to its array's dtype first (the numerics contract).
- :class:`Mask` ``(masks)``: ``where(mask, x, 0)`` with bool keep-masks.
- :class:`Clamp` ``(lo, hi, count=None)``: ``x`` clipped to ``[lo, hi]`` (bounds: Python numbers or
  0-d arrays, either may be ``None``), NaN kept; with a :class:`Count`, the fraction of elements
  outside the bounds is counted as the clamp is applied (torch: in the clamp's own pass).
- :class:`ZeroNonfinite`: NaN and +-Inf elements set to 0.
- :class:`Replace` ``(arrays)``: new arrays of the same shapes and dtypes (any formula).
- :class:`Then` ``(effects)``: several effects, applied in order.
- :class:`Skip` ``(effect, skip)``: ``effect``, then all zeros where the 0-d bool ``skip``
  is true (``nonfinite="skip"``): adapters that own the optimizer skip its step instead.
- :class:`On` ``(indices, effect)``: ``effect`` on the arrays at ``indices`` only (its
  per-array entries refer to those), the others unchanged (a rule restricted with
  :func:`gradclip_core.on`).

:func:`gradclip_core.backend.apply_effect` applies an effect out of place (the portable
definition, and what ``rule.update`` does) or, where the framework allows it, in place.

Example:
  >>> import numpy as np
  >>> from gradclip_core.backend import apply_effect, namespace
  >>> x = [np.array([3.0, 4.0], np.float32)]
  >>> apply_effect(namespace(*x), x, Scale((np.float32(0.5),)))[0].tolist()
  [1.5, 2.0]
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

__all__ = ["Keep", "Scale", "Mask", "Clamp", "Count", "ZeroNonfinite", "Replace", "Then", "Skip", "On", "Effect", "then",
           "check_effect"]


class Keep(NamedTuple):
    """The arrays are left unchanged."""


class Scale(NamedTuple):
    """``x * f`` (or ``x / f``) per array; ``f`` cast to ``x``'s dtype first.

    Attributes:
      factors: one entry per array: a 0-d array, an array broadcastable to the array
        (per-unit factors), or ``None`` (the array is left unchanged). The same 0-d object
        for every array means one global factor.
      divide: divide by the factors instead of multiplying (formulas that divide, e.g.
        optax's block RMS, keep their exact rounding).
    """

    factors: tuple
    divide: bool = False


class Mask(NamedTuple):
    """``where(mask, x, 0)`` per array (bool masks, ``True`` = kept; ``None``: unchanged)."""

    masks: tuple


class Clamp(NamedTuple):
    """Every element clipped to ``[lo, hi]`` (either bound may be ``None``); NaN stays NaN.

    Attributes:
      lo: lower bound (a Python number or a 0-d array), or ``None``.
      hi: upper bound, or ``None``.
      count: ``None``, or a :class:`Count` (made by
        :func:`gradclip_core.backend.clipped_fraction`): whoever first applies the clamp counts
        the elements outside ``[lo, hi]`` (NaN is neither) of the arrays it is applied to,
        before clamping them, and writes their fraction into the count's array (a later
        application, e.g. to replicas another rank saw, leaves it as written).
    """

    lo: Any
    hi: Any
    count: Any = None


class Count:
    """A rule's ``clipped_fraction``, counted when its :class:`Clamp` is applied (the count's own pass saved).

    Made only for arrays written in place (torch, inside
    :func:`gradclip_core.backend.counts_on_apply`): ``out`` is the 0-d float32 array the rule
    returned in its info; :meth:`write` fills it. The arrays a clamp is applied to hold what
    the rule saw (the effect contract), so the count is the rule's.

    Attributes:
      out: the 0-d float32 array (the info value), written in place.
      total: the element count of the arrays (the fraction's denominator).
      done: whether :meth:`write` ran.
    """

    __slots__ = ("out", "total", "done")

    def __init__(self, out: Any, total: int) -> None:
        self.out, self.total, self.done = out, total, False

    def write(self, xp: Any, hits: Sequence[Any]) -> None:
        """``out = sum(hits) / total``: ``hits``, one float32 0-d count per array, summed as the rule sums them."""
        from ._numerics import ratio

        self.out[...] = ratio(xp, list(hits), self.total)
        self.done = True


class ZeroNonfinite(NamedTuple):
    """NaN and +-Inf elements become 0 (``nonfinite="zero"``)."""


class Replace(NamedTuple):
    """New arrays (same shapes and dtypes), for formulas that are not one of the effects above."""

    arrays: tuple


class Then(NamedTuple):
    """Several effects, applied in order (a :func:`gradclip_core.chain` of rules)."""

    effects: tuple


class Skip(NamedTuple):
    """``effect``, and all zeros where the 0-d bool ``skip`` is true (``nonfinite="skip"``)."""

    effect: Any
    skip: Any


class On(NamedTuple):
    """``effect`` applied to the arrays at ``indices`` only (a tuple of ints, in order)."""

    indices: tuple
    effect: Any


Effect = Keep | Scale | Mask | Clamp | ZeroNonfinite | Replace | Then | Skip | On
_KINDS = (Keep, Scale, Mask, Clamp, ZeroNonfinite, Replace, Then, Skip, On)


def then(*effects: Any) -> Any:
    """``Then(effects)`` without :class:`Keep` entries, flattened (a single effect as itself).

    Example:
      >>> then(Keep(), Clamp(-1.0, 1.0))
      Clamp(lo=-1.0, hi=1.0, count=None)
    """
    flat: list = []
    for e in effects:
        if isinstance(e, Then):
            flat.extend(x for x in e.effects if not isinstance(x, Keep))
        elif not isinstance(e, Keep):
            flat.append(e)
    if not flat:
        return Keep()
    return flat[0] if len(flat) == 1 else Then(tuple(flat))


def check_effect(effect: Any, arrays: Sequence[Any], where: str) -> None:
    """``effect`` must be an effect whose per-array entries match ``arrays``.

    Raises:
      ValueError: not an effect, or a per-array entry count / shape / dtype that does not fit.
    """
    if not isinstance(effect, _KINDS):
        raise ValueError(f"{where}: a rule effect must be one of {[k.__name__ for k in _KINDS]}, got {type(effect).__name__}")
    n = len(arrays)
    if isinstance(effect, (Scale, Mask, Replace)):
        entries = effect[0]
        if len(entries) != n:
            raise ValueError(f"{where}: {type(effect).__name__} has {len(entries)} entries for {n} arrays")
        if isinstance(effect, Replace):
            for i, (a, b) in enumerate(zip(arrays, entries)):
                if tuple(b.shape) != tuple(a.shape) or b.dtype != a.dtype:
                    raise ValueError(
                        f"{where}: the rule turned array {i} from {a.dtype}{list(a.shape)} into {b.dtype}{list(b.shape)}"
                    )
        elif isinstance(effect, Mask):
            for i, (a, m) in enumerate(zip(arrays, entries)):
                if m is not None and tuple(m.shape) != tuple(a.shape):
                    raise ValueError(f"{where}: mask {i} has shape {tuple(m.shape)}, its array {tuple(a.shape)}")
    elif isinstance(effect, Then):
        for e in effect.effects:
            check_effect(e, arrays, where)
    elif isinstance(effect, Skip):
        check_effect(effect.effect, arrays, where)
    elif isinstance(effect, On):
        if any(not 0 <= i < n for i in effect.indices):
            raise ValueError(f"{where}: On indices {effect.indices} out of range for {n} arrays")
        check_effect(effect.effect, [arrays[i] for i in effect.indices], where)
