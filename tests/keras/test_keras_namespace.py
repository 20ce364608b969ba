"""The core's TensorFlow Array API namespace against array-api-strict, function by function.

It lives in ``gradclip_core.backend._tensorflow`` (loaded on the first TensorFlow
tensor); it runs in the Keras TensorFlow test process, the one process that imports
TensorFlow, and is skipped under the other Keras backends.
"""

import math

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("TensorFlow is tested in the KERAS_BACKEND=tensorflow process", allow_module_level=True)

import array_api_strict as xs  # noqa: E402
import tensorflow as tf  # noqa: E402

import gradclip_core as gc  # noqa: E402
import gradclip_core.backend as gcb  # noqa: E402
from gradclip_core.backend._tensorflow import NAME, xp  # noqa: E402

NAN, INF = math.nan, math.inf
VALUES = [
    np.array([1.0, -2.0, NAN, INF, -INF, 0.0, -0.0, 3.5], np.float32),
    np.array(2.5, np.float32),  # 0-d
    np.zeros((0,), np.float32),  # empty
    np.zeros((2, 0, 3), np.float32),
    np.array([[1.0, -4.0, 2.0], [NAN, 0.5, -0.5]], np.float32),
]
OTHER = [
    np.array([0.5, NAN, 1.0, 1.0, 1.0, -0.0, 0.0, 3.5], np.float32),
    np.array(-1.0, np.float32),
    np.zeros((0,), np.float32),
    np.zeros((2, 0, 3), np.float32),
    np.array([[2.0, -5.0, NAN], [1.0, 0.5, INF]], np.float32),
]
IDS = ["mixed", "0d", "empty", "empty3d", "2d"]


def same(got, want):
    got, want = np.asarray(got.numpy()), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_array_equal(got, want)  # NaN == NaN here
    if got.dtype.kind == "f":  # signs of zeros too
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_registered_with_core():
    assert gcb.namespace(tf.ones(2)) is xp
    assert gcb.namespace_name(xp) == NAME
    assert NAME in gcb.registered_namespaces()


@pytest.mark.parametrize("a, b", list(zip(VALUES, OTHER)), ids=IDS)
@pytest.mark.parametrize("fn", ["maximum", "minimum", "logical_and", "logical_or"])
def test_binary(fn, a, b):
    if fn.startswith("logical"):
        a, b = a != 0, b != 0
    same(getattr(xp, fn)(tf.constant(a), tf.constant(b)), getattr(xs, fn)(xs.asarray(a), xs.asarray(b)))


@pytest.mark.parametrize("a", VALUES, ids=IDS)
@pytest.mark.parametrize("fn", ["sqrt", "isfinite", "logical_not", "zeros_like", "ones_like"])
def test_unary(fn, a):
    if fn == "logical_not":
        a = a != 0
    same(getattr(xp, fn)(tf.constant(a)), getattr(xs, fn)(xs.asarray(a)))


@pytest.mark.parametrize("a", VALUES, ids=IDS)
def test_where_full_like_broadcast_astype(a):
    c = np.isfinite(a) & (a > 0)
    b = np.full(a.shape, 7.0, np.float32)
    same(xp.where(tf.constant(c), tf.constant(a), tf.constant(b)), xs.where(xs.asarray(c), xs.asarray(a), xs.asarray(b)))
    same(xp.full_like(tf.constant(a), 0.25), xs.full_like(xs.asarray(a), 0.25))
    same(xp.broadcast_to(tf.constant(np.float32(3)), a.shape), xs.broadcast_to(xs.asarray(np.float32(3)), a.shape))
    for dt in ("float16", "bfloat16", "float64", "int32", "bool"):
        got = xp.astype(tf.constant(np.nan_to_num(a)), getattr(xp, dt))
        # array-api-strict has no float16/bfloat16: NumPy's cast is the reference there
        want = xs.astype(xs.asarray(np.nan_to_num(a)), getattr(xs, dt)) if hasattr(xs, dt) else None
        if dt == "float16":
            same(got, np.nan_to_num(a).astype(np.float16))
        assert got.dtype == getattr(xp, dt)
        if want is not None:
            same(got, want)


