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
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.01, momentum=0.9), gc.global_magnitude_prune(0.6, params="all"))
    model.compile(optimizer=opt, loss="mse", metrics=["mae"])
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    keep = [to_np(m) for m in gradclip_keras.masks(model)]
    n = sum(m.size for m in keep)
    assert sum(int((~m).sum()) for m in keep) == round(0.6 * n)
    kernel = model.layers[0].kernel  # per-array info named by variable path, not position
    assert float(to_np(opt.info[f"sparsity/{kernel.path}"])) == pytest.approx(float((~keep[0]).mean()))
    assert "sparsity/0" not in opt.info
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
    cb = gradclip_keras.Callback(gc.global_magnitude_prune(0.8, schedule=schedule, params="all"), every=1)
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
    for v in model.trainable_variables:  # per array, the weights (rank >= 2) only by default
        w = to_np(v)
        assert int((w == 0).sum()) == (round(0.5 * w.size) if w.ndim >= 2 else 0)

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


def _schedule_callback(**kwargs):
    schedule = gc.polynomial_schedule(0, 12, frequency=3, initial_sparsity=0.2)
    return gradclip_keras.Callback(gc.global_magnitude_prune(0.8, schedule=schedule, params="all"), **kwargs)


def test_callback_schedule_follows_optimizer_steps_with_steps_per_execution_or_every():
    """Run once per 4 steps (steps_per_execution=4, or every=4): the schedule still counts steps (was 0.46 vs 0.70)."""
    x, y = _data()
    configs = [(1, {}), (1, {"every": 4, "start": 4})] + ([(4, {})] if keras.backend.backend() != "torch" else [])
    history = []
    for spe, kwargs in configs:
        model = _model(1)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", steps_per_execution=spe)
        cb = _schedule_callback(**kwargs)
        history.append(model.fit(x, y, batch_size=16, epochs=4, callbacks=[cb], verbose=0).history["gradclip/sparsity"])
        assert cb.steps == int(to_np(model.optimizer.iterations)) == 16
    n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    for other in history[1:]:
        assert other == pytest.approx(history[0], abs=1e-7)
    assert history[0][-1] == pytest.approx(round(0.8 * n) / n)


def test_callback_resumed_from_a_saved_model_continues_the_schedule(tmp_path):
    """A new Callback on a reloaded model continues the schedule and the masks (was restarted: 0.641 instead of 0.8)."""
    x, y = _data()
    whole = _model(1)
    whole.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    cb = _schedule_callback()
    want = whole.fit(x, y, batch_size=16, epochs=5, shuffle=False, callbacks=[cb], verbose=0).history["gradclip/sparsity"]

    first = _model(1)
    first.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    first.fit(x, y, batch_size=16, epochs=2, shuffle=False, callbacks=[_schedule_callback()], verbose=0)
    path = tmp_path / "pruning.keras"
    first.save(path)
    resumed = keras.saving.load_model(path)
    again = _schedule_callback()
    got = resumed.fit(x, y, batch_size=16, epochs=5, initial_epoch=2, shuffle=False, callbacks=[again], verbose=0)
    assert got.history["gradclip/sparsity"] == pytest.approx(want[2:], abs=1e-7)
    for a, b in zip(gradclip_keras.masks(again), gradclip_keras.masks(cb)):
        np.testing.assert_array_equal(to_np(a), to_np(b))
    for a, b in zip(resumed.trainable_variables, whole.trainable_variables):
        np.testing.assert_allclose(to_np(a), to_np(b), rtol=1e-6, atol=1e-7)


def test_callback_is_compiled_once_on_jax_and_logs_sparsity_by_variable_path():
    """JAX: project traced once per callback (it ran eagerly, ~0.6 s a call); info keys name the variables."""
    base = gc.global_magnitude_prune(0.5, schedule=gc.constant_schedule(0, -1, 4))
    calls = []

    def project(params, state):
        calls.append(1)
        return base.project(params, state)

    cb = gradclip_keras.Callback(gc.Rule(init=base.init, project=project, name="counted"))
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x, y = _data()
    logs = model.fit(x, y, batch_size=16, epochs=3, callbacks=[cb], verbose=0).history
    assert len(calls) == (1 if keras.backend.backend() == "jax" else 12)  # traced once / eager per step
    kernel = model.layers[0].kernel.path
    assert f"gradclip/sparsity/{kernel}" in logs and "gradclip/sparsity/0" not in logs
    assert logs[f"gradclip/sparsity/{kernel}"][-1] == pytest.approx(float((to_np(model.layers[0].kernel) == 0).mean()))


