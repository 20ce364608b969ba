"""Cross-process reductions for rules that run on shards of the arrays.

A global rule (global-norm clip, global pruning threshold, ...) combines per-array
partial results (sums of squares, maxima, counts) into one value. When each process
(or each ``shard_map`` instance) holds only a shard of every array, those partials must
also be combined across shards. The core marks every such point with
:func:`all_reduce`; by default it is the identity (single process, or arrays that are
globally sharded under ``jax.jit``, where XLA inserts the collectives itself).
Adapters activate a reducer for the duration of a rule call with :func:`collective`
(torch: ``torch.distributed.all_reduce`` on a process group; JAX: ``lax.psum`` /
``lax.pmax`` over a named axis).

The rules stack their per-array partials into one vector and reduce it once, so a
global-norm clip (and AutoClip, ZClip, ``record_norms``) costs one collective per step,
AGC at most two (unit norms split across shards, then the clipped count), and a global
pruning recomputation one per selection pass (see :mod:`gradclip_core._select`).

Contract: with a reducer active, every array passed to the rule is a *shard* and the
shards over all participants partition the full arrays **along each array's split
axis** (by default the leading one, in participant order: participant ``i`` holds the
``i``-th block of rows: FSDP2's ``Shard(0)``, ``shard_map`` with ``P(axis)`` on the first
dimension; ``Participants(axes=...)`` names another axis per array, e.g. tensor
parallel ``Shard(1)``). An array held whole by one participant is split too (the others
pass an empty shard, empty along the split axis). No replicated array may be passed (it
would be counted once per participant). Every participant must call
the rule with the same number of arrays (empty shards are fine), since every
participant must make the same collectives.

A reducer is a callable ``reducer(xp, x, op) -> x`` (``op`` ``"sum"`` or ``"max"``,
elementwise over participants). Exact pruning ties and global element counts need
three optional attributes, which :class:`Participants` bundles:

- ``size``: the number of participants (a Python int);
- ``index(xp)``: this participant's position (0-d integer array or int);
- ``total(n)``: the sum of a Python int over participants, as a Python int;
- ``axes``: per array, the axes its shards split (tensor parallel ``Shard(1)``: ``1``).
  Rules that only sum over every element (norms, counts, histograms) do not mind;
  unit-wise rules (AGC, max-norm) ask :func:`split_axes`: a unit whose reduced axes
  include the split axes spans shards (its partial norms are summed over participants),
  one whose reduced axes exclude them is whole on one participant;
- ``leading``: ``False`` when some arrays are split along another axis than the leading
  one without saying which (derived from ``axes`` when given; unit-wise rules refuse it).

Example:
  >>> import numpy as np
  >>> from gradclip_core.backend import all_reduce, collective
  >>> twice = lambda xp, x, op: x * 2 if op == "sum" else x
  >>> with collective(twice):
  ...     float(all_reduce(np, np.float32(3.0), "sum"))
  6.0
  >>> float(all_reduce(np, np.float32(3.0), "sum"))
  3.0
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from ._scoped import ScopedValue

__all__ = ["Reducer", "Participants", "all_reduce", "all_gather", "static_total", "full_shape", "collective", "active", "participant_index",
           "split_on_leading_axis", "split_axes", "split_offsets"]

OPS = ("sum", "max")

Reducer = Callable[[Any, Any, str], Any]
"""``reducer(xp, x, op) -> x``: ``x`` reduced over all participants, ``op`` in ``OPS``."""

# The reducer of the open collective() block (None while none is open, read without the
# ContextVar: torch.compile cannot trace ContextVar.get, see _scoped.py).
_REDUCER = ScopedValue("gradclip_collective")


def _reducer() -> Reducer | None:
    return _REDUCER.get()


class Participants:
    """A reducer with the participant facts exact pruning needs (see the module docstring).

    Args:
      reduce: ``reduce(xp, x, op) -> x``, the elementwise reduction over participants.
      size: number of participants (int >= 1).
      index: ``index(xp)`` -> this participant's position in ``[0, size)``.
      total: ``total(n)`` -> sum of the Python int ``n`` over participants.
      leading: whether every shard is a block of its array's leading axis (default);
        ``False``: some are blocks of other axes (each element is still seen once).
        Derived from ``axes`` when that is given (a conflicting ``leading`` is an error).
      axes: one entry per array the rule is called with: the axis its shards split
        (an int), several axes (a tuple: one tensor split along two axes, e.g. FSDP2
        ``Shard(0)`` x tensor parallel ``Shard(1)``), or ``None`` (the leading axis).
        ``None`` (the default): every array is split along its leading axis.
      offsets: with ``axes``, one entry per array: ``None`` (unknown) or, per split axis
        of that array (in sorted order), ``(start, full)``: where this participant's
        shard starts along that axis of the full array, and the full extent. Unit-wise
        rules need it for an array split along two axes whose units reduce only some
        of them (FSDP2 ``Shard(0)`` x ``RowwiseParallel`` ``Shard(1)``, units = rows):
        see :func:`split_offsets`.

    Raises:
      ValueError: a bad ``size``, ``leading``, ``axes`` or ``offsets`` (naming the argument).

    Example:
      >>> import numpy as np
      >>> p = Participants(lambda xp, x, op: x, size=1, index=lambda xp: 0, total=lambda n: n)
      >>> with collective(p):
      ...     all_gather(np, np.array([2, 3])).tolist(), static_total(5)
      ([[2, 3]], 5)
    """

    def __init__(self, reduce: Reducer, *, size: int, index: Callable[[Any], Any], total: Callable[[int], int],
                 leading: bool | None = None, axes: Any = None, offsets: Any = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        if leading is not None and not isinstance(leading, bool):
            raise ValueError(f"leading must be a bool, got {leading!r}")
        self.axes = None if axes is None else tuple(_check_split(i, a) for i, a in enumerate(axes))
        derived = None if self.axes is None else all(a == (0,) for a in self.axes)
        if leading is not None and derived is not None and leading != derived:
            raise ValueError(f"leading={leading} contradicts axes={axes!r} (leading is derived from axes: omit it)")
        self.leading = leading if derived is None else derived
        self.offsets = None if offsets is None else _check_offsets(self.axes, offsets)
        if self.leading is None:
            self.leading = True
        self._reduce = reduce
        self.size = size
        self.index = index
        self.total = total

    def __call__(self, xp: Any, x: Any, op: str) -> Any:
        return self._reduce(xp, x, op)


def _check_split(i: int, a: Any) -> tuple:
    """One entry of ``Participants(axes=...)`` as a sorted tuple of axes (``None``: ``(0,)``)."""
    if a is None:
        return (0,)
    one = isinstance(a, int) and not isinstance(a, bool)
    many = isinstance(a, (tuple, list)) and a and all(isinstance(x, int) and not isinstance(x, bool) for x in a)
    if not (one or many) or any(x < 0 for x in ((a,) if one else a)) or (many and len(set(a)) != len(a)):
        raise ValueError(f"axes[{i}] must be None, an axis (int >= 0) or a tuple of distinct axes, got {a!r}")
    return (a,) if one else tuple(sorted(a))


def _check_offsets(axes: tuple | None, offsets: Any) -> tuple:
    """``Participants(offsets=...)`` as a tuple (per array ``None`` or ``((start, full), ...)``)."""
    if axes is None:
        raise ValueError("offsets= needs axes= (one (start, full) pair per split axis of each array)")
    if not isinstance(offsets, (tuple, list)) or len(offsets) != len(axes):
        raise ValueError(f"offsets must be a sequence with one entry per array ({len(axes)}), got {offsets!r}")
    out = []
    for i, (o, a) in enumerate(zip(offsets, axes)):
        if o is None:
            out.append(None)
            continue

        def ok(pair: Any) -> bool:
            return (isinstance(pair, (tuple, list)) and len(pair) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in pair) and 0 <= pair[0] <= pair[1])

        if not isinstance(o, (tuple, list)) or len(o) != len(a) or not all(ok(pair) for pair in o):
            raise ValueError(f"offsets[{i}] must be None or one (start, full) pair of ints, 0 <= start <= full, per "
                             f"split axis {a}, got {o!r}")
        out.append(tuple((int(s), int(f)) for s, f in o))
    return tuple(out)


def _need(attr: str, what: str) -> Any:
    reducer = _reducer()
    value = getattr(reducer, attr, None)
    if value is None:
        raise ValueError(
            f"{what} under a collective needs a reducer with `{attr}` (use gradclip_core.backend.Participants); "
            f"got {type(reducer).__name__}"
        )
    return value


def all_reduce(xp: Any, x: Any, op: str = "sum") -> Any:
    """``x`` reduced with ``op`` (``"sum"`` or ``"max"``) over every participant.

    The identity unless a reducer is active (:func:`collective`). ``x`` is an array of
    any shape (reducers reduce elementwise), so a whole vector of partials costs one
    collective.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {list(OPS)}, got {op!r}")
    reducer = _reducer()
    return x if reducer is None else reducer(xp, x, op)


