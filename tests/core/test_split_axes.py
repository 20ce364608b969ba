"""Unit-wise rules on shards split along any axis (``Participants(axes=...)``, ``split_axes``).

The participants are simulated in one process: each runs the rule on its shards with a
reducer that answers every collective with the sum (max) over participants of what they
passed to that collective in the previous round; a collective's input depends only on
the answers of the earlier ones, so the rounds reach the true collective run (checked:
the inputs stop changing). Results, gathered, are compared with the rule on the full
arrays in one process: factors within 4 ulp (partial sums added in another order),
``clipped_fraction`` equal.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradclip_core as gc
import gradclip_core.backend as gcb
from array_api_compat import numpy as xp

P = 2  # participants


def _reducer(p: int, axes: list, prev: list | None, rec: list, size: int = P, offsets=None) -> gcb.Participants:
    calls = [0]

    def reduce(_xp, x, op):
        k = calls[0]
        calls[0] += 1
        rec.append(np.asarray(x))
        if prev is None or any(k >= len(r) or r[k].shape != np.shape(x) for r in prev):
            return x
        vals = np.stack([r[k] for r in prev])
        return xp.asarray((vals.sum(axis=0) if op == "sum" else vals.max(axis=0)).astype(np.asarray(x).dtype))

    return gcb.Participants(reduce, size=size, index=lambda _xp: p,
                            total=lambda n: int(reduce(xp, np.array(n), "sum")), axes=axes, offsets=offsets)


def simulate(call, shards: list, axes: list, offsets: list | None = None, calls: list | None = None) -> list:
    """``call(arrays)`` on each participant's ``shards[p]`` under a simulated collective.

    ``offsets``: per participant, its ``Participants(offsets=...)``; ``calls``: if given,
    receives the number of collectives each participant made.
    """
    prev = None
    for _ in range(8):
        recs, outs = [], []
        for p in range(len(shards)):
            rec: list = []
            with gcb.collective(_reducer(p, axes, prev, rec, len(shards), None if offsets is None else offsets[p])):
                outs.append(call([xp.asarray(a) for a in shards[p]]))
            recs.append(rec)
        if prev is not None and all(len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
                                    for a, b in zip(recs, prev)):
            if calls is not None:
                calls[:] = [len(r) for r in recs]
            return outs
        prev = recs
    raise AssertionError("the simulated collectives did not settle")


def split(full: list, axes: list) -> list:
    """Per participant, its shard of every array (``None``: replicated, held by participant 0)."""
    out = [[] for _ in range(P)]
    for x, a in zip(full, axes):
        for p in range(P):
            if a is None:
                out[p].append(x if p == 0 else x[:0] if x.ndim else x.reshape(1)[:0])
            else:
                out[p].append(np.array_split(x, P, axis=a)[p])
    return out


def gather(parts: list, axes: list) -> list:
    return [parts[0][i] if a is None else np.concatenate([np.asarray(q[i]) for q in parts], axis=a)
            for i, a in enumerate(axes)]


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape
    return int(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)).max(initial=0))


SHAPES = [(6, 8), (6,), (8, 6), (4, 2), (3, 4, 4)]
# tensor parallel Rowwise (dim 1), a replicated bias, Colwise / FSDP (dim 0), dims 1 and 2
AXES = [1, None, 0, 1, 2]


def _arrays(seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    w = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    g = [(rng.standard_normal(s) * rng.choice([0.01, 1.0], size=s[:1] + (1,) * (len(s) - 1))).astype(np.float32)
         for s in SHAPES]
    return w, g


def _agc_case(rule) -> tuple[int, list, list]:
    w, g = _arrays()
    ref, _, ref_info = rule.update([xp.asarray(x) for x in g], (), [xp.asarray(x) for x in w])
    ws, gs = split(w, AXES), split(g, AXES)
    outs = simulate(lambda arrays: rule.update(arrays[len(w):], (), arrays[:len(w)]),
                    [ws[p] + gs[p] for p in range(P)], AXES + AXES)
    got = gather([o[0] for o in outs], AXES)
    worst = max(ulps(a, b) for a, b in zip(got, ref))
    return worst, [float(o[2]["clipped_fraction"]) for o in outs], [float(ref_info["clipped_fraction"])] * P


@pytest.mark.parametrize("axis", ["out_first", "out_last", "optax", (0,), lambda shape: (len(shape) - 1,)],
                         ids=["out_first", "out_last", "optax", "axis0", "callable"])
def test_agc_split_any_axis_equals_one_process(axis) -> None:
    rule = gc.adaptive_clip(0.05, axis=axis)
    worst, fractions, want = _agc_case(rule)
    assert worst <= 4, worst
    assert 0.0 < want[0] < 1.0  # (some units clipped, some not)
    assert fractions == want


def test_optax_layout_sees_the_full_shape_along_the_split_axis() -> None:
    # a (4, 2) array split on dim 1 is (4, 1) per shard: squeezed 1-D there (one norm for the
    # whole shard) but 2-D in full (norms over axis 0, one per column): only the full shape is right
    g = [np.array([[1.0, 0.001], [1.0, 0.001], [1.0, 0.001], [1.0, 0.001]], np.float32)]
    w = [np.ones((4, 2), np.float32)]
    rule = gc.adaptive_clip(0.1, axis="optax")
    ref, _, _ = rule.update([xp.asarray(g[0])], (), [xp.asarray(w[0])])
    outs = simulate(lambda a: rule.update(a[1:], (), a[:1]), [split(w, [1])[p] + split(g, [1])[p] for p in range(P)],
                    [1, 1])
    got = gather([o[0] for o in outs], [1])[0]
    assert ulps(got, ref[0]) <= 4
    assert got[0, 1] == np.float32(0.001)  # the small column is not clipped (a whole-shard norm would clip it)


@pytest.mark.parametrize("make", [lambda: gc.max_norm(1.5, axis=0), lambda: gc.max_norm(1.5, axis="out_first"),
                                  lambda: gc.min_max_norm(1.0, 2.0, axis=0), lambda: gc.unit_norm(axis=1),
                                  lambda: gc.group_lasso(1.5, axis="out_first")],
                         ids=["max_norm_axis0", "max_norm_out_first", "min_max_norm", "unit_norm", "group_lasso"])
def test_norm_constraints_split_any_axis(make) -> None:
    rule = make()
    w, _ = _arrays(1)
    w = [x for x in w if x.ndim == 2]
    axes = [1, 0, 1]
    ref, _, _ = rule.project([xp.asarray(x) for x in w], ())
    outs = simulate(lambda a: rule.project(a, ()), split(w, axes), axes)
    got = gather([o[0] for o in outs], axes)
    assert max(ulps(a, b) for a, b in zip(got, ref)) <= 4
    # without the collective each shard would use its own partial norms: a real difference
    local = gather([rule.project([xp.asarray(a) for a in s], ())[0] for s in split(w, axes)], axes)
    assert max(ulps(a, b) for a, b in zip(local, ref)) > 1000


def test_restricted_rule_sees_its_arrays_split_axes() -> None:
    """``gc.on``: the inner rule's array ``i`` is array ``idx[i]``: its split axis too (nested twice)."""
    w, g = _arrays(2)
    inner = gc.adaptive_clip(0.05, axis="out_first")
    # nested: the outer selection leaves out array 2; the inner one (its arrays named by their
    # positions among the outer's: "1" is array 1 of all) sees arrays 0, 3, 4 as its 0, 1, 2
    rule = gc.on(gc.chain(gc.on(inner, gc.Params(exclude=["1"])), gc.clip_by_value(100.0)), gc.Params(exclude=["2"]))
    state = rule.init([xp.asarray(x) for x in w])
    ref, _, ref_info = rule.update([xp.asarray(x) for x in g], state, [xp.asarray(x) for x in w])
    assert np.array_equal(ref[1], g[1]) and np.array_equal(ref[2], g[2])
    assert not np.array_equal(ref[0], g[0]) and not np.array_equal(ref[3], g[3])  # (array 3: split on dim 1)
    ws, gs = split(w, AXES), split(g, AXES)
    outs = simulate(lambda a: rule.update(a[len(w):], state, a[:len(w)]), [ws[p] + gs[p] for p in range(P)],
                    AXES + AXES)
    got = gather([o[0] for o in outs], AXES)
    assert max(ulps(a, b) for a, b in zip(got, ref)) <= 4
    key = "adaptive_clip/clipped_fraction"
    assert [float(o[2][key]) for o in outs] == [float(ref_info[key])] * P
    ref, _, _ = inner.update([xp.asarray(x) for x in g], (), [xp.asarray(x) for x in w])  # (all arrays)
    # the same selection by name (a nested array_names block; the index map is the same one)
    named = gc.on(inner, gc.Params(include=["p0", "p1", "p2", "p3", "p4"], exclude=["p1"]))
    with gcb.array_names([f"p{i}" for i in range(len(w))]):
        outs = simulate(lambda a: named.update(a[len(w):], (), a[:len(w)]), [ws[p] + gs[p] for p in range(P)],
                        AXES + AXES)
    got = gather([o[0] for o in outs], AXES)
    assert max(ulps(a, b) for i, (a, b) in enumerate(zip(got, ref)) if i != 1) <= 4 and np.array_equal(got[1], g[1])


