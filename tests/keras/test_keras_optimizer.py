"""``gradclip_keras.Optimizer``: fit, info, saving, stateless_apply, skip in fit, project, layout.

Resume from a ``.keras`` file and the true skip of ``apply`` / ``stateless_apply`` under
jit are the contract of every integration path: tests/parity/test_contract.py (its
``keras_<backend>`` ids run in the Keras processes).
"""

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras

from ..fixtures import regression
from .util import dense_model, keras_variables, tensor, to_np

BACKEND = keras.backend.backend()


def _xy(n=32):
    return regression(0, n, 4, 2, y_scale=50.0)


@pytest.fixture(scope="module")
def fitted():
    """One compiled-and-fitted model for the module (compiling is the slow part)."""
    rule = gc.chain(gc.clip_by_value(5.0, info="full"), gc.clip_by_global_norm(1.0, semantics="keras"))
    opt = gradclip_keras.Optimizer(keras.optimizers.Adam(1e-2), rule)
    model = dense_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = _xy()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[gradclip_keras.LogInfo()])
    return model, opt, history


def test_fit_trains_and_exposes_info(fitted):
    model, opt, history = fitted
    assert int(to_np(opt.iterations)) == 8
    info = {k: float(to_np(v)) for k, v in opt.gradclip_info.items()}
    assert set(info) == {"clip_by_value/clipped_fraction", "clip_by_global_norm/norm", "clip_by_global_norm/scale"}
    assert info["clip_by_global_norm/norm"] > 1.0 and 0 < info["clip_by_global_norm/scale"] < 1
    logs = history.history
    assert logs["gradclip/clip_by_global_norm/norm"][-1] == pytest.approx(info["clip_by_global_norm/norm"])
    assert len(logs["loss"]) == 2


def test_save_and_load_reloads_wrapper_rule_and_state(fitted, tmp_path):
    model, opt, _ = fitted
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    lopt = loaded.optimizer
    assert isinstance(lopt, gradclip_keras.Optimizer)
    assert lopt.rule.config == opt.rule.config
    assert isinstance(lopt.inner_optimizer, keras.optimizers.Adam)
    assert float(to_np(lopt.learning_rate)) == pytest.approx(1e-2)
    for a, b in zip(loaded.trainable_weights, model.trainable_weights):
        np.testing.assert_array_equal(to_np(a), to_np(b))
    assert len(lopt.variables) == len(opt.variables)
    for a, b in zip(lopt.variables, opt.variables):  # Adam moments, iterations, rule info
        np.testing.assert_array_equal(to_np(a), to_np(b))
    x, y = _xy(8)
    loaded.fit(x, y, batch_size=8, verbose=0)  # keeps training
    assert int(to_np(lopt.iterations)) == 9


def test_config_round_trip():
    rule = gc.chain(gc.clip_by_norm(2.0, ord="inf"), gc.adaptive_clip(0.1, axis=(0,)))
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.5, momentum=0.9), rule, name="wrapped")
    config = keras.saving.serialize_keras_object(opt)
    again = keras.saving.deserialize_keras_object(config)
    assert again.rule.config == rule.config and again.name == "wrapped"
    assert again.inner_optimizer.get_config()["momentum"] == 0.9


def _grads(values):
    return [tensor(v) for v in values]


def test_nonfinite_skip_inside_fit():
    model = dense_model()
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.clip_by_global_norm(1.0, nonfinite="skip"))
    model.compile(optimizer=opt, loss="mse")
    x, y = _xy(8)
    y[0, 0] = np.nan
    before = [to_np(w) for w in model.trainable_weights]
    model.fit(x, y, batch_size=8, verbose=0)
    for a, b in zip(model.trainable_weights, before):
        np.testing.assert_array_equal(to_np(a), b)
    assert int(to_np(opt.info["skipped"])) == 1 and int(to_np(opt.iterations)) == 0


def _halve_rule():
    """A weight rule with state (a step counter) and info, built in the test with gc.Rule."""
    from typing import NamedTuple

    from keras import ops

    class Count(NamedTuple):
        count: object

    def init(params):
        return Count(ops.zeros((), dtype="int32"))

    def project(params, state):
        return [p * 0.5 for p in params], Count(state.count + 1), {"count": state.count + 1}

    return gc.Rule(init=init, project=project, name="halve")


