"""A core-only demo: clip one set of gradients with every core rule and show what each did.

Run it with ``python -m gradclip_demo.core`` (NumPy only, no framework needed). The
gradients are those of a small MLP with one exploding layer; every rule runs the same
code it runs inside torch, optax and Keras. The main job (``bash scripts/dev.sh demo``)
is :mod:`gradclip_demo`: one recipe trained in all three frameworks.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np

import gradclip_core as gc

SHAPES = {"dense1/kernel": (64, 32), "dense1/bias": (64,), "dense2/kernel": (10, 64), "dense2/bias": (10,)}


def make_case(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights and gradients of a (out, in)-layout MLP; dense2's gradient has exploded."""
    rng = np.random.default_rng(seed)
    params = [rng.normal(0, 0.1, s).astype(np.float32) for s in SHAPES.values()]
    grads = [rng.normal(0, 0.01, s).astype(np.float32) for s in SHAPES.values()]
    grads[2] *= 500.0
    return params, grads


def rules() -> dict[str, gc.Rule]:
    """One instance of every core clipping rule, as a user would configure it."""
    return {
        "clip_by_value(0.05)": gc.clip_by_value(0.05),
        "clip_by_value(lo=-0.01, hi=0.1)": gc.clip_by_value(lo=-0.01, hi=0.1),
        "clip_by_norm(1.0)": gc.clip_by_norm(1.0),
        "clip_by_norm(1.0, keras)": gc.clip_by_norm(1.0, semantics="keras"),
        "clip_by_global_norm(1.0)": gc.clip_by_global_norm(1.0),
        "clip_by_global_norm(1.0, torch)": gc.clip_by_global_norm(1.0, semantics="torch"),
        "clip_by_global_norm(1.0, optax)": gc.clip_by_global_norm(1.0, semantics="optax"),
        "clip_by_global_norm(1.0, keras)": gc.clip_by_global_norm(1.0, semantics="keras"),
        "clip_by_global_norm(1.0, ord=inf)": gc.clip_by_global_norm(1.0, ord="inf"),
        "clip_by_block_rms(0.1)": gc.clip_by_block_rms(0.1),
        "clip_update_rms(0.1)": gc.clip_update_rms(0.1),
        "adaptive_clip(0.01)": gc.adaptive_clip(0.01, axis="out_first"),
        "nan grads, nonfinite=zero": gc.clip_by_global_norm(1.0, nonfinite="zero"),
        "nan grads, nonfinite=skip": gc.clip_by_global_norm(1.0, nonfinite="skip"),
    }


def _global_norm(xs: Sequence[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64))) for x in xs)))


def _fmt(info: dict[str, Any]) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(info.items()))


def run(seed: int = 0) -> list[tuple[str, float, float, str]]:
    """Apply every rule; return ``(rule, norm before, norm after, info)`` rows."""
    params, grads = make_case(seed)
    rows = []
    for label, rule in rules().items():
        g = [x.copy() for x in grads]
        if label.startswith("nan"):
            g[1][3] = np.nan
        state = rule.init(params)
        out, state, info = rule.update(g, state, params)
        _, state, pinfo = rule.project(params, state)
        rows.append((label, _global_norm(g), _global_norm(out), _fmt({**info, **pinfo})))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the gradients (default 0)")
    args = parser.parse_args(argv)
    print("gradclip demo: every core rule on the gradients of a 4-array MLP (dense2 exploded)")
    print("shapes:", ", ".join(f"{k}{v}" for k, v in SHAPES.items()))
    rows = run(args.seed)
    w = max(len(r[0]) for r in rows)
    print(f"{'rule':<{w}}  {'norm before':>11}  {'norm after':>10}  info")
    for label, before, after, info in rows:
        print(f"{label:<{w}}  {before:>11.4f}  {after:>10.4f}  {info}")


if __name__ == "__main__":
    main()