def test_split_axes_default_and_bad_input() -> None:
    assert gcb.split_axes(3) == (0,)  # no reducer
    p = gcb.Participants(lambda _xp, x, op: x, size=2, index=lambda _xp: 0, total=lambda n: n, axes=[None, 2, (1, 0)])
    assert p.axes == ((0,), (2,), (0, 1)) and p.leading is False
    assert gcb.Participants(lambda _xp, x, op: x, size=2, index=lambda _xp: 0, total=lambda n: n, axes=[0]).leading
    with gcb.collective(p):
        assert [gcb.split_axes(i) for i in range(3)] == [(0,), (2,), (0, 1)]
        with pytest.raises(ValueError, match="axes= has 3 entries, but the rule sees array 3"):
            gcb.split_axes(3)
    with pytest.raises(ValueError, match=r"axes\[1\] must be None, an axis"):
        gcb.Participants(lambda _xp, x, op: x, size=2, index=lambda _xp: 0, total=lambda n: n, axes=[0, -1])
    with pytest.raises(ValueError, match=r"axes\[0\] must be None, an axis"):
        gcb.Participants(lambda _xp, x, op: x, size=2, index=lambda _xp: 0, total=lambda n: n, axes=[(1, 1)])
    with pytest.raises(ValueError, match="leading=True contradicts axes"):
        gcb.Participants(lambda _xp, x, op: x, size=2, index=lambda _xp: 0, total=lambda n: n, leading=True, axes=[1])


