"""The post-step seam in torch: the CPU kernels that read ``(w_new, w_old)`` without forming the update,
and ``attach`` keeping no delta buffer for the update rules that use them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradclip_core as gc
import gradclip_core.backend as gcb
import gradclip_torch
from gradclip_core.backend import _primitives
from gradclip_core.backend import _torch as kernels

from .test_kernels import DTYPES, XP, _same, portable


def _pairs(dtype, seed=0, big=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (5,), (0, 3), (40,), (), (9,), (3,)] + ([(big,)] if big else [])
    before = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    after = [(b.float() + 0.05 * torch.randn(b.shape, generator=g)).to(dtype) for b in before]
    after[1][0], after[1][3] = float("nan"), before[1][3]  # a NaN update element; a zero one
    after[5].copy_(before[5])  # an all-zero update
    after[6][0] = float("inf")  # an infinite one: s = 0
    return after, before


@pytest.mark.parametrize("eager", [True, False], ids=["numpy-chunks", "formed-update"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_difference_min_bound_ratio_equals_the_default_bit_for_bit(dtype, eager, loops, monkeypatch):
    """Several chunks (a ragged last one) and shares on two threads: the same bits as the default on ``a - b``."""
    monkeypatch.setattr(kernels, "EAGER_CPU", eager)
    monkeypatch.setattr(kernels, "_HOST_CHUNK", 7)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    after, before = _pairs(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    with portable():
        want = gcb.difference_min_bound_ratio(XP, after, before, 0.1, 1e-3, acc)
        assert [float(w) for w in want] == [float(w) for w in _primitives.min_bound_ratio_default(
            XP, [a - b for a, b in zip(after, before)], before, 0.1, 1e-3, acc)]
    got = gcb.difference_min_bound_ratio(XP, after, before, 0.1, 1e-3, acc)
    for g, w in zip(got, want):
        _same(g, w)
    assert float(got[2]) == 1.0 and float(got[5]) == 1.0 and float(got[6]) == 0.0  # empty; zero update; inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_difference_norms_equal_the_norm_of_the_formed_update(dtype, loops, monkeypatch):
    """The chunked norms (float64 sum of the chunks) agree with float64 arithmetic on the same rounded
    differences, and with ``_foreach_norm`` of the formed update within its float32 rounding."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    after, before = _pairs(dtype, big=600_000)  # > 4 chunks: shared out to two threads
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    got = gcb.difference_norms(XP, after, before, acc)
    deltas = [a - b for a, b in zip(after, before)]
    with portable():
        default = gcb.difference_norms(XP, after, before, acc)
    for g, w, d in zip(got, default, deltas):
        assert g.dtype == w.dtype == acc and g.shape == ()
        exact = float(torch.linalg.vector_norm(d.double()))
        if not np.isfinite(exact):
            assert np.isnan(exact) == bool(g.isnan()) and np.isnan(float(w)) == bool(w.isnan())
            continue
        assert float(g) == pytest.approx(exact, rel=4e-6 if acc == torch.float32 else 1e-12, abs=0)  # (float32 dots)
        assert float(g) == pytest.approx(float(w), rel=1e-4, abs=0)  # (torch sums the squares in float32: the coarser)
    assert float(got[2]) == 0.0 and float(got[5]) == 0.0


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _run(rule, steps=4, patch=None):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    handle = gradclip_torch.attach(opt, rule)
    infos = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        model.zero_grad()
        (model(torch.randn(8, 6) * (10.0 if step == 2 else 1.0)) ** 2).sum().backward()
        opt.step()
        infos.append({k: v.clone() for k, v in handle.info.items()})
    return [p.detach().clone() for p in model.parameters()], infos, handle


@pytest.mark.parametrize("rule", [lambda: gc.clippy(0.02, 1e-3), lambda: gc.update_ratio(per_array=True),
                                  lambda: gc.clip_update_norm(0.5, history=2, min_history=1),
                                  lambda: gc.chain(gc.update_ratio(), gc.clippy(0.02, 1e-3))],
                         ids=["clippy", "update_ratio", "clip_update_norm", "chain"])
def test_attach_keeps_no_delta_buffer_and_matches_the_delta_path(rule, monkeypatch):
    from gradclip_torch import _apply

    weights, infos, handle = _run(rule())
    assert set(handle._scratch) == {"snapshot"}  # the update was never formed in a kept buffer
    monkeypatch.setattr(_apply, "_eager_cpu", lambda views, before: False)  # the delta path (devices, compile)
    for on_host in (True, False):  # its CPU write-back, and its device write-back
        monkeypatch.setattr(_apply, "_on_host", lambda views, factors, on_host=on_host: on_host)
        ref_weights, ref_infos, ref_handle = _run(rule())
        assert "delta" in ref_handle._scratch
        exact = "clip_update_norm" not in rule().config["rule"] and not any("norm" in k for k in ref_infos[0])
        for a, b in zip(weights, ref_weights):
            if exact:  # Clippy: a minimum of the same per-element ratios, the same write-back ops: the same bits
                assert torch.equal(a, b)
            else:  # norms summed in another order (the update's norm: an ulp of float32 rounding, which four
                # SGD steps through the model amplify to ~1e-6 on some CPUs; a wrong clip differs by ~1e-2)
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for got, want in zip(infos, ref_infos):
            assert sorted(got) == sorted(want)
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=0 if exact else 2e-5, atol=0)
    assert any(float(i.get("min_scale", i.get("clippy/min_scale", 1.0))) < 1 or int(i.get("clipped", 0))
               for i in infos) or "update_ratio" in rule().config["rule"]


def test_a_non_finite_policy_keeps_the_delta_path_and_restores_the_weights():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt, gc.clippy(0.02, 1e-3, nonfinite="skip"))
    model.zero_grad()
    (model(torch.randn(4, 6)) ** 2).sum().backward()
    model[0].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert int(handle.info["skipped"]) == 1 and "delta" in handle._scratch
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
