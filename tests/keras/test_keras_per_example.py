"""``gradclip_keras.PerExampleModel``: DP-SGD in ``model.fit`` on every Keras backend.

The model is one ``Dense`` layer with the ``"mse"`` loss, so each example's gradient is
known in closed form: ``r = x W + c - y``, ``dW = (2/out) x r^T``, ``dc = (2/out) r``.
The references, computed outside Keras:

- the core on those hand-computed per-example gradients (NumPy), and a float64 NumPy
  DP-SGD loop for several SGD steps;
- ``optax.per_example_global_norm_clip`` (its sum, divided by the batch size) on the same
  gradients, with ``semantics="optax"``;
- with noise: the core's counter-based noise for ``(seed, counter=iterations)``, std
  ``noise_multiplier * max_norm`` on the sum, so one SGD step moves the weights by
  exactly ``-lr * (clipped mean + sigma * C * z / B)``.
"""

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras

from ..fixtures import clip_per_example_reference
from .util import to_np

B, D_IN, D_OUT = 8, 3, 2
C, LR = 1.0, 0.1


def _data(seed=0, steps=1):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(steps * B, D_IN)) * np.tile(np.linspace(0.1, 3.0, B), steps)[:, None]).astype(np.float32)
    y = rng.normal(size=(steps * B, D_OUT)).astype(np.float32)
    return x, y


def _weights(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(D_IN, D_OUT)).astype(np.float32), rng.normal(size=(D_OUT,)).astype(np.float32)]


def _model(lr=LR, **options):
    inner = keras.Sequential([keras.Input((D_IN,)), keras.layers.Dense(D_OUT)])
    inner.set_weights(_weights())
    model = gradclip_keras.PerExampleModel(inner, max_norm=C, **options)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


def _fit(model, x, y):
    return model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0).history


def _per_example_grads(W, c, x, y):
    """Closed-form per-example gradients of mse (mean over the outputs), float64."""
    r = x.astype(np.float64) @ W + c - y
    return [(2.0 / D_OUT) * x[:, :, None] * r[:, None, :], (2.0 / D_OUT) * r]


def test_one_step_equals_core_and_optax_on_hand_computed_grads():
    x, y = _data()
    model = _model(lr=1.0, semantics="optax")
    logs = _fit(model, x, y)
    W0, c0 = _weights()
    update = [w0 - to_np(w) for w0, w in zip((W0, c0), model.model.weights)]  # lr 1: the applied gradient

    per = [g.astype(np.float32) for g in _per_example_grads(W0, c0, x, y)]
    core, info = gc.clip_per_example(per, C, semantics="optax")
    for a, b in zip(update, core):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    optax = pytest.importorskip("optax")
    summed, num_clipped = optax.per_example_global_norm_clip(per, C)
    for a, b in zip(update, summed):
        np.testing.assert_allclose(a, np.asarray(b) / B, rtol=1e-5, atol=1e-6)
    assert 0 < int(num_clipped) < B  # some examples clipped, some not
    assert logs["per_example/clipped_fraction"][0] == pytest.approx(int(num_clipped) / B)
    assert logs["per_example/norm_max"][0] == pytest.approx(float(info["norm_max"]), rel=1e-5)


def test_sgd_steps_equal_numpy_dp_sgd_loop():
    """Three steps, the last on a partial batch of 3 (a batch size TF knows only at run time)."""
    steps = 3
    x, y = _data(2, steps)
    x, y = x[:-(B - 3)], y[:-(B - 3)]
    model = _model()
    _fit(model, x, y)
    W, c = (w.astype(np.float64) for w in _weights())
    for s in range(steps):
        xb, yb = x[s * B:(s + 1) * B], y[s * B:(s + 1) * B]
        (dW, dc), _ = clip_per_example_reference(_per_example_grads(W, c, xb, yb), C, denom=len(xb))
        W, c = W - LR * dW, c - LR * dc
    for got, want in zip(model.model.weights, (W, c)):
        np.testing.assert_allclose(to_np(got), want, rtol=1e-5, atol=1e-6)
    assert int(to_np(model.optimizer.iterations)) == steps


def test_noise_is_the_seeded_core_noise_with_std_sigma_c():
    x, y = _data(3)
    sigma, seed = 2.0, 7
    clean, noisy, again, other = (_model(), _model(noise_multiplier=sigma, seed=seed),
                                  _model(noise_multiplier=sigma, seed=seed), _model(noise_multiplier=sigma, seed=8))
    for m in (clean, noisy, again, other):
        _fit(m, x, y)
    import array_api_compat.numpy as npx

    z = gc.gaussian_noise(npx, [(D_IN, D_OUT), (D_OUT,)], seed, 0)  # counter = iterations before the step
    for wc, wn, za in zip(clean.model.weights, noisy.model.weights, z):
        moved = to_np(wn) - to_np(wc)
        np.testing.assert_allclose(moved, -LR * sigma * C * za / B, rtol=1e-4, atol=1e-6)
    for a, b in zip(noisy.model.weights, again.model.weights):
        np.testing.assert_array_equal(to_np(a), to_np(b))  # same seed, same result
    assert not np.allclose(to_np(noisy.model.weights[0]), to_np(other.model.weights[0]))


