"""torch's multi-tensor (``torch._foreach_*``) kernels behind the core's multi-array primitives.

:func:`register` installs :func:`array_norms` and :func:`multiply` for the
``"array_api_compat.torch"`` namespace (see :mod:`gradclip_core._multi`). They return
exactly what the core's portable defaults return (same values, same dtypes), in one
kernel launch per (device, dtype) group instead of one op per tensor.

``multiply`` may also scale *in place*: inside :func:`owned`, tensors the adapter owns
(the ``.grad`` tensors that :func:`gradclip_torch.apply_` is about to overwrite anyway)
are scaled with ``torch._foreach_mul_`` and returned as they are, which saves one
allocation and one copy per gradient, as ``torch.nn.utils.clip_grad_norm_`` does.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Sequence

import torch

import gradclip_core as gc
from gradclip_core._multi import symmetric_bounds

__all__ = ["NAMESPACE", "register", "array_norms", "multiply", "clip", "count_outside", "owned"]

NAMESPACE = "array_api_compat.torch"

_FOREACH_DEVICES = ("cpu", "cuda", "xpu", "mtia")
_local = threading.local()


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


@contextlib.contextmanager
def owned(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within this block, :func:`multiply` may scale ``tensors`` in place.

    Only for tensors whose old values nobody reads afterwards (the adapter's own
    gradient buffers). Ignored under ``torch.compile``, where the compiler fuses the
    out-of-place ops and the copy itself.

    Args:
      tensors: the tensors that may be overwritten.

    Example:
      >>> import torch
      >>> g = [torch.ones(2)]
      >>> with owned(g):
      ...     out = multiply(None, g, [torch.tensor(0.5)])
      >>> out[0] is g[0], g[0].tolist()
      (True, [0.5, 0.5])
    """
    previous = getattr(_local, "ids", None)
    _local.ids = frozenset(id(t) for t in tensors)
    try:
        yield
    finally:
        _local.ids = previous


def _owned_ids() -> frozenset | None:
    if _compiling():
        return None
    return getattr(_local, "ids", None)


def array_norms(xp: Any, xs: Sequence[torch.Tensor], ord: float, dtype: torch.dtype) -> list[torch.Tensor]:
    """Per-tensor ``ord``-norms accumulated in ``dtype``, with ``torch._foreach_norm``.

    Args:
      xp: the namespace (unused; part of the primitive's signature).
      xs: tensors.
      ord: 1, 2 or inf.
      dtype: accumulation and result dtype (float32 or float64).

    Returns:
      One 0-d tensor of ``dtype`` per input; size-0 tensors have norm 0 (torch's
      kernels refuse the inf-norm of an empty tensor).

    Example:
      >>> import torch
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
        if _has_foreach(device):
            # dtype=None when no upcast is needed: the very call clip_grad_norm_ makes.
            norms = torch._foreach_norm(group, ord, dtype=None if xdtype == dtype else dtype)
        else:
            norms = [torch.linalg.vector_norm(x.to(dtype), ord=ord) for x in group]
        for j, n in zip(idx, norms):
            out[live[j]] = n
    return out


def _scale_group(group: list[torch.Tensor], factors: list[torch.Tensor], inplace: bool) -> list[torch.Tensor]:
    """``x * f`` for one (device, dtype) group; factors already cast to the group's dtype."""
    first = factors[0]
    same = all(f is first for f in factors)
    if inplace:
        if same:
            torch._foreach_mul_(group, first)
        else:
            torch._foreach_mul_(group, factors)
        return group
    if same:
        return list(torch._foreach_mul(group, first))
    return list(torch._foreach_mul(group, factors))


def _scale_shared(xs: list[torch.Tensor], f: torch.Tensor, ids: frozenset | None) -> list[torch.Tensor] | None:
    """``x * f`` for one 0-d factor ``f`` shared by all ``xs``, grouped by dtype; ``None``
    when a tensor is on another device than ``f`` or has no foreach kernels."""
    groups = _groups(xs)
    if any(device != f.device or not _has_foreach(device) for device, _ in groups):
        return None
    out: list[Any] = [None] * len(xs)
    for (_, dtype), idx in groups.items():
        group = [xs[i] for i in idx]
        inplace = ids is not None and all(id(x) in ids for x in group)
        for i, r in zip(idx, _scale_group(group, [f if f.dtype == dtype else f.to(dtype)], inplace)):
            out[i] = r
    return out