class _Counting(gradclip_keras.Callback):
    """Counts the project calls the callback makes."""

    def _project_fn(self):
        fn = super()._project_fn()

        def counted(values, state):
            self.calls += 1
            return fn(values, state)

        return counted


def _ticks():
    """A stateful rule that changes nothing: a chain with it must be replayed step by step."""
    from typing import NamedTuple

    class Ticks(NamedTuple):
        n: object

    return gc.Rule(init=lambda p: Ticks(keras.ops.zeros((), "int32")), project=lambda p, s: (p, Ticks(s.n + 1), {}),
                   name="ticks")


def test_callback_catch_up_jumps_to_schedule_steps_and_equals_the_step_by_step_replay():
    """Resuming at step 40 costs a call per recomputation (+1), not 40, with the same masks and weights."""
    prune = [gc.global_magnitude_prune(0.8, schedule=gc.polynomial_schedule(0, 30, frequency=10, initial_sparsity=0.2)),
             gc.magnitude_prune(0.3, schedule=gc.constant_schedule(5, 25, 10))]
    out = {}
    for name, rule in [("jump", gc.chain(*prune)), ("replay", gc.chain(*prune, _ticks()))]:
        model = _model(2)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(40)  # as a reloaded checkpoint
        cb = _Counting(rule)
        cb.calls = 0
        cb.set_model(model)
        cb.on_train_begin()
        assert cb.steps == 40 and [int(to_np(s.count)) for s in cb.state[:2]] == [40, 40]
        out[name] = (cb.calls, [to_np(v) for v in model.trainable_variables], [to_np(m) for m in gradclip_keras.masks(cb)])
    assert out["jump"][0] == 8 and out["replay"][0] == 40  # recomputations at 0, 5, 10, 15, 20, 25, 30, then step 39
    for a, b in zip(out["jump"][1] + out["jump"][2], out["replay"][1] + out["replay"][2]):
        np.testing.assert_array_equal(a, b)


def test_callback_params_by_variable_path():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    keep = model.layers[-1].kernel.path
    cb = gradclip_keras.Callback(gc.magnitude_prune(0.5, params=gc.Params(exclude=[keep], min_ndim=2)))
    x, y = _data(16)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[cb], verbose=0)
    zeros = {v.path: float((to_np(v) == 0).mean()) for v in model.trainable_variables}
    assert zeros[model.layers[0].kernel.path] == 0.5 and zeros[keep] == 0 and zeros[model.layers[0].bias.path] == 0


def test_wanda_with_activation_norms_of_dense_inputs():
    # Wanda (Sun et al. 2023): |W_ij| * ||X_j||_2; Keras kernels are (in, out): input channel = axis 0.
    model = _model(3)
    x, y = _data(32)
    batches = [x[:16], x[16:]]
    norms = gradclip_keras.activation_norms(model, batches)
    kernels = [w for w in model.trainable_weights if len(w.shape) == 2]
    assert sorted(norms) == sorted(k.path for k in kernels)
    assert np.allclose(norms[kernels[0].path], np.linalg.norm(np.asarray(x, np.float64), axis=0), rtol=1e-5)
    before = {k.path: to_np(k).astype(np.float64) for k in kernels}
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.0), gc.wanda_prune(0.5, act_norms=norms))
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for kernel, mask in zip(kernels, [m for m in gradclip_keras.masks(model) if len(m.shape) == 2]):
        w = before[kernel.path]
        metric = (np.abs(w) * norms[kernel.path].astype(np.float64).reshape(-1, 1)).ravel()
        keep = np.ones(w.size, bool)
        keep[np.argsort(metric, kind="stable")[: round(0.5 * w.size)]] = False
        assert np.array_equal(to_np(mask), keep.reshape(w.shape))