def test_two_split_axes_refused_where_units_span_one() -> None:
    w = [np.ones((4, 4), np.float32)]
    rule = gc.adaptive_clip(0.1, axis="out_first")  # units reduce dim 1; the array is split on 0 and 1
    with pytest.raises(ValueError, match=r"adaptive_clip: array 0 is split along axes \(0, 1\) and its units reduce.*Participants\(offsets=...\)"):
        simulate(lambda a: rule.update(a, (), a), [[w[0][:2, :2]]] * P, [(0, 1)])
    # units reducing both split axes (one norm per array) are fine
    ok = gc.adaptive_clip(0.1, axis=(0, 1))
    outs = simulate(lambda a: ok.update(a, (), a), [[w[0][:2, :2]]] * P, [(0, 1)])
    assert float(outs[0][2]["clipped_fraction"]) == 1.0  # (one unit: the whole array, counted once)
    assert np.allclose(np.asarray(outs[1][0][0]), 0.1)  # clipped to 0.1 of its own norm
    # leading=False without axes: which axis is unknown
    unknown = gcb.Participants(lambda _xp, x, op: x, size=2, index=lambda _xp: 0, total=lambda n: n, leading=False)
    with gcb.collective(unknown), pytest.raises(ValueError, match=r"pass Participants\(axes=...\)"):
        rule.update([xp.asarray(w[0])], (), [xp.asarray(w[0])])


