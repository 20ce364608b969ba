"""Argument checks run at rule construction; each error names the argument and the expected form."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

__all__ = ["check_threshold", "check_choice", "check_ord", "check_info", "check_real", "is_number", "INFO_LEVELS"]

INFO_LEVELS = ("basic", "full")


def is_number(value: Any) -> bool:
    """A real Python/NumPy number (not bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_threshold(name: str, value: Any, *, positive: bool = False) -> Any:
    """A finite threshold ``>= 0`` (``> 0`` if ``positive``), or a 0-d array (checked by the user).

    0-d arrays are accepted unchecked so that thresholds can be traced values
    (``optax.inject_hyperparams``, schedules); checking them would need a host sync.
    """
    if is_number(value):
        v = float(value)
        bound = "> 0" if positive else ">= 0"
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
        return v
    if getattr(value, "shape", None) == ():
        return value
    raise ValueError(f"{name} must be a finite number (or a 0-d array), got {type(value).__name__} {value!r}")


def check_bound(name: str, value: Any) -> float | None:
    """An optional finite bound (``None`` means unbounded)."""
    if value is None:
        return None
    if not is_number(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number or None, got {value!r}")
    return float(value)


def check_bounds(rule: str, clip_value: Any, lo: Any, hi: Any) -> tuple[Any, Any]:
    """``(lo, hi)`` of a value clip given as ``clip_value=c`` (``[-c, c]``) or ``lo=``/``hi=``."""
    if clip_value is not None:
        if lo is not None or hi is not None:
            raise ValueError("clip_value is mutually exclusive with lo/hi: pass clip_value=c or lo=..., hi=...")
        c = check_threshold("clip_value", clip_value)
        return -c, c
    lo_, hi_ = check_bound("lo", lo), check_bound("hi", hi)
    if lo_ is None and hi_ is None:
        raise ValueError(f"{rule} needs clip_value, or at least one of lo/hi")
    if lo_ is not None and hi_ is not None and lo_ > hi_:
        raise ValueError(f"lo must be <= hi, got lo={lo!r}, hi={hi!r}")
    return lo_, hi_


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_ord(value: Any) -> float:
    """Norm order: 1, 2 or inf (``"inf"`` and ``math.inf`` accepted)."""
    if isinstance(value, str) and value.lower() == "inf":
        return math.inf
    if is_number(value) and float(value) in (1.0, 2.0, math.inf):
        return float(value)
    raise ValueError(f"ord must be 1, 2 or inf, got {value!r}")


def check_info(value: Any) -> str:
    """``info=``: ``"basic"`` (what the rule computes anyway, no extra pass) or ``"full"``
    (also statistics that cost a pass over the arrays, e.g. a value clip's ``clipped_fraction``)."""
    return check_choice("info", value, INFO_LEVELS)


def check_real(rule: str, arrays: Iterable[Any], what: str) -> None:
    """Refuse complex arrays in a rule defined on real numbers only, naming the array.

    Norm-based rules support complex arrays (they use ``|z|``); rules that compare,
    clamp, rank or threshold the values themselves (``what``) do not, and would
    otherwise silently drop the imaginary parts on the way to float32.

    Raises:
      TypeError: an array is complex; the message names it (the adapter's name for it,
        see :func:`gradclip_core.backend.array_names`) and its dtype.
    """
    from .backend._names import array_label
    from .backend._primitives import is_complex

    for i, x in enumerate(arrays):
        if is_complex(x):
            raise TypeError(
                f"{rule}: {array_label(i)} is {x.dtype}, but {rule} {what}, so it is defined for real arrays "
                "only. The norm-based rules (clip_by_global_norm, clip_by_norm, "
                "clip_by_block_rms, clip_update_rms, adaptive_clip, autoclip, zclip, record_norms, max_norm, "
                "min_max_norm, unit_norm) support complex arrays, using |z|."
            )
