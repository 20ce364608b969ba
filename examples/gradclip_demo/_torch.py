"""The recipe in PyTorch: ``nn.Sequential``, ``torch.optim.SGD`` and ``gradclip_torch.attach``."""

from __future__ import annotations

import time

import numpy as np
import torch

import gradclip_torch

from ._config import Config
from ._data import Data, batch_indices
from ._history import History, pick
from ._recipe import recipe


def build(weights: list[np.ndarray]) -> torch.nn.Sequential:
    """The MLP with the given ``(in, out)``-layout weights, transposed into torch's ``(out, in)``."""
    w1, b1, w2, b2 = weights
    model = torch.nn.Sequential(torch.nn.Linear(*w1.shape), torch.nn.ReLU(), torch.nn.Linear(*w2.shape))
    with torch.no_grad():
        for p, w in zip(model.parameters(), (w1.T, b1, w2.T, b2)):
            p.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    return model


def train(cfg: Config, data: Data, weights: list[np.ndarray], log: callable = print,
          make_rule: callable = recipe) -> History:
    """Train with the recipe attached to the optimizer; returns the per-step :class:`History`.

    Args:
      cfg: the run's :class:`Config`.
      data: the split digits.
      weights: the initial weights (``(in, out)`` layout).
      log: progress printer.
      make_rule: ``make_rule(cfg, axis)`` gives the rule (default: the demo's :func:`recipe`;
        ``examples/prune_dst.py`` passes RigL/SET).

    Returns:
      The run's :class:`History`.
    """
    torch.manual_seed(cfg.seed)
    model = build(weights)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    # skip_on_spike skips finite steps: attach makes a skipped step a true skip (SGD is not
    # fused, so that costs one host sync per step: sync_skip="auto")
    handle = gradclip_torch.attach(opt, make_rule(cfg, "out_first"))
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train).long()
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test).long()
    hist = History.empty("torch", cfg.steps)
    t0 = time.perf_counter()
    for step, idx in enumerate(batch_indices(len(x), cfg)):
        idx_t = torch.from_numpy(idx)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx_t]), y[idx_t])
        (loss * cfg.spike_factor(step)).backward()  # an injected spike: the gradients times spike_scale
        opt.step()  # the hooks skip spikes, clip and mask the gradients, then prune and constrain the weights
        info = handle.info
        hist.record(step, loss=loss.detach(), grad_norm=pick(info, "clip_by_global_norm/norm"),
                    sparsity=pick(info, "sparsity"), skipped=pick(info, "skip_on_spike/skipped"))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            with torch.no_grad():
                acc = int((model(x_test).argmax(1) == y_test).sum()) / len(y_test)
            hist.record(step, accuracy=acc)
            log(f"  torch   step {step + 1:4d}  loss {hist.loss[step]:.4f}  acc {float(acc):.3f}  "
                f"sparsity {hist.sparsity[step]:.3f}")
    hist.seconds = time.perf_counter() - t0
    hist.masks = [m.numpy().T for m in gradclip_torch.masks(handle) if m.ndim == 2]  # (in, out) like the others
    handle.remove()
    w1, b1, w2, b2 = (p.detach().numpy().copy() for p in model.parameters())
    hist.weights = [w1.T, b1, w2.T, b2]  # back to the (in, out) layout
    return hist
