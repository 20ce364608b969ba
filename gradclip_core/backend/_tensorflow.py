"""A small Array API namespace for TensorFlow tensors (array-api-compat has none).

Loaded, and registered with the core, the first time a TensorFlow tensor reaches
:func:`gradclip_core.backend.namespace` (e.g. from Keras' TensorFlow backend). It
implements exactly the Array API functions and attributes the core rules use, with
plain ``tf`` operations (the kernels ``keras.ops`` runs on TensorFlow) and Array API
semantics (checked against array-api-strict in ``tests/keras``):

- ``maximum`` / ``minimum`` / ``max`` propagate NaN;
- a Python scalar operand takes the dtype of the array operand (no promotion);
- ``sum`` keeps floating dtypes and sums bool/int in int64 unless ``dtype=`` is given;
- ``linalg.vector_norm`` supports ``ord`` 1, 2 and inf (0 for size-0 arrays).

Any other attribute raises ``AttributeError`` naming the function, so a core rule that
starts using a new function fails loudly on TensorFlow until it is added here.

Python floats given to :func:`asarray` without a dtype become float32 (TensorFlow's
and Keras' default), where array-api-strict uses float64.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import tensorflow as tf

from ._namespace import register_namespace
from ._selection import NAN_BITS, NAN_KEY, Selection, register_selection
from ._selection import _keys as _portable_keys

__all__ = ["xp", "is_tf_array", "NAME", "register", "order_keys", "float_from_bits", "SELECTION"]

NAME = "tensorflow"

_FLOATS = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def is_tf_array(x: Any) -> bool:
    """Whether ``x`` is a TensorFlow tensor or variable (what this namespace handles).

    Example:
      >>> is_tf_array(tf.ones(2)), is_tf_array(1.0)
      (True, False)
    """
    return isinstance(x, (tf.Tensor, tf.Variable))


def _t(x: Any, dtype: Any = None) -> tf.Tensor:
    if isinstance(x, (tf.Tensor, tf.Variable)):
        x = tf.convert_to_tensor(x)
        return x if dtype is None or x.dtype == dtype else tf.cast(x, dtype)
    return tf.convert_to_tensor(x, dtype=dtype)


def _pair(x1: Any, x2: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Two operands as tensors; a Python scalar takes the other operand's dtype."""
    if is_tf_array(x1) and not is_tf_array(x2):
        x1 = _t(x1)
        return x1, _t(x2, x1.dtype)
    if is_tf_array(x2) and not is_tf_array(x1):
        x2 = _t(x2)
        return _t(x1, x2.dtype), x2
    x1, x2 = _t(x1), _t(x2)
    if x1.dtype != x2.dtype:
        raise TypeError(f"gradclip's TensorFlow namespace does not promote dtypes: got {x1.dtype.name} and {x2.dtype.name}")
    return x1, x2


def _axes(axis: Any) -> Any:
    if axis is None:
        return None
    return list(axis) if isinstance(axis, (tuple, list)) else axis


def _is_float(x: tf.Tensor) -> bool:
    return x.dtype in _FLOATS


class _Linalg:
    """The ``linalg`` extension: ``vector_norm`` only."""

    @staticmethod
    def vector_norm(x: Any, /, *, axis: Any = None, keepdims: bool = False, ord: float = 2) -> tf.Tensor:
        """``ord``-norm (1, 2 or inf) over ``axis`` (all axes when ``None``)."""
        x = _t(x)
        if not _is_float(x):
            raise TypeError(f"vector_norm needs a floating-point array, got {x.dtype.name}")
        ax = _axes(axis)
        ordf = float(ord)
        if ordf == 2.0:
            out = tf.sqrt(tf.reduce_sum(x * x, axis=ax, keepdims=keepdims))
        elif ordf == 1.0:
            out = tf.reduce_sum(tf.abs(x), axis=ax, keepdims=keepdims)
        elif ordf == math.inf:
            if math.prod(x.shape) == 0:  # max of nothing: the norm of an empty vector is 0
                out = tf.reduce_sum(tf.abs(x), axis=ax, keepdims=keepdims)
            else:
                out = tf.reduce_max(tf.abs(x), axis=ax, keepdims=keepdims)
        else:
            raise ValueError(f"vector_norm supports ord 1, 2 and inf here, got {ord!r}")
        return _t(out, x.dtype)


