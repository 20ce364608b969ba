"""tfmot's pruning workflow in Keras 3 (issue 18): ``prune_low_magnitude`` & co. on every Keras backend.

tfmot's definitions used as references are transcribed from tensorflow/model-optimization
v0.8.0, tensorflow_model_optimization/python/core/sparsity/keras/: ``pruning_schedule.py``
(``PruningSchedule._should_prune_in_step``, ``PolynomialDecay.__call__``,
``ConstantSparsity.__call__``), ``pruning_impl.py`` (``Pruning._update_mask``: the kept
count) and ``pruning_wrapper.py`` / ``pruning_callbacks.py`` (the step: the wrapper adds 1
to ``pruning_step`` before it prunes, ``UpdatePruningStep`` starts it at 0, so the
``b``-th batch of a fresh model, from 1, is pruning step ``b``).
"""

import glob
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras as gk

from .util import to_np

ROOT = pathlib.Path(__file__).resolve().parents[2]
BACKEND = keras.backend.backend()


# ------------------------------------------------------------------ tfmot, transcribed


def tfmot_schedule(schedule, step):
    """``(should_prune, sparsity)`` of tfmot's schedule classes at ``step`` (float32 as in TF)."""
    c = schedule.get_config()
    begin, end, frequency = c["begin_step"], c["end_step"], c["frequency"]
    should = step >= begin and (step <= end or end < 0) and (step - begin) % frequency == 0
    if isinstance(schedule, gk.ConstantSparsity):
        return should, np.float32(c["target_sparsity"])
    p = np.minimum(np.float32(1), np.maximum(np.float32(0), np.float32(step - begin) / np.float32(end - begin)))
    sparsity = (np.float32(c["initial_sparsity"] - c["final_sparsity"]) * np.power(np.float32(1) - p, np.float32(c["power"]))
                + np.float32(c["final_sparsity"]))
    return should, np.float32(sparsity)


def tfmot_kept(n, sparsity):
    """``Pruning._update_mask``: ``k = max(round(float32(size) * (1 - sparsity)), 1)`` (tf.math.round: half to even)."""
    return int(max(np.round(np.float32(n) * (np.float32(1) - np.float32(sparsity))), np.float32(1)))


def tfmot_sparsity_after(schedule, n, steps):
    """The pruned fraction of an ``n``-element weight after ``steps`` batches of a fresh model."""
    out = 0.0
    for step in range(1, steps + 1):
        should, sparsity = tfmot_schedule(schedule, step)
        if should:
            out = (n - tfmot_kept(n, sparsity)) / n
    return out


# ------------------------------------------------------------------ models and data


def mnist_like(n=64, seed=0):
    """Generated MNIST-shaped data: (n, 28, 28, 1) images in [0, 1], labels 0..9 (a blob whose place is the label)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.uniform(0, 0.2, (n, 28, 28, 1)).astype(np.float32)
    for i, label in enumerate(y):
        r, c = 4 + 2 * (label % 5) * 2, 6 + 12 * (label // 5)
        x[i, r:r + 5, c:c + 5, 0] += 0.8
    return x, y.astype(np.int32)


def conv_net(seed=0):
    """tfmot's "pruning in Keras" example model, smaller: Reshape, Conv2D, MaxPooling2D, Flatten, Dense."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])


def dense_net(seed=0, sizes=(8, 24, 4)):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((sizes[0],)), *[keras.layers.Dense(s, activation="tanh") for s in sizes[1:-1]],
                             keras.layers.Dense(sizes[-1])])


def regression(n=64, d_in=8, d_out=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d_in)).astype(np.float32), rng.normal(size=(n, d_out)).astype(np.float32)


def sparsity(mask):
    m = to_np(mask)
    return float(1.0 - m.mean())


def run_child(*args):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "adapters"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, str(pathlib.Path(__file__).with_name("tfmot_child.py")), *map(str, args)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]


# ------------------------------------------------------------------ the workflow


