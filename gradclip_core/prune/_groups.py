"""Structured groups: the elements a pruning rule keeps or prunes together.

A :class:`Group` (plain Python values, so it sits in a rule's ``config``) turns each
array's element scores into one score per group (:func:`pool`), the selection runs on
those, and the group decisions are broadcast back to the elements (:func:`expand`):

- :func:`blocks` ``(rows, cols, pooling="avg")``: 2-D blocks over the *last two axes*
  (tfmot's ``block_size`` / ``block_pooling_type``): a block's score is the mean
  (``"avg"``) or the maximum (``"max"``) of its elements' scores. Arrays whose last two
  dimensions are not multiples of the block get partial blocks at the edges, pooled
  over the elements they have (tfmot pools with ``SAME`` padding). The mean is taken
  as tfmot's ``factorized_pool`` does, over the rows then the columns, each a sum in a
  fixed order divided by its count: identical in every framework, and the pooling of
  :func:`gradclip_core.block_magnitude_prune` (one definition, :func:`_pool_blocks`).
  Arrays of rank < 2 are left dense.
- :func:`units` ``(axis, ord=2, size=1)``: whole units by the L_ord norm of their scores
  over the reduced ``axis`` (as :func:`gradclip_core.ln_structured_prune`: ``"out_first"``
  for the rows / output channels / conv filters of torch weights, ``"out_last"`` for
  Keras kernels, ``(0,)`` for the columns of a torch ``Linear``); ``size > 1`` groups
  ``size`` consecutive units (attention heads of ``head_dim`` rows: the norm runs over
  the head's rows). Arrays of rank < 2, or whose unit count is not a multiple of
  ``size``, are left dense.
- :func:`nm` ``(keep, group, axis)``: N:M: in every ``group`` consecutive elements along
  ``axis`` the ``keep`` largest scores are kept (:func:`gradclip_core.nm_prune` on any
  score); the count is fixed, so the rule's ``amount`` is ignored.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

from .._validate import check_choice, check_ord
from ..backend._layout import check_axis, reduce_axes
from ..backend._namespace import device_kw
from ..backend._primitives import group_keep, size
from ..backend._selection import order_keys

__all__ = ["Group", "blocks", "units", "nm", "check_group", "pool", "expand", "any_blocks", "nm_keep", "POOLINGS"]

POOLINGS = ("avg", "max")


class Group(NamedTuple):
    """A structured group (see the module docstring); build with :func:`blocks`, :func:`units`, :func:`nm`."""

    kind: str
    block: tuple = (1, 1)
    pooling: str = "avg"
    axis: Any = None
    ord: Any = 2
    size: int = 1
    keep: int = 2
    group: int = 4


def _int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def blocks(rows: int, cols: int, pooling: str = "avg") -> Group:
    """2-D blocks of ``rows x cols`` over the last two axes, scored by ``pooling`` (``"avg"`` or ``"max"``).

    Example:
      >>> blocks(4, 1).block
      (4, 1)
    """
    check_choice("pooling", pooling, POOLINGS)
    return Group("blocks", block=(_int("rows", rows, 1), _int("cols", cols, 1)), pooling=pooling)


def units(axis: Any, ord: Any = 2, size: int = 1) -> Group:
    """Whole units (rows, columns, filters; ``size`` consecutive ones: heads) by their L_ord norm over ``axis``.

    Example:
      >>> units("out_first", size=64).size
      64
    """
    if axis is None:
        raise ValueError('units(axis=...) needs the reduced axes: "out_first" (torch rows / filters), "out_last" '
                         "(Keras), or ints")
    ax = check_axis(axis)
    return Group("units", axis=list(ax) if isinstance(ax, tuple) else ax, ord=check_ord(ord), size=_int("size", size, 1))


def nm(keep: int = 2, group: int = 4, *, axis: int) -> Group:
    """N:M groups: ``keep`` of every ``group`` consecutive elements along ``axis``.

    Example:
      >>> nm(2, 4, axis=-1).group
      4
    """
    _int("keep", keep, 1)
    _int("group", group, 2)
    if keep >= group:
        raise ValueError(f"keep must be < group (N < M in N:M sparsity), got keep={keep}, group={group}")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"axis must be an int (the group axis), got {axis!r}")
    return Group("nm", axis=axis, keep=keep, group=group)


def check_group(group: Any) -> Group | None:
    """``None`` (elements), a :class:`Group`, or its fields as a dict/list (configs)."""
    if group is None:
        return None
    if isinstance(group, Mapping):
        group = Group(**group)
    elif isinstance(group, list):
        group = Group(*group)
    if not isinstance(group, Group):
        raise ValueError(f"group must be None or gc.blocks(...), gc.units(...), gc.nm(...); got {group!r}")
    if group.kind == "blocks":
        return blocks(*tuple(group.block), pooling=group.pooling)
    if group.kind == "units":
        return units(group.axis, group.ord, group.size)
    if group.kind == "nm":
        return nm(group.keep, group.group, axis=group.axis)
    raise ValueError(f"group kind must be blocks, units or nm, got {group.kind!r}")


def _axis_spec(group: Group) -> Any:
    return tuple(group.axis) if isinstance(group.axis, list) else group.axis


def _unit_axes(xp: Any, group: Group, shape: tuple) -> tuple | None:
    """``(reduced axes, kept axis or None)`` of a units group for ``shape``, or ``None`` (left dense)."""
    if len(shape) < 2 or math.prod(shape) == 0:
        return None
    axes = reduce_axes(xp, _axis_spec(group), shape)
    if axes is None:
        return None
    kept = [a for a in range(len(shape)) if a not in axes]
    if group.size > 1:
        if len(kept) != 1 or shape[kept[0]] % group.size:
            return None
        return axes, kept[0]
    return axes, None


def _pad2(xp: Any, x: Any, rows: int, cols: int, fill: Any) -> Any:
    """``x`` extended by ``rows`` rows and ``cols`` columns (its last two axes) of ``fill``."""
    lead, (h, w) = tuple(x.shape[:-2]), tuple(x.shape[-2:])
    if rows:
        x = xp.concat([x, xp.full(lead + (rows, w), fill, dtype=x.dtype, **device_kw([x]))], axis=-2)
    if cols:
        x = xp.concat([x, xp.full(lead + (h + rows, cols), fill, dtype=x.dtype, **device_kw([x]))], axis=-1)
    return x


def _pool_blocks(xp: Any, s: Any, block: tuple, pooling: str) -> Any:
    """One float32 score per ``block = (r, c)`` of the last two axes of ``s``: shape ``(..., ceil(R / r), ceil(C / c))``.

    Blocks start at the first element; the last block row / column may be partial. ``"avg"``:
    the mean over the block's elements (partial blocks: over those they have), taken as tfmot's
    ``factorized_pool`` does, over each block's rows first (a running sum in row order, divided
    by their count), then over its columns; ``"max"``: the largest (padding ranks below every
    score: signed scores too). A block holding a NaN scores NaN (ranks above +inf: never pruned
    before a number). Every operation is an elementwise float32 add / divide / maximum in a fixed
    order, so the scores are bit-identical in every framework. The one block pooling of
    :func:`gradclip_core.block_magnitude_prune` and ``score_prune(group=blocks(...))``.
    """
    shape = tuple(s.shape)
    lead, (h, w), (r, c) = shape[:-2], shape[-2:], block
    nh, nw = -(-h // r), -(-w // c)
    fill = -math.inf if pooling == "max" else 0.0
    # "avg": a sum holding a NaN is NaN, so NaN blocks are found on the pooled scores (no pass over the
    # elements for them); "max": a maximum need not propagate NaN in every framework
    nan = xp.isnan(s) if pooling == "max" else None
    x = _pad2(xp, s if nan is None else xp.where(nan, xp.full_like(s, fill), s), nh * r - h, nw * c - w, fill)
    x = xp.reshape(x, lead + (nh, r, nw, c))
    acc = x[..., 0, :, :]
    for i in range(1, r):
        acc = xp.maximum(acc, x[..., i, :, :]) if pooling == "max" else acc + x[..., i, :, :]
    if pooling != "max":
        rows = xp.asarray([float(min(r, h - i * r)) for i in range(nh)], dtype=xp.float32, **device_kw([s]))
        acc = acc / xp.reshape(rows, (nh, 1, 1))
    out = acc[..., 0]
    for j in range(1, c):
        out = xp.maximum(out, acc[..., j]) if pooling == "max" else out + acc[..., j]
    if pooling != "max":
        cols = xp.asarray([float(min(c, w - j * c)) for j in range(nw)], dtype=xp.float32, **device_kw([s]))
        out = out / xp.reshape(cols, (1, nw))
    has_nan = xp.isnan(out) if nan is None else any_blocks(xp, nan, block)
    return xp.where(has_nan, xp.full_like(out, math.nan), out)


def any_blocks(xp: Any, m: Any, block: tuple) -> Any:
    """Whether each ``block = (r, c)`` of the last two axes of the bool ``m`` holds a True (partial blocks too).

    Example:
      >>> import numpy as np
      >>> any_blocks(np, np.array([[False, False, True], [False, False, False]]), (2, 2)).tolist()
      [[False, True]]
    """
    shape = tuple(m.shape)
    lead, (h, w), (r, c) = shape[:-2], shape[-2:], block
    nh, nw = -(-h // r), -(-w // c)
    return xp.any(xp.reshape(_pad2(xp, m, nh * r - h, nw * c - w, False), lead + (nh, r, nw, c)), axis=(-3, -1))


def pool(xp: Any, group: Group, s: Any, full: tuple | None = None) -> Any:
    """One score per group of ``s`` (non-negative float32 element scores), or ``None`` (left dense).

    ``full``: the full array's shape when ``s`` is a shard of it (rows of the leading
    axis): whether the array is left dense is decided from it, so an empty shard pools
    (to no group) where the others do.
    """
    shape = tuple(s.shape)
    decide = shape if full is None else tuple(full)
    if group.kind == "blocks":
        if len(shape) < 2 or math.prod(decide) == 0:
            return None
        return _pool_blocks(xp, s, group.block, group.pooling)
    if group.kind == "units":
        ax = _unit_axes(xp, group, decide)
        if ax is None:
            return None
        axes, kept = ax
        norms = xp.linalg.vector_norm(s, axis=axes, keepdims=True, ord=group.ord)
        if kept is None:
            return norms
        g = group.size
        moved = xp.moveaxis(norms, kept, -1)
        ms = tuple(moved.shape)
        heads = xp.reshape(moved, ms[:-1] + (ms[-1] // g, g))
        return xp.linalg.vector_norm(heads, axis=-1, ord=group.ord)  # a head: the norm of its units' norms
    raise ValueError(f"pool: no pooling for group kind {group.kind!r}")


def expand(xp: Any, group: Group, keep: Any, shape: tuple, full: tuple | None = None) -> Any:
    """Element keep-mask of ``shape`` from the group keep-mask ``keep`` (the output of :func:`pool`'s shape).

    ``full``: the full array's shape when ``shape`` is a shard's (as for :func:`pool`).
    """
    if group.kind == "blocks":
        (r, c), (R, C) = group.block, shape[-2:]
        lead = shape[:-2]
        gr, gc_ = keep.shape[-2], keep.shape[-1]
        k = xp.reshape(keep, lead + (gr, 1, gc_, 1))
        k = xp.broadcast_to(k, lead + (gr, r, gc_, c))
        k = xp.reshape(k, lead + (gr * r, gc_ * c))
        return k[..., :R, :C]
    axes, kept = _unit_axes(xp, group, shape if full is None else tuple(full))
    if kept is None:
        return xp.broadcast_to(keep, shape)
    g, lead, u = group.size, tuple(keep.shape[:-1]), keep.shape[-1]  # keep: (1, ..., 1, heads)
    k = xp.broadcast_to(xp.reshape(keep, lead + (u, 1)), lead + (u, g))
    k = xp.moveaxis(xp.reshape(k, lead + (u * g,)), -1, kept)
    return xp.broadcast_to(k, shape)


def nm_keep(xp: Any, group: Group, s: Any, m: Any, remainder: str = "dense") -> Any:
    """N:M keep-mask from non-negative float32 scores ``s`` and the old mask ``m`` (``m`` where left dense).

    Within each group the ``group - keep`` smallest scores are pruned (pruned before ranks
    first, ties by position in the group, NaN last), the rule of :func:`gradclip_core.nm_prune`.
    An axis that is not a multiple of the group size is left dense (``remainder="dense"``),
    or its last, partial group is padded with entries that rank below everything
    (``remainder="pad"``: tfmot's zero padding, which loses to any weight).
    """
    nd, axis, n_group = s.ndim, group.axis, group.group
    if nd < 2 or size(s) == 0 or not -nd <= axis < nd:
        return m
    pad = -s.shape[axis] % n_group
    if pad and remainder == "dense":
        return m
    n_prune = n_group - group.keep
    ax = axis % nd
    key = order_keys(xp, s) + 1
    key = xp.where(m, key, xp.zeros_like(key))
    if pad:
        filler = xp.full(tuple(key.shape[:ax]) + (pad,) + tuple(key.shape[ax + 1:]), -1, dtype=key.dtype,
                         **device_kw([key]))
        key = xp.concat([key, filler], axis=ax)
    shp = tuple(key.shape)
    split = shp[:ax] + (shp[ax] // n_group, n_group) + shp[ax + 1:]  # the group axis split into (groups, member)
    # each member's keys in a contiguous row of its own: one copy (eager ops on strided columns are slow;
    # through 1-D, since a reshape to a moved view's own shape would keep it strided)
    cols = xp.reshape(xp.reshape(xp.moveaxis(xp.reshape(key, split), ax + 1, 0), (-1,)), (n_group, -1))
    keep = xp.reshape(group_keep(xp, cols, n_prune), (n_group,) + split[:ax + 1] + split[ax + 2:])
    mask = xp.reshape(xp.moveaxis(keep, 0, ax + 1), shp)
    if pad:
        mask = mask[(slice(None),) * ax + (slice(0, shp[ax] - pad), ...)]
    return mask & m
