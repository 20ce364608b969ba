"""Hugging Face ``transformers.Trainer``: a TrainerCallback that runs a gradclip rule in ``train()``.

The Trainer builds its optimizer and hands it to Accelerate (``accelerator.prepare``)
inside ``train()``, before ``on_train_begin``; the callback attaches the rule there
(:func:`gradclip_torch.attach` unwraps the ``AcceleratedOptimizer``: the hooks go on the
torch optimizer, which steps once per optimizer step, after gradient accumulation) and
removes it in ``on_train_end``. Turn the Trainer's own clipping off with
``max_grad_norm=0`` (the callback refuses to run beside it). The Trainer still logs
``grad_norm``: the norm before the rule.

The last ``info`` is added to every training log (``gradclip/norm``, ``gradclip/scale``,
...): the dict handed to the callbacks after this one (list it before the reporting
callbacks to have them see it) and ``trainer.state.log_history``. Reading it is one host
sync per logging step (``logging_steps``), none in the other steps.

Checkpoints: ``on_save`` writes the rule state next to the Trainer's, as
``gradclip_state_<process index>.pt`` in ``<output_dir>/checkpoint-<step>``, and
``train(resume_from_checkpoint=...)`` of a checkpoint in ``output_dir`` restores it
(the callback looks for the file of the step the Trainer resumes at; otherwise it warns
and starts from a fresh state: use ``callback.load_state_dict(...)``).

This module imports ``transformers``; ``gradclip_torch`` loads it on first use of
``gradclip_torch.TransformersCallback`` only.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

import torch
import transformers

from gradclip_core import Rule

from ._apply import check_rule
from ._hooks import Handle, attach

__all__ = ["TransformersCallback"]


class TransformersCallback(transformers.TrainerCallback):
    """Run ``rule`` in every optimizer step of a ``transformers.Trainer``, and log its info.

    Args:
      rule: a gradclip rule (``gc.chain(...)`` for several).
      log: add the last ``info`` (floats) to each training log.
      prefix: prefix of the logged names.
      **attach_kwargs: passed to :func:`gradclip_torch.attach` (``fold``, ``sync_skip``).

    Attributes:
      handle: the :class:`gradclip_torch.Handle` of the running (or last) ``train()``,
        ``None`` before it.

    Raises:
      ValueError: in ``train()``, when ``TrainingArguments.max_grad_norm`` is not 0.

    Example:
      >>> import gradclip_core as gc, gradclip_torch
      >>> callback = gradclip_torch.TransformersCallback(gc.clip_by_global_norm(1.0))  # doctest: +SKIP
      >>> args = TrainingArguments("out", max_grad_norm=0, use_cpu=True, report_to=[])  # doctest: +SKIP
      >>> Trainer(model, args, train_dataset=data, callbacks=[callback]).train()  # doctest: +SKIP
      >>> callback.info["norm"]  # doctest: +SKIP
    """

    def __init__(self, rule: Rule, *, log: bool = True, prefix: str = "gradclip/", **attach_kwargs: Any) -> None:
        check_rule(rule, "TransformersCallback")
        self.rule = rule
        self.log = log
        self.prefix = prefix
        self.attach_kwargs = attach_kwargs
        self.handle: Handle | None = None
        self._pending: Mapping[str, Any] | None = None

    @property
    def info(self) -> dict:
        """The last ``info`` (0-d tensors; ``{}`` before the first step)."""
        return {} if self.handle is None else self.handle.info

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        """Attach the rule to the Trainer's optimizer (with the loaded, or the last ``train()``'s, state)."""
        if args.max_grad_norm:
            raise ValueError(
                f"TransformersCallback({self.rule.name}): TrainingArguments has max_grad_norm={args.max_grad_norm}, "
                "so the Trainer would clip the gradients before the rule runs: pass max_grad_norm=0 (or put "
                "gc.clip_by_global_norm(...) into the rule)"
            )
        if optimizer is None:
            raise ValueError("TransformersCallback: the Trainer handed no optimizer to on_train_begin")
        carried = self._pending if self._pending is not None else (None if self.handle is None else self.handle.state_dict())
        if carried is None and state.global_step > 0:  # resuming from a checkpoint: its rule state
            path = _state_file(args, state)
            if os.path.exists(path):
                carried = torch.load(path, weights_only=True)
            else:
                warnings.warn(f"TransformersCallback({self.rule.name}): resuming at step {state.global_step} without "
                              f"the rule state ({path} does not exist): the rule starts afresh; restore it with "
                              "callback.load_state_dict(torch.load(...)) before train()", UserWarning, stacklevel=2)
        if self.handle is not None:
            self.handle.remove()
        self.handle = attach(optimizer, self.rule, **self.attach_kwargs)
        self._pending = None
        if carried is not None:
            self.handle.load_state_dict(carried)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        """Add the last info to a training log (one with ``loss``) and to its ``log_history`` entry."""
        if not self.log or logs is None or "loss" not in logs or self.handle is None:
            return
        values = {self.prefix + k: float(v) for k, v in self.handle.info.items()}
        logs.update(values)
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(values)  # (the Trainer appended a copy of logs just before on_log)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the rule state into the checkpoint folder the Trainer just saved."""
        path = _state_file(args, state)
        if self.handle is not None and os.path.isdir(os.path.dirname(path)):
            torch.save(self.state_dict(), path)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove the hooks (the handle keeps its state and last info)."""
        if self.handle is not None:
            self.handle.remove()

    def state_dict(self) -> dict[str, Any]:
        """The rule state (:meth:`gradclip_torch.Handle.state_dict`); empty before the first ``train()``."""
        if self._pending is not None:
            return dict(self._pending)
        return {} if self.handle is None else self.handle.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: now if attached, else at the next ``on_train_begin``."""
        if self.handle is not None:
            self.handle.load_state_dict(state_dict)
        else:
            self._pending = state_dict


def _state_file(args: Any, state: Any) -> str:
    """Where the rule state of step ``state.global_step`` is saved (one file per process)."""
    folder = os.path.join(args.output_dir, f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}")
    return os.path.join(folder, f"gradclip_state_{args.process_index}.pt")
