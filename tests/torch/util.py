"""Helpers for the torch adapter tests: the shared models and batches (tests/fixtures.py) as torch, a stateful test rule."""

from __future__ import annotations

from typing import NamedTuple

import torch

import gradclip_core as gc

from .. import fixtures


def mlp(seed: int = 0, dtype: torch.dtype = torch.float32, sizes=(5, 7, 3)) -> torch.nn.Sequential:
    """Linear layers with tanh between them, weights from ``fixtures.mlp_weights``."""
    layers: list = []
    for d_in, d_out in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(d_in, d_out), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for p, w in zip(model.parameters(), fixtures.mlp_weights(seed, sizes)):
            p.copy_(torch.from_numpy(w))
    return model.to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float32, n: int = 8, sizes=(5, 3), x_scale=3.0, y_scale=1.0) -> tuple:
    """The batch of a training step (``fixtures.regression`` seeded by the step)."""
    x, y = fixtures.regression(1000 + step, n, sizes[0], sizes[-1], x_scale, y_scale)
    return torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)


def loss_fn(model: torch.nn.Module, step: int) -> torch.Tensor:
    x, y = batch(step, next(model.parameters()).dtype)
    return ((model(x) - y) ** 2).sum() * 10


def train(model, opt, steps: int, handle=None, loss=loss_fn, scaler=None) -> list[dict]:
    """``steps`` steps of ``opt`` on ``loss`` (through a GradScaler if given); the handle's info after each."""
    infos = []
    for step in range(steps):
        opt.zero_grad()
        value = loss(model, step)
        if scaler is None:
            value.backward()
            opt.step()
        else:
            scaler.scale(value).backward()
            scaler.step(opt)
            scaler.update()
        if handle is not None:
            infos.append({k: v.clone() for k, v in handle.info.items()})
    return infos


def set_grads(params, seed: int, scale: float = 10.0, dtype=None) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * scale).to(dtype or p.dtype)


class EmaState(NamedTuple):
    count: torch.Tensor  # int32
    ema: torch.Tensor  # float32


def ema_clip(decay: float = 0.5) -> gc.Rule:
    """A stateful test rule: clip the global norm to 2x its running average (like AutoClip/ZClip)."""

    def init(params):
        like = params[0] if params else torch.zeros(())
        return EmaState(torch.zeros((), dtype=torch.int32, device=like.device),
                        torch.zeros((), dtype=torch.float32, device=like.device))

    def update(grads, state, params=None):
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        first = state.count == 0
        ema = torch.where(first, norm, decay * state.ema + (1 - decay) * norm)
        bound = 2 * torch.where(first, norm, state.ema)
        scale = torch.clamp(bound / torch.clamp(norm, min=1e-12), max=1.0)
        out = [g * scale.to(g.dtype) for g in grads]
        return out, EmaState(state.count + 1, ema), {"norm": norm, "scale": scale}

    return gc.Rule(init=init, update=update, name="ema_clip")
