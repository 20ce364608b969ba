"""Pruning rules: magnitude (per array / global / in blocks), random, Ln-structured, N:M, and their schedules.

Every rule here keeps bool keep-masks in a :class:`PruneState`; its ``update`` effect is
the mask (pruned weights get no gradient), its ``project`` effect recomputes the masks
on the schedule's steps with the one exact selection, :func:`prune_smallest`, and masks
the weights. The public names are re-exported by :mod:`gradclip_core`.
"""

from ._block import POOLINGS, block_magnitude_prune
from ._magnitude import global_magnitude_prune, magnitude_prune
from ._random import random_prune
from ._schedule import RELATIVE, ROUNDINGS, Schedule, constant_schedule, iterative_sparsity, one_shot, polynomial_schedule
from ._select import prune_smallest
from ._state import PruneState, sparsity_info
from ._structured import ln_structured_prune, nm_prune

__all__ = [
    "magnitude_prune",
    "global_magnitude_prune",
    "random_prune",
    "ln_structured_prune",
    "nm_prune",
    "block_magnitude_prune",
    "POOLINGS",
    "PruneState",
    "sparsity_info",
    "prune_smallest",
    "Schedule",
    "one_shot",
    "constant_schedule",
    "polynomial_schedule",
    "ROUNDINGS",
    "RELATIVE",
    "iterative_sparsity",
]
