"""Pruning scores: what a pruning algorithm ranks (jaxpruner's split: an algorithm only defines its score).

A :class:`Score` says how an element is scored; :func:`gradclip_core.score_prune` then
selects the smallest scores with the one exact driver (:func:`prune_smallest`), per
array, globally, with a sparsity allocation, N:M or in blocks. A dynamic sparse
trainer (SET, RigL) can reuse the same seam: it only defines a drop score and a grow
score.

Scores (all float32; bf16/fp16 weights are upcast exactly):

- ``magnitude``: ``|w|``.
- ``random``: ``h(seed, array index, flat index)``, the counter-based hash of
  :func:`gradclip_core.random_prune` (the same seed gives the same masks everywhere).
- ``wanda`` (Sun et al. 2023, arXiv 2306.11695, eq. 1): ``|W_ij| * ||X_j||_2``, the
  weight's magnitude times the L2 norm of its *input channel* ``j`` over the calibration
  tokens. The norms are given by the user (collected by the adapters'
  ``activation_norms`` helpers from calibration batches), one 1-d vector per pruned
  array, as a sequence (in the order the rule sees the arrays) or a dict by array
  name (torch parameter names, optax tree paths, Keras variable paths). The input
  axis is ``axis``: ``1`` for torch ``Linear`` ``(out, in)`` and ``Conv`` ``(out, in,
  kh, kw)`` weights, ``-2`` for Keras ``Dense`` ``(in, out)`` and ``Conv`` ``(kh, kw,
  in, out)`` kernels (``None``: from the layout, ``"out_first"`` -> 1, else -2).
  Arrays without norms are scored by ``|w|``.
- ``movement`` (Sanh et al. 2020, arXiv 2005.07683, hard movement pruning, eq. 4 with
  a unit learning rate): ``S = -sum_t W_t * dL/dW_t``, accumulated by ``update`` from
  the gradients of every step (state ``PruneState.scores``). Weights moving towards 0
  get low scores. ``S`` is signed: it is ranked through an order-preserving map onto
  non-negative float32 that keeps 30 bits of its 31 magnitude bits (scores within one
  float32 ulp may tie; ties go by index, as everywhere).
- ``taylor`` (first-order Taylor importance, Molchanov et al. 2019, arXiv 1906.10771;
  SNIP's connection sensitivity, Lee et al. 2019, arXiv 1810.02340, for one batch):
  ``sum_t |W_t * dL/dW_t|``, accumulated by ``update`` and restarted from 0 after each
  recomputation of the masks (the importance of one pruning interval, as Molchanov et
  al. average between pruning steps; a sum ranks like a mean).

Gradient scores need ``update`` to see the weights: adapters that own the optimizer
pass them (``gradclip_torch.attach`` / ``prune(...).attach``, ``gradclip_optax.wrap``,
``gradclip_keras.Optimizer``); a ``gradclip_keras.Callback`` sees no gradients.

Numerics: a product of two float32 numbers is rounded once in every framework, so
wanda and one-step taylor/movement scores are bit-identical everywhere. Over several
steps, XLA may contract ``S - W * G`` into one fused multiply-add, so accumulated
movement scores can differ by an ulp from NumPy / torch eager: masks then agree except
at such near-ties (the parity suite's random cases have none).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from .._hash import hash_keys
from ..backend._primitives import size
from ..backend._layout import _DEFAULT_LAYOUT, _OVERRIDE
from ..backend._namespace import device_kw, namespace_name
from ..backend._names import current_names
from ..backend._selection import NAN_BITS, float32_scores, float_from_bits, order_keys
from ._shards import full_shape

__all__ = ["Score", "SCORES", "magnitude_score", "random_score", "wanda_score", "movement_score", "taylor_score",
           "check_score", "compute_scores", "accumulate_scores", "ordered", "activation_sumsq"]

SCORES = ("magnitude", "random", "wanda", "movement", "taylor")
_GRAD_SCORES = ("movement", "taylor")


class Score(NamedTuple):
    """How elements are scored (plain Python values, so it sits in a rule's ``config``).

    Attributes:
      kind: one of ``SCORES``.
      seed: the seed of ``random``.
      act_norms: ``wanda``'s input-channel norms: a tuple (one entry per array, ``None``
        for none) or a dict ``{array name: norms}``, entries as lists of floats.
      axis: ``wanda``'s input-channel axis (an int), or ``None`` (from the layout).
    """

    kind: str = "magnitude"
    seed: int = 0
    act_norms: Any = None
    axis: Any = None

    @property
    def needs_grads(self) -> bool:
        """Whether the score accumulates gradients in ``update`` (movement, Taylor)."""
        return self.kind in _GRAD_SCORES

    @property
    def signed(self) -> bool:
        """Whether scores can be negative (movement): ranked through :func:`ordered`."""
        return self.kind == "movement"


def magnitude_score() -> Score:
    """``|w|`` (the default).

    Example:
      >>> magnitude_score().kind
      'magnitude'
    """
    return Score("magnitude")


def random_score(seed: int = 0) -> Score:
    """A counter-based hash of ``(seed, array index, flat index)``: random, the same in every framework.

    Example:
      >>> random_score(3).seed
      3
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return Score("random", seed=seed)


