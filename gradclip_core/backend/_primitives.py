"""Multi-array primitives and effect application, overridable per namespace.

A global rule touches every array of the model; a Python loop of single-array ops
over hundreds of tensors is slow in eager frameworks. The core therefore expresses
its multi-array work through the few primitives below. Each has a portable default
written with the Array API; a framework's kernel module (loaded lazily, see
:mod:`gradclip_core.backend._namespace`) registers faster versions for its namespace
with :func:`register_primitives` (torch: ``torch._foreach_norm`` / ``_foreach_mul_``).
Every override must return exactly what the default returns (same values, same
dtypes); the parity suite checks it. An override may return ``NotImplemented`` to
fall back to the default for one call.

Primitives: ``array_norms``, ``array_sumsq``, ``multiply``, ``clip``, ``count_outside``,
``fuses_count``, ``apply_masks``, ``cond``, ``order_keys`` (:mod:`gradclip_core.prune._select`),
``apply_effect_`` (in-place application of an effect, for frameworks with mutable arrays), and the
post-step ones that take the weights after and before an optimizer step instead of its update
(``difference_norms``, ``difference_min_bound_ratio``: update clipping without forming the update).
The selection kernels of global pruning are registered with
:func:`gradclip_core.backend.register_selection`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Sequence

from .._effect import Clamp, Keep, Mask, On, Replace, Scale, Skip, Then, ZeroNonfinite
from ._namespace import device_kw, ensure_kernels, namespace_name

__all__ = [
    "register_primitives",
    "override",
    "array_norms",
    "array_sumsq",
    "array_rms",
    "unit_norms",
    "multiply",
    "clip",
    "count_outside",
    "clipped_fraction",
    "counts_on_apply",
    "apply_masks",
    "cond",
    "apply_effect",
    "size",
    "upcast",
    "is_complex",
    "magnitude",
    "symmetric_bounds",
    "reuse_norms",
    "min_bound_ratio",
    "differences",
    "difference_norms",
    "difference_min_bound_ratio",
    "argsort_keys",
    "sort_keys",
    "sort_values",
    "unpermute",
    "group_keep",
    "kept_buffers",
    "unit_any",
    "and_broadcast",
    "count_true",
]

_OVERRIDES: dict[str, dict[str, Callable[..., Any]]] = {}
PRIMITIVES = ("array_norms", "array_sumsq", "array_rms", "unit_norms", "multiply", "clip", "count_outside", "fuses_count",
              "order_keys", "float_from_bits", "apply_masks", "cond", "apply_effect_", "min_bound_ratio", "compiling",
              "difference_norms", "difference_min_bound_ratio",
              "argsort_keys", "sort_keys", "sort_values", "unpermute", "lamp_scores", "group_keep", "kept_buffers",
              "unit_any", "and_broadcast", "count_true")


def register_primitives(name: str, **primitives: Callable[..., Any]) -> None:
    """Register fast versions of primitives for the namespace registered as ``name``.

    Args:
      name: the namespace name, as returned by :func:`gradclip_core.backend.namespace_name`
        (e.g. ``"array_api_compat.torch"``).
      **primitives: any of ``array_norms(xp, xs, ord, dtype)``, ``array_sumsq(xp, xs, dtype)``,
        ``multiply(xp, xs, factors)``, ``clip(xp, xs, lo, hi)``, ``count_outside(xp, xs, lo, hi)``,
        ``fuses_count(xp, xs, lo, hi) -> bool`` (see :func:`clipped_fraction`),
        ``apply_masks(xp, xs, masks)``, ``cond(xp, pred, true_fn, false_fn)``,
        ``order_keys(xp, scores)``, ``apply_effect_(xp, xs, effect)`` (in place),
        ``argsort_keys(xp, keys)``, ``sort_keys(xp, keys)``, ``sort_values(xp, keys)`` and
        ``unpermute(xp, values, order)`` (see :func:`argsort_keys`), ``lamp_scores(xp, keys)`` (1-d int32
        LAMP keys to their float32 scores in place order, or ``NotImplemented``: see
        :func:`gradclip_core.prune.lamp_scores`), ``group_keep(xp, cols, n_prune)``,
        ``kept_buffers(xp, scratch, key, like)``, ``difference_norms(xp, after, before, dtype)``,
        ``difference_min_bound_ratio(xp, after, before, relative, absolute, dtype)``,
        ``unit_any(xp, m, axes)``, ``and_broadcast(xp, m, keep)``, ``count_true(xp, masks)``, with
        the signatures and results of the defaults; and
        ``compiling(xp) -> bool``: whether a compiler that cannot trace a ``ContextVar`` is
        tracing (``torch.compile``).

    Example:
      >>> register_primitives("array_api_compat.numpy")  # nothing overridden
    """
    unknown = set(primitives) - set(PRIMITIVES)
    if unknown:
        raise ValueError(f"unknown primitives {sorted(unknown)}; expected some of {list(PRIMITIVES)}")
    _OVERRIDES.setdefault(name, {}).update(primitives)


def override(xp: Any, primitive: str) -> Callable[..., Any] | None:
    """The override registered for ``primitive`` on ``xp``'s namespace, or ``None``.

    Loads the namespace's kernel module on first use.
    """
    name = namespace_name(xp)
    ensure_kernels(name)
    table = _OVERRIDES.get(name)
    return None if table is None else table.get(primitive)


def argsort_keys(xp: Any, keys: Any) -> Any:
    """The stable ascending order of a 1-d int32 ``keys`` array (ties by index).

    Overridable (``"argsort_keys"``): JAX sorts ``(keys, index)`` as two keys, which XLA's CPU
    sort runs about twice as fast as a stable sort with a payload.

    Example:
      >>> import numpy as np
      >>> argsort_keys(np, np.array([3, 1, 3, 0], np.int32)).tolist()
      [3, 1, 0, 2]
    """
    fast = override(xp, "argsort_keys")
    return xp.argsort(keys, stable=True) if fast is None else fast(xp, keys)


def sort_keys(xp: Any, keys: Any) -> tuple[Any, Any]:
    """The sorted 1-d int32 ``keys`` and their stable ascending order (ties by index), from one sort.

    Overridable (``"sort_keys"``): torch's ``sort(stable=True)`` and JAX's two-key
    ``lax.sort`` return the sorted keys with the order, so no gather of the keys follows
    (the default is :func:`argsort_keys` and a ``take``).

    Args:
      keys: a 1-d int32 array.

    Returns:
      ``(sorted_keys, order)``: ``keys`` ascending, and ``order`` with ``keys[order] ==
      sorted_keys`` (equal keys in index order; the framework's index dtype).

    Example:
      >>> import numpy as np
      >>> [a.tolist() for a in sort_keys(np, np.array([3, 1, 3, 0], np.int32))]
      [[0, 1, 3, 3], [3, 1, 0, 2]]
    """
    fast = override(xp, "sort_keys")
    if fast is not None:
        return fast(xp, keys)
    order = argsort_keys(xp, keys)
    return xp.take(keys, order), order


def sort_values(xp: Any, keys: Any) -> Any:
    """The 1-d int32 ``keys`` sorted ascending, without their order.

    Overridable (``"sort_values"``): a backend registers it where a values-only sort is much
    faster than :func:`sort_keys` (JAX: XLA's one-operand sort); LAMP's masks then come from
    counts on the sorted keys instead of the permutation (``lamp_keep``). The default is ``xp.sort``.

    Example:
      >>> import numpy as np
      >>> sort_values(np, np.array([3, 1, 3, 0], np.int32)).tolist()
      [0, 1, 3, 3]
    """
    fast = override(xp, "sort_values")
    if fast is not None:
        return fast(xp, keys)
    return xp.sort(keys)


def unpermute(xp: Any, values: Any, order: Any) -> Any:
    """``out`` with ``out[order[i]] = values[i]`` for a permutation ``order`` (1-d): undoes ``take(x, order)``.

    The default takes by the inverse permutation, a second sort (the Array API has no
    scatter); overridable (``"unpermute"``): JAX, torch and NumPy scatter.

    Example:
      >>> import numpy as np
      >>> unpermute(np, np.array([10.0, 20.0, 30.0]), np.array([2, 0, 1])).tolist()
      [20.0, 30.0, 10.0]
    """
    fast = override(xp, "unpermute")
    if fast is not None:
        return fast(xp, values, order)
    return xp.take(values, xp.argsort(order, stable=True))


def group_keep(xp: Any, cols: Any, n_prune: int) -> Any:
    """Which members of each group survive: ``cols[j, g]`` is member ``j``'s key in group ``g``.

    A member's rank is the number of members before it (smaller key, or an equal key
    at a smaller ``j``); the ``n_prune`` first are pruned. ``cols`` is a 2-d integer
    array ``(group, groups)``, contiguous per member; one comparison per pair of
    members (``group * (group - 1) / 2`` comparisons). Overridable (``"group_keep"``:
    torch counts in place, in int8).

    Returns:
      A bool array shaped like ``cols``.

    Example:
      >>> import numpy as np
      >>> group_keep(np, np.array([[3, 1], [1, 1], [2, 0], [5, 1]]), 2).T.tolist()
      [[True, False, False, True], [False, True, False, True]]
    """
    fast = override(xp, "group_keep")
    if fast is not None:
        return fast(xp, cols, n_prune)
    n_group = cols.shape[0]
    dtype = xp.int16 if n_group < 2**15 else xp.int32
    ranks = [xp.zeros(cols.shape[1:], dtype=dtype, **device_kw([cols])) for _ in range(n_group)]
    for i in range(n_group):
        for j in range(i + 1, n_group):
            first = xp.astype(cols[i, ...] <= cols[j, ...], dtype)  # i (the smaller position) comes before j
            ranks[j] = ranks[j] + first
            ranks[i] = ranks[i] + (1 - first)
    return xp.stack([r >= n_prune for r in ranks], axis=0)


def kept_buffers(xp: Any, scratch: dict | None, key: str, like: Sequence[Any]) -> list | None:
    """Buffers shaped like ``like``, kept in ``scratch[key]`` from call to call, or ``None``.

    For frameworks whose arrays are written in place (torch, eager): update clipping copies
    the weights before the step and forms ``w_new - w_old`` after it, two weight-sized
    arrays per step. Allocated afresh, they are page-faulted in again at every step on a
    CPU (it cost more than the copies), so the adapters keep them here: made once, reused
    while they fit (the same kind of array, shape, dtype, device, strides and sharding),
    remade when they do not. Their contents are unspecified (the caller writes them).
    The default returns ``None`` (immutable arrays; or no ``scratch``): the caller makes
    fresh arrays. Overridable (``"kept_buffers"``: torch, ``None`` inside ``torch.compile``).

    Args:
      scratch: a dict the caller keeps from step to step (``None``: keep nothing).
      key: the buffers' name in ``scratch``.
      like: the arrays to mirror.

    Returns:
      A list of buffers, one per array of ``like``, or ``None``.

    Example:
      >>> import numpy as np
      >>> kept_buffers(np, {}, "snapshot", [np.zeros(3)]) is None  # NumPy: fresh arrays
      True
    """
    if scratch is None or not like:
        return None
    fast = override(xp, "kept_buffers")
    return None if fast is None else fast(xp, scratch, key, like)


def size(x: Any) -> int:
    """Static number of elements of ``x`` (shapes are static in every supported framework)."""
    return math.prod(x.shape)


def upcast(xp: Any, x: Any, dtype: Any) -> Any:
    """``x`` as ``dtype`` (no copy when it already is)."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


def is_complex(x: Any) -> bool:
    """Whether ``x`` holds complex numbers (told by its dtype's name: every framework's dtypes say it).

    Example:
      >>> import numpy as np
      >>> is_complex(np.ones(2, np.complex64)), is_complex(np.ones(2, np.float32))
      (True, False)
    """
    return "complex" in str(x.dtype)


def _complex_of(xp: Any, dtype: Any) -> Any:
    """The complex dtype whose parts are ``dtype`` (float64 -> complex128, else complex64), or ``None``."""
    return getattr(xp, "complex128" if dtype == xp.float64 else "complex64", None)


def magnitude(xp: Any, x: Any, dtype: Any) -> Any:
    """``|x|`` as the real ``dtype``: for complex ``x`` the modulus ``|z|``, computed at ``dtype``'s precision.

    Example:
      >>> import numpy as np
      >>> import array_api_compat.numpy as xp
      >>> magnitude(xp, np.array([3 + 4j], np.complex64), xp.float32).tolist()
      [5.0]
    """
    if not is_complex(x):
        return xp.abs(upcast(xp, x, dtype))
    cdt = _complex_of(xp, dtype)
    return upcast(xp, xp.abs(x if cdt is None else upcast(xp, x, cdt)), dtype)


_MEMO: list = []  # open reuse_norms() blocks: {key: (arrays, norms)} each (a plain list: torch.compile traces it)


@contextlib.contextmanager
def reuse_norms() -> Any:
    """Inside the block, :func:`array_norms` of the same arrays (same objects, order, dtype) is computed once.

    A rule that reads the norms of arrays another rule reads too (``gradclip_core.monitor``
    around a norm clip) then costs no second pass over memory. The arrays must not be
    written inside the block (rules compute their effect before anything is written).
    The block keeps the arrays alive, so their ``id`` is not reused while it is open.

    Example:
      >>> import numpy as np
      >>> x = [np.array([3.0, 4.0], np.float32)]
      >>> with reuse_norms():
      ...     a = array_norms(np, x, 2.0, np.float32)
      ...     b = array_norms(np, x, 2.0, np.float32)
      >>> a[0] is b[0], float(a[0])
      (True, 5.0)
    """
    _MEMO.append({})
    try:
        yield
    finally:
        _MEMO.pop()


def array_norms(xp: Any, xs: Sequence[Any], ord: float, dtype: Any) -> list[Any]:
    """Per-array vector norms of order ``ord`` (1, 2 or inf), accumulated in ``dtype``.

    Size-0 arrays have norm 0 for every order. Complex arrays: the norm of ``|z|``
    (``dtype`` is then the real accumulation dtype). Inside :func:`reuse_norms`, a
    repeated call on the same arrays returns the first call's norms.

    Returns:
      a list of 0-d arrays of ``dtype``, one per input array.
    """
    if _MEMO:
        key = (float(ord), str(dtype), tuple(id(x) for x in xs))
        hit = _MEMO[-1].get(key)
        if hit is not None:
            return list(hit[1])
        out = _array_norms(xp, xs, ord, dtype)
        _MEMO[-1][key] = (list(xs), out)
        return list(out)
    return _array_norms(xp, xs, ord, dtype)


def _array_norms(xp: Any, xs: Sequence[Any], ord: float, dtype: Any) -> list[Any]:
    fast = override(xp, "array_norms")
    if fast is not None:
        res = fast(xp, xs, ord, dtype)
        if res is not NotImplemented:
            return res
    out = []
    for x in xs:
        if size(x) == 0:
            out.append(xp.zeros((), dtype=dtype))
        elif is_complex(x):
            out.append(xp.linalg.vector_norm(magnitude(xp, x, dtype), ord=ord))
        else:
            out.append(xp.linalg.vector_norm(upcast(xp, x, dtype), ord=ord))
    return out


def min_bound_ratio(xp: Any, ds: Sequence[Any], ws: Sequence[Any], relative: float, absolute: float,
                    dtype: Any) -> list[Any]:
    """Per array, ``min(1, min_i bound_i / |d_i|)`` over the elements with ``|d_i| > bound_i``,
    ``bound = absolute + relative * |w|`` (Clippy's per-array scale), in ``dtype``.

    Elements within their bound, and NaN ones, do not lower the result; a size-0 array gives 1.

    Returns:
      a list of 0-d arrays of ``dtype``.

    Example:
      >>> import numpy as np
      >>> d, w = [np.array([0.5, 0.1], np.float32)], [np.array([1.0, 1.0], np.float32)]
      >>> float(min_bound_ratio(np, d, w, 0.25, 0.0, np.float32)[0])
      0.5
    """
    fast = override(xp, "min_bound_ratio")
    if fast is not None:
        out = fast(xp, ds, ws, relative, absolute, dtype)
        if out is not NotImplemented:
            return out
    return min_bound_ratio_default(xp, ds, ws, relative, absolute, dtype)


def min_bound_ratio_default(xp: Any, ds: Sequence[Any], ws: Sequence[Any], relative: float, absolute: float,
                            dtype: Any) -> list[Any]:
    """:func:`min_bound_ratio`'s portable definition (kernels fall back on it: TensorFlow where a ratio is NaN)."""
    one = xp.ones((), dtype=dtype)
    out = []
    for d, w in zip(ds, ws):
        if size(d) == 0:
            out.append(one)
            continue
        bound = absolute + relative * xp.abs(upcast(xp, w, dtype))  # the reference's sum order
        mag = xp.abs(upcast(xp, d, dtype))
        ratios = xp.where(mag > bound, bound / mag, xp.ones_like(mag))
        out.append(xp.minimum(ratios if ratios.ndim == 0 else xp.min(ratios), one))
    return out


def differences(xp: Any, after: Sequence[Any], before: Sequence[Any]) -> list[Any]:
    """``[a - b for a, b in zip(after, before)]``: the optimizer's update, each in its array's dtype.

    The portable way the post-step primitives below (and :meth:`gradclip_core.Rule.update_effect_from_weights`'s
    default) form the update: out of place, which XLA fuses into the reduction that reads it.

    Example:
      >>> import numpy as np
      >>> differences(np, [np.array([3.0, 1.0], np.float32)], [np.array([1.0, 1.0], np.float32)])[0].tolist()
      [2.0, 0.0]
    """
    return [a - b for a, b in zip(after, before)]


def difference_norms(xp: Any, after: Sequence[Any], before: Sequence[Any], dtype: Any) -> list[Any]:
    """Per pair of arrays, the 2-norm of ``a - b`` (the update, rounded to the arrays' dtype), accumulated in ``dtype``.

    :func:`array_norms` of :func:`differences`, without the caller forming the update: a
    kernel may compute the difference chunk by chunk (torch's eager CPU: in cache-sized
    buffers, no weight-sized ``delta``). Each element's difference is the same operation
    as ``a - b``; the summation order is the kernel's (as :func:`array_norms`' is), so a
    kernel may differ from ``array_norms(differences(...))`` within float rounding.
    Overridable (``"difference_norms"``, which may return ``NotImplemented``).

    Args:
      after: the weights after the step.
      before: the weights before it (the same shapes and dtypes).
      dtype: the accumulation dtype (float32 at least).

    Returns:
      a list of 0-d arrays of ``dtype``, one per pair.

    Example:
      >>> import numpy as np
      >>> a, b = [np.array([4.0, 5.0], np.float32)], [np.array([1.0, 1.0], np.float32)]
      >>> float(difference_norms(np, a, b, np.float32)[0])
      5.0
    """
    fast = override(xp, "difference_norms")
    if fast is not None:
        res = fast(xp, after, before, dtype)
        if res is not NotImplemented:
            return res
    return array_norms(xp, differences(xp, after, before), 2.0, dtype)


def difference_min_bound_ratio(xp: Any, after: Sequence[Any], before: Sequence[Any], relative: float,
                               absolute: float, dtype: Any) -> list[Any]:
    """:func:`min_bound_ratio` of the update ``d = a - b`` and the weights ``w = b`` (Clippy after the step).

    The same values as ``min_bound_ratio(xp, differences(xp, after, before), before, ...)`` bit
    for bit (each element's ``a - b`` in the arrays' dtype, then the same ratio; a minimum does
    not depend on the order), without the caller forming the update. The default forms it
    inline (XLA fuses it into the ratio); overridable (``"difference_min_bound_ratio"``: torch's
    eager CPU computes it chunk by chunk in cache, no weight-sized ``delta``).

    Args:
      after: the weights after the step.
      before: the weights before it (the bound's weights).
      relative, absolute: Clippy's thresholds.
      dtype: the computation dtype (float32 at least).

    Returns:
      a list of 0-d arrays of ``dtype``.

    Example:
      >>> import numpy as np
      >>> a, b = [np.array([1.5, 1.1], np.float32)], [np.array([1.0, 1.0], np.float32)]
      >>> float(difference_min_bound_ratio(np, a, b, 0.25, 0.0, np.float32)[0])
      0.5
    """
    fast = override(xp, "difference_min_bound_ratio")
    if fast is not None:
        res = fast(xp, after, before, relative, absolute, dtype)
        if res is not NotImplemented:
            return res
    return min_bound_ratio(xp, differences(xp, after, before), before, relative, absolute, dtype)


def array_sumsq(xp: Any, xs: Sequence[Any], dtype: Any) -> list[Any]:
    """Per-array sums of squares ``sum(x * x)``, accumulated in ``dtype``.

    Complex arrays: ``sum(real(conj(z) * z))``, i.e. ``sum(|z|**2)`` in optax's
    ``abs_sq`` order, at ``dtype``'s precision.

    Returns:
      a list of 0-d arrays of ``dtype``.
    """
    fast = override(xp, "array_sumsq")
    if fast is not None:
        return fast(xp, xs, dtype)
    out = []
    for x in xs:
        if is_complex(x):
            cdt = _complex_of(xp, dtype)
            zc = x if cdt is None else upcast(xp, x, cdt)
            out.append(upcast(xp, xp.sum(xp.real(xp.conj(zc) * zc)), dtype))
            continue
        xc = upcast(xp, x, dtype)
        out.append(xp.sum(xc * xc))
    return out


def array_rms(xp: Any, xs: Sequence[Any], dtype: Any) -> list[Any]:
    """Per-array root mean square, ``sqrt(sum(x * x) / n)`` in ``dtype`` (optax's order); size-0 arrays: 0.

    Overrides may compute it as ``norm / sqrt(n)`` from a fused norm kernel (torch), which
    differs from this order by about an ulp.

    Returns:
      a list of 0-d arrays of ``dtype``.
    """
    fast = override(xp, "array_rms")
    if fast is not None:
        res = fast(xp, xs, dtype)
        if res is not NotImplemented:
            return res
    return [xp.sqrt(s / float(max(size(x), 1))) for x, s in zip(xs, array_sumsq(xp, xs, dtype))]


def unit_norms(xp: Any, xs: Sequence[Any], axes: Sequence[Any], dtypes: Sequence[Any]) -> list[Any]:
    """Per array, the L2 norm of each unit: ``sqrt(sum(x * x))`` over ``axes[i]`` (kept as size-1
    dims; ``None``: the whole array), accumulated in ``dtypes[i]``.

    The default builds ``x * x``; overrides reduce without a full-size temporary
    (torch's ``linalg.vector_norm(dim=...)``), equal up to the summation order.

    Returns:
      a list of arrays, each broadcastable to its input.
    """
    fast = override(xp, "unit_norms")
    if fast is not None:
        res = fast(xp, xs, axes, dtypes)
        if res is not NotImplemented:
            return res
    out = []
    for x, ax, dt in zip(xs, axes, dtypes):
        xc = magnitude(xp, x, dt) if is_complex(x) else upcast(xp, x, dt)
        out.append(xp.sqrt(xp.sum(xc * xc, axis=ax, keepdims=True)))
    return out


def unit_any(xp: Any, m: Any, axes: Any) -> Any:
    """Whether each unit of the bool mask ``m`` (reducing ``axes``, kept as size-1 dims) holds a True.

    The default is ``xp.any(m, axis=axes, keepdims=True)``; overridable (``"unit_any"``: torch's
    CPU ``any`` over dims of a bool tensor runs far below memory speed, NumPy's reduction of a
    view does not).

    Example:
      >>> import numpy as np
      >>> unit_any(np, np.array([[False, True], [False, False]]), (1,)).tolist()
      [[True], [False]]
    """
    fast = override(xp, "unit_any")
    if fast is not None:
        res = fast(xp, m, axes)
        if res is not NotImplemented:
            return res
    return xp.any(m, axis=axes, keepdims=True)


def and_broadcast(xp: Any, m: Any, keep: Any) -> Any:
    """``m & keep`` for bool arrays, ``keep`` broadcast to ``m``'s shape (one keep flag per unit): a new array.

    Overridable (``"and_broadcast"``: NumPy's loop on views of eager CPU tensors).

    Example:
      >>> import numpy as np
      >>> and_broadcast(np, np.array([[True, False], [True, True]]), np.array([[True], [False]])).tolist()
      [[True, False], [False, False]]
    """
    fast = override(xp, "and_broadcast")
    if fast is not None:
        res = fast(xp, m, keep)
        if res is not NotImplemented:
            return res
    return xp.broadcast_to(keep, tuple(m.shape)) & m


def count_true(xp: Any, masks: Sequence[Any]) -> list[Any]:
    """``xp.count_nonzero(m)`` of each bool mask (0-d arrays of the namespace's default integer dtype).

    Overridable (``"count_true"``: NumPy's count of a view of an eager CPU tensor).

    Example:
      >>> import numpy as np
      >>> [int(c) for c in count_true(np, [np.array([True, False, True]), np.zeros((0,), bool)])]
      [2, 0]
    """
    fast = override(xp, "count_true")
    if fast is not None:
        res = fast(xp, masks)
        if res is not NotImplemented:
            return res
    return [xp.count_nonzero(m) for m in masks]


def multiply(xp: Any, xs: Sequence[Any], factors: Sequence[Any]) -> list[Any]:
    """``[x * astype(f, x.dtype) for x, f in zip(xs, factors)]``: scale each array.

    ``factors`` are 0-d arrays (or arrays broadcastable to each ``x``); each is cast
    to its array's dtype first, as the numerics contract requires.
    """
    fast = override(xp, "multiply")
    if fast is not None:
        return fast(xp, xs, factors)
    return [x * upcast(xp, f, x.dtype) for x, f in zip(xs, factors)]


def clip(xp: Any, xs: Sequence[Any], lo: Any, hi: Any) -> list[Any]:
    """Each array clipped to ``[lo, hi]`` (either bound may be ``None``); NaN stays NaN.

    The bounds are Python numbers or 0-d arrays and are cast to each array's dtype
    first. ``maximum``/``minimum`` rather than ``xp.clip``: NumPy has no clip loop for
    bfloat16 (ml_dtypes) and would promote Python-float bounds.
    """
    fast = override(xp, "clip")
    if fast is not None:
        res = fast(xp, xs, lo, hi)
        if res is not NotImplemented:
            return res
    out = []
    for x in xs:
        if lo is not None:
            x = xp.maximum(x, xp.asarray(lo, dtype=x.dtype))
        if hi is not None:
            x = xp.minimum(x, xp.asarray(hi, dtype=x.dtype))
        out.append(x)
    return out


def symmetric_bounds(lo: Any, hi: Any) -> bool:
    """Whether ``lo``/``hi`` are Python numbers with ``lo == -hi`` (count ``|x| > hi`` then)."""
    return isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo == -hi


def count_outside(xp: Any, xs: Sequence[Any], lo: Any, hi: Any) -> list[Any]:
    """Per array, the number of elements below ``lo`` or above ``hi`` (NaN is neither).

    Bounds as in :func:`clip`. Symmetric Python bounds count ``|x| > hi`` (one compare).

    Returns:
      a list of float32 0-d arrays, one per input array (exact integer counts, then cast).
    """
    fast = override(xp, "count_outside")
    if fast is not None:
        res = fast(xp, xs, lo, hi)
        if res is not NotImplemented:
            return res
    symmetric = symmetric_bounds(lo, hi)
    out = []
    for x in xs:
        if symmetric:
            flag = xp.abs(x) > xp.asarray(hi, dtype=x.dtype)
        else:
            below = None if lo is None else x < xp.asarray(lo, dtype=x.dtype)
            above = None if hi is None else x > xp.asarray(hi, dtype=x.dtype)
            flag = above if below is None else below if above is None else xp.logical_or(below, above)
        out.append(xp.astype(xp.count_nonzero(flag), xp.float32))
    return out


_COUNTING: list = []  # open counts_on_apply() blocks: the Counts made in each (a plain list, as _MEMO)


@contextlib.contextmanager
def counts_on_apply() -> Any:
    """Inside the block, :func:`clipped_fraction` may leave its count to the clamp's application.

    For adapters that apply every effect computed inside the block in place before it ends
    (torch's ``apply_``): a counted value clip then reads its arrays once (the count
    and the clamp in one pass) instead of twice. Outside the block every count is made
    when the rule runs.

    Raises:
      RuntimeError: at the block's end, a count made inside it was never written (an
        effect computed in the block was not applied).

    Example:
      >>> import numpy as np
      >>> with counts_on_apply():
      ...     frac, count = clipped_fraction(np, [np.array([2.0, 0.5], np.float32)], -1.0, 1.0)
      >>> float(frac), count is None  # NumPy arrays are not written in place: counted now
      (0.5, True)
    """
    _COUNTING.append([])
    try:
        yield
    except BaseException:
        _COUNTING.pop()
        raise
    left = [c for c in _COUNTING.pop() if not c.done]
    if left:
        raise RuntimeError(f"counts_on_apply: {len(left)} clipped_fraction count(s) made in the block were never "
                           "written: every effect computed in the block must be applied in place in it")


def clipped_fraction(xp: Any, xs: Sequence[Any], lo: Any, hi: Any) -> tuple[Any, Any]:
    """The fraction of elements of ``xs`` below ``lo`` or above ``hi`` (NaN is neither), and how it is counted.

    ``ratio`` of :func:`count_outside`'s per-array counts, a float32 0-d array. Inside
    :func:`counts_on_apply`, where the namespace's ``fuses_count(xp, xs, lo, hi)`` kernel says
    that its in-place :class:`~gradclip_core.Clamp` counts in the clamp's pass (torch on the
    eager CPU), the fraction is a 0-d array still to be written and the :class:`~gradclip_core.Count`
    to put in the ``Clamp`` is returned with it; otherwise the count is made now (``None``).

    Args:
      xs: the arrays (those the rule's ``Clamp(lo, hi)`` applies to).
      lo: lower bound or ``None``; hi: upper bound or ``None`` (as :func:`count_outside`).

    Returns:
      ``(fraction, count)``: ``count`` is ``None`` or the :class:`~gradclip_core.Count` for ``Clamp(lo, hi, count)``.

    Example:
      >>> import numpy as np
      >>> frac, count = clipped_fraction(np, [np.array([-3.0, 0.5, 2.0], np.float32)], -1.0, 1.0)
      >>> round(float(frac), 4), count
      (0.6667, None)
    """
    from .._effect import Count
    from .._numerics import ratio
    from ._collective import active

    xs = list(xs)
    total = sum(size(x) for x in xs)
    if lo is None and hi is None:
        return ratio(xp, [], total), None
    fuses = override(xp, "fuses_count") if _COUNTING and not active() else None
    if fuses is not None and fuses(xp, xs, lo, hi):
        count = Count(xp.zeros((), dtype=xp.float32, **device_kw(xs)), total)
        _COUNTING[-1].append(count)
        return count.out, count
    return ratio(xp, count_outside(xp, xs, lo, hi), total), None


def apply_masks(xp: Any, xs: Sequence[Any], masks: Sequence[Any]) -> list[Any]:
    """``[where(m, x, 0)]``: zero the pruned elements (NaN/Inf pruned become 0 too)."""
    fast = override(xp, "apply_masks")
    if fast is not None:
        res = fast(xp, list(xs), list(masks))
        if res is not NotImplemented:
            return res
    return [xp.where(m, x, xp.zeros_like(x)) for x, m in zip(xs, masks)]


def _tree_where(xp: Any, pred: Any, a: Any, b: Any) -> Any:
    if isinstance(a, (tuple, list)):
        return type(a)(_tree_where(xp, pred, x, y) for x, y in zip(a, b))
    return xp.where(pred, a, b)


def cond(xp: Any, pred: Any, true_fn: Callable[[], Any], false_fn: Callable[[], Any]) -> Any:
    """``true_fn() if pred else false_fn()`` for a 0-d bool array, branch-free by default.

    The default computes both and selects with ``where`` (fixed cost every call).
    Overrides: JAX uses ``lax.cond``, TensorFlow ``tf.cond``, torch and NumPy a Python branch in eager mode
    (one host read of ``pred``; the default under ``torch.compile``), so the expensive
    branch (a global threshold) only runs on the steps that need it. Both branches
    return tuples of arrays of the same shapes and dtypes.
    """
    fast = override(xp, "cond")
    if fast is not None:
        res = fast(xp, pred, true_fn, false_fn)
        if res is not NotImplemented:
            return res
    return _tree_where(xp, pred, true_fn(), false_fn())


def _select(xs: list, entries: Sequence[Any]) -> list[int]:
    return [i for i, e in enumerate(entries) if e is not None]


def _portable(xp: Any, xs: list, effect: Any) -> list:
    """The definition of every effect: new arrays, nothing written."""
    if isinstance(effect, Keep):
        return xs
    if isinstance(effect, Scale):
        idx = _select(xs, effect.factors)
        if effect.divide:
            new = [xs[i] / upcast(xp, effect.factors[i], xs[i].dtype) for i in idx]
        else:
            new = multiply(xp, [xs[i] for i in idx], [effect.factors[i] for i in idx])
    elif isinstance(effect, Mask):
        idx = _select(xs, effect.masks)
        new = apply_masks(xp, [xs[i] for i in idx], [effect.masks[i] for i in idx])
    elif isinstance(effect, Clamp):
        if effect.lo is None and effect.hi is None:
            return xs
        if effect.count is not None and not effect.count.done:  # (counted before anything is clamped)
            effect.count.write(xp, count_outside(xp, xs, effect.lo, effect.hi))
        return clip(xp, xs, effect.lo, effect.hi)
    elif isinstance(effect, ZeroNonfinite):
        return [xp.where(xp.isfinite(x), x, xp.zeros_like(x)) for x in xs]
    elif isinstance(effect, Replace):
        return list(effect.arrays)
    elif isinstance(effect, Then):
        for e in effect.effects:
            xs = _portable(xp, xs, e)
        return xs
    elif isinstance(effect, Skip):
        out = _portable(xp, xs, effect.effect)
        return [xp.where(effect.skip, xp.zeros_like(o), o) for o in out]
    elif isinstance(effect, On):
        idx = list(effect.indices)
        new = _portable(xp, [xs[i] for i in idx], effect.effect)
    else:
        raise ValueError(f"not a gradclip effect: {type(effect).__name__}")
    out = list(xs)
    for i, v in zip(idx, new):
        out[i] = v
    return out


def apply_effect(xp: Any, xs: Sequence[Any], effect: Any, *, inplace: bool = False) -> list[Any]:
    """The arrays after ``effect`` (see :mod:`gradclip_core._effect`).

    Args:
      xp: the arrays' namespace.
      xs: the arrays.
      effect: an effect computed for these arrays.
      inplace: write the result into ``xs`` itself (mutable arrays only: torch). The
        namespace's ``apply_effect_`` kernel does it; without one the result is computed
        out of place and copied in with ``__setitem__``.

    Returns:
      The resulting arrays (``xs`` themselves when ``inplace``).

    Example:
      >>> import numpy as np
      >>> from gradclip_core import Clamp
      >>> x = [np.array([-3.0, 0.5, 2.0], np.float32)]
      >>> _ = apply_effect(namespace_of(x), x, Clamp(-1.0, 1.0), inplace=True)
      >>> x[0].tolist()
      [-1.0, 0.5, 1.0]
    """
    xs = list(xs)
    if not inplace:
        return _portable(xp, xs, effect)
    fast = override(xp, "apply_effect_")
    if fast is not None:
        res = fast(xp, xs, effect)
        if res is not NotImplemented:
            return xs
    out = _portable(xp, xs, effect)
    for x, o in zip(xs, out):
        if o is not x:
            x[...] = o
    return xs


def namespace_of(xs: Sequence[Any]) -> Any:
    """``namespace(*xs)`` (for doctests)."""
    from ._namespace import namespace

    return namespace(*xs)
