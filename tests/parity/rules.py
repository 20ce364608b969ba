"""The rules every backend runs in the parity suite (zero-argument factories, by id)."""

from __future__ import annotations

import gradclip_core as gc

RULES = {
    "value": lambda: gc.clip_by_value(0.5),
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
}

# Element-wise value clips must match exactly, in every dtype.
EXACT = {"value", "value-lo-hi"}

# Rules whose float32 output composes several independently rounded reductions get a
# larger, documented ulp budget than DESIGN.md's 4: AGC divides the norm of a weight
# unit by the norm of its gradient (each +-1-2 ulp between frameworks), then scales.
ULP_BUDGET = {("agc", "float32"): 6}
