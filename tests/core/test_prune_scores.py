"""Pruning scores, sparsity allocation and structured groups (issue 19), against the papers' formulas.

Each reference below is transcribed from the paper (or the authors' / jaxpruner's code) in
NumPy float64 and ranks with a stable sort (ties by flat index, the core's total order).
"""

import json
import math

import numpy as np
import pytest

import gradclip_core as gc
from gradclip_core.prune._scores import ordered

from .util import NAMESPACES, to_np, to_xp

RNG = np.random.default_rng(19)


def project(rule, xp, params, state=None):
    p = to_xp(xp, params)
    state = rule.init(p) if state is None else state
    out, state, info = rule.project(p, state)
    return to_np(out), state, info


def lowest(scores, k):
    """Keep-mask pruning the k smallest of ``scores`` (flat order for ties)."""
    flat = np.asarray(scores, np.float64).ravel()
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    return keep.reshape(np.shape(scores))


# ------------------------------------------------------------------ scores


@pytest.mark.parametrize("xp", NAMESPACES)
def test_wanda_prunes_the_smallest_weight_times_input_norm_per_array(xp):
    # Sun et al. 2023, eq. 1 and their code: W_metric = |W| * sqrt(scaler_row).reshape(1, -1),
    # with W (out, in) and scaler_row = ||X_j||^2 over the calibration tokens.
    x = RNG.normal(size=(64, 5)).astype(np.float32)  # calibration inputs (tokens, in)
    w = RNG.normal(size=(3, 5)).astype(np.float32)
    norms = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=0))
    assert np.allclose(np.sqrt(gc.activation_sumsq(np, x)), norms, rtol=1e-6)
    out, state, _ = project(gc.wanda_prune(0.4, act_norms=[norms], axis=1), xp, [w])
    metric = np.abs(w.astype(np.float64)) * norms.reshape(1, -1)
    assert np.array_equal(np.asarray(state.masks[0]), lowest(metric, round(0.4 * 15)))
    assert np.array_equal(out[0], np.where(lowest(metric, 6), w, 0))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_wanda_per_output_is_the_papers_comparison_group(xp):
    # Sun et al.'s prune_wanda: sort_res = torch.sort(W_metric, dim=-1, stable=True);
    # indices = sort_res[1][:, :int(W_metric.shape[1] * sparsity)]; W_mask.scatter_(1, indices, True)
    w = RNG.normal(size=(4, 8)).astype(np.float32)  # torch (out, in)
    norms = np.abs(RNG.normal(size=8)) + 0.1
    metric = np.abs(w.astype(np.float64)) * norms.reshape(1, -1)
    pruned = np.zeros_like(metric, bool)
    idx = np.argsort(metric, axis=-1, kind="stable")[:, : int(metric.shape[1] * 0.5)]
    np.put_along_axis(pruned, idx, True, axis=1)
    rule = gc.wanda_prune(0.5, act_norms=[norms], axis=1, allocation=gc.per_output("out_first"))
    _, state, _ = project(rule, xp, [w])
    assert np.array_equal(np.asarray(state.masks[0]), ~pruned)
    _, state, _ = project(gc.wanda_prune(0.5, act_norms=[norms], axis=-2, allocation=gc.per_output("out_last")),
                          xp, [w.T.copy()])  # the Keras layout of the same weights
    assert np.array_equal(np.asarray(state.masks[0]), ~pruned.T)


def test_wanda_keras_layout_and_names():
    w = RNG.normal(size=(5, 3)).astype(np.float32)  # Keras Dense (in, out): input axis -2
    norms = np.abs(RNG.normal(size=5)) + 0.1
    _, state, _ = project(gc.wanda_prune(0.5, act_norms={"0": norms}, axis=-2), np, [w])
    metric = np.abs(w.astype(np.float64)) * norms.reshape(-1, 1)
    assert np.array_equal(np.asarray(state.masks[0]), lowest(metric, round(0.5 * 15)))


