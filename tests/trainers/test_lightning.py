"""PyTorch Lightning: ``gradclip_torch.LightningCallback`` in ``Trainer.fit`` equals the plain torch loop.

One process on CPU, precision "32" (Lightning steps each optimizer with a closure that
runs ``training_step`` and ``backward()`` inside ``step()``), Lightning's own
``gradient_clip_val`` off. Checked: final weights (same batches, same order) for a
global clip, ZClip, a skip on loss spikes (the loss comes from the closure) and global
pruning; the info is logged once per optimizer step (also under gradient accumulation);
a checkpoint carries the rule state, so stopping and resuming with ``fit(ckpt_path=...)``
equals the uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

import gradclip_core as gc  # noqa: E402
import gradclip_torch  # noqa: E402

from .util import LR, MOMENTUM, assert_same, batches, loss_fn, make_net, plain_loop, rules  # noqa: E402


class TinyModule(pl.LightningModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = make_net(seed)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        return loss_fn(self.net, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)


def _trainer(root: Path, callback: pl.Callback, **kwargs: object) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, precision="32", default_root_dir=root, callbacks=[callback],
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1, **kwargs)


def _loader(data: list) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)


@pytest.mark.parametrize("name", list(rules()))
def test_fit_equals_plain_loop(tmp_path: Path, name: str) -> None:
    rule = rules()[name]
    data = batches(4)
    want, want_handle = plain_loop(rule, data)
    callback = gradclip_torch.LightningCallback(rule)
    module = TinyModule()
    trainer = _trainer(tmp_path, callback, max_steps=len(data))
    trainer.fit(module, _loader(data))
    assert trainer.global_step == len(data)
    assert_same([p.detach() for p in module.parameters()], want)
    want_info = {k: float(v) for k, v in want_handle.info.items()}
    assert {k: float(v) for k, v in callback.info.items()} == pytest.approx(want_info, rel=1e-6)
    for key, value in want_info.items():  # logged on the step
        assert float(trainer.callback_metrics[f"gradclip/{key}"]) == pytest.approx(value, rel=1e-6)
    if name == "global_prune":  # (the weights, not the biases)
        weights = torch.cat([p.detach().flatten() for p in module.parameters() if p.ndim == 2])
        assert int((weights == 0).sum()) == 24 == round(0.5 * weights.numel())


def test_gradient_accumulation_steps_and_logs_once_per_optimizer_step(tmp_path: Path) -> None:
    rule = gc.chain(gc.record_norms(8), gc.clip_by_global_norm(0.5))
    data = batches(4)
    callback = gradclip_torch.LightningCallback(rule)
    module = TinyModule()
    trainer = _trainer(tmp_path, callback, max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(module, _loader(data))
    assert trainer.global_step == 2 and int(callback.handles[0].state[0].count) == 2
    assert not any("skipped" in key for key in trainer.callback_metrics)  # (logged after the steps only)
    want, handle = plain_loop(rule, data, accumulate=2)  # each loss / 2, gradients summed over pairs
    assert_same([p.detach() for p in module.parameters()], want)
    for key, value in handle.info.items():
        assert float(trainer.callback_metrics[f"gradclip/{key}"]) == pytest.approx(float(value), rel=1e-6)


def test_checkpoint_resume_equals_uninterrupted(tmp_path: Path) -> None:
    rule = gc.zclip(warmup_steps=2, z_thresh=1.0)
    data = batches(2, spike=1)  # one epoch: 2 steps; two epochs: 4
    full_cb = gradclip_torch.LightningCallback(rule)
    full = TinyModule()
    _trainer(tmp_path / "full", full_cb, max_epochs=2).fit(full, _loader(data))

    first_cb = gradclip_torch.LightningCallback(rule)
    first = _trainer(tmp_path / "a", first_cb, max_epochs=1)
    first.fit(TinyModule(), _loader(data))
    ckpt = tmp_path / "a" / "epoch1.ckpt"
    first.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["callbacks"][first_cb.state_key]
    assert len(saved["handles"]) == 1 and saved["handles"][0]["state"]

    resumed_cb = gradclip_torch.LightningCallback(rule)
    resumed = TinyModule(seed=5)  # other weights: the checkpoint brings them back
    _trainer(tmp_path / "b", resumed_cb, max_epochs=2).fit(resumed, _loader(data), ckpt_path=ckpt)
    assert_same([p.detach() for p in resumed.parameters()], [p.detach() for p in full.parameters()])
    for a, b in zip(resumed_cb.handles[0].state_dict()["state"], full_cb.handles[0].state_dict()["state"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_refuses_lightning_clipping(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, gradclip_torch.LightningCallback(gc.clip_by_global_norm(1.0)), max_steps=1,
                       gradient_clip_val=1.0)
    with pytest.raises(ValueError, match="gradient_clip_val"):
        trainer.fit(TinyModule(), _loader(batches(1)))
