"""Run worker scripts in fresh processes: N gloo ranks, or one process with its own device count.

Used by tests/distributed (the torch workers, the JAX / Keras mesh scripts), tests/keras
(ModelParallel) and tests/trainers (Lightning FSDP2 / DDP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[2]


def python_path() -> str:
    """The repository root and ``adapters/`` first, then the caller's ``PYTHONPATH``."""
    return os.pathsep.join(p for p in [str(ROOT), str(ROOT / "adapters"), os.environ.get("PYTHONPATH", "")] if p)


def run_ranks(
    script: Path,
    world: int,
    args: Callable[[int], Sequence[str]],
    env: Callable[[int], dict] | None = None,
    cwd: Path | None = None,
    timeout: float = 240,
) -> list[str]:
    """Run ``world`` processes of ``script`` to completion; fail with a rank's log if one fails.

    Args:
      script: the worker script.
      world: how many processes.
      args: ``args(rank)`` -> the command-line arguments of rank ``rank``.
      env: ``env(rank)`` -> extra environment variables of rank ``rank``.
      cwd: working directory (default: the repository root).
      timeout: seconds each process may take.

    Returns:
      Each rank's combined stdout and stderr.

    Example:
      >>> python_path().split(os.pathsep)[0] == str(ROOT)
      True
    """
    procs = []
    for r in range(world):
        e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path(), **(env(r) if env else {}))
        procs.append(subprocess.Popen([sys.executable, str(script), *map(str, args(r))], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=e, cwd=cwd or ROOT))
    logs = []
    try:
        for p in procs:
            try:
                logs.append(p.communicate(timeout=timeout)[0])
            except subprocess.TimeoutExpired:  # (a hung collective): every rank's log so far
                for q in procs:
                    q.kill()
                raise AssertionError("timed out:\n" + "\n".join(f"--- rank {r}:\n{q.communicate()[0][-3000:]}"
                                                                 for r, q in enumerate(procs))) from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r][-4000:]}"
    return logs


TORCH_WORKER = Path(__file__).with_name("_torch_worker.py")


def launch_torch(tmp: Path, world: int, scenarios: str) -> list[dict]:
    """Run the torch worker's ``scenarios`` (comma-separated) on ``world`` gloo ranks; each rank's results."""
    out = tmp / "result.json"
    init = f"file://{tmp / 'rendezvous'}"
    run_ranks(TORCH_WORKER, world, lambda r: [r, world, init, out, scenarios])
    return json.loads(out.read_text())


def run_json(script: Path, args: list, timeout: float, **env: str) -> dict:
    """Run ``script`` with ``args`` in one fresh Python (the repo and ``adapters/`` on the path,
    ``XLA_FLAGS`` unset: the script sets its own device count), and parse the last line of its stdout.

    Example:
      >>> import tempfile
      >>> with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
      ...     _ = f.write("import sys, json; print(json.dumps(sys.argv[1:]))")
      >>> run_json(Path(f.name), ["a"], timeout=60)
      ['a']
      >>> os.unlink(f.name)
    """
    full = dict(os.environ, PYTHONPATH=python_path(), **env)
    full.pop("XLA_FLAGS", None)
    res = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=full,
                         cwd=ROOT, timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
