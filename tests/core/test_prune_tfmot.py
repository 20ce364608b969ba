"""The core's tfmot presets (issue 18): ``first_step``, ``rounding="tfmot"``, block pruning, padded N:M groups.

tfmot's definitions are transcribed from tensorflow/model-optimization (v0.8.0, the
files under tensorflow_model_optimization/python/core/sparsity/keras/): the count of
``pruning_impl.Pruning._update_mask``, ``PruningSchedule._should_prune_in_step`` and
``PolynomialDecay.__call__`` of ``pruning_schedule.py``, ``pruning_utils.generate_m_by_n_mask``.
"""

import numpy as np
import pytest

import gradclip_core as gc
from gradclip_core.prune._block import block_scores
from gradclip_core.prune._schedule import prune_count

from .util import NAMESPACES, to_np, to_xp


def tfmot_kept(n, sparsity):
    """pruning_impl.Pruning._update_mask: k = cast(max(round(cast(size, f32) * (1 - sparsity)), 1), int32)."""
    return int(max(np.round(np.float32(n) * (np.float32(1) - np.float32(sparsity))), np.float32(1)))


def tfmot_polynomial(step, initial, final, begin, end, power, frequency):
    """PolynomialDecay.__call__ with PruningSchedule._should_prune_in_step, in float32 as there."""
    p = np.minimum(np.float32(1), np.maximum(np.float32(0), np.float32(step - begin) / np.float32(end - begin)))
    sparsity = np.float32(initial - final) * np.power(np.float32(1) - p, np.float32(power)) + np.float32(final)
    should = step >= begin and (step <= end or end < 0) and (step - begin) % frequency == 0
    return should, np.float32(sparsity)


def test_tfmot_rounding_is_tfmots_float32_count_where_keep_is_not():
    cases = [(s, n) for s in (0.03, 0.1, 0.3, 0.5, 0.75, 0.9, 0.99) for n in (1, 2, 5, 45, 85, 250, 1000, 4325, 135317)]
    for s, n in cases:
        assert n - prune_count(np, s, n, "tfmot") == tfmot_kept(n, s), (s, n)
    # 0.3 of 45: float64 (1 - 0.3) * 45 = 31.499999..., float32 31.5 (half even: 32)
    assert 45 - prune_count(np, 0.3, 45, "keep") == 31 and 45 - prune_count(np, 0.3, 45, "tfmot") == 32
    # scheduled (float32) targets: "tfmot" is "keep"
    t = np.float32(0.3)
    assert int(prune_count(np, t, 45, "tfmot")) == int(prune_count(np, t, 45, "keep")) == 45 - 32
    with pytest.raises(ValueError, match="rounding must be one of"):
        gc.magnitude_prune(0.5, rounding="tf")


@pytest.mark.parametrize("begin, end, frequency", [(0, 40, 10), (0, 40, 1), (3, 23, 4), (2, 30, 7)])
def test_first_step_1_is_tfmots_count_since_0_5_1(begin, end, frequency):
    # tfmot >= 0.5.1: the wrapper increments pruning_step before it prunes (first batch: step 1).
    n = 1000
    w = [np.random.default_rng(1).permutation(np.arange(1, n + 1)).astype(np.float32).reshape(40, 25)]
    rule = gc.magnitude_prune(0.8, rounding="tfmot",
                              schedule=gc.polynomial_schedule(begin, end, frequency, first_step=1))
    state = rule.init(w)
    expected = 0.0
    for batch in range(end + 3):
        w, state, info = rule.project(w, state)
        should, sparsity = tfmot_polynomial(batch + 1, 0.0, 0.8, begin, end, 3, frequency)
        if should:
            expected = (n - tfmot_kept(n, sparsity)) / n
        assert float(info["sparsity"]) == pytest.approx(expected, abs=1e-7), batch
    if (end - begin) % frequency == 0:  # at the final sparsity after `end` batches (step `end`)
        assert expected == pytest.approx(0.8)
    sch = gc.constant_schedule(5, -1, 10, first_step=1)
    assert [t for t in range(40) if bool(sch.active(np, np.int32(t)))] == [4, 14, 24, 34]
    assert bool(gc.one_shot(1, first_step=1).active(np, np.int32(0)))
    assert gc.polynomial_schedule(0, 4, first_step=1) == gc.Schedule(**gc.polynomial_schedule(0, 4, first_step=1)._asdict())
    assert list(gc.polynomial_schedule(0, 4, 2, 0.1)[:6]) == ["polynomial", 0, 4, 2, 0.1, 3]  # a 0.2 config (6 fields) still loads
    with pytest.raises(ValueError, match="first_step"):
        gc.constant_schedule(first_step=-1)