def test_tfmot_example_workflow_prunes_strips_saves_and_reloads_in_a_new_process(tmp_path):
    # tfmot's guide: prune the whole model with PolynomialDecay(0.50 -> 0.80) over the training
    # steps, compile, fit with UpdatePruningStep and PruningSummaries, strip, save, reload.
    x, y = mnist_like()
    batch_size, epochs = 16, 2
    end_step = int(np.ceil(len(x) / batch_size)) * epochs  # 8
    schedule = gk.PolynomialDecay(initial_sparsity=0.50, final_sparsity=0.80, begin_step=0, end_step=end_step, frequency=2)
    base = conv_net()
    bias_before = to_np(base.layers[0].bias)
    model = gk.prune_low_magnitude(base, pruning_schedule=schedule)
    assert [type(layer).__name__ for layer in model.layers] == ["PruneLowMagnitude", "MaxPooling2D", "Flatten",
                                                               "PruneLowMagnitude"]
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    logdir = str(tmp_path / "logs")
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=False,
              callbacks=[gk.UpdatePruningStep(), gk.PruningSummaries(log_dir=logdir)])

    iterations = int(to_np(model.optimizer.iterations))
    assert iterations == end_step
    for layer in gk.collect_prunable_layers(model):
        assert int(to_np(layer.pruning_step)) == iterations
        (weight, mask, _), = layer.pruning_vars
        n = int(np.prod(weight.shape))
        assert sparsity(mask) == pytest.approx(tfmot_sparsity_after(schedule, n, iterations)) == pytest.approx(0.8, abs=0.01)
        assert np.array_equal(to_np(weight) == 0, ~to_np(mask))  # UpdatePruningStep zeroed the stored weights
    assert (to_np(model.layers[0].layer.bias) != bias_before).any()  # biases train, unpruned
    assert (to_np(model.layers[0].layer.bias) != 0).all()

    # PruningSummaries: per-layer sparsity and threshold scalars in TensorBoard's event files
    import tensorflow as tf

    tags = set()
    for path in glob.glob(os.path.join(logdir, "metrics", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    conv, dense = model.layers[0].name, model.layers[3].name  # (prune_low_magnitude_conv2d, or _1, ... after other models)
    assert conv.startswith("prune_low_magnitude_conv2d") and dense.startswith("prune_low_magnitude_dense")
    assert {f"{conv}/kernel/sparsity", f"{conv}/kernel/threshold", f"{dense}/kernel/sparsity"} <= tags, tags

    stripped = gk.strip_pruning(model)
    assert [type(layer).__name__ for layer in stripped.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    expected = to_np(model.predict(x, verbose=0))
    np.testing.assert_array_equal(to_np(stripped.predict(x, verbose=0)), expected)
    path = tmp_path / "stripped.keras"
    stripped.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    np.savez(tmp_path / "kernels.npz", *[to_np(layer.kernel) for layer in (stripped.layers[0], stripped.layers[3])])
    run_child("stripped", path, tmp_path)  # no gradclip_keras import there: plain Keras layers


SCHEDULES = {
    "poly3": gk.PolynomialDecay(0.2, 0.9, begin_step=2, end_step=14, power=3, frequency=3),
    "poly2": gk.PolynomialDecay(0.0, 0.55, begin_step=0, end_step=12, power=2, frequency=1),
    "constant": gk.ConstantSparsity(0.3, begin_step=3, end_step=11, frequency=4),
}


def test_sparsity_after_each_step_is_tfmots_formula():
    # One schedule per layer (tfmot's per-layer pattern), one fit of 16 steps; after each step the
    # sparsity of each kernel is tfmot's (the last pruning step's kept count).
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((9,)), keras.layers.Dense(25, name="poly3"), keras.layers.Dense(12, name="poly2"),
                             keras.layers.Dense(5, name="constant")])
    model = keras.models.clone_model(base, clone_function=lambda layer: gk.prune_low_magnitude(
        layer, pruning_schedule=SCHEDULES[layer.name]))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y = regression(n=64, d_in=9, d_out=5)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.jax_state_sync() if BACKEND == "jax" else None
            seen.append([sparsity(layer.pruning_vars[0][1]) for layer in gk.collect_prunable_layers(self.model)])

    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[gk.UpdatePruningStep(), Record()])
    layers = gk.collect_prunable_layers(model)
    sizes = [9 * 25, 25 * 12, 12 * 5]
    assert len(seen) == 16 and [layer.layer.name for layer in layers] == list(SCHEDULES)
    for step, got in enumerate(seen, start=1):
        want = [tfmot_sparsity_after(SCHEDULES[name], n, step) for name, n in zip(SCHEDULES, sizes)]
        assert got == pytest.approx(want, abs=1e-9), step
    assert seen[-1][0] == pytest.approx(0.9, abs=0.01) and seen[-1][2] == pytest.approx(0.3, abs=0.02)


