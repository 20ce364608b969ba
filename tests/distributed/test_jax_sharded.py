"""JAX: rules on sharded arrays give the single-device result.

``_jax_script.py`` runs in a fresh process (``XLA_FLAGS`` must set 4 host devices
before JAX starts; this pytest process has imported JAX without it) and trains a small
model 4 steps (SGD with momentum, a gradient spike at step 3) with each rule:
on one device under ``jax.jit``; under ``jax.jit`` on arrays sharded with
``NamedSharding(mesh, P("x"))`` over 4 devices (no ``axis_name``); and inside
``jax.shard_map`` on the per-device shards with ``transform/wrap(..., axis_name="x")``.

Compared with the single-device run: final weights (relative difference <= 1e-6; the
sharded matmuls and norms sum in another order, measured ~1e-7), every logged info
value (<= 1e-5), and pruning masks bit for bit; and the number of ``psum``/``pmax`` in
the ``shard_map`` step's jaxpr: one for a global-norm clip, ZClip, AutoClip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

SCRIPT = Path(__file__).with_name("_jax_script.py")
ROOT = Path(__file__).resolve().parents[2]
RULES = ["global_norm", "global_norm_optax", "agc", "zclip", "autoclip", "global_prune"]


@pytest.fixture(scope="module")
def results() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["jit", "shard_map"])
@pytest.mark.parametrize("rule", RULES)
def test_sharded_equals_single_device(results: dict, mode: str, rule: str) -> None:
    r = results[rule]
    assert r[f"{mode}_weights_rel"] <= 1e-6, r
    assert r[f"{mode}_info_rel"] <= 1e-5, r
    assert r["masks_equal"], r


def test_the_rules_act(results: dict) -> None:
    assert min(results["global_norm"]["scales"]) < 0.1  # the spike step is clipped
    assert results["global_prune"]["n_masks"] == 4
    # 0.6 of the 80 weights (w1, w2): biases are not pruned by default (params="weights")
    assert results["global_prune"]["sparsity"] == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("rule", ["global_norm", "global_norm_optax", "zclip", "autoclip"])
def test_one_collective_per_step(results: dict, rule: str) -> None:
    assert results[rule]["collectives"] == 1


def test_agc_collectives(results: dict) -> None:
    """Units that span shards (optax layout reduces the leading axis): unit norms, then the clipped count."""
    assert results["agc"]["collectives"] == 2
