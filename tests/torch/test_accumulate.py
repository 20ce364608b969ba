"""gc.accumulate(rule, "float64") through the torch adapter: apply_, attach (fused fold), state_dict, torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradclip_core as gc
import gradclip_torch

from .test_hooks import _DYNAMO_LRU, _compile_case
from .util import loss_fn, mlp, set_grads


def test_apply_norm_is_the_exactly_rounded_one():
    model = mlp(0, sizes=(256, 512, 64))
    set_grads(model.parameters(), 0, scale=1e3)
    grads = [p.grad.clone() for p in model.parameters()]
    _, info = gradclip_torch.apply_(model.parameters(), gc.accumulate(gc.clip_by_global_norm(1.0)))
    exact = np.float32(np.sqrt(sum(np.sum(g.numpy().astype(np.longdouble) ** 2) for g in grads)))
    assert info["norm"].dtype == torch.float32 and info["norm"].item() == exact
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g * info["scale"], rtol=0, atol=0)


def test_fused_adamw_folds_the_wrapped_global_clip(monkeypatch):
    seen = {}
    real = torch._fused_adamw_

    def spy(params, grads, *args, **kwargs):
        seen["grad_scale"] = kwargs["grad_scale"]
        return real(params, grads, *args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adamw_", spy)
    models = []
    for rule in (gc.clip_by_global_norm(0.5), gc.accumulate(gc.clip_by_global_norm(0.5))):
        model = mlp(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        handle = gradclip_torch.attach(opt, rule)
        assert handle.fold
        for step in range(3):
            opt.zero_grad()
            loss_fn(model, step).backward()
            opt.step()
        assert seen["grad_scale"].dtype == torch.float32
        assert handle.info["norm"].dtype == torch.float32 and float(handle.info["scale"]) < 1
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6)


def test_state_dict_dtypes_kept():
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    handle = gradclip_torch.attach(opt, gc.accumulate(gc.zclip(warmup_steps=2)))
    dtypes0 = {k: v.dtype for k, v in handle.state_dict().items() if isinstance(v, torch.Tensor)}
    for step in range(3):
        opt.zero_grad()
        loss_fn(model, step).backward()
        opt.step()
    assert {k: v.dtype for k, v in handle.state_dict().items() if isinstance(v, torch.Tensor)} == dtypes0
    assert torch.float64 not in dtypes0.values()


@pytest.mark.slow  # about 60 s of compilation on 2 cores
@_DYNAMO_LRU
def test_compiled_training_step_float64():
    infos = _compile_case(lambda: gc.accumulate(gc.clip_by_global_norm(1.0)))
    assert float(infos[0]["scale"]) < 1 and infos[0]["norm"].dtype == torch.float32


def test_float64_kernels_of_big_tensors_chunked():
    from gradclip_core.backend import array_norms, namespace, unit_norms

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 1000, generator=g) * 1e3  # > 2^20 elements: the chunked paths
    xp = namespace(x)
    ref = x.double()
    for ord in (1.0, 2.0, float("inf")):
        got = array_norms(xp, [x, x[:3]], ord, torch.float64)
        want = [torch.linalg.vector_norm(ref, ord), torch.linalg.vector_norm(ref[:3], ord)]
        for a, b in zip(got, want):
            assert a.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
    for axes in [(1,), (0,), None]:
        got = unit_norms(xp, [x], [axes], [torch.float64])[0]
        want = torch.linalg.vector_norm(ref, 2, dim=axes, keepdim=True) if axes else torch.linalg.vector_norm(ref).reshape(1, 1)
        assert got.dtype == torch.float64 and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)


@pytest.mark.slow
def test_no_graph_break_of_its_own():
    """Inside torch.compile the wrapper keeps its dtype on a plain stack, not a ContextVar (a graph break)."""
    counts = []
    for rule in (gc.clip_by_global_norm(1.0), gc.clip_by_global_norm(1.0), gc.accumulate(gc.clip_by_global_norm(1.0))):
        torch._dynamo.reset()

        def f(a, b, rule=rule):
            out, _, info = rule.update([a, b], ())
            return out, info["norm"]

        counts.append(torch._dynamo.explain(f)(torch.randn(100, 10), torch.randn(7)).graph_break_count)
    assert counts[2] == counts[1], counts  # (the first call also loads the kernels: not counted)
