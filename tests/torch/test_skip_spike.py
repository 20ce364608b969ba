"""skip_on_spike in torch: the loss through ``handle.set_loss``, a true skip fused and unfused.

Fused optimizers skip through ``found_inf`` (no host sync); unfused ones through
``sync_skip`` (one host sync: the gradients are hidden from the step). Either way a
skipped step leaves the weights, the optimizer's moments and its step counts exactly as
they were, and the run equals the run without the spike steps.
"""

from __future__ import annotations

import pytest
import torch

import gradclip_core as gc
import gradclip_torch
from gradclip_core.backend import flatten_state

from .util import loss_fn, mlp

STEPS = 12
SPIKES = (6, 9)
OPTIMIZERS = {
    "adamw": lambda ps, fused: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, fused=fused),
    "sgd-momentum": lambda ps, fused: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, weight_decay=0.01, fused=fused),
}


def _snapshot(model, opt):
    weights = [p.detach().clone() for p in model.parameters()]
    state = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in opt.state[p].items()}
             for p in model.parameters()]
    return weights, state


def _same(a, b):
    (wa, sa), (wb, sb) = a, b
    if not all(torch.equal(x, y) for x, y in zip(wa, wb)):
        return False
    for x, y in zip(sa, sb):
        if x.keys() != y.keys():
            return False
        for k in x:
            if isinstance(x[k], torch.Tensor) and not torch.equal(x[k], y[k]):
                return False
    return True


def _run(opt_name, fused, loss=False, drop=(), rule=None):
    model = mlp(0)
    opt = OPTIMIZERS[opt_name](model.parameters(), fused)
    rule = rule or gc.skip_on_spike(window=8, k=10.0, warmup=4, loss=loss)
    handle = gradclip_torch.attach(opt, rule)
    snaps, infos = [], []
    for step in range(STEPS):
        if step in drop:
            continue
        opt.zero_grad()
        value = loss_fn(model, step)
        value.backward()
        if step in SPIKES:
            for p in model.parameters():
                p.grad.mul_(1e3)
        if loss:
            handle.set_loss(value)
        opt.step()
        snaps.append(_snapshot(model, opt))
        infos.append({k: v.clone() for k, v in handle.info.items()})
    return handle, snaps, infos


@pytest.mark.parametrize("loss", [False, True])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_a_skipped_step_changes_nothing(opt_name, fused, loss):
    handle, snaps, infos = _run(opt_name, fused, loss)
    assert handle.fold == fused and handle.sync_skip == (not fused)
    assert [int(i["skipped"]) for i in infos] == [int(s in SPIKES) for s in range(STEPS)]
    for i in SPIKES:
        assert _same(snaps[i - 1], snaps[i]), f"step {i} moved weights or optimizer state"
    if opt_name == "adamw":  # (SGD keeps no step count)
        steps = [int(float(s[1][0]["step"])) for s in snaps]
        assert steps == [s + 1 - sum(x <= s for x in SPIKES) for s in range(STEPS)]
    _, kept, _ = _run(opt_name, fused, loss, drop=SPIKES)
    assert all(_same(a, b) for a, b in zip([s for i, s in enumerate(snaps) if i not in SPIKES], kept))
    if loss:
        assert all(torch.isfinite(i["loss"]) for i in infos)


def test_the_loss_reaches_the_rule_and_is_required():
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    handle = gradclip_torch.attach(opt, gc.skip_on_spike(window=4, k=3.0, warmup=2, loss=True))
    value = loss_fn(model, 0)
    value.backward()
    handle.set_loss(value)
    opt.step()
    assert float(handle.info["loss"]) == pytest.approx(float(value.detach()))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="set_loss"):
        opt.step()  # the loss is used by one step only
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="scalar"):
        handle.set_loss(torch.ones(2))


