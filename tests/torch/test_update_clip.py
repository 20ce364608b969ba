"""Update clipping in torch: ``attach`` runs ``rule.on_update`` rules after ``step()`` on ``w_new - w_old``.

References: Clippy's ``shrink_by_references`` and Levanter's clip (tests/core/test_update_clip.py)
applied to the update of the same optimizer without the rule. Checkpoint/resume: tests/parity.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import gradclip_core as gc
import gradclip_torch

from ..core.test_update_clip import LevanterRef, shrink_by_references


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def _backward(model, step, scale=1.0):
    torch.manual_seed(1000 + step)
    x = torch.randn(8, 4) * scale
    model.zero_grad(set_to_none=True)
    (model(x) ** 2).sum().backward()


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.Adam(ps, lr=0.05),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: torch.optim.AdamW(ps, lr=0.05, fused=True),
], ids=["adam", "momentum", "adamw-fused"])
def test_attach_clippy_equals_the_reference_on_the_optimizers_own_update(make_opt):
    model, twin = _model(), _model()
    opt, twin_opt = make_opt(model.parameters()), make_opt(twin.parameters())
    handle = gradclip_torch.attach(opt, gc.clippy(0.02, 1e-3))
    clipped = 0
    for step in range(4):
        _backward(model, step, 3.0)
        with torch.no_grad():  # the twin: the same optimizer and state, from this model's weights
            for p, q in zip(model.parameters(), twin.parameters()):
                q.copy_(p)
                q.grad = p.grad.clone()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        twin_opt.step()
        assert handle._before is None  # the snapshot is dropped after the step
        for p, q, b in zip(model.parameters(), twin.parameters(), before):
            delta = (q.detach() - b).numpy()
            want, scale = shrink_by_references(delta, b.numpy(), 0.02, 1e-3)
            expected = q.detach().numpy() if scale == 1 else (b.numpy() + want)
            np.testing.assert_allclose(p.detach().numpy(), expected, rtol=0, atol=2e-7 * max(1.0, float(np.abs(expected).max())))
            if scale == 1:
                assert torch.equal(p.detach(), q.detach())  # unclipped arrays: the optimizer's weights, bit for bit
            clipped += scale < 1
        assert set(handle.info) == {"min_scale", "clipped_fraction"}
    assert clipped > 0


def test_attach_clip_update_norm_is_levanter_and_unclipped_steps_are_untouched():
    model, twin = _model(), _model()
    opt, twin_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt, gc.clip_update_norm(1.0, history=4))
    ref = LevanterRef(4, 1.0)
    scales = [1.0, 1.1, 0.9, 10.0, 1.0]
    for step, s in enumerate(scales):
        _backward(model, step, s)
        before = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for p, q in zip(model.parameters(), twin.parameters()):
                q.copy_(p)
                q.grad = p.grad.clone()
        opt.step()
        twin_opt.step()
        deltas = [(q.detach() - b).numpy() for q, b in zip(twin.parameters(), before)]
        want, scale, norm, bound = ref.update(deltas)
        assert float(handle.info["norm"]) == pytest.approx(float(norm), rel=1e-6)
        assert int(handle.info["clipped"]) == int(scale < 1)
        for p, q, b, w in zip(model.parameters(), twin.parameters(), before, want):
            if scale == 1:
                assert torch.equal(p.detach(), q.detach())
            else:
                np.testing.assert_allclose(p.detach().numpy(), b.numpy() + w, rtol=1e-6, atol=1e-7)
    assert int(handle.state.count) == 4


def test_update_rules_are_refused_where_there_is_no_step():
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="optimizer's update.*attach"):
        gradclip_torch.apply_([p], gc.clippy())
    with pytest.raises(ValueError, match="clip_grad_norm_: clip_update_norm clips the optimizer's update"):
        gradclip_torch.clip_grad_norm_([p], gc.clip_update_norm())
    with pytest.raises(ValueError, match="fold=True"):
        gradclip_torch.attach(torch.optim.SGD([p], lr=0.1), gc.clippy(), fold=True)


def test_a_gradient_rule_and_an_update_rule_attach_side_by_side_without_a_warning():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads = gradclip_torch.attach(opt, gc.clip_by_global_norm(0.5))
        updates = gradclip_torch.attach(opt, gc.clippy(0.01, 0.0))
    _backward(model, 0, 3.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert float(grads.info["scale"]) < 1 and float(updates.info["min_scale"]) < 1
    for p, b in zip(model.parameters(), before):  # Clippy's bound holds on the final weights
        assert torch.all((p.detach() - b).abs() <= 0.01 * b.abs() * (1 + 1e-5) + 1e-7)


def test_a_rule_that_raises_after_the_step_leaves_the_weights_as_before_it():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gradclip_torch.attach(opt, gc.clippy(nonfinite="raise"))
    _backward(model, 0)
    next(model.parameters()).grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize("rule", [lambda: gc.clippy(0.02, 1e-3), lambda: gc.clip_update_norm(0.5, history=2, min_history=1)],
                         ids=["clippy", "clip_update_norm"])
def test_the_cpu_write_back_equals_the_device_path_bit_for_bit(rule, monkeypatch):
    from gradclip_torch import _apply

    def run(on_host):
        monkeypatch.setattr(_apply, "_on_host", lambda views, factors: on_host)
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
        handle = gradclip_torch.attach(opt, rule())
        changed = 0
        for step, scale in enumerate([1.0, 1.0, 10.0, 1.0]):
            _backward(model, step, scale)
            opt.step()
            info = handle.info
            changed += float(info["min_scale"]) < 1 if "min_scale" in info else int(info["clipped"])
        return [p.detach().clone() for p in model.parameters()], changed

    host, n_host = run(True)
    device, n_device = run(False)
    assert n_host == n_device > 0  # some steps were clipped (written back), others not
    for a, b in zip(host, device):
        assert torch.equal(a, b)


def test_the_snapshot_and_delta_buffers_are_reused_and_refit_when_the_stepped_set_changes():
    model, twin = _model(), _model()
    opt, twin_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt, gc.clippy(0.02, 1e-3, nonfinite="skip"))
    ptrs = []
    for step, (drop, nan) in enumerate([(False, False), (False, False), (False, True), (True, False), (False, False)]):
        _backward(model, step, 3.0)
        if drop:  # a parameter without a gradient this step: the stepped set (and the buffers' shapes) change
            model[2].bias.grad = None
        if nan:
            model[0].weight.grad[0, 0] = float("nan")
        with torch.no_grad():
            for p, q in zip(model.parameters(), twin.parameters()):
                q.copy_(p)
                q.grad = None if p.grad is None else p.grad.clone()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        twin_opt.step()
        ptrs.append([b.data_ptr() for b in handle._scratch["snapshot"]] + [d.data_ptr() for d in handle._scratch["delta"]])
        if nan:  # skipped: every weight as before the step, bit for bit
            assert int(handle.info["skipped"]) == 1
            for p, b in zip(model.parameters(), before):
                assert torch.equal(p.detach(), b)
            continue
        for p, q, b in zip(model.parameters(), twin.parameters(), before):
            want, scale = shrink_by_references((q.detach() - b).numpy(), b.numpy(), 0.02, 1e-3)
            expected = q.detach().numpy() if scale == 1 else b.numpy() + want
            np.testing.assert_allclose(p.detach().numpy(), expected, rtol=0, atol=2e-7 * max(1.0, float(np.abs(expected).max())))
    assert ptrs[0] == ptrs[1] == ptrs[2]  # allocated once, then reused
    assert len(ptrs[3]) < len(ptrs[0]) and len(ptrs[4]) == len(ptrs[0])  # refitted to the stepped set, both ways
    handle.remove()
    assert handle._scratch == {}