def all_gather(xp: Any, x: Any) -> Any:
    """Every participant's ``x`` (integer or float array), stacked: shape ``(size, *x.shape)``.

    One ``"sum"`` collective of ``x`` placed in this participant's row of zeros. Without
    an active reducer: ``x[None]``.
    """
    if _reducer() is None:
        return xp.expand_dims(x, axis=0)
    size = _need("size", "all_gather")
    index = _need("index", "all_gather")(xp)
    rows = xp.arange(size, dtype=xp.int32)
    here = xp.reshape(rows == xp.astype(xp.asarray(index), xp.int32), (size,) + (1,) * x.ndim)
    placed = xp.where(here, xp.expand_dims(x, axis=0), xp.zeros_like(xp.expand_dims(x, axis=0)))
    return all_reduce(xp, placed, "sum")


def static_total(n: int) -> int:
    """The Python int ``n`` summed over participants (``n`` itself without a reducer).

    Used for element counts, which are static shapes in a single process.
    """
    if _reducer() is None:
        return n
    return int(_need("total", "a global element count")(int(n)))


def full_shape(shape: tuple, axis: int = 0) -> tuple:
    """The full array's shape of a shard shaped ``shape``, split along ``axis`` (summed over participants).

    ``shape`` itself without a reducer, or when the array has no axis ``axis``.

    Example:
      >>> full_shape((4, 3), 1)
      (4, 3)
    """
    shape = tuple(int(d) for d in shape)
    if not active() or axis >= len(shape):
        return shape
    return shape[:axis] + (static_total(shape[axis]),) + shape[axis + 1:]


