"""The data and the initial weights, made once in NumPy and handed to every framework."""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from ._config import Config

TEST_FRACTION = 0.2


class Data(NamedTuple):
    """scikit-learn's digits (8x8 images, 10 classes), split once.

    Attributes:
      x_train, x_test: float32 ``(n, 64)``, pixel values scaled to ``[0, 1]``.
      y_train, y_test: int32 labels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(seed: int) -> Data:
    """The digits dataset that ships inside scikit-learn, split 80/20 by a seeded permutation.

    Args:
      seed: seed of the permutation.

    Returns:
      A :class:`Data` (1438 training and 359 test examples).

    Example:
      >>> d = load_digits(0)
      >>> d.x_train.shape, d.x_test.shape, d.x_train.dtype.name
      ((1438, 64), (359, 64), 'float32')
    """
    from sklearn.datasets import load_digits as _load

    ds = _load()
    x = (ds.data / 16.0).astype(np.float32)
    y = ds.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(TEST_FRACTION * len(x)))
    test, train = perm[:n_test], perm[n_test:]
    return Data(x[train], y[train], x[test], y[test])


def batch_indices(n: int, cfg: Config) -> Iterator[np.ndarray]:
    """Indices of each step's batch: shuffled epochs from a NumPy RNG, the same for all frameworks.

    Args:
      n: number of training examples.
      cfg: the run's :class:`Config` (``steps``, ``batch_size``, ``seed``).

    Returns:
      An iterator over ``cfg.steps`` int arrays of length ``cfg.batch_size``.

    Example:
      >>> [b.tolist() for b in batch_indices(4, Config(steps=3, batch_size=2))]
      [[0, 1], [2, 3], [3, 0]]
    """
    rng = np.random.default_rng(cfg.seed + 1)
    order = np.empty(0, np.int64)
    for _ in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
        yield batch


def init_weights(cfg: Config, n_in: int = 64, n_out: int = 10) -> list[np.ndarray]:
    """He-normal kernels and small random biases, float32, in the ``(in, out)`` layout.

    ``[kernel1 (in, hidden), bias1, kernel2 (hidden, out), bias2]``; torch transposes
    the kernels into its ``(out, in)`` layout when it loads them.

    Args:
      cfg: the run's :class:`Config` (``seed``, ``hidden``).
      n_in: input features.
      n_out: classes.

    Returns:
      The four arrays.

    Example:
      >>> [w.shape for w in init_weights(Config())]
      [(64, 64), (64,), (64, 10), (10,)]
    """
    rng = np.random.default_rng(cfg.seed)
    h = cfg.hidden
    return [
        (rng.standard_normal((n_in, h)) * np.sqrt(2.0 / n_in)).astype(np.float32),
        (rng.standard_normal(h) * 0.01).astype(np.float32),
        (rng.standard_normal((h, n_out)) * np.sqrt(1.0 / h)).astype(np.float32),
        (rng.standard_normal(n_out) * 0.01).astype(np.float32),
    ]
