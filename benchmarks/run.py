"""Every rule in every adapter against the native implementation, in one command, one table.

Runs, each in a fresh process (clean peak memory; Keras reads ``KERAS_BACKEND`` once per
process), ``bench_torch.py``, ``bench_optax.py``, ``bench_keras.py`` under each Keras
backend, and ``bench_prune.py``'s global-pruning comparison, on the GPT-2-small parameter
set, then prints one table (rule, adapter, path, native, times, ratio, DESIGN.md target,
extra peak memory of one call) and which targets hold. Rules without a native
counterpart are timed next to the framework's global-norm clip, marked ``(ref)``.
tfmot and jaxpruner baselines are used only if importable (they are not installed here).

    .venv/bin/python benchmarks/run.py                       # everything, CPU (1.5-2 hours on 2 idle cores)
    .venv/bin/python benchmarks/run.py --quick --shapes tiny --only torch,optax   # smoke test
    .venv/bin/python benchmarks/run.py --device cuda         # torch and JAX on the GPU (+ the bandwidth row)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_prune  # noqa: E402
from _shapes import SHAPE_SETS  # noqa: E402
from _table import Row, format_table  # noqa: E402

SUITES = ("torch", "optax", "keras", "prune")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")


def _child(script: str, args: list[str], env: dict | None = None) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        cmd = [sys.executable, str(HERE / script), *args, "--json", str(out)]
        proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{proc.stdout}")
        print(proc.stdout.splitlines()[0], file=sys.stderr)  # the child's header line (versions, device)
        return [Row(**r) for r in json.loads(out.read_text())]


def prune_rows(shapes: str, reps: int) -> list[Row]:
    """Global magnitude pruning vs ``prune.global_unstructured``, each call in a fresh process (bench_prune.py)."""
    print("  prune: global_magnitude_prune(0.5) vs prune.global_unstructured (fresh processes)...", file=sys.stderr, flush=True)
    res = {k: bench_prune.measure(k, 1 if k == "native" else reps, 1, shapes) for k in ("native", "core", "module")}
    n = res["native"]
    rows = []
    for k, path in (("core", "project_"), ("module", "prune (buffers)")):
        r = res[k]
        mem = bench_prune.masks_aside(r)
        rows.append(Row("global_magnitude_prune(0.5)", "torch", path, "prune.global_unstructured", r["time"] * 1e3,
                        n["time"] * 1e3, r["extra"], n["extra"], ">= 20x faster",
                        f"extra, masks aside: {mem:.3f}x weights; 1 thread", mem_of_weights=mem))
    return rows


def verdicts(rows: list[Row]) -> list[str]:
    """One line per DESIGN.md target: the measured ratio and whether it holds."""
    lines = []
    for r in rows:
        if not r.target or r.ratio is None:
            continue
        if r.target.endswith("of bandwidth"):  # ">= 80% of bandwidth" (bench_bandwidth.py, on a GPU)
            goal = float(r.target.split()[1].rstrip("%")) / 100
            ok = r.bandwidth is not None and r.bandwidth >= goal
            got = "n/a" if r.bandwidth is None else f"{r.bandwidth:.0%}"
            lines.append(f"{'holds' if ok else 'MISSED':6}  {r.adapter:<16} {r.rule} ({r.path}): {got} of the copy "
                         f"bandwidth [{r.target}]")
        elif r.target.startswith("<="):
            ok = r.ratio <= float(r.target[2:].strip().rstrip("x"))
            lines.append(f"{'holds' if ok else 'MISSED':6}  {r.adapter:<16} {r.rule} ({r.path}): {r.ratio:.2f}x [{r.target}]")
        else:  # ">= 20x faster"
            speed = 1 / r.ratio
            ok = speed >= float(r.target.split()[1].rstrip("x"))
            lines.append(f"{'holds' if ok else 'MISSED':6}  {r.adapter:<16} {r.rule} ({r.path}): {speed:.1f}x faster [{r.target}]")
        if r.mem_of_weights is not None:
            target = bench_prune.MEMORY_TARGET if r.mem_target is None else r.mem_target
            what = "masks aside, " if r.mem_target is None else ""
            ok = r.mem_of_weights <= target
            lines.append(f"{'holds' if ok else 'MISSED':6}  {r.adapter:<16} {r.rule} ({r.path}): extra peak memory, "
                         f"{what}{r.mem_of_weights:.3f}x the arrays [<= {target}x]")
    return lines


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)} (default: all)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: torch and JAX suites on the GPU (Keras and the fresh-process pruning stay on CPU)")
    ap.add_argument("--shapes", default="gpt2", choices=SHAPE_SETS, help="parameter set (tiny: smoke test)")
    ap.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up (smoke test; noisy ratios)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 5 torch/Keras, 10 optax)")
    ap.add_argument("--keras-backends", default=",".join(KERAS_BACKENDS), help="comma-separated Keras backends")
    ap.add_argument("--rules", default=None, help="only rows whose rule contains this text")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if not only or any(s not in SUITES for s in only):
        ap.error(f"--only: choose from {','.join(SUITES)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    rep = (lambda d: 3) if args.quick else (lambda d: args.repeats or d)
    warm = ["--warmup", "1"] if args.quick else []
    common = ["--shapes", args.shapes, *warm] + (["--rules", args.rules] if args.rules else [])
    rows: list[Row] = []
    if "torch" in only:
        rows += _child("bench_torch.py", [*common, "--repeats", str(rep(5)), "--device", args.device])
        if args.device == "cuda" and (args.rules is None or args.rules in "clip_by_global_norm(1.0)"):
            # the global-norm clip's fraction of memory bandwidth at 1.31B parameters (tiny: a smoke test)
            size = ["--layers", "1", "--width", "64"] if args.shapes == "tiny" else []
            rows += _child("bench_bandwidth.py", [*size, "--repeats", str(rep(10)), "--device", "cuda"])
    if "optax" in only:
        rows += _child("bench_optax.py", [*common, "--repeats", str(rep(10)), "--device", args.device],
                       {"JAX_PLATFORMS": "cuda" if args.device == "cuda" else "cpu"})
    if "keras" in only:
        # clipping and pruning rows in separate processes per backend (TensorFlow keeps native memory per row)
        for backend, part in [(b.strip(), part) for b in args.keras_backends.split(",") if b.strip()
                              for part in ("clip", "prune")]:
            rows += _child("bench_keras.py", [*common, "--repeats", str(rep(5)), "--part", part],
                           {"KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")
                            if args.device == "cuda" else "", "JAX_PLATFORMS": "" if args.device == "cuda" else "cpu"})
    if "prune" in only and (args.rules is None or args.rules in "global_magnitude_prune(0.5)"):
        rows += prune_rows(args.shapes, 1 if args.quick else 2)
    missing = [m for m in ("tensorflow_model_optimization", "jaxpruner") if importlib.util.find_spec(m) is None]
    print()
    print(format_table(rows, markdown=args.markdown))
    print()
    print("DESIGN.md targets:")
    print("\n".join(verdicts(rows)) or "  (no row with a target selected)")
    if missing:
        print(f"not installed, so no baseline: {', '.join(missing)}")
    print("peak MiB: extra peak memory of one call (CPU: peak RSS over the RSS before, see _measure.py); "
          "(ref): no native counterpart, timed next to the framework's global-norm clip")
    return rows


if __name__ == "__main__":
    main()