@pytest.mark.parametrize("a", VALUES, ids=IDS)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(a, keepdims):
    x, s = tf.constant(a), xs.asarray(a)
    axes = [None] + ([0] if a.ndim else []) + ([(0, 1)] if a.ndim >= 2 else [])
    for axis in axes:
        same(xp.sum(x, axis=axis, keepdims=keepdims), xs.sum(s, axis=axis, keepdims=keepdims))
        same(xp.all(x != 0, axis=axis, keepdims=keepdims), xs.all(s != 0, axis=axis, keepdims=keepdims))
        same(xp.count_nonzero(x, axis=axis, keepdims=keepdims), xs.count_nonzero(s, axis=axis, keepdims=keepdims))
        if a.size and (axis is None or all(a.shape[i] for i in (axis if isinstance(axis, tuple) else (axis,)))):
            same(xp.max(x, axis=axis, keepdims=keepdims), xs.max(s, axis=axis, keepdims=keepdims))
    same(xp.sum(x, dtype=xp.float64), xs.sum(s, dtype=xs.float64))
    ints = np.nan_to_num(a, posinf=7, neginf=-7).astype(np.int32)
    same(xp.sum(tf.constant(ints)), xs.sum(xs.asarray(ints)))  # int32 sums to the default int64


@pytest.mark.parametrize("a", VALUES, ids=IDS)
@pytest.mark.parametrize("ord", [1, 2, math.inf])
def test_vector_norm(a, ord):
    x, s = tf.constant(a), xs.asarray(a)
    if a.size == 0:
        if ord == math.inf:  # array-api-strict raises for the inf-norm of nothing; the core uses 0
            assert float(xp.linalg.vector_norm(x, ord=ord)) == 0.0
            return
    got, want = xp.linalg.vector_norm(x, ord=ord), xs.linalg.vector_norm(s, ord=ord)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=2e-7)  # summation order may differ
    if a.ndim == 2:
        got = xp.linalg.vector_norm(x, axis=(0,), keepdims=True, ord=ord)
        want = xs.linalg.vector_norm(s, axis=(0,), keepdims=True, ord=ord)
        np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=2e-7)


def test_creation_and_scalars():
    same(xp.zeros((2, 3), dtype=xp.int32), xs.zeros((2, 3), dtype=xs.int32))
    same(xp.zeros((), dtype=xp.bool), xs.zeros((), dtype=xs.bool))
    same(xp.asarray(1.5, dtype=xp.float64), xs.asarray(1.5, dtype=xs.float64))
    same(xp.stack([tf.constant(1.0), tf.constant(NAN)]), xs.stack([xs.asarray(np.float32(1)), xs.asarray(np.float32(NAN))]))
    # a Python scalar takes the array's dtype (no promotion), also for bf16/fp16
    for dt in (xp.bfloat16, xp.float16):
        x = xp.asarray([1.0, 3.0], dtype=dt)
        assert xp.maximum(x, 2.0).dtype == dt and xp.where(x > 2, x, 0.0).dtype == dt
    with pytest.raises(TypeError, match="promote"):
        xp.maximum(tf.ones(2, tf.float32), tf.ones(2, tf.float16))


def test_missing_function_is_named():
    with pytest.raises(AttributeError, match="searchsorted"):
        xp.searchsorted  # noqa: B018


def test_core_rules_run_under_tf_function_and_xla():
    rule = gc.chain(gc.clip_by_value(1.0, nonfinite="zero"), gc.clip_by_global_norm(1.0), gc.clip_by_block_rms(0.5))
    g = [tf.constant([[3.0, NAN], [1.0, 2.0]]), tf.constant([0.5])]
    eager, _, info_e = rule.update(g, rule.init(g))
    for jit in (False, True):
        out, _, info = tf.function(lambda gs: rule.update(gs, rule.init(gs)), jit_compile=jit)(g)
        for a, b in zip(out, eager):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
        assert float(info["clip_by_global_norm/norm"]) == pytest.approx(float(info_e["clip_by_global_norm/norm"]))


