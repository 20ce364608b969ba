"""Per-example (DP-SGD) clipping across frameworks: torch (torch.func) vs JAX (vmap) vs NumPy.

Per-example clipping is not a Rule (it turns a batch of per-example gradients into one
gradient), so it has its own cross-framework test. The model is linear,
``loss_b = 0.5 * ||W x_b + c - y_b||^2``, whose per-example gradients are known in
closed form (``dW = r x^T``, ``dc = r``, ``r = W x + c - y``); the NumPy reference
clips them with DP-SGD's formula in float64. Then the real reference implementations:
``optax.per_example_global_norm_clip`` / ``optax.contrib.differentially_private_aggregate``
and Opacus' ``DPOptimizer`` (skipped when Opacus is not installed: ``pip install
-c constraints.txt opacus``, the ``ref`` extra).
"""

from __future__ import annotations

import numpy as np
import pytest

import gradclip_core as gc
import gradclip_core.backend as gcb

from ..fixtures import clip_per_example_reference

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")

import gradclip_optax  # noqa: E402
import gradclip_torch  # noqa: E402

B, D_IN, D_OUT = 8, 4, 3
C = 3.0


def data(seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D_OUT, D_IN)).astype(np.float32)
    c = rng.normal(size=(D_OUT,)).astype(np.float32)
    x = (rng.normal(size=(B, D_IN)) * np.linspace(0.05, 2.0, B)[:, None]).astype(np.float32)
    y = rng.normal(size=(B, D_OUT)).astype(np.float32)
    return W, c, x, y


def reference(W, c, x, y, noise=None, sigma=0.0):
    """Clipped mean (plus noise on the sum) of the closed-form per-example gradients, float64."""
    W, c, x, y = (np.asarray(a, np.float64) for a in (W, c, x, y))
    r = x @ W.T + c - y  # (B, out): dW = r x^T, dc = r
    want, f = clip_per_example_reference([r[:, :, None] * x[:, None, :], r], C, noise=noise, sigma=sigma, denom=B)
    return want, np.mean(f < 1)


def torch_run(W, c, x, y, **kw):
    model = torch.nn.Linear(D_IN, D_OUT)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W))
        model.bias.copy_(torch.from_numpy(c))

    def loss_fn(out, target):
        return 0.5 * ((out - target) ** 2).sum()

    _, info = gradclip_torch.clip_per_example(model, loss_fn, torch.from_numpy(x), torch.from_numpy(y), C, **kw)
    return [model.weight.grad.numpy(), model.bias.grad.numpy()], {k: float(v) for k, v in info.items()}


def jax_loss(params, x, y):
    r = params["W"] @ x + params["c"] - y
    return 0.5 * jnp.sum(r * r)


def jax_per_example(W, c, x, y):
    """The parameters and the per-example gradients ``jax.vmap(jax.grad)`` gives for them."""
    params = {"W": jnp.asarray(W), "c": jnp.asarray(c)}
    return params, jax.vmap(jax.grad(jax_loss), in_axes=(None, 0, 0))(params, jnp.asarray(x), jnp.asarray(y))


def jax_run(W, c, x, y, **kw):
    params = {"W": jnp.asarray(W), "c": jnp.asarray(c)}
    f = jax.jit(lambda p, x, y: gradclip_optax.clip_per_example(jax_loss, p, x, y, max_norm=C, **kw))
    g, info = f(params, jnp.asarray(x), jnp.asarray(y))
    return [np.asarray(g["W"]), np.asarray(g["c"])], {k: float(v) for k, v in info.items()}


