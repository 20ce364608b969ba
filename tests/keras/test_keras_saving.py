"""Saving with gradclip objects: registered names, custom rules (``register_rule``), loading without the import."""

import contextlib

import keras
import numpy as np
import pytest
from keras import ops

import gradclip_core as gc
import gradclip_keras

from .util import to_np


@gradclip_keras.register_rule(package="gradclip_tests")
def box(c=0.1):
    """A custom weight rule (a hand-built gc.Rule), made savable by its registered factory."""

    def project(params, state):
        return [ops.clip(p, -c, c) for p in params], state, {}

    return gc.Rule(project=project, name="box")


def _unregistered_box():
    return gc.Rule(project=lambda params, state: ([ops.clip(p, -0.1, 0.1) for p in params], state, {}), name="box")


@contextlib.contextmanager
def _without_gradclip_registration():
    """As in a process that never imported gradclip_keras: its names are not in Keras' registry."""
    objects = keras.saving.get_custom_objects()
    saved = {k: v for k, v in objects.items() if k.split(">")[0] in ("gradclip", "gradclip_keras")}
    for k in saved:
        del objects[k]
    try:
        yield
    finally:
        objects.update(saved)


def _model(constraint=None):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_constraint=constraint)])


def _xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype(np.float32), (rng.normal(size=(16, 3)) * 10).astype(np.float32)


def test_constraint_model_loaded_without_import_names_gradclip_keras(tmp_path):
    """It was "TypeError: Constraint() takes no arguments" (Keras' own base class was picked)."""
    model = _model(gradclip_keras.Constraint(gc.max_norm(2.0)))
    path = tmp_path / "c.keras"
    model.save(path)
    with _without_gradclip_registration(), pytest.raises(Exception) as err:
        keras.saving.load_model(path)
    assert "gradclip_keras" in str(err.value) and "takes no arguments" not in str(err.value)
    loaded = keras.saving.load_model(path)  # registered again: loads
    assert isinstance(loaded.layers[0].kernel_constraint, gradclip_keras.Constraint)
    assert loaded.layers[0].kernel_constraint.rule.config == gc.max_norm(2.0).config


def test_registered_names_and_gradclip_0_2_names():
    assert keras.saving.get_registered_name(gradclip_keras.Constraint) == "gradclip_keras>Constraint"
    assert keras.saving.get_registered_name(gradclip_keras.Optimizer) == "gradclip_keras>Optimizer"
    assert keras.saving.get_registered_name(gradclip_keras.PerExampleModel) == "gradclip_keras>PerExampleModel"
    old = {"module": "gradclip_keras._constraint", "class_name": "Constraint", "registered_name": "gradclip>Constraint",
           "config": {"rule": gc.max_norm(2.0).config}}  # as gradclip 0.2 wrote it
    c = keras.constraints.get(old)
    assert isinstance(c, gradclip_keras.Constraint) and c.rule.config == gc.max_norm(2.0).config


def test_custom_rule_saves_with_model_checkpoint_and_reloads(tmp_path):
    rule = gc.chain(gc.clip_by_global_norm(1.0), box(0.05))
    assert rule.config["rules"][1] == {"rule": "gradclip_tests>box", "c": 0.05}
    model = _model(gradclip_keras.Constraint(box(0.2)))
    model.compile(optimizer=gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), rule), loss="mse")
    path = tmp_path / "ckpt.keras"
    x, y = _xy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(path)])
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.rule.config == rule.config
    assert loaded.layers[0].kernel_constraint.rule.config == box(0.2).config
    for a, b in zip(loaded.trainable_weights, model.trainable_weights):
        np.testing.assert_array_equal(to_np(a), to_np(b))
    assert np.abs(to_np(loaded.layers[0].kernel)).max() <= 0.05 + 1e-7  # the reloaded rule acts
    loaded.fit(x, y, batch_size=8, verbose=0)
    assert np.abs(to_np(loaded.layers[0].kernel)).max() <= 0.05 + 1e-7


def test_unregistered_custom_rule_says_how_to_save_it(tmp_path):
    model = _model(gradclip_keras.Constraint(_unregistered_box()))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="register_rule"):
        model.save(tmp_path / "c.keras")
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.chain(gc.clip_by_value(1.0), _unregistered_box()))
    with pytest.raises(ValueError, match=r"gradclip_keras.Optimizer: .*register_rule"):
        opt.get_config()
    with pytest.raises(ValueError, match="unknown rule 'nowhere>rule'"):
        gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), {"rule": "nowhere>rule"})


def test_register_rule_arguments():
    with pytest.raises(ValueError, match="package"):
        gradclip_keras.register_rule(lambda: None, package="a>b")
    with pytest.raises(TypeError, match="must return a gradclip_core.Rule"):
        gradclip_keras.register_rule(lambda: 1, package="gradclip_tests", name="not_a_rule")()