def test_wanda_errors_name_the_argument():
    with pytest.raises(ValueError, match="act_norms"):
        gc.wanda_prune(0.5, act_norms=[np.ones((2, 2))], axis=1)
    with pytest.raises(ValueError, match="wanda_score"):
        gc.score_prune(0.5, score="wanda")
    rule = gc.wanda_prune(0.5, act_norms=[np.ones(3)], axis=1)
    with pytest.raises(ValueError, match="input channels"):
        project(rule, np, [np.ones((2, 4), np.float32)])


@pytest.mark.parametrize("xp", NAMESPACES)
def test_movement_score_is_minus_the_sum_of_weight_times_gradient(xp):
    # Sanh et al. 2020, eq. 4 (hard movement): S = -sum_t dL/dW^(t) * W^(t); prune the lowest S.
    shapes = [(4, 6), (3, 5)]
    rule = gc.movement_prune(0.5, allocation="global", schedule=gc.one_shot(2))
    ws = [RNG.normal(size=s).astype(np.float32) for s in shapes]
    state = rule.init(to_xp(xp, ws))
    total = [np.zeros(s) for s in shapes]
    for _ in range(3):
        gs = [RNG.normal(size=s).astype(np.float32) for s in shapes]
        _, state, _ = rule.update(to_xp(xp, gs), state, to_xp(xp, ws))
        total = [t - w.astype(np.float64) * g for t, w, g in zip(total, ws, gs)]
        ws = [w - np.float32(0.1) * g for w, g in zip(ws, gs)]
        out, state, _ = project(rule, xp, ws, state)
    for acc, t in zip(state.scores, total):
        assert np.allclose(np.asarray(acc), t, rtol=1e-5, atol=1e-6)
    keep = lowest(np.concatenate([t.ravel() for t in total]), round(0.5 * 39))
    got = np.concatenate([np.asarray(m).ravel() for m in state.masks])
    assert np.array_equal(got, keep)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_taylor_score_accumulates_abs_weight_times_gradient_and_restarts(xp):
    # Molchanov et al. 2019 (first order, |g * w|), summed over the steps of one pruning interval.
    rule = gc.taylor_prune(0.25, schedule=gc.constant_schedule(0, -1, 2))
    w = RNG.normal(size=(4, 4)).astype(np.float32)
    state = rule.init(to_xp(xp, [w]))
    g0, g1 = (RNG.normal(size=(4, 4)).astype(np.float32) for _ in range(2))
    _, state, _ = rule.update(to_xp(xp, [g0]), state, to_xp(xp, [w]))
    out, state, _ = project(rule, xp, [w], state)  # step 0: prunes by |w * g0|
    assert np.array_equal(np.asarray(state.masks[0]), lowest(np.abs(w.astype(np.float64) * g0), 4))
    assert not np.any(np.asarray(state.scores[0]))  # restarted after the recomputation
    _, state, _ = rule.update(to_xp(xp, [g1]), state, to_xp(xp, out))
    assert np.allclose(np.asarray(state.scores[0]), np.abs(out[0].astype(np.float64) * g1), rtol=1e-6)


def test_gradient_scores_need_params_and_refuse_signed_misuse():
    rule = gc.movement_prune(0.5)
    w = [np.ones((2, 2), np.float32)]
    with pytest.raises(ValueError, match="needs params"):
        rule.update(w, rule.init(w))
    assert rule.needs_params
    with pytest.raises(ValueError, match="signed"):
        gc.score_prune(0.5, score="movement", allocation="lamp")


def test_ordered_ranks_signed_floats_like_numpy():
    s = np.concatenate([RNG.normal(size=200) * 10.0 ** RNG.integers(-30, 30, 200),
                        [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45]]).astype(np.float32)
    o = ordered(np, s)
    assert np.all(o >= 0)
    ref = np.argsort(s.astype(np.float64), kind="stable")
    assert np.all(np.diff(o[ref]) >= 0)  # monotone: never inverts an order
    nan = ordered(np, np.array([np.nan, np.inf], np.float32))
    assert np.isnan(nan[0]) and np.isinf(nan[1])


