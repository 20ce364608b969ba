"""The core's torch kernels return exactly what the portable defaults return, in place or not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gradclip_core as gc
import gradclip_core.backend as gcb
from gradclip_core.backend import _primitives
from gradclip_core.backend import _torch as kernels

SHAPES = [(6, 4), (6,), (), (0, 3), (2, 3, 3, 3), (257, 33)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
XP = gcb.namespace(torch.ones(1))
gcb.ensure_kernels(kernels.NAMESPACE)


def _tensors(dtypes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g) * 30).to(dtypes[i % len(dtypes)]) for i, s in enumerate(SHAPES)]


class portable:
    """Within this block the torch namespace has no kernels: the core's portable defaults run."""

    def __enter__(self):
        self.saved = _primitives._OVERRIDES.pop(kernels.NAMESPACE)

    def __exit__(self, *exc):
        _primitives._OVERRIDES[kernels.NAMESPACE] = self.saved


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("ord", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("dtypes", [[d] for d in DTYPES] + [DTYPES], ids=lambda d: "-".join(str(x)[6:] for x in d))
def test_array_norms_equal_default(ord, dtypes):
    xs = _tensors(dtypes)
    acc = torch.float64 if torch.float64 in dtypes else torch.float32
    got = kernels.array_norms(None, xs, ord, acc)
    with portable():
        want = gcb.array_norms(XP, xs, ord, acc)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == acc and a.shape == ()
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtypes", [[d] for d in DTYPES] + [DTYPES], ids=lambda d: "-".join(str(x)[6:] for x in d))
@pytest.mark.parametrize("shared", [True, False])
def test_multiply_equals_default_and_leaves_inputs_alone(dtypes, shared):
    xs = _tensors(dtypes)
    factors = [torch.tensor(0.3137)] * len(xs) if shared else [torch.tensor(0.1 + i / 7) for i in range(len(xs))]
    before = [x.clone() for x in xs]
    got = kernels.multiply(None, xs, factors)
    assert all(torch.equal(a, b) for a, b in zip(xs, before))
    for a, x, f in zip(got, xs, factors):
        _same(a, x * f.to(x.dtype))


def _effects(xs):
    """One effect of every kind (and nested ones) for the tensors ``xs``."""
    n = len(xs)
    shared = torch.tensor(0.3137)
    per_array = tuple(torch.tensor(0.1 + i / 7) for i in range(n))
    per_unit = tuple(torch.rand((x.shape[0],) + (1,) * (x.ndim - 1)) if x.ndim else torch.tensor(0.5) for x in xs)
    masks = tuple(torch.rand(x.shape) < 0.5 for x in xs)
    return {
        "keep": gc.Keep(),
        "scale-shared": gc.Scale((shared,) * n),
        "scale-per-array": gc.Scale(per_array),
        "scale-per-unit": gc.Scale(per_unit),
        "divide": gc.Scale(per_array, divide=True),
        "scale-some": gc.Scale((shared,) + (None,) * (n - 1)),
        "mask": gc.Mask(masks),
        "clamp": gc.Clamp(-0.5, 2.0),
        "clamp-lo-tensor": gc.Clamp(torch.tensor(-0.25), None),
        "zero-nonfinite": gc.ZeroNonfinite(),
        "replace": gc.Replace(tuple(x * 2 for x in xs)),
        "then": gc.Then((gc.ZeroNonfinite(), gc.Scale((shared,) * n), gc.Clamp(None, 1.0))),
        "skip-yes": gc.Skip(gc.Scale((shared,) * n), torch.tensor(True)),
        "skip-no": gc.Skip(gc.Scale((shared,) * n), torch.tensor(False)),
    }


@pytest.mark.parametrize("dtypes", [[d] for d in DTYPES] + [DTYPES], ids=lambda d: "-".join(str(x)[6:] for x in d))
@pytest.mark.parametrize("kind", sorted(_effects(_tensors([torch.float32]))))
@pytest.mark.parametrize("contiguous", [True, False])
def test_in_place_effects_equal_the_portable_definition(dtypes, kind, contiguous):
    torch.manual_seed(1)
    xs = _tensors(dtypes)
    xs[1][0] = float("nan")
    xs[1][1] = float("inf")
    if not contiguous:
        xs = [x.t() if x.ndim == 2 else x for x in xs]
    effect = _effects(xs)[kind]
    with portable():
        want = gcb.apply_effect(XP, xs, effect)
    mine = [x.clone() for x in xs]
    storage = [m.data_ptr() for m in mine]
    out = gcb.apply_effect(XP, mine, effect, inplace=True)
    assert all(o is m for o, m in zip(out, mine)) and [m.data_ptr() for m in mine] == storage
    for a, b in zip(mine, want):
        _same(a, b)


def test_in_place_global_scale_is_one_foreach_call_per_dtype(monkeypatch):
    calls = []
    real = torch._foreach_mul_
    monkeypatch.setattr(torch, "_foreach_mul_", lambda ts, f: calls.append((len(ts), f.dtype)) or real(ts, f))
    xs = _tensors([torch.float32, torch.bfloat16])
    gcb.apply_effect(XP, xs, gc.Scale((torch.tensor(0.5),) * len(xs)), inplace=True)
    assert sorted(calls, key=str) == sorted([(3, torch.float32), (3, torch.bfloat16)], key=str)


@pytest.mark.parametrize("eager", [True, False])
@pytest.mark.parametrize("divide", [False, True])
def test_in_place_scale_skips_unit_factors_on_the_cpu(eager, divide, monkeypatch):
    """x * 1 is x: on the eager CPU an array whose factor (in its dtype) is 1 is not written; values as the default."""
    monkeypatch.setattr(kernels, "EAGER_CPU", eager)
    xs = _tensors([torch.float32, torch.bfloat16])  # 6 arrays, dtypes alternating
    xs[0][..., 0] = float("nan")
    # 1 (skipped); 0.5; 1.0001 is 1 in bfloat16 (skipped there) but not in float32; NaN (written); 1 shared
    one = torch.tensor(1.0)
    factors = (one, torch.tensor(0.5), torch.tensor(1.0001), torch.tensor(1.0001), torch.tensor(float("nan")), one)
    with portable():
        want = gcb.apply_effect(XP, xs, gc.Scale(factors, divide=divide))
    versions = [x._version for x in xs]
    gcb.apply_effect(XP, xs, gc.Scale(factors, divide=divide), inplace=True)
    for x, w in zip(xs, want):
        _same(x, w)
    written = [x._version != v for x, v in zip(xs, versions)]
    assert written == ([False, True, True, False, True, False] if eager else [True] * 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("lo, hi", [(-0.1, 0.3), (None, 0.25), (-0.7, None)])
def test_clip_equals_default(dtype, lo, hi):
    torch.manual_seed(0)
    xs = [torch.randn(5, 3).to(dtype), torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype),
          torch.zeros(0, dtype=dtype)]
    with portable():
        expected = gcb.clip(XP, [x.clone() for x in xs], lo, hi)
    mine = [x.clone() for x in xs]
    got = kernels.clip(None, mine, lo, hi)
    assert all(torch.equal(m, x) or (m.isnan() == x.isnan()).all() for m, x in zip(mine, xs))
    for g, e in zip(got, expected):
        _same(g, e)


@pytest.mark.parametrize("eager", [True, False], ids=["numpy-chunks", "torch-chunks"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lo, hi", [(-0.1, 0.3), (-0.25, 0.25), (None, 0.25), (-0.7, None), (-0.0, 0.0)])
def test_count_outside_equals_default(dtype, lo, hi, eager, monkeypatch):
    monkeypatch.setattr(kernels, "EAGER_CPU", eager)  # the eager CPU's NumPy chunks, or the device path's
    monkeypatch.setattr(kernels, "_COUNT_CHUNK", 7)  # several chunks, ragged last one
    monkeypatch.setattr(kernels, "_HOST_CHUNK", 7)
    torch.manual_seed(0)
    xs = [torch.randn(5, 3).to(dtype), torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.25], dtype=dtype),
          torch.zeros(0, dtype=dtype), torch.randn(40).to(dtype)]
    with portable():
        expected = gcb.count_outside(XP, xs, lo, hi)
    got = kernels.count_outside(None, xs, lo, hi)
    assert [g.dtype for g in got] == [torch.float32] * len(xs)
    assert [float(g) for g in got] == [float(e) for e in expected]
    special = xs[1].tolist()  # NaN never counts, +-inf do
    assert float(got[1]) == sum((lo is not None and v < lo) or (hi is not None and v > hi) for v in special)
    assert kernels.count_outside(None, xs, torch.tensor(-0.1), 0.3) is NotImplemented


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lo, hi", [(-0.5, 0.5), (-0.0, 0.0), (0.0, 0.0), (-1.0, -0.0), (None, 0.0), (-0.0, None)])
def test_one_pass_cpu_clamp_equals_foreach_clamps_bit_for_bit(dtype, lo, hi):
    """The CPU's one clamp pass per tensor gives the bits of clip_grad_value_'s clamp_min then clamp_max passes."""
    vals = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 1e-30, -1e-30, float("nan"), float("inf"), -float("inf"), 3.0, -3.0]
    x = torch.tensor(vals * 41, dtype=dtype)  # (several vector widths and a remainder)
    want = [x.clone()]
    if lo is not None:
        torch._foreach_clamp_min_(want, lo)
    if hi is not None:
        torch._foreach_clamp_max_(want, hi)
    got = [x.clone()]
    kernels.apply_effect_(None, got, gc.Clamp(lo, hi))
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    assert torch.equal(got[0].view(bits), want[0].view(bits))
    assert torch.equal(kernels.clip(None, [x], lo, hi)[0].view(bits), want[0].view(bits))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lo, hi", [(-0.5, 0.5), (-0.0, 0.0), (0.0, 0.0), (-1.0, -0.0), (None, 0.0), (-0.0, None),
                                    (None, 0.25), (-0.7, None)])