def multiply(xp: Any, xs: Sequence[torch.Tensor], factors: Sequence[Any]) -> list[torch.Tensor]:
    """``[x * f.to(x.dtype) for x, f in zip(xs, factors)]`` with ``torch._foreach_mul``.

    A factor shared by all tensors (a global-norm scale) is cast once per dtype and
    applied with the single-tensor overload; per-tensor 0-d factors use the list
    overload; factors of higher rank (per-unit scales) use a plain multiply.
    Inside :func:`owned` the owned tensors are scaled in place and returned.

    Args:
      xp: the namespace (unused).
      xs: tensors.
      factors: one 0-d (or broadcastable) tensor per tensor.

    Returns:
      The scaled tensors, each of its input's dtype.

    Example:
      >>> import torch
      >>> s = torch.tensor(0.5)
      >>> [t.tolist() for t in multiply(None, [torch.ones(2), torch.ones(1, dtype=torch.bfloat16)], [s, s])]
      [[0.5, 0.5], [0.5]]
    """
    del xp
    xs, factors = list(xs), list(factors)
    if len(xs) != len(factors):
        raise ValueError(f"multiply needs one factor per tensor, got {len(factors)} for {len(xs)}")
    ids = _owned_ids()
    first = factors[0] if factors else None
    if isinstance(first, torch.Tensor) and first.ndim == 0 and all(f is first for f in factors):
        shared = _scale_shared(xs, first, ids)  # the global-norm case: one factor for every tensor
        if shared is not None:
            return shared
    out: list[Any] = [None] * len(xs)
    scalar: list[int] = []
    for i, (x, f) in enumerate(zip(xs, factors)):
        if isinstance(f, torch.Tensor) and f.ndim == 0 and f.device == x.device:
            scalar.append(i)
        else:  # broadcasting factor or a foreign device: the portable default
            f = f.to(x.dtype) if isinstance(f, torch.Tensor) else f
            out[i] = x * f
    cast: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def to_dtype(f: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        key = (id(f), dtype)
        if key not in cast:
            cast[key] = f if f.dtype == dtype else f.to(dtype)
        return cast[key]

    for (device, dtype), idx in _groups([xs[i] for i in scalar]).items():
        pos = [scalar[j] for j in idx]
        group = [xs[i] for i in pos]
        fs = [to_dtype(factors[i], dtype) for i in pos]
        if not _has_foreach(device):
            res = [x * f for x, f in zip(group, fs)]
        else:
            inplace = ids is not None and all(id(x) in ids for x in group)
            res = _scale_group(group, fs, inplace)
        for i, r in zip(pos, res):
            out[i] = r
    return out


def _bound_in(dtype: torch.dtype, bound: float) -> float:
    """``bound`` rounded to ``dtype``, as a Python float (exact, so no kernel re-rounds it)."""
    return torch.tensor(bound, dtype=dtype).item()


def clip(xp: Any, xs: Sequence[torch.Tensor], lo: Any, hi: Any) -> list[torch.Tensor]:
    """Each tensor clamped to ``[lo, hi]`` with ``torch._foreach_clamp_min/max``; NaN stays NaN.

    Bounds are rounded to each tensor's dtype first, as the core's default does. Inside
    :func:`owned` the owned tensors are clamped in place (like ``clip_grad_value_``).
    Bounds given as tensors (traced hyperparameters) return ``NotImplemented``: the
    core's portable default handles them.

    Example:
      >>> import torch
      >>> [t.tolist() for t in clip(None, [torch.tensor([-2.0, 0.5, 3.0])], -1.0, 1.0)]
      [[-1.0, 0.5, 1.0]]
    """
    del xp
    xs = list(xs)
    if any(isinstance(b, torch.Tensor) for b in (lo, hi)):
        return NotImplemented
    ids = _owned_ids()
    out: list[Any] = [None] * len(xs)
    for (device, dtype), idx in _groups(xs).items():
        group = [xs[i] for i in idx]
        if not _has_foreach(device):
            lo_, hi_ = (None if b is None else _bound_in(dtype, b) for b in (lo, hi))
            res = [torch.clamp(x, min=lo_, max=hi_) for x in group]
        else:
            inplace = ids is not None and all(id(x) in ids for x in group)
            res = group
            for bound, op, op_ in ((lo, torch._foreach_clamp_min, torch._foreach_clamp_min_),
                                   (hi, torch._foreach_clamp_max, torch._foreach_clamp_max_)):
                if bound is None:
                    continue
                b = _bound_in(dtype, bound)
                if inplace:
                    op_(res, b)
                else:
                    res, inplace = list(op(res, b)), True  # fresh tensors: the next bound may go in place
        for i, r in zip(idx, res):
            out[i] = r
    return out


_COUNT_CHUNK = 1 << 20


def count_outside(xp: Any, xs: Sequence[torch.Tensor], lo: Any, hi: Any) -> list[torch.Tensor]:
    """Per tensor, the float32 count of elements outside ``[lo, hi]``, chunk by chunk.

    The core's default allocates a full-size ``|x|`` and a full-size flag per tensor
    (5 bytes per element); here they are two reused ``_COUNT_CHUNK`` buffers, and the
    counts stay on the device. Tensor bounds, and ``torch.compile``, take the default.

    Example:
      >>> import torch
      >>> [float(c) for c in count_outside(None, [torch.tensor([-2.0, 0.5, float("nan"), 3.0])], -1.0, 1.0)]
      [2.0]
    """
    del xp
    if _compiling() or any(isinstance(b, torch.Tensor) for b in (lo, hi)):
        return NotImplemented
    symmetric = symmetric_bounds(lo, hi)
    width = min(_COUNT_CHUNK, max((x.numel() for x in xs), default=0))
    bufs: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
    out = []
    for x in xs:
        if (x.device, x.dtype) not in bufs:
            bufs[x.device, x.dtype] = (torch.empty(width, dtype=x.dtype, device=x.device),
                                       torch.empty(width, dtype=torch.bool, device=x.device))
        vbuf, fbuf = bufs[x.device, x.dtype]
        lo_, hi_ = (None if b is None else _bound_in(x.dtype, b) for b in (lo, hi))
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
        out.append(total.to(torch.float32))
    return out


def register() -> None:
    """Register the primitives (and torch's ``(out, in, ...)`` weight layout) with the core.

    Example:
      >>> register()  # done once by ``import gradclip_torch``
    """
    gc.register_multi_ops(NAMESPACE, array_norms=array_norms, multiply=multiply, clip=clip, count_outside=count_outside)
    gc.register_layout(NAMESPACE, "out_first")
