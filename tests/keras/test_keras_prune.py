"""Pruning in Keras: ``gradclip_keras.strip`` / ``masks``, and a polynomial schedule with ``Callback``."""

import os
import zipfile

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras

from ..fixtures import regression
from .util import dense_model, to_np


def _model(seed=0):
    return dense_model(seed, (8, 16, 2))


def _data(n=64):
    return regression(1, n, 8, 2)


def _weight_names(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        text = "".join(z.read(n).decode("utf-8", "replace") for n in names if n.endswith(".json"))
        if "model.weights.h5" in names:
            import h5py

            z.extract("model.weights.h5", os.path.dirname(path))
            found = []
            with h5py.File(os.path.join(os.path.dirname(path), "model.weights.h5")) as f:
                f.visit(found.append)
            text += " ".join(found)
    return text


def test_strip_model_zeroes_pruned_weights_and_saves_without_gradclip_state(tmp_path):
    model = _model()
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.01, momentum=0.9), gc.global_magnitude_prune(0.6))
    model.compile(optimizer=opt, loss="mse", metrics=["mae"])
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    keep = [to_np(m) for m in gradclip_keras.masks(model)]
    n = sum(m.size for m in keep)
    assert sum(int((~m).sum()) for m in keep) == round(0.6 * n)
    # drift the pruned weights (as an update outside the wrapper would): strip must zero them again
    for v, m in zip(model.trainable_variables, keep):
        v.assign(np.where(m, to_np(v), np.float32(0.5)))
    before = [to_np(v) for v in model.trainable_variables]
    iterations = int(to_np(opt.iterations))

    out = gradclip_keras.strip(model)

    assert out is model
    for v, m, b in zip(model.trainable_variables, keep, before):
        np.testing.assert_array_equal(to_np(v), np.where(m, b, np.float32(0)))
    assert model.optimizer is opt.inner_optimizer and not isinstance(model.optimizer, gradclip_keras.Optimizer)
    assert int(to_np(model.optimizer.iterations)) == iterations  # the inner optimizer's state is kept
    path = str(tmp_path / "stripped.keras")
    model.save(path)
    assert "gradclip" not in _weight_names(path)
    loaded = keras.saving.load_model(path)  # no gradclip custom objects needed
    for a, b in zip(loaded.trainable_variables, model.trainable_variables):
        np.testing.assert_array_equal(to_np(a), to_np(b))
    assert isinstance(loaded.optimizer, keras.optimizers.SGD)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # still trains, now without pruning


def test_callback_polynomial_schedule_to_80_percent_then_strip():
    model = _model(1)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    schedule = gc.polynomial_schedule(0, 12, frequency=3, initial_sparsity=0.2)
    cb = gradclip_keras.Callback(gc.global_magnitude_prune(0.8, schedule=schedule), every=1)
    x, y = _data()
    history = model.fit(x, y, batch_size=16, epochs=5, callbacks=[cb], verbose=0)  # 4 batches per epoch
    sparsity = history.history["gradclip/sparsity"]
    n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert sparsity == sorted(sparsity) and sparsity[0] > 0.2 and sparsity[-1] == pytest.approx(round(0.8 * n) / n)
    assert "gradclip/threshold" in history.history
    keep = [to_np(m) for m in gradclip_keras.masks(cb)]
    assert model is gradclip_keras.strip(cb)
    zeros = sum(int((to_np(v)[~m] == 0).all()) for v, m in zip(model.trainable_variables, keep))
    assert zeros == len(keep)
    assert sum(int((~m).sum()) for m in keep) == round(0.8 * n)


def test_strip_optimizer_returns_the_inner_optimizer_and_errors():
    model = _model()
    inner = keras.optimizers.Adam(1e-3)
    opt = gradclip_keras.Optimizer(inner, gc.chain(gc.clip_by_global_norm(1.0), gc.magnitude_prune(0.5)))
    with pytest.raises(ValueError, match="not built"):
        gradclip_keras.strip(opt)
    model.compile(optimizer=opt, loss="mse")
    x, y = _data(16)
    model.fit(x, y, verbose=0)
    assert gradclip_keras.strip(opt) is inner
    for v in model.trainable_variables:
        w = to_np(v)
        assert int((w == 0).sum()) == round(0.5 * w.size)  # per array (kernels and biases)

    plain = _model()
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="not a gradclip_keras.Optimizer"):
        gradclip_keras.strip(plain)
    with pytest.raises(ValueError, match="no state yet"):
        gradclip_keras.strip(gradclip_keras.Callback(gc.magnitude_prune(0.5)))
    with pytest.raises(TypeError, match="expected a keras.Model"):
        gradclip_keras.strip(inner)
    lso = _model()
    lso.compile(optimizer=keras.optimizers.LossScaleOptimizer(gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.magnitude_prune(0.5))), loss="mse")
    with pytest.raises(ValueError, match="LossScaleOptimizer"):
        gradclip_keras.strip(lso)
