"""``activation_norms``: Wanda's input-channel norms ``||X_j||_2`` of a Keras model's Dense / Conv layers.

For :func:`gradclip_core.wanda_prune` (Sun et al. 2023): a probe model returns the inputs
of every ``Dense`` and ``Conv1D/2D/3D`` layer; each calibration batch adds their squares
per input channel (float32, :func:`gradclip_core.activation_sumsq`, on the host); the
norms are the square roots. Keyed by the kernel's variable path, the names
:class:`gradclip_keras.Optimizer` gives the rule; Keras kernels are ``(..., in, out)``,
so the input-channel axis is ``-2`` (``axis=None`` under Keras).
"""

from __future__ import annotations

from typing import Any, Iterable

import keras
import numpy as np

import gradclip_core as gc

__all__ = ["activation_norms"]

_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def activation_norms(model: keras.Model, batches: Iterable[Any]) -> dict[str, np.ndarray]:
    """``{kernel path: ||X_j||_2 per input channel}`` of every Dense / Conv layer of a built model over ``batches``.

    Args:
      model: a functional or ``Sequential`` model with known inputs (built with ``keras.Input``).
      batches: calibration inputs (what ``model(batch)`` takes).

    Returns:
      float32 NumPy arrays of length ``in`` per kernel path.

    Example:
      >>> import numpy as np, keras
      >>> import gradclip_keras
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
      >>> norms = gradclip_keras.activation_norms(model, [np.array([[3.0, 0.0, 1.0]]), np.array([[4.0, 0.0, 0.0]])])
      >>> list(norms.values())[0].tolist()
      [5.0, 0.0, 1.0]
    """
    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, _LAYERS) and getattr(layer, "kernel", None) is not None]
    if not layers:
        raise ValueError("activation_norms: the model has no Dense or Conv layer")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [layer.input for layer in layers])
    axes = [1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1 for layer in layers]
    sums: list = [None] * len(layers)
    for batch in batches:
        outs = probe(batch, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, (x, ax) in enumerate(zip(outs, axes)):
            s = gc.activation_sumsq(np, np.asarray(keras.ops.convert_to_numpy(x), np.float32), ax)
            sums[i] = s if sums[i] is None else sums[i] + s
    return {layer.kernel.path: np.sqrt(s) for layer, s in zip(layers, sums) if s is not None}