@pytest.mark.parametrize("a", VALUES, ids=IDS)
@pytest.mark.parametrize("fn", ["abs", "cos", "log", "floor", "round", "isnan", "isinf"])
def test_more_unary(fn, a):
    with np.errstate(all="ignore"):
        got, want = getattr(xp, fn)(tf.constant(a)), getattr(xs, fn)(xs.asarray(a))
    if fn in ("cos", "log"):  # transcendental: libraries round differently, within 1 ulp
        assert got.dtype == tf.float32 and got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=2e-7)
    else:
        same(got, want)


def test_more_functions():
    a = np.array([2.5, -1.5, NAN, 0.5, INF, -3.0], np.float32)
    x, s = tf.constant(a), xs.asarray(a)
    same(xp.sort(x), xs.sort(s))
    same(xp.sort(x, descending=True), xs.sort(s, descending=True))
    m = np.array([[3.0, NAN, 1.0], [NAN, NAN, -1.0]], np.float32)
    same(xp.sort(tf.constant(m), axis=1), xs.sort(xs.asarray(m), axis=1))
    same(xp.clip(x, -1.0, 1.0), xs.clip(s, -1.0, 1.0))
    same(xp.pow(x, 2.0), xs.pow(s, 2.0))
    i = np.array([-7, -1, 0, 5, 9], np.int32)
    same(xp.remainder(tf.constant(i), 4), xs.remainder(xs.asarray(i), 4))
    same(xp.cumulative_sum(tf.constant(i)), xs.cumulative_sum(xs.asarray(i)))
    same(xp.cumulative_sum(tf.constant(a[:2]), include_initial=True), xs.cumulative_sum(s[:2], include_initial=True))
    same(xp.arange(5, dtype=xp.int32), xs.arange(5, dtype=xs.int32))
    same(xp.arange(2, 9, 3), xs.arange(2, 9, 3))
    same(xp.ones((2, 1), dtype=xp.bool), xs.ones((2, 1), dtype=xs.bool))
    same(xp.full((2, 3), -1, dtype=xp.int32), xs.full((2, 3), -1, dtype=xs.int32))  # (padding of N:M groups, blocks)
    same(xp.full((1, 2), False, dtype=xp.bool), xs.full((1, 2), False, dtype=xs.bool))
    same(xp.full(3, 0.5, dtype=xp.float32), xs.full(3, 0.5, dtype=xs.float32))
    r = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    same(xp.reshape(tf.constant(r), (6, -1)), xs.reshape(xs.asarray(r), (6, -1)))
    parts = [r[0], r[1], np.zeros((0, 4), np.float32)]
    same(xp.concat([tf.constant(p) for p in parts]), xs.concat([xs.asarray(p) for p in parts]))
    same(xp.concat([tf.constant(p) for p in parts], axis=None), xs.concat([xs.asarray(p) for p in parts], axis=None))
    same(xp.concat([tf.constant(r), tf.constant(r)], axis=-1), xs.concat([xs.asarray(r), xs.asarray(r)], axis=-1))
    with pytest.raises(TypeError, match="concat"):
        xp.concat([tf.constant(a), tf.constant(i)])
    for src, dst in ((0, -1), (2, 0), (-1, 1), (1, 1)):
        same(xp.moveaxis(tf.constant(r), src, dst), xs.moveaxis(xs.asarray(r), src, dst))
    same(xp.mean(tf.constant(r), axis=(0, 2), keepdims=True), xs.mean(xs.asarray(r), axis=(0, 2), keepdims=True))
    same(xp.any(tf.constant(r > 20), axis=1), xs.any(xs.asarray(r > 20), axis=1))
    w = np.arange(3, dtype=np.float32)
    same(xp.tensordot(tf.constant(w), tf.constant(r[0]), axes=1), xs.tensordot(xs.asarray(w), xs.asarray(r[0]), axes=1))
    h = np.array([-5, 7, -(2**31)], np.int32)  # the integer work of the core's hash
    for fn in ("bitwise_and", "bitwise_xor", "bitwise_or", "bitwise_right_shift", "bitwise_left_shift"):
        same(getattr(xp, fn)(tf.constant(h), 3), getattr(xs, fn)(xs.asarray(h), 3))
    np.testing.assert_array_equal(((tf.constant(h) * 0x5BD1E995) ^ 1).numpy(), (h * np.int32(0x5BD1E995)) ^ 1)  # wraps