class TFNamespace:
    """The namespace object the core sees as ``xp`` for TensorFlow tensors.

    Example:
      >>> x = xp.asarray([3.0, -4.0], dtype=xp.float32)
      >>> float(xp.linalg.vector_norm(x)), xp.maximum(x, 0.0).numpy().tolist()
      (5.0, [3.0, 0.0])
    """

    __name__ = NAME

    float16 = tf.float16
    bfloat16 = tf.bfloat16
    float32 = tf.float32
    float64 = tf.float64
    int8 = tf.int8
    int16 = tf.int16
    int32 = tf.int32
    int64 = tf.int64
    uint8 = tf.uint8
    bool = tf.bool

    linalg = _Linalg()

    # ------------------------------------------------------------- creation / casting

    @staticmethod
    def asarray(obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> tf.Tensor:
        del device, copy
        return _t(obj, dtype)

    @staticmethod
    def astype(x: Any, dtype: Any, /, *, copy: bool = True, device: Any = None) -> tf.Tensor:
        del copy, device
        return _t(x, dtype)

    @staticmethod
    def zeros(shape: Any, *, dtype: Any = None, device: Any = None) -> tf.Tensor:
        del device
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return tf.zeros(shape, dtype=dtype or tf.float32)

    @staticmethod
    def zeros_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> tf.Tensor:
        del device
        return tf.zeros_like(_t(x), dtype=dtype)

    @staticmethod
    def ones_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> tf.Tensor:
        del device
        return tf.ones_like(_t(x), dtype=dtype)

    @staticmethod
    def full_like(x: Any, /, fill_value: Any, *, dtype: Any = None, device: Any = None) -> tf.Tensor:
        del device
        x = _t(x)
        return tf.fill(tf.shape(x), tf.cast(fill_value, dtype or x.dtype))

    @staticmethod
    def broadcast_to(x: Any, /, shape: Any) -> tf.Tensor:
        return tf.broadcast_to(_t(x), tuple(shape))

    @staticmethod
    def stack(arrays: Sequence[Any], /, *, axis: int = 0) -> tf.Tensor:
        arrays = [_t(a) for a in arrays]
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise TypeError(f"stack: arrays of different dtypes {sorted(d.name for d in dtypes)}")
        return tf.stack(arrays, axis=axis)

    @staticmethod
    def concat(arrays: Sequence[Any], /, *, axis: int | None = 0) -> tf.Tensor:
        arrays = [_t(a) for a in arrays]
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise TypeError(f"concat: arrays of different dtypes {sorted(d.name for d in dtypes)}")
        if axis is None:
            return tf.concat([tf.reshape(a, (-1,)) for a in arrays], axis=0)
        return tf.concat(arrays, axis=axis)

    # ------------------------------------------------------------------- element-wise

    @staticmethod
    def where(condition: Any, x1: Any, x2: Any, /) -> tf.Tensor:
        a, b = _pair(x1, x2)
        return tf.where(_t(condition, tf.bool), a, b)

    @staticmethod
    def maximum(x1: Any, x2: Any, /) -> tf.Tensor:
        a, b = _pair(x1, x2)
        return tf.maximum(a, b)  # propagates NaN (TensorFlow >= 2.x CPU and GPU kernels)

    @staticmethod
    def minimum(x1: Any, x2: Any, /) -> tf.Tensor:
        a, b = _pair(x1, x2)
        return tf.minimum(a, b)

    @staticmethod
    def sqrt(x: Any, /) -> tf.Tensor:
        return tf.sqrt(_t(x))

    @staticmethod
    def isfinite(x: Any, /) -> tf.Tensor:
        x = _t(x)
        if not _is_float(x):
            return tf.ones_like(x, dtype=tf.bool)
        return tf.math.is_finite(x)

    @staticmethod
    def logical_and(x1: Any, x2: Any, /) -> tf.Tensor:
        return tf.logical_and(_t(x1, tf.bool), _t(x2, tf.bool))

    @staticmethod
    def logical_or(x1: Any, x2: Any, /) -> tf.Tensor:
        return tf.logical_or(_t(x1, tf.bool), _t(x2, tf.bool))

    @staticmethod
    def logical_not(x: Any, /) -> tf.Tensor:
        return tf.logical_not(_t(x, tf.bool))

    @staticmethod
    def ones(shape: Any, *, dtype: Any = None, device: Any = None) -> tf.Tensor:
        del device
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return tf.ones(shape, dtype=dtype or tf.float32)

    @staticmethod
    def full(shape: Any, fill_value: Any, *, dtype: Any = None, device: Any = None) -> tf.Tensor:
        del device
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if dtype is None:
            dtype = tf.bool if isinstance(fill_value, bool) else tf.int64 if isinstance(fill_value, int) else tf.float32
        return tf.fill(shape, tf.cast(fill_value, dtype))

    @staticmethod
    def arange(start: Any, /, stop: Any = None, step: Any = 1, *, dtype: Any = None, device: Any = None) -> tf.Tensor:
        del device
        if stop is None:
            start, stop = 0, start
        if dtype is None:
            dtype = tf.int64 if all(isinstance(v, int) for v in (start, stop, step)) else tf.float32
        return tf.range(start, stop, step, dtype=dtype)

    @staticmethod
    def reshape(x: Any, /, shape: Any, *, copy: Any = None) -> tf.Tensor:
        del copy
        return tf.reshape(_t(x), tuple(shape))

    @staticmethod
    def moveaxis(x: Any, source: Any, destination: Any, /) -> tf.Tensor:
        x = _t(x)
        nd = len(x.shape)
        src, dst = source % nd, destination % nd
        perm = [a for a in range(nd) if a != src]
        perm.insert(dst, src)
        return tf.transpose(x, perm)

    @staticmethod
    def tensordot(x1: Any, x2: Any, /, *, axes: Any = 2) -> tf.Tensor:
        a, b = _pair(x1, x2)
        return tf.tensordot(a, b, axes=axes)

    @staticmethod
    def abs(x: Any, /) -> tf.Tensor:
        return tf.abs(_t(x))

    @staticmethod
    def cos(x: Any, /) -> tf.Tensor:
        return tf.cos(_t(x))

    @staticmethod
    def log(x: Any, /) -> tf.Tensor:
        return tf.math.log(_t(x))

    @staticmethod
    def floor(x: Any, /) -> tf.Tensor:
        x = _t(x)
        return tf.floor(x) if _is_float(x) else x

    @staticmethod
    def round(x: Any, /) -> tf.Tensor:
        x = _t(x)
        return tf.round(x) if _is_float(x) else x  # half to even, as the Array API says

    @staticmethod
    def isnan(x: Any, /) -> tf.Tensor:
        x = _t(x)
        return tf.math.is_nan(x) if _is_float(x) else tf.zeros_like(x, dtype=tf.bool)

    @staticmethod
    def isinf(x: Any, /) -> tf.Tensor:
        x = _t(x)
        return tf.math.is_inf(x) if _is_float(x) else tf.zeros_like(x, dtype=tf.bool)

    @staticmethod
    def pow(x1: Any, x2: Any, /) -> tf.Tensor:
        a, b = _pair(x1, x2)
        return tf.pow(a, b)

    @staticmethod
    def remainder(x1: Any, x2: Any, /) -> tf.Tensor:
        a, b = _pair(x1, x2)
        return tf.math.floormod(a, b)  # the sign of the divisor, as Python's %

    @staticmethod
    def clip(x: Any, /, min: Any = None, max: Any = None) -> tf.Tensor:
        x = _t(x)
        if min is not None:
            x = tf.maximum(*_pair(x, min))
        if max is not None:
            x = tf.minimum(*_pair(x, max))
        return x

    @staticmethod
    def sort(x: Any, /, *, axis: int = -1, descending: bool = False, stable: bool = True) -> tf.Tensor:
        """Ascending sort with NaN last; descending is its reverse (NaN first), as NumPy."""
        x = _t(x)
        axis = axis % len(x.shape)
        if not _is_float(x):
            out = tf.sort(x, axis=axis)
        else:
            nan = tf.math.is_nan(x)
            out = tf.sort(tf.where(nan, tf.constant(math.inf, x.dtype), x), axis=axis)
            n = x.shape[axis]
            if n:
                count = tf.reduce_sum(tf.cast(nan, tf.int32), axis=axis, keepdims=True)
                shape = [1] * len(x.shape)
                shape[axis] = n
                idx = tf.reshape(tf.range(n, dtype=tf.int32), shape)
                out = tf.where(idx >= n - count, tf.constant(math.nan, x.dtype), out)
        return tf.reverse(out, [axis]) if descending else out

    @staticmethod
    def argsort(x: Any, /, *, axis: int = -1, descending: bool = False, stable: bool = True) -> tf.Tensor:
        """Indices of an ascending stable sort (NaN ranked as +inf, ties by index), as int64."""
        del stable  # always stable
        x = _t(x)
        if _is_float(x):
            x = tf.where(tf.math.is_nan(x), tf.constant(math.inf, x.dtype), x)
        return tf.cast(tf.argsort(x, axis=axis, direction="DESCENDING" if descending else "ASCENDING", stable=True),
                       tf.int64)

    @staticmethod
    def take(x: Any, indices: Any, /, *, axis: int | None = None) -> tf.Tensor:
        x = _t(x)
        return tf.gather(x, _t(indices), axis=0 if axis is None else axis)

    @staticmethod
    def flip(x: Any, /, *, axis: Any = None) -> tf.Tensor:
        x = _t(x)
        axes = list(range(len(x.shape))) if axis is None else ([axis] if isinstance(axis, int) else list(axis))
        return tf.reverse(x, axes)

    @staticmethod
    def cumulative_sum(x: Any, /, *, axis: Any = None, dtype: Any = None, include_initial: bool = False) -> tf.Tensor:
        x = _t(x)
        if axis is None:
            if len(x.shape) > 1:
                raise ValueError("cumulative_sum needs axis= for arrays of rank > 1")
            axis = 0
        if dtype is None and not _is_float(x):
            dtype = tf.int64
        if dtype is not None:
            x = _t(x, dtype)
        out = tf.cumsum(x, axis=axis)
        if include_initial:
            pad = [[0, 0]] * len(x.shape)
            pad[axis] = [1, 0]
            out = tf.pad(out, pad)
        return out

    @staticmethod
    def bitwise_and(x1: Any, x2: Any, /) -> tf.Tensor:
        return tf.bitwise.bitwise_and(*_pair(x1, x2))

    @staticmethod
    def bitwise_or(x1: Any, x2: Any, /) -> tf.Tensor:
        return tf.bitwise.bitwise_or(*_pair(x1, x2))

    @staticmethod
    def bitwise_xor(x1: Any, x2: Any, /) -> tf.Tensor:
        return tf.bitwise.bitwise_xor(*_pair(x1, x2))

    @staticmethod
    def bitwise_left_shift(x1: Any, x2: Any, /) -> tf.Tensor:
        return tf.bitwise.left_shift(*_pair(x1, x2))

    @staticmethod
    def bitwise_right_shift(x1: Any, x2: Any, /) -> tf.Tensor:
        return tf.bitwise.right_shift(*_pair(x1, x2))  # arithmetic for signed, as NumPy

    # --------------------------------------------------------------------- reductions

    @staticmethod
    def sum(x: Any, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> tf.Tensor:
        x = _t(x)
        if dtype is None and not _is_float(x):
            dtype = tf.uint64 if x.dtype in (tf.uint8, tf.uint16, tf.uint32, tf.uint64) else tf.int64
        if dtype is not None:
            x = _t(x, dtype)
        return tf.reduce_sum(x, axis=_axes(axis), keepdims=keepdims)

    @staticmethod
    def max(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> tf.Tensor:
        x = _t(x)
        if 0 in tuple(x.shape):  # (a dimension unknown in a graph, None, is not 0)
            raise ValueError("max of a size-0 array is not defined")
        return tf.reduce_max(x, axis=_axes(axis), keepdims=keepdims)

    @staticmethod
    def min(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> tf.Tensor:
        x = _t(x)
        if 0 in tuple(x.shape):
            raise ValueError("min of a size-0 array is not defined")
        return tf.reduce_min(x, axis=_axes(axis), keepdims=keepdims)

    @staticmethod
    def count_nonzero(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> tf.Tensor:
        return tf.math.count_nonzero(_t(x), axis=_axes(axis), keepdims=keepdims, dtype=tf.int64)

    @staticmethod
    def any(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> tf.Tensor:
        return tf.reduce_any(_t(x, tf.bool), axis=_axes(axis), keepdims=keepdims)

    @staticmethod
    def mean(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> tf.Tensor:
        x = _t(x)
        if not _is_float(x):
            raise TypeError(f"mean needs a floating-point array, got {x.dtype.name}")
        return tf.reduce_mean(x, axis=_axes(axis), keepdims=keepdims)

    @staticmethod
    def all(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> tf.Tensor:
        return tf.reduce_all(_t(x, tf.bool), axis=_axes(axis), keepdims=keepdims)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"gradclip's TensorFlow namespace does not implement {name!r} (it has only the Array API "
            "functions the core uses); add it to gradclip_core/backend/_tensorflow.py with a test"
        )

    def __repr__(self) -> str:
        return f"<Array API namespace {NAME!r} over tf (tensorflow {tf.__version__})>"


xp = TFNamespace()


def cond(xp: Any, pred: Any, true_fn: Any, false_fn: Any) -> Any:
    """``tf.cond(pred, true_fn, false_fn)``: one branch runs (eager: a Python branch; in a graph, a conditional).

    So a pruning rule recomputes its masks only on its schedule's steps under
    ``tf.function`` too (the default computes both branches and selects).
    """
    del xp
    return tf.cond(_t(pred, tf.bool), true_fn, false_fn)


def _in_xla() -> bool:
    """Whether ops are being built for XLA (a ``tf.function(jit_compile=True)``, Keras' ``jit_compile``),
    which has no kernel for ``EuclideanNorm`` (and fuses ``x * x`` into the sum anyway)."""
    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # (a TensorFlow without the module: assume XLA, the default is right everywhere)
        return True
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


COLUMN_CHUNK = 1 << 20
"""Elements per chunk of :func:`_column_norm` (4 MiB of float32: a square reused, not page-faulted in)."""


def _leading_axes(x: Any, ax: Any) -> bool:
    """Whether ``ax`` reduces every axis but the last of a rank >= 2, non-empty, known-shape array (Keras' kernels)."""
    shape = tuple(x.shape)
    if len(shape) < 2 or any(d is None for d in shape) or math.prod(shape) == 0 or ax is None:
        return False
    ax = tuple(a % len(shape) for a in ((ax,) if isinstance(ax, int) else ax))
    return sorted(ax) == list(range(len(shape) - 1))


def _column_norm(x: tf.Tensor, dtype: Any) -> tf.Tensor:
    """The L2 norm of each column of ``x`` flattened to ``(rows, m)``, shaped ``(1, ..., 1, m)``.

    TensorFlow's CPU reduction over leading axes (``reduce_sum``/``reduce_euclidean_norm`` with
    ``axis=0``) runs at a third of the speed of a whole-array reduction, while ``BiasAddGrad``
    (the bias gradient: a sum over every axis but the last) runs at that speed. It needs the
    squares as a tensor, so they are formed in row chunks of about :data:`COLUMN_CHUNK`
    elements (a leading-axis slice shares its buffer with ``x``; the chunks are chained by
    control dependencies, so each chunk's square is freed before the next is formed): no
    full-size temporary. Within a chunk the sums run in ``BiasAddGrad``'s order, the chunks'
    sums are added in order (the same accumulation dtype as the default, equal up to the
    summation order). On GPT-2 small's kernels: ~93 ms of CPU time where the column reduction
    took ~145 ms (a whole-array reduction: ~45 ms).
    """
    m = int(x.shape[-1])
    rows = math.prod(x.shape) // m
    x2 = tf.reshape(x, (rows, m))
    step = max(1, COLUMN_CHUNK // m)
    parts = []
    for start in range(0, rows, step):
        with tf.control_dependencies(parts[-1:]):  # chunk after chunk, not each op over every chunk
            c = _t(x2[start:start + step] if step < rows else x2, dtype)
            parts.append(tf.raw_ops.BiasAddGrad(out_backprop=c * c, data_format="NHWC"))
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return tf.reshape(tf.sqrt(total), (1,) * (len(x.shape) - 1) + (m,))


def unit_norms(xp: Any, xs: Sequence[Any], axes: Sequence[Any], dtypes: Sequence[Any]) -> Any:
    """Per array, each unit's L2 norm: no full-size ``x * x`` array.

    The default (``sqrt(sum(x * x))``) runs as two TensorFlow kernels with a full-size ``x * x``
    in between (no XLA to fuse them in a ``tf.function``). Units over the leading axes (Keras'
    ``(..., in, out)`` kernels: a column reduction) take :func:`_column_norm` (``BiasAddGrad``
    on chunks of squares, about 1.5 times faster than TensorFlow's column reduction on
    the CPU); other axes ``tf.math.reduce_euclidean_norm``, which sums the squares inside the
    reduction. Both accumulate in float32 (or ``dtypes[i]``), equal to the default up to the
    summation order. Complex arrays, and XLA (``jit_compile``: no ``EuclideanNorm`` kernel
    there, and XLA fuses the square into the sum anyway), take the default.

    Example:
      >>> [t.numpy().tolist() for t in unit_norms(xp, [tf.constant([[3.0, 0.0], [4.0, 1.0]])], [(0,)], [tf.float32])]
      [[[5.0, 1.0]]]
    """
    del xp
    if any(x.dtype.is_complex for x in xs) or _in_xla():
        return NotImplemented
    out = []
    for x, ax, dt in zip(xs, axes, dtypes):
        x = _t(x)
        if _leading_axes(x, ax):
            out.append(_column_norm(x, dt))
        else:
            out.append(tf.math.reduce_euclidean_norm(_t(x, dt), axis=_axes(ax), keepdims=True))
    return out


def array_norms(xp: Any, xs: Sequence[Any], ord: float, dtype: Any) -> Any:
    """Per-array 2-norms by ``tf.math.reduce_euclidean_norm``: one kernel, no full-size ``x * x``.

    The default (``sqrt(sum(x * x))``) runs as two TensorFlow kernels with a full-size
    ``x * x`` in between, freshly allocated (and on the CPU page-faulted in) on every call:
    in a Keras/TF step that temporary cost more than the reduction. The Euclidean-norm
    reducer sums the same squares in the same order (equal bit for bit in float32, checked in
    ``tests/keras/test_keras_namespace.py``). Other orders, complex arrays and XLA (no ``EuclideanNorm``
    kernel there) take the default.

    Example:
      >>> [float(n) for n in array_norms(xp, [tf.constant([3.0, 4.0]), tf.zeros((0,))], 2.0, tf.float32)]
      [5.0, 0.0]
    """
    del xp
    if float(ord) != 2.0 or any(x.dtype.is_complex for x in xs) or _in_xla():
        return NotImplemented
    return [tf.math.reduce_euclidean_norm(_t(x, dtype)) for x in xs]


def array_rms(xp: Any, xs: Sequence[Any], dtype: Any) -> Any:
    """Per-array RMS as ``norm / sqrt(n)`` from :func:`array_norms` (one ``EuclideanNorm`` kernel per array).

    The portable default is optax's ``sqrt(sum(x * x) / n)``, whose full-size ``x * x`` TensorFlow
    allocates (and on the CPU page-faults in) on every call; the two orders agree within an ulp
    (as torch's kernel). Inside XLA (no ``EuclideanNorm`` kernel, ``x * x`` fused) the default.

    Example:
      >>> [round(float(r), 6) for r in array_rms(xp, [tf.constant([3.0, 4.0]), tf.zeros((0,))], tf.float32)]
      [3.535534, 0.0]
    """
    norms = array_norms(xp, xs, 2.0, dtype)
    if norms is NotImplemented:
        return NotImplemented
    return [n / tf.constant(math.sqrt(max(math.prod(_t(x).shape), 1)), n.dtype) for n, x in zip(norms, xs)]


def _rounded(x: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
    """``x`` as computed (each element rounded to its dtype), through a bitwise AND with ``keep`` (all ones).

    XLA:CPU contracts a multiply and an add into one fused multiply-add (a different rounding
    than the two operations); an integer AND with a value XLA cannot see at compile time
    (an argument) sits between them, so the product is rounded as NumPy rounds it. Likewise a
    bfloat16 / float16 difference is rounded to its dtype before it is widened (XLA otherwise kept
    it in float32). Costs an integer operation per element in registers, nothing in memory traffic.
    """
    bits = {8: tf.int64, 4: tf.int32, 2: tf.int16}[x.dtype.size]
    return tf.bitcast(tf.bitwise.bitwise_and(tf.bitcast(x, bits), tf.cast(keep, bits)), x.dtype)


@functools.lru_cache(maxsize=None)
def _fused_min_ratio(relative: float, absolute: float, dtype: tf.DType) -> Any:
    """Two ``tf.function(jit_compile=True)`` of one array's Clippy minimum: ``of_update(d, w, keep)`` and
    ``of_weights(a, b, keep)`` (``d = a - b``, ``w = b``); ``keep`` is -1 (see :func:`_rounded`).

    One XLA loop reads ``d`` and ``w`` (or ``a`` and ``b``, forming ``a - b`` per element in the
    arrays' dtype) once and writes nothing: the default's ``where(|d| > bound, bound / |d|, 1)``,
    minimum, then ``min(., 1)``, element by element the default's operations (``bound`` rounded as
    the default rounds it, :func:`_rounded`), so the same values bit for bit, NaN included (the
    ``where`` turns every NaN quotient into 1 before the minimum, as the default).
    """

    def ratio(d: tf.Tensor, w: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
        w, d = tf.cast(w, dtype), tf.cast(d, dtype)
        bound = tf.constant(absolute, dtype) + _rounded(tf.constant(relative, dtype) * tf.abs(w), keep)
        mag = tf.abs(d)
        ratios = tf.where(mag > bound, bound / mag, tf.ones((), dtype))
        return tf.minimum(tf.reduce_min(ratios), tf.ones((), dtype))

    @tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
    def of_update(d: tf.Tensor, w: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
        return ratio(d, w, keep)

    @tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
    def of_weights(a: tf.Tensor, b: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
        d = a - b
        return ratio(d if d.dtype == dtype else _rounded(d, keep), b, keep)

    return of_update, of_weights


def _min_ratios(first: Sequence[Any], ws: Sequence[Any], relative: float, absolute: float, dtype: Any,
                difference: bool) -> Any:
    """Per array, :func:`_fused_min_ratio`'s minimum (1 for size-0 arrays); ``NotImplemented`` inside XLA."""
    if _in_xla():  # (one XLA program already: the default, fused there)
        return NotImplemented
    dtype = tf.as_dtype(dtype)
    fn = _fused_min_ratio(float(relative), float(absolute), dtype)[1 if difference else 0]
    keep = tf.constant(-1, tf.int64 if dtype == tf.float64 else tf.int32)
    return [tf.ones((), dtype) if math.prod(_t(x).shape) == 0 else fn(_t(x), _t(w), keep)
            for x, w in zip(first, ws)]


def min_bound_ratio(xp: Any, ds: Sequence[Any], ws: Sequence[Any], relative: float, absolute: float,
                    dtype: Any) -> Any:
    """Clippy's per-array scale, each array in one fused XLA loop (the default makes five full-size temporaries).

    Without XLA every element-wise op of a ``tf.function`` is a pass over memory into a
    full-size tensor, freshly allocated (and on the CPU page-faulted in). Here each array's
    reduction is a small ``jit_compile`` function (:func:`_fused_min_ratio`, compiled once per
    shape) that reads ``d`` and ``w`` once: the default's values, bit for bit (NaN included).
    Inside an XLA program already (``jit_compile`` train steps) the default runs, fused by XLA.

    Example:
      >>> d, w = [tf.constant([0.5, 0.1])], [tf.constant([1.0, 1.0])]
      >>> float(min_bound_ratio(xp, d, w, 0.25, 0.0, tf.float32)[0])
      0.5
    """
    del xp
    return _min_ratios(ds, ws, relative, absolute, dtype, difference=False)


def difference_min_bound_ratio(xp: Any, after: Sequence[Any], before: Sequence[Any], relative: float,
                               absolute: float, dtype: Any) -> Any:
    """:func:`min_bound_ratio` of ``d = a - b`` and ``w = b``: one XLA loop per array reads ``a`` and ``b``,
    no weight-sized ``d`` (Clippy after a Keras step). The default's values, bit for bit.

    Example:
      >>> a, b = [tf.constant([1.5, 1.1])], [tf.constant([1.0, 1.0])]
      >>> float(difference_min_bound_ratio(xp, a, b, 0.25, 0.0, tf.float32)[0])
      0.5
    """
    del xp
    return _min_ratios(after, before, relative, absolute, dtype, difference=True)


# ------------------------------------------------------------------ selection kernels
# The portable defaults build every key with ~40 arithmetic ops (``bits_portable``) and run 31
# one-bit radix passes, unrolled into the graph: a pruning rule on GPT-2 small's 148 arrays
# made a graph of hundreds of thousands of ops, which took minutes to trace in a Keras
# train step. Here keys are a bitcast and the passes take 11-bit digits (3 passes), with
# ``bincount`` histograms: the same masks and thresholds, bit for bit.

DIGIT = 11
"""Bits per radix digit (histograms of ``2**DIGIT`` bins); ``ceil(31 / DIGIT) = 3`` passes."""


def sort_keys(xp: Any, keys: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """The sorted 1-d int32 ``keys`` and their stable ascending order, from one ``top_k`` of ``~keys``.

    ``tf.sort`` / ``tf.argsort`` are a ``top_k`` of every element (of the negated keys for an
    ascending order); ``~k = -k - 1`` reverses the order of every int32 without overflow, and
    ``top_k`` puts equal values in index order, so its values and indices are the sorted keys and
    the stable order at once (the default's ``argsort`` and ``take`` are that ``top_k`` and a gather).

    Example:
      >>> [a.numpy().tolist() for a in sort_keys(xp, tf.constant([3, 1, 3, 0]))]
      [[0, 1, 3, 3], [3, 1, 0, 2]]
    """
    del xp
    keys = _t(keys)
    n = keys.shape[0] if keys.shape[0] is not None else tf.shape(keys)[0]
    values, order = tf.math.top_k(tf.bitwise.invert(keys), k=n, sorted=True)
    return tf.bitwise.invert(values), tf.cast(order, tf.int64)


def unpermute(xp: Any, values: Any, order: Any) -> tf.Tensor:
    """``out[order] = values``: one ``scatter_nd`` (the default is a second sort).

    Example:
      >>> unpermute(xp, tf.constant([10.0, 20.0, 30.0]), tf.constant([2, 0, 1])).numpy().tolist()
      [20.0, 30.0, 10.0]
    """
    del xp
    values = _t(values)
    return tf.scatter_nd(tf.reshape(_t(order), (-1, 1)), values, tf.shape(values, out_type=_t(order).dtype))


def order_keys(xp: Any, s: Any) -> tf.Tensor:
    """``bits(s)`` as int32 for non-negative float32 ``s`` (``tf.bitcast``); every NaN ``0x7F800001``.

    Example:
      >>> order_keys(xp, tf.constant([0.0, 1.0, float("nan")])).numpy().tolist()
      [0, 1065353216, 2139095041]
    """
    del xp
    s = _t(s, tf.float32)
    return tf.where(tf.math.is_nan(s), tf.constant(NAN_BITS, tf.int32), tf.bitcast(s, tf.int32))


def float_from_bits(xp: Any, u: Any) -> tf.Tensor:
    """The float32 whose bit pattern is the int32 ``u`` (``tf.bitcast``).

    Example:
      >>> float(float_from_bits(xp, tf.constant(1065353216)))
      1.0
    """
    del xp
    return tf.bitcast(_t(u, tf.int32), tf.float32)


def _keys(xp: Any, x: Any, old: Any, divisor: Any, ws: Any) -> tf.Tensor:
    """Keys ``bits(|x|) + 1`` (0 where ``old`` is False) of a flat array.

    float32 without a divisor: the bit pattern with the sign cleared, NaNs capped at the
    canonical key; no float op, so subnormal weights keep their order (TensorFlow's CPU
    kernels flush them to zero: ``tf.abs(1e-40)`` is 0). Otherwise the portable keys.
    """
    x = _t(x)
    if x.dtype != tf.float32 or divisor is not None:
        return _portable_keys(xp, x, old, divisor, ws)
    key = tf.minimum(tf.bitwise.bitwise_and(tf.bitcast(x, tf.int32), 0x7FFFFFFF), NAN_BITS) + 1
    return key if old is None else tf.where(_t(old, tf.bool), key, tf.zeros_like(key))


def _histogram(xp: Any, key: Any, shift: Any, prefix: Any, digit: int, dtype: Any, ws: Any = None,
               acc: Any = None) -> tf.Tensor:
    """``acc`` plus the counts of the next digit of the keys in ``prefix``: three element-wise ops and one ``bincount``.

    ``d = (key >> shift) - (prefix << digit)`` is the digit for the keys in ``prefix``;
    below it ``d`` is negative and ``d & 0x7FFFFFFF`` (``d + 2**31``) is at least ``2**digit``
    (``prefix << digit <= 2**31 - 2**digit``), so ``bincount`` drops it, as every key above.
    """
    del xp, ws
    bins = 1 << digit
    d = tf.bitwise.right_shift(key, tf.cast(shift, tf.int32)) - tf.bitwise.left_shift(tf.cast(prefix, tf.int32), digit)
    d = tf.bitwise.bitwise_and(tf.reshape(d, (-1,)), 0x7FFFFFFF)
    # (the raw op: tf.math.bincount computes its size at run time, which XLA refuses; values >= size are dropped)
    h = tf.raw_ops.DenseBincount(input=d, size=bins, weights=tf.zeros((0,), dtype))
    return h if acc is None else acc + h


def _keep(xp: Any, key: Any, T: Any, r: Any, before: Any, out: Any, ws: Any = None) -> tuple:
    """``key > T``, and ties ``key == T`` kept after the first ``r - before`` of them here.

    One comparison unless the ties here are split: all kept is ``key >= T``, none ``key > T``.
    Split (a ``tf.cond`` runs it then only), the ties' flat positions are listed in order
    (``tf.where``: a read of ``eq``, a few positions written) and those after the first ``m``
    are set in ``key > T``; inside XLA, which has no dynamic shapes, a running count. Float32
    scores tie often (a GPT-2 embedding's 38.6M scores split a tie at most sparsities), and the
    running count over every element made the selection 2.7x slower there (a full-size
    ``cumsum``: 388 ms against 46).
    """
    del out, ws
    eq = key == T
    ties = tf.math.count_nonzero(eq, dtype=before.dtype)
    m = r - before  # ties to prune here (<= 0: none, >= ties: all)

    def split() -> tf.Tensor:
        if _in_xla():  # (no dynamic shapes there: the running count, fused by XLA)
            cs = tf.cumsum(tf.cast(eq, before.dtype)) + before
            return (key > T) | (eq & (cs > r))
        kept = tf.where(eq)[tf.cast(m, tf.int32):]  # (the positions of the ties after the first m, ascending)
        return tf.tensor_scatter_nd_update(key > T, kept, tf.ones(tf.shape(kept)[:1], tf.bool))

    def whole() -> tf.Tensor:
        return key > T - tf.cast(m <= 0, T.dtype)

    return tf.cond((m > 0) & (m < ties), split, whole), ties


def _loop(n: int, body: Any, carry: Any) -> Any:
    """The radix passes in one ``tf.while_loop``: one body in the graph, not ``n``."""
    out = tf.while_loop(lambda p, *c: p < n, lambda p, *c: (p + 1, *body(p, tuple(c))), (tf.constant(0), *carry))
    return tuple(out[1:])


def _value(xp: Any, T: Any) -> tf.Tensor:
    """The float32 score of a key ``T`` (after the +1 shift): a bitcast; 0 for key 0, NaN for ``NAN_KEY``."""
    del xp
    T = _t(T, tf.int32)
    val = tf.bitcast(tf.maximum(T - 1, 0), tf.float32)
    val = tf.where(T == NAN_KEY, tf.constant(math.nan, tf.float32), val)
    return tf.where(T == 0, tf.constant(0.0, tf.float32), val)


SELECTION = Selection(digit=DIGIT, chunk=None, keys=_keys, histogram=_histogram, keep=_keep, loop=_loop, value=_value)


def register() -> None:
    """Register this namespace for TensorFlow tensors (done on first use), with its ``cond`` and selection kernels.

    Example:
      >>> register()
    """
    from ._primitives import register_primitives

    register_namespace(NAME, is_tf_array, xp)
    register_primitives(NAME, cond=cond, unit_norms=unit_norms, array_norms=array_norms, array_rms=array_rms,
                        min_bound_ratio=min_bound_ratio,
                        difference_min_bound_ratio=difference_min_bound_ratio,
                        order_keys=order_keys, float_from_bits=float_from_bits, sort_keys=sort_keys,
                        unpermute=unpermute)
    register_selection(NAME, SELECTION)