def test_clipped_mean_torch_jax_numpy():
    W, c, x, y = data()
    want, frac = reference(W, c, x, y)
    assert 0 < frac < 1  # some examples clipped, some not
    for got, info in (torch_run(W, c, x, y), jax_run(W, c, x, y)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert info["clipped_fraction"] == pytest.approx(frac)


def test_seeded_noise_identical_across_frameworks():
    W, c, x, y = data(1)
    kw = dict(noise_multiplier=1.3, seed=11, counter=5)
    t, _ = torch_run(W, c, x, y, **kw)
    j, _ = jax_run(W, c, x, y, **kw)
    import array_api_compat.numpy as npx

    noise = gc.gaussian_noise(npx, [(D_OUT, D_IN), (D_OUT,)], 11, 5)
    want, _ = reference(W, c, x, y, noise, 1.3)
    for a, b, w in zip(t, j, want):
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(b, w, rtol=1e-5, atol=2e-6)
    # the same noise bit for bit up to the float32 log/cos of each framework
    zt = [torch.from_numpy(np.zeros(s, np.float32)) for s in [(D_OUT, D_IN)]]
    tn = gc.gaussian_noise(gcb.namespace(*zt), [(1000,)], 11, 5)[0].numpy()
    jn = np.asarray(gc.gaussian_noise(gcb.namespace(jnp.zeros(1)), [(1000,)], 11, 5)[0])
    nn = gc.gaussian_noise(npx, [(1000,)], 11, 5)[0]
    np.testing.assert_allclose(tn, nn, rtol=0, atol=4e-6)
    np.testing.assert_allclose(jn, nn, rtol=0, atol=4e-6)


def test_framework_rngs_add_the_right_std():
    W, c, x, y = data(2)
    clean, _ = torch_run(W, c, x, y)
    gen = torch.Generator().manual_seed(0)
    noisy, _ = torch_run(W, c, x, y, noise_multiplier=2.0, generator=gen)
    z = (noisy[0] - clean[0]) * B / (2.0 * C)
    assert 0.2 < float(np.std(z)) < 3  # 12 samples: a loose check that the scale is sigma * C / B
    j_clean, _ = jax_run(W, c, x, y)
    j_noisy, _ = jax_run(W, c, x, y, noise_multiplier=2.0, key=jax.random.key(0))
    assert not np.allclose(j_clean[0], j_noisy[0])


def test_optax_per_example_global_norm_clip():
    """gradclip's optax preset with reduction="sum" is optax's function, same op order."""
    _, per = jax_per_example(*data(3))
    leaves = jax.tree.leaves(per)
    want, num_clipped = optax.per_example_global_norm_clip(leaves, C)
    got, info = gc.clip_per_example(leaves, C, semantics="optax", reduction="sum")
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)
    assert float(info["clipped_fraction"]) * B == int(num_clipped)


def test_optax_differentially_private_aggregate_without_noise():
    params, per = jax_per_example(*data(4))
    ref_tx = optax.contrib.differentially_private_aggregate(C, 0.0, key=jax.random.key(0))
    want, _ = ref_tx.update(per, ref_tx.init(params))
    tx = gradclip_optax.clip_per_example_transform(C, semantics="optax")
    got, state = tx.update(per, tx.init(params))
    for k in ("W", "c"):
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=2e-6, atol=1e-7)
    assert int(state.count) == 1


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_dp_optimizer():
    """Opacus' DPOptimizer (no noise) on a GradSampleModule equals semantics="opacus"."""
    opacus = pytest.importorskip("opacus", reason="Opacus not installed (pip install -c constraints.txt opacus)")
    from opacus.optimizers import DPOptimizer

    W, c, x, y = data(5)
    model = torch.nn.Linear(D_IN, D_OUT)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W))
        model.bias.copy_(torch.from_numpy(c))
    gsm = opacus.GradSampleModule(model, loss_reduction="sum")  # the loss below is a sum
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=C,
                      expected_batch_size=B, loss_reduction="mean")
    opt.zero_grad()
    out = gsm(torch.from_numpy(x))
    (0.5 * ((out - torch.from_numpy(y)) ** 2).sum()).backward()
    opt.step()  # clip_and_accumulate, add_noise (std 0), scale_grad (/ expected_batch_size)
    want = [model.weight.grad.detach().numpy().copy(), model.bias.grad.detach().numpy().copy()]
    got, _ = torch_run(W, c, x, y, semantics="opacus")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
