"""gc.accumulate(rule, "float64") in JAX, in a subprocess: without x64 a clear ValueError; with x64 a jitted
optax step keeps the unwrapped dtypes, and under ``jax.shard_map`` on 1, 2 and 4 host
devices the global norm of one 2^20-element float32 gradient (half ~1e3, half ~1e-2),
split by rows: with float64 accumulation it is the exactly rounded norm on every split, and info / updates
stay float32. (XLA's CPU float32 reductions happen to be exact on this gradient too, so unlike
torch's there is no float32 drift to show here; see tests/distributed/test_torch_parallel.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .ranks import run_json

pytest.importorskip("jax")
pytest.importorskip("optax")

SCRIPT = Path(__file__).with_name("_jax_f64_script.py")


def test_jax_float64_needs_x64_keeps_dtypes_and_norm_whatever_the_split() -> None:
    r = run_json(SCRIPT, [], timeout=600, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="0")
    jit = r["jit"]
    assert "jax_enable_x64" in jit["err"] and "float64" in jit["err"], jit
    assert jit["before"] == jit["after"] and "float64" not in jit["after"], jit
    assert set(jit["info"]) <= {"float32", "int32"} and jit["update"] == "float32", jit
    assert jit["norm"] == 64.0
    for n in ("1", "2", "4"):
        norm, dtype, update_dtype, psum_f64 = r[n]["float64"]
        assert norm == r["exact"], (n, r)
        assert dtype == update_dtype == "float32", (n, r)
        assert psum_f64, (n, r)  # the partials cross devices in float64
        assert r[n]["float32"][1] == "float32" and not r[n]["float32"][3], (n, r)