# ------------------------------------------------- one tensor split along two axes (FSDP2 x TP)

GRID = (2, 2)  # (dp, tp) participants, row-major: participant p = dp * 2 + tp
# (8, 6) and (5, 7) split rows by dp, columns by tp (Shard(0) x RowwiseParallel Shard(1); (5, 7):
# uneven blocks), (6, 4, 4) dims 0 and 2; (12,) on dim 0 over all four; (3,) whole on participant 0
GRID_SHAPES = [(8, 6), (5, 7), (6, 4, 4), (12,), (3,)]
GRID_AXES = [(0, 1), (0, 1), (0, 2), 0, None]


def _grid_split(full: list, axes: list) -> tuple[list, list]:
    """Per participant its shards of every array, and its offsets (``Participants(offsets=)``)."""
    shards, offsets = [[] for _ in range(4)], [[] for _ in range(4)]
    for x, a in zip(full, axes):
        for p in range(4):
            coord = divmod(p, GRID[1])
            if a is None:
                shards[p].append(x if p == 0 else x[:0])
                offsets[p].append(((0, x.shape[0]),))
            elif isinstance(a, int):
                shards[p].append(np.array_split(x, 4, axis=a)[p])
                offsets[p].append(((sum(len(b) for b in np.array_split(x, 4, axis=a)[:p]), x.shape[a]),))
            else:
                block, where = x, []
                for d, c, n in zip(a, coord, GRID):
                    pieces = np.array_split(block, n, axis=d)
                    where.append((sum(q.shape[d] for q in pieces[:c]), x.shape[d]))
                    block = pieces[c]
                shards[p].append(block)
                offsets[p].append(tuple(where))
    return shards, offsets


def _grid_gather(parts: list, full: list, axes: list) -> list:
    """The full arrays from each participant's results (the inverse of :func:`_grid_split`)."""
    out = []
    for i, (x, a) in enumerate(zip(full, axes)):
        if a is None:
            out.append(np.asarray(parts[0][i]))
        elif isinstance(a, int):
            out.append(np.concatenate([np.asarray(q[i]) for q in parts], axis=a))
        else:
            rows = [np.concatenate([np.asarray(parts[r * GRID[1] + c][i]) for c in range(GRID[1])], axis=a[1])
                    for r in range(GRID[0])]
            out.append(np.concatenate(rows, axis=a[0]))
    return out


