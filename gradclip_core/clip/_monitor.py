"""Telemetry on device: what a rule did to the gradients, and how large the optimizer's step was.

:func:`monitor` wraps a gradient rule (or nothing) and reports, every step, with no host
sync (0-d arrays in the rule's info, which every adapter exposes):

==================  ==========================================================================
``norm``            global 2-norm of the gradients *before* the rule
``norm/<i>``        2-norm of each array before the rule (``per_array=True``); adapters
                    name them: ``norm/encoder.0.weight`` (torch ``named_parameters``),
                    ``norm/params/Dense_0/kernel`` (optax tree paths), Keras variable paths
``post_norm``       global 2-norm *after* the rule
``clipped``         1.0 where the rule lowered the global norm this step (a skip counts), else 0.0
``clip_rate``       exponential moving average of ``clipped`` (``decay``), bias-corrected as
                    Adam's moments are, so it is exact from the first step
``<rule>/...``      the wrapped rule's own info (a chain's: its rules' keys)
==================  ==========================================================================

:func:`update_ratio` is an update rule (``Rule.on_update``, as :func:`~gradclip_core.clippy`):
it sees the optimizer's step ``delta = w_new - w_old`` and reports ``update_norm``,
``weight_norm`` and their ``ratio`` (and ``ratio/<i>`` per array), leaving the step as it is.

Cost: the wrapped rule reuses the norms the monitor computed (one read of the gradients for
``monitor(clip_by_global_norm(...))``, as for the clip alone); ``post_norm`` comes from the
rule's factors where its effect is a scale (global or per array) or a skip, and otherwise
from the clipped arrays (one out-of-place application of the effect: a copy of the
gradients, e.g. for value clipping or AGC's per-unit factors).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from .._effect import Keep, On, Scale, Skip
from .._rule import Rule, factory
from .._validate import is_number
from ..backend._namespace import device_kw, namespace, state_namespace
from ..backend._primitives import apply_effect, reuse_norms, upcast
from .._numerics import acc_dtype, stack_norm
from ._norm import difference_norms_over_shards, norms_over_shards
from .._stateless import check_params

__all__ = ["monitor", "MonitorState", "update_ratio"]


class MonitorState(NamedTuple):
    """State of :func:`monitor`.

    Attributes:
      count: int32 0-d array, the number of steps seen.
      clip_rate: float32 0-d array, the (uncorrected) moving average of ``clipped``.
      weight: float32 0-d array, ``1 - decay**count`` accumulated the same way (the bias correction).
      inner: the wrapped rule's state.
    """

    count: Any
    clip_rate: Any
    weight: Any
    inner: Any


def _is_scalar(f: Any) -> bool:
    return f is None or len(getattr(f, "shape", ())) == 0


def _post_norms(xp: Any, grads: list, pre: list, effect: Any, dt: Any) -> list:
    """The per-array 2-norms of ``effect`` applied to ``grads``, whose norms are ``pre``."""
    if isinstance(effect, Keep):
        return list(pre)
    if isinstance(effect, Skip):
        inner = _post_norms(xp, grads, pre, effect.effect, dt)
        return [xp.where(effect.skip, xp.zeros_like(n), n) for n in inner]
    if isinstance(effect, On):
        sub = _post_norms(xp, [grads[i] for i in effect.indices], [pre[i] for i in effect.indices], effect.effect, dt)
        out = list(pre)
        for i, n in zip(effect.indices, sub):
            out[i] = n
        return out
    if isinstance(effect, Scale) and all(_is_scalar(f) for f in effect.factors):
        out = []
        for g, n, f in zip(grads, pre, effect.factors):
            if f is None:
                out.append(n)
                continue
            f = xp.abs(upcast(xp, upcast(xp, f, g.dtype), dt))  # the factor as applied: in the array's dtype
            out.append(n / f if effect.divide else n * f)
        return out
    return norms_over_shards(xp, apply_effect(xp, grads, effect), 2.0, dt)


def _check_decay(value: Any) -> float:
    if not is_number(value) or isinstance(value, bool) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"monitor: decay must be a number in (0, 1), e.g. 0.99, got {value!r}")
    return float(value)


def monitor(rule: Rule | None = None, *, per_array: bool = True, decay: float = 0.99) -> Rule:
    """Report the gradient norms before and after ``rule``, and how often it clips (on device).

    Args:
      rule: the gradient rule to watch (any rule, a :func:`~gradclip_core.chain` too), or
        ``None`` to only report the norms (the gradients are left as they are).
      per_array: also report each array's norm before the rule (``norm/<i>``, named by
        the adapters).
      decay: the clip-rate moving average's decay, in ``(0, 1)`` (0.99: about the last 100 steps).

    Returns:
      A :class:`Rule` with the wrapped rule's effect (a global scale stays foldable into a
      fused optimizer) and :class:`MonitorState`; info ``norm``, ``norm/<i>``,
      ``post_norm``, ``clipped``, ``clip_rate`` and the rule's info under its name.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.monitor(gc.clip_by_global_norm(1.0))
      >>> state = rule.init([np.zeros(2, np.float32)])
      >>> for g in ([3.0, 4.0], [0.3, 0.4], [6.0, 8.0]):
      ...     _, state, info = rule.update([np.array(g, np.float32)], state)
      ...     print(float(info["norm"]), round(float(info["post_norm"]), 6), float(info["clipped"]))
      5.0 1.0 1.0
      0.5 0.5 0.0
      10.0 1.0 1.0
      >>> round(float(info["clip_rate"]), 4), sorted(info)
      (0.6667, ['clip_by_global_norm/norm', 'clip_by_global_norm/scale', 'clip_rate', 'clipped', 'norm', 'norm/0', 'post_norm'])
    """
    if rule is not None and not isinstance(rule, Rule):
        raise ValueError(f"monitor: rule must be a gradclip Rule or None, got {type(rule).__name__}")
    if not isinstance(per_array, bool):
        raise ValueError(f"monitor: per_array must be True or False, got {per_array!r}")
    decay = _check_decay(decay)
    inner = Rule() if rule is None else rule
    # The wrapped rule's info keys: under its name; a chain's keys carry their rules' names already.
    prefix = "" if inner.name == "chain" else f"{inner.name}/"

    def init(params: Sequence[Any]) -> MonitorState:
        params = list(params)
        xp = state_namespace(params)
        kw = device_kw(params)
        zero = xp.zeros((), dtype=xp.float32, **kw)
        return MonitorState(xp.zeros((), dtype=xp.int32, **kw), zero, xp.zeros((), dtype=xp.float32, **kw),
                            inner.init(params))

    def update_effect(grads: Sequence[Any], state: MonitorState, params: Sequence[Any] | None = None):
        grads = list(grads)
        if not isinstance(state, MonitorState):
            raise ValueError(f"monitor: state must be the MonitorState made by rule.init, got {type(state).__name__}")
        if not grads:
            effect, inner_state, inner_info = inner.update_effect(grads, state.inner, params)
            return effect, state._replace(inner=inner_state), {f"{prefix}{k}": v for k, v in inner_info.items()}
        xp = namespace(*grads)
        dt = acc_dtype(xp, grads)
        with reuse_norms():  # the wrapped rule's norms of these arrays are these: one read of the gradients
            pre = norms_over_shards(xp, grads, 2.0, dt)
            effect, inner_state, inner_info = inner.update_effect(grads, state.inner, params)
        norm = stack_norm(xp, pre, 2.0)
        post = stack_norm(xp, _post_norms(xp, grads, pre, effect, dt), 2.0)
        clipped = xp.astype(post < norm, xp.float32)
        rate = decay * state.clip_rate + (1.0 - decay) * clipped
        weight = decay * state.weight + (1.0 - decay)
        info: dict = {"norm": norm}
        if per_array:
            info.update({f"norm/{i}": n for i, n in enumerate(pre)})
        info.update({"post_norm": post, "clipped": clipped, "clip_rate": rate / weight})
        info.update({f"{prefix}{k}": v for k, v in inner_info.items()})
        new = MonitorState(state.count + 1, xp.astype(rate, xp.float32), xp.astype(weight, xp.float32), inner_state)
        return effect, new, info

    def project_effect(params: Sequence[Any], state: MonitorState):
        effect, inner_state, inner_info = inner.project_effect(params, state.inner)
        return effect, state._replace(inner=inner_state), {f"{prefix}{k}": v for k, v in inner_info.items()}

    return Rule(
        init=init,
        update_effect=update_effect,
        project_effect=project_effect if inner.has_project else None,
        name="monitor",
        needs_params=inner.needs_params,
        on_update=inner.on_update,
        parts=(inner,),
        config={"rule": "monitor", "rule_config": None if rule is None else dict(rule.config), "per_array": per_array,
                "decay": decay},
    )


@factory
def update_ratio(*, per_array: bool = False) -> Rule:
    """Report the size of the optimizer's step against the weights: ``||w_new - w_old|| / ||w_old||``.

    An update rule (``on_update=True``, see :class:`~gradclip_core.Rule`): give it where
    update rules go (``gradclip_optax.wrap(gc.update_ratio(), opt)``,
    ``gradclip_keras.Optimizer(opt, gc.update_ratio())``, ``gradclip_torch.attach(opt,
    gc.update_ratio())``: torch snapshots the weights before the step, one copy). The step
    is left exactly as the optimizer made it.

    Args:
      per_array: also report each array's ratio (``ratio/<i>``, named by the adapters).

    Returns:
      A :class:`Rule` (no state); info ``update_norm``, ``weight_norm``, ``ratio`` (0 where
      both are 0, inf where only the weights are) and ``ratio/<i>``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.update_ratio()
      >>> w, delta = [np.array([3.0, 4.0], np.float32)], [np.array([0.03, 0.04], np.float32)]
      >>> out, _, info = rule.update(delta, rule.init(w), params=w)
      >>> out[0] is delta[0], round(float(info["ratio"]), 6)
      (True, 0.01)
    """
    if not isinstance(per_array, bool):
        raise ValueError(f"update_ratio: per_array must be True or False, got {per_array!r}")

    def ratio(xp: Any, u: Any, w: Any) -> Any:
        some = w > 0
        r = u / xp.where(some, w, xp.ones_like(w))
        return xp.where(some, r, xp.where(u > 0, xp.full_like(u, float("inf")), xp.zeros_like(u)))

    def report(xp: Any, un: list, wn: list, state: Any) -> tuple:
        u, w = stack_norm(xp, un, 2.0), stack_norm(xp, wn, 2.0)
        info: dict = {"update_norm": u, "weight_norm": w, "ratio": ratio(xp, u, w)}
        if per_array:
            info.update({f"ratio/{i}": ratio(xp, a, b) for i, (a, b) in enumerate(zip(un, wn))})
        return Keep(), state, info

    def update_effect(deltas: Sequence[Any], state: Any, params: Sequence[Any] | None = None):
        deltas = list(deltas)
        params = check_params("update_ratio", deltas, params)
        if not deltas:
            return Keep(), state, {}
        xp = namespace(*deltas)
        dt = acc_dtype(xp, [*deltas, *params])
        return report(xp, norms_over_shards(xp, deltas, 2.0, dt), norms_over_shards(xp, params, 2.0, dt), state)

    def update_effect_from_weights(after: Sequence[Any], before: Sequence[Any], state: Any):
        after = list(after)
        before = check_params("update_ratio", after, before)
        if not after:
            return Keep(), state, {}
        xp = namespace(*after)
        dt = acc_dtype(xp, [*after, *before])
        return report(xp, difference_norms_over_shards(xp, after, before, dt), norms_over_shards(xp, before, 2.0, dt), state)

    return Rule(update_effect=update_effect, update_effect_from_weights=update_effect_from_weights,
                name="update_ratio", needs_params=True, on_update=True)