@pytest.mark.parametrize("xp", NAMESPACES)
def test_random_score_equals_random_prune(xp):
    ws = [RNG.normal(size=(5, 7)).astype(np.float32), RNG.normal(size=(3, 3)).astype(np.float32)]
    a = project(gc.score_prune(0.3, score=gc.random_score(4), allocation="global"), xp, ws)[1]
    b = project(gc.random_prune(0.3, seed=4, scope="global"), xp, ws)[1]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.masks, b.masks))


# ------------------------------------------------------------------ allocation


def erk_reference(shapes, sparsity):
    """Evci et al. 2020 (appendix) / jaxpruner get_sparsities_erdos_renyi, re-derived: densities
    eps * (sum(shape)/prod(shape)), dense layers where that exceeds 1, kept count = sum(n - floor(s n))."""
    dense = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        raw = {i: sum(shapes[i]) / math.prod(shapes[i]) for i in free}
        budget = sum(math.prod(s) - math.floor(sparsity * math.prod(s)) for s in shapes)
        budget -= sum(math.prod(shapes[i]) for i in dense)
        eps = budget / sum(raw[i] * math.prod(shapes[i]) for i in free)
        over = [i for i in free if eps * raw[i] > 1]
        if not over:
            return [0.0 if i in dense else 1 - eps * raw[i] for i in range(len(shapes))]
        dense.add(max(over, key=lambda i: raw[i]))


def test_erk_sparsities_match_the_paper():
    shapes = [(300, 200), (200, 100), (100, 10), (3, 3, 16, 32)]
    got = gc.erk_sparsities(shapes, 0.9)
    assert np.allclose(got, erk_reference(shapes, 0.9), atol=1e-12)
    dense = gc.erk_sparsities([(1000, 1000), (10, 2)], 0.9)  # the small layer would need density > 1
    assert dense[1] == 0.0 and np.allclose(dense, erk_reference([(1000, 1000), (10, 2)], 0.9))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_erk_rule_prunes_each_array_to_its_share(xp):
    shapes = [(20, 10), (10, 4)]
    ws = [RNG.normal(size=s).astype(np.float32) for s in shapes]
    _, state, _ = project(gc.score_prune(0.7, allocation="erk"), xp, ws)
    for w, m, s in zip(ws, state.masks, gc.erk_sparsities(shapes, 0.7)):
        assert np.array_equal(np.asarray(m), lowest(np.abs(w), round(s * w.size)))


def lamp_reference(w):
    """Lee et al. 2021, eq. 2, directly: score(u) = w_u^2 / sum over v >= u (sorted ascending) of w_v^2."""
    flat = np.abs(w.astype(np.float64)).ravel()
    order = np.argsort(flat, kind="stable")
    rank = np.empty(flat.size, int)
    rank[order] = np.arange(flat.size)
    return np.array([flat[u] ** 2 / sum(flat[v] ** 2 for v in range(flat.size) if rank[v] >= rank[u])
                     for u in range(flat.size)]).reshape(w.shape)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_lamp_scores_and_global_selection(xp):
    ws = [RNG.normal(size=(4, 5)).astype(np.float32), 10 * RNG.normal(size=(3, 3)).astype(np.float32)]
    for w in ws:
        assert np.allclose(np.asarray(gc.lamp_scores(xp, xp.asarray(np.abs(w)))), lamp_reference(w), rtol=1e-5)
    _, state, _ = project(gc.score_prune(0.5, allocation="lamp"), xp, ws)
    keep = lowest(np.concatenate([lamp_reference(w).ravel() for w in ws]), round(0.5 * 29))
    assert np.array_equal(np.concatenate([np.asarray(m).ravel() for m in state.masks]), keep)


