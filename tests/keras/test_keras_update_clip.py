"""``gradclip_keras.Optimizer`` with update clipping (``rule.on_update``): the rule on ``w_new - w_old`` after the step.

The parity suite (tests/parity, ``clippy`` / ``update-norm``) checks every dtype and the
resume; here: Adam's own update against the Clippy reference, ``fit``, and a gradient rule
and an update rule in nested wrappers.
"""

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras

from ..core.test_update_clip import shrink_by_references
from ..fixtures import regression
from .util import dense_model, to_np


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=s).astype(np.float32)) for s in [(4, 3), (3,)]]


def _grads(step, scale):
    rng = np.random.default_rng(50 + step)
    return [keras.ops.convert_to_tensor(rng.normal(0, scale, s).astype(np.float32)) for s in [(4, 3), (3,)]]


def test_clippy_on_adams_update():
    ours, twin = _variables(), _variables()
    opt = gradclip_keras.Optimizer(keras.optimizers.Adam(0.1), gc.clippy(0.05, 1e-3))
    plain = keras.optimizers.Adam(0.1)
    clipped = 0
    for step, scale in enumerate([1.0, 4.0, 1.0]):
        before = [to_np(v.value).copy() for v in ours]
        for t, b in zip(twin, before):
            t.assign(b)
        grads = _grads(step, scale)
        opt.apply(grads, ours)
        plain.apply(grads, twin)  # Adam's moments depend on the gradients only: the same raw update
        for v, t, b in zip(ours, twin, before):
            want, s = shrink_by_references(to_np(t.value) - b, b, 0.05, 1e-3)
            if s == 1:
                np.testing.assert_array_equal(to_np(v.value), to_np(t.value))  # untouched: the inner step's weights
            else:
                np.testing.assert_allclose(to_np(v.value), b + want, rtol=1e-6, atol=1e-6)  # (XLA may fuse w - lr * g into an FMA)
            clipped += s < 1
        assert float(to_np(opt.info["min_scale"])) <= 1.0
    assert clipped > 0


def test_fit_with_clip_update_norm_and_a_nested_gradient_rule():
    inner = gradclip_keras.Optimizer(keras.optimizers.SGD(0.01), gc.clip_update_norm(2.0, history=4))
    opt = gradclip_keras.Optimizer(inner, gc.clip_by_global_norm(1.0))
    model = dense_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = regression(0, 32, 4, 2, y_scale=50.0)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert int(to_np(inner.gradclip_state[0].value)) == 4  # the ring buffer of update norms filled (count)
    assert float(to_np(opt.info["norm"])) > 0 and float(to_np(inner.info["norm"])) > 0
    assert np.isfinite(float(to_np(inner.info["threshold"])))  # past the warm-up: the clip is armed


def test_jit_stateless_apply_keeps_no_weight_sized_temporary():
    """JAX: under ``jit(stateless_apply)`` the inner step is traced twice, fused into the rule's reads and into
    the in-place write-back: XLA keeps no weight-sized temporary (it held ``w_new`` in one, page-faulted in every
    step), and the weights are those of the eager ``apply``."""
    if keras.backend.backend() != "jax":
        pytest.skip("XLA's buffer assignment of the JAX trainer's step")
    import jax

    rng = np.random.default_rng(3)
    shape = (256, 128)
    nbytes = int(np.prod(shape)) * 4
    for rule in (lambda: gc.clip_update_norm(sigma=0.5, history=4, min_history=2), gc.update_ratio):
        init = rng.normal(size=shape).astype(np.float32)
        w, twin = keras.Variable(init), keras.Variable(init)
        opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), rule())
        eager = gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), rule())
        opt.build([w])
        apply = jax.jit(opt.stateless_apply, donate_argnums=(0, 2))
        values, opt_values = [w.value], [v.value for v in opt.variables]
        grads = [keras.ops.convert_to_tensor(rng.normal(0, s, shape).astype(np.float32)) for s in (1.0, 1.0, 1.0, 9.0)]
        compiled = apply.lower(opt_values, grads[:1], values).compile()
        assert compiled.memory_analysis().temp_size_in_bytes < nbytes // 4
        for g in grads:
            values, opt_values = apply(opt_values, [g], values)
            eager.apply([g], [twin])
        np.testing.assert_allclose(np.asarray(values[0]), to_np(twin.value), rtol=1e-6, atol=1e-6)  # (XLA may fuse w - lr * g into an FMA)
        if "clipped" in eager.info:  # clip_update_norm: the last update was clipped (the write-back took it)
            assert int(to_np(eager.info["clipped"])) == 1


@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
def test_torch_keeps_the_snapshot_buffers_from_step_to_step_and_a_delta_only_where_the_rule_needs_it(nonfinite):
    """torch, eager: the snapshot lands in buffers made once (``backend.kept_buffers``), as in
    ``gradclip_torch.attach``; Clippy reads ``(w_new, w_old)`` itself (the post-step seam: no ``w_new - w_old``
    buffer), while a non-finite policy, which must see the update's elements, keeps ``delta`` buffers too;
    other backends make fresh arrays (none kept)."""
    if keras.backend.backend() != "torch" and nonfinite != "propagate":
        pytest.skip("other backends keep no buffers (checked once, with the default policy)")
    ours = _variables()
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.clippy(1e-3, 1e-4, nonfinite=nonfinite))
    ptrs = []
    for step in range(3):
        opt.apply(_grads(step, 1.0), ours)
        scratch = opt._gradclip.scratch
        if keras.backend.backend() != "torch":
            assert scratch == {}
            return
        assert ("delta" in scratch) == (nonfinite != "propagate")
        ptrs.append([b.data_ptr() for b in scratch["snapshot"] + scratch.get("delta", [])])
        assert float(to_np(opt.info["min_scale"])) < 1  # the clip acted: the write-back went through
    assert ptrs[0] == ptrs[1] == ptrs[2] and len(set(ptrs[0])) == (2 if nonfinite == "propagate" else 4)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's write-back (a tf.cond per array)")
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_tf_write_back_in_a_tf_function(jit_compile):
    """TensorFlow writes an update rule's factor through one branch per array (``tf.cond``), not a
    full-size select: in a ``tf.function`` (and with XLA) the weights equal the eager step's, bit for
    bit, where the rule clips (factor < 1) and where it does not (factor 1: the inner step's values)."""
    import tensorflow as tf

    eager, traced = _variables(), _variables()
    opt_e = gradclip_keras.Optimizer(keras.optimizers.SGD(0.5), gc.clippy(0.05, 1e-3))
    opt_t = gradclip_keras.Optimizer(keras.optimizers.SGD(0.5), gc.clippy(0.05, 1e-3))
    opt_t.build(traced)
    step = tf.function(lambda g: opt_t.apply(g, traced), jit_compile=jit_compile)
    fractions = []
    for i, scale in enumerate([1e-4, 1.0, 1e-4]):  # tiny steps: factor 1; a large one: clipped
        grads = _grads(i, scale)
        before = [to_np(v.value).copy() for v in eager]
        opt_e.apply(grads, eager)
        step(grads)
        for e, t in zip(eager, traced):
            np.testing.assert_array_equal(to_np(t.value), to_np(e.value))
        moved = [not np.array_equal(to_np(e.value), b) for e, b in zip(eager, before)]
        assert all(moved)
        fractions.append(float(to_np(opt_t.info["clipped_fraction"])))
        assert fractions[-1] == float(to_np(opt_e.info["clipped_fraction"]))
    assert fractions == [0.0, 1.0, 0.0]
