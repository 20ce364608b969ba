"""gradclip_optax against optax's native global-norm clip, on a GPT-2-small-sized parameter set.

Times, in one run, under ``jax.jit``, on the same 148 gradients (124M parameters):
``optax.clip_by_global_norm(1.0)`` vs ``gradclip_optax.transform(clip_by_global_norm(1.0))``
with the canonical formula and with ``semantics="optax"``. Each repeat runs every variant
back to back, in rotating order (after a warm-up that compiles), with ``block_until_ready``; prints the median
time of each and the median of the per-repeat ratios (ours / native; DESIGN.md target:
<= 1.05x). Run::

    .venv/bin/python benchmarks/bench_optax.py [--repeats 20] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradclip_core as gc  # noqa: E402
import gradclip_optax  # noqa: E402
from _shapes import gpt2_small_shapes  # noqa: E402


def make_grads(dtype: Any, seed: int = 0) -> dict[str, jax.Array]:
    """Random gradients of GPT-2 small's parameters, as a name -> array dict (a pytree)."""
    key = jax.random.PRNGKey(seed)
    grads = {}
    for i, (name, shape) in enumerate(gpt2_small_shapes()):
        grads[name] = jax.random.normal(jax.random.fold_in(key, i), shape, dtype)
    return grads


def jitted_update(tx: optax.GradientTransformation, grads: dict) -> Callable[[dict, Any], Any]:
    """``jax.jit(tx.update)`` and its initial state (the step a training loop runs)."""
    return jax.jit(tx.update), tx.init(grads)


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; returns the median ratio of each variant."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args(argv)

    grads = make_grads(jnp.dtype(args.dtype))
    n = sum(x.size for x in grads.values())
    print(f"jax {jax.__version__}, optax {optax.__version__}, device {jax.devices()[0].device_kind}, "
          f"{len(grads)} tensors, {n / 1e6:.1f}M params, {args.dtype}")

    variants = {
        "optax.clip_by_global_norm": optax.clip_by_global_norm(1.0),
        "gradclip canonical": gradclip_optax.transform(gc.clip_by_global_norm(1.0)),
        "gradclip semantics=optax": gradclip_optax.transform(gc.clip_by_global_norm(1.0, semantics="optax")),
    }
    fns = {}
    for name, tx in variants.items():
        update, state = jitted_update(tx, grads)
        fns[name] = (lambda update=update, state=state: update(grads, state))
        for _ in range(args.warmup):
            _time(fns[name])

    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(args.repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:  # rotate: no position bias
            times[name].append(_time(fns[name]))

    native = "optax.clip_by_global_norm"
    ratios = {}
    for name, ts in times.items():
        line = f"{name:>28}: median {statistics.median(ts) * 1e3:8.2f} ms"
        if name != native:
            r = statistics.median(a / b for a, b in zip(ts, times[native]))
            ratios[name] = r
            line += f"   ratio {r:.3f}x (target <= 1.05x)"
        print(line)
    return ratios


if __name__ == "__main__":
    main()
