"""gradclip_core.backend: the extension API between the rules and the frameworks.

Adapters (``gradclip_torch``, ``gradclip_optax``, ``gradclip_keras``) and anyone adding a
framework use only the names here:

- **namespaces**: :func:`namespace` (the Array API namespace of some arrays, through
  array-api-compat; TensorFlow through gradclip's own small namespace),
  :func:`register_namespace` for other array types, :func:`namespace_name`;
- **primitives**: multi-array operations with portable defaults and per-framework
  kernels (:func:`array_norms`, :func:`multiply`, :func:`clip`, ...; register faster ones
  with :func:`register_primitives`), :func:`apply_effect`, which applies a rule's
  declared effect out of place or in place, and :func:`kept_buffers` (weight-sized
  buffers an adapter keeps from step to step, where arrays are written in place);
- **selection kernels** of exact global pruning: :class:`Selection`, :func:`register_selection`;
- **layouts**: which axes form a unit (:func:`reduce_axes`, :func:`layout_override`,
  :func:`register_layout`);
- **collectives** for rules on shards: :func:`collective`, :func:`all_reduce`,
  :class:`Participants`, :func:`split_axes` (the axis each array's shards split),
  :func:`split_offsets` (where a shard lies in its array);
- **state trees**: :func:`flatten_state` / :func:`unflatten_state` (torch ``state_dict`` s and
  Keras variables), :func:`find_masks` (pruning masks anywhere in a state);
- **array names**: :func:`array_names` (adapters name the arrays, so the core's errors say
  ``'encoder.0.weight'`` rather than a position), :func:`array_label`, :func:`name_info`
  (per-array info keys by name).

Per-framework kernels live in one module each (``_torch``, ``_jax``, ``_tensorflow``,
``_numpy``) and are imported the first time an array of that framework is seen, so
``import gradclip_core`` imports no framework.

Example:
  >>> import numpy as np
  >>> from gradclip_core import backend
  >>> xs = [np.array([3.0, 4.0], np.float32)]
  >>> xp = backend.namespace(*xs)
  >>> [float(n) for n in backend.array_norms(xp, xs, 2.0, xp.float32)]
  [5.0]
"""

from .._effect import check_effect
from .._params import prepare_selection, selected
from ._collective import (Participants, Reducer, active, all_gather, all_reduce, collective, participant_index,
                          split_axes, split_offsets, split_on_leading_axis, static_total)
from ._layout import LAYOUTS, AxisSpec, check_axis, layout_override, reduce_axes, register_layout
from ._names import array_label, array_names, current_names, name_info
from ._namespace import device_kw, ensure_kernels, namespace, namespace_name, register_namespace, registered_namespaces, state_namespace
from ._primitives import (
    apply_effect,
    apply_masks,
    array_norms,
    array_rms,
    array_sumsq,
    clip,
    clipped_fraction,
    cond,
    count_outside,
    counts_on_apply,
    kept_buffers,
    min_bound_ratio,
    differences,
    difference_norms,
    difference_min_bound_ratio,
    multiply,
    override,
    register_primitives,
    size,
    symmetric_bounds,
    unit_norms,
    upcast,
)
from ._selection import KEY_BITS, NAN_KEY, Selection, float32_scores, key_value, order_keys, register_selection, selection_for
from ._tree import TreeDef, find_masks, find_regrown, flatten_state, is_namedtuple, tree_where, unflatten_state

__all__ = [
    # namespaces
    "namespace",
    "namespace_name",
    "register_namespace",
    "registered_namespaces",
    "ensure_kernels",
    "device_kw",
    "state_namespace",
    "selected",
    "prepare_selection",
    # primitives and effects
    "register_primitives",
    "override",
    "array_norms",
    "array_sumsq",
    "array_rms",
    "unit_norms",
    "multiply",
    "clip",
    "count_outside",
    "clipped_fraction",
    "counts_on_apply",
    "min_bound_ratio",
    "differences",
    "difference_norms",
    "difference_min_bound_ratio",
    "apply_masks",
    "cond",
    "apply_effect",
    "kept_buffers",
    "check_effect",
    "size",
    "upcast",
    "symmetric_bounds",
    # selection kernels
    "Selection",
    "register_selection",
    "selection_for",
    "order_keys",
    "float32_scores",
    "key_value",
    "NAN_KEY",
    "KEY_BITS",
    # layouts
    "LAYOUTS",
    "AxisSpec",
    "check_axis",
    "reduce_axes",
    "layout_override",
    "register_layout",
    # collectives
    "collective",
    "all_reduce",
    "all_gather",
    "static_total",
    "split_on_leading_axis",
    "split_axes",
    "split_offsets",
    "active",
    "participant_index",
    "Participants",
    "Reducer",
    # state trees
    "TreeDef",
    "flatten_state",
    "unflatten_state",
    "is_namedtuple",
    "find_masks",
    "find_regrown",
    "tree_where",
    # array names
    "array_names",
    "current_names",
    "array_label",
    "name_info",
]
