"""``transform(rule)``: a gradclip rule as an optax chain element."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

import gradclip_core as gc
from gradclip_core.backend import array_names, name_info

from ._axis import axis_collective, check_axis_name
from ._flat import flatten, leaf_names, params_like
from ._state import TransformState, info_like, match_info

__all__ = ["transform", "check_rule", "feed"]


def check_rule(rule: Any) -> gc.Rule:
    """``rule`` must be a :class:`gradclip_core.Rule`."""
    if not isinstance(rule, gc.Rule):
        raise TypeError(f"expected a gradclip_core.Rule (e.g. gradclip_core.clip_by_global_norm(1.0)), got {type(rule).__name__}")
    return rule


def feed(rule: gc.Rule, rule_state: Any, loss: Any) -> Any:
    """The rule state with the step's ``loss`` fed in (:func:`gradclip_core.feed_loss`).

    Raises:
      ValueError: the rule needs a loss (``skip_on_spike(loss=True)``) and ``loss`` is ``None``.
    """
    if loss is None:
        if gc.needs_loss(rule):
            raise ValueError(
                f"rule {rule.name!r} tests the loss (skip_on_spike(loss=True)): pass the step's loss to the "
                "update, tx.update(grads, state, params, loss=loss)"
            )
        return rule_state
    if not gc.skips_finite(rule):  # no rule here reads a loss (it may be for another chain element)
        return rule_state
    return gc.feed_loss(rule_state, jax.lax.stop_gradient(jnp.asarray(loss)))


def transform(rule: gc.Rule, *, axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
    """The ``update`` part of a gradclip rule as an optax ``GradientTransformation``.

    Use it as a chain element, usually before the optimizer::

        tx = optax.chain(gradclip_optax.transform(rule), optax.adam(1e-3))

    The updates pytree is flattened (``jax.tree.flatten`` order), the rule runs on the
    leaves, and the result is unflattened to the same structure. ``params`` are passed
    to the rule; rules that need them (``rule.needs_params``, e.g.
    :func:`gradclip_core.adaptive_clip`) raise optax's ``NO_PARAMS_MSG`` without them.
    Everything is pure and branch-free: it runs under ``jax.jit``, ``jax.grad`` of a
    whole step, ``optax.MultiSteps`` and ``optax.inject_hyperparams`` (thresholds may
    be 0-d arrays)::

        tx = optax.inject_hyperparams(
            lambda max_norm: gradclip_optax.transform(gradclip_core.clip_by_global_norm(max_norm))
        )(max_norm=1.0)
        state.hyperparams["max_norm"] = 0.5  # between steps

    The state is a :class:`TransformState`; ``state.info`` holds the info of the last
    update for logging (``state.info["norm"]``; zeros after ``init``), see also
    :func:`gradclip_optax.get_info`. Per-array info keys name the leaf by its tree path
    (``sparsity/params/dense/kernel``; a list of arrays gives ``sparsity/0``, ...), and
    ``nonfinite="raise"`` (eager only) names the paths of the non-finite leaves.

    ``nonfinite="skip"`` here only zeroes the updates (``info["skipped"] = 1``): the
    optimizers after it in the chain still take a step with zero updates (Adam's
    moments decay, counts advance). To leave parameters *and* optimizer state
    unchanged, use :func:`gradclip_optax.wrap` ``(rule, optimizer)`` instead.

    The loss: ``update`` takes extra keyword arguments (an
    ``optax.GradientTransformationExtraArgs``; ``optax.chain`` hands them to every element).
    ``loss=`` feeds the step's loss to the rules that test it
    (:func:`gradclip_core.skip_on_spike` with ``loss=True``, which then require it); the
    other extra arguments are ignored::

        updates, state = tx.update(grads, state, params, loss=loss)

    Update clipping (``rule.on_update``: :func:`gradclip_core.clippy`,
    :func:`gradclip_core.clip_update_norm`) acts on the optimizer's update: put the
    transform *after* the optimizer, ``optax.chain(optax.adam(1e-3), transform(rule))``
    (or use :func:`gradclip_optax.wrap`, which places it there itself); ``params`` are then
    the weights before the step, as the rule expects.

    Rules with a ``project`` part (constraints, pruning) act on the weights after the
    step, which a chain element never sees: they need :func:`gradclip_optax.wrap`, and
    ``transform`` raises for them.

    Sharded updates: under ``jax.jit`` with ``NamedSharding`` nothing changes (the
    arrays are global, XLA adds the collectives). Inside ``shard_map`` / ``pmap``, where
    each instance holds a shard (block of leading rows) of every array, pass the mapped
    axis as ``axis_name``: global norms and counts are then reduced with ``lax.psum`` /
    ``lax.pmax`` over it, once per step for a global-norm clip. Leave it ``None`` for
    replicated gradients (after ``lax.pmean``). On a 2-D mesh, pass the tuple of axes
    the leading dimension of *every* array is split over (``("data", "model")`` for
    ``P(("data", "model"))``); arrays split along another dimension, or replicated ones
    beside sharded ones, need ``jax.jit`` with ``NamedSharding`` instead.

    Args:
      rule: a :class:`gradclip_core.Rule` without a ``project`` part.
      axis_name: ``None``, or the ``shard_map`` / ``pmap`` axis the updates are sharded
        over (a name or a tuple of names).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`TransformState`.

    Raises:
      TypeError: ``rule`` is not a gradclip rule.
      ValueError: the rule has a ``project`` part.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import gradclip_core as gc
      >>> import gradclip_optax
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> tx = optax.chain(gradclip_optax.transform(gc.clip_by_global_norm(1.0)), optax.sgd(1.0))
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)
      >>> [round(float(x), 4) for x in updates["w"]], float(state[0].info["norm"])
      ([-0.6, -0.8], 5.0)
    """
    check_rule(rule)
    axis_name = check_axis_name(axis_name)
    if rule.has_project:
        raise ValueError(
            f"rule {rule.name!r} has a project part (it acts on the weights after the optimizer step), "
            "which an optax chain element cannot see; use gradclip_optax.wrap(rule, optimizer) instead"
        )

    def init_fn(params: Any) -> TransformState:
        leaves, _ = flatten(params)
        with array_names(lambda: leaf_names(params)):  # (gc.Params patterns match the tree paths)
            rule_state = rule.init(leaves)
            info = info_like(lambda: rule.update(leaves, rule_state, leaves)[2])
        return TransformState(rule_state=rule_state, info=name_info(info, lambda: leaf_names(params)))

    def update_fn(updates: Any, state: TransformState, params: Any = None, *, loss: Any = None,
                  **extra: Any) -> tuple[Any, TransformState]:
        del extra  # (other chain elements' extra arguments)
        leaves, treedef = flatten(updates)
        p = params_like(treedef, params, rule.name, rule.needs_params, leaves if rule.needs_params else None)
        with axis_collective(axis_name), array_names(lambda: leaf_names(updates)):
            out, rule_state, info = rule.update(leaves, feed(rule, state.rule_state, loss), p)
        info = name_info(info, lambda: leaf_names(updates))
        return jax.tree.unflatten(treedef, out), TransformState(rule_state, match_info(info, state.info))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
