"""Unit norms on shards: the one place AGC and the unit-wise constraints get each unit's L2 norm.

Without a reducer every unit is whole. With one (:func:`gradclip_core.backend.collective`),
array ``i`` is a shard split along :func:`gradclip_core.backend.split_axes` ``(i)``:

- a unit whose reduced axes include every split axis *spans* shards: every participant
  has the same units, each a part of it; the per-unit sums of squares of all such
  arrays are concatenated and summed over participants in one collective;
- a unit whose reduced axes include no split axis is whole on one participant (each
  participant has other units): nothing to reduce;
- a unit reducing some split axes but not others (one tensor split along two axes, e.g.
  FSDP2 ``Shard(0)`` x ``RowwiseParallel`` ``Shard(1)`` with ``"out_first"`` units: rows,
  reducing dim 1) spans the shards of some participants only. With the shard's place in
  the full array (:func:`gradclip_core.backend.split_offsets`) each participant writes its
  partial per-unit sums into a vector of *every* unit of the full array (the full extent
  of the kept axes) at its offsets along the kept split axes, zeros elsewhere; the same
  one collective sums it (partials of one unit add, other blocks are disjoint) and each
  participant reads its own units back. Without offsets it is refused, naming the array.
"""

from __future__ import annotations

from typing import Any, Sequence

from ._numerics import acc_dtype
from .backend._collective import active, all_reduce, full_shape, split_axes, split_offsets
from .backend._layout import _DEFAULT_LAYOUT, _OVERRIDE, reduce_axes
from .backend._names import array_label
from .backend._namespace import device_kw, namespace_name
from .backend._primitives import is_complex, magnitude, size, upcast
from .backend._primitives import unit_norms as _unit_norms

__all__ = ["full_unit_axes", "sharded_unit_norms"]


def _split(name: str, i: int) -> tuple:
    axes = split_axes(i)
    if axes is None:
        raise ValueError(f"{name}: the reducer says some arrays are split along another axis than the leading one "
                         "but not which (Participants(leading=False)); pass Participants(axes=...) so unit-wise "
                         "rules know each array's split axis")
    return axes


def full_unit_axes(xp: Any, name: str, axis: Any, shape: tuple, i: int) -> tuple | None:
    """``reduce_axes`` of array ``i``'s *full* array (``shape``: its shard's shape).

    ``"out_first"``, ``"out_last"`` and explicit axes depend on the rank only; ``"optax"``
    (which skips size-1 dimensions) and callables see the full shape, whose split axis is
    summed over participants (:func:`gradclip_core.backend.static_total`).

    Args:
      xp: the namespace.
      name: the rule's name (errors).
      axis: the rule's ``axis``.
      shape: the shard's shape.
      i: the array's position (its split axes: :func:`gradclip_core.backend.split_axes`).

    Returns:
      The axes to reduce (``None``: the whole array).

    Example:
      >>> import numpy as np
      >>> full_unit_axes(np, "r", "out_first", (4, 3), 0)
      (1,)
    """
    if not active() or not shape:
        return reduce_axes(xp, axis, shape)
    resolved = axis
    if resolved is None:
        resolved = _OVERRIDE.get() or _DEFAULT_LAYOUT.get(namespace_name(xp))
    if resolved == "optax" or callable(resolved):
        split = _split(name, i)
        if len(split) > 1:
            raise ValueError(f"{name}: {array_label(i)} is split along axes {split} (one tensor sharded on two "
                             f"axes); the layout {resolved!r} needs its full shape: shard it along one axis")
        shape = full_shape(shape, split[0])
    return reduce_axes(xp, axis, shape)


def _kind(name: str, i: int, axes: tuple | None, ndim: int) -> str:
    """How array ``i``'s units (reducing ``axes``) lie on the shards: ``"span"``, ``"local"`` or ``"mixed"``.

    ``"mixed"``: the units reduce some split axes but not others (their place in the full
    array is needed: :func:`gradclip_core.backend.split_offsets`; refused without it).
    """
    split = _split(name, i)
    if axes is None or set(split) <= set(axes):
        return "span"
    if not set(split) & set(axes):
        return "local"
    offsets = split_offsets(i)
    if offsets is None:
        raise ValueError(f"{name}: {array_label(i)} is split along axes {split} and its units reduce axes {axes}: "
                         "a unit spans the shards of some participants only (one tensor sharded on two axes, e.g. "
                         "FSDP2 Shard(0) x RowwiseParallel Shard(1)) and the reducer does not say where each shard "
                         "lies (Participants(offsets=...)); pass offsets, shard it along one axis or gather it")
    if any(d >= ndim for d in split):
        raise ValueError(f"{name}: {array_label(i)} has {ndim} dims but is split along axes {split}")
    return "mixed"


def _kept(i: int, axes: tuple, shape: tuple, name: str) -> list:
    """``[(axis, start, full)]`` of array ``i``'s split axes its units keep (a ``"mixed"`` array)."""
    out = []
    for d, (start, full) in zip(split_axes(i), split_offsets(i)):
        if d in axes:
            continue
        if start + shape[d] > full:
            raise ValueError(f"{name}: {array_label(i)}'s shard ({shape[d]} along axis {d}, from {start}) "
                             f"overruns the full extent {full} the reducer's offsets give")
        out.append((d, start, full))
    return out


