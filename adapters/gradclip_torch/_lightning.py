"""PyTorch Lightning: a Callback that runs a gradclip rule inside ``Trainer.fit``.

Lightning builds the optimizers (``configure_optimizers``) inside ``fit``; the callback
attaches the rule to each of them in ``on_fit_start`` (:func:`gradclip_torch.attach`:
step hooks) and removes it in ``teardown``. In automatic optimization Lightning calls
``optimizer.step(closure)`` and the closure runs ``training_step`` and ``backward()``
inside ``step()``: the hook runs the rule when the closure returns, on those gradients,
before the optimizer reads them (see :mod:`gradclip_torch._hooks`). A rule that tests the
loss (``skip_on_spike(loss=True)``) gets the closure's loss. Manual optimization
(``self.optimizers().step()``) works the same way.

The rule state (ZClip's EMA, spike windows, pruning masks) is part of Lightning's
checkpoints (``Callback.state_dict`` / ``load_state_dict``), so ``fit(ckpt_path=...)``
continues exactly. The ``info`` of each optimizer step is logged with ``pl_module.log``
(``gradclip/norm``, ``gradclip/scale``, ...; ``log=False`` turns it off); batches that
only accumulate gradients (``accumulate_grad_batches``) log nothing.

Lightning's own ``gradient_clip_val`` clips before the optimizer step as well: set it to
``None`` (the callback refuses to run beside it).

This module imports Lightning (``lightning.pytorch``, else ``pytorch_lightning``);
``gradclip_torch`` loads it on first use of ``gradclip_torch.LightningCallback`` only.
"""

from __future__ import annotations

from typing import Any, Mapping

from gradclip_core import Rule

from ._apply import check_rule
from ._hooks import Handle, attach

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl  # type: ignore[no-redef]

__all__ = ["LightningCallback"]


class LightningCallback(pl.Callback):
    """Run ``rule`` in every optimizer step of a Lightning ``Trainer``, checkpointed and logged.

    Args:
      rule: a gradclip rule (``gc.chain(...)`` for several).
      log: log the ``info`` of every optimizer step with ``pl_module.log`` (on the
        step, not the epoch; values stay on the device until the logger writes them).
      prefix: prefix of the logged names (``"gradclip/"`` gives ``gradclip/norm``); with
        several optimizers the optimizer index follows it (``gradclip/1/norm``).
      **attach_kwargs: passed to :func:`gradclip_torch.attach` (``fold``, ``sync_skip``,
        ``process_group``, ``parallel``: pipeline stages, expert groups).

    Attributes:
      handles: one :class:`gradclip_torch.Handle` per optimizer of the running (or last)
        ``fit``; each keeps its rule state (one state per optimizer).

    Raises:
      ValueError: in ``fit``, when the trainer has ``gradient_clip_val`` set.

    Example:
      >>> import lightning.pytorch as pl  # doctest: +SKIP
      >>> import gradclip_core as gc, gradclip_torch
      >>> callback = gradclip_torch.LightningCallback(gc.clip_by_global_norm(1.0))  # doctest: +SKIP
      >>> trainer = pl.Trainer(max_steps=100, callbacks=[callback])  # doctest: +SKIP
      >>> trainer.fit(model, data)  # doctest: +SKIP
      >>> callback.info["norm"]  # doctest: +SKIP
    """

    def __init__(self, rule: Rule, *, log: bool = True, prefix: str = "gradclip/", **attach_kwargs: Any) -> None:
        check_rule(rule, "LightningCallback")
        self.rule = rule
        self.log = log
        self.prefix = prefix
        self.attach_kwargs = attach_kwargs
        self.handles: list[Handle] = []
        self._stepped = False  # an optimizer step since the last log (not under gradient accumulation)
        self._pending: list[Mapping[str, Any]] | None = None  # a loaded checkpoint, before the optimizers exist

    @property
    def state_key(self) -> str:
        """The key of this callback's state in Lightning checkpoints (one per rule)."""
        return self._generate_state_key(rule=self.rule.name)

    @property
    def info(self) -> dict:
        """The last ``info`` of the first optimizer's handle (0-d tensors; ``{}`` before the first step)."""
        return self.handles[0].info if self.handles else {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Attach the rule to each of the trainer's optimizers (their state: a checkpoint's, or the last fit's)."""
        if trainer.gradient_clip_val:
            raise ValueError(
                f"LightningCallback({self.rule.name}): the Trainer has gradient_clip_val={trainer.gradient_clip_val}, "
                "so Lightning would clip the gradients before the rule runs: pass gradient_clip_val=None (or put "
                "gc.clip_by_global_norm(...) into the rule)"
            )
        carried = self._pending if self._pending is not None else [h.state_dict() for h in self.handles]
        self._remove()
        self.handles = [attach(opt, self.rule, **self.attach_kwargs) for opt in trainer.optimizers]
        self._pending = None
        if carried:
            self._load(carried)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Note that this batch steps (a batch that only accumulates gradients logs nothing)."""
        self._stepped = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the info of the step this batch made (as floats, still on the device)."""
        stepped, self._stepped = self._stepped, False
        if not self.log or not stepped:
            return
        for i, handle in enumerate(self.handles):
            tag = self.prefix if len(self.handles) == 1 else f"{self.prefix}{i}/"
            for key, value in handle.info.items():
                pl_module.log(tag + key, value.float(), on_step=True, on_epoch=False, batch_size=1)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Remove the hooks after ``fit`` (the handles keep their state and last info)."""
        if stage == "fit":
            self._remove()

    def state_dict(self) -> dict[str, Any]:
        """The rule state of every optimizer (saved in Lightning checkpoints)."""
        if self._pending is not None:
            return {"handles": list(self._pending)}
        return {"handles": [h.state_dict() for h in self.handles]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (kept until the optimizers exist, then checked against the rule)."""
        states = state_dict.get("handles") if isinstance(state_dict, Mapping) else None
        if not isinstance(states, (list, tuple)):
            raise ValueError("LightningCallback.load_state_dict expects a dict made by LightningCallback.state_dict()")
        if self.handles:
            self._load(list(states))
        else:
            self._pending = list(states)

    def _load(self, states: list[Mapping[str, Any]]) -> None:
        if len(states) != len(self.handles):
            raise ValueError(f"LightningCallback({self.rule.name}): the checkpoint holds the rule state of "
                             f"{len(states)} optimizer(s), the trainer has {len(self.handles)}")
        for handle, state in zip(self.handles, states):
            handle.load_state_dict(state)

    def _remove(self) -> None:
        for handle in self.handles:
            handle.remove()
