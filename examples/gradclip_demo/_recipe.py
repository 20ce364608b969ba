"""The one gradclip recipe every framework runs."""

from __future__ import annotations

import gradclip_core as gc

from ._config import Config


def recipe(cfg: Config, axis: str, prune: gc.Rule | None = None) -> gc.Rule:
    """Skip on spike, global-norm clip, gradual global magnitude pruning, max-norm constraint.

    ``update`` (before the optimizer step) skips the whole step when the global gradient
    norm exceeds ``mean + cfg.spike_k * std`` of the last ``cfg.spike_window`` accepted
    norms (after a warm-up of half the window), clips the global gradient norm to
    ``cfg.clip_norm`` and masks pruned weights' gradients; ``project`` (after it)
    recomputes the pruning masks every ``cfg.prune_every`` steps on a cubic schedule to
    ``cfg.sparsity`` and bounds every output unit's weight norm by ``cfg.max_unit_norm``.

    Args:
      cfg: the run's :class:`Config`.
      axis: the kernels' layout for the max-norm units: ``"out_first"`` for torch's
        ``(out, in)`` Linear weights, ``"out_last"`` for ``(in, out)`` kernels (optax
        here, Keras). Both give the norm of each output unit's incoming weights.
      prune: the pruning rule in place of the gradual global magnitude pruning
        (``examples/prune_dst.py``: RigL, SET).

    Returns:
      A chained :class:`gradclip_core.Rule`.

    Example:
      >>> recipe(Config(), "out_last").name
      'chain'
    """
    if prune is None:
        prune = gc.global_magnitude_prune(cfg.sparsity, schedule=gc.polynomial_schedule(0, cfg.prune_end_step,
                                                                                        cfg.prune_every))
    return gc.chain(
        gc.skip_on_spike(window=cfg.spike_window, k=cfg.spike_k, warmup=cfg.spike_window // 2),
        gc.clip_by_global_norm(cfg.clip_norm),
        prune,
        gc.max_norm(cfg.max_unit_norm, axis=axis),
    )