def test_cond_runs_one_branch_eagerly_and_in_a_graph():
    """TensorFlow's cond primitive is tf.cond: a pruning rule's selection runs only on its schedule's steps.

    (The default computes both branches and selects, so every eager Callback call paid a full selection.)
    """
    calls = []

    def branch(name, value):
        def fn():
            calls.append(name)
            return (tf.fill((2,), value),)
        return fn

    x = tf.ones((2,))
    for pred, want in [(False, 0.0), (True, 1.0)]:
        calls.clear()
        (out,) = gcb.cond(gcb.namespace(x), tf.constant(pred), branch("true", 1.0), branch("false", 0.0))
        assert calls == (["true"] if pred else ["false"]) and float(out[0]) == want

    @tf.function
    def graph(p):
        return gcb.cond(gcb.namespace(x), p, lambda: (tf.fill((2,), 1.0),), lambda: (tf.fill((2,), 0.0),))[0]

    assert float(graph(tf.constant(True))[0]) == 1.0 and float(graph(tf.constant(False))[0]) == 0.0


SELECT_CASES = [
    [np.array([[0.5, -0.5, NAN], [INF, 1e-40, 0.0]], np.float32), np.full((3, 4), 0.25, np.float32),
     np.array([2.0, -0.0, 3e-39, 0.25, 0.25], np.float32)],
    [np.random.default_rng(0).standard_normal((40, 30)).round(1).astype(np.float32), np.zeros((0,), np.float32),
     np.random.default_rng(1).standard_normal(77).astype(np.float32)],
]