def test_masks_are_the_core_rule_on_the_same_weights():
    # The wrapper's masks are its rule's (gradclip_core, run here on NumPy; the parity suite runs the
    # same rules in torch, optax and every Keras backend, bit for bit): replay each step's weights.
    schedule = gk.PolynomialDecay(0.1, 0.7, begin_step=1, end_step=7, frequency=2)
    model = gk.prune_low_magnitude(dense_net(sizes=(6, 12, 3)), pruning_schedule=schedule)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    x, y = regression(n=32, d_in=6, d_out=3)
    layer = model.layers[0]
    rule = layer.rule
    assert rule.config["rounding"] == "tfmot" and rule.config["schedule"] == gc.polynomial_schedule(
        1, 7, 2, 0.1, first_step=1)
    model(x[:1])
    weights = []

    class Before(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.model.jax_state_sync() if BACKEND == "jax" else None
            weights.append(to_np(layer.pruning_vars[0][0]))

    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[gk.UpdatePruningStep(), Before()])
    state = rule.init([weights[0]])
    for w in weights:  # the step's masks come from the weights the step starts from
        _, state, _ = rule.project([w], state)
    np.testing.assert_array_equal(to_np(layer.pruning_vars[0][1]), np.asarray(state.masks[0]))
    assert int(to_np(layer.pruning_step)) == int(np.asarray(state.count)) == 8


def test_per_layer_pruning_with_clone_model():
    # tfmot's guide: clone_model with a clone_function choosing the layers (and their schedules).
    base = conv_net()

    def apply_pruning_to_dense(layer):
        if isinstance(layer, keras.layers.Dense):
            return gk.prune_low_magnitude(layer, pruning_schedule=gk.ConstantSparsity(0.6, begin_step=0, frequency=2))
        return layer

    model = keras.models.clone_model(base, clone_function=apply_pruning_to_dense)
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "PruneLowMagnitude"]
    assert model.layers[3].layer is base.layers[3]  # the pretrained layer, wrapped
    conv_before = to_np(base.layers[0].kernel)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = mnist_like(32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[gk.UpdatePruningStep()])
    assert (to_np(model.layers[0].kernel) != 0).all() and (to_np(model.layers[0].kernel) != conv_before).any()
    dense = model.layers[3]
    n = int(np.prod(dense.pruning_vars[0][0].shape))
    assert sparsity(dense.pruning_vars[0][1]) == pytest.approx((n - tfmot_kept(n, 0.6)) / n)
    # a list of layers, and a single layer with its own keyword arguments
    wrapped = gk.prune_low_magnitude([keras.layers.Dense(3), keras.layers.Conv1D(2, 3)])
    assert [type(w).__name__ for w in wrapped] == ["PruneLowMagnitude", "PruneLowMagnitude"]
    assert gk.prune_low_magnitude(keras.layers.Dense(3), name="p").name == "p"


def test_pruned_weights_get_no_gradient_and_the_layer_computes_with_the_masked_kernel():
    model = gk.prune_low_magnitude(dense_net(sizes=(8, 4)), pruning_schedule=gk.ConstantSparsity(0.5, 0, frequency=1))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = regression(n=16, d_in=8, d_out=4)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)  # no UpdatePruningStep: stored values stay
    layer = model.layers[0]
    weight, mask, _ = layer.pruning_vars[0]
    w0, m0 = to_np(weight), to_np(mask)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    w1, m1 = to_np(weight), to_np(mask)
    np.testing.assert_array_equal(m1 & ~m0, np.zeros_like(m0))  # monotone
    pruned = ~m1 & ~m0
    np.testing.assert_array_equal(w1[pruned], w0[pruned])  # no gradient reached them
    assert (w1[m1] != w0[m1]).any()
    kernel = np.where(m1, w1, 0)
    np.testing.assert_allclose(to_np(model.predict(x, verbose=0)), x @ kernel + to_np(layer.layer.bias), rtol=1e-5, atol=1e-5)


