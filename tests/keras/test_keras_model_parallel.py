"""keras.distribution.ModelParallel (JAX backend, 2x2 mesh of host devices): fit equals the one-device fit.

``tests/distributed/_keras_mesh_script.py`` runs in a fresh process (``XLA_FLAGS`` must
give JAX 4 CPU devices before it starts) and fits a two-layer model 3 epochs of 4
batches on one device and under ``ModelParallel`` with a ``LayoutMap`` on a
``DeviceMesh((2, 2), ("batch", "model"))`` (first kernel split by columns, its bias
split, second kernel split by rows; the batch split over ``"batch"``). The rule sees
global arrays (the JAX trainer's step is one jitted program over the mesh; XLA adds the
collectives), so the final weights agree to 1e-6 relative (the sharded matmuls sum in
another order), every logged info value to 1e-5, and the pruned weights (zeros) exactly.

Paths: ``gradclip_keras.Optimizer`` with a global-norm clip and global magnitude pruning
chained (default run, about 20 s: Keras compiles each fit's train step); under ``-m slow``
also ``Callback(global_magnitude_prune)`` (its state is placed on the weights' mesh),
``Constraint(max_norm)``, and the Optimizer with a global-norm clip, AGC, ZClip and
global pruning, each alone.
"""

import keras
import pytest

from tests.distributed.ranks import ROOT, run_json

if keras.backend.backend() != "jax":
    pytest.skip("keras.distribution.ModelParallel runs on the JAX backend", allow_module_level=True)

SCRIPT = ROOT / "tests" / "distributed" / "_keras_mesh_script.py"
QUICK = ["opt_prune_and_clip"]
SLOW = ["opt_global_norm", "opt_agc", "opt_zclip", "opt_global_prune", "callback_prune", "constraint"]


def _run(cases: list) -> dict:
    return run_json(SCRIPT, cases, timeout=600, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def quick():
    return _run(QUICK)


@pytest.fixture(scope="module")
def slow():
    return _run(SLOW)


def check(r: dict) -> None:
    assert r["sharded"], r  # the LayoutMap took: the kernels are split over the mesh
    assert r["weights_rel"] <= 1e-6, r
    assert r["info_rel"] <= 1e-5, r
    assert r["zeros_equal"], r


@pytest.mark.parametrize("case", QUICK)
def test_model_parallel_fit_equals_one_device(quick, case):
    check(quick[case])


def test_the_rules_act(quick):
    info = quick["opt_prune_and_clip"]["info"]
    assert min(i["clip_by_global_norm/scale"] for i in info) < 0.1  # the 30x batch
    assert info[-1]["global_magnitude_prune/sparsity"] == pytest.approx(0.6, abs=1e-6)
    assert quick["opt_prune_and_clip"]["zeros"] == 48  # 0.6 of the 80 kernel weights


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW)
def test_model_parallel_every_path(slow, case):
    check(slow[case])
    if "prune" in case:
        assert slow[case]["zeros"] == 48