def test_save_load_resume_continues_the_noise(tmp_path):
    steps, cut = 4, 2
    x, y = _data(4, steps)
    whole = _model(noise_multiplier=1.1, seed=3)
    _fit(whole, x, y)
    first = _model(noise_multiplier=1.1, seed=3)
    _fit(first, x[:cut * B], y[:cut * B])
    path = tmp_path / "dp.keras"
    first.save(path)
    resumed = keras.saving.load_model(path)
    assert isinstance(resumed, gradclip_keras.PerExampleModel)
    assert resumed.get_config()["seed"] == 3 and resumed.get_config()["noise_multiplier"] == 1.1
    _fit(resumed, x[cut * B:], y[cut * B:])
    for a, b in zip(resumed.model.weights, whole.model.weights):
        np.testing.assert_array_equal(to_np(a), to_np(b))


def test_with_gradclip_optimizer_and_predict():
    """The aggregated gradient goes through any optimizer, gradclip's wrapper included."""
    x, y = _data(5)
    inner = keras.Sequential([keras.Input((D_IN,)), keras.layers.Dense(D_OUT)])
    inner.set_weights(_weights())
    model = gradclip_keras.PerExampleModel(inner, max_norm=C)
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(LR), gc.clip_by_global_norm(0.05))
    model.compile(optimizer=opt, loss="mse")
    _fit(model, x, y)
    assert float(to_np(opt.info["norm"])) <= C + 1e-5  # the rule saw the per-example-clipped mean
    W0, c0 = _weights()
    moved = np.sqrt(sum(np.sum((to_np(w) - w0) ** 2) for w, w0 in zip(inner.weights, (W0, c0))))
    assert moved == pytest.approx(LR * 0.05, rel=1e-4)
    np.testing.assert_allclose(model.predict(x, verbose=0), to_np(inner(x)), rtol=1e-6)


def test_bad_arguments():
    inner = keras.Sequential([keras.Input((D_IN,)), keras.layers.Dense(D_OUT)])
    with pytest.raises(ValueError, match="max_norm"):
        gradclip_keras.PerExampleModel(inner, max_norm=-1.0)
    with pytest.raises(ValueError, match="seed"):
        gradclip_keras.PerExampleModel(inner, max_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="seed must be an int"):
        gradclip_keras.PerExampleModel(inner, max_norm=1.0, noise_multiplier=1.0, seed="0")
    with pytest.raises(ValueError, match="reduction"):
        gradclip_keras.PerExampleModel(inner, max_norm=1.0, reduction="max")
    with pytest.raises(ValueError, match="model must be a keras.Model"):
        gradclip_keras.PerExampleModel(keras.layers.Dense(2), max_norm=1.0)


def _conv_model():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((5, 5, 3)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(2)])


def test_conv2d_with_several_input_channels_equals_keras_one_example_steps():
    """torch failed on any Conv2D with > 1 input channel (channels-last clone inside vmap); TF logged while_loop notices."""
    import logging

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 5, 5, 3)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    ref = _conv_model()
    w0 = ref.get_weights()
    ref.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    per = []
    for i in range(len(x)):  # Keras itself, one example per step: w0 - w1 is that example's gradient
        ref.set_weights(w0)
        ref.train_on_batch(x[i:i + 1], y[i:i + 1])
        per.append([a - b for a, b in zip(w0, ref.get_weights())])
    per = [np.stack(g) for g in zip(*per)]
    want, info = gc.clip_per_example(per, 0.5)
    assert 0 < float(info["clipped_fraction"])

    inner = _conv_model()
    inner.set_weights(w0)
    model = gradclip_keras.PerExampleModel(inner, max_norm=0.5)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    notices = []
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        handler = logging.Handler()
        handler.emit = notices.append
        tf.get_logger().addHandler(handler)
    try:
        model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    finally:
        if keras.backend.backend() == "tensorflow":
            tf.get_logger().removeHandler(handler)
    for got, w, b in zip(inner.get_weights(), w0, want):
        np.testing.assert_allclose(w - got, b, rtol=1e-4, atol=2e-6)
    assert not [r for r in notices if "while_loop" in r.getMessage()]


def test_batch_normalization_is_refused_naming_the_layer_and_frozen_one_trains():
    """Per-example BatchNormalization normalised every example to zero: training went to chance, silently."""
    def make():
        keras.utils.set_random_seed(0)
        block = keras.Sequential([keras.layers.Dense(4), keras.layers.BatchNormalization(name="inner_bn")], name="block")
        return keras.Sequential([keras.Input((D_IN,)), block, keras.layers.Dense(D_OUT)])

    with pytest.raises(ValueError, match=r"layer 'inner_bn' \(BatchNormalization\)"):
        gradclip_keras.PerExampleModel(make(), max_norm=C)
    x, y = _data(6)
    after = []
    for per_example in (False, True):
        inner = make()
        inner.get_layer("block").get_layer("inner_bn").trainable = False  # inference mode: per example
        model = gradclip_keras.PerExampleModel(inner, max_norm=1e6) if per_example else inner
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
        _fit(model, x, y)
        after.append(inner.get_weights())
    for a, b in zip(*after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_draws_one_mask_per_example():
    """TF and JAX drew one mask for the batch (identical examples had identical norms); torch one per example."""
    def make():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((D_IN,)), keras.layers.Dense(16), keras.layers.Dropout(0.5), keras.layers.Dense(1)])

    x, y = np.ones((2 * B, D_IN), np.float32), np.ones((2 * B, 1), np.float32)  # B identical examples per batch
    inner = make()
    model = gradclip_keras.PerExampleModel(inner, max_norm=1e6)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    logs = _fit(model, x, y)
    assert logs["per_example/norm_max"][0] > 1.01 * logs["per_example/norm_mean"][0]
    plain = make()
    plain.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    _fit(plain, x, y)
    for a, b in zip(inner.non_trainable_variables, plain.non_trainable_variables):  # seed states advance as in a plain fit
        np.testing.assert_array_equal(to_np(a), to_np(b))
