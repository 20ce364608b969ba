"""torch kernels: ``_foreach_*`` multi-tensor primitives, in-place effects, chunked radix selection.

Loaded the first time a torch tensor reaches a primitive (``gradclip_torch`` and Keras'
torch backend share it). Every kernel returns exactly what the core's portable default
returns (same values, same dtypes), in one kernel launch per (device, dtype) group
instead of one op per tensor where torch has a ``_foreach`` kernel.

- ``array_norms`` / ``multiply`` / ``clip`` / ``count_outside``: ``torch._foreach_norm``,
  ``_foreach_mul``, ``_foreach_clamp_min/max``, and a chunked count (no full-size flags).
- ``apply_effect_``: an effect (:mod:`gradclip_core._effect`) applied *in place*, e.g. a
  global scale as one ``_foreach_mul_`` per dtype, exactly as ``clip_grad_norm_`` does,
  masks by a branch-free ``bits(x) * mask`` on CPU.
- Selection (:mod:`gradclip_core.prune._select`): 16-bit digits, keys computed chunk by
  chunk (``CHUNK`` elements of one tensor at a time, into reused buffers: no full-size
  temporaries, no concatenation), ``bincount`` histograms; on eager CPU a compaction
  finish (the keys of the k-th key's bin gathered and sorted) and tie counts read per
  chunk; on CUDA and under ``torch.compile`` no host synchronisation (cumulative sums).

- Eager CPU host kernels (Clippy's ratio, the update's norm, the counted clamp, SET's hashed
  keys): NumPy on in-cache chunks, on torch's threads; where a C compiler is present each chunk
  is one fused C loop instead (:mod:`._native`, compiled on first use; the same bits).

Eager CPU passes are branch-free: torch's CPU ``where``/``masked_fill_`` take a
data-dependent branch per element, and a magnitude mask is a coin flip per element, so
they ran ~10x slower than a branch-free ``bits(x) & -mask`` on GPT-2 small (0.47 s vs 0.045 s).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import array_api_compat.torch  # noqa: F401  (imported here, so namespace() never imports it inside a compiled step)
import numpy as np
import torch

from .._effect import Clamp, Keep, Mask, On, Replace, Scale, Skip, Then, ZeroNonfinite
from .._hash import GOLDEN, array_bases
from . import _native, _primitives
from ._primitives import register_primitives, symmetric_bounds
from ._selection import NAN_BITS, NAN_KEY, Selection, register_selection

__all__ = ["NAMESPACE", "register", "min_bound_ratio", "difference_norms", "difference_min_bound_ratio", "group_keep", "kept_buffers", "array_norms", "array_rms", "unit_norms", "multiply", "clip", "count_outside",
           "fuses_count", "apply_effect_", "lamp_scores",
           "order_keys", "apply_masks", "cond", "CHUNK", "CPU_SELECTION", "DEVICE_SELECTION", "EAGER_CPU"]

NAMESPACE = "array_api_compat.torch"
CHUNK = 1 << 20
# Hashed keys (SET's growth): 3 fmix32 rounds (~30 NumPy passes) per key: computed once for an array of at
# most 4M elements (GPT-2 small's 2.4M-element MLP weights), not once per selection pass; 52 MB of workspace.
HASH_CHUNK = 1 << 22
EAGER_CPU = True  # host-reading CPU paths (tests turn them off to check the CUDA/compile path on CPU)

_FOREACH_DEVICES = ("cpu", "cuda", "xpu", "mtia")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _has_foreach(device: torch.device) -> bool:
    return device.type in _FOREACH_DEVICES or device.type == torch._C._get_privateuse1_backend_name()


def _groups(xs: Sequence[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``xs`` grouped by (device, dtype), in first-seen order."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault((x.device, x.dtype), []).append(i)
    return groups


# --------------------------------------------------------------------- primitives


def array_norms(xp: Any, xs: Sequence[torch.Tensor], ord: float, dtype: torch.dtype) -> list[torch.Tensor]:
    """Per-tensor ``ord``-norms accumulated in ``dtype``, with ``torch._foreach_norm``.

    Size-0 tensors have norm 0 (torch's kernels refuse the inf-norm of an empty tensor).

    Example:
      >>> [float(n) for n in array_norms(None, [torch.tensor([3.0, 4.0]), torch.ones(0)], 2.0, torch.float32)]
      [5.0, 0.0]
    """
    del xp
    xs = list(xs)
    out: list[Any] = [None] * len(xs)
    for i, x in enumerate(xs):
        if x.numel() == 0:
            out[i] = torch.zeros((), dtype=dtype, device=x.device)
    live = [i for i, x in enumerate(xs) if out[i] is None]
    for (device, xdtype), idx in _groups([xs[i] for i in live]).items():
        group = [xs[live[j]] for j in idx]
        # Complex tensors: torch's norms are norms of |z|, accumulated in a complex dtype
        # (complex64 for float32 results): what clip_grad_norm_ computes on complex grads.
        want = _complex_acc(dtype) if xdtype.is_complex else dtype
        if want in _WIDE and xdtype != want:  # float64 accumulation (gc.accumulate): no float64 copy of big tensors
            host = _host_sumsq64(group) if ord == 2 and want == torch.float64 else None
            if host is not None:  # float32 on the eager CPU: one fused C loop per chunk, on torch's threads
                for j, t in zip(idx, host):
                    out[live[j]] = torch.tensor(math.sqrt(t), dtype=want, device=device)
                continue
            big = [j for j in idx if xs[live[j]].numel() > _CHUNK64]
            for j in big:
                out[live[j]] = _chunked_norm(xs[live[j]], ord, want)
            idx = [j for j in idx if j not in set(big)]
            group = [xs[live[j]] for j in idx]
            if not group:
                continue
        if _has_foreach(device):
            # dtype=None when no upcast is needed: the very call clip_grad_norm_ makes.
            norms = torch._foreach_norm(group, ord, dtype=None if xdtype == want else want)
        else:
            norms = [torch.linalg.vector_norm(x, ord=ord, dtype=want) for x in group]
        for j, n in zip(idx, norms):
            out[live[j]] = n
    return out


def _host_sumsq64(xs: Sequence[torch.Tensor]) -> list[float] | None:
    """Per float32 eager CPU tensor, the sum of its squares in float64 by the fused C loop (:mod:`._native`:
    each element upcast, squared and summed in double; 4-7x faster than ``vector_norm(dtype=float64)``, which
    casts each chunk to a float64 temporary first), chunk by chunk on torch's threads; ``None`` where a tensor
    is not one (the caller's torch path)."""
    loop = _c_loop("sumsq", np.dtype(np.float32)) if EAGER_CPU else None
    if loop is None or not all(x.dtype == torch.float32 and _host(x) for x in xs):
        return None
    views = [_np(x.reshape(-1)) for x in xs]

    def step(bufs: tuple, i: int, s: int, e: int) -> float:
        return float(loop(_native.address(views[i], s), e - s))

    return _host_reduce([x.numel() for x in xs], lambda: (), step, lambda a, b: a + b, 0.0)


_CHUNK64 = 1 << 20  # elements of one chunk of a float64-accumulated norm (an 8 MiB float64 temporary)
_WIDE = (torch.float64, torch.complex128)


def _chunked_norm(x: torch.Tensor, ord: float, want: torch.dtype) -> torch.Tensor:
    """``vector_norm(x, ord, dtype=want)`` chunk by chunk: torch casts the whole tensor to ``want`` first.

    The chunks' norms (each accumulated in ``want``) are combined by the norm of their vector,
    in float64: for ord 2 a sum of float64 squares, so the result is the float64 norm to a
    few float64 ulp (far below a float32 ulp).
    """
    flat = x.reshape(-1)
    norms = [torch.linalg.vector_norm(c, ord=ord, dtype=want) for c in flat.split(_CHUNK64)]
    return torch.linalg.vector_norm(torch.stack(norms), ord=ord)


def _rows_norms(x: torch.Tensor, ax: tuple, want: torch.dtype) -> torch.Tensor | None:
    """Unit norms over trailing ``ax`` (axis 0 kept) row block by row block, or ``None`` where that does not apply."""
    if x.ndim < 2 or 0 in [a % x.ndim for a in ax] or x.numel() <= _CHUNK64:
        return None
    step = max(1, _CHUNK64 // max(1, x[0].numel()))
    return torch.cat([torch.linalg.vector_norm(c, 2, dim=ax, keepdim=True, dtype=want) for c in x.split(step, 0)], 0)


def _complex_acc(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype torch accumulates the norm of complex tensors in, for a real result ``dtype``."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def array_rms(xp: Any, xs: Sequence[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Per-tensor RMS as ``norm / sqrt(n)`` from ``_foreach_norm`` (one read, no temporaries).

    The portable default is optax's ``sqrt(sum(x * x) / n)``; the two orders agree within an ulp.

    Example:
      >>> [float(r) for r in array_rms(None, [torch.tensor([3.0, 4.0]), torch.ones(0)], torch.float32)]
      [3.535533905029297, 0.0]
    """
    norms = array_norms(xp, xs, 2.0, dtype)
    return [n / math.sqrt(max(x.numel(), 1)) for n, x in zip(norms, xs)]


def unit_norms(xp: Any, xs: Sequence[torch.Tensor], axes: Sequence[Any], dtypes: Sequence[torch.dtype]) -> list[torch.Tensor]:
    """Per tensor, the L2 norm of each unit with ``linalg.vector_norm(dim=axes, keepdim=True)``.

    No full-size ``x * x`` temporary (the default builds one); accumulated in ``dtypes[i]``.

    Example:
      >>> unit_norms(None, [torch.tensor([[3.0, 4.0], [0.0, 1.0]])], [(1,)], [torch.float32])[0].tolist()
      [[5.0], [1.0]]
    """
    del xp
    xs = list(xs)
    # eager CPU, units on the trailing axes (Keras' (in, out) kernels): every such tensor's column sums of
    # squares in one batch of NumPy row blocks on the host threads
    host = {i: lead for i, (x, ax, dt) in enumerate(zip(xs, axes, dtypes))
            if (lead := _leading(x, ax)) and x.dtype == dt and _host_columns(x)}
    columns = dict(zip(host, _host_column_norms([(xs[i], host[i]) for i in host])))
    out = []
    for i, (x, ax, dt) in enumerate(zip(xs, axes, dtypes)):
        if i in columns:
            out.append(columns[i])
            continue
        if x.numel() == 0 or (ax is not None and len(ax) == 0):
            xc = x.to(_complex_acc(dt)).abs() if x.is_complex() else x if x.dtype == dt else x.to(dt)
            out.append(torch.sqrt(torch.sum(xc * xc, dim=ax, keepdim=True)) if x.ndim else torch.abs(xc))
            continue
        want = _complex_acc(dt) if x.is_complex() else dt  # complex: the norm of |z|, a real result
        lead = _leading(x, ax)
        if lead and not x.is_complex() and not torch.compiler.is_compiling():
            out.append(_leading_norms(x, lead, want))
            continue
        if want in _WIDE and x.dtype != want and x.numel() > _CHUNK64:  # float64 accumulation: no float64 copy
            if ax is None:
                out.append(torch.reshape(_chunked_norm(x, 2.0, want), (1,) * x.ndim))
                continue
            rows = _rows_norms(x, tuple(ax), want)
            if rows is not None:
                out.append(rows)
                continue
        out.append(torch.linalg.vector_norm(x, 2, dim=None if ax is None else tuple(ax), keepdim=True, dtype=want))
    return out


_CHUNK = 1 << 18  # elements of one chunk of rows in _leading_norms (1 MiB of float32: in cache)


def _leading(x: torch.Tensor, ax: Any) -> int:
    """``j`` when ``ax`` reduces exactly the leading ``j`` axes of a contiguous ``x``, keeping the rest; else 0."""
    if ax is None or x.ndim < 2 or not x.is_contiguous():
        return 0
    axes = sorted(a % x.ndim for a in ax)
    j = len(axes)
    return j if 0 < j < x.ndim and axes == list(range(j)) else 0


def _leading_norms(x: torch.Tensor, lead: int, dtype: torch.dtype) -> torch.Tensor:
    """``vector_norm(x, dim=range(lead), keepdim=True)`` for a contiguous ``x``, row chunk by row chunk.

    torch's CPU ``vector_norm`` over leading axes (Keras' ``(in, out)`` kernels, units on
    the last axis) strides through memory and ran 10-20x slower than over trailing ones;
    summing squares of contiguous row chunks reads ``x`` once, with a temporary of one
    chunk (``_CHUNK`` elements), not of ``x``.
    """
    kept = x.shape[lead:]
    rows = x.reshape(-1, math.prod(kept))
    step = max(1, _CHUNK // max(1, rows.shape[1]))
    acc = torch.zeros(rows.shape[1], dtype=dtype, device=x.device)
    for chunk in rows.split(step, 0):
        chunk = chunk if chunk.dtype == dtype else chunk.to(dtype)
        acc += torch.sum(chunk * chunk, dim=0)
    return torch.sqrt(acc).reshape((1,) * lead + tuple(kept))


def _host_columns(x: torch.Tensor) -> bool:
    """Whether :func:`_host_column_norms` takes ``x``: a real float32 / float64 :func:`_host` tensor."""
    return EAGER_CPU and type(x) in (torch.Tensor, torch.nn.Parameter) and x.dtype in (torch.float32, torch.float64) \
        and _host(x)


_WIDE_ROW = 1 << 9  # rows of _host_column_norms' einsum shorter than this are joined, k at a time, into one row


def _halve(s: Any) -> Any:
    """The rows of the 2-D ``s`` added pairwise, halving (``log2(rows)`` roundings per element, not ``rows``)."""
    while s.shape[0] > 1:
        h = s.shape[0] // 2
        top = s[:h] + s[h: 2 * h]
        s = np.concatenate([top, s[2 * h:]]) if s.shape[0] % 2 else top
    return s[0]


def _column_sumsq(block: Any, k: int) -> Any:
    """Column sums of squares of the contiguous 2-D ``block``: its rows joined ``k`` at a time into rows of
    ``k * c`` elements, one ``einsum("ij,ij->j")`` (a read, no temporary), the ``k`` partial sums halved."""
    if k == 1:
        return np.einsum("ij,ij->j", block, block)
    m, c = block.shape
    full = m - m % k
    parts = []
    if full:
        wide = block[:full].reshape(full // k, k * c)
        parts.append(np.einsum("ij,ij->j", wide, wide).reshape(k, c))
    if m % k:
        rest = block[full:]
        parts.append(np.einsum("ij,ij->j", rest, rest)[None])
    return _halve(parts[0] if len(parts) == 1 else np.concatenate(parts))


def _host_column_norms(items: Sequence[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """``vector_norm(x, dim=range(lead), keepdim=True)`` of each ``(x, lead)`` (:func:`_host_columns` tensors),
    in their dtype.

    ``x`` seen as rows (the leading axes) by columns (the units), in blocks of about ``_CHUNK``
    elements of whole rows; each block is one NumPy ``einsum("ij,ij->j")``, which reads the rows
    once into column sums, no temporary (torch's chunks of :func:`_leading_norms` form ``x * x``
    first: one more write and read of each chunk, and three OpenMP launches a chunk). Rows shorter
    than ``_WIDE_ROW`` are joined ``k`` at a time into one, giving ``k`` partial sums a column. The
    partial sums, then the blocks' sums, add pairwise: a column's sum is a chain of at most
    ``_CHUNK / _WIDE_ROW`` (512) additions in order, then trees (GPT-2 small's column norms within
    4e-7 of float64's, relative; torch's cascade within 3e-7). The blocks do not depend on the
    thread count, so neither do the bits. They run on the host threads (:func:`_run_shares`): on
    GPT-2 small's kernels in Keras' layout 1.5-2x faster than :func:`_leading_norms` on 2 threads,
    about a read of the tensors.
    """
    views, joins, blocks = [], [], []
    for k, (x, lead) in enumerate(items):
        rows = _np(x).reshape(math.prod(x.shape[:lead]), math.prod(x.shape[lead:]))
        n, c = rows.shape
        join = max(1, -(-_WIDE_ROW // max(1, c)))
        step = max(join, _CHUNK // max(1, c) // join * join)
        views.append(rows)
        joins.append(join)
        blocks += [(k, r * c, min(r + step, n) * c) for r in range(0, n if c else 0, step)]  # (elements, whole rows)

    def work(share: list[tuple[int, int, int]]) -> dict:
        out = {}
        for k, s, e in share:
            c = max(1, views[k].shape[1])
            out[(k, s)] = _column_sumsq(views[k][s // c: e // c], joins[k])
        return out

    sums: dict = {}
    for part in _run_shares(blocks, work):
        sums.update(part)
    parts: list[list] = [[] for _ in items]
    for k, s, _ in blocks:  # (in row order)
        parts[k].append(sums[(k, s)])
    out = []
    for k, (x, lead) in enumerate(items):
        p = parts[k]
        total = (p[0] if len(p) == 1 else _halve(np.stack(p))) if p else np.zeros(views[k].shape[1], views[k].dtype)
        out.append(torch.sqrt(torch.from_numpy(np.ascontiguousarray(total))).reshape((1,) * lead + tuple(x.shape[lead:])))
    return out


class _Cast:
    """Factors cast to a dtype once each (a global factor is shared by every tensor).

    Looked up by identity (``is``), not ``id()``: under ``torch.compile`` an ``id()`` of a
    tensor becomes a guard on that object, and every step's new factor recompiled.
    """

    def __init__(self) -> None:
        self._seen: list[tuple[torch.Tensor, torch.dtype, torch.Tensor]] = []

    def __call__(self, f: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if f.dtype == dtype:  # (nothing to cast: per-array factors would make the search quadratic)
            return f
        for g, dt, cast in self._seen:
            if g is f and dt == dtype:
                return cast
        cast = f if f.dtype == dtype else f.to(dtype)
        self._seen.append((f, dtype, cast))
        return cast


def _scale(xs: list[torch.Tensor], factors: list[Any], inplace: bool, divide: bool = False) -> list[torch.Tensor]:
    """``x * f`` (``x / f``) per tensor, factors cast to each tensor's dtype; in place or not."""
    shared = _shared_scalar(xs, factors)
    if shared is not None:  # one global factor (a global-norm clip): one foreach op per dtype, no per-tensor checks
        return _scale_shared(xs, shared, inplace, divide)
    out: list[Any] = list(xs) if inplace else [None] * len(xs)
    cast = _Cast()
    scalar: list[int] = []
    skip = _unit_factors(xs, factors, cast) if inplace else set()
    for i, (x, f) in enumerate(zip(xs, factors)):
        if i in skip:
            continue
        if isinstance(f, torch.Tensor) and f.ndim == 0 and f.device == x.device and _has_foreach(x.device):
            scalar.append(i)
        else:  # per-unit factors, Python numbers or another device: one op per tensor
            f = cast(f, x.dtype) if isinstance(f, torch.Tensor) else f
            if inplace:
                x.div_(f) if divide else x.mul_(f)
            else:
                out[i] = x / f if divide else x * f
    for (_, dtype), idx in _groups([xs[i] for i in scalar]).items():
        pos = [scalar[j] for j in idx]
        group = [xs[i] for i in pos]
        fs = [cast(factors[i], dtype) for i in pos]
        shared = fs[0] if all(f is fs[0] for f in fs) else None  # a global factor: the single-tensor overload
        if inplace:
            op = torch._foreach_div_ if divide else torch._foreach_mul_
            op(group, shared if shared is not None else fs)
        else:
            op = torch._foreach_div if divide else torch._foreach_mul
            for i, r in zip(pos, op(group, shared if shared is not None else fs)):
                out[i] = r
    return out


def _shared_scalar(xs: list[torch.Tensor], factors: list[Any]) -> torch.Tensor | None:
    """The factor, if every tensor has the same 0-d tensor factor on its own (foreach) device; else ``None``."""
    f = factors[0] if factors else None
    if not (isinstance(f, torch.Tensor) and f.ndim == 0 and all(g is f for g in factors)):
        return None
    device = f.device
    return f if _has_foreach(device) and all(x.device == device for x in xs) else None


def _scale_shared(xs: list[torch.Tensor], f: torch.Tensor, inplace: bool, divide: bool) -> list[torch.Tensor]:
    """``x * f`` (``x / f``) for one shared 0-d factor: cast once per dtype, one foreach op per dtype (as
    ``clip_grad_norm_``); in place, a dtype whose cast factor is exactly 1 is skipped where
    :func:`_unit_factors` would skip it (eager CPU, plain tensors)."""
    out: list[Any] = list(xs) if inplace else [None] * len(xs)
    groups = _groups(xs)
    for (_, dtype), idx in groups.items():
        group = xs if len(groups) == 1 else [xs[i] for i in idx]
        g = f if f.dtype == dtype else f.to(dtype)
        if inplace:
            if _unit_factors(group[:1], [g], _Cast()) and all(type(x) is torch.Tensor for x in group):
                continue
            (torch._foreach_div_ if divide else torch._foreach_mul_)(group, g)
        else:
            for i, r in zip(idx, (torch._foreach_div if divide else torch._foreach_mul)(group, g)):
                out[i] = r
    return out


def _unit_factors(xs: Sequence[torch.Tensor], factors: Sequence[Any], cast: _Cast) -> set[int]:
    """Indices of the eager CPU tensors whose 0-d CPU factor, cast to their dtype, is exactly 1.

    ``x * 1`` and ``x / 1`` are ``x`` bit for bit, so an in-place scale skips those tensors: a rule
    whose arrays are not clipped this step (block RMS, per-array norms, a global scale of 1) then
    costs its read only, no write pass. The factors are read on the host, which on the CPU costs no
    device sync (as update clipping's write-back); elsewhere, and under ``torch.compile``, none are skipped.
    """
    if not EAGER_CPU or _compiling():
        return set()
    idx, cs = [], []
    for i, (x, f) in enumerate(zip(xs, factors)):
        if (isinstance(f, torch.Tensor) and f.ndim == 0 and f.device.type == "cpu" and type(x) is torch.Tensor
                and x.device.type == "cpu"):
            idx.append(i)
            cs.append(cast(f, x.dtype))
    distinct = list({id(c): c for c in cs}.values())  # (a global factor once; per-array ones read in one go)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for c in distinct:
        by_dtype.setdefault(c.dtype, []).append(c)
    one: dict[int, bool] = {}
    for group in by_dtype.values():  # (NaN is not 1: multiplied)
        one.update(zip(map(id, group), (torch.stack(group) == 1).tolist()))
    return {i for i, c in zip(idx, cs) if one[id(c)]}


def multiply(xp: Any, xs: Sequence[torch.Tensor], factors: Sequence[Any]) -> list[torch.Tensor]:
    """``[x * f.to(x.dtype) for x, f in zip(xs, factors)]`` with ``torch._foreach_mul``.

    A factor shared by all tensors (a global-norm scale) is cast once per dtype and
    applied with the single-tensor overload; per-tensor 0-d factors use the list
    overload; factors of higher rank (per-unit scales) use a plain multiply.

    Example:
      >>> s = torch.tensor(0.5)
      >>> [t.tolist() for t in multiply(None, [torch.ones(2), torch.ones(1, dtype=torch.bfloat16)], [s, s])]
      [[0.5, 0.5], [0.5]]
    """
    del xp
    xs, factors = list(xs), list(factors)
    if len(xs) != len(factors):
        raise ValueError(f"multiply needs one factor per tensor, got {len(factors)} for {len(xs)}")
    return _scale(xs, factors, inplace=False)


_BOUNDS: dict[tuple, float] = {}  # (dtype, bound) -> the rounded bound (a rule's few constants)


def _bound_in(dtype: torch.dtype, bound: float) -> float:
    """``bound`` rounded to ``dtype``, as a Python float (exact, so no kernel re-rounds it)."""
    key = (dtype, type(bound), repr(bound))  # (repr: -0.0 and 0.0 are equal keys otherwise)
    out = _BOUNDS.get(key)
    if out is None:
        out = torch.tensor(bound, dtype=dtype).item()
        if len(_BOUNDS) < 4096:  # (bounds are a rule's constants; never an unbounded cache)
            _BOUNDS[key] = out
    return out


def _clamp(xs: list[torch.Tensor], lo: Any, hi: Any, inplace: bool) -> list[torch.Tensor]:
    out: list[Any] = [None] * len(xs)
    for (device, dtype), idx in _groups(xs).items():
        group = [xs[i] for i in idx]
        bounds = [(None if b is None else b.to(device=device, dtype=dtype) if isinstance(b, torch.Tensor)
                   else _bound_in(dtype, b)) for b in (lo, hi)]
        # one clamp pass per tensor on the CPU (its foreach kernels loop over the tensors anyway, and two
        # clamp_min/clamp_max passes read and write every element twice; the same bits, signed zeros
        # and NaN included); on an accelerator one multi-tensor launch per bound
        if device.type == "cpu" or not _has_foreach(device) or any(isinstance(b, torch.Tensor) for b in bounds):
            res = [x.clamp_(min=bounds[0], max=bounds[1]) if inplace else torch.clamp(x, min=bounds[0], max=bounds[1])
                   for x in group]
        else:
            res, fresh = group, inplace
            for b, op, op_ in ((bounds[0], torch._foreach_clamp_min, torch._foreach_clamp_min_),
                               (bounds[1], torch._foreach_clamp_max, torch._foreach_clamp_max_)):
                if b is None:
                    continue
                if fresh:
                    op_(res, b)
                else:
                    res, fresh = list(op(res, b)), True  # new tensors: the next bound may go in place
        for i, r in zip(idx, res):
            out[i] = r
    return out


def clip(xp: Any, xs: Sequence[torch.Tensor], lo: Any, hi: Any) -> list[torch.Tensor]:
    """Each tensor clamped to ``[lo, hi]`` with ``torch._foreach_clamp_min/max``; NaN stays NaN.

    Bounds are rounded to each tensor's dtype first, as the core's default does.

    Example:
      >>> [t.tolist() for t in clip(None, [torch.tensor([-2.0, 0.5, 3.0])], -1.0, 1.0)]
      [[-1.0, 0.5, 1.0]]
    """
    del xp
    return _clamp(list(xs), lo, hi, inplace=False)


_COUNT_CHUNK = 1 << 20
# min_bound_ratio's chunk: its two float32 buffers (8 MB) stay in the last-level cache, and there are
# few enough chunks that the Python loop's cost per op (7 ops a chunk) is small next to the arithmetic.
# Measured on GPT-2 small (124M elements), 2 threads: 660 ms with 1 << 14 (7.6k chunks: the loop
# dominated), 358 / 197 / 103 ms with 1 << 16 / 18 / 20, 152 / 169 ms with 1 << 21 / 22 (out of cache).
_RATIO_CHUNK = 1 << 20


def count_outside(xp: Any, xs: Sequence[torch.Tensor], lo: Any, hi: Any) -> list[torch.Tensor]:
    """Per tensor, the float32 count of elements outside ``[lo, hi]``, chunk by chunk.

    The core's default allocates a full-size ``|x|`` and a full-size flag per tensor
    (5 bytes per element); here they are two reused chunk buffers, and the counts stay
    on the device. On the eager CPU NumPy counts the chunks (:func:`_host_counts`, on
    torch's threads): its compare and ``count_nonzero`` loops, in cache, cost a fraction
    of the read, where torch's ``gt`` + ``count_nonzero`` took 4x the read. Tensor bounds,
    and ``torch.compile``, take the default.

    Example:
      >>> [float(c) for c in count_outside(None, [torch.tensor([-2.0, 0.5, float("nan"), 3.0])], -1.0, 1.0)]
      [2.0]
    """
    del xp
    if _compiling() or any(isinstance(b, torch.Tensor) for b in (lo, hi)):
        return NotImplemented
    symmetric = symmetric_bounds(lo, hi)
    width = min(_COUNT_CHUNK, max((x.numel() for x in xs), default=0))
    bufs: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
    out: list[Any] = [None] * len(xs)
    host = [i for i, x in enumerate(xs) if EAGER_CPU and x.is_floating_point() and _host(x)]
    bounds = [tuple(None if b is None else _bound_in(xs[i].dtype, b) for b in (lo, hi)) for i in host]
    for i, n in zip(host, _host_counts([xs[i] for i in host], bounds) if host else []):
        out[i] = torch.tensor(n, dtype=torch.float32)
    for k, x in enumerate(xs):
        if out[k] is not None:
            continue
        lo_, hi_ = (None if b is None else _bound_in(x.dtype, b) for b in (lo, hi))
        if (x.device, x.dtype) not in bufs:
            bufs[x.device, x.dtype] = (torch.empty(width, dtype=x.dtype, device=x.device),
                                       torch.empty(width, dtype=torch.bool, device=x.device))
        vbuf, fbuf = bufs[x.device, x.dtype]
        flat = x.reshape(-1)
        total = torch.zeros((), dtype=torch.int64, device=x.device)
        for s in range(0, flat.numel(), _COUNT_CHUNK):
            c = flat[s: s + _COUNT_CHUNK]
            f = fbuf[: c.numel()]
            if symmetric:
                total += torch.gt(torch.abs(c, out=vbuf[: c.numel()]), hi_, out=f).count_nonzero()
                continue
            if lo_ is not None:
                total += torch.lt(c, lo_, out=f).count_nonzero()
            if hi_ is not None:
                total += torch.gt(c, hi_, out=f).count_nonzero()
        out[k] = total.to(torch.float32)
    return out


# NumPy's chunks on the eager CPU: three in-cache buffers of 512 KiB (float32) stay in a core's L2; on GPT-2
# small (124M elements, one thread) min_bound_ratio took 163 / 128 / 122 / 114 / 112 / 129 ms with chunks
# of 1 << 14 / 15 / 16 / 17 / 18 / 20 elements (a read of the two inputs: 85 ms); torch's six ops a chunk, 281 ms.
_HOST_CHUNK = 1 << 17
_NP_DTYPES = (torch.float32, torch.float64, torch.float16)  # (bfloat16 chunks go through a float32 buffer)
_POOL: list = []  # [(threads, ThreadPoolExecutor)]: the host kernels' workers, made on first use
os.register_at_fork(after_in_child=_POOL.clear)  # (a forked child has none of its parent's threads: a new pool)


def _host_shares(sizes: Sequence[int], work: Callable[[list[tuple[int, int, int]]], dict]) -> list[dict]:
    """``work`` on shares of the ``(array, start, end)`` chunks of arrays of ``sizes``, one share per torch thread.

    NumPy's loops release the GIL, so the shares (contiguous runs of chunks with about the same number
    of elements) run in parallel on a thread pool of ``torch.get_num_threads()`` workers, as torch's own
    CPU kernels do; one thread (or a small input) runs them inline. Each ``work`` keeps its own buffers.

    Returns:
      the dicts ``work`` returned, one per share.
    """
    items = [(i, s, min(s + _HOST_CHUNK, n)) for i, n in enumerate(sizes) for s in range(0, n, _HOST_CHUNK)]
    return _run_shares(items, work)


def _run_shares(items: list[tuple[int, int, int]], work: Callable[[list[tuple[int, int, int]]], dict]) -> list[dict]:
    """``work`` on shares of ``items`` (``(array, start, end)`` runs of elements, or of rows), one share per
    torch thread, with about the same ``end - start`` each (:func:`_host_shares`)."""
    threads = max(1, min(torch.get_num_threads(), len(items)))
    total = sum(e - s for _, s, e in items)
    if threads == 1 or total < 4 * _HOST_CHUNK:
        return [work(items)]
    shares, acc = [[] for _ in range(threads)], 0
    for it in items:
        shares[min(threads - 1, acc * threads // total)].append(it)
        acc += it[2] - it[1]
    if not _POOL or _POOL[0][0] != threads:
        from concurrent.futures import ThreadPoolExecutor

        if _POOL:
            _POOL.pop()[1].shutdown(wait=False)
        _POOL.append((threads, ThreadPoolExecutor(threads, thread_name_prefix="gradclip-host")))
    return list(_POOL[0][1].map(work, [sh for sh in shares if sh]))


def _chunk_for(xs: Sequence[torch.Tensor]) -> int:
    """The chunk buffers' length for ``xs``: ``_HOST_CHUNK``, or the largest array if smaller (small models
    do not page-fault in 512 KiB buffers on every call)."""
    return max(1, min(_HOST_CHUNK, max((x.numel() for x in xs), default=1)))


def _np_flat(x: torch.Tensor, dtype: torch.dtype) -> Any:
    """A flat NumPy view of the :func:`_host` tensor ``x`` when it has ``dtype``, else ``None`` (chunks get copied)."""
    return _np(x.reshape(-1)) if x.dtype == dtype and dtype in _NP_DTYPES else None


def _np_part(view: Any, x: torch.Tensor, s: int, e: int, buf: torch.Tensor) -> Any:
    """Elements ``s:e`` of the flat ``x`` as NumPy: of its ``view``, or copied (upcast) into ``buf``."""
    return view[s:e] if view is not None else _np(buf[: e - s].copy_(x.reshape(-1)[s:e]))


class _Chunks:
    """Elements ``s:e`` of flat arrays as NumPy in ``dtype``: of ``xs[i]`` itself, or with ``minus`` of the difference
    ``xs[i] - minus[i]``, each element rounded to the arrays' dtype (the update ``w_new - w_old``, never formed whole).

    Views of the arrays where their dtype is ``dtype``; otherwise (bfloat16, or an upcast) the chunk
    is made in the caller's buffer (a difference first in ``tmp``, a scratch of the arrays' dtype:
    the same ``torch.sub`` as on the whole arrays, then upcast exactly).
    """

    def __init__(self, xs: Sequence[torch.Tensor], dtype: torch.dtype, minus: Sequence[torch.Tensor] | None = None):
        self.xs, self.minus = list(xs), None if minus is None else list(minus)
        self.views = [_np_flat(x, dtype) for x in self.xs]
        self.mviews = None if minus is None else [_np_flat(m, dtype) for m in self.minus]

    def part(self, i: int, s: int, e: int, buf: torch.Tensor, tmp: dict) -> Any:
        if self.minus is None:
            return _np_part(self.views[i], self.xs[i], s, e, buf)
        n = e - s
        if self.views[i] is not None and self.mviews[i] is not None:
            return np.subtract(self.views[i][s:e], self.mviews[i][s:e], out=_np(buf[:n]))
        x = self.xs[i]
        t = tmp.get(x.dtype)
        if t is None:
            t = tmp[x.dtype] = torch.empty(buf.numel(), dtype=x.dtype)
        torch.sub(x.reshape(-1)[s:e], self.minus[i].reshape(-1)[s:e], out=t[:n])
        return _np(buf[:n].copy_(t[:n]))


def _host_reduce(sizes: Sequence[int], buffers: Callable[[], Any], step: Callable[..., Any],
                 merge: Callable[[Any, Any], Any], initial: Any) -> list:
    """Per array of ``sizes``, ``merge`` of ``step(bufs, i, s, e)`` over its chunks (from ``initial``), by NumPy.

    The chunk/share skeleton of the host kernels: :func:`_host_shares` runs the shares in parallel,
    each with its own ``bufs = buffers()`` (in-cache scratch), floating-point warnings off.
    """

    def work(share: list[tuple[int, int, int]]) -> dict:
        bufs, out = buffers(), {}
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for i, s, e in share:
                v = step(bufs, i, s, e)
                out[i] = v if i not in out else merge(out[i], v)
        return out

    totals = [initial] * len(sizes)
    for part in _host_shares(sizes, work):
        for i, v in part.items():
            totals[i] = merge(totals[i], v)
    return totals


def _c_loop(name: str, dtype: np.dtype) -> Any:
    """The fused C loop ``gc_<name>_f32`` / ``_f64`` for NumPy ``dtype`` (:mod:`._native`), or ``None``: then
    the caller runs NumPy's operations (float16, no C compiler, ``GRADCLIP_NATIVE=0``)."""
    lib = _native.library()
    if lib is None or dtype not in (np.float32, np.float64):
        return None
    return getattr(lib, f"gc_{name}_{'f32' if dtype == np.float32 else 'f64'}")


def _host_counts(xs: Sequence[torch.Tensor], bounds: Sequence[tuple[Any, Any]], clamp: bool = False) -> list[int]:
    """Per float CPU tensor, the elements below ``lo`` or above ``hi`` (``bounds[i]``, in its dtype), by NumPy.

    ``clamp`` (:func:`_fusable` tensors only): each chunk is then clamped in place while it is in
    cache, so the tensors are read from memory once; float32/64 chunks in one fused C loop
    (:mod:`._native`: each element counted, then clamped), float16 (or without a C compiler) by
    NumPy's compares, counts and ``clip``. NumPy's ``clip`` with ``-inf`` / ``+inf`` for
    a missing bound is torch's ``clamp_`` bit for bit (NaN kept with its payload; an element equal
    to a bound kept, signed zeros as they were).
    """
    views = [_np_flat(x, x.dtype) for x in xs]
    chunk = _chunk_for(xs)
    loops = [_c_loop("clamp_count", v.dtype) if clamp and v is not None else None for v in views]

    def buffers() -> tuple:
        vbuf = None if all(v is not None for v in views) else torch.empty(chunk, dtype=torch.float32)
        return vbuf, _np(torch.empty(chunk, dtype=torch.bool))

    def step(bufs: tuple, i: int, s: int, e: int) -> int:
        lo, hi = bounds[i]
        loop = loops[i]
        if loop is not None:  # (one fused loop: each element counted, then clamped)
            v, t = views[i], views[i].dtype.type
            return int(loop(_native.address(v, s), e - s, t(-np.inf if lo is None else lo),
                            t(np.inf if hi is None else hi)))
        # (x < lo, x > hi: as fast as |x| > hi here; NaN is neither)
        c, f, n = _np_part(views[i], xs[i], s, e, bufs[0]), bufs[1][: e - s], 0
        if lo is not None:
            n += np.count_nonzero(np.less(c, c.dtype.type(lo), out=f))
        if hi is not None:
            n += np.count_nonzero(np.greater(c, c.dtype.type(hi), out=f))
        if clamp:
            np.clip(c, c.dtype.type(-np.inf if lo is None else lo), c.dtype.type(np.inf if hi is None else hi), out=c)
        return n

    return _host_reduce([x.numel() for x in xs], buffers, step, lambda a, b: a + b, 0)


def _fusable(x: torch.Tensor) -> bool:
    """Whether a counted clamp of ``x`` runs in one NumPy pass (:func:`_host_counts`): an eager CPU
    tensor of a dtype NumPy has (bfloat16 takes the count, then torch's clamp)."""
    return EAGER_CPU and type(x) is torch.Tensor and x.dtype in _NP_DTYPES and _host(x)


def fuses_count(xp: Any, xs: Sequence[torch.Tensor], lo: Any, hi: Any) -> bool:
    """Whether :func:`apply_effect_` of a counted ``Clamp(lo, hi, count)`` counts some of ``xs`` in the clamp's pass.

    (:func:`gradclip_core.backend.clipped_fraction` then leaves the count to the clamp.)

    Example:
      >>> fuses_count(None, [torch.ones(3)], -1.0, 1.0), fuses_count(None, [torch.ones(3)], torch.tensor(-1.0), 1.0)
      (True, False)
    """
    del xp
    if _compiling() or any(isinstance(b, torch.Tensor) for b in (lo, hi)):
        return False
    return any(_fusable(x) for x in xs)


def _clamp_counted(xp: Any, xs: list[torch.Tensor], lo: Any, hi: Any, count: Any) -> None:
    """``Clamp(lo, hi, count)`` in place: the elements outside ``[lo, hi]`` counted before they are clamped.

    The :func:`_fusable` tensors are counted and clamped chunk by chunk in one pass
    (:func:`_host_counts` with ``clamp``); the others (bfloat16, another device, tensor bounds) are all
    counted first (:func:`gradclip_core.backend.count_outside`), then clamped (:func:`_clamp`).
    Nothing can fail once a write began; the counts are those of the arrays before the clamp.
    """
    xp = array_api_compat.torch if xp is None else xp
    fused = [i for i, x in enumerate(xs) if not any(isinstance(b, torch.Tensor) for b in (lo, hi)) and _fusable(x)]
    rest = sorted(set(range(len(xs))) - set(fused))
    hits: list[Any] = [None] * len(xs)
    for i, h in zip(rest, _primitives.count_outside(xp, [xs[i] for i in rest], lo, hi) if rest else []):
        hits[i] = h
    bounds = [tuple(None if b is None else _bound_in(xs[i].dtype, b) for b in (lo, hi)) for i in fused]
    for i, n in zip(fused, _host_counts([xs[i] for i in fused], bounds, clamp=True) if fused else []):
        hits[i] = torch.tensor(n, dtype=torch.float32)
    if rest:
        _clamp([xs[i] for i in rest], lo, hi, inplace=True)
    count.write(xp, hits)


def _host_min_ratios(ds: _Chunks, ws: Sequence[torch.Tensor], relative: float, absolute: float,
                     dtype: torch.dtype) -> list[float]:
    """Per pair of CPU arrays, ``min(1, min bound / |d|)``, ``_HOST_CHUNK`` elements at a time (in cache).

    float32/64 arrays that NumPy can view run one fused C loop per chunk (:mod:`._native`: the
    difference, the bound, the ratio and the minimum per element, the same bits); the others (and
    every array without a C compiler) NumPy's seven operations on in-cache buffers.

    The same float operations as :func:`_min_ratios` (``|w|``, ``* relative``, ``+ absolute``, ``/ |d|``
    in ``dtype``; bfloat16 / float16 inputs upcast exactly first); NaN ratios (0/0, NaN inputs) are
    skipped by ``fmin`` (an all-NaN array gives 1), with no second pass. ``|d| <= bound`` gives a ratio
    >= 1 (or inf), which cannot lower the result below 1. ``ds``: the updates' chunks (of the
    update arrays, or of ``w_new - w_old`` computed per chunk: :class:`_Chunks`).
    """
    nd = np.dtype(str(dtype).removeprefix("torch."))
    rel, abs_ = nd.type(relative), nd.type(absolute)
    wv = [_np_flat(w, dtype) for w in ws]
    chunk, loop = _chunk_for(ws), _c_loop("min_ratio", nd)

    def fused(i: int) -> tuple | None:  # (the C loop's d and w arrays, where both are views)
        if loop is None or wv[i] is None:
            return None
        if ds.minus is None:
            return (ds.views[i], wv[i], 0) if ds.views[i] is not None else None
        ok = ds.views[i] is not None and ds.mviews[i] is not None and ds.minus[i] is ws[i]  # (w = w_old)
        return (ds.views[i], ds.mviews[i], 1) if ok else None

    pairs = [fused(i) for i in range(len(ws))]

    def buffers() -> list:
        return []  # (NumPy's chunk buffers, made by the first chunk that needs them)

    def step(bufs: list, i: int, s: int, e: int) -> Any:
        if pairs[i] is not None:
            d, w, diff = pairs[i]
            return nd.type(loop(_native.address(d, s), _native.address(w, s), e - s, rel, abs_, diff))
        if not bufs:
            bound_buf, ratio_buf = torch.empty(chunk, dtype=dtype), torch.empty(chunk, dtype=dtype)
            bufs.extend([bound_buf, ratio_buf, _np(bound_buf), _np(ratio_buf), {}])
        bound_buf, ratio_buf, nb, nr, tmp = bufs
        bound, ratio = nb[: e - s], nr[: e - s]
        np.abs(_np_part(wv[i], ws[i], s, e, bound_buf), out=bound)
        np.multiply(bound, rel, out=bound)
        np.add(bound, abs_, out=bound)
        np.abs(ds.part(i, s, e, ratio_buf, tmp), out=ratio)
        np.divide(bound, ratio, out=ratio)
        return np.fmin.reduce(ratio)

    best = _host_reduce([w.numel() for w in ws], buffers, step, np.fmin, nd.type(np.nan))
    return [1.0 if np.isnan(m) else float(min(m, nd.type(1))) for m in best]


def _host_difference_sumsq(after: Sequence[torch.Tensor], before: Sequence[torch.Tensor], dtype: torch.dtype) -> list[float]:
    """Per pair of CPU arrays, ``sum((a - b)**2)``: each chunk's difference (rounded to the arrays' dtype, as
    ``a - b``) upcast to ``dtype``, the chunks' sums added in float64. A chunk's squares are summed in
    float64 by the fused C loop (:mod:`._native`; arrays of ``dtype``, float32/64), else in ``dtype``
    by ``np.dot``."""
    ds = _Chunks(after, dtype, minus=before)
    chunk, loop = _chunk_for(after), _c_loop("diff_sumsq", np.dtype(str(dtype).removeprefix("torch.")))

    def step(bufs: tuple, i: int, s: int, e: int) -> float:
        a, b = ds.views[i], ds.mviews[i]
        if loop is not None and a is not None and b is not None:  # (one loop: squares summed in float64)
            return float(loop(_native.address(a, s), _native.address(b, s), e - s))
        c = ds.part(i, s, e, bufs[0], bufs[1])
        return float(np.dot(c, c))

    return _host_reduce([a.numel() for a in after], lambda: (torch.empty(chunk, dtype=dtype), {}), step,
                        lambda a, b: a + b, 0.0)


def _host_pairs(after: Sequence[torch.Tensor], before: Sequence[torch.Tensor], dtype: torch.dtype) -> list[int]:
    """Indices of the non-empty pairs of eager CPU float tensors (of one dtype) the host kernels read."""
    return [i for i, (a, b) in enumerate(zip(after, before)) if EAGER_CPU and dtype in _NP_DTYPES and a.numel()
            and _host(a) and _host(b) and a.is_floating_point() and b.dtype == a.dtype]


def difference_norms(xp: Any, after: Sequence[torch.Tensor], before: Sequence[torch.Tensor],
                     dtype: torch.dtype) -> list[torch.Tensor]:
    """Per pair, the 2-norm of ``a - b`` in ``dtype``; on the eager CPU chunk by chunk (no weight-sized update).

    Each chunk's difference is formed and its squares summed in cache (:func:`_host_difference_sumsq`:
    one fused C loop summing in float64, or NumPy's subtraction and dot), on torch's threads; the
    result is the float64 sum's square root rounded to ``dtype``, which agrees with ``_foreach_norm``
    of the formed update within float rounding (about an ulp; neither fixes its order). Elsewhere
    (a device, non-float arrays) the update is formed and :func:`array_norms` reads it;
    ``torch.compile`` takes the default.

    Example:
      >>> [float(n) for n in difference_norms(None, [torch.tensor([4.0, 5.0])], [torch.ones(2)], torch.float32)]
      [5.0]
    """
    if _compiling():
        return NotImplemented
    after, before = list(after), list(before)
    out: list[Any] = [None] * len(after)
    host = _host_pairs(after, before, dtype)
    sums = _host_difference_sumsq([after[i] for i in host], [before[i] for i in host], dtype) if host else []
    for i, t in zip(host, sums):
        out[i] = torch.tensor(math.sqrt(t), dtype=dtype)
    rest = [i for i in range(len(after)) if out[i] is None]
    for i, n in zip(rest, array_norms(xp, [after[i] - before[i] for i in rest], 2.0, dtype) if rest else []):
        out[i] = n
    return out


def difference_min_bound_ratio(xp: Any, after: Sequence[torch.Tensor], before: Sequence[torch.Tensor],
                               relative: float, absolute: float, dtype: torch.dtype) -> list[torch.Tensor]:
    """:func:`min_bound_ratio` of ``d = a - b`` and ``w = b``, bit for bit, with no weight-sized ``d``.

    On the eager CPU each chunk's difference is made in :func:`_host_min_ratios`' ratio buffer
    (:class:`_Chunks`: the same ``a - b`` per element, in the arrays' dtype), so Clippy after a step
    reads ``w_new`` and ``w_old`` once and writes nothing weight-sized. Elsewhere the update is formed
    and :func:`min_bound_ratio` reads it; ``torch.compile`` takes the default.

    Example:
      >>> a, b = [torch.tensor([1.5, 1.1])], [torch.ones(2)]
      >>> [float(m) for m in difference_min_bound_ratio(None, a, b, 0.25, 0.0, torch.float32)]
      [0.5]
    """
    if _compiling():
        return NotImplemented
    after, before = list(after), list(before)
    out: list[Any] = [None] * len(after)
    host = _host_pairs(after, before, dtype)
    if host:
        chunks = _Chunks([after[i] for i in host], dtype, minus=[before[i] for i in host])
        for i, m in zip(host, _host_min_ratios(chunks, [before[i] for i in host], relative, absolute, dtype)):
            out[i] = torch.tensor(m, dtype=dtype)
    rest = [i for i in range(len(after)) if out[i] is None]
    if rest:
        mins = min_bound_ratio(xp, [after[i] - before[i] for i in rest], [before[i] for i in rest], relative,
                               absolute, dtype)
        for i, m in zip(rest, mins):
            out[i] = m
    return out


def min_bound_ratio(xp: Any, ds: Sequence[torch.Tensor], ws: Sequence[torch.Tensor], relative: float,
                    absolute: float, dtype: torch.dtype) -> list[torch.Tensor]:
    """Clippy's per-array ``min(1, min bound / |d|)``, chunk by chunk, in reused buffers.

    The core's default makes five full-size temporaries per array (``|w|``, the bound,
    ``|d|``, the flag, the ratios), whose fresh pages cost more than the arithmetic on
    a CPU; here they are two ``_RATIO_CHUNK``-element buffers, reused (in cache), and on the eager CPU
    NumPy's loops on smaller chunks, on torch's threads (:func:`_host_min_ratios`). Same values (each
    element's ratio is the same float32 operation; a minimum does not depend on order).
    ``torch.compile`` takes the default.

    Example:
      >>> [float(m) for m in min_bound_ratio(None, [torch.tensor([0.5, 0.1])], [torch.ones(2)], 0.25, 0.0, torch.float32)]
      [0.5]
    """
    del xp
    if _compiling():
        return NotImplemented
    width = min(_RATIO_CHUNK, max((d.numel() for d in ds), default=0))
    bufs: dict = {}
    out: list[Any] = [None] * len(ds)
    host = [i for i, (d, w) in enumerate(zip(ds, ws)) if EAGER_CPU and dtype in _NP_DTYPES and d.numel() and _host(d)
            and _host(w) and d.is_floating_point() and w.is_floating_point()]
    for i, m in zip(host, _host_min_ratios(_Chunks([ds[i] for i in host], dtype), [ws[i] for i in host], relative,
                                           absolute, dtype) if host else []):
        out[i] = torch.tensor(m, dtype=dtype)
    for k, (d, w) in enumerate(zip(ds, ws)):
        if out[k] is not None:
            continue
        one = torch.ones((), dtype=dtype, device=d.device)
        if d.numel() == 0:
            out[k] = one
            continue
        if d.device not in bufs:
            bufs[d.device] = (torch.empty(width, dtype=dtype, device=d.device), torch.empty(width, dtype=dtype, device=d.device))
        # on the CPU a NaN minimum can be seen without a device sync: the NaN-to-1 pass runs only for an array
        # that has one (0/0, NaN inputs); on a device every chunk takes it
        host = d.device.type == "cpu"
        mins = _min_ratios(d, w, relative, absolute, dtype, *bufs[d.device], nan_pass=not host)
        if host and bool(mins.isnan().any()):
            mins = _min_ratios(d, w, relative, absolute, dtype, *bufs[d.device], nan_pass=True)
        out[k] = torch.minimum(mins.min(), one)
    return out


def _min_ratios(d: torch.Tensor, w: torch.Tensor, relative: float, absolute: float, dtype: torch.dtype,
                bound_buf: torch.Tensor, ratio_buf: torch.Tensor, nan_pass: bool) -> torch.Tensor:
    """One array's minimum of ``bound / |d|`` per ``_RATIO_CHUNK`` chunk (NaN ratios as 1 with ``nan_pass``)."""
    fd, fw = d.reshape(-1), w.reshape(-1)
    mins = torch.empty(-(-fd.numel() // _RATIO_CHUNK), dtype=dtype, device=d.device)  # one minimum per chunk
    for k, s in enumerate(range(0, fd.numel(), _RATIO_CHUNK)):
        cd, cw = fd[s: s + _RATIO_CHUNK], fw[s: s + _RATIO_CHUNK]
        n = cd.numel()
        bound = torch.abs(cw.to(dtype), out=bound_buf[:n]).mul_(relative).add_(absolute)  # absolute + relative*|w|
        ratio = torch.div(bound, torch.abs(cd.to(dtype), out=ratio_buf[:n]), out=ratio_buf[:n])
        # where |d| <= bound, r >= 1 (division is monotone) and cannot lower the minimum below 1; NaN
        # ratios (0/0, NaN inputs) become 1: as the default's where(|d| > bound, bound / |d|, 1)
        if nan_pass:
            ratio.nan_to_num_(nan=1.0, posinf=math.inf, neginf=-math.inf)
        torch.amin(ratio, dim=0, out=mins[k])
    return mins


# ------------------------------------------------------------------------- masking

_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _and_mask(bits: torch.Tensor, mask: torch.Tensor) -> None:
    """``bits *= mask`` in place (True keeps the bit pattern, False makes it 0), one branch-free pass.

    NumPy's multiply casts the bools in its inner loop (torch's ``mul_`` first makes an
    integer copy of the mask; ``bits &= -mask`` took three passes): 0.46 ms per 1M-element
    chunk here, against 0.73 and 0.85 ms.
    """
    np.multiply(_np(bits), _np(mask), out=_np(bits))


def _branch_free(x: torch.Tensor, m: torch.Tensor) -> bool:
    """Whether masking ``x`` by ``m`` takes the branch-free bit path (eager CPU, contiguous float)."""
    return (x.device.type == "cpu" and not _compiling() and m.device == x.device and x.is_floating_point()
            and x.element_size() in _BITS and m.shape == x.shape and m.dtype == torch.bool and x.is_contiguous())


def _zero_where_not(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x[~m] = +0`` in place on a contiguous CPU float tensor, by ``bits(x) * m``, chunk by chunk.

    Bit-identical to ``where(m, x, 0)`` (kept elements untouched, NaNs included; pruned
    ones become +0.0) but branch-free.
    """
    bits = x.view(_BITS[x.element_size()]).reshape(-1)
    flat = m.contiguous().reshape(-1)
    for s in range(0, bits.numel(), CHUNK):
        e = min(bits.numel(), s + CHUNK)
        _and_mask(bits[s:e], flat[s:e])
    return x


def _mask_(x: torch.Tensor, m: torch.Tensor) -> None:
    if _branch_free(x, m):
        _zero_where_not(x, m)
    else:
        torch.where(m.to(x.device), x, torch.zeros((), dtype=x.dtype, device=x.device), out=x)


def apply_masks(xp: Any, xs: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """``where(mask, x, 0)`` out of place (eager CPU: a copy, then the branch-free bit mask).

    Example:
      >>> apply_masks(None, [torch.tensor([1.0, 2.0])], [torch.tensor([True, False])])[0].tolist()
      [1.0, 0.0]
    """
    del xp
    out = []
    for x, m in zip(xs, masks):
        if _branch_free(x.contiguous(), m):
            out.append(_zero_where_not(x.clone(memory_format=torch.contiguous_format), m))
        else:
            out.append(torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)))
    return out


def cond(xp: Any, pred: Any, true_fn: Any, false_fn: Any) -> Any:
    """A Python branch in eager mode (reads ``pred``: one host sync on CUDA); ``where`` under compile."""
    del xp
    if _compiling():
        return NotImplemented
    return true_fn() if bool(pred) else false_fn()


def apply_effect_(xp: Any, xs: list[torch.Tensor], effect: Any) -> list[torch.Tensor]:
    """Apply an effect to ``xs`` in place (``_foreach_mul_``, ``_foreach_clamp_*_``, branch-free masks).

    Example:
      >>> from gradclip_core import Scale
      >>> g = [torch.tensor([3.0, 4.0])]
      >>> _ = apply_effect_(None, g, Scale((torch.tensor(0.5),)))
      >>> g[0].tolist()
      [1.5, 2.0]
    """
    if isinstance(effect, Keep):
        return xs
    if isinstance(effect, Scale):
        idx = [i for i, f in enumerate(effect.factors) if f is not None]
        _scale([xs[i] for i in idx], [effect.factors[i] for i in idx], inplace=True, divide=effect.divide)
    elif isinstance(effect, Mask):
        for x, m in zip(xs, effect.masks):
            if m is not None:
                _mask_(x, m)
    elif isinstance(effect, Clamp):
        if effect.count is not None and not effect.count.done:
            _clamp_counted(xp, xs, effect.lo, effect.hi, effect.count)
        elif effect.lo is not None or effect.hi is not None:
            _clamp(xs, effect.lo, effect.hi, inplace=True)
    elif isinstance(effect, ZeroNonfinite):
        for x in xs:
            x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    elif isinstance(effect, Replace):
        idx = [i for i, (x, y) in enumerate(zip(xs, effect.arrays)) if y is not x]
        if idx:
            torch._foreach_copy_([xs[i] for i in idx], [effect.arrays[i] for i in idx])
    elif isinstance(effect, Then):
        for e in effect.effects:
            apply_effect_(xp, xs, e)
    elif isinstance(effect, Skip):
        apply_effect_(xp, xs, effect.effect)
        for x in xs:
            x.masked_fill_(effect.skip.to(x.device), 0)
    elif isinstance(effect, On):
        apply_effect_(xp, [xs[i] for i in effect.indices], effect.effect)
    else:
        return NotImplemented
    return xs


# ----------------------------------------------------------------------- selection


def order_keys(xp: Any, s: torch.Tensor) -> torch.Tensor:
    """``bits(s)`` as int32 (``s`` float32, non-negative), every NaN ``0x7F800001``."""
    del xp
    k = s.contiguous().view(torch.int32) & 0x7FFFFFFF
    return k.clamp_(max=NAN_BITS)


def float_from_bits(xp: Any, u: torch.Tensor) -> torch.Tensor:
    """The float32 whose bit pattern is the int32 ``u`` (a view)."""
    del xp
    return u.to(torch.int32).contiguous().view(torch.float32)


class _Workspace:
    """Scratch buffers of one selection, reused across chunks (nothing allocated per chunk).

    A per-chunk temporary interleaved with the small candidate tensors kept across chunks
    made glibc's heap grow by ~1 GB on GPT-2 small.
    """

    def __init__(self, flats: list[torch.Tensor], chunk: int = CHUNK) -> None:
        device = flats[0].device if flats else torch.device("cpu")
        width = max(1, min(chunk, max((f.numel() for f in flats), default=1)))
        self.values = torch.empty(width, dtype=torch.float32, device=device)
        self.ints = torch.empty(width, dtype=torch.int32, device=device)
        self.live = torch.empty(width, dtype=torch.int32, device=device)
        self.flags = torch.empty(width, dtype=torch.bool, device=device)
        self.index: np.ndarray | None = None  # 0 .. n - 1 as uint32 (a hash block's offsets), made on first use

    def arange(self, n: int) -> np.ndarray:
        if self.index is None or self.index.size < n:
            self.index = np.arange(n, dtype=np.uint32)
        return self.index[:n]


def _workspace(xp: Any, flats: list[torch.Tensor], chunk: int = CHUNK) -> _Workspace:
    return _Workspace(flats, chunk)


def _host(x: torch.Tensor) -> bool:
    """Whether ``x`` is an eager CPU tensor that NumPy can view (its bit operations, comparisons and
    ``flatnonzero`` are single-threaded SIMD loops: 2-7x faster than torch's on a 1M-element chunk
    here, and with no OpenMP barrier to wait at on a busy machine)."""
    return x.device.type == "cpu" and not _compiling() and x.is_contiguous() and not x.is_neg()


def _np(x: torch.Tensor) -> Any:
    """A NumPy view of a :func:`_host` tensor (no copy)."""
    return x.detach().numpy()


def _masked_keys(k: torch.Tensor, old: torch.Tensor | None) -> torch.Tensor:
    """``k``, 0 where ``old`` is False, in place (on the CPU: nothing when ``old`` is all True)."""
    if old is None:
        return k
    if _host(old) and _host(k):
        if not _np(old).all():  # (a bool reduction: a quarter of the traffic of the masking pass)
            _and_mask(k, old)
    else:
        k.masked_fill_(torch.logical_not(old), 0)
    return k


def _keys(xp: Any, x: torch.Tensor, old: torch.Tensor | None, divisor: Any, ws: _Workspace) -> torch.Tensor:
    """Core keys of a flat chunk, ``bits(|x| / d) + 1``, 0 where ``old`` is False, in ``ws.values``."""
    n = x.numel()
    v = ws.values[:n]
    k = v.view(torch.int32)
    if x.dtype == torch.float32 and divisor is None and _host(x):
        np.bitwise_and(_np(x).view(np.int32), 0x7FFFFFFF, out=_np(k))  # |x|: the sign bit cleared
    else:
        if x.dtype == torch.float32:
            torch.abs(x, out=v)
        else:
            v.copy_(x).abs_()
        if divisor is not None:
            v.div_(divisor.to(device=v.device, dtype=torch.float32))
    k.clamp_(max=NAN_BITS).add_(1)  # abs cleared the sign: every NaN is > inf's bits; one NaN key
    return _masked_keys(k, old)


_MID = 0x3FC00000  # gradclip_core.prune._scores.ordered: negative scores below, positive above


def _signed_keys(xp: Any, x: torch.Tensor, old: torch.Tensor | None, ws: _Workspace) -> torch.Tensor:
    """Keys of a flat chunk of signed float32 scores: those of ``ordered(x)``, in ``ws.values`` (eager CPU).

    ``ordered`` maps ``s`` to the float whose bits are ``MID + h`` (``s >= 0``) or ``MID - h``
    (``s < 0``, ``-0.0`` included: ``h`` is 0), ``h = bits(|s|) >> 1``, and every NaN to
    ``NAN_BITS``; the key is those bits ``+ 1``. Here in int32 with no select: the sign is
    applied as ``(h ^ m) - m`` with ``m = bits >> 31`` (0 or -1), and a chunk with a NaN
    sets its NaN keys after. No full-size temporary (the scratch is the workspace's); the
    keys of ``ordered`` followed by :func:`_keys`, bit for bit.
    """
    n = x.numel()
    v = ws.values[:n]
    src = x if x.dtype == torch.float32 and _host(x) else v.copy_(x)  # (v is written last, after src is read)
    sn = _np(src)
    b = sn.view(np.int32)
    h, m = _np(ws.ints[:n]), _np(ws.live[:n])
    np.right_shift(b, 1, out=h)
    np.bitwise_and(h, 0x3FFFFFFF, out=h)  # bits(|s|) >> 1
    # (a NaN's h is >= +inf's 0x3FC00000: only then is the chunk looked at for NaNs)
    nan = np.isnan(sn, out=_np(ws.flags[:n])) if h.max() >= 0x3FC00000 else None
    has_nan = nan is not None and bool(nan.any())
    np.right_shift(b, 31, out=m)
    np.bitwise_xor(h, m, out=h)
    np.subtract(h, m, out=h)  # -h where the sign bit is set
    k = v.view(torch.int32)
    kn = _np(k)
    np.add(h, _MID + 1, out=kn)  # -inf -> 1, +inf -> 0x7F800001
    if has_nan:
        kn[nan] = NAN_KEY
    return _masked_keys(k, old)


def _fmix32_np(h: np.ndarray, tmp: np.ndarray) -> None:
    """MurmurHash3's ``fmix32`` of a uint32 array, in place (``tmp``: scratch of its size)."""
    for shift, c in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):
        np.right_shift(h, shift, out=tmp)
        np.bitwise_xor(h, tmp, out=h)
        if c is not None:
            np.multiply(h, np.uint32(c), out=h)


def _hash_keys(xp: Any, spec: Any, start: int, n: int, old: torch.Tensor | None, ws: _Workspace) -> torch.Tensor:
    """Keys of the random scores of flat elements ``start .. start + n - 1`` (:class:`HashScores`), in ``ws.values``.

    :func:`gradclip_core._hash.hash_scores` of those elements, then :func:`_keys`, bit for bit, in
    NumPy's uint32 arithmetic (logical shifts, wrapping products), ``_HASH_BLOCK`` elements at a
    time in two scratch blocks that stay in the core's own cache (the same two for every block of a
    thread's share: fresh parts of the workspace were read from memory once per block), each block's
    keys finished there: the scores converted from int32 (below ``2**24``: exact; the signed
    conversion is a SIMD one, the unsigned one is not), ``+ 1``, masked by ``old``. The blocks are
    shared among torch's threads (:func:`_host_shares`: NumPy releases the GIL; each share hashes in
    scratch taken from its own part of the workspace). The scores of the whole array are never made
    (eager CPU). With the fused C loops (:mod:`._native`) each share is one loop that writes its
    keys directly (the hash, the conversion, ``+ 1`` and the mask per element; the same bits).
    """
    b1, b2 = array_bases(spec.seed, spec.index)
    base = start + int(spec.offset) + b1
    mix = None if spec.step is None else np.uint32((int(spec.step) * GOLDEN) & 0xFFFFFFFF)
    v = ws.values[:n]
    width = min(n, _HASH_BLOCK)
    kn, index = _np(v).view(np.int32), ws.arange(width)
    ints, live = _np(ws.ints[:n]).view(np.uint32), _np(ws.live[:n]).view(np.uint32)
    on = _np(old.reshape(-1)) if old is not None and _host(old) else None
    later = old is not None and on is None  # (an old mask NumPy cannot view: applied after, by torch)
    if on is not None and on.all():  # (a bool reduction: a quarter of the traffic of the masking)
        on = None

    lib = _native.library()
    loop = None if lib is None else lib.gc_hash_keys

    def work(share: list[tuple[int, int, int]]) -> dict:
        s0, e0 = share[0][1], share[-1][2]  # (a contiguous run of elements: its scratch lies in its own part)
        if loop is not None:  # (one fused loop per element: the hash, the key, the mask)
            loop(_native.address(kn, s0), e0 - s0, (base + s0) & 0xFFFFFFFF, int(b2) & 0xFFFFFFFF,
                 0 if mix is None else int(mix), mix is not None, None if on is None else _native.address(on, s0))
            return {}
        hs, ts = ints[s0:s0 + min(width, e0 - s0)], live[s0:s0 + min(width, e0 - s0)]
        for s in range(s0, e0, _HASH_BLOCK):
            e = min(e0, s + _HASH_BLOCK)
            h, tmp = hs[:e - s], ts[:e - s]
            np.add(index[:e - s], np.uint32((base + s) & 0xFFFFFFFF), out=h)  # j + b1
            _fmix32_np(h, tmp)
            np.bitwise_xor(h, np.uint32(b2), out=h)
            _fmix32_np(h, tmp)
            np.right_shift(h, 8, out=h)
            if mix is not None:  # remixed with the step (SET's growth)
                np.add(h, mix, out=h)
                _fmix32_np(h, tmp)
                np.right_shift(h, 8, out=h)
            k = kn[s:e]
            np.copyto(k.view(np.float32), h.view(np.int32), casting="unsafe")  # the score, exact: below 2**24
            np.add(k, 1, out=k)
            if on is not None:
                np.multiply(k, on[s:e], out=k)
        return {}

    if n:
        _host_shares([n], work)
    k = v.view(torch.int32)
    return _masked_keys(k, old) if later else k


_HASH_BLOCK = 1 << 16  # two 256 KiB uint32 blocks: ~30 passes of the hash stay in a core's L2 cache


def _histogram(xp: Any, key: torch.Tensor, shift: Any, prefix: Any, digit: int, dtype: Any,
               ws: _Workspace, acc: torch.Tensor | None) -> torch.Tensor:
    """``acc +=`` the ``bincount`` of the next digit of the keys in ``prefix`` (``2**digit`` bins, int64)."""
    bins = 1 << digit
    tmp = ws.ints[: key.numel()]
    if shift + digit >= 31:  # the top digit: every key is in the (empty) prefix
        h = torch.bincount(torch.bitwise_right_shift(key, shift, out=tmp), minlength=bins)
    elif shift == 0 and key.device.type == "cpu" and not _compiling():
        # Branch-free: below the prefix -> 0, digit v -> v + 1, above -> bins + 1.
        base = (int(prefix) << digit) - 1
        low = torch.sub(key, base, out=tmp).clamp_(0, bins + 1)
        h = torch.bincount(low, minlength=bins + 2)[1:bins + 1]
    else:
        top = torch.bitwise_right_shift(key, shift, out=tmp)
        low = torch.where(torch.bitwise_right_shift(top, digit) == prefix, top & (bins - 1), bins)
        h = torch.bincount(low, minlength=bins + 1)[:bins]
    if acc is None:
        return h.clone() if h.storage_offset() or h.numel() != bins else h
    return acc.add_(h)


def _keep_sync_free(xp: Any, key: torch.Tensor, T: torch.Tensor, r: torch.Tensor, before: torch.Tensor,
                    out: torch.Tensor, ws: _Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of a chunk without a host sync: ties kept after the first ``r`` by a running cumulative sum."""
    eq = key == T
    cs = eq.cumsum(0) + before
    torch.logical_or(key > T, eq & (cs > r), out=out)
    return out, eq.sum()


def _keep_cpu(xp: Any, key: torch.Tensor, T: torch.Tensor, r: torch.Tensor, before: torch.Tensor,
              out: torch.Tensor, ws: _Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of a chunk on eager CPU: the chunk's tie count is read on the host, no cumulative sum.

    A chunk entirely after the ``r``-th tie takes ``key >= T``, one before it ``key > T``,
    and only the chunk holding it looks at positions (NumPy views: see :func:`_host`).
    """
    T_, r_, before_ = int(T), int(r), int(before)
    kn, on = _np(key), _np(out)
    if before_ >= r_:
        np.greater_equal(kn, T_, out=on)
        return out, torch.zeros((), dtype=torch.int64)  # later chunks take this branch too
    eq = np.equal(kn, T_, out=_np(ws.flags[: key.numel()]))
    c = int(np.count_nonzero(eq))
    if before_ + c <= r_:
        np.greater(kn, T_, out=on)
    else:
        np.greater_equal(kn, T_, out=on)
        on[np.flatnonzero(eq)[: r_ - before_]] = False
    return out, torch.tensor(c, dtype=torch.int64)


def _gather(xp: Any, key: torch.Tensor, shift: int, b: Any, out: torch.Tensor,
            ws: _Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """Compaction: ``out = (key >> shift) > b``; the keys of bin ``b`` (copied) and their positions."""
    b_ = int(b)
    n = key.numel()
    top = np.right_shift(_np(key), shift, out=_np(ws.ints[:n]))
    np.greater(top, b_, out=_np(out))
    idx = torch.from_numpy(np.flatnonzero(np.equal(top, b_, out=_np(ws.flags[:n]))))
    return key[idx], idx


def _scatter(xp: Any, flat: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> None:
    flat[positions] = values


def _value(xp: Any, T: torch.Tensor) -> torch.Tensor:
    """The float32 score of key ``T`` (a bit view), 0 for key 0."""
    T = torch.as_tensor(T).to(torch.int32)
    bits = (T - 1).clamp(min=0).reshape(1).view(torch.float32)[0]
    return torch.where(T > 0, bits, torch.zeros((), dtype=torch.float32, device=T.device))


CPU_SELECTION = Selection(digit=16, chunk=CHUNK, keys=_keys, histogram=_histogram, keep=_keep_cpu,
                          workspace=_workspace, gather=_gather, scatter=_scatter, value=_value,
                          signed_keys=_signed_keys, hash_keys=_hash_keys, hash_chunk=HASH_CHUNK)
DEVICE_SELECTION = Selection(digit=16, chunk=CHUNK, keys=_keys, histogram=_histogram, keep=_keep_sync_free,
                             workspace=_workspace, value=_value)


def _choose(xp: Any, xs: list) -> Selection:
    """Eager CPU: host reads are free; CUDA, ``torch.compile`` and shards: no host sync."""
    from ._collective import active

    cpu = all(x.device.type == "cpu" for x in xs)
    return CPU_SELECTION if (EAGER_CPU and cpu and not _compiling() and not active()) else DEVICE_SELECTION


def sort_keys(xp: Any, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted 1-d int32 ``keys`` and their stable order: one ``torch.sort(stable=True)`` (a radix sort of
    int32 on the CPU, where ``argsort`` is the same kernel), no gather of the keys after it."""
    del xp
    out = torch.sort(keys, stable=True)
    return out.values, out.indices


def unpermute(xp: Any, values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``out[order] = values`` (one ``scatter``; the default is a second sort)."""
    del xp
    return torch.empty_like(values).scatter_(0, order.to(torch.int64), values)


def lamp_scores(xp: Any, keys: torch.Tensor) -> Any:
    """LAMP scores of 1-d int32 LAMP keys, in place order (:func:`gradclip_core.prune.lamp_scores`): on the CPU
    with the fused C loops, the stable sort and then one loop (:mod:`._native`) for the squares, the suffix
    sums (in double, as torch's ``cumsum`` of float32), the division and the scatter back, the same bits as
    the default's flip, cumsum, flip, divide and scatter (five full-size temporaries: more time than the sort);
    elsewhere ``NotImplemented`` (the default).

    Example:
      >>> lamp_scores(None, torch.tensor([1073741824, 1065353216, 0], dtype=torch.int32)).tolist()  # bits of 2, 1, 0
      [1.0, 0.20000000298023224, 0.0]
    """
    del xp
    lib = _native.library()
    if lib is None or not _host(keys) or keys.dtype != torch.int32 or keys.ndim != 1:
        return NotImplemented
    sorted_keys, order = torch.sort(keys, stable=True)
    out = torch.empty(keys.shape, dtype=torch.float32)
    lib.gc_lamp_scatter(_native.address(_np(sorted_keys)), _native.address(_np(order)), keys.shape[0],
                        _native.address(_np(out)))
    return out


def group_keep(xp: Any, cols: torch.Tensor, n_prune: int) -> torch.Tensor:
    """The default's pairwise ranks, counted in place in one int8 (int16 for big groups) buffer: no
    temporaries but the comparison's flag (2-3x faster than the default's casts and copies on a CPU)."""
    del xp
    n_group = cols.shape[0]
    ranks = torch.zeros(cols.shape, dtype=torch.int8 if n_group < 128 else torch.int32, device=cols.device)
    for i in range(n_group):
        for j in range(i + 1, n_group):
            first = cols[i] <= cols[j]  # i (the smaller position) comes before j
            ranks[j] += first
            ranks[i] += ~first
    return ranks >= n_prune


def kept_buffers(xp: Any, scratch: dict, key: str, like: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """``scratch[key]`` while it fits ``like`` (else new empty buffers, kept there); ``None`` under ``torch.compile``
    (a traced graph makes its own copies)."""
    del xp
    if _compiling():
        return None
    kept = scratch.get(key)
    if kept is None or not _fits(kept, like):
        kept = scratch[key] = [torch.empty_like(v, requires_grad=False) for v in like]
    return list(kept)


def _fits(buffers: Sequence[torch.Tensor], like: Sequence[torch.Tensor]) -> bool:
    """Whether ``buffers`` mirror ``like``: one each, the same kind of tensor, shape, dtype, device, strides, placements."""
    return len(buffers) == len(like) and all(
        type(b) is type(p) and b.shape == p.shape and b.dtype == p.dtype and b.device == p.device
        and b.stride() == p.stride() and getattr(b, "placements", None) == getattr(p, "placements", None)
        for b, p in zip(buffers, like))


# ------------------------------------------------------------------ bool masks (structured pruning, sparsity)
# torch's CPU reductions and broadcast logical ops on bool tensors run far below memory speed (and wait at an
# OpenMP barrier per op on a busy machine); NumPy's loops on views of eager CPU tensors do not.


def _host_bool(*xs: torch.Tensor) -> bool:
    """Whether every ``x`` is a plain eager CPU bool tensor NumPy can view (:func:`_host`)."""
    return all(type(x) is torch.Tensor and x.dtype == torch.bool and _host(x) for x in xs)


def unit_any(xp: Any, m: torch.Tensor, axes: Any) -> Any:
    """``any(m, axis=axes, keepdims=True)`` (eager CPU: NumPy's ``any`` of a view; else the default)."""
    del xp
    if not _host_bool(m) or m.ndim == 0:
        return NotImplemented
    return torch.from_numpy(np.any(_np(m), axis=None if axes is None else tuple(axes), keepdims=True))


def and_broadcast(xp: Any, m: torch.Tensor, keep: torch.Tensor) -> Any:
    """``m & keep`` (``keep`` broadcast), new (eager CPU: NumPy's ``logical_and`` on views; else the default)."""
    del xp
    if not _host_bool(m, keep) or m.device != keep.device:
        return NotImplemented
    out = torch.empty(m.shape, dtype=torch.bool)
    np.logical_and(_np(m), _np(keep), out=_np(out))
    return out


def count_true(xp: Any, masks: Sequence[torch.Tensor]) -> Any:
    """``count_nonzero`` of each bool mask (eager CPU: NumPy's count of a view, as an int64 0-d tensor)."""
    del xp
    if not all(_host_bool(m) for m in masks):
        return NotImplemented
    return [torch.tensor(int(np.count_nonzero(_np(m))), dtype=torch.int64) for m in masks]


def register() -> None:
    """Register the torch kernels with the core (done on first use of a torch tensor).

    Example:
      >>> register()
    """
    register_primitives(NAMESPACE, array_norms=array_norms, array_rms=array_rms, unit_norms=unit_norms,
                        multiply=multiply, clip=clip, count_outside=count_outside, fuses_count=fuses_count, min_bound_ratio=min_bound_ratio,
                        difference_norms=difference_norms, difference_min_bound_ratio=difference_min_bound_ratio,
                        apply_masks=apply_masks, cond=cond, order_keys=order_keys, float_from_bits=float_from_bits,
                        apply_effect_=apply_effect_, sort_keys=sort_keys, unpermute=unpermute, lamp_scores=lamp_scores,
                        group_keep=group_keep,
                        kept_buffers=kept_buffers, compiling=lambda xp: _compiling())
    register_primitives(NAMESPACE, unit_any=unit_any, and_broadcast=and_broadcast, count_true=count_true)
    register_selection(NAMESPACE, _choose)

