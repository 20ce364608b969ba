"""Pruning in torch: masks equal torch.nn.utils.prune's on tie-free inputs; buffers, deepcopy, attach, strip."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as tprune

import array_api_strict as xs_strict

import gradclip_core as gc
import gradclip_core.backend as gcb
import gradclip_torch
from gradclip_core.backend import _torch as kernels
from gradclip_core.prune import prune_smallest


def model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.ReLU(), torch.nn.Conv1d(20, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))


def weights(m):
    return [(mod, "weight") for mod in m if hasattr(mod, "weight")]


@pytest.mark.parametrize("amount", [0.1, 0.37, 0.5, 0.9])
def test_l1_unstructured_masks(amount):
    ref, ours = model(), model()
    for mod, name in weights(ref):
        tprune.l1_unstructured(mod, name, amount=amount)
    params = [mod.weight for mod, _ in weights(ours)]
    _, info = gradclip_torch.project_(params, gc.magnitude_prune(amount))
    for (r, _), p in zip(weights(ref), params):
        assert torch.equal(r.weight_mask.bool(), p != 0)


@pytest.mark.parametrize("amount", [0.2, 0.5, 0.77])
def test_global_unstructured_masks(amount):
    ref, ours = model(1), model(1)
    tprune.global_unstructured(weights(ref), pruning_method=tprune.L1Unstructured, amount=amount)
    pruner = gradclip_torch.prune(ours, gc.global_magnitude_prune(amount))
    masks = gradclip_torch.masks(ours)
    assert sorted(masks) == ["0.weight", "2.weight", "4.weight"]
    assert all(torch.equal(masks[k], v) for k, v in pruner.masks.items())
    for idx in (0, 2, 4):
        assert torch.equal(ref[idx].weight_mask.bool(), masks[f"{idx}.weight"])


@pytest.mark.parametrize("n, dim", [(1, 0), (2, 0), (float("inf"), 0), (2, 1)])
def test_ln_structured_masks(n, dim):
    ref, ours = model(2), model(2)
    for mod, name in weights(ref):
        tprune.ln_structured(mod, name, amount=0.4, n=n, dim=dim)
    params = [mod.weight for mod, _ in weights(ours)]
    axis = (lambda shape: tuple(a for a in range(len(shape)) if a != dim))
    gradclip_torch.project_(params, gc.ln_structured_prune(0.4, ord=n, axis=axis))
    for (r, _), p in zip(weights(ref), params):
        assert torch.equal(r.weight_mask.bool(), p != 0)


@pytest.mark.parametrize("chunk, limit, eager, sort", [
    (64, 1 << 22, True, 0), (64, 0, True, 0), (64, 0, False, 0), (1 << 18, 1 << 22, True, 0), (1 << 18, 0, False, 0),
    (64, 1 << 22, True, 1 << 16), (64, 0, False, 1 << 16)])
def test_torch_selection_equals_portable_default(chunk, limit, eager, sort, monkeypatch):
    """Every path of the one driver with torch kernels: compaction + sort, CPU tie counting per chunk,
    the sync-free CUDA/compile one, one sort of a few keys (``sort_limit``: keys of several chunks of
    several arrays); against the portable kernels (array-api-strict)."""
    monkeypatch.setattr(kernels, "CPU_SELECTION", kernels.CPU_SELECTION._replace(chunk=chunk, compact_limit=limit,
                                                                                 sort_limit=sort))
    monkeypatch.setattr(kernels, "DEVICE_SELECTION", kernels.DEVICE_SELECTION._replace(chunk=chunk, sort_limit=sort))
    monkeypatch.setattr(kernels, "EAGER_CPU", eager)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=s).astype(np.float32) for s in [(30, 7), (0, 3), (), (41,)]]
    xs[0][:10] = 0.25  # ties
    xs[3][5] = np.nan
    olds = [rng.random(x.shape) > 0.3 for x in xs]
    divs = [np.float32(1.5), np.float32(1.0), np.float32(0.5), np.float32(3.0)]
    n = sum(x.size for x in xs)
    for k in [0, 1, n // 3, n - 2, n]:
        for old in (None, olds):
            for div in (None, divs):
                m1, t1 = prune_smallest(xs_strict, [xs_strict.asarray(x) for x in xs], k,
                                        None if old is None else [xs_strict.asarray(o) for o in old],
                                        None if div is None else [xs_strict.asarray(d) for d in div])
                m2, t2 = prune_smallest(None, [torch.tensor(x) for x in xs], k,
                                        None if old is None else [torch.tensor(o) for o in old],
                                        None if div is None else [torch.tensor(d) for d in div])
                assert all(np.array_equal(np.asarray(a), b.numpy()) for a, b in zip(m1, m2))
                assert np.array_equal(np.float32(np.asarray(t1)), t2.numpy(), equal_nan=True)


@pytest.mark.parametrize("chunk, limit, sort", [(64, 1 << 22, 0), (64, 0, 0), (1 << 18, 1 << 22, 0), (64, 0, 1 << 16)])
def test_torch_signed_selection_equals_ordered_portable(chunk, limit, sort, monkeypatch):
    """Signed scores (movement): the torch CPU kernel's keys, chunk by chunk (or once, for one chunk), give
    the masks and threshold of the portable driver on ``ordered`` scores; NaNs of both signs (a payload-1
    NaN whose halved bits equal +inf's), infinities, signed zeros and ties included (NumPy's selection, checked
    against the portable one in tests/core, is the reference: the portable one takes 31 passes)."""
    from gradclip_core.prune._scores import ordered

    monkeypatch.setattr(kernels, "CPU_SELECTION", kernels.CPU_SELECTION._replace(chunk=chunk, compact_limit=limit,
                                                                                 sort_limit=sort))
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=s).astype(np.float32) for s in [(30, 7), (0, 3), (), (41,), (150,)]]
    flat = xs[0].reshape(-1)  # (a view)
    flat[:10] = -0.25  # ties
    flat[10:14] = [0.0, -0.0, np.inf, -np.inf]
    bits = np.array([0x7F800001, 0xFF800001, 0x7FC00000, 0xFFFFFFFF, 0x00000001, 0x80000001], np.uint32)
    xs[3][:6] = bits.view(np.float32)  # NaNs of both signs, the smallest subnormals
    xs[4][::7] = np.nan
    olds = [rng.random(x.shape) > 0.3 for x in xs]
    for arrays, masks in ((xs, olds), (xs[3:4], olds[3:4]), (xs[:1], olds[:1])):
        n = sum(x.size for x in arrays)
        for k in [1, n // 3, n]:
            for old in (None, masks):
                m1, t1 = prune_smallest(None, [ordered(np, x) for x in arrays], k, old)  # (NumPy's kernels)
                m2, t2 = prune_smallest(None, [torch.tensor(x) for x in arrays], k,
                                        None if old is None else [torch.tensor(o) for o in old], signed=True)
                assert all(np.array_equal(np.asarray(a), b.numpy()) for a, b in zip(m1, m2))
                assert np.array_equal(np.float32(np.asarray(t1)), t2.numpy(), equal_nan=True)


@pytest.mark.parametrize("chunk, limit, eager, sort", [(256, 1 << 22, True, 0), (256, 0, True, 0), (256, 1 << 22, False, 0),
                                                     (256, 0, True, 1 << 16)])
def test_torch_hashed_selection_equals_hash_scores(chunk, limit, eager, sort, monkeypatch):
    """Random scores named by HashScores (SET's growth, random masks): the torch CPU kernel hashes chunk by chunk,
    in the workspace, and gives the masks and threshold of the selection of the scores made whole
    (hash_scores, NumPy's kernels); the default (CUDA / compile path) makes them whole itself. Offsets given as
    ints and as 0-d tensors, steps or none, old masks, a bin of many equal keys (the bin's keys
    ranked in several chunks of 256); hashed keys take the kernels' hash_chunk (here the chunk) in blocks of 50."""
    from gradclip_core._hash import HashScores, hash_scores

    monkeypatch.setattr(kernels, "CPU_SELECTION", kernels.CPU_SELECTION._replace(chunk=chunk, compact_limit=limit,
                                                                                 hash_chunk=chunk, sort_limit=sort))
    monkeypatch.setattr(kernels, "DEVICE_SELECTION", kernels.DEVICE_SELECTION._replace(chunk=chunk, sort_limit=sort))
    monkeypatch.setattr(kernels, "EAGER_CPU", eager)
    monkeypatch.setattr(kernels, "_HASH_BLOCK", 50)  # several hash blocks per chunk (the same two scratch blocks)
    rng = np.random.default_rng(2)
    shapes = [(30, 7), (0, 3), (), (41,), (150, 3)]
    olds = [rng.random(s) > 0.3 for s in shapes]
    olds[4][:, :] = False  # every key 0: one bin of ~400 equal keys
    olds[4][::11] = True
    for step in (None, 123456):
        specs = [HashScores(5, i, o, None if step is None else torch.tensor(step, dtype=torch.int32))
                 for i, o in zip(range(len(shapes)), [0, 0, 3, 12345, torch.tensor(99, dtype=torch.int32)])]
        ref_specs = [s._replace(offset=int(s.offset), step=None if step is None else np.int32(step)) for s in specs]
        scores = [hash_scores(np, s, h) for s, h in zip(shapes, ref_specs)]
        for arrays in (list(range(len(shapes))), [4]):
            n = sum(scores[i].size for i in arrays)
            for k in [1, n // 3]:
                for old in (None, [olds[i] for i in arrays]):
                    m1, t1 = prune_smallest(None, [scores[i] for i in arrays], k, old)
                    m2, t2 = prune_smallest(None, [torch.empty(shapes[i]) for i in arrays], k,
                                            None if old is None else [torch.tensor(o) for o in old],
                                            hashed=[specs[i] for i in arrays])
                    assert all(np.array_equal(np.asarray(a), b.numpy()) for a, b in zip(m1, m2))
                    assert np.array_equal(np.float32(np.asarray(t1)), t2.numpy())


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_hash_keys_on_threads_equal_the_keys_of_hash_scores(threads, loops, monkeypatch):
    """The hash kernel's blocks shared among threads (each share hashing in its own part of the workspace,
    ragged shares and blocks) give the keys of the scores made whole, old mask applied, bit for bit."""
    from gradclip_core._hash import HashScores, hash_scores

    monkeypatch.setattr(kernels, "_HASH_BLOCK", 50)
    monkeypatch.setattr(kernels, "_HOST_CHUNK", 64)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    n = 1000
    flat = torch.empty(n)
    old = torch.tensor(np.random.default_rng(0).random(n) > 0.4)
    for spec, ref in [(HashScores(3, 2, 17, torch.tensor(9, dtype=torch.int32)), HashScores(3, 2, 17, np.int32(9))),
                      (HashScores(0, 5), HashScores(0, 5))]:
        for mask in (None, old, torch.ones(n, dtype=torch.bool)):
            ws = kernels._workspace(None, [flat], n)
            got = kernels._hash_keys(None, spec, 0, n, mask, ws)
            want = kernels._keys(None, torch.from_numpy(hash_scores(np, (n,), ref)), mask, None, kernels._workspace(None, [flat], n))
            assert torch.equal(got, want)
            part = kernels._hash_keys(None, spec, 300, 123, None, kernels._workspace(None, [flat], n))  # (a chunk's elements)
            assert torch.equal(part, kernels._keys(None, torch.from_numpy(hash_scores(np, (n,), ref))[300:423], None, None,
                                                   kernels._workspace(None, [flat], n)))


def test_hashed_selection_refuses_mixed_arguments():
    from gradclip_core._hash import HashScores

    with pytest.raises(ValueError, match="hashed"):
        prune_smallest(None, [torch.ones(3)], 1, hashed=[HashScores(0, 0), HashScores(0, 1)])
    with pytest.raises(ValueError, match="hashed"):
        prune_smallest(None, [torch.ones(3)], 1, divisors=[torch.tensor(2.0)], hashed=[HashScores(0, 0)])


def test_masks_are_buffers_that_survive_state_dict_and_deepcopy():
    m = model(3)
    gradclip_torch.prune(m, gc.global_magnitude_prune(0.5))
    sd = m.state_dict()
    assert sd["0.weight_mask"].dtype == torch.bool and sd["_gradclip_global_magnitude_prune_count"].dtype == torch.int32
    clone = copy.deepcopy(m)
    assert torch.equal(clone[0].weight_mask, m[0].weight_mask)
    fresh = model(4)
    gradclip_torch.prune(fresh, gc.global_magnitude_prune(0.5), apply=False)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh[0].weight_mask, m[0].weight_mask)
    assert int(gradclip_torch.Pruner.from_module(fresh).state.count) == 1
    assert int(gradclip_torch.Pruner.from_module(clone).state.count) == 1
    gradclip_torch.strip(clone)
    assert not any(k.endswith("_mask") for k in clone.state_dict())
    assert torch.equal(clone[0].weight, m[0].weight)


def test_attach_keeps_pruned_weights_zero_under_momentum_and_checkpoints():
    m = model(5)
    pruner = gradclip_torch.prune(m, gc.global_magnitude_prune(0.6))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    handle = pruner.attach(opt)
    mask = m[0].weight_mask.clone()
    for _ in range(4):
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    assert torch.all(m[0].weight[~mask] == 0)
    assert float(handle.info["sparsity"]) == pytest.approx(0.6, abs=1e-3)
    assert handle.state_dict()["state"][1].dtype == torch.bool
    gradclip_torch.strip(m)
    opt.zero_grad()
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # hooks removed: pruned weights move again
    assert torch.any(m[0].weight[~mask] != 0)


def test_attach_with_a_plain_handle_and_strip_handle():
    w = torch.nn.Parameter(torch.tensor([[0.1, -2.0], [0.3, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([0.01, 0.02]))  # rank 1: not pruned by default
    opt = torch.optim.SGD([w, b], lr=0.5, momentum=0.9)
    handle = gradclip_torch.attach(opt, gc.magnitude_prune(0.5))
    for _ in range(3):
        w.grad, b.grad = torch.ones(2, 2), torch.ones(2)
        opt.step()
    assert w[0, 0] == 0 and w[1, 0] == 0 and bool((b != 0).all())
    sd = handle.state_dict()
    other = gradclip_torch.attach(torch.optim.SGD([w, b], lr=0.5), gc.magnitude_prune(0.5))
    other.load_state_dict(sd)
    w.grad, b.grad = torch.ones(2, 2), torch.ones(2)
    other.optimizer.step()
    assert torch.equal(other.state.masks[0], handle.state.masks[0])
    gradclip_torch.strip(handle)
    gradclip_torch.strip(other)


def test_prune_errors():
    m = model()
    gradclip_torch.prune(m, gc.magnitude_prune(0.5))
    with pytest.raises(ValueError, match="already pruned"):
        gradclip_torch.prune(m, gc.magnitude_prune(0.5))
    with pytest.raises(ValueError, match="no parameter"):
        gradclip_torch.prune(model(), gc.magnitude_prune(0.5), ["nope"])
    with pytest.raises(ValueError, match="not pruned"):
        gradclip_torch.strip(model())


@pytest.mark.parametrize(
    "rule",
    [gc.global_magnitude_prune(0.5), gc.magnitude_prune(0.5), gc.nm_prune(2, 4, axis=-1), gc.random_prune(0.5, seed=0)],
    ids=lambda r: r.name,
)
def test_pruning_state_lives_on_the_weights_device(rule):
    # "meta" stands in for CUDA: masks made on the default device would land on the CPU.
    params = [torch.empty(8, 4, device="meta"), torch.empty(4, device="meta")]
    state = rule.init(params)
    assert [m.device.type for m in state.masks] == ["meta", "meta"]
    assert state.count.device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("contiguous", [True, False])
def test_masking_is_bitwise_where(dtype, inplace, contiguous, monkeypatch):
    """The branch-free CPU bit mask writes exactly ``where(m, x, +0)``: NaN, inf, -0 kept bit for bit."""
    monkeypatch.setattr(kernels, "CHUNK", 64)  # several chunks and a ragged last one
    g = torch.Generator().manual_seed(0)
    base = torch.randn(37, 11, generator=g).to(dtype)
    base.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, float("-inf")]).to(dtype)
    x = base.clone() if contiguous else base.clone().t()
    m = torch.rand(x.shape, generator=g) > 0.5
    m.view(-1)[:4] = torch.tensor([True, False, True, True])  # NaN and -0 kept, inf pruned
    want = torch.where(m, x, torch.zeros((), dtype=dtype))
    before = x.clone()
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    xp = gcb.namespace(x)
    if inplace:
        (got,) = gcb.apply_effect(xp, [x], gc.Mask((m,)), inplace=True)
        assert got is x
    else:
        (got,) = kernels.apply_masks(None, [x], [m])
        assert torch.equal(x.contiguous().view(bits), before.contiguous().view(bits))  # caller's tensor untouched
    assert torch.equal(got.contiguous().view(bits), want.contiguous().view(bits))


# ------------------------------------------------------------------ issue 16


def test_pruner_after_strip_says_so():
    # Issue 16: masks / state / project() / handle.state_dict() raised KeyError '_gradclip_0'.
    m = model(1)
    pruner = gradclip_torch.prune(m, gc.global_magnitude_prune(0.5))
    handle = pruner.attach(torch.optim.SGD(m.parameters(), lr=0.1))
    masks = {k: v.clone() for k, v in pruner.masks.items()}
    gradclip_torch.strip(m)
    for use in (lambda: pruner.masks, lambda: pruner.state, pruner.project, handle.state_dict,
                lambda: gradclip_torch.masks(handle), lambda: pruner.attach(torch.optim.SGD(m.parameters(), lr=0.1))):
        with pytest.raises(ValueError, match="module was stripped with gradclip_torch.strip"):
            use()
    assert all(torch.equal(m.get_parameter(k) != 0, v) for k, v in masks.items())  # what the message suggests
    again = gradclip_torch.prune(m, gc.magnitude_prune(0.2))
    with pytest.raises(ValueError, match="pruned again since"):
        pruner.masks
    assert set(again.masks) == {"0.weight", "2.weight", "4.weight"}


def test_prune_refuses_rules_without_a_pruning_part():
    # Issue 16: prune(module, clip_by_global_norm(1.0)) was accepted and returned a Pruner.
    for rule, match in ((gc.clip_by_global_norm(1.0), "only acts on the gradients"),
                        (gc.max_norm(1.0, axis="out_first"), "its state holds no masks")):
        m = model()
        with pytest.raises(ValueError, match=match):
            gradclip_torch.prune(m, rule)
        assert not any(k.startswith("_gradclip") or k.endswith("_mask") for k in m.state_dict())  # nothing registered
    with pytest.raises(ValueError, match="no parameter to prune"):
        gradclip_torch.prune(torch.nn.Sequential(torch.nn.LayerNorm(4)), gc.magnitude_prune(0.5))
    gradclip_torch.prune(model(), gc.chain(gc.clip_by_global_norm(1.0), gc.magnitude_prune(0.5)))  # a chain with one


def test_state_buffers_and_info_are_named():
    m = model(2)
    pruner = gradclip_torch.prune(m, gc.chain(gc.global_magnitude_prune(0.5), gc.magnitude_prune(0.2)), apply=False)
    assert {k for k in m.state_dict() if "gradclip" in k} == {
        "_gradclip_global_magnitude_prune_count", "_gradclip_magnitude_prune_count"}
    info = pruner.project()
    assert {k for k in info if "/sparsity/" in k} == {
        f"{r}/sparsity/{n}" for r in ("global_magnitude_prune", "magnitude_prune") for n in ("0.weight", "2.weight", "4.weight")}
    handle = pruner.attach(torch.optim.SGD(m.parameters(), lr=0.1))
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    handle.optimizer.step()
    assert "magnitude_prune/sparsity/4.weight" in handle.info
    # attach and apply_/project_ name per-array keys where torch knows the names
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(lin.named_parameters(), lr=0.1)
    h = gradclip_torch.attach(opt, gc.magnitude_prune(0.5, params="all"))
    lin.weight.grad, lin.bias.grad = torch.ones(3, 4), torch.ones(3)
    opt.step()
    assert set(h.info) == {"sparsity", "sparsity/weight", "sparsity/bias"}
    _, info = gradclip_torch.project_(lin.named_parameters(), gc.magnitude_prune(0.5, params="all"))
    assert set(info) == {"sparsity", "sparsity/weight", "sparsity/bias"}
    _, info = gradclip_torch.project_(lin.parameters(), gc.magnitude_prune(0.5))  # default: the weight only
    assert set(info) == {"sparsity", "sparsity/0"}
    # names also choose the arrays (gc.Params patterns match the torch names)
    _, info = gradclip_torch.project_(lin.named_parameters(), gc.magnitude_prune(0.5, params=gc.Params(include=["bias"])))
    assert set(info) == {"sparsity", "sparsity/bias"}


# Issue 16: an int amount was read as a fraction (amount=1 pruned everything); torch reads an
# int as a count. And iterative pruning: torch prunes a pruned tensor's *remaining* weights.


@pytest.mark.parametrize("amount", [0, 1, 7, 24])
def test_int_amount_is_a_count_as_in_torch(amount):
    ref, ours = model(3), model(3)
    for mod, name in weights(ref):
        tprune.l1_unstructured(mod, name, amount=amount)
    params = [mod.weight for mod, _ in weights(ours)]
    gradclip_torch.project_(params, gc.magnitude_prune(amount))
    for (r, _), p in zip(weights(ref), params):
        assert torch.equal(r.weight_mask.bool(), p != 0) and int((p == 0).sum()) == amount


def test_int_amount_global_and_structured_as_in_torch():
    ref, ours = model(4), model(4)
    tprune.global_unstructured(weights(ref), pruning_method=tprune.L1Unstructured, amount=100)
    gradclip_torch.prune(ours, gc.global_magnitude_prune(100))
    masks = gradclip_torch.masks(ours)
    for idx in (0, 2, 4):
        assert torch.equal(ref[idx].weight_mask.bool(), masks[f"{idx}.weight"])
    assert sum(int((~m).sum()) for m in masks.values()) == 100
    ref, ours = model(5), model(5)
    for mod, name in weights(ref):
        tprune.ln_structured(mod, name, amount=2, n=2, dim=0)
    params = [mod.weight for mod, _ in weights(ours)]
    gradclip_torch.project_(params, gc.ln_structured_prune(2, axis="out_first"))
    for (r, _), p in zip(weights(ref), params):
        assert torch.equal(r.weight_mask.bool(), p != 0)


def test_int_amount_errors_like_torch():
    w = torch.nn.Parameter(torch.randn(5))
    with pytest.raises(ValueError, match=r"amount=6 is an int, i.e. a count .* larger than the 5 elements of array 0"):
        gradclip_torch.project_([w], gc.magnitude_prune(6, params="all"))
    with pytest.raises(ValueError):  # torch refuses it too
        tprune.l1_unstructured(torch.nn.Linear(5, 1), "bias", amount=6)
    with pytest.raises(ValueError, match="a polynomial schedule interpolates fractions"):
        gc.global_magnitude_prune(10, schedule=gc.polynomial_schedule(0, 10))


@pytest.mark.parametrize("amount", [0.2, 0.37, 3])
def test_iterative_pruning_of_the_remaining_weights_equals_torch(amount):
    ref, ours = model(6), model(6)
    for _ in range(3):  # torch: pruning a pruned tensor prunes `amount` of what remains
        for mod, name in weights(ref):
            tprune.l1_unstructured(mod, name, amount=amount)
    rule = gc.magnitude_prune(amount, relative_to="remaining", schedule=gc.constant_schedule())
    params = [mod.weight for mod, _ in weights(ours)]
    state = None
    for _ in range(3):
        state, _ = gradclip_torch.project_(params, rule, state)
    for (r, _), p in zip(weights(ref), params):
        assert torch.equal(r.weight_mask.bool(), p != 0)
    if isinstance(amount, float):
        n = 240  # the first Linear: 240 -> 192 -> 154 -> 123 kept with 0.2 (torch's rounding of each round)
        assert abs(float((params[0] == 0).float().mean()) - gc.iterative_sparsity(amount, 3)) < 3 / n


def test_iterative_global_pruning_equals_torch():
    ref, ours = model(7), model(7)
    for _ in range(2):
        tprune.global_unstructured(weights(ref), pruning_method=tprune.L1Unstructured, amount=0.3)
    pruner = gradclip_torch.prune(ours, gc.global_magnitude_prune(0.3, relative_to="remaining",
                                                                  schedule=gc.constant_schedule()))
    pruner.project()  # the second round (prune() ran the first)
    for idx in (0, 2, 4):
        assert torch.equal(ref[idx].weight_mask.bool(), pruner.masks[f"{idx}.weight"])


def test_lottery_ticket_rounds_with_rewinding_equal_torch_prune():
    # Iterative magnitude pruning with rewinding (Frankle & Carbin): train, prune 20% of the
    # remaining weights globally, rewind to the initial weights, repeat. Reference: the same
    # loop with torch.nn.utils.prune (weight_orig reparametrisation, rewound by hand).
    steps, rounds = 4, 3
    data = [(torch.randn(6, 12, generator=torch.Generator().manual_seed(i)), torch.randn(6, 3)) for i in range(steps)]

    def net(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    def train(m, opt):
        for x, y in data:
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            opt.step()

    ref = net(0)
    init = copy.deepcopy(ref.state_dict())
    targets = [(ref[0], "weight"), (ref[2], "weight")]
    for mod, name in targets:
        tprune.identity(mod, name)
    for _ in range(rounds):
        train(ref, torch.optim.SGD(ref.parameters(), lr=0.1))
        with torch.no_grad():
            ref(data[0][0])  # torch scores `module.weight`, refreshed by the forward pre-hook only
        tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=0.2)
        with torch.no_grad():
            for i in (0, 2):
                ref[i].weight_orig.copy_(init[f"{i}.weight"])
                ref[i].bias.copy_(init[f"{i}.bias"])

    ours = net(0)
    init = copy.deepcopy(ours.state_dict())
    rule = gc.global_magnitude_prune(0.2, relative_to="remaining", schedule=gc.constant_schedule(steps - 1, -1, steps))
    pruner = gradclip_torch.prune(ours, rule, apply=False)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    pruner.attach(opt)
    for r in range(rounds):
        train(ours, opt)
        pruner.rewind(init)
        sparsity = sum(int((~m).sum()) for m in pruner.masks.values()) / (12 * 16 + 16 * 3)
        assert abs(sparsity - gc.iterative_sparsity(0.2, r + 1)) < 2 / 240
    for i in (0, 2):
        assert torch.equal(pruner.masks[f"{i}.weight"], ref[i].weight_mask.bool())
        assert torch.equal(ours[i].weight, ref[i].weight_orig * ref[i].weight_mask)  # rewound: init * mask
    with pytest.raises(ValueError, match="does not fit"):
        pruner.rewind({"0.weight": init["0.weight"]})


def test_params_patterns_match_torch_names_from_init_on():
    # gc.Params patterns see the torch names at init too (attach with a named optimizer, prune()).
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(lin.named_parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt, gc.magnitude_prune(1, params=gc.Params(include=["bias"])))
    lin.weight.grad, lin.bias.grad = torch.ones(3, 4), torch.ones(3)
    opt.step()
    weight_mask, bias_mask = gradclip_torch.masks(handle)
    assert bool(weight_mask.all()) and int((~bias_mask).sum()) == 1
    assert set(handle.info) == {"sparsity", "sparsity/bias"}
    m = model(8)
    pruner = gradclip_torch.prune(m, gc.magnitude_prune(0.5, params=gc.Params(exclude=["4.*"])), ["0.weight", "4.weight"])
    assert not bool(pruner.masks["0.weight"].all()) and bool(pruner.masks["4.weight"].all())


# ------------------------------------------------------------------ issue 19: Wanda, movement


def test_wanda_with_activation_norms_from_forward_hooks():
    # Sun et al. 2023: score |W_ij| * ||X_j||_2, X the inputs of each Linear over the calibration tokens.
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    batches = [torch.randn(8, 6) for _ in range(3)]
    norms = gradclip_torch.activation_norms(net, batches)
    x = torch.cat(batches)
    h = torch.relu(net[0](x)).detach()
    assert torch.allclose(norms["0.weight"], x.norm(dim=0), rtol=1e-5)
    assert torch.allclose(norms["2.weight"], h.norm(dim=0), rtol=1e-5)
    weights = {n: net.get_parameter(n).detach().clone() for n in ("0.weight", "2.weight")}
    pruner = gradclip_torch.prune(net, gc.wanda_prune(0.5, act_norms=norms))
    for name, w in weights.items():
        metric = (w.abs().double() * norms[name].double().reshape(1, -1)).flatten()
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[torch.argsort(metric, stable=True)[: round(0.5 * w.numel())]] = False
        assert torch.equal(pruner.masks[name], keep.reshape(w.shape))


def test_movement_scores_accumulate_inside_optimizer_step():
    torch.manual_seed(4)
    net = torch.nn.Linear(5, 3, bias=False)
    pruner = gradclip_torch.prune(net, gc.movement_prune(0.4, schedule=gc.one_shot(2)), apply=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    pruner.attach(opt)
    total = torch.zeros(3, 5, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 5)).square().sum().backward()
        total -= net.weight.detach().double() * net.weight.grad.double()
        opt.step()
    keep = torch.ones(15, dtype=torch.bool)
    keep[torch.argsort(total.flatten(), stable=True)[:6]] = False
    assert torch.equal(pruner.masks["weight"], keep.reshape(3, 5))
    assert any(k.startswith("_gradclip_score_prune_scores") for k in net.state_dict())  # checkpointed
