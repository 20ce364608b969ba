"""gradclip_core: every clipping rule defined once, on the Python Array API standard.

A rule is a :class:`Rule` of pure functions over flat sequences of arrays of any
Array API namespace (NumPy, array-api-strict, PyTorch, JAX, and TensorFlow through
the Keras adapter)::

    state               = rule.init(params)
    grads, state, info  = rule.update(grads, state, params=None)  # before the optimizer step
    params, state, info = rule.project(params, state)             # after the optimizer step

This package imports NumPy and array-api-compat only, never a framework.

Non-finite policy (``nonfinite=`` of every rule): ``"propagate"`` (default, no check),
``"zero"`` (NaN/Inf elements set to 0 before the rule), ``"skip"`` (all-zero output,
state unchanged, ``info["skipped"] = 1``), ``"raise"`` (``FloatingPointError``; one host
sync, not usable under jit). See :mod:`gradclip_core._nonfinite`.

Example:
  >>> import numpy as np
  >>> import gradclip_core as gc
  >>> rule = gc.chain(gc.clip_by_value(10.0), gc.clip_by_global_norm(1.0))
  >>> grads = [np.array([30.0, 0.0], np.float32), np.array([0.0], np.float32)]
  >>> state = rule.init(grads)
  >>> grads, state, info = rule.update(grads, state)
  >>> grads[0].tolist(), float(info["clip_by_global_norm/norm"])
  ([1.0, 0.0], 10.0)
"""

from ._agc import adaptive_clip, unit_norms
from ._autoclip import autoclip
from ._history import NormHistory
from ._noise import gaussian as gaussian_noise
from ._per_example import PER_EXAMPLE_SEMANTICS, clip_per_example
from ._suggest import record_norms, suggest_threshold
from ._zclip import ZClipState, zclip
from ._clip_norm import SEMANTICS, clip_by_global_norm, clip_by_norm
from ._collective import Participants, all_reduce, collective
from ._clip_rms import clip_by_block_rms, clip_update_rms
from ._clip_value import clip_by_value
from ._layout import LAYOUTS, layout_override, register_layout
from ._multi import register_multi_ops
from ._namespace import namespace, namespace_name, register_namespace, registered_namespaces
from ._nonfinite import POLICIES
from ._project import clip_weights, max_norm, mcp_threshold, min_max_norm, non_neg, soft_threshold, unit_norm
from ._prune import PruneState, global_magnitude_prune, magnitude_prune, random_prune
from ._rule import EmptyState, Rule, chain, from_config
from ._schedule import ROUNDINGS, Schedule, constant_schedule, one_shot, polynomial_schedule
from ._structured import ln_structured_prune, nm_prune

__version__ = "0.1.0"

__all__ = [
    "Rule",
    "EmptyState",
    "chain",
    "from_config",
    # clipping rules
    "clip_by_value",
    "clip_by_norm",
    "clip_by_global_norm",
    "clip_by_block_rms",
    "clip_update_rms",
    "adaptive_clip",
    "unit_norms",
    # stateful adaptive clipping (state: NormHistory / ZClipState)
    "autoclip",
    "zclip",
    "NormHistory",
    "ZClipState",
    # choosing a threshold
    "record_norms",
    "suggest_threshold",
    # per-example (DP) clipping: a function, not a Rule
    "clip_per_example",
    "gaussian_noise",
    "PER_EXAMPLE_SEMANTICS",
    # pruning rules (state: PruneState, bool masks)
    "magnitude_prune",
    "global_magnitude_prune",
    "random_prune",
    "ln_structured_prune",
    "nm_prune",
    "PruneState",
    # pruning schedules
    "Schedule",
    "one_shot",
    "constant_schedule",
    "polynomial_schedule",
    # proximal shrinkage and weight constraints (project only)
    "soft_threshold",
    "mcp_threshold",
    "clip_weights",
    "max_norm",
    "min_max_norm",
    "unit_norm",
    "non_neg",
    # constants
    "SEMANTICS",
    "POLICIES",
    "LAYOUTS",
    "ROUNDINGS",
    # namespace plumbing for adapters
    "namespace",
    "namespace_name",
    "register_namespace",
    "registered_namespaces",
    "register_multi_ops",
    "register_layout",
    "layout_override",
    # collectives for rules on shards (adapters: torch.distributed, shard_map)
    "collective",
    "all_reduce",
    "Participants",
]
