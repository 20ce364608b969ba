"""Helpers of the multi-device tests: run a script in a fresh process and read its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_json(script: Path, args: list, timeout: float, **env: str) -> dict:
    """Run ``script`` with ``args`` in a fresh Python (the repo and ``adapters/`` on the path,
    ``XLA_FLAGS`` unset: the script sets its own device count), and parse the last line of its stdout.

    Example:
      >>> import tempfile
      >>> with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
      ...     _ = f.write("import sys, json; print(json.dumps(sys.argv[1:]))")
      >>> run_json(Path(f.name), ["a"], timeout=60)
      ['a']
      >>> os.unlink(f.name)
    """
    full = dict(os.environ, PYTHONPATH=os.pathsep.join(str(ROOT / p) for p in ("", "adapters")), **env)
    full.pop("XLA_FLAGS", None)
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=full, cwd=ROOT,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
