"""skip_on_spike in Keras: the loss from the trainer (``scale_loss``), a true skip inside ``fit``.

Two batches of the run have their targets multiplied by 1000 (loss and gradient spike).
On those steps the weights, the inner Adam's variables (moments, iteration count) stay
exactly as they were; the other steps run as in a fit without those batches.
"""

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras

from ..fixtures import regression
from .util import dense_model, tensor, to_np

BATCH, STEPS, SPIKES = 8, 12, (6, 9)


def _data(drop=()):
    x, y = regression(0, BATCH * STEPS, 4, 2)
    for s in SPIKES:
        y[s * BATCH:(s + 1) * BATCH] *= 1000.0
    keep = np.concatenate([np.arange(s * BATCH, (s + 1) * BATCH) for s in range(STEPS) if s not in drop])
    return x[keep], y[keep]


class Snap(keras.callbacks.Callback):
    def __init__(self, opt):
        super().__init__()
        self.opt, self.snaps, self.infos, self.before = opt, [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.before.append([to_np(w) for w in self.model.trainable_weights])

    def on_train_batch_end(self, batch, logs=None):
        weights = [to_np(w) for w in self.model.trainable_weights]
        inner = [to_np(v) for v in self.opt.inner_optimizer.variables]
        self.snaps.append((weights, inner))
        self.infos.append({k: float(to_np(v)) for k, v in self.opt.info.items()})


def _fit(loss, drop=(), loss_scale=False):
    opt = gradclip_keras.Optimizer(keras.optimizers.Adam(1e-2), gc.skip_on_spike(window=8, k=10.0, warmup=4, loss=loss))
    model = dense_model()
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(opt) if loss_scale else opt, loss="mse")
    snap = Snap(opt)
    x, y = _data(drop)
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[snap])
    return opt, snap


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _forward_mse(weights, x, y):
    w0, b0, w1, b1 = weights
    pred = np.tanh(x @ w0 + b0) @ w1 + b1
    return float(np.mean((pred - y) ** 2))


@pytest.mark.parametrize("loss", [False, True])
def test_spike_steps_are_skipped_inside_fit(loss):
    opt, snap = _fit(loss)
    assert [int(i["skipped"]) for i in snap.infos] == [int(s in SPIKES) for s in range(STEPS)]
    for s in SPIKES:
        (w0, i0), (w1, i1) = snap.snaps[s - 1], snap.snaps[s]
        assert _equal(w0, w1), f"weights moved on skipped step {s}"
        assert _equal(i0, i1), f"the inner optimizer's variables (moments, iterations) moved on step {s}"
    assert int(to_np(opt.iterations)) == STEPS - len(SPIKES)
    # the other steps equal a fit that never saw the spike batches
    _, kept = _fit(loss, drop=SPIKES)
    got = [s for i, s in enumerate(snap.snaps) if i not in SPIKES]
    for (wa, ia), (wb, ib) in zip(got, kept.snaps):
        np.testing.assert_allclose(np.concatenate([w.ravel() for w in wa]), np.concatenate([w.ravel() for w in wb]),
                                   rtol=1e-6, atol=1e-7)


def test_the_rule_gets_the_loss_the_trainer_computed():
    opt, snap = _fit(True)
    x, y = _data()
    for s in range(STEPS):
        want = _forward_mse(snap.before[s], x[s * BATCH:(s + 1) * BATCH], y[s * BATCH:(s + 1) * BATCH])
        assert snap.infos[s]["loss"] == pytest.approx(want, rel=1e-5), s
    assert snap.infos[SPIKES[0]]["loss_z"] > 4.0


def test_loss_reaches_the_rule_inside_a_loss_scale_optimizer():
    """LossScaleOptimizer(gradclip_keras.Optimizer(..., skip_on_spike(loss=True))) in fit: the rule gets the unscaled loss."""
    opt, snap = _fit(True, loss_scale=True)
    x, y = _data()
    assert [int(i["skipped"]) for i in snap.infos] == [int(s in SPIKES) for s in range(STEPS)]
    for s in range(STEPS):
        want = _forward_mse(snap.before[s], x[s * BATCH:(s + 1) * BATCH], y[s * BATCH:(s + 1) * BATCH])
        assert snap.infos[s]["loss"] == pytest.approx(want, rel=1e-5), s


def test_custom_loop_needs_set_loss():
    v = keras.Variable(np.ones(2, np.float32))
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.skip_on_spike(window=4, warmup=2, loss=True))
    g = [tensor([1.0, 1.0])]
    with pytest.raises(ValueError, match="set_loss"):
        opt.apply(g, [v])
    np.testing.assert_array_equal(to_np(v), [1.0, 1.0])
    opt.set_loss(tensor(2.0))
    opt.apply(g, [v])
    assert float(to_np(opt.info["loss"])) == 2.0
    np.testing.assert_allclose(to_np(v), [0.9, 0.9], rtol=1e-6)


# ---------------------------------------------------------------- the cost of a step that is not skipped
#
# A skipped step is skipped whole (tf.cond on TensorFlow, a Python branch on torch, a select of
# the old values under jax.jit), so the all-zero gradients that the rule's Skip effect makes of
# a skipped step are never read: the wrapper hands the inner optimizer the gradients under the
# skip. Forming them anyway cost a zero-filled array and a select per gradient on every step
# (TF and torch run op by op: 1.4x of global_clipnorm on GPT-2 small; XLA dropped them).

