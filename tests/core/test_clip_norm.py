"""Global and per-array norm clipping: canonical formula and the torch/optax/keras presets.

The references below are written out from each framework's source (torch
clip_grad_norm_, optax.clip_by_global_norm, Keras BaseOptimizer._clip_by_norm /
clip_by_global_norm) in float64; bit-exactness against the real native functions is
tested in each adapter's suite.
"""

import math

import numpy as np
import pytest

import gradclip_core as gc
import gradclip_core.backend as gcb

from .util import NAMESPACES, SHAPES, rand_arrays, run_update


def norm64(xs, ord=2.0):
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in xs] + [np.zeros(0)])
    if flat.size == 0:
        return 0.0
    return float(np.linalg.norm(flat, ord))


def ref_global(xs, max_norm, ord=2.0, semantics="canonical"):
    """Expected output (float64) of the global clip."""
    n = norm64(xs, ord)
    x64 = [np.asarray(x, np.float64) for x in xs]
    if semantics == "canonical":
        s = 1.0 if n <= max_norm else max_norm / n
    elif semantics == "torch":
        s = min(max_norm / (n + 1e-6), 1.0)
    elif semantics == "optax":
        return x64 if n < max_norm else [x / n * max_norm for x in x64]
    else:  # keras
        s = 1.0 if max_norm == 0 else max_norm * min(1.0 / n if n else math.inf, 1.0 / max_norm)
    return [x * s for x in x64]


def ref_per_array(xs, max_norm, ord=2.0, semantics="canonical"):
    return [ref_global([x], max_norm, ord, semantics)[0] for x in xs]


def assert_close(out, ref, dtype=np.float32):
    rtol = {np.float32: 3e-6, np.float64: 1e-12, np.float16: 2e-3}[dtype]
    for o, r in zip(out, ref):
        assert o.dtype == dtype
        np.testing.assert_allclose(o.astype(np.float64), r, rtol=rtol, atol=1e-30)


