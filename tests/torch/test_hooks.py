"""gradclip_torch.attach: optimizer hooks, info, checkpoint errors, AMP, torch.compile.

Checkpoint/resume and the non-finite skip of attach (plain, momentum, Adam, fused
optimizers) are the contract every integration path keeps: tests/parity/test_contract.py.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import gradclip_core as gc
import gradclip_torch

from .util import batch, ema_clip, loss_fn, mlp, train

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
}


def _train_manual(rule, make_opt, steps, seed=0):
    """The reference loop: apply_ by hand between backward and step."""
    model = mlp(seed)
    opt = make_opt(model.parameters())
    state, infos = None, []
    for step in range(steps):
        opt.zero_grad()
        loss_fn(model, step).backward()
        state, info = gradclip_torch.apply_(model.parameters(), rule, state)
        opt.step()
        infos.append(info)
    return model, infos


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("rule_name", ["global", "global-torch", "value", "ema-chain"])
def test_attach_equals_manual_apply(opt_name, rule_name):
    make_rule = {
        "global": lambda: gc.clip_by_global_norm(1.0),
        "global-torch": lambda: gc.clip_by_global_norm(1.0, semantics="torch"),
        "value": lambda: gc.clip_by_value(0.5),
        "ema-chain": lambda: gc.chain(ema_clip(), gc.clip_by_norm(5.0)),
    }[rule_name]
    make_opt = OPTIMIZERS[opt_name]
    ref, ref_infos = _train_manual(make_rule(), make_opt, 4)
    model = mlp(0)
    opt = make_opt(model.parameters())
    for info, ref_info in zip(train(model, opt, 4, gradclip_torch.attach(opt, make_rule())), ref_infos, strict=True):
        assert set(info) == set(ref_info)
        for k, v in info.items():
            assert isinstance(v, torch.Tensor) and v.shape == ()
            assert torch.equal(v, ref_info[k])
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_attach_matches_native_clip_then_step():
    model, ref = mlp(0), mlp(0)
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    gradclip_torch.attach(opt, gc.clip_by_global_norm(0.5, semantics="torch"))
    for step in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            loss_fn(m, step).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
        ref_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_remove_and_context_manager():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt, gc.clip_by_value(1e-3))
    handle.remove()
    loss_fn(model, 0).backward()
    g = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert handle.info == {}
    assert any(float(x.abs().max()) > 1e-3 for x in g)
    with gradclip_torch.attach(opt, gc.clip_by_value(1e-3, info="full")) as h:
        opt.step()
        assert "clipped_fraction" in h.info
    info = h.info
    opt.step()
    assert h.info is info  # removed on exit


def test_grad_none_params_skipped_and_frozen_stay():
    model = mlp()
    model[0].weight.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt, gc.clip_by_global_norm(0.1))
    loss_fn(model, 0).backward()
    before = model[0].weight.detach().clone()
    opt.step()
    assert torch.equal(model[0].weight, before)
    assert handle.state == gc.EmptyState()


def test_state_dict_before_first_step_and_errors():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt, ema_clip())
    assert handle.state is None and handle.state_dict()["state"] == []
    loss_fn(model, 0).backward()
    opt.step()
    sd = handle.state_dict()
    assert int(sd["state"][0]) == 1
    # a fresh handle keeps the checkpoint until its first step, and returns it meanwhile
    other = gradclip_torch.attach(torch.optim.SGD(mlp().parameters(), lr=0.1), ema_clip())
    other.load_state_dict(sd)
    assert [int(t) for t in other.state_dict()["state"][:1]] == [1]
    # a loaded state replaces the current one at once
    handle.load_state_dict({**sd, "state": [torch.tensor(5, dtype=torch.int32), torch.tensor(2.0)]})
    assert int(handle.state.count) == 5 and float(handle.state.ema) == 2.0
    with pytest.raises(ValueError, match="state tensors"):
        handle.load_state_dict({"format": 1, "state": [torch.tensor(1)], "structure": None})
    with pytest.raises(ValueError, match="int32"):
        handle.load_state_dict({"format": 1, "state": [torch.tensor(1.0), torch.tensor(2.0)], "structure": None})
    with pytest.raises(ValueError, match="Handle.state_dict"):
        handle.load_state_dict({"state": []})
    with pytest.raises(ValueError, match="different rule"):
        handle.load_state_dict({**sd, "structure": ("tuple",)})


def _steps(model, opt, first, last):
    for step in range(first, last):
        opt.zero_grad()
        loss_fn(model, step).backward()
        opt.step()


@pytest.mark.parametrize("make_rule", [lambda: gc.zclip(warmup_steps=2), lambda: gc.magnitude_prune(0.5),
                                       lambda: gc.chain(gc.skip_on_spike(window=4, k=3), gc.clip_by_global_norm(1.0))],
                         ids=["zclip", "magnitude_prune", "chain"])
@pytest.mark.parametrize("fused", [False, True])
def test_resume_from_a_checkpoint_saved_before_the_first_step(make_rule, fused):
    # A step-0 checkpoint (no state yet) resumed: the new handle's first step raised
    # "state_dict holds 0 state tensors, this rule's state has 4", at every later step too.
    def fresh():
        model = mlp(0)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, fused=fused)
        return model, opt, gradclip_torch.attach(opt, make_rule())

    ref, ref_opt, _ = fresh()
    _steps(ref, ref_opt, 0, 4)
    model, opt, handle = fresh()
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "gc": handle.state_dict()})
    assert ckpt["gc"] == {"format": 1, "state": [], "structure": None}
    model2, opt2, handle2 = fresh()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    handle2.load_state_dict(ckpt["gc"])
    _steps(model2, opt2, 0, 4)
    for a, b in zip(model2.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    # a handle that has stepped goes back to step 0 with it: the next step builds the state afresh
    _steps(model, opt, 0, 2)
    assert handle.state is not None
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    handle.load_state_dict(ckpt["gc"])
    assert handle.state is None and handle.state_dict() == ckpt["gc"]
    _steps(model, opt, 0, 4)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_rule_names_both_rules():
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    zclip = gradclip_torch.attach(opt, gc.zclip())
    _steps(model, opt, 0, 1)
    sd = zclip.state_dict()
    zclip.remove()
    # before the first step: kept (and returned by state_dict), refused by the step, nothing applied
    model2 = mlp(1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt2, gc.autoclip())
    handle.load_state_dict(sd)
    assert handle.state_dict()["structure"] == sd["structure"]
    loss_fn(model2, 0).backward()
    before = [(p.detach().clone(), p.grad.clone()) for p in model2.parameters()]
    with pytest.raises(ValueError, match=r"different rule \(ZClipState\).*autoclip"):
        opt2.step()
    for p, (w, g) in zip(model2.parameters(), before):
        assert torch.equal(p, w) and torch.equal(p.grad, g)
    assert handle.state is None
    # after the first step: refused at once, the state kept
    handle.load_state_dict({"format": 1, "state": [], "structure": None})
    opt2.step()
    state = handle.state
    with pytest.raises(ValueError, match=r"different rule \(ZClipState\).*autoclip"):
        handle.load_state_dict(sd)
    assert handle.state is state


def test_grad_scaler_order():
    """scaler.step unscales before the hook runs; inf steps skip the rule and the step."""
    rule = gc.clip_by_global_norm(0.5, semantics="torch")
    model, ref = mlp(0), mlp(0)
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt, rule)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for step in range(3):
        opt.zero_grad()
        ref_opt.zero_grad()
        scaler.scale(loss_fn(model, step)).backward()
        loss_fn(ref, step).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        ref_opt.step()
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        assert float(handle.info["norm"]) > 0.5 >= float(norm) * (1 - 1e-6)  # clipped, unscaled grads
        for a, b in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert "skipped" not in handle.info
    # an overflowing step: the scaler skips optimizer.step(), so the hook does not run;
    # info keeps the last step's values but says the step was skipped (issue 16)
    info, state, before = handle.info, handle.state, [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(loss_fn(model, 9) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert int(handle.info["skipped"]) == 1
    assert {k: v for k, v in handle.info.items() if k != "skipped"} == info
    assert handle.state is state
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() < 1024.0
    # the next finite step runs the rule again: skipped is gone
    opt.zero_grad()
    scaler.scale(loss_fn(model, 3)).backward()
    scaler.step(opt)
    scaler.update()
    assert "skipped" not in handle.info and float(handle.info["norm"]) > 0


def test_apply_with_grad_scaler_unscale_first():
    model, ref = mlp(0), mlp(0)
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    rule = gc.clip_by_global_norm(0.5, semantics="torch")
    scaler.scale(loss_fn(model, 0)).backward()
    scaler.unscale_(opt)
    gradclip_torch.apply_(model.parameters(), rule)
    scaler.step(opt)
    scaler.update()
    loss_fn(ref, 0).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attach_low_precision_model(dtype):
    model = mlp(0, dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    handle = gradclip_torch.attach(opt, gc.clip_by_global_norm(1.0))
    for step in range(2):
        opt.zero_grad()
        loss_fn(model, step).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert handle.info["norm"].dtype == torch.float32
        want = torch.linalg.vector_norm(torch.cat([g.float().flatten() for g in grads]))
        torch.testing.assert_close(handle.info["norm"], want, rtol=1e-5, atol=0)
        assert all(p.dtype == dtype for p in model.parameters())


# (gradclip resolves torch's namespace without array-api-compat's lru_cache-d checks: no
# dynamo warning about them is expected any more, see the ZClip test below.)
_DYNAMO_LRU = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")


def _compile_case(make_rule, steps=3):
    torch._dynamo.reset()
    eager, compiled = mlp(0), copy.deepcopy(mlp(0))
    results = []
    for model, wrap in ((eager, lambda f: f), (compiled, torch.compile)):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        handle = gradclip_torch.attach(opt, make_rule())

        def train_step(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).sum() * 10
            loss.backward()
            opt.step()
            return loss

        step_fn = wrap(train_step)
        infos = []
        for step in range(steps):
            step_fn(*batch(step))
            infos.append({k: v.clone() for k, v in handle.info.items()})
        results.append((model, infos))
    (m1, i1), (m2, i2) = results
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(i1, i2):
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    return i2


@_DYNAMO_LRU
def test_compiled_training_step():
    infos = _compile_case(lambda: gc.clip_by_global_norm(1.0))
    assert float(infos[0]["scale"]) < 1


@pytest.mark.slow
@_DYNAMO_LRU
@pytest.mark.parametrize("name", ["skip", "chain", "agc"])
def test_compiled_training_step_more_rules(name):
    make_rule = {
        "skip": lambda: gc.clip_by_global_norm(1.0, nonfinite="skip"),
        "chain": lambda: gc.chain(gc.clip_by_value(2.0, nonfinite="zero"), gc.clip_by_norm(1.0, semantics="optax")),
        "agc": lambda: gc.adaptive_clip(0.05),
    }[name]
    _compile_case(make_rule)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_cpu_and_native(dtype):
    cpu = mlp(0, dtype)
    gpu = copy.deepcopy(cpu).cuda()
    for m in (cpu, gpu):
        loss_fn(m, 0).to(next(m.parameters()).device)
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        p.grad = (torch.randn(p.shape) * 10).to(dtype)
        q.grad = p.grad.cuda()
    _, info_c = gradclip_torch.apply_(cpu.parameters(), gc.clip_by_global_norm(1.0))
    _, info_g = gradclip_torch.apply_(gpu.parameters(), gc.clip_by_global_norm(1.0))
    assert info_g["norm"].device.type == "cuda"
    torch.testing.assert_close(info_g["norm"].cpu(), info_c["norm"], rtol=1e-5, atol=0)
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        torch.testing.assert_close(q.grad.cpu().float(), p.grad.float(), rtol=1e-2, atol=1e-6)
    if dtype == torch.float32:
        ref = copy.deepcopy(gpu)
        for p, q in zip(gpu.parameters(), ref.parameters()):
            q.grad = p.grad.clone()
        rule = gc.clip_by_global_norm(0.1, semantics="torch")
        _, info = gradclip_torch.apply_(gpu.parameters(), rule)
        total = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1, foreach=True)
        assert torch.equal(info["norm"], total)
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(gpu.parameters(), ref.parameters()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mixed_devices_rejected():
    a = torch.nn.Parameter(torch.zeros(2, device="cuda"))
    a.grad = torch.ones(2, device="cuda")
    b = torch.nn.Parameter(torch.zeros(2))
    b.grad = torch.ones(2)
    with pytest.raises(ValueError, match="several devices"):
        gradclip_torch.apply_([a, b], gc.clip_by_global_norm(1.0))


# ------------------------------------------------------------------ issue 16


def test_first_step_without_gradients_builds_no_numpy_state():
    # Issue 16: attach + opt.step() before any backward built the state with NumPy, and the
    # next step raised TypeError in where(); handle.state_dict() failed too.
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = gradclip_torch.attach(opt, gc.zclip(warmup_steps=2))
    opt.step()
    assert handle.state is None and handle.info == {}
    assert handle.state_dict() == {"format": 1, "state": [], "structure": None}
    for step in range(3):
        opt.zero_grad()
        loss_fn(model, step).backward()
        opt.step()
    leaves = handle.state_dict()["state"]
    assert leaves and all(isinstance(t, torch.Tensor) for t in leaves)
    assert int(handle.state.count) == 2 and float(handle.info["norm"]) > 0


def test_lbfgs_hook_before_the_closure_and_its_warning():
    model = mlp(0)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    with pytest.warns(UserWarning, match="LBFGS computes its gradients inside step"):
        handle = gradclip_torch.attach(opt, gc.chain(gc.zclip(warmup_steps=2), gc.max_norm(1.0, axis="out_first")))

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, 0)
        loss.backward()
        return loss

    for _ in range(3):  # the first pre-hook sees no gradients; later ones the last closure's
        opt.step(closure)
    assert all(isinstance(t, torch.Tensor) for t in handle.state_dict()["state"])
    for w in (model[0].weight, model[2].weight):  # the project part works with LBFGS
        assert float(torch.linalg.vector_norm(w.detach(), dim=1).max()) <= 1.0 + 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weight-only rules: nothing to warn about
        gradclip_torch.attach(torch.optim.LBFGS(mlp(1).parameters()), gc.max_norm(1.0, axis="out_first"))


def test_attaching_twice_warns_and_remove_clears_it():
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = gradclip_torch.attach(opt, gc.clip_by_global_norm(1.0))
    with pytest.warns(UserWarning, match="already has a gradclip rule attached"):
        second = gradclip_torch.attach(opt, gc.clip_by_value(0.1))
    second.remove()
    first.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradclip_torch.attach(opt, gc.clip_by_value(0.1))  # nothing live any more
        # a Pruner's handle next to a clipping handle is the documented combination
        gradclip_torch.prune(model, gc.magnitude_prune(0.5)).attach(opt)


def test_compiled_step_with_zclip_neither_warns_nor_recompiles():
    # Issue 16: torch.compile(opt.step) with ZClip printed dynamo's lru_cache warnings (from
    # array-api-compat), recompiled on a `state.var is state.mean` guard and, each step, on
    # the id() of the new clip factor; ContextVar reads were graph breaks in every rule call.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = mlp(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    handle = gradclip_torch.attach(opt, gc.zclip(warmup_steps=2))
    step = torch.compile(opt.step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(6):
            opt.zero_grad()
            loss_fn(model, i).backward()
            step()
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    counters = torch._dynamo.utils.counters
    # torch's own two graph breaks around step(); nothing from gradclip
    assert all("torch._dynamo.graph_break()" in k for k in counters["graph_break"]), dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 3  # the first step (no state yet) and the rest
    assert int(handle.state.count) == 2 and float(handle.info["norm"]) > 0


def test_params_patterns_under_torch_compile_select_as_eager():
    """Inside a compiled step there are no names to match: the selection made by name at init is kept."""
    torch._dynamo.reset()
    results = []
    for compiled in (False, True):
        model = mlp(0)
        opt = torch.optim.SGD(model.named_parameters(), lr=0.0)
        rule = gc.on(gc.clip_by_value(1e-4), gc.Params(exclude=["*bias"]))
        gradclip_torch.attach(opt, rule)
        step = torch.compile(opt.step) if compiled else opt.step
        opt.zero_grad()
        (loss_fn(model, 0) * 100).backward()
        step()
        results.append({n: p.grad.clone() for n, p in model.named_parameters()})
    eager, comp = results
    for name, g in eager.items():
        torch.testing.assert_close(comp[name], g)
        assert (g.abs().max() <= 1e-4) == (not name.endswith("bias")), name  # weights clipped, biases not
