"""The rules every backend runs in the parity suite (zero-argument factories, by id)."""

from __future__ import annotations

import gradclip_core as gc

# Wanda's input-channel norms for the weights of cases.SHAPES (rank >= 2: (6, 4), (3, 6), (0, 3), (2, 3, 3, 3); axis 1)
WANDA_NORMS = [[0.5, 2.0, 1.0, 0.25], [1.0, 3.0, 0.5, 0.5, 2.0, 1.5], [1.0, 1.0, 1.0], [2.0, 0.5, 1.0]]

RULES = {
    "value": lambda: gc.clip_by_value(0.5, info="full"),
    "value-basic": lambda: gc.clip_by_value(0.5),
    "value-lo-hi": lambda: gc.clip_by_value(lo=-0.25, hi=1.0),
    "norm": lambda: gc.clip_by_norm(1.0),
    "norm-torch": lambda: gc.clip_by_norm(1.0, semantics="torch"),
    "norm-optax": lambda: gc.clip_by_norm(1.0, semantics="optax"),
    "norm-keras": lambda: gc.clip_by_norm(1.0, semantics="keras"),
    "global": lambda: gc.clip_by_global_norm(1.0),
    "global-ord1": lambda: gc.clip_by_global_norm(1.0, ord=1),
    "global-inf": lambda: gc.clip_by_global_norm(1.0, ord="inf"),
    "global-torch": lambda: gc.clip_by_global_norm(1.0, semantics="torch"),
    "global-optax": lambda: gc.clip_by_global_norm(1.0, semantics="optax"),
    "global-keras": lambda: gc.clip_by_global_norm(1.0, semantics="keras"),
    "global-zero": lambda: gc.clip_by_global_norm(1.0, nonfinite="zero"),
    "global-skip": lambda: gc.clip_by_global_norm(1.0, nonfinite="skip"),
    "block-rms": lambda: gc.clip_by_block_rms(0.5),
    "update-rms": lambda: gc.clip_update_rms(0.5),
    "agc": lambda: gc.adaptive_clip(0.05, axis="out_first"),
    "chain": lambda: gc.chain(gc.clip_by_value(2.0, nonfinite="zero"), gc.clip_by_global_norm(1.0)),
    # stateful adaptive clipping (ring buffers / EMA in the state; small windows for 3 steps)
    "autoclip": lambda: gc.autoclip(50.0, history=4),
    "autoclip-prev-torch": lambda: gc.autoclip(75.0, history=2, include_current=False, semantics="torch"),
    "zclip": lambda: gc.zclip(alpha=0.5, z_thresh=1.0, warmup_steps=1),
    "zclip-pct-skip": lambda: gc.zclip(
        alpha=0.9, z_thresh=0.5, warmup_steps=2, mode="percentile", max_norm=5.0, nonfinite="skip"
    ),
    "record-norms": lambda: gc.record_norms(4),
    # AdaGC: one global-clip warm-up step, then per-array relative clipping (gamma: an (n,) state vector)
    "adagc": lambda: gc.adagc(beta=0.5, warmup_steps=1),
    "adagc-skip": lambda: gc.adagc(beta=0.9, warmup_steps=2, lambda_abs=2.0, eps=1e-8, nonfinite="skip"),
    # pruning (masks in the state, compared bit for bit) and weight rules (project only)
    "prune-mag": lambda: gc.magnitude_prune(0.5),
    "prune-mag-keep": lambda: gc.magnitude_prune(0.3, rounding="keep", schedule=gc.constant_schedule(0, -1, 2)),
    "prune-threshold": lambda: gc.magnitude_prune(threshold=0.5),
    "prune-global": lambda: gc.global_magnitude_prune(0.5),
    "prune-global-norm": lambda: gc.global_magnitude_prune(0.4, normalize=True),
    "prune-global-poly": lambda: gc.global_magnitude_prune(
        0.8, schedule=gc.polynomial_schedule(0, 2, 1, initial_sparsity=0.2)
    ),
    "prune-random": lambda: gc.random_prune(0.5, seed=7, scope="global"),
    "prune-ln": lambda: gc.ln_structured_prune(0.5, ord=2, axis="out_first"),
    "prune-nm": lambda: gc.nm_prune(keep=1, group=2, axis=0),
    # tfmot's presets (issue 18): its float32 count and step numbering, blocks, padded N:M groups
    "prune-mag-tfmot": lambda: gc.magnitude_prune(
        0.8, rounding="tfmot", schedule=gc.polynomial_schedule(0, 2, 1, initial_sparsity=0.3, first_step=1)
    ),
    "prune-block": lambda: gc.block_magnitude_prune(0.5, (2, 2), rounding="tfmot"),
    "prune-block-max": lambda: gc.block_magnitude_prune(0.4, (1, 3), pooling="max"),
    "prune-nm-pad": lambda: gc.nm_prune(keep=2, group=4, axis=-2, remainder="pad"),
    # issue 19: pruning scores, sparsity allocation, structured groups (masks bit for bit)
    "prune-wanda": lambda: gc.wanda_prune(0.5, act_norms=WANDA_NORMS, axis=1),
    "prune-wanda-rows": lambda: gc.wanda_prune(0.5, act_norms=WANDA_NORMS, axis=1, allocation=gc.per_output(0)),
    "prune-wanda-nm": lambda: gc.score_prune(0.5, score=gc.wanda_score(WANDA_NORMS, axis=1), group=gc.nm(1, 2, axis=1)),
    "prune-movement": lambda: gc.movement_prune(0.5, allocation="global", schedule=gc.constant_schedule(0, -1, 1)),
    "prune-taylor": lambda: gc.taylor_prune(0.5, schedule=gc.constant_schedule(0, -1, 2)),
    "prune-random-erk": lambda: gc.score_prune(0.6, score=gc.random_score(5), allocation="erk"),
    "prune-lamp": lambda: gc.score_prune(0.5, allocation="lamp"),
    "prune-owl": lambda: gc.score_prune(0.5, score=gc.wanda_score(WANDA_NORMS, axis=1), allocation=gc.owl_sparsity(1.5, 0.1)),
    "prune-global-minmax": lambda: gc.score_prune(0.6, allocation="global", min_sparsity=0.3, max_sparsity=0.8),
    "prune-blocks": lambda: gc.score_prune(0.5, group=gc.blocks(2, 2)),
    "prune-blocks-max": lambda: gc.score_prune(0.5, allocation="global", group=gc.blocks(1, 3, "max")),
    "prune-heads": lambda: gc.score_prune(0.5, group=gc.units("out_first", size=3)),
    "prune-cols": lambda: gc.score_prune(0.5, group=gc.units((0,), ord=1)),
    # issue 19 item 4: dynamic sparse training (update_every=1: the connectivity changes at steps 1 and 2)
    "prune-rigl": lambda: gc.rigl(0.5, allocation="uniform", drop_fraction=0.5, update_every=1, end_step=3),
    "prune-set": lambda: gc.sparse_evolutionary(0.5, drop_fraction=0.5, update_every=1, end_step=3, seed=3),
    "group-lasso": lambda: gc.group_lasso(0.5, axis="out_first"),
    "soft-threshold": lambda: gc.soft_threshold(0.25),
    "mcp": lambda: gc.mcp_threshold(0.25, 3.0),
    "clip-weights": lambda: gc.clip_weights(0.5, info="full"),
    "non-neg": lambda: gc.non_neg(info="full"),
    "max-norm": lambda: gc.max_norm(1.0, axis="out_first"),
    "min-max-norm": lambda: gc.min_max_norm(0.5, 1.0, rate=0.5, axis="out_first"),
    "unit-norm": lambda: gc.unit_norm(axis="out_first"),
    # update clipping (rule.on_update: the optimizer's update, after the step)
    "clippy": lambda: gc.clippy(0.1, 1e-2),
    "update-norm": lambda: gc.clip_update_norm(1.0, history=2),
    # telemetry (issue 17 item 4): norms before / after, clip rate (EMA state); the AGC one
    # takes the post-clip norm from the clipped arrays (per-unit factors), the other from the scale
    "monitor": lambda: gc.monitor(gc.clip_by_global_norm(1.0), decay=0.5),
    "monitor-agc": lambda: gc.monitor(gc.adaptive_clip(0.05, axis="out_first"), decay=0.9),
    # (global ratio only: in torch/Keras the update is recovered as w_new - w_old, whose rounding
    # a small array's own ratio does not average out; per-array ratios: tests/core/test_monitor.py)
    "update-ratio": lambda: gc.update_ratio(),
}

