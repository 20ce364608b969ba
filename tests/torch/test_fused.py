"""A global scale folded into a fused optimizer's ``grad_scale``, a skip into ``found_inf``, with and without GradScaler.

That a skip folded into ``found_inf`` is a true skip (weights, moments, step counts) is
part of the contract of every integration path: tests/parity/test_contract.py.
"""

from __future__ import annotations

import pytest
import torch

import gradclip_core as gc
import gradclip_torch
from gradclip_torch._fused import fusable, split_fold

from .util import loss_fn, mlp, train

STEPS = 6
OPTIMIZERS = {
    "adamw": lambda ps, fused: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, fused=fused),
    "adam": lambda ps, fused: torch.optim.Adam(ps, lr=1e-2, fused=fused),
    "sgd": lambda ps, fused: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=fused),
}
FOLDABLE = {
    "global": lambda: gc.clip_by_global_norm(1.0),
    "autoclip": lambda: gc.autoclip(50.0, 4),
    "zclip": lambda: gc.zclip(alpha=0.8, z_thresh=1.0, warmup_steps=2),
    "chain": lambda: gc.chain(gc.record_norms(4), gc.clip_by_global_norm(1.0)),
    "zero-then-scale": lambda: gc.clip_by_global_norm(1.0, nonfinite="zero"),
}


def _train(make_opt, rule, fused, fold="auto", scaler=None, spike_at=None):
    model = mlp(0)
    opt = make_opt(model.parameters(), fused)
    handle = gradclip_torch.attach(opt, rule, fold=fold)
    loss = lambda m, step: loss_fn(m, step) * (float("nan") if step == spike_at else 1.0)  # noqa: E731
    return model, opt, handle, train(model, opt, STEPS, handle, loss, scaler)


def _close(a, b, rtol):
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("rule_name", sorted(FOLDABLE))
def test_folded_scale_equals_the_multiplied_one(opt_name, rule_name):
    """The same fused optimizer with the scale folded (``g / (1/s)`` in the kernel) and multiplied (``g * s``)."""
    make = OPTIMIZERS[opt_name]
    ref, _, ref_handle, ref_info = _train(make, FOLDABLE[rule_name](), fused=True, fold=False)
    got, opt, handle, info = _train(make, FOLDABLE[rule_name](), fused=True)
    assert handle.fold and not ref_handle.fold and fusable(opt)
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")  # removed after each step
    _close(got, ref, rtol=2e-5)  # an ulp or two of the gradient per step, through the optimizer
    for a, b in zip(info, ref_info):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k].float(), b[k].float(), rtol=2e-5, atol=1e-7)
    assert any(float(i.get("scale", i.get("clip_by_global_norm/scale", 1.0))) < 1.0 for i in info)


def test_fold_uses_grad_scale_and_leaves_grads_untouched_until_the_kernel(monkeypatch):
    model = mlp(0)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    seen = {}
    real = torch._fused_adamw_

    def spy(params, grads, *args, **kwargs):
        seen["grad_scale"] = kwargs["grad_scale"]
        seen["grads"] = [g.clone() for g in grads]
        return real(params, grads, *args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adamw_", spy)
    handle = gradclip_torch.attach(opt, gc.clip_by_global_norm(0.5))
    loss_fn(model, 0).backward()
    raw = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(seen["grads"], raw))  # no separate multiply pass
    assert float(seen["grad_scale"]) == pytest.approx(1 / float(handle.info["scale"]), rel=1e-6)
    for p, g in zip(model.parameters(), raw):  # the kernel stores the unscaled (clipped) gradient back
        torch.testing.assert_close(p.grad, g * handle.info["scale"], rtol=2e-7, atol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_the_rule_sees_true_gradients(fused):
    """Fused + GradScaler used to clip the *scaled* gradient (norm x 65536): now both paths agree."""
    plain, _, _, plain_info = _train(OPTIMIZERS["adamw"], gc.clip_by_global_norm(1.0), fused=fused)
    scaled, _, _, info = _train(OPTIMIZERS["adamw"], gc.clip_by_global_norm(1.0), fused=fused,
                                scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    for a, b in zip(info, plain_info):
        torch.testing.assert_close(a["norm"], b["norm"], rtol=1e-6, atol=0)
    _close(scaled, plain, rtol=2e-5)


def test_grad_scaler_skip_keeps_the_rule_state_and_flags_it():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model, opt, handle, infos = _train(OPTIMIZERS["adam"], gc.autoclip(50.0, 8), fused=True, scaler=scaler, spike_at=2)
    assert [int(i.get("skipped", 0)) for i in infos] == [0, 0, 1, 0, 0, 0]
    assert int(handle.state.count) == STEPS - 1  # the NaN norm never entered the history
    assert torch.isfinite(handle.state.norms).all()


def test_fold_false_and_torch_semantics_keep_the_exact_multiply():
    exact, _, _, _ = _train(OPTIMIZERS["adamw"], gc.clip_by_global_norm(1.0), fused=False)
    for rule, fold in ((gc.clip_by_global_norm(1.0), False), (gc.clip_by_global_norm(1.0, semantics="torch"), "auto")):
        model = mlp(0)
        opt = OPTIMIZERS["adamw"](model.parameters(), True)
        handle = gradclip_torch.attach(opt, rule, fold=fold)
        assert not handle.fold
    got, _, _, _ = _train(OPTIMIZERS["adamw"], gc.clip_by_global_norm(1.0), fused=True, fold=False)
    _close(got, exact, rtol=2e-6)  # same multiply; only the fused vs foreach AdamW arithmetic differs


def test_fold_errors_and_split():
    model = mlp(0)
    with pytest.raises(ValueError, match="fold=True needs a fused optimizer"):
        gradclip_torch.attach(torch.optim.AdamW(model.parameters()), gc.clip_by_global_norm(1.0), fold=True)
    with pytest.raises(ValueError, match="fold must be"):
        gradclip_torch.attach(torch.optim.AdamW(model.parameters()), gc.clip_by_global_norm(1.0), fold="yes")
    s = torch.tensor(0.5)
    per_array = gc.Scale((torch.tensor(0.5), torch.tensor(0.25)))
    assert split_fold(per_array) == (per_array, None, None)  # only a global scale folds
    rest, scale, skip = split_fold(gc.Then((gc.ZeroNonfinite(), gc.Scale((s, s)))))
    assert rest == gc.ZeroNonfinite() and scale is s and skip is None
