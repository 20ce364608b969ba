"""Per-example (DP-SGD) clipping in torch: per-example gradients with ``torch.func``, the core's clip."""

from __future__ import annotations

from typing import Any, Callable

import torch

import gradclip_core as gc

__all__ = ["clip_per_example"]


def _as_tuple(x: Any) -> tuple:
    if x is None:
        return ()
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def clip_per_example(
    model: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: Any,
    targets: Any,
    max_norm: Any,
    *,
    generator: torch.Generator | None = None,
    randomness: str = "different",
    **options: Any,
) -> tuple[torch.Tensor, dict]:
    """DP-SGD gradients: per-example gradients, each clipped to ``max_norm``, summed, noised, averaged.

    Per-example gradients come from ``torch.func.vmap(torch.func.grad(...))`` over
    ``torch.func.functional_call(model, ...)``, each example run as a batch of one; then
    :func:`gradclip_core.clip_per_example` clips, sums, adds noise and divides (it
    defines the convention and checks the arguments: noise std
    ``noise_multiplier * max_norm`` on the *sum*, then ``/ batch_size``, as Opacus). The
    result is written to ``p.grad`` of every parameter with ``requires_grad``
    (replacing what was there); then call ``optimizer.step()``. No ``backward()`` is needed.

    The noise: ``generator=`` draws it with ``torch.randn`` (pass a seeded
    ``torch.Generator``; it advances every call), ``seed=``/``counter=`` use the core's
    counter-based generator (identical noise in every framework; change ``counter``
    every step). For a formal DP guarantee use a secure generator (see
    :mod:`gradclip_core.clip._noise`).

    Args:
      model: the module; its buffers are used as they are (no batch-norm statistics
        update: per-example training needs layers without cross-example state).
      loss_fn: ``loss_fn(outputs, *targets) -> scalar`` for a batch of one, e.g.
        ``torch.nn.functional.cross_entropy``.
      inputs: a tensor (or tuple of tensors) with a leading batch axis: ``model(*inputs)``.
      targets: a tensor (or tuple, or ``None``) with the same leading batch axis.
      max_norm: the clip norm ``C`` of each example's gradient (global over all parameters).
      generator: a ``torch.Generator`` for ``torch.randn`` noise (instead of ``seed``).
      randomness: ``torch.func.vmap``'s ``randomness`` (``"different"``: dropout
        draws differently per example).
      **options: the keyword arguments of :func:`gradclip_core.clip_per_example`
        (``noise_multiplier``, ``seed``, ``counter``, ``batch_size``, ``reduction``,
        ``semantics``).

    Returns:
      ``(loss, info)``: the mean per-example loss (detached) and the core's info
      (``clipped_fraction``, ``norm_mean``, ``norm_max``), 0-d tensors.

    Example:
      >>> import torch
      >>> import gradclip_torch
      >>> model = torch.nn.Linear(3, 1)
      >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
      >>> loss, info = gradclip_torch.clip_per_example(model, torch.nn.functional.mse_loss, x, y, max_norm=0.1)
      >>> model.weight.grad.shape, bool(model.weight.grad.norm() <= 0.1 + 1e-6)
      (torch.Size([1, 3]), True)
    """
    from torch.func import functional_call, grad_and_value, vmap

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("clip_per_example: the model has no parameter with requires_grad")
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}
    frozen = {n: p.detach() for n, p in named.items() if n not in params}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    ins, tgts = _as_tuple(inputs), _as_tuple(targets)
    if not ins:
        raise ValueError("clip_per_example: inputs must be a tensor or a tuple of tensors")
    n_in = len(ins)

    def example_loss(p: dict, *example: torch.Tensor) -> torch.Tensor:
        batch = [e.unsqueeze(0) for e in example]
        out = functional_call(model, ({**p, **frozen}, buffers), tuple(batch[:n_in]))
        return loss_fn(out, *batch[n_in:])

    in_dims = (None,) + (0,) * (n_in + len(tgts))
    grads, losses = vmap(grad_and_value(example_loss), in_dims=in_dims, randomness=randomness)(params, *ins, *tgts)
    if generator is not None:
        device = grads[names[0]].device
        options["noise"] = lambda shapes: [torch.randn(s, generator=generator, dtype=torch.float32, device=device) for s in shapes]
    with torch.no_grad():
        out, info = gc.clip_per_example([grads[n] for n in names], max_norm, **options)
        for n, g in zip(names, out):
            named[n].grad = g.detach()
    return losses.detach().mean(), info