# Rules run on a few cases only (name -> case names), to keep the suite's time: the issue-19
# pruning rules share the selection driver with the rules above (which run every case); these
# cover their scores, allocations and groups in each dtype, with NaN/Inf weights once.
FEW_CASES = ("random-float32", "nonfinite-bfloat16", "zeros-float16")
CASES_FOR = {r: FEW_CASES for r in RULES if r.startswith("prune-") and r not in (
    "prune-mag", "prune-mag-keep", "prune-threshold", "prune-global", "prune-global-norm", "prune-global-poly",
    "prune-random", "prune-ln", "prune-nm")}
CASES_FOR["group-lasso"] = FEW_CASES
# Keras (three backends, each a model.fit per case: the slowest part of the suite): one case per rule,
# for the rules whose Keras path differs (gradients into the score through the Optimizer, the TF
# namespace's sort/take/flip/concat); the other issue-19 rules share those paths.
KERAS_CASES_FOR = {**{r: () for r in CASES_FOR}, **{r: ("random-float32",) for r in (
    "prune-wanda", "prune-wanda-rows", "prune-movement", "prune-random-erk", "prune-lamp", "prune-owl", "prune-blocks", "prune-heads",
    "group-lasso", "prune-rigl", "prune-set")}}

# Element-wise value clips, masks and the element-wise weight rules must match exactly,
# in every dtype (masks are also compared directly, see reference.masks_of).
EXACT = {
    "value",
    "value-basic",
    "value-lo-hi",
    "prune-mag",
    "prune-mag-keep",
    "prune-threshold",
    "prune-global",
    "prune-global-norm",
    "prune-global-poly",
    "prune-random",
    "prune-ln",
    "prune-nm",
    "prune-mag-tfmot",
    "prune-block",
    "prune-block-max",
    "prune-nm-pad",
    "prune-wanda",
    "prune-wanda-rows",
    "prune-wanda-nm",
    "prune-movement",
    "prune-taylor",
    "prune-random-erk",
    "prune-lamp",
    "prune-owl",
    "prune-global-minmax",
    "prune-blocks",
    "prune-blocks-max",
    "prune-heads",
    "prune-cols",
    "prune-rigl",
    "prune-set",
    "soft-threshold",
    "mcp",
    "clip-weights",
    "non-neg",
}

