"""gradclip_torch: run any gradclip rule in PyTorch.

Two ways to apply a rule (``import gradclip_core as gc``):

- functional, after ``backward()`` and before ``optimizer.step()``::

      state, info = gradclip_torch.apply_(model.parameters(), gc.clip_by_global_norm(1.0), state)

  updates ``.grad`` in place (parameters whose ``grad`` is ``None`` are skipped, as torch
  does) and returns the rule state and a dict of 0-d tensors for logging;
  :func:`project_` is the same for the weights (constraints, pruning);
  :func:`clip_grad_norm_` is a drop-in for ``torch.nn.utils.clip_grad_norm_`` (returns
  the total norm; a number gives torch's formula bit for bit, a rule its own);
- hooks, once::

      handle = gradclip_torch.attach(optimizer, gc.clip_by_global_norm(1.0))

  runs ``rule.update`` on the gradients before every ``optimizer.step()`` and
  ``rule.project`` on the weights after it; ``handle.info`` is the last info,
  ``handle.state_dict()`` / ``handle.load_state_dict()`` checkpoint the rule state,
  ``handle.remove()`` detaches it.

Rules declare their effect (a global scale, per-array or per-unit scales, a mask, a
clamp); it is computed first and then applied to the ``.grad`` buffers (or weights) in
place with torch's ``_foreach_*`` kernels (the core loads them on the first torch
tensor). Everything is branch-free and free of host syncs (except
``nonfinite="raise"``), so it runs under ``torch.compile``, on CPU and CUDA, with
float32/bfloat16/float16 gradients (norms accumulate in float32).

Trainers: :class:`LightningCallback` (PyTorch Lightning) and :class:`TransformersCallback`
(Hugging Face ``Trainer``) attach a rule inside ``fit`` / ``train``; with Accelerate,
``attach`` the optimizer ``accelerator.prepare`` returns (the hooks go on the one it wraps).

The same vocabulary as ``gradclip_optax`` and ``gradclip_keras``: :func:`get_info` (last
info), :func:`masks`, :func:`strip`, :func:`clip_per_example`.

AMP (``torch.amp.GradScaler``): with :func:`attach` nothing changes, ``scaler.step``
unscales before ``optimizer.step()`` runs the hook and skips both on inf/NaN. With
:func:`apply_` call ``scaler.unscale_(optimizer)`` first::

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)          # the rule must see unscaled gradients
    state, info = gradclip_torch.apply_(model.parameters(), rule, state)
    scaler.step(optimizer)              # skipped on inf/NaN (the rule already ran)
    scaler.update()

``semantics="torch"`` global-norm clipping gives bit for bit the result of
``torch.nn.utils.clip_grad_norm_`` (float32, same kernels and operation order).

Example:
  >>> import torch
  >>> import gradclip_core as gc
  >>> import gradclip_torch
  >>> model = torch.nn.Linear(3, 2)
  >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
  >>> handle = gradclip_torch.attach(opt, gc.clip_by_global_norm(0.5))
  >>> (model(torch.ones(8, 3)) * 100).sum().backward()
  >>> opt.step()
  >>> bool(handle.info["scale"] < 1)
  True
"""

from gradclip_core.backend import ensure_kernels

# The core loads its torch kernels on the first torch tensor it sees; loading them now
# (torch is imported anyway) keeps that import out of a step torch.compile may be tracing
# (an import there is a graph break that makes dynamo run the whole optimizer step eagerly).
ensure_kernels("array_api_compat.torch")

from ._apply import apply_, clip_grad_norm_, project_  # noqa: E402
from ._calibrate import activation_norms  # noqa: E402
from ._distributed import Parallel  # noqa: E402
from ._hooks import Handle, attach  # noqa: E402
from ._inspect import get_info, masks  # noqa: E402
from ._per_example import clip_per_example  # noqa: E402
from ._pruner import Pruner, prune, strip  # noqa: E402

__version__ = "0.2.0"

__all__ = ["apply_", "clip_grad_norm_", "project_", "attach", "Handle", "Parallel", "get_info", "prune", "strip", "masks", "Pruner", "clip_per_example",
           "activation_norms", "LightningCallback", "TransformersCallback"]

# The trainer integrations import their trainer: loaded on first use only (gradclip_torch
# imports without Lightning / transformers installed).
_LAZY = {"LightningCallback": "._lightning", "TransformersCallback": "._transformers"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
