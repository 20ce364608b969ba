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
from ..backend._primitives import array_norms, array_sumsq, size

__all__ = ["clip_by_block_rms", "clip_update_rms"]


def _block_rms(xp: Any, xs: list, dtype: Any) -> list:
    """optax order: ``sqrt(mean(x**2))``; size-0 arrays have RMS 0."""
    return [xp.sqrt(s / float(max(size(x), 1))) for x, s in zip(xs, array_sumsq(xp, xs, dtype))]


def _norm_rms(xp: Any, xs: list, dtype: Any) -> list:
    """Adafactor (transformers / fairseq) order: ``norm(x) / sqrt(numel)``."""
    return [n / math.sqrt(max(size(x), 1)) for x, n in zip(xs, array_norms(xp, xs, 2.0, dtype))]


def _rms_rule(threshold: Any, nonfinite: str, rms_fn: Callable[[Any, list, Any], list], name: str) -> Rule:
    def clip(xp: Any, grads: list, params: Any) -> tuple[list, dict]:
        rms = rms_fn(xp, grads, acc_dtype(xp, grads))
        denoms = [xp.maximum(r / threshold, xp.ones_like(r)) for r in rms]
        info = {
            "max_rms": xp.max(xp.stack(rms)),
            "clipped_fraction": fraction(xp, [d > 1 for d in denoms], [1] * len(denoms)),
        }
        return Scale(tuple(denoms), divide=True), info

    return stateless_rule(name, clip, nonfinite)


@factory
def clip_by_block_rms(threshold: float, *, nonfinite: str = "propagate") -> Rule:
    """Divide each array by ``max(1, rms / threshold)``, ``rms = sqrt(mean(x**2))`` (optax).

    The same formula and operation order as ``optax.clip_by_block_rms``, with the RMS
    accumulated in float32 at least. A size-0 array has RMS 0 (optax gives NaN).

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
