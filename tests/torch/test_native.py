"""The fused C loops (``gradclip_core/backend/_native.c``) give the NumPy loops' results bit for bit on
large arrays (their vector bodies, not only the scalar tails the small-chunk tests reach), and the
kernels fall back to NumPy where the loops cannot be built."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from gradclip_core._hash import HashScores
from gradclip_core.backend import _native
from gradclip_core.backend import _torch as kernels

pytestmark = pytest.mark.skipif(_native.library() is None, reason=f"no fused C loops: {_native.unavailable_reason()}")

SPECIAL = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40, -1e-40, 3e38, -3e38, 1.0, -1.0]


class numpy_loops:
    """Within this block the kernels run NumPy's operations (as without a C compiler)."""

    def __enter__(self):
        self.saved = dict(_native._STATE)
        _native._STATE.update(lib=None, why="test")

    def __exit__(self, *exc):
        _native._STATE.clear()
        _native._STATE.update(self.saved)


def _arrays(dtype, n=200_003, seed=0):
    """Pairs with special values scattered among normal ones (a NaN payload too), some runs of them."""
    rng = np.random.default_rng(seed)
    before = rng.standard_normal(n).astype(dtype)
    after = (before + rng.standard_normal(n).astype(dtype) * dtype(0.03)).astype(dtype)
    for x in (before, after):
        idx = rng.integers(0, n, 400)
        x[idx] = rng.choice(np.array(SPECIAL, dtype=dtype), 400)
    after[1000:1100] = before[1000:1100]  # zero updates (bound / 0 = inf, or 0/0 where the weight is 0)
    before[1050:1060] = 0
    bits = {4: np.int32, 8: np.int64}[np.dtype(dtype).itemsize]
    after.view(bits)[7] = -1  # a NaN with all payload bits set
    return torch.from_numpy(after), torch.from_numpy(before)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.numpy().view({4: np.int32, 8: np.int64}[t.element_size()])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relative, absolute", [(0.05, 1e-6), (0.3, 0.0), (0.0, 1e-3)])
