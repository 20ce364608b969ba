"""AdaGC in torch against ``pytorch_optimizer.AdaGC`` (v4.1.0, the ``ref`` extra), and under torch.compile.

pytorch-optimizer builds AdaGC into an Adam step. With ``lr=0`` the weights never move
(every step sees the same raw gradients in both runs) and with ``betas=(0, ...)`` its
first moment after each step is exactly the clipped gradient (``exp_avg.lerp_(g_hat, 1)``),
so the clipped gradients and the per-tensor ``gamma`` can be compared step by step with
``gradclip_torch.attach`` on an SGD(lr=0).

Where the two agree with the paper they are compared as they are; the differences
(recorded in ``gradclip_core.adagc``'s docstring) are mapped: pytorch-optimizer's
``warmup_steps=W + 1`` is the rule's ``warmup_steps=W`` (it clips globally while
``step < warmup_steps``), and its ``eps`` floors are the rule's ``eps=1e-8`` (the paper
has none). Its clipped norm is recomputed from the clipped tensor and its EMA is a
``lerp``: a few float32 ulp, hence the relative tolerance.
"""

from __future__ import annotations

import pytest
import torch

import gradclip_core as gc
import gradclip_torch

from .test_hooks import _DYNAMO_LRU, _compile_case
from .util import loss_fn, mlp

STEPS = 16


def spiky_loss(model, step):
    """The util loss, with a few steps scaled up (everything, then the bias of the last layer only)."""
    loss = loss_fn(model, step) * (40.0 if step in (6, 11) else 1.0)
    if step == 9:
        loss = loss + 50.0 * model[-1].bias.sum()
    return loss


def reference(cfg, warmup_steps, foreach):
    """Clipped gradients and gammas per step of pytorch-optimizer's AdaGC (lr 0, beta1 0)."""
    po = pytest.importorskip(
        "pytorch_optimizer",
        reason="pytorch-optimizer is not installed (pip install -c constraints.txt pytorch-optimizer)",
    )
    model = mlp(0)
    opt = po.AdaGC(model.parameters(), lr=0.0, betas=(0.0, 0.999), weight_decay=0.0, eps=1e-8,
                   warmup_steps=warmup_steps, foreach=foreach, **cfg)
    grads, gammas = [], []
    for step in range(STEPS):
        opt.zero_grad()
        spiky_loss(model, step).backward()
        opt.step()
        params = list(model.parameters())
        grads.append([opt.state[p]["exp_avg"].clone() for p in params])
        gammas.append(torch.stack([opt.state[p]["gamma"].reshape(()) for p in params]))
    return grads, gammas


def ours(rule):
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    handle = gradclip_torch.attach(opt, rule)
    grads, gammas, infos = [], [], []
    for step in range(STEPS):
        opt.zero_grad()
        spiky_loss(model, step).backward()
        opt.step()
        grads.append([p.grad.clone() for p in model.parameters()])
        gammas.append(handle.state.gamma.clone())
        infos.append({k: v.clone() for k, v in handle.info.items()})
    return grads, gammas, infos


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "cfg, warmup",
    [
        (dict(), 3),  # the defaults: the warm-up clips (lambda_abs 1), so does every step after it
        (dict(lambda_abs=1e4), 3),  # a warm-up that does not clip: the relative clip picks the spiking tensors
        (dict(beta=0.9, lambda_rel=1.0, lambda_abs=1e4), 1),
        (dict(beta=0.5, lambda_rel=1.2, lambda_abs=0.5), 5),
    ],
)
def test_matches_pytorch_optimizer(cfg, warmup, foreach):
    want, want_gamma = reference(cfg, warmup + 1, foreach)
    got, got_gamma, infos = ours(gc.adagc(warmup_steps=warmup, eps=1e-8, **cfg))
    for step in range(STEPS):
        for j, (a, b) in enumerate(zip(got[step], want[step])):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7, msg=f"step {step} param {j}")
        torch.testing.assert_close(got_gamma[step], want_gamma[step], rtol=2e-5, atol=1e-7, msg=f"step {step}")
    assert [int(i["warmup"]) for i in infos] == [1] * warmup + [0] * (STEPS - warmup)
    assert sum(int(i["clipped"]) for i in infos[warmup:]) >= 2  # the relative clip acted (per tensor)
    if cfg.get("lambda_abs", 1.0) > 100:
        assert all(int(i["clipped"]) == 0 for i in infos[:warmup])
        assert any(0 < int(i["clipped"]) < 4 for i in infos[warmup:])  # some tensors clipped, not all
    else:
        assert int(infos[0]["clipped"]) == 4  # the global warm-up clip scales every tensor


def test_paper_eps_differs_from_pytorch_optimizer_only_by_eps():
    # eps=0 (the paper) against pytorch-optimizer's eps=1e-8: the factors differ by ~1e-8 relative.
    want, _ = reference(dict(), 4, False)
    got, _, _ = ours(gc.adagc(warmup_steps=3))
    for step in range(STEPS):
        for a, b in zip(got[step], want[step]):
            torch.testing.assert_close(a, b, rtol=3e-5, atol=1e-7)


def test_inplace_per_tensor_scale():
    # The effect is one 0-d factor per tensor, applied in place to the .grad buffers.
    model = mlp(0)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.ones_like(p)
    ptrs = [p.grad.data_ptr() for p in params]
    rule = gc.adagc(warmup_steps=1, lambda_abs=100.0)  # a warm-up that does not clip: gamma = the norms
    state, info = gradclip_torch.apply_(params, rule)
    assert int(info["warmup"]) == 1 and int(info["clipped"]) == 0
    torch.testing.assert_close(state.gamma, torch.tensor([float(p.numel()) ** 0.5 for p in params]))
    for p in params:
        p.grad = torch.ones_like(p)
    params[0].grad.mul_(100.0)  # one tensor spikes after the warm-up
    ptrs = [p.grad.data_ptr() for p in params]
    bound = 1.05 * float(state.gamma[0])
    state, info = gradclip_torch.apply_(params, rule, state)
    assert int(info["clipped"]) == 1 and int(info["warmup"]) == 0
    assert [p.grad.data_ptr() for p in params] == ptrs
    assert float(params[0].grad.norm()) == pytest.approx(bound, rel=1e-6)
    for p in params[1:]:
        assert torch.equal(p.grad, torch.ones_like(p))


@pytest.mark.slow
@_DYNAMO_LRU
def test_compiled_training_step():
    infos = _compile_case(lambda: gc.adagc(warmup_steps=1, lambda_rel=1.0, beta=0.5, nonfinite="skip"), steps=4)
    assert [int(i["warmup"]) for i in infos] == [1, 0, 0, 0]
