"""gradclip rules in optax vs optax's own transforms, under jax.jit.

``semantics="optax"`` global-norm clipping, clip-by-value and block-RMS use the same
operation order as optax, so they must agree bit for bit in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradclip_core as gc
import gradclip_optax

from .util import tree

SHAPE_SETS = [
    [(6, 4), (6,), (3, 6), ()],
    [(2, 3, 3, 5), (5,), (7, 1, 2)],
    [(128,), (32, 64), (4, 4, 4, 4, 2)],
]


def _jitted(tx: optax.GradientTransformation):
    @jax.jit
    def f(grads, params):
        return tx.update(grads, tx.init(params), params)[0]

    return f


def _apply(tx: optax.GradientTransformation, grads, params):
    return _jitted(tx)(grads, params)


def _assert_bitwise(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x.astype(np.float32), y.astype(np.float32))  # NaN == NaN


@pytest.mark.parametrize("shapes", SHAPE_SETS)
@pytest.mark.parametrize("max_norm", [0.5, 1.0, 1e3])
def test_global_norm_optax_semantics_bitwise(shapes, max_norm):
    ours = _jitted(gradclip_optax.transform(gc.clip_by_global_norm(max_norm, semantics="optax")))
    native = _jitted(optax.clip_by_global_norm(max_norm))
    for seed in range(4):
        for scale in (0.01, 1.0, 30.0):  # below and above the threshold
            grads = tree(seed, shapes, scale)
            _assert_bitwise(ours(grads, grads), native(grads, grads))


def test_global_norm_optax_semantics_nan_case():
    """max_norm = 0 with zero gradients gives NaN in optax (0/0); the preset reproduces it."""
    grads = {"a": jnp.zeros((3, 2)), "b": jnp.zeros(4)}
    ours = _apply(gradclip_optax.transform(gc.clip_by_global_norm(0.0, semantics="optax")), grads, grads)
    native = _apply(optax.clip_by_global_norm(0.0), grads, grads)
    assert all(np.isnan(np.asarray(x)).all() for x in jax.tree.leaves(native))
    _assert_bitwise(ours, native)
    canonical = _apply(gradclip_optax.transform(gc.clip_by_global_norm(0.0)), grads, grads)
    assert all((np.asarray(x) == 0).all() for x in jax.tree.leaves(canonical))  # canonical: never NaN


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("axis", [None, "optax"])
def test_adaptive_clip_matches_optax(seed, axis):
    shapes = [(6, 4), (6,), (3, 6, 2), (), (2, 3, 3, 5), (2, 2, 2, 3, 4), (1, 5)]
    params = tree(seed, shapes)
    grads = tree(seed + 100, shapes, 0.2)
    ours = _apply(gradclip_optax.transform(gc.adaptive_clip(0.05, axis=axis)), grads, params)
    native = _apply(optax.adaptive_grad_clip(0.05), grads, params)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(native)):
        # optax divides full-shape broadcasts of the norms, the core divides the norms and
        # broadcasts the ratio; XLA turns the former into a multiply by a reciprocal.
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=4e-7, atol=0)
    clipped = sum(int(np.any(np.asarray(x) != np.asarray(g))) for x, g in zip(jax.tree.leaves(ours), jax.tree.leaves(grads)))
    assert clipped > 0  # the case does clip something


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold", [0.05, 0.5, 10.0])
def test_block_rms_matches_optax(seed, threshold):
    grads = tree(seed, SHAPE_SETS[0] + SHAPE_SETS[1])
    ours = _apply(gradclip_optax.transform(gc.clip_by_block_rms(threshold)), grads, grads)
    native = _apply(optax.clip_by_block_rms(threshold), grads, grads)
    _assert_bitwise(ours, native)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_clip_by_value_matches_optax(seed, dtype):
    grads = jax.tree.map(lambda x: x.astype(dtype), tree(seed, SHAPE_SETS[0], 2.0))
    grads["nan"] = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 0.3], dtype)
    ours = _apply(gradclip_optax.transform(gc.clip_by_value(0.75)), grads, grads)
    native = _apply(optax.clip(0.75), grads, grads)
    _assert_bitwise(ours, native)
