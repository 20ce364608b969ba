"""gradclip_optax: every gradclip rule as an optax ``GradientTransformation``.

Two entry points:

- :func:`transform` ``(rule)``: a chain element applying the rule's ``update`` to the
  updates, ``optax.chain(gradclip_optax.transform(rule), optax.adam(1e-3))``.
- :func:`wrap` ``(rule, inner)``: the rule around an optimizer; needed for rules with a
  ``project`` part (weight constraints, pruning), and for ``nonfinite="skip"`` to also
  skip the optimizer's state update.

States are NamedTuple pytrees of arrays; ``state.info`` holds the last step's info
(``state.info["norm"]``, or :func:`get_info` on a whole optimizer state). On JAX arrays
the core uses the ``jax.numpy`` namespace, its JAX kernels (``lax.cond``, the radix
selection in one ``fori_loop``) and the optax weight layout (``axis=None`` in unit-wise
rules means ``"optax"``).

The same vocabulary as ``gradclip_torch`` and ``gradclip_keras``: :func:`get_info` (last
info), :func:`masks`, :func:`strip`, :func:`clip_per_example`.

Example:
  >>> import jax.numpy as jnp
  >>> import optax
  >>> import gradclip_core as gc
  >>> import gradclip_optax
  >>> params = {"w": jnp.ones((2, 3))}
  >>> tx = optax.chain(gradclip_optax.transform(gc.clip_by_global_norm(1.0)), optax.sgd(0.1))
  >>> state = tx.init(params)
  >>> updates, state = tx.update({"w": jnp.full((2, 3), 2.0)}, state, params)
  >>> round(float(gradclip_optax.get_info(state)["scale"]), 4)
  0.2041
"""

from ._calibrate import activation_norms
from ._info import get_info
from ._per_example import PerExampleClipState, clip_per_example, clip_per_example_transform
from ._prune import masks, strip
from ._state import TransformState, WrapState
from ._transform import transform
from ._wrap import wrap

__version__ = "0.2.0"

__all__ = ["transform", "wrap", "get_info", "strip", "masks", "TransformState", "WrapState",
           "clip_per_example", "clip_per_example_transform", "PerExampleClipState", "activation_norms"]
