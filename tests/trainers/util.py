"""The shared tiny model, data and plain torch loop the trainer tests compare against."""

from __future__ import annotations

import torch

import gradclip_core as gc
import gradclip_torch

LR = 0.1
MOMENTUM = 0.9


def make_net(seed: int = 0) -> torch.nn.Module:
    """A 4 -> 8 -> 2 MLP, the same weights for a given seed."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def batches(n: int = 4, spike: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 8; batch ``spike`` has inputs 30x larger (a gradient spike)."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 4, generator=g) * (30.0 if i == spike else 1.0), torch.randn(8, 2, generator=g))
            for i in range(n)]


def loss_fn(net: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(net(x), y)


def plain_loop(rule: gc.Rule, data: list, seed: int = 0,
               accumulate: int = 1) -> tuple[list[torch.Tensor], gradclip_torch.Handle]:
    """The reference: backward, then ``optimizer.step()`` with the rule attached (SGD with momentum).

    With ``accumulate=k``, each step sums the gradients of ``k`` batches, each loss divided
    by ``k`` (as Lightning's ``accumulate_grad_batches`` and Accelerate scale it).
    """
    net = make_net(seed)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    handle = gradclip_torch.attach(opt, rule)
    for i in range(0, len(data), accumulate):
        opt.zero_grad()
        for batch in data[i:i + accumulate]:
            loss = loss_fn(net, batch)
            if accumulate > 1:
                loss = loss / accumulate
            loss.backward()
        if gc.needs_loss(rule):
            handle.set_loss(loss)
        opt.step()
    return [p.detach().clone() for p in net.parameters()], handle


def rules() -> dict[str, gc.Rule]:
    """One rule of each kind: a global clip, stateful clips, a skip on loss spikes, global pruning."""
    return {
        "global_norm": gc.clip_by_global_norm(0.5),
        "zclip": gc.zclip(warmup_steps=2, z_thresh=1.0),
        "skip_on_spike": gc.skip_on_spike(window=4, warmup=2, k=1.0, loss=True),
        "global_prune": gc.chain(gc.clip_by_global_norm(1.0), gc.global_magnitude_prune(0.5)),
    }


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