def _norm_list(where: str, v: Any) -> list | None:
    if v is None:
        return None
    try:
        a = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"act_norms{where} must be a 1-d array of norms, got {type(v).__name__}") from e
    if a.ndim != 1 or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"act_norms{where} must be a 1-d array of finite norms >= 0, got shape {a.shape}")
    return [float(x) for x in a.astype(np.float32)]


def wanda_score(act_norms: Any, axis: int | None = None) -> Score:
    """Wanda (Sun et al. 2023): ``|W_ij| * ||X_j||_2`` with the input-channel norms ``act_norms``.

    Args:
      act_norms: one 1-d array of input-channel norms per pruned array (a sequence in
        the order the rule sees the arrays, ``None`` entries scored by ``|w|``), or a
        dict ``{array name: norms}``; arrays of any framework or NumPy (read once, here).
      axis: the input-channel axis of the weights (``1``: torch ``(out, in, ...)``,
        ``-2``: Keras ``(..., in, out)``), or ``None``: from the layout.

    Example:
      >>> s = wanda_score([[1.0, 2.0]], axis=1)
      >>> s.kind, s.act_norms
      ('wanda', ([1.0, 2.0],))
    """
    if isinstance(act_norms, Mapping):
        norms: Any = {str(k): _norm_list(f"[{k!r}]", v) for k, v in act_norms.items()}
    elif isinstance(act_norms, (list, tuple)):
        norms = tuple(_norm_list(f"[{i}]", v) for i, v in enumerate(act_norms))
    else:
        raise ValueError(
            f"act_norms must be a sequence (one 1-d array of input-channel norms per array) or a dict by array "
            f"name, got {type(act_norms).__name__}"
        )
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise ValueError(f"axis must be an int (the input-channel axis) or None, got {axis!r}")
    return Score("wanda", act_norms=norms, axis=axis)


def movement_score() -> Score:
    """Movement (Sanh et al. 2020): ``-sum_t W_t * G_t``, accumulated from the gradients.

    Example:
      >>> movement_score().needs_grads
      True
    """
    return Score("movement")


def taylor_score() -> Score:
    """First-order Taylor / SNIP: ``sum_t |W_t * G_t|`` since the last recomputation.

    Example:
      >>> taylor_score().needs_grads
      True
    """
    return Score("taylor")


def check_score(score: Any) -> Score:
    """A :class:`Score`, its kind as a string (not ``wanda``), or its fields as a dict/list (configs)."""
    if isinstance(score, str):
        if score == "wanda":
            raise ValueError("score='wanda' needs the activation norms: pass score=gc.wanda_score(act_norms, axis=...)")
        if score not in SCORES:
            raise ValueError(f"score must be one of {list(SCORES)} or a gradclip Score, got {score!r}")
        return Score(score)
    if isinstance(score, Mapping):
        score = Score(**score)
    elif isinstance(score, list):
        score = Score(*score)
    if not isinstance(score, Score):
        raise ValueError(f"score must be one of {list(SCORES)} or a gradclip Score (gc.wanda_score(...)), got {score!r}")
    if score.kind not in SCORES:
        raise ValueError(f"score kind must be one of {list(SCORES)}, got {score.kind!r}")
    if score.kind == "random":
        return random_score(score.seed)
    if score.kind == "wanda":
        norms = score.act_norms
        return wanda_score(dict(norms) if isinstance(norms, Mapping) else list(norms or ()), score.axis)
    return Score(score.kind)


def _input_axis(xp: Any, axis: Any, ndim: int) -> int:
    if axis is None:
        layout = _OVERRIDE.get() or _DEFAULT_LAYOUT.get(namespace_name(xp))
        if layout is None:
            raise ValueError("wanda_score(axis=None) means the framework's layout, and this namespace has none: "
                             "pass axis= (1 for (out, in, ...) weights, -2 for (..., in, out) kernels)")
        return 1 if layout == "out_first" else ndim - 2
    return axis % ndim


def _norms_for(score: Score, n: int) -> list:
    norms = score.act_norms
    if isinstance(norms, Mapping):
        names = current_names()
        if names is None or len(names) != n:
            names = [str(i) for i in range(n)]
        return [norms.get(str(name)) for name in names]
    norms = list(norms or ())
    if len(norms) != n:
        raise ValueError(f"wanda_score: act_norms has {len(norms)} entries for {n} arrays (one per pruned array, "
                         "None for none; or pass a dict by array name)")
    return norms