@pytest.mark.parametrize("case", [0, pytest.param(1, marks=pytest.mark.slow)])  # (case 1: 7 s of traces)
def test_selection_kernels_give_numpys_masks_and_threshold_eager_in_a_graph_and_under_xla(case):
    """TensorFlow's selection (bitcast keys, 11-bit bincount passes in a while_loop, a cond for split ties)
    equals the NumPy kernels bit for bit: masks (old masks and divisors included) and the threshold."""
    from gradclip_core.prune import prune_smallest

    arrays = SELECT_CASES[case]
    rng = np.random.default_rng(case)
    n = sum(a.size for a in arrays)
    old = [rng.random(a.shape) < 0.8 for a in arrays]
    divs = [np.asarray(rng.uniform(0.5, 2), np.float32) for _ in arrays]
    fns = {"eager": lambda *a: prune_smallest(None, *a),
           "graph": tf.function(lambda *a: prune_smallest(None, *a)),
           "xla": tf.function(lambda *a: prune_smallest(None, *a), jit_compile=True)}
    # (a score divided by a divisor is a float op, and TensorFlow's CPU kernels flush subnormals, as XLA's)
    normal = [np.where(np.abs(a) < np.finfo(np.float32).tiny, np.float32(0), a) for a in arrays]
    for k in (0, 1, 13, n // 2, n):
        for masks, d in ((None, None), (old, None), (None, divs)):
            xs_ = arrays if d is None else normal
            want, want_thr = prune_smallest(None, xs_, k, masks, d)
            tf_args = ([tf.constant(a) for a in xs_], tf.constant(k),
                       None if masks is None else [tf.constant(m) for m in masks],
                       None if d is None else [tf.constant(v) for v in d])
            for name, fn in fns.items():
                got, thr = fn(*tf_args)
                for a, b in zip(got, want):
                    np.testing.assert_array_equal(a.numpy(), b, err_msg=f"{name}, k={k}")
                assert np.asarray(thr.numpy(), np.float32).view(np.int32) == np.asarray(want_thr, np.float32).view(
                    np.int32) or (np.isnan(thr.numpy()) and np.isnan(want_thr)), (name, k)


def test_tf_sort_keys_and_unpermute_equal_numpys_stable_sort_eager_in_a_graph_and_under_xla():
    """LAMP's sort on TensorFlow (one ``top_k`` of the inverted keys) gives NumPy's stable ascending order, ties
    by index, over the whole int32 range (``-k`` would overflow at INT_MIN); the scatter undoes the gather; and
    LAMP's scores through them equal NumPy's."""
    from gradclip_core.backend._tensorflow import sort_keys, unpermute
    from gradclip_core.prune import lamp_scores

    info = np.iinfo(np.int32)
    rng = np.random.default_rng(3)
    cases = [np.array([info.min, info.max, 0, -1, info.min, 5, 5, info.max], np.int32),
             rng.integers(-3, 4, 1000).astype(np.int32),  # many ties
             rng.integers(info.min, info.max, 5000, dtype=np.int64).astype(np.int32), np.zeros(0, np.int32)]
    fns = {"eager": lambda k: sort_keys(xp, k), "graph": tf.function(lambda k: sort_keys(xp, k)),
           "xla": tf.function(lambda k: sort_keys(xp, k), jit_compile=True)}
    for keys in cases:
        order = np.argsort(keys, kind="stable")
        for name, fn in fns.items():
            got_keys, got_order = fn(tf.constant(keys))
            np.testing.assert_array_equal(got_keys.numpy(), keys[order], err_msg=name)
            np.testing.assert_array_equal(got_order.numpy(), order, err_msg=name)
        values = rng.standard_normal(keys.size).astype(np.float32)
        back = unpermute(xp, tf.constant(values[order]), tf.constant(order))
        np.testing.assert_array_equal(back.numpy(), values)
    s = np.abs(rng.standard_normal((37, 29))).astype(np.float32)
    s[3] = s[4]  # ties
    # the default path (argsort, gather, a second argsort to undo it) on the same TensorFlow cumulative sum
    from gradclip_core.prune._allocation import _lamp_keys, _lamp_sorted

    keys = _lamp_keys(xp, tf.reshape(tf.constant(s), [-1]))
    order = xp.argsort(keys, stable=True)
    default = xp.take(_lamp_sorted(xp, xp.take(keys, order)), xp.argsort(order, stable=True))
    got = lamp_scores(xp, tf.constant(s)).numpy()
    np.testing.assert_array_equal(got.reshape(-1), default.numpy())
    np.testing.assert_allclose(got, lamp_scores(np, s), rtol=1e-5)  # (NumPy's cumulative sum rounds otherwise)


def test_selection_graph_is_small():
    """One selection is a few hundred graph ops (the portable kernels unrolled 31 one-bit passes with
    arithmetic keys: thousands per array, minutes to trace a Keras pruning step on GPT-2 small)."""
    from gradclip_core.prune import prune_smallest

    specs = [tf.TensorSpec((64, 32), tf.float32), tf.TensorSpec((100,), tf.float32)]
    fn = tf.function(lambda xs: prune_smallest(None, xs, 1000)[0])
    ops = fn.get_concrete_function(specs).graph.get_operations()
    assert len(ops) < 300, len(ops)
    assert any(op.type in ("While", "StatelessWhile") for op in ops)


class _portable:
    """Within this block the TensorFlow namespace has no kernels: the core's portable defaults run."""

    def __init__(self, *names):
        self.names = names

    def __enter__(self):
        from gradclip_core.backend import _primitives

        self.table = _primitives._OVERRIDES[NAME]
        self.saved = {n: self.table.pop(n) for n in self.names}

    def __exit__(self, *exc):
        self.table.update(self.saved)


def _kernel_cases(rng):
    nan, inf = NAN, INF
    ds = [rng.normal(0, 0.3, (37, 29)), np.array([nan, 2.0, 0.0, -0.0, 0.25, inf, 1.0]), np.zeros(0),
          rng.normal(0, 0.01, 300) * 1e-20, np.array(3.0), np.array([nan, nan]), np.array([0.0, 0.0, 1e-3]),
          np.array([inf, 0.5]), rng.normal(0, 1e18, (3, 5, 7))]
    ws = [rng.normal(size=(37, 29)), np.array([1.0, nan, 0.0, 1.0, 0.0, 1.0, inf]), np.zeros(0), rng.normal(size=300),
          np.array(-1.0), np.array([1.0, 1.0]), np.array([0.0, 0.0, 0.0]), np.array([inf, inf]), rng.normal(size=(3, 5, 7))]
    return ds, ws


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_tf_norm_and_clippy_kernels_equal_the_defaults(dtype):
    """array_norms (reduce_euclidean_norm), min_bound_ratio and difference_min_bound_ratio (one XLA loop per
    array, the bound rounded as the default rounds it) give the portable defaults' values bit for bit, eagerly
    and in a tf.function; NaN, inf, zero, tiny, huge, 0-d and empty arrays, and 10^5 random ratios (where an FMA
    contraction of ``absolute + relative * |w|`` would differ)."""
    rng = np.random.default_rng(0)
    ds, ws = _kernel_cases(rng)
    late_nan, late_inf, late_zero = (np.random.default_rng(1).normal(size=100) for _ in range(3))
    late_nan[70], late_inf[50], late_zero[90] = NAN, INF, 0.0
    many = [rng.normal(size=20000) * 10.0 ** rng.integers(-6, 2) for _ in range(5)]
    ds = ds + [late_nan, late_inf, np.full(100, 1e-3)] + [w * rng.normal(0, 0.3, w.shape) for w in many]
    ws = ws + [np.ones(100), np.ones(100), late_zero] + many
    ds, ws = [tf.constant(d, dtype=dtype) for d in ds], [tf.constant(w, dtype=dtype) for w in ws]
    afters = [w + d for w, d in zip(ws, ds)]
    acc = tf.float64 if dtype == "float64" else tf.float32

    def run(ds, ws, afters):
        return (gcb.array_norms(xp, ds, 2.0, acc), gcb.array_norms(xp, ws, 1.0, acc),
                gcb.min_bound_ratio(xp, ds, ws, 0.1, 1e-3, acc), gcb.min_bound_ratio(xp, ds, ws, 0.25, 0.0, acc),
                gcb.difference_min_bound_ratio(xp, afters, ws, 0.1, 1e-7, acc),
                gcb.difference_min_bound_ratio(xp, afters, ws, 0.3, 0.0, acc))

    graph = tf.function(run)
    got, got_graph = run(ds, ws, afters), graph(ds, ws, afters)
    with _portable("array_norms", "min_bound_ratio", "difference_min_bound_ratio"):
        want, want_graph = run(ds, ws, afters), tf.function(run)(ds, ws, afters)
    for g, w in zip([*got, *got_graph], [*want, *want_graph]):
        for a, b in zip(g, w):
            same(a, b.numpy())
    assert float(got[2][2]) == 1.0 and float(got[2][5]) == 1.0  # an empty array, only NaN updates: scale 1
    assert float(got[2][1]) == 0.0  # an infinite update stops its array
    assert all(0.0 < float(m) < 1.0 for m in got[4][-5:])  # (the random cases clip)


def test_tf_clippy_kernel_traces_once_for_many_shapes():
    """The per-array jit_compile loops relax their shapes (reduce_retracing): a model's many weight shapes do not
    retrace them once each (TensorFlow warned about the retracing to the user; XLA compiles per shape anyway)."""
    from gradclip_core.backend import _tensorflow

    rng = np.random.default_rng(5)
    ds = [tf.constant(rng.normal(size=s), tf.float32) for s in [(3,), (4, 5), (7,), (2, 3, 4), (100,), (9, 9), (11,), (13,)]]
    ws = [d + 1.0 for d in ds]
    gcb.min_bound_ratio(xp, ds, ws, 0.125, 1e-3, tf.float32)
    gcb.difference_min_bound_ratio(xp, ws, ds, 0.125, 1e-3, tf.float32)
    for fn in _tensorflow._fused_min_ratio(0.125, 1e-3, tf.float32):
        assert fn.experimental_get_tracing_count() <= 3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tf_array_rms_kernel(dtype):
    """array_rms as norm / sqrt(n) (one EuclideanNorm kernel, no x * x): within an ulp of the default's
    sqrt(sum(x * x) / n), eagerly and in a tf.function; empty arrays 0, NaN / inf propagated; inside XLA
    the default itself."""
    from gradclip_core.backend import _tensorflow

    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(300, 7)), rng.normal(0, 1e-3, 5000), np.zeros((0, 3)), np.array(2.5),
          np.array([1.0, NAN]), np.array([INF, 1.0]), rng.normal(0, 1e18, (4, 4))]
    xs = [tf.constant(x, dtype=dtype) for x in xs]
    with _portable("array_rms"):
        want = [r.numpy() for r in gcb.array_rms(xp, xs, tf.float32)]
    for got in (gcb.array_rms(xp, xs, tf.float32), tf.function(lambda xs: gcb.array_rms(xp, xs, tf.float32))(xs)):
        got = [g.numpy() for g in got]
        assert all(g.dtype == np.float32 for g in got)
        np.testing.assert_array_max_ulp(np.array(got[:4] + got[6:]), np.array(want[:4] + want[6:]), maxulp=1)
        assert got[2] == 0.0 and np.isnan(got[4]) and got[5] == INF
    inside = tf.function(lambda: _tensorflow.array_rms(xp, xs[:1], tf.float32) is NotImplemented, jit_compile=True)
    assert bool(inside())