def _grid_arrays(seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    w = [rng.standard_normal(s).astype(np.float32) for s in GRID_SHAPES]
    g = [(rng.standard_normal(s) * rng.choice([0.01, 1.0], size=s)).astype(np.float32) for s in GRID_SHAPES]
    return w, g


@pytest.mark.parametrize("axis", ["out_first", "out_last"])
def test_agc_two_split_axes_equals_one_process(axis) -> None:
    """Units reducing one of two split axes: rows (out_first) or columns (out_last) over a 2x2 grid."""
    w, g = _grid_arrays(3)
    rule = gc.adaptive_clip(0.5, axis=axis)
    ref, _, ref_info = rule.update([xp.asarray(x) for x in g], (), [xp.asarray(x) for x in w])
    (ws, offs), (gs, _) = _grid_split(w, GRID_AXES), _grid_split(g, GRID_AXES)
    calls: list = []
    outs = simulate(lambda a: rule.update(a[len(w):], (), a[:len(w)]), [ws[p] + gs[p] for p in range(4)],
                    GRID_AXES + GRID_AXES, [offs[p] + offs[p] for p in range(4)], calls)
    got = _grid_gather([o[0] for o in outs], w, GRID_AXES)
    assert max(ulps(a, b) for a, b in zip(got, ref)) <= 4
    assert not all(np.array_equal(a, b) for a, b in zip(got, g))  # (the clip acted)
    want = float(ref_info["clipped_fraction"])
    assert 0.0 < want < 1.0 and [float(o[2]["clipped_fraction"]) for o in outs] == [want] * 4
    assert calls == [2] * 4  # still one collective for the unit norms, one for the clipped count


@pytest.mark.parametrize("make", [lambda: gc.max_norm(1.5, axis="out_first"), lambda: gc.max_norm(1.5, axis=0),
                                  lambda: gc.min_max_norm(1.0, 2.0, axis="out_first"), lambda: gc.unit_norm(axis=0),
                                  lambda: gc.group_lasso(1.5, axis="out_first")],
                         ids=["max_norm_out_first", "max_norm_axis0", "min_max_norm", "unit_norm", "group_lasso"])
def test_max_norm_two_split_axes_equals_one_process(make) -> None:
    w, _ = _grid_arrays(4)
    w = [x * 2 for x in w]
    rule = make()
    ref, _, _ = rule.project([xp.asarray(x) for x in w], ())
    ws, offs = _grid_split(w, GRID_AXES)
    outs = simulate(lambda a: rule.project(a, ()), ws, GRID_AXES, offs)
    got = _grid_gather([o[0] for o in outs], w, GRID_AXES)
    assert max(ulps(a, b) for a, b in zip(got, ref)) <= 4
    assert not np.array_equal(got[0], w[0])  # (some rows changed)


def test_restricted_rule_sees_its_arrays_offsets() -> None:
    """``gc.on``: the inner rule's array ``i`` gets array ``idx[i]``'s offsets (as its split axes)."""
    w, g = _grid_arrays(5)
    rule = gc.on(gc.adaptive_clip(0.5, axis="out_first"), gc.Params(exclude=["0", "3"]))
    ref, _, ref_info = rule.update([xp.asarray(x) for x in g], (), [xp.asarray(x) for x in w])
    (ws, offs), (gs, _) = _grid_split(w, GRID_AXES), _grid_split(g, GRID_AXES)
    with gcb.array_names([str(i) for i in range(len(w))]):
        outs = simulate(lambda a: rule.update(a[len(w):], (), a[:len(w)]), [ws[p] + gs[p] for p in range(4)],
                        GRID_AXES + GRID_AXES, [offs[p] + offs[p] for p in range(4)])
    got = _grid_gather([o[0] for o in outs], w, GRID_AXES)
    assert np.array_equal(got[0], g[0]) and np.array_equal(got[3], g[3])  # (left out)
    assert max(ulps(a, b) for a, b in zip(got, ref)) <= 4 and not np.array_equal(got[1], g[1])
    assert [float(o[2]["clipped_fraction"]) for o in outs] == [float(ref_info["clipped_fraction"])] * 4


def test_split_offsets_accessor_and_bad_input() -> None:
    def make(**kw):
        return gcb.Participants(lambda _xp, x, op: x, size=2, index=lambda _xp: 0, total=lambda n: n, **kw)

    assert gcb.split_offsets(0) is None  # no reducer
    p = make(axes=[(0, 1), 0], offsets=[((2, 4), (0, 6)), None])
    with gcb.collective(p):
        assert gcb.split_offsets(0) == ((2, 4), (0, 6)) and gcb.split_offsets(1) is None
        with pytest.raises(ValueError, match="offsets= has 2 entries, but the rule sees array 2"):
            gcb.split_offsets(2)
    with pytest.raises(ValueError, match="offsets= needs axes="):
        make(offsets=[None])
    with pytest.raises(ValueError, match="offsets must be a sequence with one entry per array"):
        make(axes=[0, 1], offsets=[None])
    with pytest.raises(ValueError, match=r"offsets\[0\] must be None or one \(start, full\) pair"):
        make(axes=[(0, 1)], offsets=[((0, 4),)])  # one pair for two split axes
    with pytest.raises(ValueError, match=r"offsets\[0\] must be None or one \(start, full\) pair"):
        make(axes=[0], offsets=[((5, 4),)])  # start past the full extent
    # a shard that overruns the full extent the offsets give is refused, naming the array
    rule = gc.adaptive_clip(0.1, axis="out_first")
    x = xp.asarray(np.ones((3, 2), np.float32))
    with gcb.collective(make(axes=[(0, 1)], offsets=[((2, 4), (0, 4))])), \
            pytest.raises(ValueError, match=r"array 0's shard \(3 along axis 0, from 2\) overruns the full extent 4"):
        rule.update([x], (), [x])
