"""Adaptive gradient clipping against the paper's formula, in the timm and optax layouts.

References written out from Brock et al. 2021 (NFNets), eq. 3, and the public
implementations' unit conventions (timm: torch layout, norm over all dims but 0;
optax.adaptive_grad_clip: axis 0 for rank 2-3, all but last for rank 4-5).
"""

import numpy as np
import pytest

import gradclip_core as gc
import gradclip_core.backend as gcb

from .util import NAMESPACES, run_update


def unitwise_norm(x, axes):
    x = np.asarray(x, np.float64)
    if axes is None:
        return np.sqrt(np.sum(x * x, keepdims=True)).reshape((1,) * x.ndim)
    return np.sqrt(np.sum(x * x, axis=axes, keepdims=True))


def ref_agc(g, w, clipping, eps, axes):
    gn, wn = unitwise_norm(g, axes), unitwise_norm(w, axes)
    max_norm = clipping * np.maximum(wn, eps)
    clipped = np.asarray(g, np.float64) * (max_norm / np.maximum(gn, 1e-6))
    return np.where(gn < max_norm, g, clipped)


def timm_axes(shape):
    return None if len(shape) <= 1 else tuple(range(1, len(shape)))


def optax_axes(shape):
    if sum(d != 1 for d in shape) <= 1:
        return None
    return (0,) if len(shape) in (2, 3) else tuple(range(len(shape) - 1))


def keras_axes(shape):
    return None if len(shape) <= 1 else tuple(range(len(shape) - 1))


CASES = [(8, 5), (5,), (), (4, 3, 3, 3), (6, 2, 4), (1, 7), (2, 3, 2, 2, 2)]


def make(seed, shapes, scale):
    rng = np.random.default_rng(seed)
    w = [rng.normal(0, 1, s).astype(np.float32) for s in shapes]
    g = [rng.normal(0, scale, s).astype(np.float32) for s in shapes]
    return g, w


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize(
    "axis, axes_of",
    [("out_first", timm_axes), ("optax", optax_axes), ("out_last", keras_axes), ((0,), None)],
)
@pytest.mark.parametrize("scale", [0.001, 0.05, 1.0])
def test_matches_paper_formula(xp, axis, axes_of, scale):
    g, w = make(8, CASES, scale)
    out, _, info = run_update(gc.adaptive_clip(0.02, axis=axis), xp, g, w)
    clipped_units = total_units = 0
    for o, gi, wi in zip(out, g, w):
        axes = axes_of(gi.shape) if axes_of else (None if gi.ndim <= 1 else (0,))
        ref = ref_agc(gi, wi, 0.02, 1e-3, axes)
        np.testing.assert_allclose(o.astype(np.float64), ref, rtol=3e-6, atol=1e-30)
        gn, wn = unitwise_norm(gi, axes), unitwise_norm(wi, axes)
        clipped_units += int(np.sum(gn >= 0.02 * np.maximum(wn, 1e-3)))
        total_units += gn.size
        # after clipping every unit is within its bound (up to rounding)
        assert np.all(unitwise_norm(o, axes) <= 0.02 * np.maximum(wn, 1e-3) * (1 + 1e-5))
    assert info["clipped_fraction"] == pytest.approx(clipped_units / total_units)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_eps_lets_zero_initialised_weights_move(xp):
    g = [np.full((3, 2), 1.0, np.float32)]
    w = [np.zeros((3, 2), np.float32)]
    out, _, _ = run_update(gc.adaptive_clip(0.5, eps=1e-3, axis="out_first"), xp, g, w)
    # each row (unit) clipped to norm 0.5 * 1e-3
    np.testing.assert_allclose(np.linalg.norm(out[0].astype(np.float64), axis=1), 5e-4, rtol=1e-6)


def test_callable_axis_and_float16():
    g = [np.full((4, 6), 2.0, np.float16)]
    w = [np.ones((4, 6), np.float16)]
    rule = gc.adaptive_clip(0.1, axis=lambda shape: (1,))
    out, _, _ = run_update(rule, gcb.namespace(g[0]), g, w)
    assert out[0].dtype == np.float16
    np.testing.assert_allclose(out[0].astype(np.float64), ref_agc(g[0], w[0], 0.1, 1e-3, (1,)), rtol=1e-3)


def test_layout_is_the_difference_between_frameworks():
    """The same (out, in) weight read with the Keras layout gives other units."""
    g, w = make(9, [(4, 3)], 1.0)
    torch_style, _, _ = run_update(gc.adaptive_clip(0.05, axis="out_first"), gcb.namespace(g[0]), g, w)
    keras_style, _, _ = run_update(gc.adaptive_clip(0.05, axis="out_last"), gcb.namespace(g[0]), [g[0].T.copy()], [w[0].T.copy()])
    np.testing.assert_array_equal(torch_style[0], keras_style[0].T)
