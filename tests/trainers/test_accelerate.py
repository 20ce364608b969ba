"""Accelerate: ``attach`` on the optimizer ``accelerator.prepare`` returns equals the plain loop.

``AcceleratedOptimizer`` has no step hooks of its own: ``attach`` puts them on the torch
optimizer it wraps, which steps once per synced step. Checked on CPU, one process: the
weights and info equal the plain torch loop (global clip, ZClip, global pruning), and
under ``accelerator.accumulate`` the rule runs once per optimizer step, on the summed
micro-batch gradients.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

import gradclip_core as gc  # noqa: E402
import gradclip_torch  # noqa: E402

from .util import LR, MOMENTUM, assert_same, batches, loss_fn, make_net, plain_loop, rules  # noqa: E402


def _accelerate(rule: gc.Rule, data: list, accumulate: int = 1) -> tuple[list[torch.Tensor], gradclip_torch.Handle]:
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)
    net, opt, loader = accelerator.prepare(net, opt, loader)
    handle = gradclip_torch.attach(opt, rule)
    assert handle.optimizer is opt.optimizer
    for batch in loader:
        with accelerator.accumulate(net):
            loss = loss_fn(net, batch)
            accelerator.backward(loss)
            if gc.needs_loss(rule):
                handle.set_loss(loss)
            opt.step()
            opt.zero_grad()
    return [p.detach().clone() for p in net.parameters()], handle


@pytest.mark.parametrize("name", ["global_norm", "zclip", "global_prune"])
def test_prepared_optimizer_equals_plain_loop(name: str) -> None:
    rule = rules()[name]
    data = batches(4)
    want, want_handle = plain_loop(rule, data)
    got, handle = _accelerate(rule, data)
    assert_same(got, want)
    assert {k: float(v) for k, v in handle.info.items()} == {k: float(v) for k, v in want_handle.info.items()}


def test_accumulation_runs_the_rule_once_per_optimizer_step() -> None:
    rule = gc.chain(gc.record_norms(8), gc.clip_by_global_norm(0.5))
    data = batches(4)
    got, handle = _accelerate(rule, data, accumulate=2)
    assert int(handle.state[0].count) == 2
    want, want_handle = plain_loop(rule, data, accumulate=2)  # the same micro-batches, gradients summed over pairs
    assert_same(got, want)
    want_info = {k: float(v) for k, v in want_handle.info.items()}
    assert want_info and {k: float(v) for k, v in handle.info.items()} == pytest.approx(want_info, rel=1e-6)
