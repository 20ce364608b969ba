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
from ._clip_norm import SEMANTICS, clip_by_global_norm, clip_by_norm
from ._clip_rms import clip_by_block_rms, clip_update_rms
from ._clip_value import clip_by_value
from ._layout import LAYOUTS, register_layout
from ._multi import register_multi_ops
from ._namespace import namespace, namespace_name, register_namespace, registered_namespaces
from ._nonfinite import POLICIES
from ._rule import EmptyState, Rule, chain, from_config

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
    # constants
    "SEMANTICS",
    "POLICIES",
    "LAYOUTS",
    # namespace plumbing for adapters
    "namespace",
    "namespace_name",
    "register_namespace",
    "registered_namespaces",
    "register_multi_ops",
    "register_layout",
]
