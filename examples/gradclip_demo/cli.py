"""Command line of the main job: ``python -m gradclip_demo [--framework ...] [--steps N] [--out DIR]``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import sys
import time
from typing import Sequence

from ._config import Config
from ._data import init_weights, load_digits
from ._history import History
from ._plot import plot
from ._report import format_table

FRAMEWORKS = ("torch", "optax", "keras")
KERAS_BACKENDS = ("jax", "tensorflow", "torch")


def _frameworks(text: str) -> list[str]:
    names = FRAMEWORKS if text == "all" else tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in FRAMEWORKS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose 'all' or a comma-separated subset of {', '.join(FRAMEWORKS)}; got {text!r}")
    return list(dict.fromkeys(names))


def spike_steps(text: str, steps: int, warmup: int) -> tuple:
    """0-based steps of the injected spikes: ``"auto"`` (at 40%, 60% and 80% of the run, those
    after the skip rule's warm-up), ``"none"``, or comma-separated 1-based step numbers.

    Example:
      >>> spike_steps("auto", 300, 16), spike_steps("none", 300, 16), spike_steps("5, 9", 300, 16)
      ((120, 180, 240), (), (4, 8))
    """
    if text == "none":
        return ()
    if text == "auto":
        return tuple(s for s in (int(round(f * steps)) for f in (0.4, 0.6, 0.8)) if s > warmup)
    try:
        out = tuple(sorted({int(t) - 1 for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--spikes: 'auto', 'none' or step numbers like 120,180; got {text!r}") from None
    if any(not 0 <= s < steps for s in out):
        raise argparse.ArgumentTypeError(f"--spikes: step numbers must be in 1..{steps}; got {text!r}")
    return out


def parser() -> argparse.ArgumentParser:
    """The argument parser (see ``--help``)."""
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m gradclip_demo",
        description="Train the same MLP on scikit-learn's digits in PyTorch, optax and Keras with one gradclip "
                    "recipe (skip on spike + global-norm clip + gradual magnitude pruning + max-norm), with injected "
                    "gradient spikes, compare the curves.")
    p.add_argument("--framework", type=_frameworks, default=list(FRAMEWORKS), metavar="NAMES",
                   help="'all' (default) or a comma-separated subset of torch,optax,keras")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo_out"),
                   help="folder for curves.png and history.json (default demo_out/)")
    p.add_argument("--keras-backend", choices=KERAS_BACKENDS, default=None,
                   help="Keras backend (default: $KERAS_BACKEND, else jax); set before Keras is imported")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"examples per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"SGD learning rate (default {d.lr})")
    p.add_argument("--sparsity", type=float, default=d.sparsity, help=f"final sparsity (default {d.sparsity})")
    p.add_argument("--clip-norm", type=float, default=d.clip_norm, help=f"global-norm clip (default {d.clip_norm})")
    p.add_argument("--max-unit-norm", type=float, default=d.max_unit_norm,
                   help=f"max-norm constraint per output unit (default {d.max_unit_norm})")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help=f"steps between test evaluations (default {d.eval_every})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of weights, split and batches (default {d.seed})")
    p.add_argument("--spikes", default="auto",
                   help="injected gradient spikes (loss x --spike-scale): 'auto' (at 40/60/80%% of the run), 'none', "
                        "or 1-based steps like 120,180 (default auto)")
    p.add_argument("--spike-scale", type=float, default=d.spike_scale,
                   help=f"factor of an injected spike (default {d.spike_scale:g})")
    p.add_argument("--rows", type=int, default=10, help="about how many steps the final table shows (default 10)")
    p.add_argument("--quiet", action="store_true", help="no per-evaluation progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> list[History]:
    """Run the main job; returns the histories (also written to ``--out``).

    Args:
      argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
      One :class:`History` per framework, in the order run.
    """
    args = parser().parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.eval_every < 1:
        parser().error("--steps, --batch-size and --eval-every must be >= 1")
    t_start = time.perf_counter()
    if "keras" in args.framework:
        backend = args.keras_backend or os.environ.get("KERAS_BACKEND") or "jax"
        if "keras" in sys.modules and sys.modules["keras"].backend.backend() != backend:
            parser().error(f"Keras is already imported with backend {sys.modules['keras'].backend.backend()!r}")
        os.environ["KERAS_BACKEND"] = backend  # Keras reads it once, at import
    try:
        spikes = spike_steps(args.spikes, args.steps, Config().spike_window // 2)
    except argparse.ArgumentTypeError as e:
        parser().error(str(e))
    cfg = Config(steps=args.steps, batch_size=args.batch_size, lr=args.lr, clip_norm=args.clip_norm,
                 sparsity=args.sparsity, max_unit_norm=args.max_unit_norm, eval_every=args.eval_every, seed=args.seed,
                 spikes=spikes, spike_scale=args.spike_scale)
    data = load_digits(cfg.seed)
    weights = init_weights(cfg, data.x_train.shape[1], int(data.y_train.max()) + 1)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    print(f"gradclip main job: MLP {weights[0].shape[0]}-{cfg.hidden}-{weights[2].shape[1]} on scikit-learn digits "
          f"({len(data.x_train)} train / {len(data.x_test)} test), {cfg.steps} steps of SGD(lr={cfg.lr}), "
          f"batch {cfg.batch_size}, seed {cfg.seed}", flush=True)
    print(f"recipe: skip_on_spike(window={cfg.spike_window}, k={cfg.spike_k:g}, warmup={cfg.spike_window // 2}) + "
          f"clip_by_global_norm({cfg.clip_norm}) + global_magnitude_prune({cfg.sparsity}, cubic schedule "
          f"to step {cfg.prune_end_step}, every {cfg.prune_every}) + max_norm({cfg.max_unit_norm}, per output unit)",
          flush=True)
    print("injected gradient spikes (loss x %g) at steps: %s" % (
        cfg.spike_scale, ", ".join(str(s + 1) for s in cfg.spikes) or "none"), flush=True)
    histories = []
    for name in args.framework:
        t0 = time.perf_counter()
        module = importlib.import_module(f"gradclip_demo._{name}")
        extra = f", backend {os.environ['KERAS_BACKEND']}" if name == "keras" else ""
        print(f"[{name}{extra}] imported in {time.perf_counter() - t0:.1f} s; training...", flush=True)
        histories.append(module.train(cfg, data, weights, log))
    print()
    print(format_table(histories, args.rows, spikes=cfg.spikes))
    args.out.mkdir(parents=True, exist_ok=True)
    png = plot(histories, args.out / "curves.png", spikes=cfg.spikes)
    (args.out / "history.json").write_text(json.dumps([h.to_dict() for h in histories]))
    print(f"wrote {png} and {args.out / 'history.json'} (total {time.perf_counter() - t_start:.1f} s)")
    return histories


if __name__ == "__main__":
    main()