def test_counted_clamp_is_count_then_clamp_bit_for_bit(dtype, lo, hi, loops, monkeypatch):
    """Clamp(lo, hi, count) in place (one NumPy pass per chunk where it fuses) gives the bits of
    clip_grad_value_'s clamps and the count of count_outside on the arrays before: NaN payloads,
    signed zeros, +-inf, every dtype; several chunks on several threads, ragged last ones."""
    monkeypatch.setattr(kernels, "_HOST_CHUNK", 7)
    vals = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 1e-30, -1e-30, float("nan"), float("inf"), -float("inf"), 3.0, -3.0, 0.25]
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[torch.empty((), dtype=dtype).element_size()]
    odd_nan = torch.tensor([-1], dtype=bits).view(dtype)  # a NaN with another payload (all ones)
    xs = [torch.cat([torch.tensor(vals * 5, dtype=dtype), odd_nan]), torch.zeros(0, dtype=dtype),
          (torch.randn(9, 31, generator=torch.Generator().manual_seed(0)) * 0.6).to(dtype), torch.tensor(-4.0, dtype=dtype),
          torch.randn(3, 5).to(dtype).t()]  # (a transposed view: not NumPy-viewable in place, counted then clamped)
    want = [x.clone() for x in xs]
    for b, op in ((lo, torch._foreach_clamp_min_), (hi, torch._foreach_clamp_max_)):
        if b is not None:
            op(want, b)
    counts = [float(c) for c in gcb.count_outside(XP, xs, lo, hi)]
    with portable():
        frac = gcb.clipped_fraction(XP, xs, lo, hi)[0]
    got = [x.clone() for x in xs]
    count = gc.Count(torch.full((), float("nan")), sum(x.numel() for x in xs))
    assert kernels.fuses_count(None, got, lo, hi) == (dtype != torch.bfloat16)  # (bfloat16: counted, then clamped)
    kernels.apply_effect_(XP, got, gc.Clamp(lo, hi, count))
    for g, w in zip(got, want):
        assert torch.equal(g.reshape(-1).view(bits), w.reshape(-1).view(bits))
    assert count.done and count.out.dtype == torch.float32
    assert torch.equal(count.out.view(torch.int32), frac.view(torch.int32))  # the rule's own sum, bit for bit
    assert count.out.item() == pytest.approx(sum(counts) / sum(x.numel() for x in xs))
    held = torch.tensor(vals, dtype=dtype).tolist()  # (values and bounds as the dtype holds them)
    lo_, hi_ = (None if b is None else torch.tensor(b, dtype=dtype).item() for b in (lo, hi))
    assert counts[0] == sum(((lo_ is not None and v < lo_) or (hi_ is not None and v > hi_)) for v in held) * 5


