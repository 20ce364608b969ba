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