def participant_index(xp: Any, what: str = "exact pruning ties") -> Any:
    """This participant's position (needs a reducer with ``index``, e.g. :class:`Participants`)."""
    return _need("index", what)(xp)


def split_on_leading_axis() -> bool:
    """Whether every shard is a block of its array's leading axis (True without a reducer).

    Example:
      >>> split_on_leading_axis()
      True
    """
    return getattr(_reducer(), "leading", True)


def split_axes(i: int) -> tuple | None:
    """The axes along which the shards of array ``i`` (as the calling rule numbers it) split.

    ``(0,)`` without a reducer, or with one that gives no ``axes`` (every array split
    along its leading axis); ``None`` when the reducer says ``leading=False`` without
    ``axes`` (unknown: unit-wise rules refuse it). A rule restricted to some arrays
    (:func:`gradclip_core.on`) numbers its own arrays: ``i`` is mapped to the position
    among all arrays the way :func:`gradclip_core.backend.array_label` maps it.

    Args:
      i: the array's position in the list the calling rule was given.

    Returns:
      A sorted tuple of axes (``(0,)``: the leading one), or ``None`` (unknown).

    Raises:
      ValueError: the reducer's ``axes`` has no entry for array ``i``.

    Example:
      >>> import numpy as np
      >>> p = Participants(lambda xp, x, op: x, size=2, index=lambda xp: 0, total=lambda n: n, axes=[None, 1])
      >>> with collective(p):
      ...     split_axes(0), split_axes(1)
      ((0,), (1,))
      >>> split_axes(1)
      (0,)
    """
    reducer = _reducer()
    axes = getattr(reducer, "axes", None)
    if axes is None:
        return (0,) if getattr(reducer, "leading", True) else None
    from ._names import global_index  # (one re-indexing of restricted rules: the names' one)

    j = global_index(i)
    if not 0 <= j < len(axes):
        raise ValueError(f"the reducer's axes= has {len(axes)} entries, but the rule sees array {j} "
                         "(give one entry per array)")
    return axes[j]


def split_offsets(i: int) -> tuple | None:
    """Where this participant's shard of array ``i`` lies in the full array, per split axis.

    ``((start, full), ...)``, one pair per axis of :func:`split_axes` ``(i)`` (sorted):
    the shard's first index along that axis of the full array, and the full extent.
    ``None`` when unknown (no reducer, a reducer without ``offsets``, or ``None`` for
    that array). Re-indexed for :func:`gradclip_core.on` like :func:`split_axes`.

    Raises:
      ValueError: the reducer's ``offsets`` has no entry for array ``i``.

    Example:
      >>> p = Participants(lambda xp, x, op: x, size=4, index=lambda xp: 1, total=lambda n: n,
      ...                  axes=[(0, 1)], offsets=[((0, 8), (3, 6))])
      >>> with collective(p):
      ...     split_offsets(0)
      ((0, 8), (3, 6))
      >>> split_offsets(0) is None
      True
    """
    offsets = getattr(_reducer(), "offsets", None)
    if offsets is None:
        return None
    from ._names import global_index

    j = global_index(i)
    if not 0 <= j < len(offsets):
        raise ValueError(f"the reducer's offsets= has {len(offsets)} entries, but the rule sees array {j} "
                         "(give one entry per array)")
    return offsets[j]


def active() -> bool:
    """Whether a reducer is active (the rule runs on shards)."""
    return _reducer() is not None


@contextlib.contextmanager
def collective(reducer: Reducer | None) -> Iterator[None]:
    """Within this block, :func:`all_reduce` calls ``reducer`` (``None``: identity)."""
    with _REDUCER.scope(reducer):
        yield
