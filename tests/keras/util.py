"""Helpers shared by the Keras tests."""

import numpy as np
from keras import ops


def to_np(x):
    return np.asarray(ops.convert_to_numpy(x))


def tensor(x, dtype="float32"):
    return ops.cast(ops.convert_to_tensor(np.asarray(x, np.float32)), dtype)
