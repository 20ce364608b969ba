"""gradclip_torch against torch's native clipping, on a GPT-2-small-sized parameter set.

Times, in one run, on the same 148 gradients (124M parameters):

- ``torch.nn.utils.clip_grad_norm_(foreach=True)`` vs ``gradclip_torch.apply_`` and the
  ``attach`` hook path (``optimizer.step()`` of a no-op optimizer, so only the hook
  is timed) with ``clip_by_global_norm`` (canonical and ``semantics="torch"``);
- ``torch.nn.utils.clip_grad_value_(foreach=True)`` vs ``apply_`` with ``clip_by_value``.

Prints the median time of each and the median of the per-repeat ratios (ours / native,
each repeat runs both back to back; DESIGN.md target: <= 1.0x for the global-norm clip). Run::

    .venv/bin/python benchmarks/bench_torch.py [--device cpu|cuda] [--repeats 5] [--dtype float32]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradclip_core as gc  # noqa: E402
import gradclip_torch  # noqa: E402
from _shapes import gpt2_small_shapes  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NoStep(torch.optim.Optimizer):
    """An optimizer whose step does nothing: ``step()`` then only runs the hooks."""

    def __init__(self, params: list) -> None:
        super().__init__(params, {})

    def step(self, closure: Callable | None = None) -> None:  # noqa: D102
        return None


def make_params(device: str, dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    """GPT-2 small's parameters (uninitialised weights) with random gradients."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for _, shape in gpt2_small_shapes():
        p = torch.nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        p.grad = torch.randn(shape, device=device, dtype=dtype, generator=gen)
        params.append(p)
    return params


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit_pair(
    ours: Callable[[], object], native: Callable[[], object], device: str, repeats: int, warmup: int = 2
) -> tuple[float, float, float]:
    """Median times of ``ours`` and ``native`` (seconds), run alternately, and the median ratio.

    Alternating runs see the same machine state (other processes, caches, clocks),
    so the per-pair ratio is steadier than the ratio of two separate medians.
    """
    for _ in range(warmup):
        native()
        ours()
    t_ours, t_native = [], []
    for _ in range(repeats):
        for fn, acc in ((native, t_native), (ours, t_ours)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            acc.append(time.perf_counter() - t0)
    ratio = statistics.median(a / b for a, b in zip(t_ours, t_native))
    return statistics.median(t_ours), statistics.median(t_native), ratio


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per entry (median reported)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")

    params = make_params(args.device, DTYPES[args.dtype])
    n = sum(math.prod(p.shape) for p in params)
    print(f"gradclip_torch benchmark: {len(params)} tensors, {n / 1e6:.1f}M params, {args.dtype}, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")

    max_norm = 1.0
    canonical = gc.clip_by_global_norm(max_norm)
    torch_sem = gc.clip_by_global_norm(max_norm, semantics="torch")
    value = gc.clip_by_value(0.5)

    def hook_path(rule: gc.Rule) -> Callable[[], None]:
        opt = NoStep(params)
        gradclip_torch.attach(opt, rule)
        return opt.step

    rows: list[tuple[str, str, Callable[[], object], Callable[[], object]]] = [
        ("global norm, canonical", "apply_",
         lambda: gradclip_torch.apply_(params, canonical),
         lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)),
        ("global norm, canonical", "attach",
         hook_path(canonical),
         lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)),
        ('global norm, semantics="torch"', "apply_",
         lambda: gradclip_torch.apply_(params, torch_sem),
         lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)),
        ('global norm, semantics="torch"', "attach",
         hook_path(torch_sem),
         lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)),
        ("clip by value", "apply_",
         lambda: gradclip_torch.apply_(params, value),
         lambda: torch.nn.utils.clip_grad_value_(params, 0.5, foreach=True)),
    ]
    print(f"{'rule':<32} {'path':<7} {'gradclip ms':>12} {'native ms':>10} {'ratio':>7}   native")
    for label, path, ours, native in rows:
        t_ours, t_native, ratio = timeit_pair(ours, native, args.device, args.repeats)
        name = "clip_grad_value_" if "value" in label else "clip_grad_norm_"
        print(f"{label:<32} {path:<7} {t_ours * 1e3:>12.2f} {t_native * 1e3:>10.2f} {ratio:>6.2f}x   {name}(foreach=True)")


if __name__ == "__main__":
    main()
