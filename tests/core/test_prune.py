"""Pruning rules on NumPy and array-api-strict: exact counts, tie order, NaN policy, monotone masks."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradclip_core as gc
import gradclip_core.backend as gcb
from gradclip_core._hash import array_bases, fmix32_int, hash_keys
from gradclip_core.backend import _numpy as np_kernels
from gradclip_core.backend import _selection
from gradclip_core.backend._selection import bits_portable, key_value
from gradclip_core.prune import prune_smallest
from array_api_compat import numpy as compat_np

from .util import NAMESPACES, to_np, to_xp


def project(rule, xp, params, state=None):
    p = to_xp(xp, params)
    state = rule.init(p) if state is None else state
    out, state, info = rule.project(p, state)
    return to_np(out), state, {k: float(v) for k, v in info.items()}


def expected_keep(arrays, k):
    """Reference: prune the k smallest by (|x| with NaN above inf, global flat index)."""
    flat = np.concatenate([np.abs(np.asarray(a, np.float32)).ravel() for a in arrays]) if arrays else np.zeros(0)
    rank_nan = np.where(np.isnan(flat), 2, np.where(np.isinf(flat), 1, 0))
    order = np.lexsort((np.arange(flat.size), np.nan_to_num(flat, nan=0.0, posinf=0.0), rank_nan))
    keep = np.ones(flat.size, bool)
    keep[order[:k]] = False
    return keep


# ------------------------------------------------------------------ selection primitive

def test_portable_bits_equal_numpy_view_on_every_kind_of_float32():
    import array_api_strict as xs

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 0x7F800000, 50000, dtype=np.int64).astype(np.int32)
    v = np.concatenate([bits.view(np.float32), np.array([0, np.inf, np.nan, 1e-45, 1.1754942e-38, 3.4e38], np.float32)])
    np.testing.assert_array_equal(np.asarray(bits_portable(xs, xs.asarray(v))), np_kernels.order_keys(compat_np, v))
    keys = np_kernels.order_keys(compat_np, v) + 1  # and the threshold decoding inverts them, exactly
    decoded = np.array([float(key_value(xs, xs.asarray(int(k)))) for k in keys[::97]], np.float32)
    np.testing.assert_array_equal(decoded.view(np.int32), v[::97].view(np.int32))


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.lists(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=6),
                               elements=st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, 2.5, np.nan, np.inf, -np.inf, 1e-40])),
                    min_size=1, max_size=4),
    frac=st.floats(0, 1),
    ns=st.sampled_from([0, 1]),
)
def test_prune_smallest_is_the_total_order(arrays, frac, ns):
    import array_api_strict as xs

    xp = [compat_np, xs][ns]
    n = sum(a.size for a in arrays)
    k = int(round(frac * n))
    keep, _ = prune_smallest(xp, to_xp(xp, arrays), k)
    got = np.concatenate([np.asarray(m).ravel() for m in keep])
    np.testing.assert_array_equal(got, expected_keep(arrays, k))


@pytest.fixture(params=["sort", "compact", "radix", "digit4"])
def numpy_selection(request):
    """The NumPy selection kernels with each finish: one sort of a few keys, compaction, full radix passes,
    another digit width."""
    kinds = {
        "sort": np_kernels.SELECTION,
        "compact": np_kernels.SELECTION._replace(sort_limit=0),
        "radix": np_kernels.SELECTION._replace(gather=None, sort_limit=0),
        "digit4": _selection.PORTABLE._replace(digit=4),
    }
    _selection.register_selection(np_kernels.NAME, kinds[request.param])
    yield request.param
    _selection.register_selection(np_kernels.NAME, np_kernels.SELECTION)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arrays=st.lists(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=7),
                               elements=st.sampled_from([0.0, 0.5, -0.5, 1.0, 2.5, np.nan, np.inf, 1e-40, 3e-39])
                               | st.floats(-3, 3, width=32)),
                    min_size=1, max_size=4),
    frac=st.floats(0, 1),
    seed=st.integers(0, 2**31),
)
def test_every_selection_path_gives_the_portable_masks_and_threshold(numpy_selection, arrays, frac, seed):
    """One driver, several kernel sets: masks (old masks and divisors included) and thresholds bit for bit."""
    import array_api_strict as xs

    rng = np.random.default_rng(seed)
    n = sum(a.size for a in arrays)
    k = int(round(frac * n))
    old = [rng.random(a.shape) < 0.8 for a in arrays] if seed % 2 else None
    divs = [np.asarray(rng.uniform(0.5, 2), np.float32) for _ in arrays] if seed % 3 == 0 else None
    want, want_thr = prune_smallest(xs, to_xp(xs, arrays), k, None if old is None else to_xp(xs, old),
                                    None if divs is None else to_xp(xs, divs))
    got, thr = prune_smallest(compat_np, arrays, k, old, divs)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(thr, np.float32).view(np.int32) == np.asarray(want_thr, np.float32).view(np.int32) or (
        np.isnan(float(thr)) and np.isnan(float(want_thr)))


# ------------------------------------------------------------------ rules

@pytest.mark.parametrize("xp", NAMESPACES)
@settings(max_examples=25, deadline=None)
@given(w=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=9),
                    elements=st.floats(-4, 4, width=32)),
       amount=st.floats(0, 1))
def test_magnitude_prune_count_is_round_half_even(xp, w, amount):
    out, state, info = project(gc.magnitude_prune(amount, params="all"), xp, [w])
    k = int(np.round(amount * w.size))
    assert int((~np.asarray(state.masks[0])).sum()) == k
    np.testing.assert_array_equal(np.asarray(state.masks[0]).ravel(), expected_keep([w], k))
    assert float(info["sparsity"]) == pytest.approx(k / w.size)
    assert np.all(out[0][~np.asarray(state.masks[0])] == 0)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_keep_rounding_preset_keeps_at_least_one(xp):
    w = [np.arange(1, 6, dtype=np.float32)]
    _, s, _ = project(gc.magnitude_prune(0.99, rounding="keep", params="all"), xp, w)
    assert np.asarray(s.masks[0]).tolist() == [False, False, False, False, True]
    _, s, _ = project(gc.magnitude_prune(0.5, rounding="keep", params="all"), xp, w)  # kept = round(2.5) = 2
    assert int(np.asarray(s.masks[0]).sum()) == 2
    _, s, _ = project(gc.magnitude_prune(0.5, params="all"), xp, w)  # pruned = round(2.5) = 2
    assert int(np.asarray(s.masks[0]).sum()) == 3


@pytest.mark.parametrize("xp", NAMESPACES)
def test_ties_prune_lower_global_index_first_and_nan_last(xp):
    w = [np.full((2, 2), 0.5, np.float32), np.array([np.nan, 0.5, np.inf], np.float32)]
    _, s, info = project(gc.global_magnitude_prune(5 / 7, params="all"), xp, w)
    assert np.asarray(s.masks[0]).ravel().tolist() == [False] * 4
    assert np.asarray(s.masks[1]).tolist() == [True, False, True]
    assert info["threshold"] == 0.5
    _, s, info = project(gc.global_magnitude_prune(1.0, params="all"), xp, w)
    assert np.isnan(info["threshold"]) and not np.asarray(s.masks[1]).any()


@pytest.mark.parametrize("xp", NAMESPACES)
def test_update_masks_grads_and_project_is_idempotent(xp):
    rng = np.random.default_rng(1)
    w = [rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    rule = gc.global_magnitude_prune(0.6, schedule=gc.constant_schedule())
    out, state, _ = project(rule, xp, w)
    again, state2, _ = project(rule, xp, out, state)
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a, b)
    g, _, _ = rule.update(to_xp(xp, [np.ones((4, 5), np.float32), np.ones(3, np.float32)]), state2)
    for gi, m in zip(to_np(g), state2.masks):
        np.testing.assert_array_equal(gi, np.asarray(m).astype(np.float32))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_masks_never_revive_under_a_schedule(xp):
    rng = np.random.default_rng(2)
    rule = gc.magnitude_prune(0.9, schedule=gc.polynomial_schedule(0, 6, 2, initial_sparsity=0.1))
    w = to_xp(xp, [rng.normal(size=(8, 8)).astype(np.float32)])
    state = rule.init(w)
    prev = np.ones((8, 8), bool)
    sparsities = []
    for _ in range(9):
        w = [x + xp.asarray(rng.normal(size=(8, 8)).astype(np.float32)) for x in w]  # grow back if not masked
        w, state, info = rule.project(w, state)
        m = np.asarray(state.masks[0])
        assert not np.any(m & ~prev)
        prev = m
        sparsities.append(round(float(info["sparsity"]), 4))
    assert int(state.count) == 9
    # recomputed at steps 0, 2, 4, 6: s = 0.9 - 0.8 (1 - t/6)^3, k = round(s * 64)
    ks = [round((0.9 - 0.8 * (1 - t / 6) ** 3) * 64) for t in (0, 2, 4, 6)]
    assert sparsities[::2][:4] == [round(k / 64, 4) for k in ks]
    assert sparsities[1] == sparsities[0] and sparsities[-1] == round(ks[-1] / 64, 4)


@pytest.mark.parametrize("xp", NAMESPACES)
def test_one_shot_at_a_later_step_and_fixed_threshold(xp):
    rule = gc.magnitude_prune(threshold=0.5, schedule=gc.one_shot(1), params="all")
    w = [np.array([0.1, -0.7, np.nan, -0.4], np.float32)]
    out, s, info = project(rule, xp, w)
    assert info["sparsity"] == 0.0
    out, s, info = project(rule, xp, out, s)
    assert np.asarray(s.masks[0]).tolist() == [False, True, True, False] and info["sparsity"] == 0.5


def test_random_prune_hash_matches_python_reference_and_is_exact_count():
    seed, i, n = 11, 3, 50
    b1, b2 = array_bases(seed, i)
    ref = [fmix32_int(fmix32_int((j + b1) & 0xFFFFFFFF) ^ b2) >> 8 for j in range(n)]
    assert np.asarray(hash_keys(compat_np, (n,), seed, i)).tolist() == ref
    import array_api_strict as xs

    assert np.asarray(hash_keys(xs, (n,), seed, i)).tolist() == ref
    w = [np.ones((10, 10), np.float32), np.ones((7,), np.float32)]
    for scope in ("array", "global"):
        _, s1, _ = project(gc.random_prune(0.3, seed=5, scope=scope, params="all"), compat_np, w)
        _, s2, _ = project(gc.random_prune(0.3, seed=5, scope=scope, params="all"), xs, w)
        for a, b in zip(s1.masks, s2.masks):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        total = sum(int((~np.asarray(m)).sum()) for m in s1.masks)
        assert total == (30 + 2 if scope == "array" else round(0.3 * 107))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_ln_structured_prunes_whole_units(xp):
    w = [np.array([[1, 1], [0.1, 0.2], [3, 0], [0.5, 0.5]], np.float32), np.ones(4, np.float32)]
    out, s, _ = project(gc.ln_structured_prune(0.5, ord=1, axis="out_first"), xp, w)
    assert out[0].tolist() == [[1, 1], [0, 0], [3, 0], [0, 0]]
    assert np.asarray(s.masks[1]).all()  # rank-1 arrays stay dense
    out, _, _ = project(gc.ln_structured_prune(0.5, ord="inf", axis="out_last"), xp, w[:1])
    assert (out[0][:, 1] == 0).all() and (out[0][:, 0] == w[0][:, 0]).all()


@pytest.mark.parametrize("xp", NAMESPACES)
def test_nm_prune_keeps_n_per_group_along_axis(xp):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 8)).astype(np.float32)
    _, s, info = project(gc.nm_prune(keep=2, group=4, axis=1), xp, [w, np.ones((6, 3), np.float32)])
    m = np.asarray(s.masks[0]).reshape(6, 2, 4)
    assert (m.sum(-1) == 2).all()
    groups = np.abs(w).reshape(6, 2, 4)
    assert (np.where(m, groups, np.inf).min(-1) >= np.where(m, -np.inf, groups).max(-1)).all()
    assert np.asarray(s.masks[1]).all() and info["sparsity/1"] == 0.0  # 3 % 4 != 0: dense
    _, s0, _ = project(gc.nm_prune(keep=1, group=3, axis=0), xp, [w])
    assert (np.asarray(s0.masks[0]).reshape(2, 3, 8).sum(1) == 1).all()


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: gc.magnitude_prune(1.5), "amount"),
        (lambda: gc.magnitude_prune(), "exactly one"),
        (lambda: gc.magnitude_prune(0.5, threshold=0.1), "exactly one"),
        (lambda: gc.magnitude_prune(threshold=-1.0), "threshold"),
        (lambda: gc.global_magnitude_prune(-0.1), "amount"),
        (lambda: gc.global_magnitude_prune(0.5, rounding="floor"), "rounding"),
        (lambda: gc.global_magnitude_prune(0.5, schedule="cubic"), "schedule"),
        (lambda: gc.random_prune(0.5, seed=-1), "seed"),
        (lambda: gc.random_prune(0.5, scope="layer"), "scope"),
        (lambda: gc.ln_structured_prune(0.5, ord=3, axis=0), "ord"),
        (lambda: gc.ln_structured_prune(0.5, axis="rows"), "axis"),
        (lambda: gc.nm_prune(keep=4, group=4, axis=-1), "keep must be < group"),
        (lambda: gc.nm_prune(keep=0, group=4, axis=-1), "keep"),
        (lambda: gc.nm_prune(2, 4, axis=(0, 1)), "axis"),
        (lambda: gc.polynomial_schedule(5, 5), "end_step"),
        (lambda: gc.polynomial_schedule(0, 5, initial_sparsity=2.0), "initial_sparsity"),
        (lambda: gc.constant_schedule(frequency=0), "frequency"),
        (lambda: gc.one_shot(-1), "step"),
    ],
)
def test_bad_arguments_name_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


PRUNERS = {
    "magnitude_prune": lambda: gc.magnitude_prune(0.5, schedule=gc.polynomial_schedule(0, 4, 2)),
    "global_magnitude_prune": lambda: gc.global_magnitude_prune(0.5, normalize=True, rounding="keep"),
    "random_prune": lambda: gc.random_prune(0.5, seed=2),
    "ln_structured_prune": lambda: gc.ln_structured_prune(0.5, axis=(1,)),
    "nm_prune": lambda: gc.nm_prune(1, 2, axis=0),
}


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_config_round_trip_and_state_is_arrays_only(name):
    rule = PRUNERS[name]()
    again = gc.from_config(rule.config)
    assert again.config == rule.config and rule.has_project and rule.name == name
    w = [np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)]
    a, sa, _ = rule.project(w, rule.init(w))
    b, sb, _ = again.project(w, again.init(w))
    np.testing.assert_array_equal(a[0], b[0])
    assert isinstance(sa, gc.PruneState) and sa.count.dtype == np.int32 and sa.masks[0].dtype == bool


def test_state_mismatch_is_reported():
    rule = gc.magnitude_prune(0.5)
    with pytest.raises(ValueError, match="masks for 2 arrays"):
        rule.update([np.ones(2), np.ones(2)], rule.init([np.ones(2)]))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_pruning_acts_on_weights_by_default_and_params_chooses(xp):
    """Default ``params="weights"``: rank >= 2 only; biases get a 0-d all-True mask and keep their values."""
    w = [np.array([[0.1, -2.0], [0.3, 4.0]], np.float32), np.array([0.01, -3.0], np.float32), np.float32(0.5)]
    out, s, info = project(gc.global_magnitude_prune(0.5), xp, w)
    assert np.asarray(s.masks[0]).tolist() == [[False, True], [False, True]]
    assert [np.asarray(m).shape for m in s.masks] == [(2, 2), (), ()] and all(bool(np.asarray(m)) for m in s.masks[1:])
    np.testing.assert_array_equal(out[1], w[1])
    assert info["sparsity"] == 0.5 and set(info) >= {"sparsity/0"}  # of the pruned arrays
    _, s, _ = project(gc.global_magnitude_prune(0.5, params="all"), xp, w)
    assert sum(int((~np.asarray(m)).sum()) for m in s.masks) == round(0.5 * 7)
    by_name = gc.on(gc.magnitude_prune(0.5), gc.Params(include=["b*"]))  # names: see gc.backend.array_names
    with gcb.array_names(["w", "b", "s"]):
        _, s, info = project(by_name, xp, w)
    assert np.asarray(s.masks[1]).tolist() == [False, True] and np.asarray(s.masks[0]).shape == ()
    assert "sparsity/1" in info and "sparsity/0" not in info  # per-array keys keep the arrays' positions
    assert gc.from_config(by_name.config).config == by_name.config
    assert "params=" in repr(by_name)
    with pytest.raises(ValueError, match="params must be 'all', 'weights'"):
        gc.magnitude_prune(0.5, params="kernels")

def _tfmot_polynomial(step, initial, final, begin, end, power, frequency):
    """tfmot's PolynomialDecay.__call__ and PruningSchedule._should_prune_in_step, transcribed
    (tensorflow/model-optimization, tensorflow_model_optimization/python/core/sparsity/keras/
    pruning_schedule.py), in float32 as there."""
    p = min(1.0, max(0.0, float(np.float32(step - begin) / np.float32(end - begin))))
    sparsity = float(np.float32(initial - final) * np.float32(1 - p) ** power + np.float32(final))
    should = begin <= step and (step <= end or end < 0) and (step - begin) % frequency == 0
    return should, sparsity


@pytest.mark.parametrize("begin, end, frequency", [(0, 40, 10), (0, 40, 1), (3, 23, 4)])
def test_polynomial_schedule_counts_steps_as_tfmot(begin, end, frequency):
    # Issue 16: "polynomial_schedule(0, 40, 10) is one update short after 40 steps (0.7875,
    # not 0.8)". tfmot gives the same: UpdatePruningStep sets the pruning step to
    # optimizer.iterations at each batch start (0 first), its pruning_impl keeps
    # max(1, round(n * (1 - sparsity))) weights (our rounding="keep"), so after N batches
    # the last mask is that of step N - 1 (rounded down to the frequency).
    n = 1000
    w = [np.random.default_rng(0).permutation(np.arange(1, n + 1)).astype(np.float32).reshape(40, 25)]
    rule = gc.magnitude_prune(0.8, schedule=gc.polynomial_schedule(begin, end, frequency), rounding="keep")
    state = rule.init(w)
    expected_sparsity = 0.0
    for step in range(end + 1):
        w, state, info = rule.project(w, state)
        should, sparsity = _tfmot_polynomial(step, 0.0, 0.8, begin, end, 3, frequency)
        if should:
            kept = int(max(np.round(np.float32(n) * (np.float32(1) - np.float32(sparsity))), 1))  # tf.math.round: half even
            expected_sparsity = (n - kept) / n
        assert float(info["sparsity"]) == pytest.approx(expected_sparsity, abs=1e-7), step
        if step == end - 1 and (begin, end, frequency) == (0, 40, 10):
            assert float(info["sparsity"]) == pytest.approx(0.7875, abs=1e-3)  # after 40 steps, as in tfmot
    assert float(info["sparsity"]) == pytest.approx(0.8, abs=1e-7) or (end - begin) % frequency


@pytest.mark.parametrize("xp", NAMESPACES)
def test_float64_weights_rank_by_float32_scores_as_documented(xp):
    # Issue 16 asked to rank in the input's precision or say so: scores are float32 |w|
    # (README rule table). Two float64 weights within a float32 ulp tie, and ties go by
    # flat index, so the first is pruned although it is the larger in float64 (torch's
    # l1_unstructured, ranking in float64, would prune the second).
    w = to_xp(xp, [np.array([1.0 + 1e-12, 1.0, 2.0, 3.0], np.float64)])
    rule = gc.magnitude_prune(1, params="all")
    _, state, _ = rule.project(w, rule.init(w))
    assert np.asarray(state.masks[0]).tolist() == [False, True, True, True]


@pytest.mark.parametrize("xp", NAMESPACES)
def test_int_amount_is_a_count_and_remaining_prunes_what_is_left(xp):
    w = to_xp(xp, [np.arange(1, 11, dtype=np.float32), np.arange(1, 5, dtype=np.float32)])
    rule = gc.magnitude_prune(1, params="all")  # an int: one element per array (a float 1.0 would prune all)
    _, state, info = rule.project(w, rule.init(w))
    assert [int(np.sum(~np.asarray(m))) for m in state.masks] == [1, 1]
    rule = gc.global_magnitude_prune(0.5, relative_to="remaining", schedule=gc.constant_schedule(), params="all")
    state = rule.init(w)
    seen = []
    for _ in range(3):  # kept 14 -> 7 -> 3 -> 1: each round prunes round_half_even(0.5 * kept) (7, 4, 2)
        _, state, info = rule.project(w, state)
        seen.append(sum(int(np.sum(np.asarray(m))) for m in state.masks))
    assert seen == [7, 3, 1]
