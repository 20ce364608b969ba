"""Parity backend: the torch integration path, ``gradclip_torch.attach`` on an nn.Module + an optimizer.

Each case's arrays become the ``nn.Parameter``s of a module; every step the gradients
come from real autograd of ``loss = sum(p * G)`` (so ``p.grad == G`` exactly, NaN and
Inf included), and the optimizer steps with the rule attached as hooks.

Resume: ``model.state_dict()``, ``optimizer.state_dict()`` and ``Handle.state_dict()``
go through ``torch.save`` / ``torch.load(weights_only=True)``; a new module (zeros),
optimizer and handle load them and train on.

``nonfinite="skip"`` (:data:`OPTIMIZERS` says which skip each optimizer gives): the
hooks cannot cancel ``optimizer.step()`` without a host sync, so an unfused optimizer
steps on the rule's all-zero gradients: with plain SGD the weights stay exactly as they
were (a true skip), with momentum or Adam they still move ("zero", documented in
``gradclip_torch.attach``). A fused optimizer takes the skip as ``found_inf``: a true skip
(weights, moments and step counts unchanged), no host sync.
"""

from __future__ import annotations

import io

import numpy as np

from .cases import LR, Case
from .reference import Step, leaves_of, masks_of, skipped

NAME = "torch"
DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = {"sgd": "true", "momentum": "zero", "adam": "zero",
              "momentum-fused": "true", "adam-fused": "true", "adamw-fused": "true"}
REQUIRES = ("torch", "gradclip_torch")


def _optimizer(name: str, params):
    import torch

    return {
        "sgd": lambda: torch.optim.SGD(params, lr=LR),
        "momentum": lambda: torch.optim.SGD(params, lr=LR, momentum=0.5),
        "adam": lambda: torch.optim.Adam(params, lr=1e-2),
        "momentum-fused": lambda: torch.optim.SGD(params, lr=LR, momentum=0.5, fused=True),
        "adam-fused": lambda: torch.optim.Adam(params, lr=1e-2, fused=True),
        "adamw-fused": lambda: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2, fused=True),
    }[name]()


def _to_torch(x: np.ndarray, dtype: str):
    import torch

    t = torch.tensor(np.asarray(x, dtype=np.float32))  # keeps 0-d arrays 0-d
    return t.to({"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype])


def _to_numpy(t, like: np.ndarray) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().astype(like.dtype)


def _model(params: list, dtype: str):
    import torch

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ps = torch.nn.ParameterList([torch.nn.Parameter(_to_torch(p, dtype)) for p in params])

        def forward(self, gs: list) -> torch.Tensor:
            return sum((p * g).sum() for p, g in zip(self.ps, gs))

    return Model()


def _build(make_rule, case: Case, optimizer: str, params=None):
    import gradclip_torch

    model = _model(case.params if params is None else params, case.dtype)
    opt = _optimizer(optimizer, model.parameters())
    return model, opt, gradclip_torch.attach(opt, make_rule())


def _resume(model, opt, handle, make_rule, case: Case, optimizer: str):
    """Checkpoint through torch.save / torch.load(weights_only=True); everything new from it."""
    import torch

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rule": handle.state_dict()}, buf)
    handle.remove()
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, opt, handle = _build(make_rule, case, optimizer, params=[np.zeros_like(p) for p in case.params])
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    handle.load_state_dict(ckpt["rule"])
    return model, opt, handle


def _opt_state(model, opt) -> list:
    return [v.detach().float().numpy().copy() for p in model.ps for _, v in sorted(opt.state.get(p, {}).items())
            if hasattr(v, "detach")]


def run(make_rule, case: Case, optimizer: str = "sgd", resume_at: int | None = None) -> list[Step]:
    model, opt, handle = _build(make_rule, case, optimizer)
    out = []
    for i, grads in enumerate(case.grads):
        if i == resume_at:
            model, opt, handle = _resume(model, opt, handle, make_rule, case, optimizer)
        opt.zero_grad(set_to_none=True)
        model([_to_torch(g, case.dtype) for g in grads]).backward()
        opt.step()
        params = [_to_numpy(p, ref) for p, ref in zip(model.ps, case.params)]
        info = {k: float(v) for k, v in handle.info.items()}
        # clipped by the pre-hook; a fused optimizer skips in found_inf and never reads the gradients
        # update clipping (rule.on_update) acts on the weights after the step: no gradient shows it
        updates = None if (handle.fold and skipped(info)) or handle.rule.on_update else [_to_numpy(p.grad, ref) for p, ref in zip(model.ps, case.params)]
        out.append(Step(params, info, updates, masks_of(handle.state), leaves_of(handle.state), _opt_state(model, opt)))
    handle.remove()
    return out