def test_steps_per_execution_counts_every_step_and_no_batch_hook_runs():
    # The step advances inside the compiled step: steps_per_execution=4 prunes at the same steps.
    schedule = gk.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=3)
    x, y = regression(n=64)
    masks = {}
    for spe in (1, 4) if BACKEND != "torch" else (1,):  # (Keras' torch trainer runs one step per call)
        model = gk.prune_low_magnitude(dense_net(), pruning_schedule=schedule)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", steps_per_execution=spe)
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[gk.UpdatePruningStep()])
        layers = gk.collect_prunable_layers(model)
        assert [int(to_np(layer.pruning_step)) for layer in layers] == [16, 16]
        masks[spe] = [to_np(layer.pruning_vars[0][1]) for layer in layers]
    for a, b in zip(masks[1], masks.get(4, masks[1])):
        np.testing.assert_array_equal(a, b)
    hooks = {"on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"}
    assert not hooks & set(vars(gk.UpdatePruningStep))  # nothing per batch: no host round trip, no JAX sync


def test_masks_are_recomputed_inside_the_compiled_step_not_eagerly(monkeypatch):
    calls = []
    original = gk.PruneLowMagnitude._update_masks

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(gk.PruneLowMagnitude, "_update_masks", counting)
    model = gk.prune_low_magnitude(dense_net(sizes=(8, 4)), pruning_schedule=gk.ConstantSparsity(0.5, 0, frequency=2))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y = regression(n=64, d_in=8, d_out=4)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[gk.UpdatePruningStep()])
    if BACKEND in ("jax", "tensorflow"):
        assert len(calls) <= 2, len(calls)  # traced into the jitted / tf.function train step, not run per batch
    else:
        assert len(calls) == 32  # torch's trainer runs the step eagerly: once per step, in the step


# Two new processes (reload, resume): about a minute on TensorFlow. The default run checks them on
# JAX; on the other backends they are in `-m slow`.
@(pytest.mark.slow if BACKEND != "jax" else lambda f: f)
def test_saved_model_reloads_without_custom_objects_and_resumes_mid_schedule_exactly(tmp_path):
    schedule = gk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=16, frequency=2)
    x, y = regression(n=32)

    def fresh():
        model = gk.prune_low_magnitude(dense_net(seed=3), pruning_schedule=schedule, block_size=(2, 2),
                                       block_pooling_type="MAX")
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        return model

    straight = fresh()
    straight.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False, callbacks=[gk.UpdatePruningStep()])
    half = fresh()
    half.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[gk.UpdatePruningStep()])
    path = tmp_path / "half.keras"
    half.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    run_child("resume", path, tmp_path)  # loads with `import gradclip_keras` only, trains the second epoch
    out = np.load(tmp_path / "resumed.npz")
    expected = [to_np(v) for layer in gk.collect_prunable_layers(straight)
                for v in (layer.pruning_vars[0][0], layer.pruning_vars[0][1], layer.pruning_step)]
    assert len(out.files) == len(expected) == 6
    for i, want in enumerate(expected):  # kernel, mask, step of each layer: bit for bit
        np.testing.assert_array_equal(out[f"a{i}"], want, err_msg=str(i))
    assert int(expected[2]) == 16 and 0.5 < float((~expected[1]).mean()) < 0.9  # mid-schedule at the cut (step 8 of 16)


