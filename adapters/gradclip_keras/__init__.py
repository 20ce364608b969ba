"""gradclip_keras: run any gradclip rule in Keras 3, on the TensorFlow, JAX and torch backends.

Three entry points (``import gradclip_core as gc``):

- :class:`Optimizer` ``(inner, rule)``: an optimizer wrapper in the style of
  ``keras.optimizers.LossScaleOptimizer``, for ``model.compile(optimizer=...)``. It runs
  ``rule.update`` on the gradients before the inner optimizer's step and
  ``rule.project`` on the weights after it, keeps the rule state and the last info in
  Keras variables (``optimizer.gradclip_info``), overrides ``apply`` and
  ``stateless_apply`` (JAX trainer) and saves/reloads with the model;
- :class:`Constraint` ``(rule)``: a state-free weight rule as ``kernel_constraint=``;
- :class:`Callback` ``(rule)``: a weight rule applied on a schedule during ``fit``
  (like tfmot's ``UpdatePruningStep``); :class:`LogInfo` puts the wrapper's info in
  ``fit``'s logs;
- :func:`strip` ``(model | optimizer | callback)``: make pruning permanent (pruned
  weights exactly 0; a model is re-compiled with the inner optimizer, so it saves
  without gradclip state); :func:`masks` gives the keep-masks, :func:`get_info` the
  last info;
- :func:`register_rule`: decorate the factory of a custom rule so that a model using
  it saves and reloads (``model.save``, ``ModelCheckpoint``); the core's rules need nothing;
- :func:`clip_per_example` ``(model, max_norm, noise_multiplier=, seed=)``: DP-SGD
  training in ``fit`` (a :class:`PerExampleModel`: per-example gradients clipped by
  :func:`gradclip_core.clip_per_example`, optional seeded noise);
- tfmot's pruning API for Keras 3 (``tfmot.sparsity.keras``, which needs Keras 2):
  :func:`prune_low_magnitude`, :class:`ConstantSparsity`, :class:`PolynomialDecay`,
  :class:`UpdatePruningStep`, :class:`PruningSummaries`, :func:`strip_pruning`, with the
  same names and arguments, on every backend (see ``_tfmot`` and the README's migration
  section).

The vocabulary (``get_info``, ``masks``, ``strip``, ``clip_per_example``) is the one of
``gradclip_torch`` and ``gradclip_optax``. Rules see the backend's own tensors (the core
has a small Array API namespace for TensorFlow, loaded on first use; on JAX and torch
the native namespaces and the core's kernels). Keras kernels are ``(..., in, out)`` on
every backend, so rules run with ``axis=None`` meaning ``"out_last"`` (see
:func:`gradclip_core.layout_override`).

``semantics="keras"`` gives Keras' own ``global_clipnorm`` / ``clipnorm`` numbers, bit for
bit in float32 (tested against the real optimizer options on each backend); unlike
Keras, norms of bf16/fp16 gradients accumulate in float32.

Example:
  >>> import numpy as np, keras
  >>> import gradclip_core as gc, gradclip_keras
  >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  >>> opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.1), gc.clip_by_global_norm(1.0, semantics="keras"))
  >>> model.compile(optimizer=opt, loss="mse")
  >>> _ = model.fit(np.ones((8, 3)), np.full((8, 2), 100.0), verbose=0)
  >>> float(opt.gradclip_info["scale"]) < 1
  True
"""

from ._calibrate import activation_norms
from ._callback import Callback, LogInfo
from ._constraint import Constraint
from ._optimizer import Optimizer
from ._per_example import PerExampleModel, clip_per_example
from ._prune import get_info, masks, strip
from ._registry import register_rule
from ._tfmot import (ConstantSparsity, PolynomialDecay, PruneLowMagnitude, PruningSchedule, PruningSummaries, UpdatePruningStep,
                     collect_prunable_layers, prune_low_magnitude, prune_scope, strip_pruning)

__version__ = "0.2.0"

__all__ = ["Optimizer", "Constraint", "Callback", "LogInfo", "PerExampleModel", "clip_per_example", "strip", "masks",
           "get_info", "register_rule", "activation_norms",
           # tfmot's pruning API (tensorflow_model_optimization.sparsity.keras), for Keras 3
           "prune_low_magnitude", "strip_pruning", "PruneLowMagnitude", "PruningSchedule", "ConstantSparsity",
           "PolynomialDecay", "UpdatePruningStep", "PruningSummaries", "collect_prunable_layers", "prune_scope"]
