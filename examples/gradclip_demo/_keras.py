"""The recipe in Keras 3: ``gradclip_keras.Optimizer(SGD, rule)`` in the trainer's train step.

Keras reads ``KERAS_BACKEND`` once, at import: set it before this module is imported
(:func:`gradclip_demo.cli.main` does, from ``--keras-backend``).
"""

from __future__ import annotations

import time

import keras
import numpy as np

import gradclip_keras

from ._config import Config
from ._data import Data, batch_indices
from ._history import History, pick
from ._recipe import recipe


def build(weights: list[np.ndarray]) -> keras.Sequential:
    """The MLP with the given weights (Keras kernels are ``(in, out)``: loaded as they are)."""
    w1, _, w2, _ = weights
    model = keras.Sequential([
        keras.Input((w1.shape[0],)),
        keras.layers.Dense(w1.shape[1], activation="relu"),
        keras.layers.Dense(w2.shape[1]),
    ])
    model.set_weights(weights)
    return model


def train(cfg: Config, data: Data, weights: list[np.ndarray], log: callable = print,
          make_rule: callable = recipe) -> History:
    """Train with ``train_on_batch`` (the ``fit`` train step, one batch at a time).

    Args:
      cfg: the run's :class:`Config`.
      data: the split digits.
      weights: the initial weights (``(in, out)`` layout).
      log: progress printer.
      make_rule: ``make_rule(cfg, axis)`` gives the rule (default: the demo's :func:`recipe`;
        ``examples/prune_dst.py`` passes RigL/SET).

    Returns:
      The run's :class:`History` (framework ``keras/<backend>``).
    """
    keras.utils.set_random_seed(cfg.seed)
    model = build(weights)
    # axis "out_last": the wrapper's own default for Keras kernels, spelled out.
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(cfg.lr), make_rule(cfg, "out_last"))
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    name = f"keras/{keras.backend.backend()}"
    tag = f"keras/{keras.backend.backend()[:5]}"
    hist = History.empty(name, cfg.steps)
    t0 = time.perf_counter()
    for step, idx in enumerate(batch_indices(len(data.x_train), cfg)):
        spike = cfg.spike_factor(step)  # an injected spike: every example's loss (so the gradients) times spike_scale
        weight = np.full(len(idx), spike, np.float32)
        loss = model.train_on_batch(data.x_train[idx], data.y_train[idx], sample_weight=weight) / spike
        info = {k: keras.ops.convert_to_numpy(v) for k, v in opt.info.items()}
        hist.record(step, loss=loss, grad_norm=pick(info, "clip_by_global_norm/norm"), sparsity=pick(info, "sparsity"),
                    skipped=pick(info, "skip_on_spike/skipped"))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            logits = keras.ops.convert_to_numpy(model(data.x_test))
            acc = int(np.sum(np.argmax(logits, 1) == data.y_test)) / len(data.y_test)
            hist.record(step, accuracy=acc)
            log(f"  {tag} step {step + 1:4d}  loss {hist.loss[step]:.4f}  acc {acc:.3f}  "
                f"sparsity {hist.sparsity[step]:.3f}")
    hist.seconds = time.perf_counter() - t0
    hist.weights = [np.asarray(w) for w in model.get_weights()]
    hist.masks = [keras.ops.convert_to_numpy(m) for m in gradclip_keras.masks(opt) if len(m.shape) == 2]
    return hist
