"""Benchmark rows and the one table every benchmark prints."""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Optional

from _measure import MiB


@dataclasses.dataclass
class Row:
    """One measurement: a rule through one adapter path, against a native function (or none).

    Attributes:
      rule: the gradclip rule (as configured).
      adapter: ``torch``, ``optax``, ``keras/<backend>``.
      path: how the adapter ran it (``apply_``, ``attach``, ``jit``, ``project_``, ``fit step``...).
      native: the native function compared with, or ``"—"``; for rules without one, the
        reference timed alongside (e.g. ``(ref) clip_grad_norm_``).
      ours_ms, native_ms: median times.
      ours_mem, native_mem: extra peak memory (bytes) of one call, ``None`` if unmeasured.
      target: the DESIGN.md target, e.g. ``"<= 1.0x"``.
      note: anything the reader must know.
      mem_of_weights: extra peak memory as a fraction of the arrays the rule works on
        (weights or gradients), where DESIGN.md sets a memory target.
      mem_target: that target (a fraction; ``None``: global pruning's 1/4 of the weights).
      paired_ratio: the median of per-pair ``ours / native`` times of alternating calls
        (:func:`_measure.time_pair`); the reported ratio when given (steadier than the
        ratio of the two medians on a shared machine).
      bandwidth: the fraction of the device's copy bandwidth that ``ours`` moved
        (``bench_bandwidth.py``; its target reads ``">= 80% of bandwidth"``).
    """

    rule: str
    adapter: str
    path: str
    native: str
    ours_ms: float
    native_ms: Optional[float] = None
    ours_mem: Optional[int] = None
    native_mem: Optional[int] = None
    target: str = ""
    note: str = ""
    has_native: bool = True
    mem_of_weights: Optional[float] = None
    paired_ratio: Optional[float] = None
    mem_target: Optional[float] = None
    bandwidth: Optional[float] = None

    @property
    def ratio(self) -> Optional[float]:
        """``ours / native`` time (the reference's, for rules without a native counterpart)."""
        if self.native_ms is None or not self.native_ms:
            return None
        return self.paired_ratio if self.paired_ratio is not None else self.ours_ms / self.native_ms


def _mem(b: Optional[int]) -> str:
    return "n/a" if b is None else f"{b / MiB:.0f}"


def _num(x: Optional[float], fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_table(rows: Iterable[Row], markdown: bool = False) -> str:
    """The table: rule, adapter, path, native, ours ms, native ms, ratio, target, extra peak MiB (ours / native), note.

    Example:
      >>> print(format_table([Row("clip", "torch", "apply_", "clip_grad_norm_", 2.0, 1.0, 0, 0, "<= 1.0x")]))
      ... # doctest: +NORMALIZE_WHITESPACE
      rule adapter path native ours ms native ms ratio target peak MiB ours/native note
      clip torch apply_ clip_grad_norm_ 2.00 1.00 2.00x <= 1.0x 0/0
    """
    head = ["rule", "adapter", "path", "native", "ours ms", "native ms", "ratio", "target", "peak MiB ours/native", "note"]
    body = []
    for r in rows:
        ratio = _num(r.ratio, ".2f") + "x" if r.ratio is not None else "—"
        body.append([r.rule, r.adapter, r.path, r.native, _num(r.ours_ms, ".2f"), _num(r.native_ms, ".2f"), ratio,
                     r.target, f"{_mem(r.ours_mem)}/{_mem(r.native_mem) if r.native_ms is not None else '—'}", r.note])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head)] + [fmt(b) for b in body])


def describe(shapes: str) -> str:
    """``"148 tensors, 124.4M params"`` for a shape set of :mod:`_shapes`."""
    from _shapes import shape_set

    sizes = [math.prod(s) for _, s in shape_set(shapes)]
    return f"{len(sizes)} tensors, {sum(sizes) / 1e6:.1f}M params"


def emit(rows: list[Row], json_path: Optional[str] = None) -> None:
    """Print ``rows`` as a table; with ``json_path``, also write them there as JSON."""
    import json

    print(format_table(rows))
    if json_path:
        with open(json_path, "w") as f:
            json.dump([dataclasses.asdict(r) for r in rows], f)
