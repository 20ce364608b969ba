"""gradclip_keras' optimizer wrapper against Keras' own ``global_clipnorm``, on GPT-2 small's parameters.

Times, in one run, on the same 148 gradients (124M parameters), one optimizer step of

- ``keras.optimizers.SGD(lr, global_clipnorm=1.0)`` (native), and
- ``gradclip_keras.Optimizer(SGD(lr), clip_by_global_norm(1.0, semantics="keras"))``,

each on its own copy of the variables, the way Keras' trainer runs it on the active
backend (``KERAS_BACKEND``): TensorFlow ``optimizer.apply`` inside a ``tf.function``,
JAX ``optimizer.stateless_apply`` under ``jax.jit``, torch eager ``optimizer.apply``.
Variants alternate in rotating order after a warm-up; prints the median time of each and
the median per-repeat ratio (wrapper / native; DESIGN.md target: <= 1.1x). Run::

    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_keras.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradclip_core as gc  # noqa: E402
import gradclip_keras  # noqa: E402
from _shapes import gpt2_small_shapes  # noqa: E402

LR = 1e-4


def make_grads(seed: int = 0) -> list[Any]:
    """Random float32 gradients of GPT-2 small's parameters, as backend tensors."""
    rng = np.random.default_rng(seed)
    return [keras.ops.convert_to_tensor(rng.standard_normal(s, dtype=np.float32)) for _, s in gpt2_small_shapes()]


def make_variables() -> list[keras.Variable]:
    return [keras.Variable(keras.ops.zeros(s), name=n.replace(".", "_")) for n, s in gpt2_small_shapes()]


def _sync(x: Any) -> None:
    keras.ops.convert_to_numpy(keras.ops.sum(x))


def step_fn(opt: keras.optimizers.Optimizer, variables: list, grads: list) -> Callable[[], Any]:
    """One optimizer step as the backend's trainer runs it; returns something to sync on."""
    opt.build(variables)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(gs):
            opt.apply(gs, variables)
            return variables[-1].value

        return lambda: step(grads)
    if backend == "jax":
        import jax

        apply = jax.jit(opt.stateless_apply, donate_argnums=(0, 2))
        state = {"t": [v.value for v in variables], "o": [v.value for v in opt.variables]}

        def run():
            state["t"], state["o"] = apply(state["o"], grads, state["t"])
            return state["t"][-1]

        return run

    def run():
        opt.apply(grads, variables)
        return variables[-1].value

    return run


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    _sync(fn())
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark; returns the median ratio wrapper / native."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)

    grads = make_grads()
    n = sum(int(np.prod(g.shape)) for g in grads)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {len(grads)} tensors, {n / 1e6:.1f}M params, float32")
    fns = {
        "SGD(global_clipnorm=1.0)": step_fn(keras.optimizers.SGD(LR, global_clipnorm=1.0), make_variables(), grads),
        "gradclip_keras semantics=keras": step_fn(
            gradclip_keras.Optimizer(keras.optimizers.SGD(LR), gc.clip_by_global_norm(1.0, semantics="keras")),
            make_variables(),
            grads,
        ),
    }
    for fn in fns.values():
        for _ in range(args.warmup):
            _time(fn)
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(args.repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            times[name].append(_time(fns[name]))
    native, ours = names
    ratio = statistics.median(a / b for a, b in zip(times[ours], times[native]))
    for name in names:
        line = f"{name:>32}: median {statistics.median(times[name]) * 1e3:8.2f} ms"
        if name == ours:
            line += f"   ratio {ratio:.3f}x (target <= 1.1x)"
        print(line)
    return ratio


if __name__ == "__main__":
    main()
