"""The JAX kernel of ``min_bound_ratio`` (Clippy's per-array scale) against the core's default (issue 15).

On the CPU, arrays of ``FUSED_MIN`` elements or more take a select-free form that XLA
fuses into one reduction (gradclip_core/backend/_jax.py). Its result must be the default's
(in NumPy, bit for bit; under jit within XLA's FMA contraction of the bound), on the edge cases where the two forms could part: NaN updates (excluded, also
right after the element that decides), infinite ones (scale 0), zero updates and ``0 / 0``
(excluded), ``inf / inf``, subnormals, a zero bound, all-zero and all-NaN arrays (scale 1),
for float32, bfloat16, float16 and float64 inputs. The pass counts check that the
temporary it removes stays removed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_core.backend as gcb
import gradclip_optax
from gradclip_core.backend import _jax as jax_kernels
from gradclip_core.backend._primitives import min_bound_ratio_default

from ..hlo_passes import full_size_elements

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the fused form is XLA:CPU's")

SHAPE = (256, jax_kernels.fused_size() // 256)  # the smallest arrays that take the fused form
N = SHAPE[0] * SHAPE[1]


def _cases(dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(delta, weight)`` pairs of ``SHAPE`` in ``dtype``, one edge case each, on a random background."""
    rng = np.random.default_rng(0)
    tiny = float(jnp.finfo(dtype).smallest_subnormal)

    def base():
        return rng.standard_normal(N).astype(np.float32), rng.standard_normal(N).astype(np.float32)

    out = [base()]
    d, w = base()  # NaN updates, one right after the element that decides and after most others
    k = int(np.argmin(np.abs(w) / np.abs(d)))
    d[k + 1], d[1::97], d[rng.integers(0, N, 50)] = np.nan, np.nan, np.nan
    out.append((d, w))
    d, w = base()  # zero updates (+0 and -0), zero weights, both zero (0 / 0 with absolute = 0)
    d[rng.integers(0, N, 99)], d[rng.integers(0, N, 99)], w[rng.integers(0, N, 99)] = 0.0, -0.0, 0.0
    d[:50], w[:50] = 0.0, 0.0
    out.append((d, w))
    d, w = base()  # an infinite update (scale 0)
    d[rng.integers(0, N, 3)] = -np.inf
    out.append((d, w))
    d, w = base()  # infinite weights, and inf / inf
    w[rng.integers(0, N, 20)] = np.inf
    d[:20], w[:20] = np.inf, -np.inf
    out.append((d, w))
    d, w = base()  # NaN weights
    w[rng.integers(0, N, 20)] = np.nan
    out.append((d, w))
    d, w = base()  # subnormal updates and weights
    d[::3] = tiny * rng.integers(1, 50, d[::3].size)
    w[::2] = tiny * rng.integers(0, 50, w[::2].size)
    out.append((d, w))
    out.append((np.zeros(N, np.float32), base()[1]))  # all-zero update: 1
    out.append((np.full(N, np.nan, np.float32), base()[1]))  # all-NaN update: 1
    with np.errstate(over="ignore"):
        return [(jnp.asarray(d.reshape(SHAPE), dtype), jnp.asarray(w.reshape(SHAPE), dtype)) for d, w in out]


def _bits(x) -> bytes:
    return np.asarray(x).tobytes()


_QUICK = [("float32", 0.1, 1e-3), ("float32", 0.0, 0.0), ("bfloat16", 0.1, 1e-3), ("float64", 0.25, 1e-7)]
_GRID = [(dt, rel, ab) for dt in ("float32", "bfloat16", "float16", "float64")
         for rel, ab in ((0.1, 1e-3), (0.25, 1e-7), (0.25, 0.0), (0.0, 0.0))]


@pytest.mark.parametrize("dtype, relative, absolute", _QUICK + [
    pytest.param(*case, marks=pytest.mark.slow) for case in _GRID if case not in _QUICK])
def test_fused_min_bound_ratio_is_the_default(dtype, relative, absolute):
    with jax.enable_x64(dtype == "float64"):
        dtype = jnp.dtype(dtype)
        acc = jnp.float64 if dtype == jnp.float64 else jnp.float32
        cases = _cases(dtype)
        ds, ws = [d for d, _ in cases], [w for _, w in cases]
        # fused only with absolute > 0 (absolute = 0: a zero weight with a zero update is 0 / 0 in finite inputs)
        fused = jax_kernels.min_bound_ratio(jnp, ds, ws, relative, absolute, acc) is not NotImplemented
        assert fused == (absolute > 0)
        got = jax.jit(lambda ds, ws: gcb.min_bound_ratio(jnp, ds, ws, relative, absolute, acc))(ds, ws)
        nacc = np.dtype(acc)
        with np.errstate(all="ignore"):  # the definition in NumPy (IEEE operations, no contraction)
            want = min_bound_ratio_default(np, [np.asarray(d).astype(nacc) for d in ds],
                                           [np.asarray(w).astype(nacc) for w in ws], relative, absolute, nacc)
        assert [_bits(g) for g in got] == [_bits(np.asarray(w, nacc)) for w in want]
        assert all(g.dtype == acc for g in got)
        # the default under jit: the same but where XLA's own loop contracts absolute + relative * |w| into an FMA
        # (bfloat16 inputs, relative 0.1: 1 ulp in the first case)
        xla = jax.jit(lambda ds, ws: min_bound_ratio_default(jnp, ds, ws, relative, absolute, acc))(ds, ws)
        for g, x in zip(got, xla):
            np.testing.assert_array_max_ulp(np.asarray(g), np.asarray(x), maxulp=1)
        assert float(got[3]) == 0.0 and float(got[-2]) == 1.0 and float(got[-1]) == 1.0  # inf; all zero; all NaN
        if relative:
            assert 0.0 < float(got[1]) < 1.0  # NaN updates do not hide the others
        eager = gcb.min_bound_ratio(jnp, ds, ws, relative, absolute, acc)  # (not traced: the same fused form)
        assert [_bits(g) for g in eager] == [_bits(g) for g in got]


