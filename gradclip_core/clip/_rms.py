"""RMS clipping per array: optax's ``clip_by_block_rms`` and Adafactor's update clipping."""

from __future__ import annotations

import math
from typing import Any, Callable

from .._effect import Scale
from .._nonfinite import check_policy
from .._numerics import acc_dtype, fraction
from .._rule import Rule, factory
from .._stateless import stateless_rule
from .._validate import check_threshold
from ..backend._namespace import device_kw
from ..backend._primitives import array_norms, array_rms, size
from ._norm import _unstack

__all__ = ["clip_by_block_rms", "clip_update_rms"]


def _block_rms(xp: Any, xs: list, dtype: Any) -> list:
    """optax order: ``sqrt(mean(x**2))`` (torch: from its fused norm kernel); size-0 arrays have RMS 0."""
    return array_rms(xp, xs, dtype)


def _norm_rms(xp: Any, xs: list, dtype: Any) -> Any:
    """Adafactor (transformers / fairseq) order: ``norm(x) / sqrt(numel)``, as one vector."""
    roots = xp.asarray([math.sqrt(max(size(x), 1)) for x in xs], dtype=dtype, **device_kw(xs))
    return xp.stack(array_norms(xp, xs, 2.0, dtype)) / roots


def _rms_rule(threshold: Any, nonfinite: str, rms_fn: Callable[[Any, list, Any], Any], name: str) -> Rule:
    def clip(xp: Any, grads: list, params: Any) -> tuple[Scale, dict]:
        rms = rms_fn(xp, grads, acc_dtype(xp, grads))
        rms = rms if hasattr(rms, "shape") else xp.stack(rms)
        denoms = xp.maximum(rms / threshold, xp.ones_like(rms))  # all arrays at once
        info = {"max_rms": xp.max(rms), "clipped_fraction": fraction(xp, [denoms > 1], [len(grads)])}
        return Scale(tuple(_unstack(xp, denoms, len(grads))), divide=True), info

    return stateless_rule(name, clip, nonfinite)


@factory
def clip_by_block_rms(threshold: float, *, nonfinite: str = "propagate") -> Rule:
    """Divide each array by ``max(1, rms / threshold)``, ``rms = sqrt(mean(x**2))`` (optax).

    The same formula and operation order as ``optax.clip_by_block_rms`` (bit for bit under
    JAX), with the RMS accumulated in float32 at least; torch computes the RMS from its
    fused norm kernel (``norm / sqrt(n)``, within an ulp), so that the rule costs one read
    and one in-place division of the gradients. A size-0 array has RMS 0 (optax gives NaN).

    Args:
      threshold: finite RMS bound ``> 0``.
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``.

    Returns:
      A stateless :class:`Rule`; info has ``max_rms`` (largest per-array RMS before
      clipping) and ``clipped_fraction`` (fraction of arrays scaled down).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_by_block_rms(1.0)
      >>> g = [np.full(4, 2.0, np.float32), np.full(2, 0.5, np.float32)]
      >>> out, _, info = rule.update(g, rule.init(g))
      >>> out[0].tolist(), out[1].tolist(), float(info["max_rms"])
      ([1.0, 1.0, 1.0, 1.0], [0.5, 0.5], 2.0)
    """
    threshold = check_threshold("threshold", threshold, positive=True)
    check_policy(nonfinite)
    return _rms_rule(threshold, nonfinite, _block_rms, "clip_by_block_rms")


@factory
def clip_update_rms(threshold: float = 1.0, *, nonfinite: str = "propagate") -> Rule:
    """Adafactor update clipping: divide each array by ``max(1, rms / threshold)``.

    Shazeer & Stern (2018), section 5, with ``rms = norm(x) / sqrt(numel(x))`` as in
    the transformers and fairseq ``Adafactor`` (``d = threshold``, default 1.0).
    Adafactor applies it to the optimizer's *update*: in optax put
    ``gradclip_optax.transform(rule)`` after the ``scale_by_*`` transform; applied
    before the optimizer (torch hooks, Keras wrapper) it clips the gradient's RMS.

    Args:
      threshold: the clipping threshold ``d > 0``.
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"``.

    Returns:
      A stateless :class:`Rule`; info has ``max_rms`` and ``clipped_fraction``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_update_rms(1.0)
      >>> g = [np.array([3.0, 4.0], np.float32)]      # rms = 5 / sqrt(2)
      >>> out, _, _ = rule.update(g, rule.init(g))
      >>> out[0].astype(float).round(5).tolist()
      [0.84853, 1.13137]
    """
    threshold = check_threshold("threshold", threshold, positive=True)
    check_policy(nonfinite)
    return _rms_rule(threshold, nonfinite, _norm_rms, "clip_update_rms")
