"""RigL / SET (gradclip_core.prune._dst) against a NumPy transcription of the RigL update.

Reference: Evci et al. 2020, "Rigging the Lottery" (arXiv 1911.11134), Algorithm 1 and
eq. 1 (cosine drop fraction), as jaxpruner's ``SET._update_masks`` / ``RigL`` select:
drop the smallest ``|w|`` of the active elements, grow the largest ``|g|`` of the
elements not kept by the drop; ties in flat index order (the library's total order).
"""

import math

import numpy as np
import pytest

import gradclip_core as gc


def ref_drop_grow(m, w, g, d):
    """One RigL mask update of one array: (new mask, regrown)."""
    m, w, g = m.ravel(), np.abs(w.ravel()).astype(np.float32), np.abs(g.ravel()).astype(np.float32)
    idx = np.arange(m.size)
    act = idx[m]
    order = act[np.lexsort((act, w[act]))]          # |w| ascending, then index
    kept = m.copy()
    kept[order[:d]] = False
    cand = idx[~kept]
    corder = cand[np.lexsort((cand, g[cand]))]      # |g| ascending, then index: grow the last d
    new = kept.copy()
    if d:
        new[corder[-d:]] = True
    return new, new & ~m


def ref_fraction(alpha, t, end):
    return alpha / 2 * (1 + math.cos(math.pi * t / end))


@pytest.mark.parametrize("allocation", ["uniform", "erk"])
def test_rigl_matches_numpy_reference(allocation):
    rng = np.random.default_rng(0)
    shapes = [(6, 5), (4, 8), (7,)]
    rule = gc.rigl(0.6, allocation=allocation, drop_fraction=0.4, update_every=2, end_step=9, params="weights")
    w = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    state = rule.init(w)
    masks0 = [np.asarray(m) for m in gc.backend.find_masks(state, 3)[0]]
    sizes = [m.sum() for m in masks0]
    assert masks0[2].all()                                       # the bias is not pruned ("weights")
    grown_any = False
    for t in range(10):
        g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        before = [np.asarray(m) for m in gc.backend.find_masks(state, 3)[0]]
        upd, state, info = rule.update(g, state, w)
        masks = [np.asarray(m) for m in gc.backend.find_masks(state, 3)[0]]
        regrown = [np.asarray(r) for r in gc.backend.find_regrown(state, 3)[0]]
        on_step = t > 0 and t % 2 == 0 and t < 9
        for i in range(2):
            d = round(ref_fraction(0.4, t, 9) * sizes[i]) if on_step else 0
            want, want_grown = ref_drop_grow(before[i], w[i], g[i], d) if on_step else (before[i], before[i] & False)
            np.testing.assert_array_equal(masks[i].ravel(), want.ravel())
            np.testing.assert_array_equal(regrown[i].ravel(), want_grown.ravel())
            assert masks[i].sum() == sizes[i]                    # constant sparsity
            np.testing.assert_array_equal(upd[i] == 0, ~(masks[i] & ~regrown[i]) | (g[i] == 0))
        grown_any |= float(info["regrown"]) > 0
        w = [wi - 0.1 * ui for wi, ui in zip(w, upd)]
        w, state, pinfo = rule.project(w, state)
        for i in range(2):
            assert (w[i][~masks[i]] == 0).all() and (w[i][regrown[i]] == 0).all()
    assert grown_any
    if allocation == "uniform":
        assert abs(float(pinfo["sparsity/0"]) - 0.6) < 1e-6


def test_set_random_growth_constant_sparsity_and_seeded():
    rng = np.random.default_rng(1)
    w = [rng.standard_normal((8, 8)).astype(np.float32)]
    out = []
    for _ in range(2):
        rule = gc.sparse_evolutionary(0.75, allocation="uniform", drop_fraction=0.5, update_every=1, end_step=5, seed=3)
        state = rule.init(w)
        ws = w
        for t in range(3):
            _, state, info = rule.update([np.zeros((8, 8), np.float32)], state, ws)
            ws, state, _ = rule.project(ws, state)
            assert int(np.asarray(state.masks[0]).sum()) == 16
        out.append(np.asarray(state.masks[0]))
    np.testing.assert_array_equal(out[0], out[1])
    assert gc.set_ is gc.sparse_evolutionary


def test_drop_fraction_schedule_and_end_step():
    assert gc.drop_fractions(0.3, 1, 4)[0] == 0.3
    rule = gc.rigl(0.5, allocation="uniform", update_every=1, end_step=2, init_masks="magnitude")
    w = [np.arange(1, 9, dtype=np.float32).reshape(2, 4)]
    state = rule.init(w)
    g = np.ones((2, 4), np.float32)
    g[0, 0] = 5.0                                                # the pruned w=1 has the largest |g|
    for t in range(4):
        _, state, info = rule.update([g], state, w)
        assert (float(info["regrown"]) > 0) == (t == 1)          # only t=1: t>0, t<end_step
        w, state, _ = rule.project(w, state)


def test_config_state_and_errors():
    rule = gc.rigl(0.5, update_every=3, end_step=30, grow="random")
    assert gc.from_config(rule.config).config == rule.config
    w = [np.ones((4, 4), np.float32)]
    state = rule.init(w)
    leaves = [state.count, *state.masks, *state.regrown]
    assert all(isinstance(x, np.ndarray) for x in leaves)
    with pytest.raises(ValueError, match="params="):
        rule.update(w, state)
    with pytest.raises(ValueError, match="sparsity"):
        gc.rigl(1.0)
    with pytest.raises(ValueError, match="update_every"):
        gc.rigl(0.5, update_every=0)
    with pytest.raises(ValueError, match="grow"):
        gc.rigl(0.5, grow="magnitude")
    with pytest.raises(ValueError, match="^sparse_evolutionary: sparsity"):  # the factory the user called
        gc.sparse_evolutionary(1.5)
