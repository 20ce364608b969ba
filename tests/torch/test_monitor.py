"""Telemetry in torch: gc.monitor / gc.update_ratio through attach and apply_, keyed by parameter names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradclip_core as gc
import gradclip_torch


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def _backward(model, step, scale):
    torch.manual_seed(1000 + step)
    model.zero_grad(set_to_none=True)
    (model(torch.randn(8, 4) * scale) ** 2).sum().backward()


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "adamw-fused"])
def test_attach_reports_named_norms_and_clips_as_the_rule_alone(fused):
    """handle.info: norm/<parameter name> before the clip, post_norm after; the weights equal clip_grad_norm_ + step."""
    model, twin = _model(), _model()
    opt = torch.optim.AdamW(model.named_parameters(), lr=0.05, fused=fused)  # named: info keys by name
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=0.05, fused=fused)
    handle = gradclip_torch.attach(opt, gc.monitor(gc.clip_by_global_norm(1.0, semantics="torch"), decay=0.5))
    names = [n for n, _ in model.named_parameters()]
    rate = weight = 0.0
    for step, scale in enumerate([3.0, 0.01, 5.0]):
        _backward(model, step, scale)
        _backward(twin, step, scale)
        pre = {n: float(torch.linalg.vector_norm(p.grad)) for n, p in model.named_parameters()}
        total = float(torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0))
        opt.step()
        twin_opt.step()
        info = {k: float(v) for k, v in handle.info.items()}
        for n in names:
            np.testing.assert_allclose(info[f"norm/{n}"], pre[n], rtol=1e-6)
        np.testing.assert_allclose(info["norm"], total, rtol=1e-6)
        clipped = float(total > 1.0)
        assert info["clipped"] == clipped
        np.testing.assert_allclose(info["post_norm"], min(total, 1.0), rtol=1e-5)
        rate, weight = 0.5 * rate + 0.5 * clipped, 0.5 * weight + 0.5
        np.testing.assert_allclose(info["clip_rate"], rate / weight, rtol=1e-6)
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert isinstance(handle.info["norm"], torch.Tensor)  # on device, no host sync by the rule


def test_apply_names_and_state_dict_round_trip():
    model = _model()
    rule = gc.monitor(gc.clip_by_norm(0.1))
    _backward(model, 0, 3.0)
    state, info = gradclip_torch.apply_(model.parameters(), rule)
    assert "norm/0.weight" not in info  # apply_ on a bare iterable knows no names: positions
    _backward(model, 1, 3.0)
    state, info = gradclip_torch.apply_(model.named_parameters(), rule, state)
    assert {"norm/0.weight", "norm/2.bias", "clip_by_norm/clipped_fraction"} <= set(info)
    assert int(state.count) == 2 and 0 < float(info["clip_rate"]) <= 1


def test_update_ratio_through_attach():
    model = _model()
    opt = torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    handle = gradclip_torch.attach(opt, gc.update_ratio(per_array=True))
    for step in range(3):
        _backward(model, step, 1.0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
        u = float(torch.sqrt(sum((d.double() ** 2).sum() for d in delta.values())))
        w = float(torch.sqrt(sum((b.double() ** 2).sum() for b in before.values())))
        np.testing.assert_allclose(float(handle.info["ratio"]), u / w, rtol=1e-5)
        for n in before:
            want = float(torch.linalg.vector_norm(delta[n]) / torch.linalg.vector_norm(before[n]))
            np.testing.assert_allclose(float(handle.info[f"ratio/{n}"]), want, rtol=1e-4)
