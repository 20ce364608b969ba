"""Gradient clipping rules: value, norm (global / per array), RMS, AGC, AutoClip, ZClip, AdaGC, per-example.

Every rule here acts on the gradients (``update``) and declares its effect: a global
scale (global-norm clip, AutoClip, ZClip), per-array scales (``clip_by_norm``, block
and update RMS, AdaGC), per-unit scales (AGC), a clamp (value clip), or nothing
(``record_norms``, ``monitor``: telemetry on device). Update clipping (``clippy``, ``clip_update_norm``) acts on the
optimizer's update instead (``Rule.on_update``). The public names are re-exported by :mod:`gradclip_core`.
"""

from ._adagc import AdaGCState, adagc
from ._agc import adaptive_clip, unit_norms
from ._autoclip import autoclip
from ._history import NormHistory
from ._monitor import MonitorState, monitor, update_ratio
from ._noise import gaussian as gaussian_noise
from ._norm import SEMANTICS, clip_by_global_norm, clip_by_norm
from ._per_example import PER_EXAMPLE_SEMANTICS, clip_per_example
from ._record import record_norms, suggest_threshold
from ._rms import clip_by_block_rms, clip_update_rms
from ._spike import SpikeState, feed_loss, needs_loss, skip_on_spike, skips_finite
from ._update import clip_update_norm, clippy
from ._value import clip_by_value
from ._zclip import ZClipState, zclip

__all__ = [
    "clip_by_value",
    "clip_by_norm",
    "clip_by_global_norm",
    "clip_by_block_rms",
    "clip_update_rms",
    "adaptive_clip",
    "unit_norms",
    "autoclip",
    "zclip",
    "NormHistory",
    "ZClipState",
    "adagc",
    "AdaGCState",
    "record_norms",
    "skip_on_spike",
    "SpikeState",
    "feed_loss",
    "needs_loss",
    "skips_finite",
    "suggest_threshold",
    "clip_per_example",
    "gaussian_noise",
    "PER_EXAMPLE_SEMANTICS",
    "SEMANTICS",
    "clippy",
    "clip_update_norm",
    "monitor",
    "MonitorState",
    "update_ratio",
]