def compute_scores(xp: Any, score: Score, params: Sequence[Any], acc: Sequence[Any] = (),
                   offsets: Sequence[Any] | None = None) -> list:
    """The score of every element of every array, float32 (signed for ``movement``).

    Args:
      xp: the namespace.
      score: a :class:`Score`.
      params: the arrays.
      acc: the accumulated scores (``PruneState.scores``) of the gradient scores.
      offsets: on shards (blocks of leading rows), the global flat index of each shard's
        first element (:func:`gradclip_core.prune._shards.flat_offsets`): the random hash
        and Wanda's input norms along axis 0 then index the full array.

    Returns:
      One float32 array per array, shaped like it.

    Example:
      >>> import numpy as np
      >>> w = [np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)]
      >>> compute_scores(np, wanda_score([[4.0, 1.0]], axis=1), w)[0].tolist()
      [[4.0, 2.0], [12.0, 0.5]]
    """
    params = list(params)
    if score.kind == "magnitude":
        return [float32_scores(xp, p) for p in params]
    sharded = offsets is not None
    offsets = [0] * len(params) if offsets is None else list(offsets)
    if score.kind == "random":
        return [xp.astype(hash_keys(xp, tuple(p.shape), score.seed, i, o), xp.float32)
                for i, (p, o) in enumerate(zip(params, offsets))]
    if score.kind in _GRAD_SCORES:
        return list(acc)
    out = []
    for i, (p, v) in enumerate(zip(params, _norms_for(score, len(params)))):
        s = float32_scores(xp, p)
        if v is None or p.ndim < 2:
            out.append(s)
            continue
        ax = _input_axis(xp, score.axis, p.ndim)
        rows = sharded and ax == 0  # a shard's rows are input channels
        channels = full_shape(tuple(p.shape))[0] if rows else p.shape[ax]
        if len(v) != channels:
            raise ValueError(f"wanda_score: array {i} of shape {tuple(p.shape)} has {channels} input channels "
                             f"on axis {ax}, but its act_norms has {len(v)}")
        norm = xp.asarray(np.asarray(v, np.float32), **device_kw([p]))
        if rows:  # this shard's channels: from its first row on
            row = max(1, size(p) // max(1, p.shape[0]))
            first = xp.astype(offsets[i], xp.int32) // row
            norm = xp.take(norm, xp.arange(p.shape[0], dtype=xp.int32, **device_kw([p])) + first, axis=0)
        shape = [1] * p.ndim
        shape[ax] = p.shape[ax]
        out.append(s * xp.reshape(norm, tuple(shape)))
    return out


def accumulate_scores(xp: Any, score: Score, grads: Sequence[Any], params: Sequence[Any], acc: Sequence[Any]) -> list:
    """The accumulated scores after one more step's gradients (``movement``: ``S - W*G``; ``taylor``: ``A + |W*G|``)."""
    out = []
    for g, p, a in zip(grads, params, acc):
        wg = xp.astype(p, xp.float32) * xp.astype(g, xp.float32)
        out.append(a - wg if score.kind == "movement" else a + xp.abs(wg))
    return out


_MID = 0x3FC00000  # half of the +inf key: negative scores below, positive above


def ordered(xp: Any, s: Any) -> Any:
    """Non-negative float32 ranking like a *signed* float32 ``s`` (what the selection driver ranks).

    ``|s|``'s 31-bit order key (:func:`gradclip_core.backend.order_keys`) is halved (one
    low bit dropped) and placed above ``0x3FC00000`` for ``s >= 0``, below it for
    ``s < 0`` (so -inf -> 0, +inf -> +inf), then read back as a float32; NaN stays NaN
    (ranked last). Integer operations and a bit cast only: identical everywhere.

    Example:
      >>> import numpy as np
      >>> s = np.array([-2.0, 3.0, -0.5, 0.0, 1.0], np.float32)
      >>> np.argsort(ordered(np, s), kind="stable").tolist()
      [0, 2, 3, 4, 1]
    """
    half = xp.bitwise_right_shift(order_keys(xp, xp.abs(s)), 1)
    u = xp.where(s < 0, _MID - half, _MID + half)
    u = xp.where(xp.isnan(s), xp.full_like(u, NAN_BITS), u)
    return float_from_bits(xp, u)


def activation_sumsq(xp: Any, x: Any, channel_axis: int = -1) -> Any:
    """Per-channel sum of squares of activations ``x`` over every other axis (float32).

    What the adapters' ``activation_norms`` helpers add up over calibration batches; the
    Wanda norm is ``sqrt`` of the total (Sun et al. 2023: ``||X_j||_2`` over all tokens).

    Example:
      >>> import numpy as np
      >>> activation_sumsq(np, np.array([[1.0, 2.0], [3.0, 0.0]], np.float32)).tolist()
      [10.0, 4.0]
    """
    x = xp.astype(x, xp.float32)
    ax = channel_axis % x.ndim
    axes = tuple(a for a in range(x.ndim) if a != ax)
    return xp.sum(x * x, axis=axes) if axes else x * x