SEMANTICS = ["canonical", "torch", "optax", "keras"]


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_global_matches_reference(xp, semantics, scale):
    grads = rand_arrays(2, SHAPES, scale=scale)
    out, _, info = run_update(gc.clip_by_global_norm(1.5, semantics=semantics), xp, grads)
    assert_close(out, ref_global(grads, 1.5, semantics=semantics))
    assert info["norm"] == pytest.approx(norm64(grads), rel=2e-6)
    assert 0.0 <= info["scale"] <= 1.0


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("ord", [1, 2, "inf"])
@pytest.mark.parametrize("semantics", ["canonical", "torch"])
def test_global_norm_orders(xp, ord, semantics):
    grads = rand_arrays(3, SHAPES, scale=5.0)
    o = math.inf if ord == "inf" else float(ord)
    out, _, info = run_update(gc.clip_by_global_norm(2.0, ord=ord, semantics=semantics), xp, grads)
    assert_close(out, ref_global(grads, 2.0, o, semantics))
    assert info["norm"] == pytest.approx(norm64(grads, o), rel=2e-6)
    assert norm64(out, o) <= 2.0 * (1 + 1e-5)


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("semantics", SEMANTICS)
def test_per_array_matches_reference(xp, semantics):
    grads = rand_arrays(4, SHAPES, scale=1.0)
    out, _, info = run_update(gc.clip_by_norm(1.0, semantics=semantics), xp, grads)
    assert_close(out, ref_per_array(grads, 1.0, semantics=semantics))
    n_clipped = sum(norm64([g]) > 1.0 for g in grads)
    assert info["clipped_fraction"] == pytest.approx(n_clipped / len(grads))
    assert info["norm"] == pytest.approx(norm64(grads), rel=2e-6)


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("ord", [1, "inf"])
def test_per_array_orders(xp, ord):
    grads = rand_arrays(5, SHAPES, scale=3.0)
    o = math.inf if ord == "inf" else float(ord)
    out, _, _ = run_update(gc.clip_by_norm(0.5, ord=ord), xp, grads)
    assert_close(out, ref_per_array(grads, 0.5, o))
    assert all(norm64([x], o) <= 0.5 * (1 + 1e-5) for x in out)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_presets_differ_where_the_frameworks_differ(xp):
    """At norm == max_norm: canonical passes through, torch shrinks by 1e-6, optax rescales."""
    g = [np.array([3.0, 4.0], np.float32)]  # norm exactly 5
    canon, _, ic = run_update(gc.clip_by_global_norm(5.0), xp, g)
    torch_, _, it = run_update(gc.clip_by_global_norm(5.0, semantics="torch"), xp, g)
    np.testing.assert_array_equal(canon[0], g[0])
    assert ic["scale"] == 1.0
    assert it["scale"] == pytest.approx(5.0 / (5.0 + 1e-6), rel=1e-7) and it["scale"] < 1.0
    assert np.all(np.abs(torch_[0]) < np.abs(g[0]))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_zero_norm_never_nan_except_optax_native_fact(xp):
    zeros = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32)]
    for sem in ["canonical", "torch", "keras"]:
        for max_norm in [0.0, 1.0]:
            out, _, info = run_update(gc.clip_by_global_norm(max_norm, semantics=sem), xp, zeros)
            assert all(np.array_equal(o, z) for o, z in zip(out, zeros)), (sem, max_norm)
            assert not math.isnan(info["scale"])
    # optax: max_norm 0 with zero grads gives NaN (0 < 0 is false, 0 / 0), as optax does
    out, _, _ = run_update(gc.clip_by_global_norm(0.0, semantics="optax"), xp, zeros)
    assert all(np.isnan(o).all() for o in out)
    out, _, _ = run_update(gc.clip_by_norm(1.0, semantics="keras"), xp, zeros)
    assert all(np.array_equal(o, z) for o, z in zip(out, zeros))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_keras_zero_means_off(xp):
    grads = rand_arrays(6, SHAPES, scale=10.0)
    for make in (gc.clip_by_global_norm, gc.clip_by_norm):
        out, _, info = run_update(make(0.0, semantics="keras"), xp, grads)
        assert all(np.array_equal(o, g) for o, g in zip(out, grads))
    out, _, _ = run_update(gc.clip_by_global_norm(0.0), xp, grads)  # canonical: clip to zero
    assert all(not o.any() for o in out)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_nonfinite_norm_per_preset(xp):
    """propagate: each preset does what its framework does with a NaN/Inf global norm."""
    g = [np.array([np.inf, 1.0], np.float32), np.array([2.0], np.float32)]
    canon, _, _ = run_update(gc.clip_by_global_norm(1.0), xp, g)
    assert np.isnan(canon[0][0]) and canon[0][1] == 0 and canon[1][0] == 0  # scale 0, inf*0
    keras, _, _ = run_update(gc.clip_by_global_norm(1.0, semantics="keras"), xp, g)
    assert all(np.isnan(o).all() for o in keras)  # Keras: scale + (norm - norm) = NaN
    g = [np.array([np.nan, 1.0], np.float32), np.array([2.0], np.float32)]
    canon, _, info = run_update(gc.clip_by_global_norm(1.0), xp, g)
    assert math.isnan(info["norm"]) and info["scale"] == 1.0
    np.testing.assert_array_equal(canon[1], g[1])


def test_float16_accumulates_in_float32():
    """An fp16 gradient of 300s: native optax/Keras sum squares in fp16 and get inf."""
    g = [np.full((64, 64), 300.0, np.float16)]
    for sem in SEMANTICS:
        out, _, info = run_update(gc.clip_by_global_norm(1.0, semantics=sem), gcb.namespace(g[0]), g)
        assert info["norm"] == pytest.approx(300.0 * 64, rel=1e-6), sem
        assert out[0].dtype == np.float16 and np.isfinite(out[0]).all(), sem
        np.testing.assert_allclose(out[0].astype(np.float64), 1.0 / 64, rtol=2e-3)


def test_float64_stays_float64():
    g = [np.array([3.0, 4.0]), np.array([12.0])]
    out, _, info = run_update(gc.clip_by_global_norm(1.0), gcb.namespace(g[0]), g)
    assert all(o.dtype == np.float64 for o in out)
    assert_close(out, ref_global(g, 1.0), np.float64)
