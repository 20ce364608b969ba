"""Telemetry in Keras: gc.monitor and gc.update_ratio in fit, through LogInfo into every step's logs.

(The logs are read by a callback listed before LogInfo, where keras.callbacks.TensorBoard reads
them: test_keras_optimizer.py checks that place.)
"""

import keras
import numpy as np

import gradclip_core as gc
import gradclip_keras

from ..fixtures import regression
from .util import dense_model


def test_fit_logs_named_norms_clip_rate_and_update_ratio():
    """Every step's logs hold norm/<variable path>, post_norm, clip_rate and the update ratio (nested wrappers)."""
    batch_logs = []

    class Reader(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batch_logs.append({k: float(v) for k, v in logs.items()})

    inner = gradclip_keras.Optimizer(keras.optimizers.SGD(0.01), gc.update_ratio())
    opt = gradclip_keras.Optimizer(inner, gc.monitor(gc.clip_by_global_norm(1.0)))
    model = dense_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = regression(0, 32, 4, 2, y_scale=50.0)
    paths = [v.path for v in model.trainable_variables]
    w0 = np.sqrt(sum(np.sum(np.asarray(v.numpy(), np.float64) ** 2) for v in model.trainable_variables))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[Reader(), gradclip_keras.LogInfo()])
    assert len(batch_logs) == 4
    for step, logs in enumerate(batch_logs):
        per_array = [logs[f"gradclip/norm/{p}"] for p in paths]
        np.testing.assert_allclose(logs["gradclip/norm"], np.sqrt(np.sum(np.square(per_array))), rtol=1e-5)
        assert logs["gradclip/norm"] > 1 and abs(logs["gradclip/post_norm"] - 1.0) < 1e-5  # y_scale=50: always clipped
        assert logs["gradclip/clip_rate"] == 1.0 and logs["gradclip/clipped"] == 1.0
        if step == 0:  # the weights before the first step (later: the variables are not synced during fit on JAX)
            np.testing.assert_allclose(logs["gradclip/weight_norm"], w0, rtol=1e-6)
        np.testing.assert_allclose(logs["gradclip/ratio"], logs["gradclip/update_norm"] / logs["gradclip/weight_norm"],
                                   rtol=1e-6)
        # SGD: the step is lr * the clipped gradient, whose norm post_norm is
        np.testing.assert_allclose(logs["gradclip/update_norm"], 0.01 * logs["gradclip/post_norm"], rtol=1e-4)
