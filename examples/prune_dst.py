"""Sparse training of the demo MLP to 90%: ERK + RigL / SET from scratch vs dense + one-shot pruning.

Trains the demo's MLP (64-64-10 on scikit-learn's digits) sparse from its first step,
with ``gc.rigl`` (drop the smallest ``|w|``, grow the largest ``|∇w|``) and
``gc.sparse_evolutionary`` (SET: random growth), both at 90% with the ERK allocation,
in PyTorch (``gradclip_torch.attach`` on ``torch.optim.SGD``), optax
(``gradclip_optax.wrap`` around ``optax.sgd`` under ``jax.jit``) and Keras
(``gradclip_keras.Optimizer`` around ``keras.optimizers.SGD``, ``train_on_batch``): the
demo's trainers, its recipe with the pruning rule replaced, the same initial weights
and batches. The baselines are those of ``examples/prune_oneshot.py``: the MLP trained
dense for as many steps, then pruned once to 90% by magnitude or Wanda. Prints the test
accuracy per rule and framework, and whether the final masks are identical.

RigL starts from ``init_masks="magnitude"`` (the smallest ``|w|`` of the initial weights
pruned): the seeded random masks hash each element's flat index in the framework's own
layout, and torch's ``Linear.weight`` is ``(out, in)`` where JAX and Keras kernels are
``(in, out)``, so a random mask (and SET's random growth) is the same only across
frameworks with the same layout; the table says how many elements agree.

    KERAS_BACKEND=jax python examples/prune_dst.py [--steps 300] [--sparsity 0.9]
"""

from __future__ import annotations

import argparse
import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import gradclip_core as gc  # noqa: E402
from gradclip_demo._data import init_weights  # noqa: E402
from gradclip_demo._recipe import recipe  # noqa: E402
from prune_oneshot import agreement, column, dense_and_oneshot, table  # noqa: E402

ONESHOT = ["dense (not pruned)", "magnitude (uniform)", "magnitude (ERK)", "Wanda (uniform)"]


def dst_rules(sparsity: float, steps: int, update_every: int) -> dict:
    """RigL and SET at ``sparsity`` (ERK), connectivity updates every ``update_every`` steps until 75% of ``steps``."""
    kw = dict(allocation="erk", drop_fraction=0.3, update_every=update_every, end_step=max(1, int(0.75 * steps)),
              init_masks="magnitude")
    return {"RigL (ERK), trained sparse": gc.rigl(sparsity, **kw),
            "SET (ERK), trained sparse": gc.sparse_evolutionary(sparsity, **kw)}


def run_dst(cfg, data, sparsity: float, update_every: int, frameworks: tuple) -> dict:
    """Train each DST rule from scratch in each framework: ``{framework: {label: (accuracy, masks)}}``."""
    import importlib

    out: dict = {}
    for framework in frameworks:
        module = importlib.import_module(f"gradclip_demo._{framework}")
        out[column(framework)] = {}
        for label, rule in dst_rules(sparsity, cfg.steps, update_every).items():
            hist = module.train(cfg, data, init_weights(cfg), log=lambda *a: None,
                                make_rule=functools.partial(recipe, prune=rule))
            out[column(framework)][label] = (float(hist.accuracy[-1]), hist.masks)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps (dense and sparse)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--update-every", type=int, default=10, help="RigL/SET steps between connectivity updates")
    ap.add_argument("--frameworks", default="torch,optax,keras", help="a comma-separated subset of torch,optax,keras")
    args = ap.parse_args(argv)
    frameworks = tuple(args.frameworks.split(","))
    if not frameworks or not set(frameworks) <= {"torch", "optax", "keras"}:
        ap.error(f"--frameworks: a comma-separated subset of torch,optax,keras, got {args.frameworks!r}")
    cfg, data, _, results = dense_and_oneshot(args.steps, args.sparsity, ONESHOT, frameworks)
    for framework, rows in run_dst(cfg, data, args.sparsity, args.update_every, frameworks).items():
        results[framework].update(rows)
    erk = gc.erk_sparsities([m.shape for m in results[column(frameworks[0])][ONESHOT[0]][1]], args.sparsity)
    print(f"demo MLP, {args.steps} steps of SGD (lr {cfg.lr}, batch {cfg.batch_size}); {args.sparsity:.0%} of the kernels "
          f"pruned (uniform: each; ERK: {' / '.join(f'{s:.1%}' for s in erk)}), once after dense training, or trained "
          "sparse from the first step (no fine-tuning after one-shot pruning)")
    print("\n".join(table(results)))
    names = list(results)
    for label in results[names[0]]:
        masks = {f: results[f][label][1] for f in names}
        density = sum(int(m.sum()) for m in masks[names[0]]) / sum(m.size for m in masks[names[0]])
        if "not pruned" not in label:
            assert abs(density - (1 - args.sparsity)) < 0.01, f"{label}: density {density}"
        if label in dst_rules(args.sparsity, args.steps, args.update_every) and len(names) > 1:
            pairs = [f"{a}/{b} {agreement([masks[a], masks[b]]):.2%}" for i, a in enumerate(names) for b in names[i + 1:]]
            print(f"{label}: masks agree on {', '.join(pairs)} of the elements")
    return results


if __name__ == "__main__":
    main()