def test_counted_value_clip_through_apply_counts_in_the_clamp(monkeypatch):
    """apply_ of clip_by_value(info="full") counts in the clamp's pass (no count_outside call) and gives
    what the portable rule gives, under a chain, a nonfinite policy, on() too; outside an adapter
    the count is made by the rule."""
    import gradclip_torch

    monkeypatch.setattr(kernels, "_HOST_CHUNK", 64)
    calls = []

    def spy(*args):
        calls.append(1)
        return kernels.count_outside(*args)

    monkeypatch.setitem(_primitives._OVERRIDES[kernels.NAMESPACE], "count_outside", spy)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(s, generator=g) for s in [(40, 30), (7,), (0, 2), (100,)]]
    grads[0][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    out_of_place = gc.chain(gc.clip_by_value(0.3, info="full", nonfinite="skip"), gc.record_norms())
    for rule in [gc.clip_by_value(0.5, info="full"), gc.clip_by_value(lo=-0.2, info="full", nonfinite="zero"),
                 gc.chain(gc.clip_by_global_norm(3.0), gc.clip_by_value(0.1, info="full")), out_of_place,
                 gc.on(gc.clip_by_value(0.2, info="full"), "weights")]:
        ps = [torch.nn.Parameter(torch.zeros_like(x)) for x in grads]
        for p, x in zip(ps, grads):
            p.grad = x.clone()
        want, _, want_info = rule.update([x.clone() for x in grads], rule.init(grads))
        calls.clear()
        _, info = gradclip_torch.apply_(ps, rule)
        assert bool(calls) == (rule is out_of_place)  # (a chain's earlier rules run out of place: counted there)
        for p, w in zip(ps, want):
            assert torch.equal(p.grad.view(torch.int32), w.view(torch.int32))
        assert info.keys() == want_info.keys() and any(k.endswith("clipped_fraction") for k in info)
        for k in info:
            torch.testing.assert_close(info[k], want_info[k], rtol=0, atol=0, equal_nan=True, msg=k)
    frac, count = gcb.clipped_fraction(XP, grads, -0.5, 0.5)  # outside counts_on_apply: counted now
    assert count is None and 0 < float(frac) < 1


def test_counts_on_apply_refuses_a_count_never_written():
    x = [torch.tensor([2.0, 0.1])]
    with pytest.raises(RuntimeError, match="never written"):
        with gcb.counts_on_apply():
            frac, count = gcb.clipped_fraction(XP, x, -1.0, 1.0)
            assert count is not None
    assert x[0].tolist() == pytest.approx([2.0, 0.1])
    with gcb.counts_on_apply():  # written out of place (the portable path) counts too
        frac, count = gcb.clipped_fraction(XP, x, -1.0, 1.0)
        out = gcb.apply_effect(XP, x, gc.Clamp(-1.0, 1.0, count))
    assert float(frac) == 0.5 and out[0].tolist() == pytest.approx([1.0, 0.1]) and x[0].tolist()[0] == 2.0
    again = [torch.tensor([5.0, 6.0, 7.0])]  # a later application (replicas) clamps, the count stays the first one's
    kernels.apply_effect_(XP, again, gc.Clamp(-1.0, 1.0, count))
    assert again[0].tolist() == [1.0, 1.0, 1.0] and float(frac) == 0.5


def test_clip_with_tensor_bounds():
    assert kernels.clip(None, [torch.ones(2)], torch.tensor(0.5), None)[0].tolist() == [1.0, 1.0]
    rule = gc.clip_by_value(lo=-1.0)
    out, _, _ = rule.update([torch.tensor([-3.0, 2.0])], gc.EmptyState())
    assert out[0].tolist() == [-1.0, 2.0]


@pytest.mark.parametrize("shape, axes", [((300, 40, 7), (0,)), ((300, 40, 7), (0, 1)), ((300, 40, 7), (-3, -2)),
                                         ((5000, 3), (0,)), ((2, 3), (0,)), ((300, 40, 7), (1, 2)), ((64, 9), None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unit_norms_over_leading_axes_match_vector_norm(shape, axes, dtype, monkeypatch):
    # Keras' (in, out) kernels reduce the leading axes: a row-chunked sum of squares (small chunks
    # here, so that several are summed) instead of torch's strided CPU vector_norm (10-20x slower).
    monkeypatch.setattr(kernels, "_CHUNK", 64)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[0] = 0.0  # a unit of zeros somewhere
    got = kernels.unit_norms(None, [x], [axes], [torch.float32])[0]
    want = torch.linalg.vector_norm(x, 2, dim=axes, keepdim=True, dtype=torch.float32)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)  # float32 sums in another order
    huge = torch.full((4, 3), 3e38)  # overflows to inf, as vector_norm does
    assert torch.isinf(kernels.unit_norms(None, [huge], [(0,)], [torch.float32])[0]).all()


def test_host_column_norms_batch_shapes_and_dtypes(monkeypatch):
    # eager CPU float32/float64 tensors whose units are the trailing axes: one batch of NumPy row blocks
    # (einsum, no x * x), blocks of 64 elements here so that several are added; the others (bfloat16, a
    # non-contiguous view, a float64 accumulation of float32) keep their paths in the same call
    monkeypatch.setattr(kernels, "_CHUNK", 64)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(300, 7, generator=g), torch.randn(3, 3, 5, 4, generator=g, dtype=torch.float64),
          torch.randn(0, 5, generator=g), torch.randn(6, 0, generator=g), torch.randn(1, 9, generator=g),
          torch.randn(50, 20, generator=g).to(torch.bfloat16), torch.randn(20, 50, generator=g).t(),
          torch.randn(40, 6, generator=g)]
    axes = [(0,), (0, 1, 2), (0,), (0,), (0,), (0,), (0,), (0,)]
    dtypes = [torch.float32, torch.float64, torch.float32, torch.float32, torch.float32, torch.float32,
              torch.float32, torch.float64]
    calls = []
    real = kernels._host_column_norms
    monkeypatch.setattr(kernels, "_host_column_norms", lambda items: calls.append(len(items)) or real(items))
    got = kernels.unit_norms(None, xs, axes, dtypes)
    assert calls == [5]  # the float32 / float64 contiguous tensors of their own dtype, together
    for x, ax, dt, out in zip(xs, axes, dtypes, got):
        want = torch.linalg.vector_norm(x, 2, dim=ax, keepdim=True, dtype=dt)
        assert out.shape == want.shape and out.dtype == dt
        torch.testing.assert_close(out, want, rtol=1e-5 if dt == torch.float32 else 1e-12, atol=0)


def test_host_column_norms_bits_do_not_depend_on_threads(monkeypatch):
    x = torch.randn(5000, 30, generator=torch.Generator().manual_seed(2))
    one = kernels.unit_norms(None, [x], [(0,)], [torch.float32])[0]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(kernels, "_HOST_CHUNK", 1 << 10)  # shares run on 3 pool threads
    three = kernels.unit_norms(None, [x], [(0,)], [torch.float32])[0]
    assert torch.equal(one, three)
    # float32 sums of a GPT-2-embedding-like height (many blocks, added pairwise): close to float64's
    tall = torch.randn(50257, 8, generator=torch.Generator().manual_seed(3))
    got = kernels.unit_norms(None, [tall], [(0,)], [torch.float32])[0].numpy()[0].astype(np.float64)
    exact = np.sqrt(np.sum(tall.numpy().astype(np.float64) ** 2, axis=0))
    assert np.max(np.abs(got / exact - 1)) < 1e-6


@pytest.mark.parametrize("eager", [True, False], ids=["numpy-chunks", "torch-chunks"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_min_bound_ratio_equals_default(dtype, eager, loops, monkeypatch):
    """Clippy's per-array ratio, chunk by chunk (several chunks, a ragged last one), equals the portable definition."""
    monkeypatch.setattr(kernels, "EAGER_CPU", eager)  # the eager CPU's NumPy chunks, or the device path's
    monkeypatch.setattr(kernels, "_RATIO_CHUNK", 7)
    monkeypatch.setattr(kernels, "_HOST_CHUNK", 7)
    torch.manual_seed(0)
    ds = [torch.randn(5, 3).to(dtype), torch.tensor([float("nan"), 2.0, 0.0, -0.0, 0.25], dtype=dtype),
          torch.zeros(0, dtype=dtype), torch.randn(40).to(dtype) * 0.01, torch.tensor(3.0, dtype=dtype),
          torch.full((9,), float("nan"), dtype=dtype), torch.tensor([float("inf"), 0.5, float("inf")], dtype=dtype)]
    ws = [torch.randn(5, 3).to(dtype), torch.tensor([1.0, float("nan"), 0.0, 1.0, 0.0], dtype=dtype),
          torch.zeros(0, dtype=dtype), torch.randn(40).to(dtype), torch.tensor(-1.0, dtype=dtype),
          torch.ones(9, dtype=dtype), torch.tensor([1.0, 1.0, float("inf")], dtype=dtype)]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    with portable():
        expected = gcb.min_bound_ratio(XP, ds, ws, 0.1, 1e-3, acc)
    got = kernels.min_bound_ratio(None, ds, ws, 0.1, 1e-3, acc)
    for g, e in zip(got, expected):
        _same(g, e)
    assert float(got[2]) == 1.0 and float(got[5]) == 1.0  # empty; all NaN
    assert float(got[6]) == 0.0  # an infinite update element: s = 0


@pytest.mark.parametrize("group,n_prune", [(2, 1), (4, 2), (8, 5), (40, 20)])
def test_group_keep_equals_default_with_ties(group, n_prune):
    """N:M ranks counted in place (int8) equal the portable pairwise definition."""
    g = torch.Generator().manual_seed(group)
    cols = torch.randint(0, 3, (group, 257), generator=g, dtype=torch.int32)  # few distinct keys: many ties
    with portable():
        expected = _primitives.group_keep(XP, cols, n_prune)
    got = kernels.group_keep(None, cols, n_prune)
    _same(got, expected)
    assert torch.equal(got.sum(0), torch.full((257,), group - n_prune))  # each group keeps group - n_prune


@pytest.mark.parametrize("shape, axes", [((37, 19), (1,)), ((37, 19), (0,)), ((5, 4, 3, 2), (1, 2, 3)),
                                         ((5, 4, 3, 2), (0, 1, 2)), ((0, 4), (1,)), ((6, 4), None)])
def test_bool_mask_kernels_equal_default(shape, axes):
    """unit_any, and_broadcast and count_true (NumPy views on the CPU) equal the portable definitions, on
    contiguous masks and on a transposed (non-contiguous: the default runs) one."""
    g = torch.Generator().manual_seed(len(shape))
    m = torch.rand(shape, generator=g) < 0.3
    m[:1] = False  # a unit (of the leading axis) with no True
    for mask in (m, m.transpose(0, -1).contiguous().transpose(0, -1)):
        keep = torch.rand(tuple(1 if axes is None or d in axes else s for d, s in enumerate(shape)), generator=g) < 0.5
        with portable():
            any_, anded, counts = (_primitives.unit_any(XP, mask, axes), _primitives.and_broadcast(XP, mask, keep),
                                   _primitives.count_true(XP, [mask, keep]))
        _same(_primitives.unit_any(XP, mask, axes), any_)
        _same(_primitives.and_broadcast(XP, mask, keep), anded)
        for a, b in zip(_primitives.count_true(XP, [mask, keep]), counts):
            _same(a, b)
