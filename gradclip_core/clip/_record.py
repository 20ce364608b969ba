"""Choosing a clipping threshold from data: record gradient norms, then read their percentiles.

:func:`record_norms` is an identity rule (gradients unchanged) whose state keeps the
global norm of the last ``steps`` steps in a ring buffer (:class:`NormHistory`);
:func:`suggest_threshold` turns that state into percentile statistics. Pure arrays, no
host sync while training; read the numbers once at the end.

Where the state is, per framework::

    # torch
    handle = gradclip_torch.attach(optimizer, gc.record_norms(500))
    ...                                                     # train 500 steps
    stats = gc.suggest_threshold(handle.state)

    # optax
    tx = optax.chain(gradclip_optax.transform(gc.record_norms(500)), optax.adam(1e-3))
    ...
    stats = gc.suggest_threshold(opt_state)                  # searches the optax state

    # any framework, functional: rule.update(...) returns the state

A common choice is a threshold a little above the typical norm (e.g. ``p90``), so that
only spikes are clipped; :func:`gradclip_core.autoclip` automates the same idea.
"""

from __future__ import annotations

from typing import Any, Sequence

from .._effect import Keep
from .._rule import Rule, factory
from .._validate import check_ord
from ..backend._namespace import namespace
from ._history import NormHistory, check_percentile, check_size, history_init, percentile, push
from ._norm import _global_norm

__all__ = ["record_norms", "suggest_threshold"]


@factory
def record_norms(steps: int = 1000, *, ord: float | str = 2) -> Rule:
    """An identity rule that records the global gradient norm of the last ``steps`` steps.

    Args:
      steps: size of the ring buffer (int >= 1); older norms are overwritten.
      ord: norm order, 1, 2 or ``inf``.

    Returns:
      A :class:`Rule` that returns the gradients unchanged; its state is a
      :class:`NormHistory` for :func:`suggest_threshold`; info has ``norm``.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.record_norms(steps=8)
      >>> state = rule.init([np.zeros(1, np.float32)])
      >>> for n in [1.0, 2.0, 3.0, 4.0]:
      ...     _, state, _ = rule.update([np.array([n], np.float32)], state)
      >>> {k: float(v) for k, v in gc.suggest_threshold(state).items()}
      {'p50': 2.5, 'p90': 3.700000047683716, 'p99': 3.9700000286102295, 'max': 4.0, 'mean': 2.5, 'count': 4.0, 'nonfinite': 0.0}
    """
    size = check_size("steps", steps)
    ord_ = check_ord(ord)

    def update(grads: Sequence[Any], state: NormHistory, params: Sequence[Any] | None = None):
        del params
        grads = list(grads)
        if not isinstance(state, NormHistory):
            raise ValueError(f"record_norms: state must be the NormHistory made by rule.init, got {type(state).__name__}")
        if not grads:
            return Keep(), state, {}
        xp = namespace(*grads)
        norm = _global_norm(xp, grads, ord_, "canonical")
        return Keep(), push(xp, state, norm), {"norm": norm}

    return Rule(init=history_init(size), update_effect=update, name="record_norms")


def _find(tree: Any, found: list) -> None:
    if isinstance(tree, NormHistory):
        found.append(tree)
    elif isinstance(tree, (tuple, list)):
        for item in tree:
            _find(item, found)
    elif isinstance(tree, dict):
        for item in tree.values():
            _find(item, found)


def suggest_threshold(state: Any, percentiles: Sequence[float] = (50, 90, 99)) -> dict:
    """Percentile statistics of the norms recorded by :func:`record_norms` (or :func:`autoclip`).

    Only finite recorded norms count (NaN/Inf steps are reported in ``nonfinite``).
    Percentiles use NumPy's ``"linear"`` interpolation (see :mod:`gradclip_core.clip._history`).

    Args:
      state: the rule's :class:`NormHistory`, or any state tree holding exactly one
        (a ``chain`` state, ``handle.state`` in torch, a whole optax optimizer state).
      percentiles: which percentiles to report, each in ``[0, 100]``.

    Returns:
      A dict of 0-d arrays (float32): ``p<q>`` for each percentile (``p50``, ``p90``,
      ``p99`` by default; ``p99.9`` style for fractional ones), ``max``, ``mean``,
      ``count`` (finite norms recorded) and ``nonfinite``. With no finite norm every
      statistic is NaN.

    Raises:
      ValueError: no recorded-norm state in ``state``, or several.

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.record_norms(steps=3)
      >>> state = rule.init([np.zeros(1, np.float32)])
      >>> for n in [5.0, 1.0, 2.0, 3.0]:  # the 5 falls out of the window of 3
      ...     _, state, _ = rule.update([np.array([n], np.float32)], state)
      >>> float(gc.suggest_threshold(state, percentiles=[50])["p50"])
      2.0
    """
    found: list = []
    _find(state, found)
    if len(found) != 1:
        raise ValueError(
            f"suggest_threshold needs a state holding exactly one recorded-norm history "
            f"(gradclip_core.record_norms or autoclip), found {len(found)}"
        )
    hist = found[0]
    qs = [check_percentile("percentiles", q) for q in percentiles]
    xp = namespace(hist.norms)
    slots = xp.arange(hist.norms.shape[0], dtype=xp.int32)
    recorded = slots < hist.count
    finite = xp.logical_and(recorded, xp.isfinite(hist.norms))
    n = xp.astype(xp.count_nonzero(finite), xp.float32)
    out: dict = {}
    for q in qs:
        key = f"p{int(q)}" if float(q).is_integer() else f"p{q:g}"
        out[key] = percentile(xp, hist.norms, finite, q)
    zeros = xp.zeros_like(hist.norms)
    vals = xp.where(finite, hist.norms, zeros)
    nan = xp.full_like(n, float("nan"))
    some = n > 0
    out["max"] = xp.where(some, xp.max(xp.where(finite, hist.norms, xp.full_like(zeros, -float("inf")))), nan)
    out["mean"] = xp.where(some, xp.sum(vals) / xp.where(some, n, xp.ones_like(n)), nan)
    out["count"] = n
    out["nonfinite"] = xp.astype(xp.count_nonzero(recorded), xp.float32) - n
    return out
