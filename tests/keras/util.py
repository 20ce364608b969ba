"""Helpers shared by the Keras tests: conversions, and the shared models and batches (tests/fixtures.py) in Keras."""

import keras
import numpy as np
from keras import ops

from .. import fixtures


def to_np(x):
    return np.asarray(ops.convert_to_numpy(x))


def tensor(x, dtype="float32"):
    return ops.cast(ops.convert_to_tensor(np.asarray(x, np.float32)), dtype)


def dense_model(seed=0, sizes=(4, 6, 2), activation="tanh"):
    """``Dense`` layers with widths ``sizes`` (``activation`` between them), weights from
    ``fixtures.mlp_weights`` (kernels transposed to Keras' ``(in, out)``); Keras' own
    randomness (``fit``'s shuffling) seeded too."""
    keras.utils.set_random_seed(seed)
    layers = [keras.layers.Dense(n, activation=activation if i < len(sizes) - 2 else None) for i, n in enumerate(sizes[1:])]
    out = keras.Sequential([keras.Input((sizes[0],)), *layers])
    out.set_weights([w.T if w.ndim == 2 else w for w in fixtures.mlp_weights(seed, sizes)])
    return out


def keras_variables(shapes=((3, 2), (2,)), seed=3):
    """``keras.Variable``s holding ``fixtures.rand_arrays``."""
    return [keras.Variable(a) for a in fixtures.rand_arrays(seed, shapes)]
