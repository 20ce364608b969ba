"""What a training run records, step by step."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

METRICS = ("loss", "grad_norm", "sparsity", "accuracy", "skipped")


@dataclasses.dataclass
class History:
    """Per-step metrics of one framework's run.

    Attributes:
      framework: e.g. ``"torch"``, ``"optax"``, ``"keras/jax"``.
      loss: training loss of each step's batch (before the step), float64 ``(steps,)``.
      grad_norm: the clip's ``info["norm"]`` (global gradient norm before clipping).
      sparsity: the pruning rule's ``info["sparsity"]`` after the step.
      accuracy: test accuracy after the step; NaN on steps not evaluated.
      skipped: ``skip_on_spike``'s ``info["skipped"]`` (1.0: the optimizer step was skipped).
      seconds: wall time of the training loop (compilation included).
      weights: the final weights, ``(in, out)`` layout (``None`` if not kept).
      masks: the final keep-masks of the rule's pruning, one bool array per weight,
        ``(in, out)`` layout (``None`` if not kept).

    Example:
      >>> h = History.empty("numpy", 3)
      >>> h.record(0, loss=1.0, grad_norm=2.0, sparsity=0.0)
      >>> h.loss.tolist()[:1], bool(np.isnan(h.accuracy[0]))
      ([1.0], True)
    """

    framework: str
    loss: np.ndarray
    grad_norm: np.ndarray
    sparsity: np.ndarray
    accuracy: np.ndarray
    skipped: np.ndarray
    seconds: float = 0.0
    weights: list | None = dataclasses.field(default=None, repr=False)
    masks: list | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def empty(cls, framework: str, steps: int) -> "History":
        """A history of ``steps`` NaN entries."""
        return cls(framework, *(np.full(steps, np.nan) for _ in METRICS))

    def record(self, step: int, **values: Any) -> None:
        """Store the given metrics (floats or 0-d arrays) of ``step``."""
        for name, value in values.items():
            getattr(self, name)[step] = float(value)

    def to_dict(self) -> dict:
        """JSON-able form (lists; NaN as ``None``)."""
        out: dict = {"framework": self.framework, "seconds": self.seconds}
        for m in METRICS:
            out[m] = [None if np.isnan(v) else float(v) for v in getattr(self, m)]
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "History":
        """Inverse of :meth:`to_dict`."""
        arrays = [np.array([np.nan if v is None else v for v in d.get(m, [None] * len(d["loss"]))], np.float64)
                  for m in METRICS]
        return cls(d["framework"], *arrays, seconds=float(d.get("seconds", 0.0)))


def pick(info: Mapping[str, Any], suffix: str) -> Any:
    """The value of the chain's info key ending in ``/<suffix>`` (or equal to ``suffix``).

    Example:
      >>> pick({"clip_by_global_norm/norm": 3.0, "x/scale": 1.0}, "norm")
      3.0
    """
    for key, value in info.items():
        if key == suffix or key.endswith("/" + suffix):
            return value
    raise KeyError(f"no info key ending in {suffix!r} in {sorted(info)}")