def test_project_runs_after_inner_step_with_state_in_variables():
    variables = keras_variables()
    start = [to_np(v) for v in variables]
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.5), _halve_rule())
    g = [np.full((3, 2), 2.0, np.float32), np.full(2, 2.0, np.float32)]
    opt.apply(_grads(g), variables)
    opt.apply(_grads(g), variables)
    want = [((s - 1.0) * 0.5 - 1.0) * 0.5 for s in start]
    for v, w in zip(variables, want):
        np.testing.assert_allclose(to_np(v), w, rtol=1e-6)
    assert int(to_np(opt.gradclip_state[0])) == 2 and int(to_np(opt.info["count"])) == 2


def test_none_gradients_and_subsets():
    variables = keras_variables(((2,), (2,), (2,)))
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(1.0), gc.clip_by_global_norm(1.0))
    opt.build(variables)
    before = to_np(variables[1])
    opt.apply([tensor([3.0, 0.0]), None, tensor([0.0, 4.0])], variables)
    np.testing.assert_array_equal(to_np(variables[1]), before)  # no gradient: untouched
    assert float(to_np(opt.info["norm"])) == 5.0
    opt.apply([tensor([0.0, 2.0])], [variables[2]])  # a subset of the built variables
    assert float(to_np(opt.info["norm"])) == 2.0


def test_adaptive_clip_uses_keras_layout_on_every_backend():
    # Dense kernel (in=3, out=2): units are columns. Column 0 has a big gradient.
    w = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
    g = np.array([[10.0, 0.01], [0.0, 0.01], [0.0, 0.01]], np.float32)
    var = keras.Variable(w)
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(1.0), gc.adaptive_clip(0.1))
    opt.apply([tensor(g)], [var])
    expected = w - np.asarray(gc.adaptive_clip(0.1, axis="out_last").update([g], (), [w])[0][0])
    np.testing.assert_allclose(to_np(var), expected, rtol=1e-6)


def test_loss_scale_factor_moves_to_wrapper():
    inner = keras.optimizers.SGD(1.0, loss_scale_factor=128.0)
    opt = gradclip_keras.Optimizer(inner, gc.clip_by_global_norm(1.0))
    assert inner.loss_scale_factor is None
    assert float(to_np(opt.scale_loss(keras.ops.ones(())))) == 128.0
    var = keras.Variable(np.zeros(2, np.float32))
    opt.apply([tensor([3.0 * 128, 4.0 * 128])], [var])
    assert float(to_np(opt.info["norm"])) == 5.0  # the rule saw unscaled gradients


def test_bad_arguments():
    with pytest.raises(TypeError, match="gradclip_core.Rule"):
        gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), "clip")
    with pytest.raises(TypeError, match="keras.optimizers.Optimizer"):
        gradclip_keras.Optimizer(object(), gc.clip_by_value(1.0))
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        gradclip_keras.Optimizer(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), gc.clip_by_value(1.0))
    with pytest.raises(ValueError, match="unknown arguments"):
        gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.clip_by_value(1.0), clipnorm=1.0)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="Keras has no stateless_apply on the TensorFlow backend")
def test_stateless_apply_threads_rule_state_and_info():
    variables = keras_variables()
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.5), gc.chain(gc.clip_by_global_norm(1.0), _halve_rule()))
    opt.build(variables)
    before = to_np(variables[0])
    # copies: Keras' torch SGD updates the tensors it is given in place, even in stateless_apply
    tvs = [keras.ops.convert_to_tensor(to_np(v)) for v in variables]
    ovs = [keras.ops.convert_to_tensor(to_np(v)) for v in opt.variables]
    g = _grads([np.full((3, 2), 3.0), np.full(2, 3.0)])
    new_t, new_o = opt.stateless_apply(ovs, g, tvs)
    # nothing was assigned: the Keras variables still hold the old values
    np.testing.assert_array_equal(to_np(variables[0]), before)
    assert int(to_np(opt.gradclip_state[0])) == 0
    # the same step through stateful apply gives the same values
    opt.apply(g, variables)
    for a, b in zip(new_t, variables):
        np.testing.assert_array_equal(to_np(a), to_np(b))
    for a, b in zip(new_o, opt.variables):
        np.testing.assert_array_equal(to_np(a), to_np(b))
    assert float(to_np(opt.info["clip_by_global_norm/norm"])) == pytest.approx(np.sqrt(8 * 9))
    assert int(to_np(opt.info["halve/count"])) == 1


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX trainer jit-compiles the train step; its cache is what is tested")
@pytest.mark.parametrize("rule", ["zclip", "autoclip", "prune"])
def test_jax_fit_compiles_the_train_step_once(rule, caplog):
    """Stateful rules: one compilation per fit (it was three: the rule state arrived committed to a device)."""
    import logging

    import jax

    rule = {"zclip": gc.zclip(), "autoclip": gc.autoclip(10, 8), "prune": gc.global_magnitude_prune(0.5)}[rule]
    model = dense_model()
    model.compile(optimizer=gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), rule), loss="mse")
    x, y = _xy(32)
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    compiles = [r for r in caplog.records if "Compiling jit(train_step)" in r.getMessage()]
    assert len(compiles) == 1


