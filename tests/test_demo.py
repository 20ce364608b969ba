"""The main job (``bash scripts/dev.sh demo`` = ``python -m gradclip_demo``) runs and the frameworks agree.

The demo imports Keras, so it runs in a subprocess: the main pytest process never
imports Keras (see tests/keras/conftest.py).
"""

from __future__ import annotations

import doctest
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def _run(tmp_path: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "gradclip_demo", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_cli_runs_every_framework_writes_the_plot_and_the_frameworks_agree(tmp_path):
    out = _run(tmp_path, "--steps", "24", "--eval-every", "6", "--quiet", "--spikes", "19,22")
    assert out.returncode == 0, out.stdout + out.stderr
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    histories = json.loads((tmp_path / "history.json").read_text())
    assert [h["framework"] for h in histories] == ["torch", "optax", "keras/jax"]
    for metric in ("loss", "grad_norm", "sparsity", "skipped"):
        values = np.array([h[metric] for h in histories], dtype=np.float64)
        assert values.shape == (3, 24) and np.isfinite(values).all()
        tol = 1e-6 * np.abs(values).max(0) if metric == "grad_norm" else 1e-5  # spiked norms are ~100x
        assert np.all(np.ptp(values, axis=0) < np.maximum(tol, 1e-5)), metric
    skipped = np.array(histories[0]["skipped"])  # the injected spikes (steps 19 and 22) skipped, nothing else
    assert np.flatnonzero(skipped).tolist() == [18, 21]
    assert "skip decisions identical in every framework: yes" in out.stdout
    acc = np.array([[np.nan if v is None else v for v in h["accuracy"]] for h in histories])
    assert (~np.isnan(acc[0])).sum() == 4 and np.array_equal(acc[0], acc[1], equal_nan=True)
    assert np.array_equal(acc[0], acc[2], equal_nan=True)
    assert histories[0]["sparsity"][-1] > 0.5  # the schedule has pruned (80% at step 14)
    assert "pruning masks identical in every framework: yes" in out.stdout
    assert "largest cross-framework difference" in out.stdout


def test_cli_subset_and_bad_framework(tmp_path):
    out = _run(tmp_path, "--framework", "torch", "--steps", "3", "--quiet")
    assert out.returncode == 0, out.stderr
    assert [h["framework"] for h in json.loads((tmp_path / "history.json").read_text())] == ["torch"]
    bad = _run(tmp_path, "--framework", "mxnet")
    assert bad.returncode == 2 and "comma-separated subset" in bad.stderr


def test_dev_sh_demo_runs_the_demo_package():
    script = (ROOT / "scripts" / "dev.sh").read_text()
    assert 'demo) setup; exec "$VENV/bin/python" -m gradclip_demo "$@"' in script


@pytest.mark.parametrize("module", ["_config", "_data", "_history", "_recipe", "_report"])
def test_framework_free_modules_doctests(module):
    import importlib

    mod = importlib.import_module(f"gradclip_demo.{module}")
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
