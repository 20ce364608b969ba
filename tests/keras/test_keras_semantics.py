"""``semantics="keras"`` through the wrapper equals Keras' own clipping options, bit for bit.

Two identical models train for several steps with ``model.fit`` on the same data: one
with ``SGD(global_clipnorm=c)`` (or ``clipnorm``, ``clipvalue``), one with
``gradclip_keras.Optimizer(SGD(), rule)``. Both go through the same trainer (a
``tf.function``, a jitted ``stateless_apply``, or eager torch); the rule performs the
same operations in the same order as ``BaseOptimizer._clip_gradients``, so the weights
must be identical in float32.
"""

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras

from ..fixtures import rand_arrays, regression
from .util import dense_model, to_np

STEPS = 4


def _train(optimizer):
    model = dense_model(0, (5, 8, 3, 2))
    model.compile(optimizer=optimizer, loss="mse")
    x, y = regression(1, STEPS * 4, 5, 2, y_scale=30.0)  # big targets: gradients get clipped
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return [to_np(w) for w in model.trainable_weights], model


@pytest.mark.parametrize(
    "native, rule",
    [
        ({"global_clipnorm": 1.0}, gc.clip_by_global_norm(1.0, semantics="keras")),
        ({"global_clipnorm": 0.05}, gc.clip_by_global_norm(0.05, semantics="keras")),
        ({"clipnorm": 0.5}, gc.clip_by_norm(0.5, semantics="keras")),
        ({"clipvalue": 0.1}, gc.clip_by_value(0.1)),
    ],
    ids=["global", "global-tight", "clipnorm", "clipvalue"],
)
def test_wrapper_equals_native_option_bit_for_bit(native, rule):
    want, _ = _train(keras.optimizers.SGD(0.01, **native))
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.01), rule)
    got, _ = _train(opt)
    plain, _ = _train(keras.optimizers.SGD(0.01))
    assert any(not np.array_equal(a, b) for a, b in zip(want, plain)), "the case must actually clip"
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert int(to_np(opt.iterations)) == STEPS


def test_global_norm_info_equals_keras_global_norm():
    from keras.src.optimizers.base_optimizer import global_norm

    grads = [keras.ops.convert_to_tensor(g) for g in rand_arrays(0, [(4, 3), (3,), ()], 10.0)]
    variables = [keras.Variable(np.zeros(tuple(g.shape), np.float32)) for g in grads]
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(1.0), gc.clip_by_global_norm(1.0, semantics="keras"))
    opt.apply(grads, variables)
    assert to_np(opt.info["norm"]) == to_np(global_norm(grads))


def test_wrapper_inside_loss_scale_optimizer_equals_native_global_clipnorm():
    # LossScaleOptimizer hands the wrapper its Variables inside a StatelessScope (JAX
    # trainer) and unscales before the inner step: the clip must see unscaled gradients.
    want, _ = _train(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01, global_clipnorm=1.0)))
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.01), gc.clip_by_global_norm(1.0, semantics="keras"))
    got, _ = _train(keras.optimizers.LossScaleOptimizer(opt))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert float(to_np(opt.info["norm"])) > 1.0  # the last step's unscaled norm: it clipped
    assert int(to_np(opt.iterations)) == STEPS
