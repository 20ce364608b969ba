"""The pruning examples (examples/prune_dst.py, which runs examples/prune_oneshot.py's baselines) run and agree.

The default run trains in torch only, in this process (a few seconds); the three
frameworks (Keras, so a subprocess) run under ``-m slow``: compiling the RigL step takes
tens of seconds in JAX and in Keras.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import gradclip_core as gc

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 12, 2

pytest.importorskip("sklearn")
pytest.importorskip("torch")


def test_prune_dst_torch_rigl_and_set_train_sparse_with_erk_counts_and_evolving_masks(monkeypatch, capsys):
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # (the example sets a default; nothing imports Keras here)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import prune_dst
    from gradclip_demo import Config
    from gradclip_demo._data import init_weights

    results = prune_dst.main(["--steps", str(STEPS), "--update-every", str(EVERY), "--frameworks", "torch"])["torch"]
    out = capsys.readouterr().out
    assert "| RigL (ERK), trained sparse | " in out and "| Wanda (uniform) | " in out
    shapes = [(64, 64), (64, 10)]
    targets = gc.erk_sparsities(shapes, 0.9)
    assert targets[0] > 0.9 > targets[1]  # ERK: the small output layer denser
    init = [np.abs(w) for w in init_weights(Config()) if w.ndim == 2]
    for label in ("RigL (ERK), trained sparse", "SET (ERK), trained sparse"):
        acc, masks = results[label]
        assert 0.15 < acc <= 1.0, (label, acc)  # it learned (chance: 0.1)
        assert [m.shape for m in masks] == shapes
        changed = 0
        for m, w, s in zip(masks, init, targets):
            k = round(s * m.size)
            assert int((~m).sum()) == k  # the ERK count, constant while the connectivity evolves
            start = np.ones(m.size, bool)
            start[np.argsort(w.ravel(), kind="stable")[:k]] = False  # init_masks="magnitude", tie-free He init
            changed += int((m.ravel() != start).sum()) // 2
            # each update moves at most round(f_t * active) of the array's active weights
            bound = sum(round(f * (m.size - k)) for f in gc.drop_fractions(0.3, EVERY, int(0.75 * STEPS))[1:])
            assert int((m.ravel() & ~start).sum()) <= bound
        assert changed > 0, label  # the connectivity evolved
    for label in ("magnitude (uniform)", "Wanda (uniform)"):
        assert [int((~m).sum()) for m in results[label][1]] == [round(0.9 * 4096), round(0.9 * 640)]
    assert results["dense (not pruned)"][0] > results["magnitude (uniform)"][0]


@pytest.mark.slow
def test_prune_dst_three_frameworks_rigl_masks_identical():
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "examples/prune_dst.py", "--steps", "24", "--update-every", "4"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.stdout.splitlines() if line.startswith("| ")}
    for label in ("dense (not pruned)", "magnitude (uniform)", "magnitude (ERK)", "Wanda (uniform)",
                  "RigL (ERK), trained sparse"):
        assert rows[label].endswith("| yes |"), rows[label]
        accs = rows[label].split(" | ")[1:4]
        assert len(set(accs)) == 1, rows[label]  # identical masks, so the same predictions
    # SET's random growth hashes each framework's own layout: optax and Keras (in, out) agree
    assert "SET (ERK), trained sparse: masks agree on " in out.stdout
    assert "optax/keras (jax) 100.00%" in out.stdout
