"""``activation_norms``: Wanda's input-channel norms ``||X_j||_2``, collected with forward hooks.

For :func:`gradclip_core.wanda_prune` (Sun et al. 2023): run calibration batches
through the model; every ``nn.Linear`` (input ``(..., in)``) and ``nn.Conv1d/2d/3d``
(input ``(N, C, ...)``) adds the squares of its inputs per input channel (float32, the
core's :func:`gradclip_core.activation_sumsq`); the norms are the square roots. The
result is keyed by the weight's parameter name, the names ``gradclip_torch.prune`` and
``attach`` give the rule, so it goes straight into ``act_norms=`` (torch weights are
``(out, in, ...)``: the input-channel axis is 1, ``axis=None`` in torch).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

import gradclip_core as gc
from gradclip_core.backend import namespace

__all__ = ["activation_norms"]

_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def activation_norms(model: torch.nn.Module, batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """``{"<module>.weight": ||X_j||_2 per input channel}`` of every Linear / Conv layer over ``batches``.

    Args:
      model: the module; it runs in ``torch.no_grad()`` (its train/eval mode as it is).
      batches: calibration inputs: each a tensor (``model(batch)``), a tuple
        (``model(*batch)``) or a dict (``model(**batch)``).

    Returns:
      float32 tensors of length ``in_features`` / ``in_channels``, on the layers' devices.

    Example:
      >>> import torch
      >>> import gradclip_core as gc
      >>> import gradclip_torch
      >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
      >>> norms = gradclip_torch.activation_norms(model, [torch.tensor([[3.0, 0.0, 1.0]]), torch.tensor([[4.0, 0.0, 0.0]])])
      >>> norms["0.weight"].tolist()
      [5.0, 0.0, 1.0]
      >>> pruner = gradclip_torch.prune(model, gc.wanda_prune(0.5, act_norms=norms))
    """
    sums: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str, axis: int) -> Any:
        def fn(module: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach()
            s = gc.activation_sumsq(namespace(x), x, axis)
            sums[name] = s if name not in sums else sums[name] + s

        return fn

    for mod_name, mod in model.named_modules():
        if isinstance(mod, _LAYERS) and getattr(mod, "weight", None) is not None:
            name = f"{mod_name}.weight" if mod_name else "weight"
            handles.append(mod.register_forward_pre_hook(hook(name, -1 if isinstance(mod, torch.nn.Linear) else 1)))
    try:
        with torch.no_grad():
            for batch in batches:
                if isinstance(batch, dict):
                    model(**batch)
                elif isinstance(batch, (tuple, list)):
                    model(*batch)
                else:
                    model(batch)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.sqrt(v) for k, v in sums.items()}
