"""``wrap(rule, inner)``: a gradclip rule around an optimizer, including its ``project`` part."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

import gradclip_core as gc
from gradclip_core.backend import array_names, name_info

from ._axis import axis_collective, check_axis_name
from ._flat import flatten, leaf_names, params_like
from ._state import WrapState, info_like, match_info
from ._transform import check_rule, feed

__all__ = ["wrap", "skipped", "restart_regrown"]


def skipped(info: dict) -> jax.Array | None:
    """The skip signal of ``nonfinite="skip"`` rules in ``info``, or ``None`` if none can skip.

    Looks at ``info["skipped"]`` and, inside :func:`gradclip_core.chain`, every
    ``".../skipped"`` key; true if any of them is set.

    Example:
      >>> import jax.numpy as jnp
      >>> bool(skipped({"a/skipped": jnp.int32(0), "b/skipped": jnp.int32(1)})), skipped({"norm": 1.0})
      (True, None)
    """
    flags = [v for k, v in info.items() if k == "skipped" or k.endswith("/skipped")]
    if not flags:
        return None
    out = flags[0] != 0
    for f in flags[1:]:
        out = jnp.logical_or(out, f != 0)
    return out


def check_inner(inner: Any) -> None:
    """``inner`` must be an optax ``GradientTransformation`` (an object with ``init`` and ``update``).

    Example:
      >>> check_inner(optax.adam)
      Traceback (most recent call last):
      TypeError: wrap: inner must be an optax GradientTransformation, got the function optax.adam: call it first, e.g. optax.adam(1e-3)
    """
    if callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None)):
        return
    if callable(inner):
        module = getattr(inner, "__module__", "") or ""
        qual = getattr(inner, "__qualname__", getattr(inner, "__name__", repr(inner)))
        where = "optax." if module.startswith("optax") else (module + "." if module else "")
        raise TypeError(
            f"wrap: inner must be an optax GradientTransformation, got the function {where}{qual}: "
            f"call it first, e.g. {where}{qual}(1e-3)"
        )
    raise TypeError(f"wrap: inner must be an optax GradientTransformation (e.g. optax.adam(1e-3)), got {type(inner).__name__}")


def restart_regrown(inner_state: Any, treedef: Any, regrown: list) -> Any:
    """``inner_state`` with every params-shaped subtree zeroed where ``regrown`` (RigL / SET).

    Dynamic sparse training (:func:`gradclip_core.rigl`) restarts the optimizer state of
    the elements it grows (jaxpruner's ``restart_inner_state``): every subtree of the
    inner optimizer's state with the structure of the params (momentum ``trace``, Adam
    ``mu`` / ``nu``, ...) gets ``where(regrown, 0, leaf)`` on the leaves shaped like their
    parameter; anything else (step counts) is left as it is.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> params = [jnp.ones(3)]
      >>> state = optax.adam(0.1).init(params)._replace if False else optax.adam(0.1).init(params)
      >>> state = jax.tree.map(lambda x: x + 1, state)
      >>> out = restart_regrown(state, jax.tree.structure(params), [jnp.array([False, True, False])])
      >>> out[0].mu[0].tolist(), int(out[0].count)
      ([1.0, 0.0, 1.0], 1)
    """

    def walk(node: Any) -> Any:
        if jax.tree.structure(node) == treedef:
            leaves = treedef.flatten_up_to(node)
            return treedef.unflatten([
                jnp.where(r, jnp.zeros_like(x), x) if hasattr(x, "shape") and tuple(x.shape) == tuple(r.shape) else x
                for x, r in zip(leaves, regrown)])
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(walk(v) for v in node))
        if isinstance(node, (tuple, list)):
            return type(node)(walk(v) for v in node)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    return walk(inner_state)


def _regrown(rule_state: Any, n: int) -> list | None:
    found = gc.backend.find_regrown(rule_state, n)
    if not found:
        return None
    out = list(found[0])
    for rs in found[1:]:
        out = [a | b for a, b in zip(out, rs)]
    return out


def _keep_if(skip: jax.Array, old: Any, new: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(skip, a, b), old, new)


def wrap(
    rule: gc.Rule, inner: optax.GradientTransformation, *, axis_name: Any = None
) -> optax.GradientTransformationExtraArgs:
    """An optimizer ``inner`` with a gradclip rule applied before and after its step.

    One ``update(grads, state, params)`` does, on the flattened pytrees::

        g, rule_state, info  = rule.update(grads, rule_state, params)   # clip / mask grads
        u, inner_state       = inner.update(g, inner_state, params)     # the optimizer
        new_p, rule_state, _ = rule.project(params + u, rule_state)     # constrain / prune
        return where(new_p == params + u, u, new_p - params)            # the update

    Why not just ``u``: optax never hands the weights *after* the step to a
    transformation, it only returns updates that the user applies with
    ``optax.apply_updates(params, updates)``. So where the projection changes a weight,
    the update is ``proj(p + u) - p``, and ``apply_updates`` lands on the projected
    weight; where it leaves the weight as it is, the update is the inner optimizer's
    ``u`` itself. The resulting weights:

    - weights the rule leaves unchanged: exactly ``p + u``, what ``apply_updates``
      makes of the unwrapped optimizer's update (``wrap(non_neg(), optax.sgd(lr))``
      equals ``optax.chain(optax.sgd(lr), optax.keep_params_nonnegative())`` bit for
      bit under ``jax.jit``, ``tests/optax/test_wrap.py``);
    - weights the rule sets to 0 (pruning, ``non_neg``): exactly 0 (``p + (-p)``);
    - weights the rule moves elsewhere (clipped, shrunk, renormalised): ``proj(p + u)``
      up to the two roundings of ``(q - p)`` and ``p + (q - p)``: within 2 ulp *of the
      operands* ``max(|p|, |u|)`` (exact when ``q`` and ``p`` are within a factor 2,
      Sterbenz), not of the result. Under ``jax.jit`` XLA may also evaluate
      ``p + u`` with a fused multiply-add (``p - lr * g`` without rounding ``lr * g``),
      in the rule and in your ``apply_updates`` alike, so where ``p + u`` nearly
      cancels, the result can differ from an eager ``rule.project(apply_updates(p, u))``
      by many ulp of itself (the parity suite allows 2 ulp of the operands on top of
      the rule's tolerance). For bit-exact projected weights, apply ``rule.project``
      yourself after ``optax.apply_updates``.

    Update clipping (``rule.on_update``: :func:`gradclip_core.clippy`,
    :func:`gradclip_core.clip_update_norm`): the rule runs on the inner optimizer's
    updates ``u`` instead of the gradients, with ``params`` the weights before the step
    (``u, rule_state, info = rule.update(u, rule_state, params)`` after ``inner.update``),
    which costs no copy: optax hands the update over before it is applied. The result
    equals ``optax.chain(inner, gradclip_optax.transform(rule))``, except on skipped steps
    (``nonfinite="skip"`` on a non-finite update keeps everything, as below).

    For a rule without a ``project`` part (the clipping rules) the round trip is
    skipped and ``wrap(rule, inner)`` returns exactly the updates of
    ``optax.chain(gradclip_optax.transform(rule), inner)``, except on skipped steps:

    With ``nonfinite="skip"``, a step whose gradients hold NaN/Inf leaves everything
    unchanged (like ``optax.apply_if_finite``, but branch-free): zero updates, and the
    inner optimizer's state and the rule's state are kept, so params and optimizer
    state are exactly those before the step; ``state.info["skipped"]`` is 1.

    ``params`` are required. Extra keyword arguments of ``update`` go to ``inner``;
    ``loss=`` also feeds the rules that test the loss (:func:`gradclip_core.skip_on_spike`
    with ``loss=True``, which then require it): ``tx.update(grads, state, params, loss=loss)``.

    :func:`gradclip_core.skip_on_spike` here is a true skip too: on a spike step the
    updates are zeros and the inner optimizer's state (moments, step count) and the rule's
    state are kept, as ``optax.apply_if_finite`` does for non-finite gradients.

    Args:
      rule: any :class:`gradclip_core.Rule` (clipping, constraint, pruning, a chain).
      inner: the optimizer (any ``optax.GradientTransformation``).
      axis_name: ``None``, or the ``shard_map`` / ``pmap`` axis over which the updates and
        params are sharded (blocks of leading rows): the rule's global norms, pruning
        thresholds and counts are reduced over it (see :func:`gradclip_optax.transform`).
        The pruning masks in the state are then shards too.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`WrapState`
      (``state.info``: info of the last step, ``update`` and ``project`` merged;
      per-array keys by tree path, ``sparsity/params/dense/kernel``).

    Raises:
      TypeError: ``rule`` is not a gradclip rule, or ``inner`` is not an optax
        ``GradientTransformation`` (e.g. the factory ``optax.adam`` instead of
        ``optax.adam(1e-3)``).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import gradclip_core as gc
      >>> import gradclip_optax
      >>> params = [jnp.array([1.0, 2.0])]
      >>> tx = gradclip_optax.wrap(gc.clip_by_global_norm(1.0, nonfinite="skip"), optax.adam(0.1))
      >>> state = tx.init(params)
      >>> updates, state = tx.update([jnp.array([jnp.nan, 1.0])], state, params)
      >>> optax.apply_updates(params, updates)[0].tolist(), int(state.info["skipped"])
      ([1.0, 2.0], 1)
    """
    check_rule(rule)
    check_inner(inner)
    axis_name = check_axis_name(axis_name)
    inner = optax.with_extra_args_support(inner)
    project = rule.has_project
    on_update = rule.on_update

    def step(leaves: list, treedef: Any, state: WrapState, p: list, params: Any, **extra: Any):
        if on_update:  # update clipping: the rule runs on the inner optimizer's update, below
            g, rule_state, info = leaves, state.rule_state, {}
        else:
            g, rule_state, info = rule.update(leaves, feed(rule, state.rule_state, extra.get("loss")), p)
        u_tree, inner_state = inner.update(jax.tree.unflatten(treedef, g), state.inner_state, params, **extra)
        u = treedef.flatten_up_to(u_tree)
        regrown = _regrown(rule_state, len(p))
        if regrown is not None:  # RigL / SET: the optimizer state of grown elements restarts at 0
            inner_state = restart_regrown(inner_state, treedef, regrown)
        if on_update:
            u, rule_state, info = rule.update(u, rule_state, p)
        pkeys: tuple = ()
        if project:
            moved = [jnp.asarray(pi + ui).astype(pi.dtype) for pi, ui in zip(p, u)]  # optax.apply_updates
            new_p, rule_state, pinfo = rule.project(moved, rule_state)
            # Unchanged weights keep the inner update itself (apply_updates then computes exactly
            # p + u, as without the rule); only the weights the rule moved get proj(p + u) - p.
            u = [jnp.where(q == m, ui, (q - pi).astype(ui.dtype)) for q, m, pi, ui in zip(new_p, moved, p, u)]
            info = {**info, **pinfo}
            pkeys = tuple(pinfo)
        return u, rule_state, inner_state, info, pkeys

    probe_loss = {"loss": 0.0} if gc.needs_loss(rule) else {}

    def init_fn(params: Any) -> WrapState:
        leaves, treedef = flatten(params)
        inner_state = inner.init(params)
        with array_names(lambda: leaf_names(params)):  # (gc.Params patterns match the tree paths)
            rule_state = rule.init(leaves)
            probe = WrapState(rule_state, inner_state, {})
            info = info_like(lambda: step(leaves, treedef, probe, leaves, params, **probe_loss)[3])
        info = name_info(info, lambda: leaf_names(params))
        return WrapState(rule_state=rule_state, inner_state=inner_state, info=info)

    def update_fn(updates: Any, state: WrapState, params: Any = None, **extra: Any) -> tuple[Any, WrapState]:
        leaves, treedef = flatten(updates)
        p = params_like(treedef, params, rule.name, required=True, updates=leaves)
        with axis_collective(axis_name), array_names(lambda: leaf_names(updates)):
            u, rule_state, inner_state, info, pkeys = step(leaves, treedef, state, p, params, **extra)
        named = name_info(dict.fromkeys(info), lambda: leaf_names(updates))
        pkeys = {k2 for k1, k2 in zip(info, named) if k1 in pkeys}
        info = dict(zip(named, info.values()))
        skip = skipped(info)
        if skip is not None:
            u = [jnp.where(skip, jnp.zeros_like(x), x) for x in u]
            rule_state = _keep_if(skip, state.rule_state, rule_state)
            inner_state = _keep_if(skip, state.inner_state, inner_state)
            # a skipped step did not project: the last projection's info (sparsity, ...) stands
            info = {k: jnp.where(skip, state.info[k], v) if k in pkeys and k in state.info else v for k, v in info.items()}
        new_state = WrapState(rule_state, inner_state, match_info(info, state.info))
        return jax.tree.unflatten(treedef, u), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