def test_small_arrays_and_mixed_lists_take_the_default():
    rng = np.random.default_rng(1)
    ds = [jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((7,), SHAPE, (), (0, 3))]
    ws = [jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((7,), SHAPE, (), (0, 3))]
    ds[0] = ds[0].at[2].set(jnp.nan)
    got = jax.jit(lambda ds, ws: jax_kernels.min_bound_ratio(jnp, ds, ws, 0.1, 1e-3, jnp.float32))(ds, ws)
    want = jax.jit(lambda ds, ws: min_bound_ratio_default(jnp, ds, ws, 0.1, 1e-3, jnp.float32))(ds, ws)
    assert [_bits(g) for g in got] == [_bits(w) for w in want]
    assert float(got[3]) == 1.0  # size 0
    assert jax_kernels.min_bound_ratio(jnp, ds[:1], ws[:1], 0.1, 1e-3, jnp.float32) is NotImplemented


def test_a_backend_that_propagates_nan_keeps_the_default(monkeypatch):
    """The once-per-process check: a fused form whose ``minimum`` propagated NaN would fail it."""

    @functools.partial(jax.jit, static_argnums=(2, 3, 4))
    def propagating(d, w, relative, absolute, dtype):
        q = (absolute + relative * jnp.abs(w.astype(dtype))) / jnp.abs(d.astype(dtype))
        return jnp.min(jnp.where(jnp.isnan(q), q, jnp.minimum(q, 1.0)))  # XLA's own loops: minimum(NaN, 1) is NaN

    monkeypatch.setattr(jax_kernels, "_fused_min", propagating)
    monkeypatch.setattr(jax_kernels, "_FUSED_OK", {})
    d, w = _cases(jnp.float32)[0]
    assert jax_kernels.min_bound_ratio(jnp, [d], [w], 0.1, 1e-3, jnp.float32) is NotImplemented
    assert jax_kernels._FUSED_OK == {"float32": False}


def _passes(fn, *args) -> float:
    """Weight-sized arrays the compiled ``fn`` reads and writes, in passes over one argument's size."""
    return full_size_elements(jax.jit(fn).lower(*args).compile().as_text(), N) / N


def test_fused_ratio_reads_delta_and_weight_once():
    d, w = _cases(jnp.float32)[0]
    fused = _passes(lambda d, w: gcb.min_bound_ratio(jnp, [d], [w], 0.1, 1e-7, jnp.float32), d, w)
    default = _passes(lambda d, w: min_bound_ratio_default(jnp, [d], [w], 0.1, 1e-7, jnp.float32), d, w)
    assert fused == pytest.approx(2.0)  # read the update and the weights; no temporary
    assert default == pytest.approx(4.0)  # ... and write and read the selected ratios


def test_optax_clippy_transform_four_passes():
    """The update read for the scale with the weights, then read and written scaled: 4 passes, no temporary."""
    rng = np.random.default_rng(2)
    grads = [jnp.asarray(rng.standard_normal(SHAPE).astype(np.float32)) for _ in range(2)]
    params = [jnp.asarray(rng.standard_normal(SHAPE).astype(np.float32)) for _ in range(2)]
    tx = gradclip_optax.transform(gc.clippy())
    compiled = jax.jit(tx.update).lower(grads, tx.init(grads), params).compile()
    assert full_size_elements(compiled.as_text(), N) / (2 * N) == pytest.approx(4.0, abs=0.01)


_SHARDED = r"""
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import gradclip_core.backend as gcb
from gradclip_core.backend._primitives import min_bound_ratio_default
mesh = jax.make_mesh((len(jax.devices()),), ("x",))
rng = np.random.default_rng(0)
out = []
for n in (1 << 16, 1 << 22):  # 2048 elements per device (the default), 131072 (fused)
    d, w = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    d[int(np.argmin(np.abs(w) / np.abs(d))) + 1], d[1::7] = np.nan, np.nan
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("x")))
    got = jax.jit(lambda a, b: gcb.min_bound_ratio(jnp, [a], [b], 0.1, 1e-3, jnp.float32)[0])(put(d), put(w))
    with np.errstate(all="ignore"):
        want = min_bound_ratio_default(np, [d], [w], 0.1, 1e-3, np.float32)[0]
    out.append([float(got), float(want)])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_sharded_over_32_devices_is_the_default():
    """Under jit an array split over every device is reduced per shard: the fused form only where each shard is big."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=32")
    res = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True, env=env, cwd=root,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    for got, want in json.loads(res.stdout.strip().splitlines()[-1]):
        assert got == want and 0.0 < got < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("axis", [0, 2])
def test_vmapped_is_the_default(axis):
    """Under vmap (the batch axis first or last) the fused form reduces each example's array alone."""
    cases = _cases(jnp.float32)[:3]
    d, w = jnp.stack([c[0] for c in cases], axis), jnp.stack([c[1] for c in cases], axis)
    got = jax.jit(jax.vmap(lambda a, b: gcb.min_bound_ratio(jnp, [a], [b], 0.1, 1e-3, jnp.float32)[0], axis))(d, w)
    with np.errstate(all="ignore"):
        want = [min_bound_ratio_default(np, [np.asarray(a)], [np.asarray(b)], 0.1, 1e-3, np.float32)[0] for a, b in cases]
    assert _bits(got) == _bits(np.asarray(want, np.float32))
