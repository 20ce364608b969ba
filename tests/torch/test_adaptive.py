"""Stateful adaptive clipping in torch: the published packages, suggest_threshold, torch.compile.

- ZClip: the authors' ``zclip`` package (``ZClip.step(model)``) on the same model and
  batches. Documented difference: its clip coefficient is ``bound / (norm + 1e-6)``,
  gradclip's ``min(1, bound / norm)``: relative ``1e-6 / norm``, far below the
  tolerance used.
- AutoClip: the ``autoclip`` package's ``QuantileClip(global_threshold=True)`` equals
  ``autoclip(include_current=False, semantics="torch")`` (quantile of the previous
  norms, ``clip_grad_norm_``'s formula). The paper's order (``include_current=True``)
  is tested against a transcription of the paper's code in tests/core/test_autoclip.py.

The packages are test-only references (the ``ref`` extra); tests skip without them.
"""

from __future__ import annotations

import pytest
import torch

import gradclip_core as gc
import gradclip_torch

from .test_hooks import _DYNAMO_LRU, _compile_case
from .util import loss_fn, mlp

STEPS = 14


def frozen(params):
    """lr 0: every step sees the same raw gradients in both runs, so a comparison with a
    reference package measures the clipping formula, not float32 drift of the weights."""
    return torch.optim.SGD(params, lr=0.0)


def spiky_loss(model, step):
    """The util loss, with a few steps scaled up so that the adaptive rules clip."""
    return loss_fn(model, step) * (40.0 if step in (6, 9) else 1.0)


def train(rule_or_ref, steps=STEPS, model=None):
    """Grad trajectory of a gradclip rule (attached) or a reference object with ``.step`` (on ``model``)."""
    model = mlp(0) if model is None else model
    opt = frozen(model.parameters())
    handle = gradclip_torch.attach(opt, rule_or_ref) if isinstance(rule_or_ref, gc.Rule) else None
    grads = []
    for step in range(steps):
        opt.zero_grad()
        spiky_loss(model, step).backward()
        if handle is None:  # ZClip.step(model), QuantileClip.step()
            rule_or_ref.step(model) if hasattr(rule_or_ref, "warmup_steps") else rule_or_ref.step()
        opt.step()  # lr 0: the gradients stay as the rule left them
        grads.append([p.grad.clone() for p in model.parameters()])
    return model, grads, handle


@pytest.mark.parametrize(
    "cfg",
    [
        dict(warmup_steps=3, alpha=0.8, z_thresh=1.5),
        dict(warmup_steps=3, alpha=0.8, z_thresh=1.5, clip_option="mean", max_grad_norm=500.0),
        dict(warmup_steps=4, z_thresh=1.0, mode="percentile", max_grad_norm=None),
        dict(warmup_steps=2, z_thresh=1.0, skip_update_on_spike=True, max_grad_norm=None, clip_factor=0.8),
    ],
)
def test_zclip_matches_reference_package(cfg):
    zclip = pytest.importorskip("zclip", reason="the zclip package is not installed (pip install -c constraints.txt zclip)")
    cfg = dict(cfg)
    max_norm = cfg.pop("max_grad_norm", None)
    ref = zclip.ZClip(max_grad_norm=max_norm, **cfg)
    _, want, _ = train(ref)
    _, got, handle = train(gc.zclip(max_norm=max_norm, **cfg))
    for step, (a, b) in enumerate(zip(got, want)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=5e-6, atol=1e-6, msg=f"step {step}")
    assert float(handle.state.mean) == pytest.approx(ref.mean, rel=1e-5)
    assert float(handle.state.var) == pytest.approx(ref.var, rel=1e-4)


def test_zclip_clips_spikes():
    _, got, handle = train(gc.zclip(alpha=0.8, z_thresh=1.5, warmup_steps=3))
    _, raw, _ = train(gc.record_norms(4))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(got, raw))


@pytest.mark.parametrize("quantile, history", [(0.5, 4), (0.9, 100), (0.1, 3)])
def test_autoclip_matches_quantileclip_package(quantile, history):
    pytest.importorskip("autoclip", reason="the autoclip package is not installed (pip install -c constraints.txt autoclip)")
    from autoclip.torch import QuantileClip

    model = mlp(0)
    _, want, _ = train(QuantileClip(model.parameters(), quantile=quantile, history_length=history, global_threshold=True),
                       model=model)
    rule = gc.autoclip(100 * quantile, history, include_current=False, semantics="torch")
    _, got, _ = train(rule)
    for step, (a, b) in enumerate(zip(got, want)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-7, msg=f"step {step}")


def test_suggest_threshold_from_handle():
    _, _, handle = train(gc.record_norms(STEPS))
    stats = gc.suggest_threshold(handle.state)
    assert float(stats["count"]) == STEPS and float(stats["p50"]) <= float(stats["p90"]) <= float(stats["max"])
    assert all(isinstance(v, torch.Tensor) for v in stats.values())


@pytest.mark.slow
@_DYNAMO_LRU
@pytest.mark.parametrize("name", ["autoclip", "zclip"])
def test_compiled_training_step(name):
    # a final bound of 1 keeps the (lr 0.05, momentum) steps small, so eager and compiled stay close
    make = {
        "autoclip": lambda: gc.chain(gc.autoclip(50.0, 4), gc.clip_by_global_norm(1.0)),
        "zclip": lambda: gc.zclip(warmup_steps=1, z_thresh=0.5, max_norm=1.0),
    }[name]
    _compile_case(make, steps=4)
