"""Pruning through gradclip_optax.wrap under jax.jit: lax.cond schedules, strip, masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradclip_core as gc
import gradclip_optax

from . import util


def test_wrap_prunes_masks_momentum_and_strips_under_jit():
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32), "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    rule = gc.global_magnitude_prune(0.75, schedule=gc.polynomial_schedule(0, 4, 2, initial_sparsity=0.25))
    tx = gradclip_optax.wrap(rule, optax.sgd(0.1, momentum=0.9))
    state, step = tx.init(params), util.train_step(tx)
    seen = []
    for _ in range(6):
        g = jax.tree.map(lambda p: jnp.ones_like(p), params)
        params, state = step(params, state, g)
        seen.append(round(float(state.info["sparsity"]), 4))
    masks = gradclip_optax.masks(params, state)
    assert bool(jnp.all(masks["b"]))  # the bias (rank 1) is not pruned by default
    n = 64
    assert seen[0] == round(round(0.25 * n) / n, 4) and seen[1] == seen[0]  # recomputed at steps 0, 2, 4
    assert seen[-1] == round(round(0.75 * n) / n, 4)
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
        assert bool(jnp.all(jnp.where(m, 0.0, p) == 0))
    stripped = gradclip_optax.strip(params, state)
    assert jax.tree.structure(stripped) == jax.tree.structure(params)
    assert int(state.rule_state.count) == 6
    # per-array info keys name the leaf by its tree path (issue 16), not its position
    assert set(state.info) == {"sparsity", "sparsity/a", "threshold"}  # (the bias is not pruned)
    nested = {"enc": {"kernel": params["a"]}, "head": [params["b"]]}
    tx2 = optax.chain(gradclip_optax.transform(gc.record_norms(2)),
                      gradclip_optax.wrap(gc.magnitude_prune(0.5, params="all"), optax.sgd(0.1)))
    state2 = tx2.init(nested)
    _, state2 = jax.jit(tx2.update)(jax.tree.map(jnp.ones_like, nested), state2, nested)
    assert set(state2[1].info) == {"sparsity", "sparsity/enc/kernel", "sparsity/head/0"}


def test_jax_bitcast_keys_equal_portable_keys():
    # (no subnormals: XLA on CPU flushes them in arithmetic, which is why JAX uses a bitcast)
    from gradclip_core.backend import order_keys
    from gradclip_core.backend._selection import bits_portable

    v = jnp.asarray(np.array([0.0, 1.2e-38, 0.5, 3e38, np.inf, np.nan], np.float32))
    np.testing.assert_array_equal(np.asarray(order_keys(jnp, v)), np.asarray(bits_portable(jnp, v)))


def test_masks_equal_numpy_reference_for_every_pruner():
    rng = np.random.default_rng(1)
    ws = [rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4, 3, 2)).astype(np.float32)]
    # (every pruner runs through wrap + jit in tests/parity; here the bare project under jit)
    rules = [gc.global_magnitude_prune(0.5), gc.nm_prune(2, 4, axis=0)]
    for rule in rules:
        _, ref, _ = rule.project(ws, rule.init(ws))
        jw = [jnp.asarray(w) for w in ws]
        _, got, _ = jax.jit(rule.project)(jw, rule.init(jw))
        for a, b in zip(ref.masks, got.masks):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- the JAX selection kernels (gradclip_core.backend._jax) against the portable ones ---------

import pytest  # noqa: E402

import gradclip_core.backend as gcb  # noqa: E402
from gradclip_core.backend import _jax as jax_kernels  # noqa: E402
from gradclip_core.backend import _selection  # noqa: E402
from gradclip_core.prune import prune_smallest  # noqa: E402
from array_api_compat import numpy as compat_np  # noqa: E402

gcb.ensure_kernels(jax_kernels.NAMESPACE)


def _radix(xs, k, masks=None, divisors=None):
    """The one selection driver with the JAX kernels (11-bit digits in a lax.fori_loop)."""
    return prune_smallest(jnp, xs, k, masks, divisors)


def _portable(xs, k, masks=None, divisors=None):
    """The same driver with the portable kernels (31 one-bit passes), on JAX arrays."""
    _selection.register_selection(jax_kernels.NAMESPACE, _selection.PORTABLE)
    try:
        return prune_smallest(jnp, xs, k, masks, divisors)
    finally:
        _selection.register_selection(jax_kernels.NAMESPACE, jax_kernels.SELECTION)


def _same(got, want):
    (m1, t1), (m2, t2) = got, want
    assert len(m1) == len(m2)
    for a, b in zip(m1, m2):
        assert a.dtype == b.dtype == jnp.bool_ and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert t1.dtype == t2.dtype == jnp.float32 and t1.shape == t2.shape == ()
    a, b = np.asarray(t1), np.asarray(t2)
    if b == 0 and 0 < a < np.finfo(np.float32).tiny:
        return  # a subnormal threshold: XLA on CPU flushes it to 0 in the default's max (see _case)
    assert (np.isnan(a) and np.isnan(b)) or a.view(np.int32) == b.view(np.int32)  # bit for bit


def _case(kind, rng):
    shapes = [(30, 7), (0, 3), (), (41,), (5, 1, 3)]
    xs = [rng.normal(size=s).astype(np.float32) for s in shapes]
    if kind == "ties":
        xs = [np.round(x * 2) / 2 for x in xs]  # few distinct values, ties across arrays
        xs[0][:, :3] = 0.0
    elif kind == "nonfinite":
        xs[0][3, :4] = [np.nan, np.inf, -np.inf, -np.nan]
        xs[3][::5] = np.nan
        xs[4][0] = np.float32(1e-40)  # subnormal: same masks; thresholds checked against NumPy
    elif kind == "wide":
        xs = [x * np.float32(10.0) ** rng.integers(-30, 30, size=x.shape) for x in xs]
    return [np.asarray(x, np.float32) for x in xs]


@pytest.mark.parametrize("kind", ["random", "ties", "nonfinite", "wide"])
def test_radix_selection_equals_portable_default(kind):
    rng = np.random.default_rng(len(kind))
    xs = [jnp.asarray(x) for x in _case(kind, rng)]
    olds = [jnp.asarray(rng.random(x.shape) > 0.3) for x in xs]
    divisors = [jnp.float32(d) for d in rng.uniform(0.1, 3.0, size=len(xs))]
    n = sum(x.size for x in xs)
    fast = jax.jit(_radix)
    slow = jax.jit(_portable)
    for k in [0, 1, 2, n // 3, n // 2, n - 2, n - 1, n, n + 5, -3]:
        for old in (None, olds):
            for divs in (None, divisors):
                _same(fast(xs, jnp.asarray(k), old, divs), slow(xs, jnp.asarray(k), old, divs))
        got = _radix(xs, k)  # eager, Python int k
        _same(got, _portable(xs, k))
        _same(got, prune_smallest(compat_np, [np.asarray(x) for x in xs], k))  # exact (no flush to zero)


def test_radix_selection_edge_cases():
    one = [jnp.asarray([3.0, 3.0, 3.0, 3.0])]
    for k in range(5):
        _same(_radix(one, k), _portable(one, k))
    assert _radix(one, 2)[0][0].tolist() == [False, False, True, True]  # ties by index
    empty = [jnp.zeros((0,)), jnp.zeros((2, 0))]
    for k in (0, 1):
        _same(_radix(empty, k), _portable(empty, k))
    assert _radix([], 1) == ([], _radix([], 1)[1])
    allnan = [jnp.full((3,), jnp.nan), jnp.asarray([jnp.inf])]
    for k in range(5):
        _same(_radix(allnan, k), _portable(allnan, k))
    pruned = [jnp.asarray([5.0, 1.0, 2.0]), jnp.asarray([0.5])]
    old = [jnp.asarray([False, True, True]), jnp.asarray([True])]
    got = _radix(pruned, 2, old)  # the previously pruned 5.0 ranks first
    _same(got, _portable(pruned, 2, old))
    assert [m.tolist() for m in got[0]] == [[False, True, True], [False]]
    bf = [jnp.asarray([0.5, -0.25, 2.0], jnp.bfloat16), jnp.asarray([1.0, 0.25], jnp.float16)]
    _same(_radix(bf, 2), _portable(bf, 2))


def test_radix_selection_counts_are_int32_without_x64_and_registered():
    assert not jax.config.jax_enable_x64
    assert _selection.selection_for(jnp, []) is jax_kernels.SELECTION
    jaxpr = jax.make_jaxpr(lambda x: _radix([x], 3))(jnp.ones((4, 4)))

    def dtypes(jx):
        for eqn in jx.eqns:
            yield from (v.aval.dtype for v in eqn.outvars)
            for p in eqn.params.values():
                if hasattr(p, "jaxpr"):
                    yield from dtypes(p.jaxpr)

    assert np.dtype("int64") not in set(dtypes(jaxpr.jaxpr))  # int32 counts, also inside the fori_loop


def test_radix_selection_sums_histograms_through_the_collective_hook():
    from gradclip_core.backend import Participants, collective

    calls = []

    def reduce(xp, x, op):
        calls.append((tuple(x.shape), op))
        return x

    xs = [jnp.asarray(np.random.default_rng(3).normal(size=(6, 5)), jnp.float32), jnp.zeros((0, 5))]
    single = Participants(reduce, size=1, index=lambda xp: 0, total=lambda n: n)
    with collective(single):
        got = _radix(xs, 11)
    _same(got, _portable(xs, 11))  # one participant: the single-process result
    hist = [c for c in calls if c[0] == (1 << jax_kernels.DIGIT,)]
    assert len(hist) == 1 and hist[0][1] == "sum"  # the pass body is traced once (lax.fori_loop)


def test_int_amounts_and_iterative_pruning_under_jit():
    # Issue 16: int amounts are counts (as in torch); relative_to="remaining" prunes a
    # fraction of what is left at each recomputation, inside a jitted step (lax.cond).
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4), "b": jnp.arange(1.0, 5.0)}
    for rule, expected in (
        (gc.magnitude_prune(3, params="all"), [6 / 20] * 3),  # 3 of each array, once
        (gc.global_magnitude_prune(0.5, relative_to="remaining", schedule=gc.constant_schedule(0, -1, 2), params="all"),
         [10 / 20, 10 / 20, 15 / 20]),  # kept 20 -> 10 -> 5 at steps 0 and 2
    ):
        tx = gradclip_optax.wrap(rule, optax.sgd(0.0))
        state = tx.init(params)
        step = jax.jit(lambda p, s: tx.update(jax.tree.map(jnp.zeros_like, p), s, p))
        seen = []
        for _ in range(3):
            _, state = step(params, state)
            seen.append(float(state.info["sparsity"]))
        np.testing.assert_allclose(seen, expected, rtol=1e-6)


def test_params_patterns_match_tree_paths():
    params = {"enc": {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}, "dec": {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}}
    tx = gradclip_optax.wrap(gc.magnitude_prune(0.5, params=gc.Params(include=["enc/*"])), optax.sgd(0.0))
    state = tx.init(params)
    _, state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
    masks = gradclip_optax.masks(params, state)
    assert int((~masks["enc"]["w"]).sum()) == 8 and bool(masks["dec"]["w"].all())
    assert set(state.info) == {"sparsity", "sparsity/enc/w"}


def test_wanda_from_captured_inputs_and_movement_under_jit():
    # Wanda (Sun et al. 2023): |W_ij| * ||X_j||_2 with kernels (in, out): the input channel is axis 0.
    rng = np.random.default_rng(5)
    params = {"l1": {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)},
              "l2": {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}}
    batches = [jnp.asarray(rng.normal(size=(8, 6)), jnp.float32) for _ in range(2)]

    def capture(x):
        return {"l1/w": x, "l2/w": jax.nn.relu(x @ params["l1"]["w"])}

    norms = gradclip_optax.activation_norms(capture, batches)
    x = np.concatenate([np.asarray(b) for b in batches])
    assert np.allclose(np.asarray(norms["l1/w"]), np.linalg.norm(x, axis=0), rtol=1e-5)
    tx = gradclip_optax.wrap(gc.wanda_prune(0.5, act_norms=norms), optax.sgd(0.0))
    state = tx.init(params)
    _, state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
    masks = gradclip_optax.masks(params, state)
    for name in ("l1", "l2"):
        w = np.asarray(params[name]["w"], np.float64)
        metric = (np.abs(w) * np.asarray(norms[f"{name}/w"], np.float64).reshape(-1, 1)).ravel()
        keep = np.ones(w.size, bool)
        keep[np.argsort(metric, kind="stable")[: round(0.5 * w.size)]] = False
        assert np.array_equal(np.asarray(masks[name]["w"]), keep.reshape(w.shape))

    # movement (Sanh et al. 2020): wrap passes the weights to update; S = -sum_t W_t * G_t
    tx = gradclip_optax.wrap(gc.movement_prune(0.5, schedule=gc.one_shot(1)), optax.sgd(0.1))
    p, state = params, tx.init(params)
    total = jax.tree.map(lambda w: np.zeros(w.shape), params)
    update = jax.jit(tx.update)
    for _ in range(2):
        g = jax.tree.map(lambda w: jnp.asarray(rng.normal(size=w.shape), jnp.float32), p)
        total = jax.tree.map(lambda t, w, gg: t - np.asarray(w, np.float64) * np.asarray(gg, np.float64), total, p, g)
        u, state = update(g, state, p)
        p = optax.apply_updates(p, u)
    masks = gradclip_optax.masks(p, state)
    for name in ("l1", "l2"):
        t = total[name]["w"].ravel()
        keep = np.ones(t.size, bool)
        keep[np.argsort(t, kind="stable")[: round(0.5 * t.size)]] = False
        assert np.array_equal(np.asarray(masks[name]["w"]), keep.reshape(total[name]["w"].shape))