def test_loss_scale_optimizer_inside_is_refused_and_outside_trains():
    """``Optimizer(LossScaleOptimizer(inner))`` never scaled the loss but divided by 32768: it did not train."""
    with pytest.raises(ValueError, match=r"LossScaleOptimizer\(gradclip_keras.Optimizer\(inner, rule\)\)"):
        gradclip_keras.Optimizer(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)), gc.clip_by_global_norm(1e6))
    x, y = _xy(8)
    moved = {}
    for name, opt in [("plain", keras.optimizers.SGD(0.01)),
                      ("wrapped", keras.optimizers.LossScaleOptimizer(
                          gradclip_keras.Optimizer(keras.optimizers.SGD(0.01), gc.clip_by_global_norm(1e6))))]:
        model = dense_model()
        before = [to_np(w) for w in model.trainable_weights]
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=8, verbose=0)
        moved[name] = [to_np(w) - b for w, b in zip(model.trainable_weights, before)]
    assert np.abs(moved["plain"][0]).max() > 1e-2
    for a, b in zip(moved["wrapped"], moved["plain"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_reuse_on_a_second_model_behaves_like_keras():
    """A wrapper built for one model, compiled into another: Keras' own error (was a raw KeyError)."""
    x, y = _xy(8)
    outcome = {}
    for name, make in [("keras", lambda: keras.optimizers.SGD(0.1)),
                       ("wrapper", lambda: gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.clip_by_global_norm(1.0)))]:
        opt = make()
        first = dense_model()
        first.compile(optimizer=opt, loss="mse")
        first.fit(x, y, verbose=0)
        second = dense_model(1)
        second.compile(optimizer=opt, loss="mse")
        before = [to_np(w) for w in second.trainable_weights]
        try:
            second.fit(x, y, verbose=0)
            outcome[name] = "trained"
        except ValueError as e:
            outcome[name] = str(e).split(":")[0]
            assert "recreate a new optimizer instance" in str(e)
            for w, b in zip(second.trainable_weights, before):  # nothing half-applied
                np.testing.assert_array_equal(to_np(w), b)
    assert outcome["wrapper"] == outcome["keras"]
    assert outcome["keras"] == ("trained" if BACKEND == "jax" else "Unknown variable")  # JAX maps values by position


@pytest.mark.parametrize("loss_scale", [False, True])
def test_log_info_reaches_callbacks_listed_before_it(loss_scale):
    """A callback before LogInfo (TensorBoard's place in the issue) saw no gradclip values; now the step's logs hold them."""
    batch_logs, epoch_logs = [], []

    class Reader(keras.callbacks.Callback):  # reads the logs where TensorBoard does
        def on_train_batch_end(self, batch, logs=None):
            batch_logs.append(dict(logs))

        def on_epoch_end(self, epoch, logs=None):
            epoch_logs.append(dict(logs))

    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.01), gc.clip_by_global_norm(1.0))
    model = dense_model()
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(opt) if loss_scale else opt, loss="mse")
    x, y = _xy(16)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[Reader(), gradclip_keras.LogInfo()])
    norms = [logs["gradclip/norm"] for logs in batch_logs]
    assert len(norms) == 4 and len(set(norms)) == 4 and all(n > 1 for n in norms)
    assert [logs["gradclip/norm"] for logs in epoch_logs] == [norms[1], norms[3]]  # each epoch's last step
    assert norms[-1] == pytest.approx(float(to_np(opt.info["norm"])))
    assert all(logs["loss"] > 0 for logs in epoch_logs)
    assert not hasattr(model.train_function, "_gradclip_log_info")  # restored after fit


