"""The foreach primitives return exactly what the core's portable defaults return."""

from __future__ import annotations

import doctest
import importlib
import math

import pytest
import torch

import gradclip_core as gc
import gradclip_torch
from gradclip_torch import _ops

SHAPES = [(6, 4), (6,), (), (0, 3), (2, 3, 3, 3), (257, 33)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _tensors(dtypes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g) * 30).to(dtypes[i % len(dtypes)]) for i, s in enumerate(SHAPES)]


def _default_norms(xs, ord, dtype):  # gradclip_core._multi.array_norms without override
    return [torch.zeros((), dtype=dtype) if x.numel() == 0 else torch.linalg.vector_norm(x.to(dtype), ord=ord) for x in xs]


@pytest.mark.parametrize("ord", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("dtypes", [[d] for d in DTYPES] + [DTYPES], ids=lambda d: "-".join(str(x)[6:] for x in d))
def test_array_norms_equal_default(ord, dtypes):
    xs = _tensors(dtypes)
    acc = torch.float64 if torch.float64 in dtypes else torch.float32
    got = _ops.array_norms(None, xs, ord, acc)
    want = _default_norms(xs, ord, acc)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == acc and a.shape == ()
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtypes", [[d] for d in DTYPES] + [DTYPES], ids=lambda d: "-".join(str(x)[6:] for x in d))
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("inplace", [False, True])
def test_multiply_equals_default(dtypes, shared, inplace):
    xs = _tensors(dtypes)
    factors = [torch.tensor(0.3137)] * len(xs) if shared else [torch.tensor(0.1 + i / 7) for i in range(len(xs))]
    want = [x * f.to(x.dtype) for x, f in zip(xs, factors)]
    if inplace:
        mine = [x.clone() for x in xs]
        with _ops.owned(mine):
            got = _ops.multiply(None, mine, factors)
        assert all(a is b for a, b in zip(got, mine))
    else:
        before = [x.clone() for x in xs]
        got = _ops.multiply(None, xs, factors)
        assert all(torch.equal(a, b) for a, b in zip(xs, before))  # inputs untouched
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


def test_multiply_broadcasting_factor():
    x = torch.randn(3, 4)
    f = torch.rand(3, 1)
    (out,) = _ops.multiply(None, [x], [f])
    assert torch.equal(out, x * f)


def test_owned_is_scoped():
    x = torch.ones(3)
    with _ops.owned([x]):
        pass
    (out,) = _ops.multiply(None, [x], [torch.tensor(0.5)])
    assert out is not x and x.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("module", ["gradclip_torch", "gradclip_torch._ops", "gradclip_torch._state",
                                    "gradclip_torch._apply", "gradclip_torch._hooks"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert gradclip_torch.__all__


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("lo, hi", [(-0.1, 0.3), (None, 0.25), (-0.7, None)])
@pytest.mark.parametrize("inplace", [False, True])
def test_clip_equals_default(dtype, lo, hi, inplace):
    from gradclip_core import _multi

    torch.manual_seed(0)
    xs = [torch.randn(5, 3).to(dtype), torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype), torch.zeros(0, dtype=dtype)]
    xp = gc.namespace(xs[0])
    saved = _multi._OVERRIDES.pop(_ops.NAMESPACE)
    try:
        expected = _multi.clip(xp, [x.clone() for x in xs], lo, hi)
    finally:
        _multi._OVERRIDES[_ops.NAMESPACE] = saved
    mine = [x.clone() for x in xs]
    if inplace:
        with _ops.owned(mine):
            got = _ops.clip(None, mine, lo, hi)
        assert all(g is m for g, m in zip(got, mine))
    else:
        got = _ops.clip(None, mine, lo, hi)
        assert all(torch.equal(m, x) or (m.isnan() == x.isnan()).all() for m, x in zip(mine, xs))
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lo, hi", [(-0.1, 0.3), (-0.25, 0.25), (None, 0.25), (-0.7, None), (-0.0, 0.0)])
def test_count_outside_equals_default(dtype, lo, hi, monkeypatch):
    from gradclip_core import _multi

    monkeypatch.setattr(_ops, "_COUNT_CHUNK", 7)  # several chunks, ragged last one
    torch.manual_seed(0)
    xs = [torch.randn(5, 3).to(dtype), torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.25], dtype=dtype),
          torch.zeros(0, dtype=dtype), torch.randn(40).to(dtype)]
    xp = gc.namespace(xs[0])
    saved = _multi._OVERRIDES.pop(_ops.NAMESPACE)
    try:
        expected = _multi.count_outside(xp, xs, lo, hi)
    finally:
        _multi._OVERRIDES[_ops.NAMESPACE] = saved
    got = _ops.count_outside(None, xs, lo, hi)
    assert [g.dtype for g in got] == [torch.float32] * len(xs)
    assert [float(g) for g in got] == [float(e) for e in expected]
    special = xs[1].tolist()  # NaN never counts, +-inf do
    assert float(got[1]) == sum((lo is not None and v < lo) or (hi is not None and v > hi) for v in special)
    assert _ops.count_outside(None, xs, torch.tensor(-0.1), 0.3) is NotImplemented


def test_clip_with_tensor_bounds_falls_back_to_the_core():
    assert _ops.clip(None, [torch.ones(2)], torch.tensor(0.5), None) is NotImplemented
    rule = gc.clip_by_value(lo=-1.0)
    out, _, _ = rule.update([torch.tensor([-3.0, 2.0])], gc.EmptyState())
    assert out[0].tolist() == [-1.0, 2.0]
