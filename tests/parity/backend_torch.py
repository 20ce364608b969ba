"""Parity backend: the torch integration path, ``gradclip_torch.attach`` on an nn.Module + SGD.

Each case's arrays become the ``nn.Parameter``s of a module; every step the gradients
come from real autograd of ``loss = sum(p * G)`` (so ``p.grad == G`` exactly, NaN and
Inf included), and ``torch.optim.SGD(lr=LR)`` steps with the rule attached as hooks.
"""

from __future__ import annotations

import numpy as np

from .cases import LR, Case
from .reference import Step, masks_of

NAME = "torch"
DTYPES = ("float32", "bfloat16", "float16")


def available() -> bool:
    try:
        import torch  # noqa: F401

        import gradclip_torch  # noqa: F401
    except ImportError:
        return False
    return True


def _to_torch(x: np.ndarray, dtype: str):
    import torch

    t = torch.tensor(np.asarray(x, dtype=np.float32))  # keeps 0-d arrays 0-d
    return t.to({"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype])


def _to_numpy(t, like: np.ndarray) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().astype(like.dtype)


def run(make_rule, case: Case) -> list[Step]:
    import torch

    import gradclip_torch

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ps = torch.nn.ParameterList([torch.nn.Parameter(_to_torch(p, case.dtype)) for p in case.params])

        def forward(self, gs: list) -> torch.Tensor:
            return sum((p * g).sum() for p, g in zip(self.ps, gs))

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    handle = gradclip_torch.attach(opt, make_rule())
    out = []
    for grads in case.grads:
        opt.zero_grad(set_to_none=True)
        model([_to_torch(g, case.dtype) for g in grads]).backward()
        opt.step()
        params = [_to_numpy(p, ref) for p, ref in zip(model.ps, case.params)]
        updates = [_to_numpy(p.grad, ref) for p, ref in zip(model.ps, case.params)]  # clipped by the pre-hook
        out.append(Step(params, {k: float(v) for k, v in handle.info.items()}, updates, masks_of(handle.state)))
    handle.remove()
    return out
