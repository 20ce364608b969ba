"""clip_by_value against np.clip (what clip_grad_value_, optax.clip and Keras clipvalue do)."""

import numpy as np
import pytest

import gradclip_core as gc
import gradclip_core.backend as gcb

from .util import NAMESPACES, SHAPES, rand_arrays, run_update


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("c", [0.0, 0.5, 3.0])
def test_symmetric_matches_np_clip(xp, c):
    grads = rand_arrays(0, SHAPES, scale=2.0)
    out, _, info = run_update(gc.clip_by_value(c, info="full"), xp, grads)
    for o, g in zip(out, grads):
        np.testing.assert_array_equal(o, np.clip(g, -c, c))
        assert o.dtype == g.dtype
    n_out = sum(int(np.sum(np.abs(g) > c)) for g in grads)
    assert info["clipped_fraction"] == pytest.approx(n_out / sum(g.size for g in grads))


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("lo, hi", [(-0.25, 1.0), (None, 0.5), (-0.5, None), (0.3, 0.3)])
def test_bounds_match_np_clip(xp, lo, hi):
    grads = rand_arrays(1, SHAPES)
    out, _, _ = run_update(gc.clip_by_value(lo=lo, hi=hi), xp, grads)
    for o, g in zip(out, grads):
        np.testing.assert_array_equal(o, np.clip(g, lo, hi))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_nan_stays_and_inf_goes_to_the_bound(xp):
    g = [np.array([np.nan, np.inf, -np.inf, 0.1], np.float32)]
    out, _, info = run_update(gc.clip_by_value(1.0, info="full"), xp, g)
    np.testing.assert_array_equal(out[0], np.array([np.nan, 1.0, -1.0, 0.1], np.float32))
    assert info["clipped_fraction"] == 0.5  # the infinities


def test_half_precision_keeps_dtype():
    g = [np.array([70000.0, -3.0, 0.25], np.float32).astype(np.float16)]
    out, _, _ = run_update(gc.clip_by_value(2.0), gcb.namespace(g[0]), g)
    assert out[0].dtype == np.float16
    np.testing.assert_array_equal(out[0], np.array([2.0, -2.0, 0.25], np.float16))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_basic_info_counts_nothing_and_full_counts(xp):
    g = [np.array([-3.0, 0.5, 2.0], np.float32)]
    basic, full = gc.clip_by_value(1.0), gc.clip_by_value(1.0, info="full")
    out_b, _, info_b = run_update(basic, xp, g)
    out_f, _, info_f = run_update(full, xp, g)
    assert info_b == {} and info_f == {"clipped_fraction": pytest.approx(2 / 3)}
    np.testing.assert_array_equal(out_b[0], out_f[0])
    with pytest.raises(ValueError, match="info must be one of"):
        gc.clip_by_value(1.0, info="all")