def owl_reference(scores, sparsity, m, lam):
    """Yin et al. 2024, the authors' prune_wanda_outlier: outlier ratio per layer, min-max scaled to
    [0, 2*lam], shifted to mean 1 - sparsity; layer sparsity = 1 - ratio."""
    ratio = np.array([np.mean(s > m * np.mean(s)) for s in scores])
    ratio = (ratio - ratio.min()) * (1 / (ratio.max() - ratio.min()) * lam * 2)
    ratio = ratio - np.mean(ratio) + (1 - sparsity)
    return 1 - ratio


def test_owl_sparsities_match_the_authors_code():
    scores = [np.abs(RNG.standard_cauchy(size=n)).astype(np.float32) for n in (400, 300, 500)]
    got = [float(v) for v in gc.owl_sparsities(np, scores, 0.6, 5.0, 0.08)]
    assert np.allclose(got, owl_reference(scores, 0.6, 5.0, 0.08), atol=2.0**-16)
    assert max(got) - min(got) <= 2 * 0.08 + 2.0**-15


@pytest.mark.parametrize("xp", NAMESPACES)
def test_global_min_max_sparsity_bounds_every_array(xp):
    ws = [RNG.normal(size=(10, 10)).astype(np.float32), 0.01 * RNG.normal(size=(5, 8)).astype(np.float32),
          10 * RNG.normal(size=(4, 5)).astype(np.float32)]
    _, state, _ = project(gc.score_prune(0.5, allocation="global", min_sparsity=0.2, max_sparsity=0.7), xp, ws)
    sp = [1 - np.asarray(m).mean() for m in state.masks]
    assert sp[1] == pytest.approx(0.7) and sp[2] == pytest.approx(0.2)  # the tiny array capped, the big one floored
    assert sum(int((~np.asarray(m)).sum()) for m in state.masks) == round(0.5 * 160)
    # the unconstrained array is pruned by magnitude: its pruned weights are its smallest
    m0 = np.asarray(state.masks[0])
    assert np.abs(ws[0][~m0]).max() <= np.abs(ws[0][m0]).min()
    with pytest.raises(ValueError, match="global"):
        gc.score_prune(0.5, min_sparsity=0.1)