def reference_block_scores(w, block, pooling):
    h, wd = w.shape
    bh, bw = block
    a = np.abs(w.astype(np.float32))
    out = np.zeros((-(-h // bh), -(-wd // bw)), np.float32)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            b = a[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw]
            out[i, j] = b.max() if pooling == "max" else b.mean(axis=0).mean()
    return out


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("shape, block", [((8, 6), (2, 3)), ((7, 5), (2, 2)), ((5, 9), (4, 1)), ((3, 3), (1, 1)), ((4, 4), (4, 4))])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_block_magnitude_prune_prunes_whole_blocks_by_pooled_magnitude(xp, shape, block, pooling):
    rng = np.random.default_rng(sum(shape) + block[0])
    w = rng.normal(size=shape).astype(np.float32)
    scores = np.asarray(block_scores(xp, xp.asarray(w), block, pooling))
    np.testing.assert_allclose(scores, reference_block_scores(w, block, pooling), rtol=1e-6)
    rule = gc.block_magnitude_prune(0.5, block, pooling=pooling, rounding="tfmot", params="all")
    bias = np.ones(3, np.float32)
    out, state, info = rule.project(to_xp(xp, [w, bias]), rule.init(to_xp(xp, [w, bias])))
    keep = np.asarray(state.masks[0])
    nb = scores.size
    kept_blocks = tfmot_kept(nb, 0.5)
    order = np.lexsort((np.arange(nb), scores.ravel()))  # score, then block index
    expect_b = np.ones(nb, bool)
    expect_b[order[: nb - kept_blocks]] = False
    expect = np.kron(expect_b.reshape(scores.shape), np.ones(block, bool)).astype(bool)[: shape[0], : shape[1]]
    np.testing.assert_array_equal(keep, expect)
    np.testing.assert_array_equal(to_np(out)[0], np.where(expect, w, 0))
    assert np.asarray(state.masks[1]).all()  # rank 1: dense


@pytest.mark.parametrize("xp", NAMESPACES)
def test_block_masks_are_monotone_and_nan_blocks_rank_last(xp):
    w = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    w[0, 0] = np.nan  # block (0, 0) scores NaN: kept
    rule = gc.block_magnitude_prune(0.25, (2, 2), schedule=gc.constant_schedule(), params="all")
    _, state, _ = rule.project(to_xp(xp, [w]), rule.init(to_xp(xp, [w])))
    first = np.asarray(state.masks[0]).copy()
    expect = np.ones((4, 4), bool)
    expect[0:2, 2:4] = False  # block means: NaN, 5.5 / 11.5, 13.5: one block of four pruned
    np.testing.assert_array_equal(first, expect)
    w2 = np.where(first, 1.0, 100.0).astype(np.float32)  # the pruned block is now the largest: it stays pruned
    _, state, _ = rule.project(to_xp(xp, [w2]), state)
    np.testing.assert_array_equal(np.asarray(state.masks[0]), expect)
    with pytest.raises(ValueError, match="block must be two ints"):
        gc.block_magnitude_prune(0.5, (2,))
    with pytest.raises(ValueError, match="pooling must be one of"):
        gc.block_magnitude_prune(0.5, (2, 2), pooling="sum")
    assert gc.from_config(gc.block_magnitude_prune(0.5, (2, 2), pooling="MAX").config).config["pooling"] == "MAX"


def tfmot_m_by_n(w2d, m, n):
    """pruning_utils.generate_m_by_n_mask on a 2-D array (groups along the last axis): pad with
    zeros to a multiple of n, keep the top n - m |w| of every n (tf.math.top_k: equal values, lower
    index first), drop the padding."""
    rows, cols = w2d.shape
    pad = n - cols % n
    a = np.concatenate([np.abs(w2d), np.zeros((rows, pad), w2d.dtype)], axis=1).reshape(-1, n)
    mask = np.zeros_like(a, bool)
    for r in range(a.shape[0]):
        top = np.argsort(-a[r], kind="stable")[: n - m]
        mask[r, top] = True
    return mask.reshape(rows, cols + pad)[:, :cols]


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("shape", [(8, 3), (7, 5), (3, 3, 6, 4), (1, 1, 3, 2)])
def test_nm_prune_pad_groups_as_tfmot(xp, shape):
    # Keras layout (..., in, out); tfmot rearranges to (out * ..., in) and groups along `in`.
    w = np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)
    rule = gc.nm_prune(keep=2, group=4, axis=-2, remainder="pad", params="all")
    _, state, _ = rule.project(to_xp(xp, [w]), rule.init(to_xp(xp, [w])))
    keep = np.asarray(state.masks[0])
    rearranged = np.moveaxis(w, -1, 0).reshape(-1, shape[-2])  # (out, ..., in) -> (out * ..., in)
    expect = tfmot_m_by_n(rearranged, 2, 4).reshape(np.moveaxis(w, -1, 0).shape)
    np.testing.assert_array_equal(keep, np.moveaxis(expect, 0, -1))
    dense = gc.nm_prune(keep=2, group=4, axis=-2, params="all")  # the default leaves such arrays dense
    _, state, _ = dense.project(to_xp(xp, [w]), dense.init(to_xp(xp, [w])))
    assert np.asarray(state.masks[0]).all() == (shape[-2] % 4 != 0)
    with pytest.raises(ValueError, match="remainder"):
        gc.nm_prune(axis=0, remainder="drop")
