"""RigL / SET under gradclip_torch.attach: constant sparsity, regrown weights and Adam moments at 0."""

import pytest
import torch

import gradclip_core as gc
import gradclip_torch


@pytest.mark.parametrize("grow,opt", [("gradient", "adam"), ("random", "sgd")])
def test_attach_rigl_tiny_mlp(grow, opt):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    optim = (torch.optim.Adam(model.parameters(), lr=0.05) if opt == "adam"
             else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    rule = gc.rigl(0.5, allocation="uniform", drop_fraction=0.5, update_every=2, end_step=20, grow=grow)
    handle = gradclip_torch.attach(optim, rule)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    params = list(model.parameters())
    weights = [0, 2]                                          # the two Linear weights (rank 2)
    grew = 0
    for t in range(7):
        optim.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        for st in optim.state.values():                       # moments everywhere, pruned elements too
            for v in st.values():
                if isinstance(v, torch.Tensor) and v.ndim > 0:
                    v.fill_(1.0)
        optim.step()
        state = handle._state
        masks = gc.backend.find_masks(state, 4)[0]
        regrown = gc.backend.find_regrown(state, 4)[0]
        for i in weights:
            m, r, w = masks[i], regrown[i], params[i].detach()
            assert int(m.sum()) == m.numel() // 2             # constant sparsity
            assert (w[~m] == 0).all() and (w[r] == 0).all()   # pruned and regrown weights are 0
            for v in optim.state[params[i]].values():
                if isinstance(v, torch.Tensor) and v.shape == w.shape:
                    assert (v[r] == 0).all()                  # their optimizer state restarted
                    if t > 0:
                        assert (v[m & ~r] != 0).all()         # (the others keep theirs)
            grew += int(r.sum())
    assert grew > 0
    assert float(handle.info["sparsity"]) > 0
    handle.remove()
