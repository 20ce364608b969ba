"""The Keras benchmark's control rows run on every backend (benchmarks/bench_keras.py, issue 15).

``(A/A) SGD(global_clipnorm=1.0)`` times Keras' step against itself (the run's noise); on JAX
``(native) optax.adaptive_grad_clip(0.01) + sgd`` times native AGC against a native global-norm
clip on the same arrays (the floor of the ``adaptive_clip`` row). Tiny shapes, one pair: this
keeps the rows working; their timings say nothing here.
"""

import pathlib
import sys

import keras
import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench_keras(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_keras

    yield bench_keras
    sys.modules.pop("bench_keras", None)


def test_a_a_control_row(bench_keras):
    rows = bench_keras.suite(repeats=1, warmup=1, shapes="tiny", only_rules="(A/A)", part="clip")
    assert [r.rule for r in rows] == ["(A/A) SGD(global_clipnorm=1.0)"]
    row = rows[0]
    assert row.target == "" and "control" in row.note and row.adapter == f"keras/{keras.backend.backend()}"
    assert row.ours_ms > 0 and row.native_ms > 0


def test_native_agc_control_row_on_jax(bench_keras):
    rows = bench_keras.suite(repeats=1, warmup=1, shapes="tiny", only_rules="adaptive_clip", part="clip")
    labels = [r.rule for r in rows]
    if keras.backend.backend() != "jax":
        assert labels == ["adaptive_clip(0.01)"]  # optax's AGC runs on JAX arrays only
        return
    assert labels == ["adaptive_clip(0.01)", "(native) optax.adaptive_grad_clip(0.01) + sgd"]
    assert rows[1].target == "" and rows[1].native.startswith("(ref) optax.clip_by_global_norm")


def test_native_agc_control_steps_optax(bench_keras):
    # the control's step is optax's own (bench_optax.jitted_step on the Keras variables' arrays): after
    # one step of native AGC + sgd the weights are optax's update of the zero weights
    if keras.backend.backend() != "jax":
        pytest.skip("optax steps JAX arrays")
    import optax
    from bench_optax import jitted_step

    variables = bench_keras.make_variables("tiny")
    grads = bench_keras.make_grads(shapes="tiny")
    tx = optax.chain(optax.adaptive_grad_clip(0.01), optax.sgd(0.5))
    w = jitted_step(tx, grads, [v.value for v in variables])()
    params = [np.zeros(v.shape, np.float32) for v in variables]
    want, _ = tx.update([np.asarray(g) for g in grads], tx.init(params), params)
    for got, u in zip(w, want):
        np.testing.assert_allclose(np.asarray(got), np.asarray(u), rtol=1e-6, atol=1e-12)
