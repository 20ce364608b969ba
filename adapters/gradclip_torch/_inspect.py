"""The adapter's vocabulary for what a rule did: ``get_info`` and ``masks`` (as in optax and Keras)."""

from __future__ import annotations

from typing import Any

import torch

from gradclip_core.backend import find_masks

from ._hooks import Handle
from ._pruner import _ATTR, Pruner

__all__ = ["get_info", "masks"]


def get_info(obj: Any) -> dict:
    """The last step's info of a rule attached with :func:`gradclip_torch.attach` (or ``Pruner.attach``).

    The same as ``handle.info``: a dict of 0-d tensors (norms, scales, sparsity, ...),
    left on the device (no host sync); empty before the first step. The name is the one
    ``gradclip_optax.get_info(state)`` and ``gradclip_keras.get_info(optimizer)`` use.

    Args:
      obj: a :class:`Handle`.

    Returns:
      The info dict.

    Example:
      >>> import torch
      >>> import gradclip_core as gc
      >>> import gradclip_torch
      >>> w = torch.nn.Parameter(torch.zeros(2))
      >>> opt = torch.optim.SGD([w], lr=1.0)
      >>> handle = gradclip_torch.attach(opt, gc.clip_by_global_norm(1.0))
      >>> w.grad = torch.tensor([3.0, 4.0])
      >>> opt.step()
      >>> float(gradclip_torch.get_info(handle)["norm"])
      5.0
    """
    if isinstance(obj, Handle):
        return dict(obj.info)
    raise TypeError(f"get_info: expected a gradclip_torch Handle (from attach), got {type(obj).__name__}")


def masks(obj: Any) -> Any:
    """The keep-masks (bool, ``True`` = kept) of every pruning rule of ``obj``, ANDed, one per parameter.

    Args:
      obj: a module pruned with :func:`gradclip_torch.prune` (or its :class:`Pruner`):
        returns ``{parameter name: mask}`` for the pruned parameters; or a :class:`Handle`
        from :func:`gradclip_torch.attach`: returns a list, one mask per parameter the rule
        ran on (in the optimizer's order; all True where the rule prunes nothing).

    Example:
      >>> import torch
      >>> import gradclip_core as gc
      >>> import gradclip_torch
      >>> lin = torch.nn.Linear(2, 2)
      >>> with torch.no_grad():
      ...     _ = lin.weight.copy_(torch.tensor([[1.0, -0.1], [0.2, 3.0]]))
      >>> _ = gradclip_torch.prune(lin, gc.magnitude_prune(0.5), ["weight"])
      >>> {k: v.tolist() for k, v in gradclip_torch.masks(lin).items()}
      {'weight': [[True, False], [False, True]]}
    """
    if isinstance(obj, torch.nn.Module):
        if getattr(obj, _ATTR, None) is None:
            raise ValueError("masks: this module was not pruned with gradclip_torch.prune")
        obj = Pruner.from_module(obj)
    if isinstance(obj, Pruner):
        return obj.masks
    if isinstance(obj, Handle):
        params = obj._params
        state = obj.state
        keep = [torch.ones(p.shape, dtype=torch.bool, device=p.device) for p in params]
        if state is not None:
            for ms in find_masks(state, len(params)):
                keep = [a & b for a, b in zip(keep, ms)]
        return keep
    raise TypeError(f"masks: expected a pruned nn.Module, a Pruner or a Handle, got {type(obj).__name__}")