def test_block_sparsity_and_m_by_n_as_tfmot():
    x, y = regression(n=32, d_in=8, d_out=4)
    model = gk.prune_low_magnitude(dense_net(sizes=(8, 16, 4)), pruning_schedule=gk.ConstantSparsity(0.5, 0, frequency=1),
                                   block_size=(2, 4), block_pooling_type="AVG")
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[gk.UpdatePruningStep()])
    for layer in gk.collect_prunable_layers(model):
        w, m, _ = layer.pruning_vars[0]
        m = to_np(m)
        blocks = m.reshape(m.shape[0] // 2, 2, m.shape[1] // 4, 4)
        assert (blocks == blocks[:, :1, :, :1]).all()  # whole blocks
        nb = blocks.shape[0] * blocks.shape[2]
        assert int((~blocks[:, 0, :, 0]).sum()) == nb - tfmot_kept(nb, 0.5)
    with pytest.raises(ValueError, match="Block Sparsity can only be used for layers which have 2-dimensional weights"):
        gk.prune_low_magnitude(keras.layers.Conv2D(2, 3), block_size=(2, 2))(np.zeros((1, 5, 5, 3), np.float32))

    # 2:4 along the input channels, once, at the first training step (tfmot ignores the schedule there)
    base = keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(), keras.layers.Dense(3)])
    model = gk.prune_low_magnitude(base, sparsity_m_by_n=(2, 4))
    model.compile(optimizer="sgd", loss="mse")
    xi = np.random.default_rng(0).normal(size=(8, 6, 6, 8)).astype(np.float32)
    first = []

    class AfterFirst(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                self.model.jax_state_sync() if BACKEND == "jax" else None
                first.extend(to_np(layer.pruning_vars[0][1]) for layer in gk.collect_prunable_layers(self.model))

    model.fit(xi, np.zeros((8, 3), np.float32), batch_size=2, epochs=1, verbose=0,
              callbacks=[gk.UpdatePruningStep(), AfterFirst()])
    for layer, m0 in zip(gk.collect_prunable_layers(model), first):
        m = to_np(layer.pruning_vars[0][1])
        np.testing.assert_array_equal(m, m0)  # not recomputed after step 1
        groups = np.moveaxis(m, -2, -1).reshape(-1, 4)  # 4 consecutive input channels
        assert (groups.sum(axis=1) == 2).all()
        assert layer.rule.config == gc.nm_prune(keep=2, group=4, axis=-2, schedule=gc.one_shot(1, first_step=1),
                                                remainder="pad", params="all").config


def test_registry_errors_and_configs():
    class Custom(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 2))

        def call(self, x):
            return x @ self.w

    class CustomPrunable(Custom):
        def get_prunable_weights(self):
            return [self.w]

    with pytest.raises(ValueError, match="is not supported"):
        gk.prune_low_magnitude(Custom())
    model = keras.Sequential([keras.Input((3,)), CustomPrunable(), keras.layers.BatchNormalization(), keras.layers.Dropout(0.1)])
    pruned = gk.prune_low_magnitude(model)
    assert [type(layer).__name__ for layer in pruned.layers] == ["PruneLowMagnitude", "BatchNormalization", "Dropout"]
    with pytest.raises(ValueError, match="is not supported"):
        gk.prune_low_magnitude(keras.Sequential([keras.Input((3,)), Custom()]))

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="Subclassed models are not supported"):
        gk.prune_low_magnitude(Sub())
    with pytest.raises(ValueError, match="end_step cannot be -1"):
        gk.PolynomialDecay(0.1, 0.5, 0, -1)
    with pytest.raises(ValueError, match=r"final_sparsity must be in range \[0,1\)"):
        gk.PolynomialDecay(0.1, 1.0, 0, 10)
    with pytest.raises(ValueError, match="Unsupported pooling type"):
        gk.prune_low_magnitude(keras.layers.Dense(2), block_pooling_type="SUM")

    class Policy:  # tfmot's PruningPolicy protocol
        def allow_pruning(self, layer):
            return not layer.name.startswith("keep")

        def ensure_model_supports_pruning(self, model):
            self.checked = True

    policy = Policy()
    base = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="keep_me"), keras.layers.Dense(2)])
    pruned = gk.prune_low_magnitude(base, pruning_policy=policy)
    assert [type(layer).__name__ for layer in pruned.layers] == ["Dense", "PruneLowMagnitude"] and policy.checked

    layer = gk.PruneLowMagnitude(keras.layers.Dense(3), pruning_schedule=gk.PolynomialDecay(0.1, 0.6, 2, 30, frequency=4),
                                 block_size=(2, 1), block_pooling_type="MAX")
    again = gk.PruneLowMagnitude.from_config(layer.get_config())
    assert again.get_config() == layer.get_config() and again.pruning_schedule == layer.pruning_schedule
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(gk.ConstantSparsity(0.2, 1))) == \
        gk.ConstantSparsity(0.2, 1)