def test_tf_clippy_kernel_inside_xla_takes_the_default():
    """Inside a jit_compile program the kernels step aside (XLA fuses the default itself)."""
    from gradclip_core.backend import _tensorflow

    d, w = tf.constant([0.5, 0.1]), tf.constant([1.0, 1.0])
    inside = tf.function(lambda: _tensorflow.min_bound_ratio(xp, [d], [w], 0.25, 0.0, tf.float32) is NotImplemented,
                         jit_compile=True)
    assert bool(inside())
    assert float(tf.function(lambda: gcb.min_bound_ratio(xp, [d], [w], 0.25, 0.0, tf.float32)[0], jit_compile=True)()) == 0.5


def _unit_cases(rng):
    col = rng.normal(size=(300, 7))
    col[:, 1] = 0.0  # a zero unit
    col[5, 2], col[7, 3], col[9, 4] = NAN, INF, -INF
    return [
        (col, (0,)),  # a Dense kernel (in, out): a column reduction, NaN/inf/zero units
        (rng.normal(0, 1e18, (3, 5, 4, 6)), (0, 1, 2)),  # a Conv2D kernel (h, w, in, out), huge values
        (rng.normal(0, 1e-20, (2, 1, 9)), (0, 1)),  # tiny values (squares underflow, as the default's)
        (rng.normal(size=(37, 29)), (1,)),  # not the leading axes: reduce_euclidean_norm
        (rng.normal(size=(37, 29)), None),  # the whole array
        (rng.normal(size=(11,)), (0,)),  # a bias
        (np.zeros((0, 4)), (0,)),  # empty
    ]