# ------------------------------------------------------------------ groups


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_blocks_pool_scores_like_tfmot(xp, pooling):
    # tfmot block_size / block_pooling_type: pool |w| over (r, c) blocks (edge blocks over what they have).
    w = RNG.normal(size=(5, 6)).astype(np.float32)
    _, state, _ = project(gc.score_prune(0.5, group=gc.blocks(2, 3, pooling)), xp, [w])
    a = np.abs(w.astype(np.float64))
    pooled = np.array([[getattr(np, "mean" if pooling == "avg" else "max")(a[i:i + 2, j:j + 3])
                        for j in range(0, 6, 3)] for i in range(0, 5, 2)])
    keep_blocks = lowest(pooled, round(0.5 * pooled.size))
    expect = np.repeat(np.repeat(keep_blocks, 2, axis=0), 3, axis=1)[:5, :6]
    assert np.array_equal(np.asarray(state.masks[0]), expect)


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_blocks_group_pools_like_block_magnitude_prune_edge_blocks_and_nan_included(xp, pooling):
    # tfmot's block_magnitude_prune and score_prune(group=gc.blocks(...)) share one pooling: the same
    # scores bit for bit (partial edge blocks pooled over the elements they have, NaN blocks NaN), so the
    # same masks, schedule steps included
    from gradclip_core.prune._block import block_scores
    from gradclip_core.prune._groups import pool

    for shape, block in [((7, 5), (2, 2)), ((5, 9), (4, 1)), ((9, 10), (4, 3)), ((3, 3), (1, 1)), ((6, 8), (3, 4)),
                         ((2, 3), (5, 5))]:
        w = RNG.normal(size=shape).astype(np.float32) * RNG.choice([1e-3, 1.0, 1e3], size=shape).astype(np.float32)
        w[0, -1] = np.nan
        xw = xp.asarray(w)
        pooled = np.asarray(pool(xp, gc.blocks(*block, pooling), xp.abs(xw)))
        np.testing.assert_array_equal(pooled, np.asarray(block_scores(xp, xw, block, pooling)))
        schedule = gc.polynomial_schedule(0, 2, 1)
        a = gc.block_magnitude_prune(0.6, block, pooling=pooling, schedule=schedule)
        b = gc.score_prune(0.6, group=gc.blocks(*block, pooling), schedule=schedule)
        ws = [w, np.ones(3, np.float32)]
        sa, sb = a.init(to_xp(xp, ws)), b.init(to_xp(xp, ws))
        for step in range(3):
            wa, sa, _ = a.project(to_xp(xp, ws), sa)
            wb, sb, _ = b.project(to_xp(xp, ws), sb)
            np.testing.assert_array_equal(np.asarray(sa.masks[0]), np.asarray(sb.masks[0]), err_msg=f"{shape} {step}")
            np.testing.assert_array_equal(to_np(wa)[0], to_np(wb)[0])
            ws = [w * (1 + step), ws[1]]  # the masks are monotone: pruned blocks stay pruned
        assert 0 < np.asarray(sa.masks[0]).sum() < w.size or block == (5, 5)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_heads_and_columns_by_group_norm(xp):
    w = RNG.normal(size=(8, 3)).astype(np.float32)  # torch (out, in): 4 heads of 2 rows
    _, state, _ = project(gc.score_prune(0.5, group=gc.units("out_first", size=2)), xp, [w])
    heads = np.sqrt((w.astype(np.float64) ** 2).reshape(4, 6).sum(axis=1))
    assert np.array_equal(np.asarray(state.masks[0]), np.repeat(lowest(heads, 2), 6).reshape(8, 3))
    _, state, _ = project(gc.score_prune(1, group=gc.units((0,), ord=1)), xp, [w])  # one column, by L1
    cols = np.abs(w.astype(np.float64)).sum(axis=0)
    assert np.array_equal(np.asarray(state.masks[0]), np.broadcast_to(lowest(cols, 1), (8, 3)))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_nm_group_on_wanda_scores(xp):
    w = RNG.normal(size=(3, 8)).astype(np.float32)
    norms = np.abs(RNG.normal(size=8)) + 0.1
    rule = gc.score_prune(0.5, score=gc.wanda_score([norms], axis=1), group=gc.nm(2, 4, axis=1))
    _, state, _ = project(rule, xp, [w])
    metric = (np.abs(w.astype(np.float64)) * norms).reshape(3, 2, 4)
    expect = np.stack([np.stack([lowest(g, 2) for g in row]) for row in metric]).reshape(3, 8)
    assert np.array_equal(np.asarray(state.masks[0]), expect)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_group_lasso_is_the_block_soft_threshold(xp):
    # prox of t * sum_g ||w_g||_2 (Parikh & Boyd 2014, 6.5.4): w_g * max(0, 1 - t / ||w_g||).
    w = RNG.normal(size=(6, 4)).astype(np.float32)
    w[2] *= 0.05
    out, _, info = gc.group_lasso(0.8, axis="out_first").project(to_xp(xp, [w]), ())
    norm = np.sqrt((w.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    expect = w * np.maximum(0.0, 1 - 0.8 / norm)
    assert np.allclose(np.asarray(out[0]), expect, rtol=1e-6, atol=1e-7)
    assert not np.any(np.asarray(out[0])[2]) and float(info["sparsity"]) >= 4 / 24


# ------------------------------------------------------------------ state, configs, restrictions


def test_configs_round_trip_and_restricted_scores():
    for rule in (gc.wanda_prune(0.5, act_norms={"0": [1.0, 2.0]}, axis=1),
                 gc.score_prune(0.5, score=gc.wanda_score([[1.0, 0.5]], axis=1), group=gc.units("out_first")),
                 gc.score_prune(0.5, allocation=gc.erk_sparsity(0.5), group=gc.blocks(2, 2, "max")),
                 gc.movement_prune(0.3, allocation="global")):
        assert gc.from_config(rule.config).config == rule.config
        # JSON (what Keras saves): NamedTuples become lists, tuples lists; from_config takes them back
        again = gc.from_config(json.loads(json.dumps(rule.config)))
        w = [np.arange(8, dtype=np.float32).reshape(4, 2) - 3.5]
        assert np.array_equal(np.asarray(project(again, np, w)[1].masks[0]), np.asarray(project(rule, np, w)[1].masks[0]))
    rule = gc.movement_prune(0.5, params=gc.Params(exclude=["1"]))
    ws = [np.ones((2, 2), np.float32), np.ones((3, 3), np.float32)]
    state = rule.init(ws)
    assert [np.shape(s) for s in state.scores] == [(2, 2), ()]
    _, state, _ = rule.update([np.full((2, 2), 2.0, np.float32), np.ones((3, 3), np.float32)], state, ws)
    assert np.array_equal(np.asarray(state.scores[0]), np.full((2, 2), -2.0))


def _on(framework, s):
    """``(xp, s in that framework, back to NumPy)`` for ``"numpy"``, ``"jax"`` or ``"torch"``."""
    if framework == "numpy":
        return np, s, np.asarray
    if framework == "jax":
        jnp = pytest.importorskip("jax.numpy")
        return jnp, jnp.asarray(s), np.asarray
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    return xp, torch.from_numpy(s.copy()), lambda t: t.numpy()


@pytest.mark.parametrize("framework", ["numpy", "jax", "torch"])
def test_lamp_scores_kernels_give_the_portable_scores(framework):
    """LAMP's sort and inverse permutation (``argsort_keys`` / ``unpermute`` overrides: JAX's two-key sort,
    scatters) give the Array API defaults' scores bit for bit, ties, zeros of both signs, NaN and inf included."""
    import array_api_strict as xs

    from gradclip_core.backend._primitives import argsort_keys, sort_keys, unpermute

    rng = np.random.default_rng(0)
    s = np.abs(np.round(rng.standard_normal(400), 1)).astype(np.float32)
    s[[3, 50, 51]] = [np.nan, np.inf, -0.0]
    want = np.asarray(gc.lamp_scores(xs, xs.asarray(s)))
    xp, arr, back = _on(framework, s)
    got = back(gc.lamp_scores(xp, arr))
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    keys = np.array([5, 1, 5, 0, 1, 5], np.int32)
    order = back(argsort_keys(xp, xp.asarray(keys)))
    np.testing.assert_array_equal(order, np.argsort(keys, kind="stable"))
    sk, order = sort_keys(xp, xp.asarray(keys))
    np.testing.assert_array_equal(back(order), np.argsort(keys, kind="stable"))
    np.testing.assert_array_equal(back(sk), np.sort(keys))
    vals = np.arange(6, dtype=np.float32)
    perm = np.array([2, 0, 5, 1, 3, 4])
    out = back(unpermute(xp, xp.asarray(vals), xp.asarray(perm)))
    expect = np.empty_like(vals)
    expect[perm] = vals
    np.testing.assert_array_equal(out, expect)


def _lamp_reference(s):
    """LAMP scores as the first implementation computed them, in NumPy: NaN as +inf, a stable argsort of the
    int32 bits, the values gathered, float32 squares and suffix sums, ``sq / suffix`` (0 where it is 0)."""
    flat = np.where(np.isnan(s), np.float32(np.inf), s).reshape(-1).astype(np.float32)
    order = np.argsort(flat.view(np.int32), kind="stable")
    sq = flat[order] ** 2
    suffix = np.flip(np.cumsum(np.flip(sq), dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        lamp = np.where(suffix > 0, sq / np.where(suffix > 0, suffix, np.float32(1)), np.float32(0))
    out = np.empty_like(lamp)
    out[order] = lamp
    return out.reshape(s.shape)


@pytest.mark.parametrize("framework", ["numpy", "jax", "torch"])
def test_lamp_scores_from_the_sorted_keys_equal_the_gathered_values(framework):
    """The LAMP scores read the sorted values back from the sorted keys (``sort_keys``: no gather) and clamp a
    NaN's key to +inf's: bit for bit the scores of a gather of the values by the order, on value ties, zeros of
    both signs, NaN next to inf, squares that overflow and underflow, subnormals."""
    rng = np.random.default_rng(1)
    s = np.abs(np.round(rng.standard_normal((40, 25)), 1)).astype(np.float32)
    s.flat[[0, 7, 8, 9, 30, 31, 32, 33]] = [np.nan, np.inf, np.nan, -0.0, 3e38, 2e20, 1e-30, 1e-44]
    s.flat[100:140] = 0.0
    s.flat[200:230] = 1.5
    want = _lamp_reference(s)
    xp, arr, back = _on(framework, s)
    got = back(gc.lamp_scores(xp, arr))
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def _lamp_cases():
    """LAMP inputs for the values-only path: ties of weights (hence of LAMP scores), zeros, NaN / inf, elements
    pruned before with a zero score (the fast path) or a nonzero one (the permutation branch)."""
    rng = np.random.default_rng(7)
    shapes = [(30, 20), (7,), (13, 11, 3), (1, 1), (40, 25)]
    base = [np.abs(rng.standard_normal(s)).astype(np.float32) for s in shapes]
    dead = [rng.random(s) < 0.7 for s in shapes]
    special = [b.copy() for b in base]
    special[0].flat[:5] = [np.nan, np.inf, 3e38, 1e-30, 1e-44]
    return {
        "normal": (base, None),
        "rounded": ([np.round(b, 1) for b in base], None),
        "equal": ([np.ones_like(b) for b in base], None),
        "dead-zero": ([np.where(a, np.round(b, 1), 0).astype(np.float32) for a, b in zip(dead, base)], dead),
        "dead-nonzero": (base, dead),
        "special": (special, None),
    }


@pytest.mark.parametrize("framework", ["numpy", pytest.param("jax", marks=pytest.mark.slow),
                                       pytest.param("torch", marks=pytest.mark.slow)])
def test_lamp_keep_equals_the_permutation_path(framework):
    """``lamp_keep`` (one values-only sort per array, the masks recovered from counts) gives the masks of the
    LAMP scores through the permutation (``lamp_scores``) and the selection, bit for bit: ties of LAMP scores
    split at the threshold, everything or nothing pruned, elements pruned before, NaN and inf."""
    from gradclip_core.prune import prune_smallest
    from gradclip_core.prune._allocation import lamp_keep

    def permuted(xp, ss, aa, k):
        return prune_smallest(xp, [gc.lamp_scores(xp, s) for s in ss], k, aa)[0]

    xp, _, back = _on(framework, np.zeros(1, np.float32))
    conv = (lambda a: xp.asarray(a)) if framework != "torch" else (lambda a: _on("torch", np.asarray(a))[1])
    run, ref = lamp_keep, permuted
    if framework == "jax":
        import jax

        run, ref = jax.jit(lamp_keep, static_argnums=0), jax.jit(permuted, static_argnums=0)
    for name, (scores, dead) in _lamp_cases().items():
        alive = dead if dead is not None else [np.ones(s.shape, bool) for s in scores]
        n = sum(s.size for s in scores)
        for amount in (0.0, 0.1, 0.5, 0.77, 1.0):
            k = round(amount * n)
            ss, aa = [conv(s) for s in scores], [conv(a) for a in alive]
            kk = xp.asarray(k, dtype=xp.count_nonzero(aa[0]).dtype)
            want, got = ref(xp, ss, aa, kk), run(xp, ss, aa, kk)
            for w, g in zip(want, got):
                assert np.array_equal(back(g), back(w)), (name, amount)