# Rules whose float32 output composes several independently rounded reductions get a
# larger, documented ulp budget than DESIGN.md's 4: AGC divides the norm of a weight
# unit by the norm of its gradient (each +-1-2 ulp between frameworks), then scales.
ULP_BUDGET = {("agc", "float32"): 6, ("monitor-agc", "float32"): 6}
# monitor's post-clip norm of a rule with per-unit factors (AGC) is the norm of the clipped
# arrays; in bfloat16/float16 XLA may fuse the multiply into the norm without rounding the
# products to the array dtype (as WEIGHT_BUDGET below): that info value is compared within
# this many epsilons of the case dtype, relatively (float32: the usual ulp budget).
INFO_RTOL = {("monitor-agc", "post_norm"): 2}

# Weight budget (ulp of the operands) per (backend, rule) on top of the rule's tolerance:
# gradclip_optax.wrap returns ``proj(p + u) - p`` and optax adds it back (documented in
# wrap()): exact when the projected weight is 0 (masks) or unchanged, but a weight that
# the rule *moves* (clipped, shrunk) is rounded twice more. The rule's own output and
# the masks stay exact; only the optax weights of these rules get 2 ulp.
WEIGHT_BUDGET = {("optax", r): 2 for r in ("soft-threshold", "mcp", "group-lasso", "clip-weights", "max-norm", "min-max-norm", "unit-norm")}
# The norm constraints' per-unit factor is cast to the weight dtype before it is applied (the
# numerics contract); under XLA (optax above, Keras on JAX) a fused bf16/fp16 multiply may skip
# that rounding (excess precision), so the projected weight can differ by an ulp of itself.
WEIGHT_BUDGET.update({("keras_jax", r): 2 for r in ("max-norm", "min-max-norm", "unit-norm")})
# Clippy's per-array scale under jit: XLA may fuse optax.apply_updates' p + s * u into one
# multiply-add (no rounding of s * u in bf16/fp16), so a clipped weight can be a fraction of an
# ulp of the operands off, and the next steps' bounds (relative to the weights) follow.
WEIGHT_BUDGET.update({(b, "clippy"): 1 for b in ("optax", "keras_jax")})

