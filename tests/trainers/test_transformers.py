"""Hugging Face ``transformers.Trainer`` with ``gradclip_torch.TransformersCallback`` equals the plain loop.

A 2-layer GPT-2 built from a config (no download), random tokens, CPU, 4 optimizer
steps in the batches' order, ``max_grad_norm=0`` and the rule attached by the callback
(to the torch optimizer inside the Trainer's ``AcceleratedOptimizer``). Checked: the
weights equal a plain torch loop with the same batches and rule (up to the last bit of the
global norm, summed in the optimizer's parameter-group order); the info
is in the logs; a checkpoint carries the rule state (resuming equals the uninterrupted
run); with gradient accumulation the rule runs once per optimizer step, and
``semantics="torch"`` equals the Trainer's own ``max_grad_norm`` clipping (up to the last
bit of the norm: the Trainer sums the tensors' norms in another order).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import gradclip_core as gc  # noqa: E402
import gradclip_torch  # noqa: E402

LR = 0.5
STEPS = 4
BATCH = 4


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0,
                                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # (no dropout)
    return transformers.GPT2LMHeadModel(config)


def _dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (STEPS * BATCH, 16), generator=g)
    labels = ids.clone()
    labels[:, 0] = -100  # (a causal LM loss never predicts position 0: every count of the labels is 15 per row)
    return [{"input_ids": row, "labels": lab} for row, lab in zip(ids, labels)]


class InOrderTrainer(transformers.Trainer):
    """The Trainer, reading the dataset in order (the plain loop's batches)."""

    def _get_train_sampler(self, *args: object, **kwargs: object) -> torch.utils.data.Sampler:
        return torch.utils.data.SequentialSampler(self.train_dataset)


def _train(tmp: Path, callback: object = None, max_grad_norm: float = 0.0, accumulate: int = 1,
           batch: int = BATCH, save_steps: int = 0, resume: str | None = None) -> tuple[torch.nn.Module, transformers.Trainer]:
    model = _model()
    args = transformers.TrainingArguments(
        output_dir=str(tmp), use_cpu=True, report_to=[], max_steps=STEPS // accumulate, learning_rate=LR,
        per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate, max_grad_norm=max_grad_norm,
        optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, logging_steps=1,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, save_only_model=False,
        disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    trainer = InOrderTrainer(model=model, args=args, train_dataset=_dataset(),
                             callbacks=[] if callback is None else [callback])
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def _plain_loop(rule: gc.Rule) -> list[torch.Tensor]:
    model = _model()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    handle = gradclip_torch.attach(opt, rule)
    data = _dataset()
    for i in range(STEPS):
        rows = data[i * BATCH:(i + 1) * BATCH]
        ids, labels = (torch.stack([r[k] for r in rows]) for k in ("input_ids", "labels"))
        # (the Trainer's loss: the token sum over the count of the labels, not the mean)
        loss = model(input_ids=ids, labels=labels, num_items_in_batch=labels.ne(-100).sum()).loss
        loss.backward()
        if gc.needs_loss(rule):
            handle.set_loss(loss)
        opt.step()
        opt.zero_grad()
    return [p.detach() for p in model.parameters()]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to the last bit of the norm: the Trainer sums the per-tensor norms in ``model.parameters()``
    order, the hook in the optimizer's (decay and no-decay groups), so the norm may differ in its last bit."""
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("rule", [gc.clip_by_global_norm(0.5), gc.zclip(warmup_steps=2, z_thresh=1.0)],
                         ids=lambda r: r.name)
def test_trainer_equals_plain_loop(tmp_path: Path, rule: gc.Rule) -> None:
    callback = gradclip_torch.TransformersCallback(rule)
    model, trainer = _train(tmp_path, callback)
    assert trainer.state.global_step == STEPS
    assert isinstance(callback.handle.optimizer, torch.optim.SGD)  # (inside the AcceleratedOptimizer)
    for got, want in zip(_weights(model), _plain_loop(rule), strict=True):
        _close(got, want)  # the same kernels; the norm summed in the optimizer's group order (last bit; AVX-512 CPUs)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == STEPS
    for entry in logs:  # the Trainer's grad_norm is the norm before the rule: the rule's norm
        assert entry["gradclip/norm"] == pytest.approx(entry["grad_norm"], rel=1e-5)
    assert logs[-1]["gradclip/norm"] == pytest.approx(float(callback.info["norm"]))


def test_gradient_accumulation_and_torch_semantics_equal_max_grad_norm(tmp_path: Path) -> None:
    """Once per optimizer step (not per micro-batch), and ``semantics="torch"`` is the Trainer's own clip."""
    native, _ = _train(tmp_path / "native", max_grad_norm=0.5, accumulate=2, batch=2)
    callback = gradclip_torch.TransformersCallback(gc.chain(gc.record_norms(8),
                                                            gc.clip_by_global_norm(0.5, semantics="torch")))
    ours, trainer = _train(tmp_path / "ours", callback, accumulate=2, batch=2)
    assert trainer.state.global_step == STEPS // 2
    assert int(callback.handle.state[0].count) == STEPS // 2  # one norm per optimizer step, not per micro-batch
    for a, b in zip(_weights(ours), _weights(native), strict=True):
        _close(a, b)


def test_checkpoint_resume_equals_uninterrupted(tmp_path: Path) -> None:
    rule = gc.zclip(warmup_steps=2, z_thresh=1.0)
    full_cb = gradclip_torch.TransformersCallback(rule)
    full, _ = _train(tmp_path, full_cb, save_steps=2)  # saves checkpoint-2 and checkpoint-4
    assert (tmp_path / "checkpoint-2" / "gradclip_state_0.pt").exists()
    resumed_cb = gradclip_torch.TransformersCallback(rule)
    resumed, trainer = _train(tmp_path, resumed_cb, save_steps=2, resume=str(tmp_path / "checkpoint-2"))
    assert trainer.state.global_step == STEPS
    for a, b in zip(_weights(resumed), _weights(full), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(resumed_cb.state_dict()["state"], full_cb.state_dict()["state"], strict=True):
        assert torch.equal(a, b)
    (tmp_path / "checkpoint-2" / "gradclip_state_0.pt").unlink()  # without it: a warning, and a fresh state
    fresh = gradclip_torch.TransformersCallback(rule)
    with pytest.warns(UserWarning, match="starts afresh"):
        _train(tmp_path, fresh, save_steps=2, resume=str(tmp_path / "checkpoint-2"))
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state_dict()["state"], full_cb.state_dict()["state"]))


def test_refuses_max_grad_norm(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_grad_norm"):
        _train(tmp_path, gradclip_torch.TransformersCallback(gc.clip_by_global_norm(1.0)), max_grad_norm=1.0)
