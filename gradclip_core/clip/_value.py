"""Element-wise clipping by value: ``[-c, c]`` or ``[lo, hi]``."""

from __future__ import annotations

from typing import Any

from .._effect import Clamp
from .._nonfinite import check_policy
from .._rule import Rule, factory
from .._stateless import stateless_rule
from .._validate import check_bounds, check_info
from ..backend._primitives import clipped_fraction

__all__ = ["clip_by_value"]


@factory
def clip_by_value(
    clip_value: float | None = None,
    *,
    lo: float | None = None,
    hi: float | None = None,
    nonfinite: str = "propagate",
    info: str = "basic",
) -> Rule:
    """Clip every element to ``[-clip_value, clip_value]`` or to ``[lo, hi]``.

    The same as ``torch.nn.utils.clip_grad_value_``, ``optax.clip`` and Keras'
    ``clipvalue`` (NaN stays NaN, +-Inf goes to the bound), except that a
    ``clip_value`` of 0 clips everything to 0 (Keras treats 0 as "off").

    Args:
      clip_value: symmetric bound ``c >= 0``; mutually exclusive with ``lo``/``hi``.
      lo: lower bound, or ``None`` for none.
      hi: upper bound, or ``None`` for none; ``lo <= hi``.
      nonfinite: ``"propagate" | "zero" | "skip" | "raise"`` (see :mod:`gradclip_core`).
      info: ``"basic"`` (default: no statistics, the rule is one clamp pass, as fast as
        ``clip_grad_value_``) or ``"full"``: also ``clipped_fraction``, the fraction of
        elements outside the bounds (one more read of the gradients to count them; torch's
        ``apply_`` / ``attach`` on the CPU count in the clamp's own pass: the count lives in
        the effect, ``Clamp(lo, hi, count)``, see :func:`gradclip_core.backend.clipped_fraction`).

    Returns:
      A stateless :class:`Rule` (info ``clipped_fraction`` with ``info="full"``).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_by_value(1.0, info="full")
      >>> g = [np.array([-3.0, 0.5, 2.0], np.float32)]
      >>> out, _, info = rule.update(g, rule.init(g))
      >>> out[0].tolist(), float(info["clipped_fraction"])
      ([-1.0, 0.5, 1.0], 0.6666666865348816)
    """
    lo_, hi_ = check_bounds("clip_by_value", clip_value, lo, hi)
    check_policy(nonfinite)
    full = check_info(info) == "full"

    def clip(xp: Any, grads: list, params: Any) -> tuple[Clamp, dict]:
        if not full:
            return Clamp(lo_, hi_), {}
        frac, count = clipped_fraction(xp, grads, lo_, hi_)  # (torch: counted in the clamp's pass)
        return Clamp(lo_, hi_, count), {"clipped_fraction": frac}

    return stateless_rule("clip_by_value", clip, nonfinite, real_only="clamps values to [lo, hi] (complex numbers have no order)")
