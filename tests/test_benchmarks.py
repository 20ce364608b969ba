"""The unified benchmark command runs (smoke test: tiny shapes, few repeats; torch and optax only).

Timings on the tiny set say nothing about performance; this only keeps the command working.
"""

from __future__ import annotations

import doctest
import importlib
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def test_run_quick_tiny_torch_and_optax():
    cmd = [sys.executable, str(BENCH / "run.py"), "--quick", "--shapes", "tiny", "--only", "torch,optax",
           "--rules", "clip_by_global_norm"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout
    assert "clip_grad_norm_(foreach=True)" in table and "optax.clip_by_global_norm" in table
    rows, verdicts = table.split("DESIGN.md targets:")
    # torch: 2 rules x (apply_, attach) + the fused-AdamW row; optax: 2 rules (the monitor(clip_by_global_norm) rows
    # match the filter too: not counted)
    assert sum(line.startswith("clip_by_global_norm(1.0") for line in rows.splitlines()) == 7  # (not monitor(...))
    assert "AdamW(fused=True)" in rows
    lines = [line for line in verdicts.splitlines() if line.startswith(("holds", "MISSED")) and "monitor(" not in line]
    assert sum("extra peak memory" not in line for line in lines) == 8  # one time verdict per row (+ accumulate(...))
    assert sum("extra peak memory" in line for line in lines) == 5  # the 1% memory target of the torch clips (+ accumulate)


def _torch_control_row(rules: str, label: str) -> tuple[str, str]:
    """The one row of a ``--rules`` run of the torch suite whose rule starts with ``label``, and the verdicts."""
    cmd = [sys.executable, str(BENCH / "run.py"), "--quick", "--shapes", "tiny", "--only", "torch", "--rules", rules]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    rows, verdicts = out.stdout.split("DESIGN.md targets:")
    control = [line for line in rows.splitlines() if line.startswith(label)]
    assert len(control) == 1 and "control, no gradclip code" in control[0]
    assert sum(line.startswith("clip_by") for line in rows.splitlines()) == 0  # the filter kept the control only
    return control[0], verdicts


def test_torch_control_row_has_no_verdict():
    # the A/A row (clip_grad_norm_ against itself) measures the run's noise: a row, no target to hold or miss
    _, verdicts = _torch_control_row("(A/A)", "(A/A) clip_grad_norm_")
    assert "(A/A)" not in verdicts


def test_fused_grad_scale_control_row_has_no_verdict():
    # the fused rows' floor (issue 15): a fused step given a grad_scale, against the same step without one
    control, verdicts = _torch_control_row("grad_scale", "(native) AdamW(fused=True) with grad_scale")
    assert "no grad_scale" in control
    assert "(native)" not in verdicts


def test_fused_adamw_stores_unscaled_gradients_back():
    # the premise of the fused rows' ~0.9x floor: given a grad_scale, torch's fused AdamW writes every gradient
    # back divided by it (one more pass than the step without one), so folding a clip saves 1 of 10 passes, not 2
    torch = pytest.importorskip("torch")

    def grad_after_step(grad_scale: float | None) -> "torch.Tensor":
        p = torch.nn.Parameter(torch.ones(8))
        p.grad = torch.full((8,), 6.0)
        opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
        if grad_scale is not None:
            opt.grad_scale = torch.tensor(grad_scale)
        opt.step()
        return p.grad

    assert torch.equal(grad_after_step(2.0), torch.full((8,), 3.0))
    assert torch.equal(grad_after_step(None), torch.full((8,), 6.0))  # without a grad_scale the gradients are only read


def test_bandwidth_row_runs_on_cpu():
    # the GPU bandwidth row (issue 15) runs anywhere: a tiny set on the CPU keeps it working (no target there)
    cmd = [sys.executable, str(BENCH / "bench_bandwidth.py"), "--device", "cpu", "--layers", "1", "--width", "64",
           "--repeats", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    row = [line for line in out.stdout.splitlines() if line.startswith("clip_by_global_norm(1.0)")]
    assert len(row) == 1 and "apply_ (cpu, bandwidth)" in row[0] and "% of a copy's" in row[0]
    assert "holds" not in out.stdout and "MISSED" not in out.stdout  # the 80% target is the GPU's


def test_bandwidth_figures_are_three_passes_over_the_copy(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("bench_bandwidth")
    rows, fig = bench.measure(layers=1, width=32, device="cpu", repeats=2, peak_gbs=100.0)
    nbytes = 4 * fig["params"]
    assert fig["params"] == sum(math.prod(s) for _, s in bench.gpt2_small_shapes(n_layer=1, d=32))
    assert fig["ours_gbs"] == pytest.approx(3 * nbytes / (rows[0].ours_ms / 1e3) / 1e9)
    assert fig["ours_fraction"] == pytest.approx(fig["ours_gbs"] / fig["copy_gbs"])
    assert fig["ours_of_peak"] == pytest.approx(fig["ours_gbs"] / 100.0)
    assert rows[0].target == ""  # CPU: no bandwidth target


def test_bandwidth_verdict(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    run = importlib.import_module("run")
    from _table import Row

    def verdict(fraction):
        row = Row("clip_by_global_norm(1.0)", "torch", "apply_ (cuda, bandwidth)", "clip_grad_norm_(foreach=True)",
                  1.0, 1.0, None, None, ">= 80% of bandwidth", bandwidth=fraction)
        return run.verdicts([row])

    assert verdict(0.85)[0].startswith("holds") and "85% of the copy bandwidth" in verdict(0.85)[0]
    assert verdict(0.79)[0].startswith("MISSED")
    assert verdict(None)[0].startswith("MISSED") and "n/a" in verdict(None)[0]


def test_gpu_check_script_refuses_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the script would run the checks")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                         env={**os.environ, "GRADCLIP_PYTHON": sys.executable})
    assert out.returncode == 2 and "no CUDA device" in out.stderr


def test_prune_scores_rows_run():
    # issue 19: every score / allocation / group recomputes masks in the benchmark's child process
    cmd = [sys.executable, str(BENCH / "bench_prune.py"), "--scores", "--shapes", "tiny", "--reps", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sum("x magnitude" in line for line in out.stdout.splitlines()) == 14
    assert out.stdout.count("[target <= 2.0x") == 4


def test_run_rejects_unknown_suite_and_missing_cuda():
    out = subprocess.run([sys.executable, str(BENCH / "run.py"), "--only", "mxnet"], capture_output=True, text=True)
    assert out.returncode == 2 and "--only" in out.stderr
    import torch

    if not torch.cuda.is_available():
        out = subprocess.run([sys.executable, str(BENCH / "run.py"), "--device", "cuda", "--only", "torch"],
                             capture_output=True, text=True)
        assert out.returncode == 2 and "no CUDA device" in out.stderr


@pytest.mark.parametrize("module", ["_shapes", "_measure", "_table", "_prune_cases"])
def test_helper_doctests(module, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
