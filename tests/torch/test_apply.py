"""gradclip_torch.apply_ against torch's native clipping, and its edge cases."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import gradclip_core as gc
import gradclip_torch

from .util import mlp, set_grads


def _pair(seed=0, scale=10.0, dtype=torch.float32):
    a, b = mlp(seed, dtype), mlp(seed, dtype)
    set_grads(a.parameters(), seed + 1, scale)
    set_grads(b.parameters(), seed + 1, scale)
    return a, b


def _grads(model):
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("max_norm", [0.5, 1e6, 0.0])
@pytest.mark.parametrize("scale", [10.0, 1e-3, 1e30])
def test_torch_semantics_bit_exact(norm_type, foreach, max_norm, scale):
    ours, native = _pair(scale=scale)
    total = torch.nn.utils.clip_grad_norm_(native.parameters(), max_norm, norm_type=norm_type, foreach=foreach)
    rule = gc.clip_by_global_norm(max_norm, ord=norm_type, semantics="torch")
    _, info = gradclip_torch.apply_(ours.parameters(), rule)
    assert torch.equal(info["norm"], total)
    for a, b in zip(_grads(ours), _grads(native)):
        assert torch.equal(a, b)


def test_torch_semantics_bit_exact_many_tensors():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.empty(s)) for s in [(300, 17), (1,), (4096,), (64, 64)] * 40]
    qs = [torch.nn.Parameter(torch.empty(p.shape)) for p in ps]
    for p, q in zip(ps, qs):
        p.grad = torch.randn(p.shape)
        q.grad = p.grad.clone()
    total = torch.nn.utils.clip_grad_norm_(qs, 1.0, foreach=True)
    _, info = gradclip_torch.apply_(ps, gc.clip_by_global_norm(1.0, semantics="torch"))
    assert torch.equal(info["norm"], total)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(ps, qs))


def test_canonical_close_to_native():
    ours, native = _pair()
    torch.nn.utils.clip_grad_norm_(native.parameters(), 1.0)
    _, info = gradclip_torch.apply_(ours.parameters(), gc.clip_by_global_norm(1.0))
    assert float(info["scale"]) < 1
    for a, b in zip(_grads(ours), _grads(native)):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=0)


@pytest.mark.parametrize("foreach", [True, False])
def test_clip_by_value_equals_native(foreach):
    ours, native = _pair()
    torch.nn.utils.clip_grad_value_(native.parameters(), 0.75, foreach=foreach)
    _, info = gradclip_torch.apply_(ours.parameters(), gc.clip_by_value(0.75, info="full"))
    assert 0 < float(info["clipped_fraction"]) < 1
    for a, b in zip(_grads(ours), _grads(native)):
        assert torch.equal(a, b)


def test_updates_grad_tensors_in_place():
    model, _ = _pair()
    before = [p.grad for p in model.parameters()]
    ptrs = [g.data_ptr() for g in before]
    for rule in [gc.clip_by_global_norm(0.1), gc.clip_by_value(0.1), gc.clip_by_norm(0.1, nonfinite="zero")]:
        gradclip_torch.apply_(model.parameters(), rule)
        assert all(p.grad is g for p, g in zip(model.parameters(), before))
        assert [p.grad.data_ptr() for p in model.parameters()] == ptrs


def test_single_tensor_and_generator_inputs():
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    gradclip_torch.apply_(w, gc.clip_by_global_norm(1.0))
    assert torch.allclose(w.grad, torch.tensor([0.6, 0.8]))
    m, _ = _pair()
    state, info = gradclip_torch.apply_((p for p in m.parameters()), gc.clip_by_global_norm(1.0))
    assert state == gc.EmptyState() and set(info) == {"norm", "scale"}


def test_grad_none_is_skipped():
    model, ref = _pair()
    model[0].bias.grad = None
    ref[0].bias.grad = None
    seen = []
    base = gc.clip_by_global_norm(0.5, semantics="torch")

    def update(grads, state, params=None):
        seen.append([tuple(g.shape) for g in grads])
        return base.update(grads, state, params)

    gradclip_torch.apply_(model.parameters(), gc.Rule(update=update, name="spy"))
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    assert seen == [[(7, 5), (3, 7), (3,)]]
    assert model[0].bias.grad is None
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), ref.parameters()) if p.grad is not None)


def test_no_grads_at_all():
    model = mlp()
    state, info = gradclip_torch.apply_(model.parameters(), gc.clip_by_global_norm(1.0))
    assert info == {} and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_grads(dtype):
    model = mlp(dtype=dtype)
    set_grads(model.parameters(), 3, scale=300.0)  # fp16: sum of squares overflows in fp16
    ref = [p.grad.float() for p in model.parameters()]
    _, info = gradclip_torch.apply_(model.parameters(), gc.clip_by_global_norm(1.0))
    assert info["norm"].dtype == torch.float32 and torch.isfinite(info["norm"])
    want_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in ref]))
    torch.testing.assert_close(info["norm"], want_norm, rtol=1e-5, atol=0)
    scale = info["scale"]
    for p, g in zip(model.parameters(), ref):
        assert p.grad.dtype == dtype
        assert torch.equal(p.grad, g.to(dtype) * scale.to(dtype))


def test_mixed_devices_rejected():
    a = torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.ones(2)
    b = torch.nn.Parameter(torch.zeros(2, device="meta"))
    b.grad = torch.ones(2, device="meta")
    with pytest.raises(ValueError, match=r"several devices \(cpu, meta\)"):
        gradclip_torch.apply_([a, b], gc.clip_by_global_norm(1.0))
    assert torch.equal(a.grad, torch.ones(2))


def test_needs_params_gets_the_weights():
    model, ref = _pair()
    rule = gc.adaptive_clip(0.01)  # axis=None: torch's (out, in) layout
    _, info = gradclip_torch.apply_(model.parameters(), rule)
    params = [p.detach() for p in ref.parameters()]
    want, _, _ = rule.update([p.grad for p in ref.parameters()], (), params)
    assert float(info["clipped_fraction"]) > 0
    for p, w in zip(model.parameters(), want):
        assert torch.equal(p.grad, w)


@pytest.mark.parametrize("rule", [
    gc.clip_by_global_norm(1.0, nonfinite="raise"),
    gc.chain(gc.clip_by_global_norm(1.0), gc.clip_by_value(0.1, nonfinite="raise")),
], ids=["global", "chain"])
def test_raise_changes_nothing(rule):
    model, _ = _pair()
    model[2].weight.grad[1, 2] = float("nan")
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError):
        gradclip_torch.apply_(model.parameters(), rule)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.grad, b, ) or (torch.isnan(p.grad) == torch.isnan(b)).all() and torch.equal(
            torch.nan_to_num(p.grad), torch.nan_to_num(b))


def test_skip_zeroes_grads():
    model, _ = _pair()
    model[0].weight.grad[0, 0] = float("inf")
    _, info = gradclip_torch.apply_(model.parameters(), gc.clip_by_global_norm(1.0, nonfinite="skip"))
    assert int(info["skipped"]) == 1
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_bad_arguments():
    with pytest.raises(TypeError, match="gradclip Rule"):
        gradclip_torch.apply_([], lambda g: g)
    bad = gc.Rule(update=lambda g, s, p=None: ([x.double() for x in g], s, {}), name="bad")
    model, _ = _pair()
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="float64"):
        gradclip_torch.apply_(model.parameters(), bad)
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))


def test_project_():
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
    _, info = gradclip_torch.project_([w], gc.clip_by_global_norm(1.0))
    assert info == {} and w.tolist() == [3.0, -4.0]  # clipping rules do not project
    proj = gc.Rule(project=lambda ps, s: ([torch.clamp(p, -1, 1) for p in ps], s, {"n": torch.tensor(1)}), name="box")
    _, info = gradclip_torch.project_([w], proj)
    assert w.tolist() == [1.0, -1.0] and int(info["n"]) == 1


@pytest.mark.parametrize("rule", [
    gc.clip_by_global_norm(0.5, semantics=s, nonfinite=nf)
    for s in ("canonical", "torch", "optax", "keras") for nf in ("propagate", "zero", "skip")
] + [
    gc.clip_by_norm(0.5, semantics=s) for s in ("canonical", "torch", "optax", "keras")
] + [
    gc.chain(gc.clip_by_global_norm(0.5), gc.clip_by_global_norm(0.1, semantics="torch"), gc.clip_by_value(0.01)),
    gc.chain(gc.clip_by_norm(0.5, nonfinite="zero"), gc.clip_by_block_rms(0.1), gc.adaptive_clip(0.01)),
], ids=lambda r: str(r.config)[:60])
def test_inplace_scaling_equals_pure_update(rule):
    """apply_ lets audited core rules scale .grad in place; the result must equal the pure update."""
    model, _ = _pair()
    model[2].weight.grad[0, 1] = float("inf")
    grads = [p.grad.clone() for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    want, _, want_info = rule.update(grads, rule.init(params), params)
    _, info = gradclip_torch.apply_(model.parameters(), rule)
    for p, w in zip(model.parameters(), want):
        assert torch.equal(torch.nan_to_num(p.grad), torch.nan_to_num(w))
        assert torch.equal(torch.isnan(p.grad), torch.isnan(w))
    assert set(info) == set(want_info)


def test_no_grads_then_grads_makes_a_torch_state():
    # Issue 16: a first call without gradients returned a NumPy state (rule.init([])), and
    # the next call raised TypeError in where().
    model = mlp()
    rule = gc.zclip(warmup_steps=2)
    state, info = gradclip_torch.apply_(model.parameters(), rule)
    assert state is None and info == {}
    set_grads(model.parameters(), 0)
    state, info = gradclip_torch.apply_(model.parameters(), rule, state)
    assert isinstance(state.count, torch.Tensor) and int(state.count) == 1
    state, _ = gradclip_torch.apply_(model.parameters(), rule, state)
    assert int(state.count) == 2
    state, _ = gradclip_torch.project_([], gc.magnitude_prune(0.5))
    assert state is None


def test_raise_names_the_parameters():
    # Issue 16: nonfinite="raise" named flat positions; torch knows the parameter names.
    model = mlp()
    set_grads(model.parameters(), 0)
    model[2].bias.grad[1] = float("nan")
    rule = gc.clip_by_global_norm(1.0, nonfinite="raise")
    with pytest.raises(FloatingPointError, match=r"in '2\.bias'; nothing was changed"):
        gradclip_torch.apply_(model.named_parameters(), rule)
    with pytest.raises(FloatingPointError, match=r"in array 3;"):  # plain parameters: positions
        gradclip_torch.apply_(model.parameters(), rule)
    opt = torch.optim.SGD(model.named_parameters(), lr=0.1)
    gradclip_torch.attach(opt, rule)
    with pytest.raises(FloatingPointError, match=r"in '2\.bias'"):
        opt.step()


def test_stateful_rule_without_its_state_warns():
    # Issue 16: apply_(params, zclip()) with the state dropped stayed in warm-up forever, silently.
    model = mlp()
    rule = gc.zclip(warmup_steps=2)
    set_grads(model.parameters(), 0)
    gradclip_torch.apply_(model.parameters(), rule)
    with pytest.warns(UserWarning, match="Pass the returned state back"):
        gradclip_torch.apply_(model.parameters(), rule)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, _ = gradclip_torch.apply_(model.parameters(), gc.zclip(warmup_steps=2))  # a fresh rule
        gradclip_torch.apply_(model.parameters(), gc.zclip(warmup_steps=2), state)
        other = mlp(1)
        set_grads(other.parameters(), 1)
        gradclip_torch.apply_(other.parameters(), rule)  # other parameters: their own first call
        for _ in range(2):  # stateless rules need no state
            gradclip_torch.apply_(model.parameters(), gc.clip_by_global_norm(1.0))


def _complex_pair(dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), (2, 2, 2)]
    a = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in shapes]
    b = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in shapes]
    for p, q in zip(a, b):
        p.grad = torch.randn(p.shape, dtype=dtype, generator=g) * scale
        q.grad = p.grad.clone()
    return a, b


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf])
def test_complex_grads_equal_clip_grad_norm(dtype, norm_type):
    # Issue 16: apply_ failed with linalg.vector_norm's dtype error on complex gradients.
    ours, native = _complex_pair(dtype)
    total = torch.nn.utils.clip_grad_norm_(native, 1.0, norm_type=norm_type)
    _, info = gradclip_torch.apply_(ours, gc.clip_by_global_norm(1.0, ord=norm_type, semantics="torch"))
    assert torch.equal(info["norm"], total) and float(info["scale"]) < 1
    assert all(torch.equal(p.grad, q.grad) and p.grad.dtype == dtype for p, q in zip(ours, native))
    canonical, _ = _complex_pair(dtype)
    gradclip_torch.apply_(canonical, gc.clip_by_global_norm(1.0, ord=norm_type))
    for p, q in zip(canonical, native):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-6, atol=0)


@pytest.mark.parametrize("rule", [
    gc.clip_by_norm(1.0), gc.clip_by_block_rms(0.5), gc.clip_update_rms(0.5), gc.adaptive_clip(0.01),
    gc.autoclip(50.0, 4), gc.zclip(warmup_steps=1, max_norm=1.0), gc.record_norms(2),
], ids=lambda r: r.name)
def test_complex_norm_rules_scale_by_the_modulus(rule):
    # Every norm-based rule on complex gradients: the factors it applies to z are the ones it
    # applies to |z| (real gradients), so the norms are of |z| and the phase is kept.
    ours, _ = _complex_pair(torch.complex64, scale=10.0)
    mods = [torch.nn.Parameter(torch.zeros(p.shape)) for p in ours]
    for p, m in zip(ours, mods):
        m.grad = p.grad.abs()
        p.data, m.data = p.grad.detach().clone() * 0.1, p.grad.abs() * 0.1  # AGC reads the weights: |w| too
    before = [p.grad.clone() for p in ours]
    _, info_c = gradclip_torch.apply_(ours, rule)
    _, info_r = gradclip_torch.apply_(mods, rule)
    assert set(info_c) == set(info_r)
    for k in info_c:
        torch.testing.assert_close(info_c[k], info_r[k], rtol=1e-5, atol=0)
    for z, out, m in zip(before, ours, mods):
        factor = m.grad / z.abs()
        torch.testing.assert_close(out.grad, z * factor, rtol=2e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
def test_complex_refused_by_value_rules_naming_the_parameter():
    lin = torch.nn.Linear(2, 2).to(torch.complex64)
    lin.weight.grad = torch.ones(2, 2, dtype=torch.complex64)
    lin.bias.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"clip_by_value: 'weight' is torch.complex64, but clip_by_value clamps"):
        gradclip_torch.apply_(lin.named_parameters(), gc.clip_by_value(1.0))
    assert torch.equal(lin.weight.grad, torch.ones(2, 2, dtype=torch.complex64))  # nothing changed
    for rule in (gc.non_neg(), gc.soft_threshold(0.1), gc.magnitude_prune(0.5)):
        with pytest.raises(TypeError, match="defined for real arrays only"):
            gradclip_torch.project_(lin.parameters(), rule)
    model = torch.nn.Sequential(lin)
    with pytest.raises(TypeError, match="magnitude_prune: '0.weight' is torch.complex64"):
        gradclip_torch.prune(model, gc.magnitude_prune(0.5))
    assert sorted(model.state_dict()) == ["0.bias", "0.weight"]  # nothing left half-registered
    with pytest.raises(ValueError, match="not pruned"):
        gradclip_torch.masks(model)


# ------------------------------------------------------------------ clip_grad_norm_ drop-in (issue 16)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_drop_in_is_torch_bit_for_bit(norm_type, max_norm):
    ours, native = _pair(scale=10.0)
    total = torch.nn.utils.clip_grad_norm_(native.parameters(), max_norm, norm_type=norm_type)
    got = gradclip_torch.clip_grad_norm_(ours.parameters(), max_norm, norm_type=norm_type, foreach=True)
    assert torch.equal(got, total)
    assert all(torch.equal(a, b) for a, b in zip(_grads(ours), _grads(native)))


def test_clip_grad_norm_drop_in_with_a_rule_and_edge_cases():
    ours, native = _pair(scale=10.0)
    total = torch.nn.utils.clip_grad_norm_(native.parameters(), 1.0)
    got = gradclip_torch.clip_grad_norm_(ours.parameters(), gc.clip_by_global_norm(1.0))  # the canonical formula
    torch.testing.assert_close(got, total, rtol=1e-6, atol=0)
    for a, b in zip(_grads(ours), _grads(native)):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=0)
    chained = gc.chain(gc.clip_by_value(100.0), gc.clip_by_global_norm(1.0))
    assert float(gradclip_torch.clip_grad_norm_(ours.parameters(), chained)) == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(gradclip_torch.clip_grad_norm_(mlp().parameters(), 1.0), torch.nn.utils.clip_grad_norm_(mlp().parameters(), 1.0))
    with pytest.raises(TypeError, match="keeps a state from step to step"):
        gradclip_torch.clip_grad_norm_(ours.parameters(), gc.zclip())
    with pytest.raises(TypeError, match="reports no 'norm'"):
        gradclip_torch.clip_grad_norm_(ours.parameters(), gc.clip_by_value(1.0))
    with pytest.raises(ValueError, match="clip_grad_norm_: ord must be 1, 2 or inf"):
        gradclip_torch.clip_grad_norm_(ours.parameters(), 1.0, norm_type=3.0)


def test_clip_grad_norm_error_if_nonfinite_like_torch_and_names_the_parameter():
    ours, native = _pair(scale=10.0)
    for m in (ours, native):
        m[2].bias.grad[0] = float("inf")
    before = [g.clone() for g in _grads(ours)]
    with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
        torch.nn.utils.clip_grad_norm_(native.parameters(), 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match=r"is non-finite, so it cannot be clipped .*'2\.bias'"):
        gradclip_torch.clip_grad_norm_(ours.named_parameters(), 1.0, error_if_nonfinite=True)
    assert all(torch.equal(a, b) for a, b in zip(_grads(ours), before))  # nothing changed
    got = gradclip_torch.clip_grad_norm_(ours.parameters(), 1.0)  # without the check: torch's result
    assert torch.equal(got, torch.nn.utils.clip_grad_norm_(native.parameters(), 1.0))
