"""Pruning rules: magnitude (per array / global / in blocks), random, Ln-structured, N:M, scores, allocations,
groups, schedules.

Every rule here keeps bool keep-masks in a :class:`PruneState`; its ``update`` effect is
the mask (pruned weights get no gradient), its ``project`` effect recomputes the masks
on the schedule's steps with the one exact selection, :func:`prune_smallest`, and masks
the weights. The public names are re-exported by :mod:`gradclip_core`.
"""

from ._block import POOLINGS, block_magnitude_prune
from ._allocation import (ALLOCATIONS, Allocation, erk_sparsities, erk_sparsity, lamp_scores, owl_sparsities, owl_sparsity,
                          per_output)
from ._groups import Group, blocks, nm, units
from ._dst import DSTState, drop_fractions, rigl, set_, sparse_evolutionary
from ._magnitude import global_magnitude_prune, magnitude_prune
from ._random import random_prune
from ._schedule import RELATIVE, ROUNDINGS, Schedule, constant_schedule, iterative_sparsity, one_shot, polynomial_schedule
from ._scored import movement_prune, score_prune, taylor_prune, wanda_prune
from ._scores import SCORES, Score, activation_sumsq, magnitude_score, movement_score, random_score, taylor_score, wanda_score
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
    # scores, sparsity allocation, structured groups (issue 19)
    "score_prune",
    "wanda_prune",
    "movement_prune",
    "taylor_prune",
    "Score",
    "SCORES",
    "magnitude_score",
    "random_score",
    "wanda_score",
    "movement_score",
    "taylor_score",
    "activation_sumsq",
    "Allocation",
    "ALLOCATIONS",
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
    # dynamic sparse training (issue 19 item 4)
    "rigl",
    "sparse_evolutionary",
    "set_",
    "DSTState",
    "drop_fractions",
]
