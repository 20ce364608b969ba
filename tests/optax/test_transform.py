"""gradclip_optax.transform: pytrees, params, state/info, jit, grad, MultiSteps, inject_hyperparams."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradclip_core as gc
import gradclip_optax


def _params():
    return {
        "dense": {"kernel": jnp.arange(12.0).reshape(3, 4) / 10, "bias": jnp.ones(4)},
        "head": [jnp.full((4, 2), -0.5), jnp.array(2.0)],
    }


def _grads(scale=1.0):
    return jax.tree.map(lambda p: scale * (jnp.cos(p) + 0.5), _params())


def test_pytree_round_trip_and_info():
    params, grads = _params(), _grads(10.0)
    tx = gradclip_optax.transform(gc.clip_by_global_norm(1.0))
    state = tx.init(params)
    assert isinstance(state, gradclip_optax.TransformState)
    assert sorted(state.info) == ["norm", "scale"] and float(state.info["norm"]) == 0.0
    out, state = tx.update(grads, state, params)
    assert jax.tree.structure(out) == jax.tree.structure(grads)
    # same leaves, same order, scaled by one factor
    leaves = jax.tree.leaves(grads)
    norm = np.sqrt(sum(float(jnp.sum(x * x)) for x in leaves))
    np.testing.assert_allclose(float(state.info["norm"]), norm, rtol=1e-6)
    for o, g in zip(jax.tree.leaves(out), leaves):
        np.testing.assert_allclose(np.asarray(o), np.asarray(g) / norm, rtol=1e-5)
    assert float(gradclip_optax.get_info(state)["scale"]) == float(state.info["scale"])


def test_identity_when_below_threshold_and_numpy_inputs():
    tx = gradclip_optax.transform(gc.clip_by_global_norm(1e6))
    grads = {"a": np.ones(3, np.float32), "b": 0.5}
    out, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_array_equal(np.asarray(out["a"]), np.ones(3))
    assert float(out["b"]) == 0.5


def test_info_structure_is_stable_under_jit_and_scan():
    params = _params()
    rule = gc.chain(gc.clip_by_value(0.9, nonfinite="zero", info="full"), gc.clip_by_global_norm(1.0, nonfinite="skip"))
    tx = optax.chain(gradclip_optax.transform(rule), optax.adam(1e-2))
    state = tx.init(params)
    assert sorted(state[0].info) == [
        "clip_by_global_norm/nonfinite",
        "clip_by_global_norm/norm",
        "clip_by_global_norm/scale",
        "clip_by_global_norm/skipped",
        "clip_by_value/clipped_fraction",
        "clip_by_value/nonfinite",
    ]

    def body(carry, scale):
        p, s = carry
        u, s = tx.update(_grads(scale), s, p)
        return (optax.apply_updates(p, u), s), s[0].info["clip_by_global_norm/norm"]

    (_, state2), norms = jax.jit(lambda c: jax.lax.scan(body, c, jnp.array([0.1, 1.0, 10.0])))((params, state))
    assert jax.tree.structure(state2) == jax.tree.structure(state)
    assert np.all(np.diff(np.asarray(norms)) > 0)


def test_missing_params_error():
    tx = gradclip_optax.transform(gc.adaptive_clip(0.01))
    params = _params()
    state = tx.init(params)
    with pytest.raises(ValueError, match="requires the current value of parameters.*adaptive_clip"):
        tx.update(_grads(), state)
    out, _ = tx.update(_grads(), state, params)  # with params it works
    assert jax.tree.structure(out) == jax.tree.structure(params)


def test_params_structure_mismatch_error():
    tx = gradclip_optax.transform(gc.adaptive_clip(0.01))
    state = tx.init(_params())
    with pytest.raises(ValueError, match="params and updates must have the same tree structure"):
        tx.update(_grads(), state, {"other": jnp.ones(3)})


@pytest.mark.parametrize("make", [lambda r: gradclip_optax.transform(r),
                                  lambda r: gradclip_optax.wrap(r, optax.adam(1e-3))], ids=["transform", "wrap"])
def test_params_shape_mismatch_names_the_tree_path(make):
    # it named a list position (params[1]) in transform, and wrap failed in its own apply_updates
    # with a bare broadcasting TypeError
    params = {"b": jnp.zeros(2), "w": jnp.ones((8, 2))}
    tx = make(gc.adaptive_clip(0.01))
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"adaptive_clip: params 'w' has shape \(8, 2\) but its update \(gradient\) "
                                         r"has shape \(8, 3\)"):
        tx.update({"b": jnp.zeros(2), "w": jnp.ones((8, 3))}, state, params)


def test_rejects_non_rules_and_project_rules():
    with pytest.raises(TypeError, match="gradclip_core.Rule"):
        gradclip_optax.transform(optax.sgd(0.1))
    constraint = gc.Rule(project=lambda p, s: ([jnp.clip(x, -1, 1) for x in p], s, {}), name="clamp")
    with pytest.raises(ValueError, match="gradclip_optax.wrap"):
        gradclip_optax.transform(constraint)
    with pytest.raises(ValueError, match="gradclip_optax.wrap"):
        gradclip_optax.transform(gc.chain(gc.clip_by_value(1.0), constraint))


def test_jit_matches_eager():
    params, grads = _params(), _grads(5.0)
    tx = optax.chain(gradclip_optax.transform(gc.adaptive_clip(0.05)), optax.sgd(0.1))
    state = tx.init(params)
    eager = tx.update(grads, state, params)
    jitted = jax.jit(tx.update)(grads, state, params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_grad_through_whole_step_matches_optax():
    """Meta-gradient of the loss after one clipped step w.r.t. the initial params."""
    x = jnp.linspace(-1.0, 1.0, 8)

    def meta_loss(tx, p):
        def loss(q):
            return jnp.sum((q["w"] * x + q["b"] - 3.0) ** 2)

        g = jax.grad(loss)(p)
        u, _ = tx.update(g, tx.init(p), p)
        return loss(optax.apply_updates(p, u))

    p0 = {"w": jnp.full(8, 0.3), "b": jnp.array(0.1)}
    ours = optax.chain(gradclip_optax.transform(gc.clip_by_global_norm(1.0, semantics="optax")), optax.sgd(0.1))
    native = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    g_ours = jax.jit(jax.grad(lambda p: meta_loss(ours, p)))(p0)
    g_native = jax.jit(jax.grad(lambda p: meta_loss(native, p)))(p0)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_native)):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # the canonical formula is differentiable too
    canonical = optax.chain(gradclip_optax.transform(gc.clip_by_global_norm(1.0)), optax.sgd(0.1))
    g_can = jax.grad(lambda p: meta_loss(canonical, p))(p0)
    for a, b in zip(jax.tree.leaves(g_can), jax.tree.leaves(g_native)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_multi_steps():
    params = _params()
    inner = optax.chain(gradclip_optax.transform(gc.clip_by_global_norm(1.0)), optax.sgd(1.0))
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    state = tx.init(params)
    step = jax.jit(tx.update)
    g1, g2 = _grads(1.0), _grads(3.0)
    u1, state = step(g1, state, params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(u1))
    u2, state = step(g2, state, params)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    expected, _ = inner.update(mean, inner.init(params), params)
    for a, b in zip(jax.tree.leaves(u2), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    norm = float(gradclip_optax.get_info(state.inner_opt_state)["norm"])
    np.testing.assert_allclose(norm, float(optax.tree.norm(mean)), rtol=1e-6)


def test_inject_hyperparams_max_norm():
    params = _params()
    tx = optax.inject_hyperparams(
        lambda max_norm: gradclip_optax.transform(gc.clip_by_global_norm(max_norm, semantics="optax"))
    )(max_norm=1.0)
    state = tx.init(params)
    step = jax.jit(tx.update)
    grads = _grads(10.0)
    out1, state = step(grads, state, params)
    np.testing.assert_allclose(float(optax.tree.norm(out1)), 1.0, rtol=1e-6)
    state.hyperparams["max_norm"] = jnp.asarray(0.25)
    out2, state = step(grads, state, params)
    np.testing.assert_allclose(float(optax.tree.norm(out2)), 0.25, rtol=1e-6)
    # bit for bit what optax does with the same injected hyperparameter
    native = optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=0.25)
    ref, _ = jax.jit(native.update)(grads, native.init(params), params)
    for a, b in zip(jax.tree.leaves(out2), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(state.inner_state.info["norm"]) > 1.0


def _named(factory):
    """``factory`` composed with transform(), keeping its argument names."""
    import functools

    @functools.wraps(factory)
    def make(*args, **kwargs):
        return gradclip_optax.transform(factory(*args, **kwargs))

    return make


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (lambda clip_value: gc.clip_by_value(clip_value), {"clip_value": 0.5}),
        (lambda max_norm: gc.clip_by_norm(max_norm), {"max_norm": 0.5}),
        (lambda threshold: gc.clip_by_block_rms(threshold), {"threshold": 0.1}),
        (lambda clipping, eps: gc.adaptive_clip(clipping, eps), {"clipping": 0.01, "eps": 1e-3}),
    ],
    ids=["value", "norm", "block_rms", "agc"],
)
def test_inject_hyperparams_other_rules(factory, kwargs):
    """optax.inject_hyperparams binds by signature: wrap the factory in a named-argument function."""
    params = _params()
    tx = optax.inject_hyperparams(_named(factory))(**kwargs)
    state = tx.init(params)
    assert sorted(state.hyperparams) == sorted(kwargs)
    fixed = gradclip_optax.transform(factory(**kwargs))
    out, state = jax.jit(tx.update)(_grads(4.0), state, params)
    ref, _ = fixed.update(_grads(4.0), fixed.init(params), params)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_skip_in_transform_zeroes_updates_only():
    params = _params()
    tx = optax.chain(gradclip_optax.transform(gc.clip_by_global_norm(1.0, nonfinite="skip")), optax.adam(0.1))
    state = tx.init(params)
    bad = jax.tree.map(lambda g: g.at[...].set(jnp.nan) if g.ndim == 0 else g, _grads())
    u, state = jax.jit(tx.update)(bad, state, params)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u))
    assert int(state[0].info["skipped"]) == 1
    assert int(state[1][0].count) == 1  # adam still counted the step: use wrap() to skip it too


def test_raise_policy_eager_only():
    params = _params()
    tx = gradclip_optax.transform(gc.clip_by_global_norm(1.0, nonfinite="raise"))
    state = tx.init(params)
    assert sorted(state.info) == ["nonfinite", "norm", "scale"]
    tx.update(_grads(), state)
    bad = jax.tree.map(lambda g: g * jnp.nan, _grads())
    with pytest.raises(FloatingPointError):
        tx.update(bad, state)


def test_raise_names_tree_paths_and_wrap_refuses_an_uncalled_factory():
    # Issue 16: nonfinite="raise" named flat positions; wrap(rule, optax.adam) gave an AttributeError.
    params = {"encoder": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "head": [jnp.ones(3)]}
    tx = gradclip_optax.transform(gc.clip_by_global_norm(1.0, nonfinite="raise"))
    state = tx.init(params)
    bad = jax.tree.map(jnp.ones_like, params)
    bad["encoder"]["b"] = bad["encoder"]["b"].at[0].set(jnp.inf)
    with pytest.raises(FloatingPointError, match=r"in 'encoder/b'; nothing was changed"):
        tx.update(bad, state)
    for inner, match in ((optax.adam, r"got the function optax\.adam: call it first, e.g. optax\.adam\(1e-3\)"),
                         (0.1, "must be an optax GradientTransformation")):
        with pytest.raises(TypeError, match=match):
            gradclip_optax.wrap(gc.clip_by_global_norm(1.0), inner)
