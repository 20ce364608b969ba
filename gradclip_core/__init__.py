"""gradclip_core: every clipping, constraint and pruning rule defined once, on the Python Array API.

A rule is a :class:`Rule` of pure functions over flat sequences of arrays of any
Array API namespace (NumPy, array-api-strict, PyTorch, JAX, and TensorFlow)::

    state               = rule.init(params)
    grads, state, info  = rule.update(grads, state, params=None)  # before the optimizer step
    params, state, info = rule.project(params, state)             # after the optimizer step

Rules also declare their *effect* (``rule.update_effect`` / ``rule.project_effect``:
:class:`Scale`, :class:`Mask`, :class:`Clamp`, ...), which adapters apply in place or
fold into a fused optimizer. The rules live in three wings, re-exported here:
:mod:`gradclip_core.clip` (gradient clipping), :mod:`gradclip_core.prune` (pruning and
schedules), :mod:`gradclip_core.constraints` (weight rules); the extension API for
adapters and new frameworks is :mod:`gradclip_core.backend`.

This package imports NumPy and array-api-compat only, never a framework.

Non-finite policy (``nonfinite=`` of every clipping rule): ``"propagate"`` (default, no
check), ``"zero"`` (NaN/Inf elements set to 0 before the rule), ``"skip"`` (all-zero
output, state unchanged, ``info["skipped"] = 1``), ``"raise"`` (``FloatingPointError``;
one host sync, not usable under jit).

Example:
  >>> import numpy as np
  >>> import gradclip_core as gc
  >>> rule = gc.chain(gc.clip_by_value(10.0), gc.clip_by_global_norm(1.0))
  >>> grads = [np.array([30.0, 0.0], np.float32), np.array([0.0], np.float32)]
  >>> state = rule.init(grads)
  >>> grads, state, info = rule.update(grads, state)
  >>> grads[0].tolist(), float(info["clip_by_global_norm/norm"])
  ([1.0, 0.0], 10.0)
"""

from ._accumulate import accumulate
from ._effect import Clamp, Count, Effect, Keep, Mask, On, Replace, Scale, Skip, Then, ZeroNonfinite
from ._params import Params, on
from ._nonfinite import POLICIES
from ._rule import EmptyState, Rule, chain, from_config
from .backend._collective import Participants
from .backend._layout import LAYOUTS, layout_override
from .clip import (
    PER_EXAMPLE_SEMANTICS,
    SEMANTICS,
    AdaGCState,
    NormHistory,
    ZClipState,
    adaptive_clip,
    autoclip,
    clip_by_block_rms,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_value,
    clip_per_example,
    clip_update_norm,
    clippy,
    clip_update_rms,
    gaussian_noise,
    record_norms,
    skip_on_spike,
    SpikeState,
    feed_loss,
    needs_loss,
    skips_finite,
    suggest_threshold,
    unit_norms,
    zclip,
    adagc,
    monitor,
    MonitorState,
    update_ratio,
)
from .constraints import clip_weights, group_lasso, max_norm, mcp_threshold, min_max_norm, non_neg, soft_threshold, unit_norm
from .prune import (
    POOLINGS,
    ALLOCATIONS,
    SCORES,
    Allocation,
    Group,
    Score,
    activation_sumsq,
    blocks,
    erk_sparsities,
    erk_sparsity,
    lamp_scores,
    magnitude_score,
    movement_prune,
    movement_score,
    nm,
    owl_sparsities,
    owl_sparsity,
    per_output,
    random_score,
    score_prune,
    taylor_prune,
    taylor_score,
    units,
    wanda_prune,
    wanda_score,
    RELATIVE,
    ROUNDINGS,
    PruneState,
    block_magnitude_prune,
    Schedule,
    constant_schedule,
    global_magnitude_prune,
    ln_structured_prune,
    magnitude_prune,
    nm_prune,
    one_shot,
    iterative_sparsity,
    polynomial_schedule,
    random_prune,
    DSTState,
    drop_fractions,
    rigl,
    set_,
    sparse_evolutionary,
)

__version__ = "0.2.0"

__all__ = [
    "Rule",
    "EmptyState",
    "chain",
    "from_config",
    "accumulate",
    # effects (what a rule does to its arrays)
    "Effect",
    "Keep",
    "Scale",
    "Mask",
    "Clamp",
    "Count",
    "ZeroNonfinite",
    "Replace",
    "Then",
    "Skip",
    "On",
    # which arrays a rule acts on
    "Params",
    "on",
    # clipping rules
    "clip_by_value",
    "clip_by_norm",
    "clip_by_global_norm",
    "clip_by_block_rms",
    "clip_update_rms",
    "adaptive_clip",
    "unit_norms",
    # stateful adaptive clipping (state: NormHistory / ZClipState)
    "autoclip",
    "zclip",
    "NormHistory",
    "ZClipState",
    # per-array relative clipping after a global warm-up (state: AdaGCState)
    "adagc",
    "AdaGCState",
    # skipping steps on gradient-norm / loss spikes (state: SpikeState; the loss via feed_loss)
    "skip_on_spike",
    "SpikeState",
    "feed_loss",
    "needs_loss",
    "skips_finite",
    # update clipping (on the optimizer's update, Rule.on_update)
    "clippy",
    "clip_update_norm",
    # telemetry on device (norms before / after a rule, clip rate, update / weight ratio)
    "monitor",
    "MonitorState",
    "update_ratio",
    # choosing a threshold
    "record_norms",
    "suggest_threshold",
    # per-example (DP) clipping: a function, not a Rule
    "clip_per_example",
    "gaussian_noise",
    "PER_EXAMPLE_SEMANTICS",
    # pruning rules (state: PruneState, bool masks)
    "magnitude_prune",
    "global_magnitude_prune",
    "random_prune",
    "ln_structured_prune",
    "nm_prune",
    "block_magnitude_prune",
    "PruneState",
    # pruning schedules
    "Schedule",
    "one_shot",
    "constant_schedule",
    "polynomial_schedule",
    "iterative_sparsity",
    # pruning by any score, with a sparsity allocation and structured groups
    "score_prune",
    "wanda_prune",
    "movement_prune",
    "taylor_prune",
    "Score",
    "magnitude_score",
    "random_score",
    "wanda_score",
    "movement_score",
    "taylor_score",
    "activation_sumsq",
    "Allocation",
    "erk_sparsity",
    "owl_sparsity",
    "per_output",
    "erk_sparsities",
    "owl_sparsities",
    "lamp_scores",
    "Group",
    "blocks",
    "units",
    "nm",
    # dynamic sparse training
    "rigl",
    "sparse_evolutionary",
    "set_",
    "DSTState",
    "drop_fractions",
    # proximal shrinkage and weight constraints (project only)
    "soft_threshold",
    "mcp_threshold",
    "group_lasso",
    "clip_weights",
    "max_norm",
    "min_max_norm",
    "unit_norm",
    "non_neg",
    # layouts and distributed runs (the rest of the extension API: gradclip_core.backend)
    "layout_override",
    "Participants",
    # constants
    "SEMANTICS",
    "POLICIES",
    "LAYOUTS",
    "ROUNDINGS",
    "RELATIVE",
    "POOLINGS",
    "SCORES",
    "ALLOCATIONS",
]