@pytest.mark.parametrize("chunk", [None, 64], ids=["one_chunk", "many_chunks"])
@pytest.mark.parametrize("dtype, acc", [("float32", "float32"), ("bfloat16", "float32"), ("float32", "float64")])
def test_tf_unit_norms_kernel(dtype, acc, chunk, monkeypatch):
    """unit_norms' kernels (BiasAddGrad on chunks of squares over leading axes, reduce_euclidean_norm
    otherwise) against the portable default and a float64 NumPy reference, eagerly and in a tf.function:
    shapes (1, ..., 1, m), the accumulation dtype, NaN/inf/zero units exact, values within the
    summation-order bound ``rows * eps``; in chunks (``COLUMN_CHUNK``) too."""
    from gradclip_core.backend import _tensorflow

    if chunk is not None:
        monkeypatch.setattr(_tensorflow, "COLUMN_CHUNK", chunk)
    cases = _unit_cases(np.random.default_rng(0))
    xs_ = [tf.constant(x, dtype=dtype) for x, _ in cases]
    axes = [ax for _, ax in cases]
    accs = [getattr(tf, acc)] * len(cases)

    def run(arrays):
        return gcb.unit_norms(xp, arrays, axes, accs)

    got, got_graph = run(xs_), tf.function(run)(xs_)
    with _portable("unit_norms"):
        want = run(xs_)
    eps = float(np.finfo(acc).eps)
    for x, (_, ax), g, gg, w in zip(xs_, cases, got, got_graph, want):
        x64 = x.numpy().astype(np.float64)
        ref = np.sqrt(np.sum(x64 * x64, axis=ax, keepdims=True))
        n = max(1, x64.size // max(1, ref.size))
        for out in (g, gg):
            assert out.dtype == accs[0] and tuple(out.shape) == tuple(w.shape) == ref.shape
            o, wn = out.numpy().astype(np.float64), w.numpy().astype(np.float64)
            np.testing.assert_array_equal(np.isnan(o), np.isnan(ref))
            np.testing.assert_array_equal(np.isinf(o), np.isinf(ref))
            np.testing.assert_array_equal(o == 0, wn == 0)  # (the accumulation dtype's underflow, as the default)
            fin = np.isfinite(ref) & (wn != 0)
            np.testing.assert_allclose(o[fin], ref[fin], rtol=(n + 2) * eps, atol=0)


def test_tf_unit_norms_chunks_need_no_full_size_square():
    """Over leading axes, the squares are formed per chunk: no op in the graph makes a full-size tensor."""
    from gradclip_core.backend import _tensorflow

    x = tf.TensorSpec((4 * _tensorflow.COLUMN_CHUNK // 64, 64), tf.float32)
    graph = tf.function(lambda x: gcb.unit_norms(xp, [x], [(0,)], [tf.float32])).get_concrete_function(x).graph
    full = [op for op in graph.get_operations() if op.type != "Placeholder" and op.type != "Reshape"
            and any(o.shape.num_elements() == x.shape.num_elements() for o in op.outputs)]
    assert not full, [op.type for op in full]


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_tf_selection_splits_ties_in_flat_order(mode):
    """A k that splits the ties at the threshold prunes the first of them in flat order (the core's total order),
    as NumPy's selection does: the TensorFlow kernel lists the ties' positions (eager, tf.function) or counts
    them running (XLA)."""
    from gradclip_core.prune._select import prune_smallest

    rng = np.random.default_rng(7)
    x = rng.integers(0, 6, size=(50, 37)).astype(np.float32)  # ~300 ties per value
    for k in (1, 299, 700, 1001, 1849):
        want = prune_smallest(np, [x], k)[0][0]

        def run(t, k=k):
            return prune_smallest(xp, [t], k)[0][0]

        fn = {"eager": run, "graph": tf.function(run), "xla": tf.function(run, jit_compile=True)}[mode]
        got = fn(tf.constant(x)).numpy()
        assert got.dtype == np.bool_ and int((~got).sum()) == k
        np.testing.assert_array_equal(got, want)
