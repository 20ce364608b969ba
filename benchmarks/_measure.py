"""Timing and peak-memory helpers shared by the benchmarks.

Peak memory is the *extra* memory one call needs, above what is allocated before it:

- ``"rss"`` (CPU, any framework): the process' peak resident set size (``VmHWM``) is reset
  through ``/proc/self/clear_refs`` before the call, and ``VmHWM - VmRSS(before)`` read
  after it. It sees every allocation that touches memory (torch's, XLA's, TensorFlow's
  and NumPy's), but also the allocators' caching: memory freed and reused inside the call
  counts once, memory kept cached from an earlier call counts zero. Linux only.
- ``"torch_cuda"``: ``torch.cuda.max_memory_allocated() - memory_allocated()`` after
  ``reset_peak_memory_stats()``.
- ``"jax"``: ``peak_bytes_in_use - bytes_in_use`` of ``jax.local_devices()[0].memory_stats()``
  (GPU; the peak cannot be reset, so it is an upper bound after earlier calls; ``None``
  where the device reports no stats, e.g. CPU).
"""

from __future__ import annotations

import re
import statistics
import time
from typing import Any, Callable, Optional

__all__ = ["time_pair", "time_one", "peak_extra", "repeats_for", "MiB"]

MiB = 2**20
Fn = Callable[[], Any]


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def peak_extra(fn: Fn, sync: Callable[[Any], None], kind: str = "rss") -> Optional[int]:
    """Extra peak memory (bytes) of one call of ``fn`` (see the module docstring for ``kind``).

    Args:
      fn: the call to measure (already warmed up).
      sync: waits for ``fn``'s result (``block_until_ready``, ``cuda.synchronize``...).
      kind: ``"rss"``, ``"torch_cuda"`` or ``"jax"``.

    Returns:
      Bytes, or ``None`` where it cannot be measured.

    Example:
      >>> import numpy as np
      >>> peak_extra(lambda: np.ones(2**25), lambda r: None) >= 2**27  # 256 MiB of float64
      True
    """
    if kind == "rss":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = _status("VmRSS")
        except OSError:
            return None
        sync(fn())
        return max(0, _status("VmHWM") - base)
    if kind == "torch_cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sync(fn())
        return torch.cuda.max_memory_allocated() - base
    if kind == "jax":
        import jax

        dev = jax.local_devices()[0]
        stats = dev.memory_stats()
        if not stats or "peak_bytes_in_use" not in stats:
            return None
        base = stats["bytes_in_use"]
        sync(fn())
        return max(0, dev.memory_stats()["peak_bytes_in_use"] - base)
    raise ValueError(f"unknown memory kind {kind!r}")


def repeats_for(repeats: int, target: str, control: bool = False) -> int:
    """Timed repeats for a row: three times as many where DESIGN.md sets a target on the ratio, and on
    a control row (an A/A pair measures the noise of the rows with a target: as many pairs as they).

    Example:
      >>> repeats_for(5, "<= 1.0x"), repeats_for(5, ""), repeats_for(5, "", control=True)
      (15, 5, 15)
    """
    return 3 * repeats if target or control else repeats


def _timed(fn: Fn, sync: Callable[[Any], None], reset: Optional[Fn]) -> float:
    if reset is not None:
        reset()
    t0 = time.perf_counter()
    sync(fn())
    return time.perf_counter() - t0


def time_one(fn: Fn, sync: Callable[[Any], None], repeats: int, warmup: int = 1, reset: Optional[Fn] = None) -> float:
    """Median time (s) of ``fn`` after ``warmup`` untimed calls; ``reset`` runs untimed before each call.

    Example:
      >>> time_one(lambda: sum(range(10)), lambda r: None, repeats=3) < 1.0
      True
    """
    for _ in range(warmup):
        _timed(fn, sync, reset)
    return statistics.median(_timed(fn, sync, reset) for _ in range(repeats))


ROW_BUDGET_S = 40.0  # seconds of timed pairs a slow row may take (the optax and Keras suites, see time_pair)


def time_pair(ours: Fn, native: Fn, sync: Callable[[Any], None], repeats: int, warmup: int = 1,
              reset: Optional[Fn] = None, budget_s: Optional[float] = None) -> tuple[float, float, float, int]:
    """Median times (s) of ``ours`` and ``native`` run alternately, and the median per-pair ratio.

    Alternating calls see the same machine state (other processes, caches, clocks), so the
    per-pair ratio is steadier than the ratio of two separate medians.

    ``budget_s``: run fewer than ``repeats`` pairs (never fewer than ``min(repeats, 5)``)
    where the last warm-up pair says ``repeats`` of them would take longer than this: a
    pruning row whose call takes a second is not at the noise edge that the many repeats
    of a 30-ms clip row are for, and 60 of its calls made the optax suite run past half an
    hour.

    Returns:
      ``(ours, native, ours / native, pairs)``: ``pairs`` timed.

    Example:
      >>> o, n, r, pairs = time_pair(lambda: 1, lambda: 2, lambda r: None, repeats=3)
      >>> r > 0, pairs
      (True, 3)
    """
    pair_s = 0.0
    for _ in range(warmup):
        pair_s = _timed(native, sync, reset) + _timed(ours, sync, reset)
    if budget_s is not None and pair_s * repeats > budget_s:
        repeats = max(min(repeats, 5), int(budget_s / pair_s))
    t_ours, t_native = [], []
    for i in range(repeats):
        pair = ((native, t_native), (ours, t_ours))
        for fn, acc in (pair if i % 2 == 0 else pair[::-1]):
            acc.append(_timed(fn, sync, reset))
    ratio = statistics.median(a / b for a, b in zip(t_ours, t_native))
    return statistics.median(t_ours), statistics.median(t_native), ratio, repeats