def test_inner_clipping_options_warn_weight_decay_and_repr():
    import warnings

    with pytest.warns(UserWarning, match=r"clipped twice.*global_clipnorm=c is gc.clip_by_global_norm"):
        gradclip_keras.Optimizer(keras.optimizers.SGD(0.1, global_clipnorm=1.0), gc.clip_by_global_norm(1.0))
    for option in ("clipnorm", "clipvalue"):
        with pytest.warns(UserWarning, match=f"{option}=0.5"):
            gradclip_keras.Optimizer(keras.optimizers.SGD(0.1, **{option: 0.5}), gc.clip_by_value(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = gradclip_keras.Optimizer(keras.optimizers.AdamW(1e-3, weight_decay=0.01), gc.clip_by_global_norm(1.0))
    assert opt.weight_decay == 0.01  # was None: the wrapper's own
    opt.weight_decay = 0.02
    assert opt.inner_optimizer.weight_decay == 0.02
    assert repr(opt) == ("gradclip_keras.Optimizer(AdamW(learning_rate=0.001, weight_decay=0.02), "
                         "clip_by_global_norm(max_norm=1.0, ord=2, semantics=None, nonfinite='propagate'))")


def test_nonfinite_raise_in_fit_says_run_eagerly():
    x, y = _xy(8)
    y[0, 0] = np.nan

    def fit(run_eagerly):
        model = dense_model()
        opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.clip_by_global_norm(1.0, nonfinite="raise"))
        model.compile(optimizer=opt, loss="mse", run_eagerly=run_eagerly)
        before = [to_np(w) for w in model.trainable_weights]
        with pytest.raises((RuntimeError, FloatingPointError)) as err:
            model.fit(x, y, batch_size=8, verbose=0)
        if BACKEND != "jax":  # (Keras' JAX trainer leaves the model's variables purged after any failed step)
            for w, b in zip(model.trainable_weights, before):  # nothing applied
                np.testing.assert_array_equal(to_np(w), b)
        return err.value

    if BACKEND != "torch":  # torch's fit runs eagerly by default
        err = fit(False)
        assert isinstance(err, RuntimeError) and "run_eagerly=True" in str(err)
    assert isinstance(fit(True), FloatingPointError)


_COMPILED_RULE = """
import warnings
import keras, torch
import gradclip_core as gc, gradclip_keras
gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.zclip())  # what compile(optimizer=...) does first
rule = gc.chain(gc.zclip(), gc.clip_by_global_norm(1.0))
state = rule.init([torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))])  # Keras' variables
step = torch.compile(lambda g, s: rule.update(g, s))  # as in a jit_compile=True train step
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    step([torch.full((3,), 2.0), torch.ones(2)], state)
print(sum("lru_cache" in str(w.message) for w in caught))
"""


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile (jit_compile=True) only")
def test_torch_compiled_step_has_no_dynamo_lru_cache_warnings():
    """The first namespace lookup for gradient tensors ran inside torch.compile: five dynamo warnings."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-c", _COMPILED_RULE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0"


def test_params_patterns_match_variable_paths_in_fit():
    """``gc.on(rule, gc.Params(exclude=...))``: Keras variables are named by path (as AdamW's exclude_from_weight_decay)."""
    model = dense_model(0, (4, 6, 2))
    last = model.layers[-1]
    rule = gc.on(gc.clip_by_value(0.0), gc.Params(exclude=[f"{last.path}/*"]))  # freeze all but the last layer
    start = [to_np(v) for v in model.trainable_variables]
    model.compile(optimizer=gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), rule), loss="mse")
    x, y = _xy(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for v, s in zip(model.trainable_variables, start):
        moved = not np.array_equal(to_np(v), s)
        assert moved == v.path.startswith(f"{last.path}/"), v.path
    prune = gc.global_magnitude_prune(0.5, params=gc.Params(include=["*kernel"], exclude=[f"{last.path}/*"]))
    model.compile(optimizer=gradclip_keras.Optimizer(keras.optimizers.SGD(0.01), prune), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    zeros = {v.path: float((to_np(v) == 0).mean()) for v in model.trainable_variables}
    first_kernel = model.layers[0].kernel.path
    assert zeros[first_kernel] == 0.5 and all(z == 0 for p, z in zeros.items() if p != first_kernel), zeros