BACKEND = keras.backend.backend()
BIG_SHAPES = ((256, 512), (512,), (512, 256), (256,))  # two Dense kernels and their biases
BIG = 256 * 256  # the smallest array counted as full-size (the kernels, not the biases)


def _big_setup():
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.standard_normal(s, dtype=np.float32)) for s in BIG_SHAPES]
    grads = [keras.ops.convert_to_tensor(rng.standard_normal(s, dtype=np.float32)) for s in BIG_SHAPES]
    return variables, grads


def _tf_full_size_ops(optimizer):
    """Op type -> count of the ops writing a full-size tensor in ``tf.function(optimizer.apply)``'s graph.

    The branches of ``tf.cond`` (the wrapper's skip) are walked too; ops that move no data
    (placeholders, identities) are left out.
    """
    import collections

    import tensorflow as tf

    variables, _ = _big_setup()
    optimizer.build(variables)

    @tf.function
    def step(gs):
        optimizer.apply(gs, variables)

    def walk(graph):
        for op in graph.get_operations():
            yield op
            for attr in ("then_branch", "else_branch"):
                try:
                    fn = op.get_attr(attr)
                except (ValueError, TypeError):
                    continue
                yield from walk(graph._get_function(fn.name).graph)

    graph = step.get_concrete_function([tf.TensorSpec(s, tf.float32) for s in BIG_SHAPES]).graph
    out = collections.Counter()
    for op in walk(graph):
        if op.type in ("Placeholder", "Identity", "IdentityN"):
            continue
        out[op.type] += sum(1 for t in op.outputs if t.shape.is_fully_defined() and t.shape.num_elements() >= BIG)
    return +out


@pytest.mark.skipif(BACKEND != "tensorflow", reason="counts the ops of the TensorFlow step's graph")
def test_tf_step_forms_no_zeroed_gradients():
    sgd = _tf_full_size_ops(keras.optimizers.SGD(1e-3))
    spike = _tf_full_size_ops(gradclip_keras.Optimizer(keras.optimizers.SGD(1e-3), gc.skip_on_spike()))
    assert spike == sgd, (spike, sgd)  # the norm reads the gradients; nothing full-size is written but SGD's
    clip = _tf_full_size_ops(gradclip_keras.Optimizer(keras.optimizers.SGD(1e-3), gc.clip_by_global_norm(1.0)))
    guarded = _tf_full_size_ops(
        gradclip_keras.Optimizer(keras.optimizers.SGD(1e-3), gc.clip_by_global_norm(1.0, nonfinite="skip")))
    assert guarded - clip == {"IsFinite": 2}, (guarded, clip)  # the finiteness check, no select, no zeros


@pytest.mark.skipif(BACKEND != "torch", reason="records the torch ops of an eager step")
def test_torch_step_makes_no_gradient_sized_tensor():
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class FullSize(TorchDispatchMode):
        """Counts the aten ops that return a full-size tensor (foreach in-place updates return none)."""

        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor) and o.numel() >= BIG:
                    self.ops[func.overloadpacket.__name__] += 1
            return out

    def made(optimizer):
        variables, grads = _big_setup()
        optimizer.build(variables)
        optimizer.apply(grads, variables)  # (first step: build-time work out of the count)
        before = [to_np(v) for v in variables]
        with FullSize() as rec:
            optimizer.apply(grads, variables)
        assert not all(np.array_equal(to_np(v), b) for v, b in zip(variables, before))  # the step was taken
        return +rec.ops

    sgd = made(keras.optimizers.SGD(1e-3))
    spike = made(gradclip_keras.Optimizer(keras.optimizers.SGD(1e-3), gc.skip_on_spike()))
    assert spike == sgd, (spike, sgd)
    clip = made(gradclip_keras.Optimizer(keras.optimizers.SGD(1e-3), gc.clip_by_global_norm(1.0)))
    guarded = made(gradclip_keras.Optimizer(keras.optimizers.SGD(1e-3), gc.clip_by_global_norm(1.0, nonfinite="skip")))
    assert not {"zeros_like", "where"} & set(guarded - clip), (guarded, clip)


def _flag_rule(kind):
    """A hand-made rule that skips every step: by its effect only (``Skip``, no info), or by its info only."""
    from keras import ops

    def by_effect(grads, state, params=None):
        return gc.Skip(gc.Keep(), ops.convert_to_tensor(True)), state, {}

    def by_info(grads, state, params=None):
        return [ops.zeros_like(g) for g in grads], state, {"skipped": ops.convert_to_tensor(1, "int32")}

    if kind == "effect":
        return gc.Rule(update_effect=by_effect, name="skip_by_effect")
    return gc.Rule(update=by_info, name="skip_by_info")


@pytest.mark.parametrize("kind", ["effect", "info"])
def test_a_skip_signalled_either_way_is_a_true_skip(kind):
    """A rule's Skip effect or its info["skipped"] alone skips the inner step: weights, momentum, iterations stay."""
    model = dense_model()
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.1, momentum=0.9), _flag_rule(kind))
    model.compile(optimizer=opt, loss="mse")
    x, y = _data()
    before = [to_np(w) for w in model.trainable_weights]
    model.fit(x[:2 * BATCH], y[:2 * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    for a, b in zip(model.trainable_weights, before):
        np.testing.assert_array_equal(to_np(a), b)
    assert int(to_np(opt.iterations)) == 0
    for v in opt.inner_optimizer.variables:
        if len(v.shape):  # the momentum slots
            np.testing.assert_array_equal(to_np(v), np.zeros(v.shape, np.float32))