def test_nonfinite_skip_keeps_zero_gradients_unless_asked():
    model = mlp(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    handle = gradclip_torch.attach(opt, gc.clip_by_global_norm(1.0, nonfinite="skip"))
    assert not handle.sync_skip  # a nonfinite="skip" rule keeps its no-sync zero-gradient skip
    opt2 = torch.optim.Adam(mlp(0).parameters(), lr=1e-2)
    assert gradclip_torch.attach(opt2, gc.clip_by_global_norm(1.0, nonfinite="skip"), sync_skip=True).sync_skip
    with pytest.raises(ValueError, match="sync_skip"):
        gradclip_torch.attach(torch.optim.Adam(mlp(0).parameters()), gc.skip_on_spike(), sync_skip="yes")


def test_state_dict_round_trip_resumes_exactly():
    rule = lambda: gc.skip_on_spike(window=8, k=10.0, warmup=4)  # noqa: E731
    whole, snaps, infos = _run("adamw", False, rule=rule())
    model = mlp(0)
    opt = OPTIMIZERS["adamw"](model.parameters(), False)
    handle = gradclip_torch.attach(opt, rule())
    for step in range(STEPS):
        if step == 7:  # rebuild the handle from a checkpoint of the first 7 steps
            sd = handle.state_dict()
            handle.remove()
            handle = gradclip_torch.attach(opt, rule())
            handle.load_state_dict(sd)
        opt.zero_grad()
        loss_fn(model, step).backward()
        if step in SPIKES:
            for p in model.parameters():
                p.grad.mul_(1e3)
        opt.step()
        assert int(handle.info["skipped"]) == int(step in SPIKES)
    assert _same(_snapshot(model, opt), snaps[-1])
    for a, b in zip(flatten_state(handle.state)[0], flatten_state(whole.state)[0]):
        assert torch.equal(a, b)


def test_apply_takes_the_loss_and_zeroes_a_skipped_step():
    w = torch.nn.Parameter(torch.zeros(2))
    rule = gc.skip_on_spike(window=4, k=3.0, warmup=2, loss=True)
    state = None
    for loss in [1.0, 1.0, 1.0, 9.0]:
        w.grad = torch.tensor([1.0, 1.0])
        state, info = gradclip_torch.apply_([w], rule, state, loss=torch.tensor(loss, requires_grad=True))
    assert int(info["skipped"]) == 1 and float(info["loss"]) == 9.0 and w.grad.tolist() == [0.0, 0.0]
    assert int(state.losses.count) == 3
    with pytest.raises(ValueError, match="pass loss="):
        gradclip_torch.apply_([w], rule, state)


def test_sync_skip_scales_kept_steps_exactly_and_truly_skips_nonfinite_ones():
    """sync_skip=True with a nonfinite="skip" clip: the clipped steps equal the default path bit for bit."""
    runs = {}
    for sync in (False, True):
        model = mlp(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        handle = gradclip_torch.attach(opt, gc.clip_by_global_norm(1.0, nonfinite="skip"), sync_skip=sync)
        snaps = []
        for step in range(4):
            opt.zero_grad()
            loss_fn(model, step).backward()
            if step == 2:
                next(model.parameters()).grad[0, 0] = float("nan")
            opt.step()
            assert int(handle.info["skipped"]) == int(step == 2)
            assert step == 2 or float(handle.info["scale"]) < 1.0  # the kept steps are clipped
            if step == 2:
                assert all(not torch.any(p.grad) for p in model.parameters())  # zeroed, as the rule says
            snaps.append(_snapshot(model, opt))
        runs[sync] = snaps
    assert all(_same(a, b) for a, b in zip(runs[False][:2], runs[True][:2]))
    assert _same(runs[True][1], runs[True][2])  # the NaN step changed nothing with sync_skip
    assert not _same(runs[False][1], runs[False][2])  # without it Adam stepped on zeros


@pytest.mark.parametrize("fused", [False, True], ids=["sync-skip", "fused-found-inf"])
def test_a_skipped_step_does_not_project_or_advance_the_pruning_schedule(fused):
    """As optax wrap: on a skipped step the projection's state (the pruning step count) stays; the schedule is not shifted."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused)
    rule = gc.chain(gc.skip_on_spike(window=8, k=3.0, warmup=3),
                    gc.magnitude_prune(0.5, schedule=gc.polynomial_schedule(0, 6, 2)))
    handle = gradclip_torch.attach(opt, rule)
    counts, skipped = [], []
    for step in range(6):
        opt.zero_grad()
        (model(torch.randn(8, 4)).square().sum() * (1000.0 if step == 4 else 1.0)).backward()
        opt.step()
        counts.append(int(handle.state[1].count))
        skipped.append(int(handle.info["skip_on_spike/skipped"]))
        assert "magnitude_prune/sparsity" in handle.info
    assert skipped == [0, 0, 0, 0, 1, 0]
    assert counts == [1, 2, 3, 4, 4, 5]