# Update clipping (rule.on_update) in torch and Keras sees the optimizer's update as the weights'
# difference w_new - w_old (their optimizers write the step in place), which is the update up to the
# rounding of w_new: half an ulp of the weight per element, a relative error of ulp(w) / |delta|.
# The weights stay within the usual budget (the rule scales that error down with the update), but a
# norm or scale of the update can be off by more than 4 float32 ulp (by ~2**-9 relative in bfloat16):
# their info is compared relatively, within RECOVERED_UPDATE_RTOL epsilons of the case dtype (a
# "clipped" flag may flip where its scale agrees: a norm on the threshold), and not at all once a
# weight is NaN/Inf (w_new - w_old is NaN there, whatever the optimizer's update was).
RECOVERED_UPDATE = {(b, r) for b in ("torch", "keras_tensorflow", "keras_jax", "keras_torch")
                    for r in ("clippy", "update-norm", "update-ratio")}
RECOVERED_UPDATE_RTOL = 16

# The contract (test_contract.py): stateful rules whose state must survive a checkpoint
# (ring buffer, EMA statistics, recorded norms in a chain, a pruning schedule with its
# masks and step count, a skipping rule's state), and rules that skip non-finite steps
# (alone, with state, and inside a chain, where the flag is "clip_by_global_norm/skipped").
RESUME = {
    "autoclip": RULES["autoclip"],
    "zclip": RULES["zclip"],
    "record-norms-chain": lambda: gc.chain(gc.record_norms(4), gc.clip_by_global_norm(1.0)),
    "prune-scheduled": lambda: gc.global_magnitude_prune(
        0.8, schedule=gc.polynomial_schedule(0, 4, 1, initial_sparsity=0.2)
    ),
    "zclip-pct-skip": RULES["zclip-pct-skip"],
    # accumulated movement scores (PruneState.scores) carried across the checkpoint
    "prune-movement-scheduled": lambda: gc.movement_prune(
        0.8, allocation="global", schedule=gc.polynomial_schedule(0, 4, 1, initial_sparsity=0.2)
    ),
    "adagc": RULES["adagc"],
    "adagc-skip": RULES["adagc-skip"],
    "update-norm": lambda: gc.clip_update_norm(1.0, history=4),
    "monitor": RULES["monitor"],
    # RigL: masks, regrown elements and the step count carried across the checkpoint
    "prune-rigl": lambda: gc.rigl(0.5, allocation="uniform", drop_fraction=0.5, update_every=1, end_step=5),
}
SKIP = {
    "global-skip": RULES["global-skip"],
    "zclip-pct-skip": RULES["zclip-pct-skip"],
    "chain-skip": lambda: gc.chain(gc.clip_by_global_norm(1.0, nonfinite="skip"), gc.clip_by_value(0.05)),
    "adagc-skip": RULES["adagc-skip"],
}

# Skip on spike (issue 17): the grad-norm variant. Three steps: the first two fill the
# window (warm-up 2), the third is tested (the "random" case's 10x step is skipped, the
# "nonfinite" case's NaN and Inf steps always). In the contract, the resume case skips the
# 10x step right after the cut and the last step, from the restored window (the chain's
# clip acts after the cut too); a skipped step leaves the window as checkpointed.
RULES["skip-spike"] = lambda: gc.skip_on_spike(window=4, k=1.0, warmup=2)
RESUME["skip-spike-chain"] = lambda: gc.chain(gc.skip_on_spike(window=4, k=1.0, warmup=2), gc.clip_by_global_norm(1.0))
