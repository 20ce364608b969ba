"""Helpers for the torch adapter tests: models, a stateful test rule, grad setting."""

from __future__ import annotations

from typing import NamedTuple

import torch

import gradclip_core as gc


def mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 5, generator=g) * 3
    y = torch.randn(8, 3, generator=g)
    return x.to(dtype), y.to(dtype)


def loss_fn(model: torch.nn.Module, step: int) -> torch.Tensor:
    x, y = batch(step, next(model.parameters()).dtype)
    return ((model(x) - y) ** 2).sum() * 10


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
