"""What per-array pruning needs on shards: full shapes and each shard's place in its array.

Under a collective (:mod:`gradclip_core.backend._collective`) every array a rule sees
is a block of leading rows of the full array, in participant order. Per-array counts
(``round_half_even(s_i * n_i)``), ERK allocations and the global flat index of the
random hash need the *full* array, which these helpers rebuild:

- :func:`full_shape` (from :mod:`gradclip_core.backend._collective`, which the unit-wise
  rules share): ``(sum of the rows over participants,) + shape[1:]`` (one
  :func:`static_total` per array: a host-side integer sum in torch, ``n * size`` in JAX);
- :func:`flat_offsets`: the flat index of each shard's first element in its full array
  (one :func:`all_gather` of the local sizes for all arrays together);
- :func:`refuse_split`: a clear error where a rule needs leading-row shards and a
  reducer says some arrays are split along another axis.

Without a collective they return the local shapes and zero offsets (no communication).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..backend._collective import active, all_gather, full_shape, participant_index, split_on_leading_axis
from ..backend._namespace import device_kw
from ..backend._primitives import size

__all__ = ["full_shape", "flat_offsets", "refuse_split"]


def refuse_split(what: str) -> None:
    """Raise where a reducer has arrays split along another axis than the leading one (``what`` needs rows)."""
    if active() and not split_on_leading_axis():
        raise ValueError(f"{what} needs every shard to be a block of leading rows (Shard(0)); some arrays are split "
                         "along another axis (Shard(1), tensor parallel): shard them by rows, or gather them")


def flat_offsets(xp: Any, arrays: Sequence[Any]) -> list:
    """The global flat index of each shard's first element (0-d int32 arrays; ints ``0`` without a collective)."""
    if not active() or not arrays:
        return [0] * len(arrays)
    kw = device_kw(list(arrays))
    sizes = xp.asarray([size(a) for a in arrays], dtype=xp.int32, **kw)
    table = all_gather(xp, sizes)  # (participants, arrays): one collective
    me = xp.astype(xp.asarray(participant_index(xp, "the global flat index of a shard")), xp.int32)
    earlier = xp.arange(table.shape[0], dtype=xp.int32, **kw) < me
    before = xp.sum(xp.where(xp.reshape(earlier, (-1, 1)), table, xp.zeros_like(table)), axis=0)
    return [before[i] for i in range(len(arrays))]
