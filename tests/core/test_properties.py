"""Property tests (hypothesis) for every clipping rule, on NumPy and array-api-strict."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradclip_core as gc

from .util import NAMESPACES, run_update

ROUND = 1 + 1e-5  # rounding slack of a float32 result against a float64 bound

finite32 = st.floats(-1e4, 1e4, allow_nan=False, width=32)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
arrays = hnp.arrays(np.float32, shapes, elements=finite32)
grad_lists = st.lists(arrays, min_size=1, max_size=4)
bounds = st.one_of(st.just(0.0), st.floats(1e-6, 100.0))  # no subnormal float32 thresholds
positive = st.floats(1e-3, 100.0)
SEMANTICS = st.sampled_from(["canonical", "torch", "optax", "keras"])
ORDS = st.sampled_from([1.0, 2.0, math.inf])


def norm(xs, ord=2.0):
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in xs])
    return float(np.linalg.norm(flat, ord)) if flat.size else 0.0


settings.register_profile("gradclip", max_examples=int(__import__("os").environ.get("GRADCLIP_EXAMPLES", 60)), deadline=None)
settings.load_profile("gradclip")


@pytest.mark.parametrize("xp", NAMESPACES)
@given(grads=grad_lists, max_norm=bounds, ord=ORDS)
def test_global_norm_bound_scale_and_idempotence(xp, grads, max_norm, ord):
    rule = gc.clip_by_global_norm(max_norm, ord=ord)
    out, _, info = run_update(rule, xp, grads)
    assert norm(out, ord) <= max_norm * ROUND + 1e-30
    assert 0.0 <= info["scale"] <= 1.0
    assert not any(np.isnan(o).any() for o in out)  # zero norm (or max_norm 0) never NaN
    again, _, _ = run_update(rule, xp, out)
    for a, b in zip(again, out):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=0)


@pytest.mark.parametrize("xp", NAMESPACES)
@given(grads=grad_lists, max_norm=bounds, semantics=SEMANTICS)
def test_every_preset_bounds_the_global_norm(xp, grads, max_norm, semantics):
    out, _, info = run_update(gc.clip_by_global_norm(max_norm, semantics=semantics), xp, grads)
    if semantics == "keras" and max_norm == 0:
        bound = norm(grads)  # Keras: 0 means "off"
    elif semantics == "optax" and max_norm == 0:
        return  # optax's native 0/0 = NaN when the float32 norm is 0 (tested in test_clip_norm)
    else:
        bound = max_norm
    assert norm(out) <= bound * ROUND + 1e-30
    # Keras' c * min(1/norm, 1/c) rounds to 1 + 1 ulp for small norms, as Keras does
    assert 0.0 <= info["scale"] <= (1.0 + 2**-23 if semantics == "keras" else 1.0)


@pytest.mark.parametrize("xp", NAMESPACES)
@given(grads=grad_lists, max_norm=bounds, ord=ORDS)
def test_per_array_norm_bound(xp, grads, max_norm, ord):
    out, _, info = run_update(gc.clip_by_norm(max_norm, ord=ord), xp, grads)
    for o, g in zip(out, grads):
        assert norm([o], ord) <= max_norm * ROUND + 1e-30
        # direction is kept: o = s * g with s in [0, 1]
        assert np.all(np.abs(o.astype(np.float64)) <= np.abs(g.astype(np.float64)) * ROUND)
    assert 0.0 <= info["clipped_fraction"] <= 1.0


@pytest.mark.parametrize("xp", NAMESPACES)
@given(grads=grad_lists, c=bounds)
def test_value_clip_bounds_and_exact_idempotence(xp, grads, c):
    rule = gc.clip_by_value(c, info="full")
    out, _, info = run_update(rule, xp, grads)
    assert all(np.all(np.abs(o) <= np.float32(c)) for o in out)
    again, _, info2 = run_update(rule, xp, out)
    assert all(np.array_equal(a, b) for a, b in zip(again, out))
    assert info2["clipped_fraction"] == 0.0


@pytest.mark.parametrize("xp", NAMESPACES)
@given(grads=grad_lists, t=positive, adafactor=st.booleans())
def test_rms_bound(xp, grads, t, adafactor):
    rule = gc.clip_update_rms(t) if adafactor else gc.clip_by_block_rms(t)
    out, _, _ = run_update(rule, xp, grads)
    for o in out:
        if o.size:
            assert math.sqrt(np.mean(o.astype(np.float64) ** 2)) <= t * ROUND


@pytest.mark.parametrize("xp", NAMESPACES)
@given(data=st.data(), clipping=st.floats(0.0, 1.0), eps=st.floats(0.0, 1.0))
def test_agc_unit_bound(xp, data, clipping, eps):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4))
    g = data.draw(hnp.arrays(np.float32, shape, elements=finite32))
    w = data.draw(hnp.arrays(np.float32, shape, elements=finite32))
    out, _, info = run_update(gc.adaptive_clip(clipping, eps, axis="out_first"), xp, [g], [w])
    axes = tuple(range(1, len(shape)))
    unit = lambda x: np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=axes))  # noqa: E731
    bound = clipping * np.maximum(unit(w), eps)
    assert np.all(unit(out[0]) <= bound * ROUND + 1e-6 * ROUND)
    assert 0.0 <= info["clipped_fraction"] <= 1.0


@pytest.mark.parametrize("xp", NAMESPACES)
@given(grads=grad_lists, positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=3), fill=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nonfinite_policies(xp, grads, positions, fill):
    grads = [g.copy() for g in grads]
    sized = [g for g in grads if g.size]
    if not sized:
        return
    for pos in positions:
        target = sized[pos % len(sized)]
        target.flat[pos % target.size] = fill
    zero, _, zi = run_update(gc.clip_by_global_norm(1.0, nonfinite="zero"), xp, grads)
    assert all(np.isfinite(o).all() for o in zero) and zi["nonfinite"] == 1
    assert norm(zero) <= ROUND
    skip, _, si = run_update(gc.clip_by_global_norm(1.0, nonfinite="skip"), xp, grads)
    assert all(not o.any() for o in skip) and si["skipped"] == 1
    with pytest.raises(FloatingPointError):
        run_update(gc.clip_by_global_norm(1.0, nonfinite="raise"), xp, grads)