def _leads(i: int, axes: tuple) -> bool:
    """Whether this participant holds the first part (start 0) of its units along every reduced split axis.

    (Of the participants sharing a unit of a ``"mixed"`` array, the one that counts it.)
    """
    return all(start == 0 for d, (start, _) in zip(split_axes(i), split_offsets(i)) if d in axes)


def _place(xp: Any, x: Any, kept: list) -> Any:
    """``x`` inside zeros shaped like the full kept axes, at its offsets (``kept``: :func:`_kept`)."""
    for d, start, full in kept:
        before, after = start, full - start - x.shape[d]

        def zeros(k: int, x: Any = x, d: int = d) -> Any:
            return xp.zeros(tuple(x.shape[:d]) + (k,) + tuple(x.shape[d + 1:]), dtype=x.dtype, **device_kw([x]))

        if before or after:
            x = xp.concat(([zeros(before)] if before else []) + [x] + ([zeros(after)] if after else []), axis=d)
    return x


def _take(xp: Any, x: Any, kept: list, shape: tuple) -> Any:
    """This participant's block (``shape``) of the full-kept-axes ``x`` (the inverse of :func:`_place`)."""
    index = [slice(None)] * x.ndim
    for d, start, _ in kept:
        index[d] = slice(start, start + shape[d])
    return x[tuple(index)]


def _unit_sumsq(xp: Any, x: Any, axes: tuple | None, dtype: Any) -> Any:
    if dtype == xp.float64 and x.dtype != xp.float64 and size(x):  # gc.accumulate: no float64 copy of x (backends chunk)
        n = _unit_norms(xp, [x], [axes], [dtype])[0]
        return n * n
    xc = magnitude(xp, x, dtype) if is_complex(x) else upcast(xp, x, dtype)  # complex: |z|
    return xp.sum(xc * xc, axis=axes, keepdims=True)


def sharded_unit_norms(xp: Any, name: str, groups: Sequence[Sequence[Any]], axis: Any) -> tuple[list, set, set]:
    """Each unit's L2 norm, for aligned lists of arrays (AGC: gradients and weights).

    Args:
      xp: the namespace.
      name: the rule's name (errors).
      groups: lists of arrays of the same shapes; units are taken from the first list's shapes.
      axis: the rule's ``axis`` (:mod:`gradclip_core.backend._layout`).

    Returns:
      ``(norms, spanning, echoes)``: per group the per-array unit norms (kept dims, in the
      accumulation dtype, float32 at least); the positions of the arrays whose units span
      shards (their norms are the same on every participant); and the positions of the
      arrays whose units this participant shares with others that count them (a unit of
      an array split along two axes is held by every participant of its block of rows:
      the one whose shard starts its reduced split axes counts it). Both empty without a
      reducer.

    Example:
      >>> import numpy as np
      >>> (norms,), spanning, echoes = sharded_unit_norms(np, "r", [[np.array([[3.0, 4.0]], np.float32)]], (1,))
      >>> norms[0].tolist(), spanning, echoes
      ([[5.0]], set(), set())
    """
    first = list(groups[0])
    n = len(first)
    axes = [full_unit_axes(xp, name, axis, tuple(x.shape), i) for i, x in enumerate(first)]
    dt = acc_dtype(xp, first)  # float64 when any array is float64, else float32
    kinds = [_kind(name, i, axes[i], first[i].ndim) for i in range(n)] if active() else ["local"] * n
    spanning = {i for i in range(n) if kinds[i] == "span"}
    mixed = {i: _kept(i, axes[i], tuple(first[i].shape), name) for i in range(n) if kinds[i] == "mixed"}
    echoes = {i for i in mixed if not _leads(i, axes[i])}
    local = [i for i in range(n) if kinds[i] == "local"]
    out: list = []
    for g in groups:
        norms: list = [None] * n
        for i, v in zip(local, _unit_norms(xp, [g[i] for i in local], [axes[i] for i in local], [dt] * len(local))):
            norms[i] = v
        out.append(norms)
    order = sorted(spanning | set(mixed))
    if order:
        # one collective: spanning units' partial sums, and mixed arrays' partial sums placed among all their units
        parts = [_unit_sumsq(xp, g[i], axes[i], dt) for i in order for g in groups]
        placed = [_place(xp, x, mixed.get(order[k // len(groups)], [])) for k, x in enumerate(parts)]
        total = xp.sqrt(all_reduce(xp, xp.concat([xp.reshape(x, (-1,)) for x in placed]), "sum"))
        start = 0
        for k, (x, y) in enumerate(zip(parts, placed)):
            i, gi = order[k // len(groups)], k % len(groups)
            m = size(y)
            out[gi][i] = _take(xp, xp.reshape(total[start:start + m], y.shape), mixed.get(i, []), x.shape)
            start += m
    return out, spanning, echoes
