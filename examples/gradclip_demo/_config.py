"""The recipe's hyper-parameters, shared by the three frameworks."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters of one run (identical for every framework).

    Attributes:
      steps: optimizer steps.
      batch_size: examples per step.
      lr: learning rate of plain SGD (``p - lr * g``: the one update all three
        frameworks' SGD compute with the same formula; their momentum variants differ).
      clip_norm: ``max_norm`` of the global-norm clip.
      sparsity: final sparsity of the global magnitude pruning.
      prune_end: fraction of ``steps`` at which the pruning schedule reaches ``sparsity``.
      prune_every: the masks are recomputed every this many steps.
      max_unit_norm: bound of the max-norm constraint (per output unit).
      eval_every: test accuracy is measured every this many steps (and after the last).
      seed: seed of the initial weights, the split and the batch order.
      hidden: width of the hidden layer.
      spikes: 0-based steps whose loss (so whose gradients) is multiplied by
        ``spike_scale``: injected gradient spikes, which the recipe's ``skip_on_spike``
        must skip identically in every framework.
      spike_scale: the factor of an injected spike.
      spike_window: ``skip_on_spike``'s window (its warm-up is half of it).
      spike_k: ``skip_on_spike``'s threshold in standard deviations.

    Example:
      >>> Config(steps=10).prune_end_step
      6
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 0.2
    clip_norm: float = 1.0
    sparsity: float = 0.8
    prune_end: float = 0.6
    prune_every: int = 10
    max_unit_norm: float = 2.0
    eval_every: int = 10
    seed: int = 0
    hidden: int = 64
    spikes: tuple = ()
    spike_scale: float = 100.0
    spike_window: int = 32
    spike_k: float = 6.0

    def spike_factor(self, step: int) -> float:
        """The loss factor of 0-based ``step``: ``spike_scale`` on an injected spike, else 1.

        Example:
          >>> cfg = Config(spikes=(5,))
          >>> cfg.spike_factor(5), cfg.spike_factor(6)
          (100.0, 1.0)
        """
        return self.spike_scale if step in self.spikes else 1.0

    @property
    def prune_end_step(self) -> int:
        """The step at which the schedule reaches the final sparsity (>= 1)."""
        return max(1, int(round(self.prune_end * self.steps)))
