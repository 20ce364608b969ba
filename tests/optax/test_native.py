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


def _complex_tree(seed: int, shapes, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {f"p{i}": jnp.asarray((rng.normal(0, scale, s) + 1j * rng.normal(0, scale, s)).astype(np.complex64))
            for i, s in enumerate(shapes)}


def test_complex_issue_example():
    # Issue 16: [3+4j, 0] had norm 3.0 (the real part) and a "clipped" gradient of norm 1.67.
    grads = {"w": jnp.array([3 + 4j, 0], jnp.complex64)}
    for semantics in (None, "optax", "torch", "keras"):
        tx = gradclip_optax.transform(gc.clip_by_global_norm(1.0, semantics=semantics))
        state = tx.init(grads)
        out, state = jax.jit(tx.update)(grads, state)
        assert float(state.info["norm"]) == 5.0
        np.testing.assert_allclose(np.asarray(out["w"]), [0.6 + 0.8j, 0], rtol=2e-6)


@pytest.mark.parametrize("shapes", SHAPE_SETS[:2])
def test_complex_global_norm_and_block_rms_match_optax(shapes):
    for seed in range(3):
        for scale in (0.01, 30.0):
            grads = _complex_tree(seed, shapes, scale)
            ours = _apply(gradclip_optax.transform(gc.clip_by_global_norm(1.0, semantics="optax")), grads, grads)
            _assert_bitwise_complex(ours, _apply(optax.clip_by_global_norm(1.0), grads, grads))
            ours = _apply(gradclip_optax.transform(gc.clip_by_block_rms(0.5)), grads, grads)
            _assert_bitwise_complex(ours, _apply(optax.clip_by_block_rms(0.5), grads, grads))


def test_complex_adaptive_clip_matches_optax():
    shapes = [(6, 4), (6,), (3, 6, 2), (1, 5)]
    params, grads = _complex_tree(0, shapes), _complex_tree(100, shapes, 0.2)
    ours = _apply(gradclip_optax.transform(gc.adaptive_clip(0.05)), grads, params)
    native = _apply(optax.adaptive_grad_clip(0.05), grads, params)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(native)):
        assert x.dtype == y.dtype == jnp.complex64
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=4e-7, atol=0)
    assert any(np.any(np.asarray(x) != np.asarray(g)) for x, g in zip(jax.tree.leaves(ours), jax.tree.leaves(grads)))


def _assert_bitwise_complex(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype == jnp.complex64
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_complex_refused_by_value_rules_naming_the_path():
    params = {"enc": {"w": jnp.ones((2, 2), jnp.complex64)}}
    with pytest.raises(TypeError, match=r"clip_by_value: 'enc/w' is complex64, but clip_by_value clamps values"):
        gradclip_optax.transform(gc.clip_by_value(1.0)).update(params, gradclip_optax.transform(gc.clip_by_value(1.0)).init(params))
    tx = gradclip_optax.wrap(gc.magnitude_prune(0.5), optax.sgd(0.1))
    with pytest.raises(TypeError, match=r"magnitude_prune: 'enc/w' is complex64"):
        tx.init(params)
