"""attach with ``optimizer.step(closure)``: the rule runs on the gradients the closure makes.

PyTorch Lightning's automatic optimization (precision "32") steps every optimizer with
a closure that runs ``training_step`` and ``backward()`` inside ``step()``, after the
step pre-hook: the rule must see those gradients, not the previous step's.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import gradclip_core as gc  # noqa: E402
import gradclip_torch  # noqa: E402


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=g) * (30.0 if i == 2 else 1.0), torch.randn(16, 2, generator=g))
            for i in range(n)]


def _train(rule: gc.Rule, closure: bool, positional: bool = False) -> tuple[list[torch.Tensor], list[dict]]:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    handle = gradclip_torch.attach(opt, rule)
    infos = []
    for x, y in _batches():
        def step_closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        if closure:
            opt.step(step_closure) if positional else opt.step(closure=step_closure)
        else:
            loss = step_closure()
            if rule.name.startswith("skip_on_spike"):
                handle.set_loss(loss)
            opt.step()
        infos.append({k: float(v) for k, v in handle.info.items()})
    return [p.detach().clone() for p in model.parameters()], infos


@pytest.mark.parametrize("positional", [False, True])
@pytest.mark.parametrize("rule", [gc.clip_by_global_norm(0.5), gc.zclip(warmup_steps=2),
                                  gc.skip_on_spike(window=4, warmup=2, loss=True)], ids=lambda r: r.name)
def test_step_with_closure_equals_backward_then_step(rule: gc.Rule, positional: bool) -> None:
    want_w, want_info = _train(rule, closure=False)
    got_w, got_info = _train(rule, closure=True, positional=positional)
    assert got_info == want_info
    for a, b in zip(got_w, want_w):
        assert torch.equal(a, b)


def test_closure_loss_is_used_and_returned() -> None:
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    handle = gradclip_torch.attach(opt, gc.skip_on_spike(window=4, warmup=2, loss=True))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 2.0
    assert float(handle.info["loss"]) == 2.0


def test_closure_without_loss_raises_for_a_loss_rule() -> None:
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    gradclip_torch.attach(opt, gc.skip_on_spike(window=4, warmup=2, loss=True))

    def closure() -> None:
        (w * w).sum().backward()

    with pytest.raises(RuntimeError, match="set_loss"):
        opt.step(closure)
    assert torch.equal(w.detach(), torch.ones(2))


def test_pruner_masks_the_gradients_the_closure_makes() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = gradclip_torch.prune(model, gc.magnitude_prune(0.5))
    pruner.attach(opt)
    for x, y in _batches(2):
        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    for name, p in model.named_parameters():
        if p.ndim == 2:  # the pruned weights: their gradients (and so the momentum) masked
            assert torch.all(p.grad[p == 0] == 0), name
            assert torch.all(opt.state[p]["momentum_buffer"][p == 0] == 0), name