def test_min_ratio_loop_equals_numpy(dtype, relative, absolute, monkeypatch):
    """Clippy's per-array ratio of ``w_new - w_old`` (and of separate update and weight arrays): the same bits."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    pairs = [_arrays(dtype, seed=s) for s in range(3)]
    after, before = [p[0] for p in pairs], [p[1] for p in pairs]
    after[2][:] = torch.nan  # an all-NaN update: 1
    got = kernels.difference_min_bound_ratio(None, after, before, relative, absolute, tdt)
    sep = kernels.min_bound_ratio(None, after, before, relative, absolute, tdt)
    with numpy_loops():
        want = kernels.difference_min_bound_ratio(None, after, before, relative, absolute, tdt)
        want_sep = kernels.min_bound_ratio(None, after, before, relative, absolute, tdt)
    for g, w in zip(got + sep, want + want_sep):
        assert g.dtype == w.dtype == tdt and torch.equal(g, w)
    assert float(got[2]) == 1.0 and 0.0 <= float(got[0]) < 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_difference_sumsq_loop_is_the_float64_sum(dtype, monkeypatch):
    """The update's norm from the C loop: the float64 sum of the rounded differences' squares, to the last bit
    of float32 (float64: within float64 rounding), and the NumPy loops' within their float32 dots."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    rng = np.random.default_rng(1)
    after, before = [], []
    for n in (1, 15, 17, 300_001):
        b = rng.standard_normal(n).astype(dtype)
        after.append(torch.from_numpy((b + rng.standard_normal(n).astype(dtype)).astype(dtype)))
        before.append(torch.from_numpy(b))
    got = kernels.difference_norms(None, after, before, tdt)
    with numpy_loops():
        chunks = kernels.difference_norms(None, after, before, tdt)
    for g, c, a, b in zip(got, chunks, after, before):
        exact = np.sqrt(np.sum(np.square((a - b).numpy().astype(np.float64)), dtype=np.float64))
        if dtype == np.float32:
            assert float(g) == float(np.float32(exact))
        else:
            assert float(g) == pytest.approx(exact, rel=1e-14, abs=0)
        assert float(c) == pytest.approx(exact, rel=1e-5, abs=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lo, hi", [(-0.5, 0.5), (-0.0, 0.0), (None, 0.25), (-0.7, None), (1e-40, 2e-40)])
def test_clamp_count_loop_equals_torch_clamp(dtype, lo, hi):
    """The counted clamp's loop: torch's ``clamp_`` bit for bit (NaN payloads, signed zeros, infinities,
    subnormals) and the count of the elements outside, before the clamp, on arrays of vector-body sizes."""
    a, _ = _arrays(np.float32 if dtype == torch.float32 else np.float64, n=100_017)
    want = a.clone().clamp_(lo, hi)
    for n in (100_017, 16, 33):
        x = a[:n].clone()
        count = kernels._host_counts([x], [(lo, hi)], clamp=True)[0]
        expected = int(((a[:n] < lo) if lo is not None else torch.zeros(n, dtype=torch.bool)).sum()
                       + ((a[:n] > hi) if hi is not None else torch.zeros(n, dtype=torch.bool)).sum())
        assert count == expected
        assert np.array_equal(_bits(x), _bits(want[:n]))


@pytest.mark.parametrize("mix", [None, 123456])
@pytest.mark.parametrize("masked", [False, True])
def test_hash_keys_loop_equals_numpy(mix, masked, monkeypatch):
    """SET's hashed growth keys: the C loop per share gives NumPy's blocks' keys, masked or not, on two threads."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    n = 300_001
    flat = torch.empty(n)
    old = torch.tensor(np.random.default_rng(0).random(n) > 0.4) if masked else None
    spec = HashScores(7, 3, 2**32 - 5000, None if mix is None else torch.tensor(mix, dtype=torch.int32))
    got = kernels._hash_keys(None, spec, 11, n - 11, old, kernels._workspace(None, [flat], n)).clone()
    with numpy_loops():
        want = kernels._hash_keys(None, spec, 11, n - 11, old, kernels._workspace(None, [flat], n)).clone()
    assert torch.equal(got, want) and int(got.max()) > 0


@pytest.mark.parametrize("case", ["random", "ties", "special", "pruned"])
def test_lamp_loop_equals_torchs_flip_cumsum_divide_scatter(case):
    """LAMP's scores through the fused loop equal the torch path it replaces (stable sort, square, flip,
    cumsum in double, flip, divide, scatter) bit for bit: ties (equal scores get different suffix sums, by
    index), zeros of both signs, subnormals, infinities and NaN (ranked as +inf), pruned arrays, on vector-body
    sizes."""
    from gradclip_core.prune import lamp_scores
    from gradclip_core.prune._allocation import _lamp_keys, _lamp_sorted
    from gradclip_core.backend import namespace

    rng = np.random.default_rng(5)
    n = 401 * 499
    s = np.abs(rng.standard_normal(n)).astype(np.float32)
    if case == "ties":
        s = np.round(s * 4).astype(np.float32) / 4  # a few distinct values, zeros among them
    elif case == "special":
        idx = rng.integers(0, n, 2000)
        s[idx] = rng.choice(np.array([0.0, -0.0, np.nan, np.inf, 1e-40, 3e38, 1.0], np.float32), 2000)
    elif case == "pruned":  # half zeros (+0 and -0), ties among the live
        s[rng.random(n) < 0.5] = 0.0
        s[rng.integers(0, n, 3000)] = -0.0
        s[rng.integers(0, n, 3000)] = np.float32(0.75)  # ties among the live
    x = torch.from_numpy(s.reshape(401, 499))
    xp = namespace(x)
    got = lamp_scores(xp, x)
    keys = _lamp_keys(xp, x.reshape(-1))
    sorted_keys, order = torch.sort(keys, stable=True)
    want = torch.empty(n).scatter_(0, order, _lamp_sorted(xp, sorted_keys))
    assert np.array_equal(_bits(got.reshape(-1)), _bits(want))
    assert np.array_equal(_bits(kernels.lamp_scores(xp, keys)), _bits(want))
    with numpy_loops():  # without the loops: the default path, the same bits
        assert kernels.lamp_scores(xp, keys) is NotImplemented
        assert np.array_equal(_bits(lamp_scores(xp, x).reshape(-1)), _bits(want))


@pytest.mark.parametrize("n", [3_000_017, 1000, 5])
def test_float64_norms_by_the_sumsq_loop_equal_torchs_float64_norm(n):
    """gc.accumulate's float64 norm on float32 CPU tensors (the squares summed in double by the C loop, in chunks on
    torch's threads) equals the exact norm and ``vector_norm(dtype=float64)`` to float64 rounding, and so rounds to
    the same float32; NaN and inf propagate as in torch."""
    import math

    x = torch.from_numpy(np.random.default_rng(n).standard_normal(n).astype(np.float32) * 30)
    got = kernels.array_norms(None, [x, x[:2]], 2.0, torch.float64)
    for g, v in zip(got, [x, x[:2]]):
        exact = math.sqrt(math.fsum(v.double().numpy() ** 2))  # (float32 squares are exact in float64)
        want = torch.linalg.vector_norm(v, dtype=torch.float64)
        assert g.dtype == torch.float64 and abs(float(g) - exact) <= 1e-12 * exact  # (n * eps: ~3e-10 at worst)
        assert abs(float(want) - exact) <= 1e-12 * exact
        assert g.float() == want.float() == torch.tensor(exact).float()
    with numpy_loops():  # without the loops: torch's chunked float64 norms
        assert kernels._host_sumsq64([x]) is None
    for special, expect in ((float("nan"), "nan"), (float("inf"), "inf")):
        y = x.clone()
        y[n // 2] = special
        assert str(float(kernels.array_norms(None, [y], 2.0, torch.float64)[0])) == expect


def test_without_a_compiler_the_kernels_use_numpy(tmp_path):
    """No C compiler, or GRADCLIP_NATIVE=0: library() is None with the reason, and the kernels still run."""
    code = (
        "import torch\n"
        "from gradclip_core.backend import _native, _torch as k\n"
        "print(_native.library() is None, _native.unavailable_reason())\n"
        "x = torch.tensor([3.0, -3.0, 0.5])\n"
        "print(k._host_counts([x], [(-1.0, 1.0)], clamp=True)[0], x.tolist())\n"
    )
    for env in ({"CC": "no-such-compiler"}, {"GRADCLIP_NATIVE": "0"}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**_env(tmp_path), **env}).stdout.splitlines()
        assert out[0].startswith("True ") and ("no-such-compiler" in out[0] or "GRADCLIP_NATIVE=0" in out[0])
        assert out[1] == "2 [1.0, -1.0, 0.5]"
    assert not list(tmp_path.glob("*.so"))


def test_the_library_is_built_once_into_the_cache_folder(tmp_path):
    """A fresh cache folder gets one library; a second process loads it without building."""
    code = "from gradclip_core.backend import _native\nprint(_native.library() is not None)\n"
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=_env(tmp_path)).stdout
        assert out.strip() == "True"
        assert len(list(tmp_path.glob("native-*.so"))) == 1 and not list(tmp_path.glob("tmp*"))


def _env(cache):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("GRADCLIP_NATIVE", "CC")}
    env["GRADCLIP_CACHE"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return env
