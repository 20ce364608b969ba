"""``gradclip_keras.Constraint`` (kernel_constraint) and ``gradclip_keras.Callback`` (scheduled project)."""

from typing import NamedTuple

import keras
import numpy as np
import pytest
from keras import ops

import gradclip_core as gc
import gradclip_keras

from ..fixtures import rand_arrays
from .util import dense_model, tensor, to_np


def _box_rule():
    def project(params, state):
        return [ops.clip(p, -0.1, 0.1) for p in params], state, {}

    return gc.Rule(project=project, name="box")


def test_constraint_projects_one_weight():
    c = gradclip_keras.Constraint(_box_rule())
    out = c(keras.Variable(np.array([[1.0, -0.05], [-3.0, 0.0]], np.float32)))
    np.testing.assert_array_equal(to_np(out), np.array([[0.1, -0.05], [-0.1, 0.0]], np.float32))


def test_constraint_in_fit():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, kernel_constraint=gradclip_keras.Constraint(_box_rule()))])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    model.fit(np.ones((8, 3), np.float32), np.full((8, 4), 100.0, np.float32), verbose=0)
    assert np.abs(to_np(model.layers[0].kernel)).max() <= np.float32(0.1)


def test_norm_constraints_equal_keras_constraints_in_float32():
    """The core's constraints (on NumPy) against Keras' own; here: the main test process never imports Keras."""
    w = rand_arrays(1, [(4, 6)], 2.0)
    pairs = [
        (gc.max_norm(1.5, axis=0), keras.constraints.MaxNorm(1.5, axis=0)),
        (gc.min_max_norm(0.5, 1.0, 0.7, axis=0), keras.constraints.MinMaxNorm(0.5, 1.0, 0.7, axis=0)),
        (gc.unit_norm(axis=0), keras.constraints.UnitNorm(axis=0)),
        (gc.non_neg(), keras.constraints.NonNeg()),
    ]
    for rule, native in pairs:
        out, _, _ = rule.project(w, rule.init(w))
        np.testing.assert_allclose(out[0], to_np(native(ops.convert_to_tensor(w[0]))), rtol=2e-6, atol=0)


def test_constraint_refuses_gradient_rules_and_state():
    with pytest.raises(ValueError, match="no project part"):
        gradclip_keras.Constraint(gc.clip_by_global_norm(1.0))

    class S(NamedTuple):
        n: object

    stateful = gc.Rule(init=lambda p: S(ops.zeros(())), project=lambda p, s: (p, s, {}), name="stateful")
    with pytest.raises(ValueError, match="keeps state"):
        gradclip_keras.Constraint(stateful)(tensor([1.0]))


class Count(NamedTuple):
    count: object


def _zero_small_rule():
    """Zero weights below 0.5 in magnitude; counts its calls (state) and reports sparsity (info)."""

    def init(params):
        return Count(ops.zeros((), dtype="int32"))

    def project(params, state):
        out = [ops.where(ops.abs(p) < 0.5, ops.zeros_like(p), p) for p in params]
        zeros = sum(ops.sum(ops.cast(ops.equal(o, 0), "float32")) for o in out)
        total = float(sum(int(np.prod(o.shape)) for o in out))
        return out, Count(state.count + 1), {"sparsity": zeros / total, "calls": state.count + 1}

    return gc.Rule(init=init, project=project, name="zero_small")


@pytest.mark.parametrize("on, every, runs_at", [("batch", 2, [1, 3, 5, 7]), ("epoch", 1, [4, 8])])
def test_callback_projects_on_schedule_and_logs(on, every, runs_at):
    """The callback runs every `every` steps/epochs; a rule with state then takes one step per optimizer step."""
    model = dense_model(0, (3, 4))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    cb = gradclip_keras.Callback(_zero_small_rule(), every=every, on=on)
    seen = []

    class Runs(keras.callbacks.Callback):  # records the rule step after each batch end
        def on_train_batch_end(self, batch, logs=None):
            seen.append(cb.steps)

    history = model.fit(np.ones((16, 3), np.float32), np.ones((16, 4), np.float32), batch_size=4, epochs=2, verbose=0,
                        callbacks=[cb, Runs()])
    if on == "batch":
        assert sorted(set(seen) - {0}) == runs_at  # after each run the rule is at the optimizer's step
    assert int(to_np(cb.state.count)) == runs_at[-1] == cb.steps
    assert cb.info["gradclip/calls"] == runs_at[-1]
    assert history.history["gradclip/sparsity"][-1] == cb.info["gradclip/sparsity"] > 0
    if on == "epoch":  # projected after the last step: nothing small is left
        for w in model.trainable_weights:
            x = to_np(w)
            assert np.all((x == 0) | (np.abs(x) >= 0.5))


def test_callback_arguments():
    with pytest.raises(ValueError, match="no project part"):
        gradclip_keras.Callback(gc.clip_by_value(1.0))
    with pytest.raises(ValueError, match="every"):
        gradclip_keras.Callback(_zero_small_rule(), every=0)
    with pytest.raises(ValueError, match="on must be"):
        gradclip_keras.Callback(_zero_small_rule(), on="step")


def test_max_norm_axes_against_keras_max_norm_on_conv2d():
    """Keras' MaxNorm defaults to axis=0; gc.max_norm's default unit is one output (axes 0, 1, 2 of a Conv2D kernel)."""
    w = np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype(np.float32)
    v = keras.Variable(w)
    for ours, keras_constraint in [(gc.max_norm(1.5, axis=0), keras.constraints.MaxNorm(1.5)),
                                   (gc.max_norm(1.5), keras.constraints.MaxNorm(1.5, axis=[0, 1, 2])),
                                   (gc.unit_norm(axis=0), keras.constraints.UnitNorm()),
                                   (gc.min_max_norm(0.5, 1.5, axis=0), keras.constraints.MinMaxNorm(0.5, 1.5))]:
        np.testing.assert_allclose(to_np(gradclip_keras.Constraint(ours)(v)), to_np(keras_constraint(v)), rtol=2e-6, atol=1e-7)
    assert not np.allclose(to_np(gradclip_keras.Constraint(gc.max_norm(1.5))(v)), to_np(keras.constraints.MaxNorm(1.5)(v)))
