"""score_prune, random_prune and RigL / SET on shards: the masks of one process, bit for bit (NumPy, simulated participants).

Each participant is a thread holding a block of leading rows of every array (uneven
blocks, one of them empty: what FSDP2's ``Shard(0)`` gives a rank beyond the rows),
with a :class:`gradclip_core.backend.Participants` whose reductions are summed over the
threads. The weights lie on a grid of 0.5 or are all equal, so most selections have
ties at the threshold: the masks depend on the global flat index (participant order).
The same reducer runs the real engines in ``tests/distributed`` (torch gloo, JAX
``shard_map``); here every allocation, score and group is covered in a second.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import gradclip_core as gc
from gradclip_core.backend import Participants, collective

SHAPES = [(8, 6), (6,), (5, 4), (6, 2, 2), (4, 6)]
# rows of each array held by each of 3 participants (participant 2 empty for the last array)
SPLITS = {(8, 6): [3, 3, 2], (6,): [2, 2, 2], (5, 4): [1, 2, 2], (6, 2, 2): [2, 2, 2], (4, 6): [2, 2, 0]}


class Simulated:
    """``size`` participants in threads: ``all_reduce`` sums (or maxes) what every thread passes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=30)
        self.slots: list = [None] * size
        self.calls = 0

    def _reduce(self, rank: int, x, combine):
        self.slots[rank] = x
        self.barrier.wait()
        out = combine(list(self.slots))
        if rank == 0:
            self.calls += 1
        self.barrier.wait()
        return out

    def participants(self, rank: int) -> Participants:
        def reduce(xp, x, op):
            x = np.asarray(x)
            f = np.sum if op == "sum" else np.max
            return np.asarray(f(np.stack(self._reduce(rank, x, list)), axis=0)).astype(x.dtype)

        return Participants(reduce, size=self.size, index=lambda xp: rank,
                            total=lambda n: int(sum(self._reduce(rank, int(n), list))))

    def run(self, fn):
        """``fn(rank)`` in every participant's thread, under its collective; the results by rank."""
        out, errors = [None] * self.size, [None] * self.size

        def body(rank):
            try:
                with collective(self.participants(rank)):
                    out[rank] = fn(rank)
            except BaseException as e:  # noqa: BLE001  (re-raised below)
                errors[rank] = e
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)), None)
        if first is not None:
            raise first
        return out


def shard(arrays, rank):
    """Participant ``rank``'s rows of every array."""
    out = []
    for a in arrays:
        rows = SPLITS[tuple(a.shape)]
        start = sum(rows[:rank])
        out.append(a[start:start + rows[rank]])
    return out


def unshard(per_rank):
    """The full arrays from every participant's shards."""
    return [np.concatenate([r[i] for r in per_rank], axis=0) if per_rank[0][i].ndim else per_rank[0][i]
            for i in range(len(per_rank[0]))]  # (0-d: the placeholder of an array the rule leaves alone)


def weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    ws = [(np.round(rng.standard_normal(s) * 2) / 2).astype(np.float32) for s in SHAPES]
    ws[4] = np.ones(SHAPES[4], np.float32)  # all equal: every selection there is ties only
    return ws


def grads(step: int):
    rng = np.random.default_rng(100 + step)
    return [(np.round(rng.standard_normal(s) * 2) / 2).astype(np.float32) for s in SHAPES]


def run_rule(make, steps: int = 1, with_grads: bool = False):
    """``steps`` of ``update`` (when ``with_grads``) + ``project`` on shards and in one process: (masks, masks, info, info)."""

    def one(ws, gs_of):
        rule = make()
        state = rule.init(ws)
        info = {}
        for t in range(steps):
            if with_grads:
                _, state, _ = rule.update(gs_of(t), state, ws)
            ws, state, info = rule.project(ws, state)
        return [np.asarray(m) for m in state.masks], {k: float(v) for k, v in info.items()}

    ws = weights()
    ref_masks, ref_info = one(ws, grads)
    sim = Simulated(3)
    res = sim.run(lambda r: one(shard(ws, r), lambda t: shard(grads(t), r)))
    return unshard([m for m, _ in res]), ref_masks, res[0][1], ref_info, sim.calls


