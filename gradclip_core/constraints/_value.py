"""Element-wise weight constraints: weight clipping (WGAN) and non-negativity (Keras ``NonNeg``)."""

from __future__ import annotations

from typing import Any

from .._effect import Clamp
from .._numerics import count, ratio
from .._rule import Rule, factory
from .._validate import check_bounds, check_info
from ..backend._primitives import size
from ._base import project_rule

__all__ = ["clip_weights", "non_neg"]


@factory
def clip_weights(clip_value: float | None = None, *, lo: float | None = None, hi: float | None = None,
                 info: str = "basic") -> Rule:
    """Weight clipping to ``[-c, c]`` or ``[lo, hi]`` after every step (WGAN's critic: ``c = 0.01``).

    Element-wise, exact in every dtype (bounds rounded to the weight dtype, NaN stays NaN).

    Args:
      clip_value: symmetric bound ``c >= 0``; or ``lo`` / ``hi`` (either may be None).
      info: ``"basic"`` (no statistics: one clamp pass) or ``"full"``: also
        ``clipped_fraction`` (elements outside the bounds; one more read of the weights).

    Returns:
      A project-only :class:`Rule`.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.clip_weights(0.01)
      >>> w, _, info = rule.project([np.array([0.5, -0.005], np.float32)], rule.init([]))
      >>> w[0].tolist()
      [0.009999999776482582, -0.004999999888241291]
    """
    lo_, hi_ = check_bounds("clip_weights", clip_value, lo, hi)
    full = check_info(info) == "full"

    def fn(xp: Any, params: list) -> tuple[Clamp, dict]:
        if not full:
            return Clamp(lo_, hi_), {}
        hits = []
        for p in params:
            if lo_ is not None:
                hits.append(count(xp, p < xp.asarray(lo_, dtype=p.dtype)))
            if hi_ is not None:
                hits.append(count(xp, p > xp.asarray(hi_, dtype=p.dtype)))
        total = sum(size(p) for p in params)
        return Clamp(lo_, hi_), {"clipped_fraction": ratio(xp, hits, total)}

    return project_rule("clip_weights", fn, real_only="clamps values to [lo, hi] (complex numbers have no order)")


@factory
def non_neg(*, info: str = "basic") -> Rule:
    """Keras ``NonNeg``: ``maximum(w, 0)`` (exact; NaN stays NaN).

    Args:
      info: ``"basic"`` (no statistics) or ``"full"``: also ``clipped_fraction``
        (negative elements; one more read of the weights).

    Returns:
      A project-only :class:`Rule`.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> w, _, _ = gc.non_neg().project([np.array([-1.0, 2.0], np.float32)], ())
      >>> w[0].tolist()
      [0.0, 2.0]
    """

    full = check_info(info) == "full"

    def fn(xp: Any, params: list) -> tuple[Clamp, dict]:
        if not full:
            return Clamp(0.0, None), {}
        hits = [count(xp, p < xp.asarray(0.0, dtype=p.dtype)) for p in params]
        return Clamp(0.0, None), {"clipped_fraction": ratio(xp, hits, sum(size(p) for p in params))}

    return project_rule("non_neg", fn, real_only="keeps values >= 0 (complex numbers have no order)")
