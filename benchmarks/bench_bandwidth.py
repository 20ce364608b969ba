"""The global-norm clip's fraction of memory bandwidth (issue 15: >= 80% on a GPU at 1B+ parameters).

Times, on one device, on a GPT-2-style parameter set (``--layers`` x ``--width``; the default,
24 x 2048, is 1.31B parameters, GPT-2 XL's size class), float32 gradients:

- ``gradclip_torch.apply_(params, clip_by_global_norm(1.0))`` and ``clip_grad_norm_(foreach=True)``,
  alternating (every call from the same gradients, an untimed copy, so every call clips);
- a copy of one buffer of the gradients' size into another (``dst.copy_(src)``, a read and a
  write): the bandwidth a kernel can reach on this device, as STREAM's copy measures it.

A global-norm clip moves three times the gradients' bytes: one read for the norm, one read
and one write for the scale. Its bandwidth is ``3 * bytes / time``; the fraction is that over
the copy's ``2 * bytes / time`` (and over the nominal peak, with ``--peak-gbs``). Run::

    .venv/bin/python benchmarks/bench_bandwidth.py --device cuda [--peak-gbs 4800]
    .venv/bin/python benchmarks/bench_bandwidth.py --device cpu --layers 2 --width 256   # smoke test

``bash scripts/gpu_check.sh`` runs it with the GPU tests and the torch clipping rows on the GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradclip_core as gc  # noqa: E402
import gradclip_torch  # noqa: E402
from _measure import time_pair  # noqa: E402
from _shapes import gpt2_small_shapes  # noqa: E402
from _table import Row, emit  # noqa: E402

TARGET = 0.80  # issue 15 / DESIGN.md: the global-norm clip at >= 80% of memory bandwidth (GPU, 1B+ params)


def make_grads(layers: int, width: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Parameters (leaf tensors, no weights' values needed) with random float32 ``.grad`` of a GPT-2-style set."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for _, shape in gpt2_small_shapes(n_layer=layers, d=width):
        p = torch.empty(shape, device=device, requires_grad=True)
        p.grad = torch.randn(shape, device=device, generator=gen)
        params.append(p)
    return params


def copy_seconds(nbytes: int, device: str, sync: Callable[[object], None], repeats: int) -> float:
    """Median time of a device copy of ``nbytes`` (one read, one write) between two fresh buffers."""
    n = nbytes // 4
    src = torch.ones(n, device=device)
    dst = torch.empty(n, device=device)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(None)
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - t0)
    del src, dst
    return statistics.median(times)


def measure(layers: int = 24, width: int = 2048, device: str = "cuda", repeats: int = 10,
            peak_gbs: Optional[float] = None) -> tuple[list[Row], dict]:
    """The clip's rows (ours and native against each other) and its bandwidth figures.

    Returns:
      ``(rows, figures)``; ``figures`` has ``params``, ``gib`` (the gradients), ``copy_gbs``,
      ``ours_gbs``, ``native_gbs``, ``ours_fraction``, ``native_fraction`` (of the copy) and, with
      ``peak_gbs``, ``ours_of_peak``.
    """
    def sync(_: object) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    params = make_grads(layers, width, device)
    grads = [p.grad for p in params]
    n = sum(g.numel() for g in grads)
    nbytes = 4 * n
    grads0 = [g.clone() for g in grads]

    def fresh() -> None:
        torch._foreach_copy_(grads, grads0)

    rule = gc.clip_by_global_norm(1.0)
    t_o, t_n, ratio, _ = time_pair(lambda: gradclip_torch.apply_(params, rule),
                                   lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True),
                                   sync, repeats, 2, fresh)
    grads0.clear()  # (the copies freed before the copy buffers are made)
    t_copy = copy_seconds(nbytes, device, sync, repeats)
    copy_gbs = 2 * nbytes / t_copy / 1e9
    fig = {"params": n, "gib": nbytes / 2**30, "copy_gbs": copy_gbs,
           "ours_gbs": 3 * nbytes / t_o / 1e9, "native_gbs": 3 * nbytes / t_n / 1e9}
    fig["ours_fraction"] = fig["ours_gbs"] / copy_gbs
    fig["native_fraction"] = fig["native_gbs"] / copy_gbs
    if peak_gbs:
        fig["ours_of_peak"] = fig["ours_gbs"] / peak_gbs
    note = (f"{n / 1e9:.2f}B params ({fig['gib']:.1f} GiB fp32): 3 passes at {fig['ours_gbs']:.0f} GB/s = "
            f"{100 * fig['ours_fraction']:.0f}% of a copy's {copy_gbs:.0f} GB/s (native "
            f"{100 * fig['native_fraction']:.0f}%)")
    if peak_gbs:
        note += f"; {100 * fig['ours_of_peak']:.0f}% of the nominal {peak_gbs:.0f} GB/s"
    target = f">= {TARGET:.0%} of bandwidth" if device.startswith("cuda") else ""
    row = Row("clip_by_global_norm(1.0)", "torch", f"apply_ ({device}, bandwidth)", "clip_grad_norm_(foreach=True)",
              t_o * 1e3, t_n * 1e3, None, None, target, note, paired_ratio=ratio, bandwidth=fig["ours_fraction"])
    return [row], fig


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--layers", type=int, default=24, help="transformer blocks (default 24: 1.31B params at width 2048)")
    ap.add_argument("--width", type=int, default=2048, help="model width d (default 2048)")
    ap.add_argument("--repeats", type=int, default=10, help="timed pairs (median)")
    ap.add_argument("--peak-gbs", type=float, default=None, help="the device's nominal memory bandwidth, GB/s (H200: 4800)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    n = sum(math.prod(s) for _, s in gpt2_small_shapes(n_layer=args.layers, d=args.width))
    print(f"torch {torch.__version__}, {name}, {n / 1e9:.2f}B params, float32, median of {args.repeats} pairs")
    rows, fig = measure(args.layers, args.width, args.device, args.repeats, args.peak_gbs)
    emit(rows, args.json)
    if args.device == "cuda":
        ok = fig["ours_fraction"] >= TARGET and n >= 1e9
        print(f"{'holds' if ok else 'MISSED'}: the global-norm clip at {100 * fig['ours_fraction']:.0f}% of the copy "
              f"bandwidth on {n / 1e9:.2f}B params [>= {TARGET:.0%} at 1B+]")
    return rows


if __name__ == "__main__":
    main()