CASES = {
    "erk": lambda: gc.score_prune(0.5, allocation="erk"),
    "uniform_random": lambda: gc.score_prune(0.4, score="random", params="all"),
    "global_limits": lambda: gc.score_prune(0.6, allocation="global", min_sparsity=0.2, max_sparsity=0.7),
    "owl": lambda: gc.score_prune(0.5, allocation="owl"),
    "wanda_axis1": lambda: gc.wanda_prune(0.5, act_norms=[[1.0, 2.0, 0.5, 4.0, 1.0, 3.0][:s[1]] for s in
                                                          [SHAPES[0], SHAPES[2], SHAPES[3], SHAPES[4]]], axis=1),
    "wanda_axis0_erk": lambda: gc.wanda_prune(0.5, act_norms=[list(np.arange(1.0, s[0] + 1)) for s in
                                                              [SHAPES[0], SHAPES[2], SHAPES[3], SHAPES[4]]],
                                              axis=0, allocation="erk"),
    "remaining_poly": lambda: gc.score_prune(0.3, relative_to="remaining",
                                             schedule=gc.constant_schedule(0, -1, 1)),
    "nm_last_axis": lambda: gc.score_prune(0.5, group=gc.nm(1, 2, axis=-1)),
    "blocks_1x2": lambda: gc.score_prune(0.5, allocation="global", group=gc.blocks(1, 2, "max")),
    "units_rows": lambda: gc.score_prune(0.5, group=gc.units("out_first")),
    "per_output_rows": lambda: gc.score_prune(0.5, allocation=gc.per_output("out_first")),
    "random_prune": lambda: gc.random_prune(0.5, seed=3, params="all"),
    "random_prune_global": lambda: gc.random_prune(0.5, scope="global", seed=3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_score_prune_on_shards_equals_one_process(case):
    steps = 3 if case == "remaining_poly" else 1
    masks, ref, info, ref_info, _ = run_rule(CASES[case], steps)
    assert all(np.array_equal(a, b) for a, b in zip(masks, ref, strict=True)), case
    assert any(not m.all() for m in ref), case  # the rule pruned something
    for k, v in ref_info.items():
        assert info[k] == pytest.approx(v, abs=1e-6), (case, k)


@pytest.mark.parametrize("score", ["taylor", "movement"])
def test_gradient_scores_on_shards_equal_one_process(score):
    make = lambda: gc.score_prune(0.5, score=score, allocation="erk", schedule=gc.one_shot(2))  # noqa: E731
    masks, ref, _, _, _ = run_rule(make, steps=3, with_grads=True)
    assert all(np.array_equal(a, b) for a, b in zip(masks, ref, strict=True))
    assert any(not m.all() for m in ref)


@pytest.mark.parametrize("grow", ["gradient", "random"])
@pytest.mark.parametrize("init_masks", ["random", "magnitude"])
def test_rigl_and_set_on_shards_equal_one_process(grow, init_masks):
    make = lambda: gc.rigl(0.5, drop_fraction=0.5, update_every=1, end_step=10, grow=grow,  # noqa: E731
                           init_masks=init_masks, params="all")
    masks, ref, info, ref_info, _ = run_rule(make, steps=3, with_grads=True)
    assert all(np.array_equal(a, b) for a, b in zip(masks, ref, strict=True))
    assert info["sparsity"] == pytest.approx(ref_info["sparsity"], abs=1e-7)
    # the connectivity moved: the masks after 3 steps (2 updates) differ from the initial ones
    init = [np.asarray(m) for m in make().init(weights()).masks]
    assert any(not np.array_equal(a, b) for a, b in zip(init, ref))


def test_rigl_collectives_per_update_step():
    """Per connectivity update: 2 selections per array (drop, grow), each 2 histogram passes + 1 tie gather."""
    make = lambda: gc.rigl(0.5, update_every=1, end_step=10, init_masks="magnitude")  # noqa: E731
    ws = weights()
    per_rank = [shard(ws, r) for r in range(3)]
    gs = [shard(grads(1), r) for r in range(3)]
    states = [make().init(w) for w in per_rank]  # (no collective active: the local init is not compared here)
    sim = Simulated(3)
    rule = make()

    def step(rank):
        _, st, _ = rule.project(per_rank[rank], states[rank])
        before = sim.calls
        rule.update(gs[rank], st, per_rank[rank])
        return sim.calls - before

    counts = sim.run(step)
    n_weights = sum(len(s) >= 2 for s in SHAPES)
    # the full shapes (one integer sum per array), 2 selections per array of (passes + 1) collectives, the
    # regrown count (16-bit digits: 2 passes over the 31-bit keys)
    passes = 2
    assert counts[0] == n_weights + 2 * n_weights * (passes + 1) + 1, counts


REFUSED = {
    "lamp": (lambda: gc.score_prune(0.5, allocation="lamp"), "allocation='lamp'"),
    "nm_rows": (lambda: gc.score_prune(0.5, group=gc.nm(2, 4, axis=0)), "axis 0"),
    "units_cols": (lambda: gc.score_prune(0.5, group=gc.units("out_last")), "unit norms reduce over axis 0"),
    "blocks_rows": (lambda: gc.score_prune(0.5, group=gc.blocks(2, 2)), "not a multiple of 2"),
    "per_output_last": (lambda: gc.score_prune(0.5, allocation=gc.per_output("out_last")), "output axis"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_crosses_shards_is_refused_by_name(case):
    make, words = REFUSED[case]
    with pytest.raises(ValueError, match="sharded arrays") as e:
        run_rule(make)
    assert words in str(e.value)


def test_split_along_another_axis_is_refused_for_positions_and_shapes():
    ws = [np.ones((4, 4), np.float32)]
    for make, what in ((lambda: gc.score_prune(0.5, allocation="erk"), "score_prune"),
                       (lambda: gc.rigl(0.5), "rigl")):
        p = Participants(lambda xp, x, op: x, size=1, index=lambda xp: 0, total=lambda n: n, leading=False)
        rule = make()
        with collective(p), pytest.raises(ValueError, match="leading rows") as e:
            rule.project(ws, rule.init(ws))
        assert what in str(e.value)
