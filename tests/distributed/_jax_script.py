"""Run by tests/distributed/test_jax_sharded.py in a fresh process with 4 host devices.

Trains a small model 4 steps with each rule three ways and prints JSON:
- ``single``: arrays on one device, the step under ``jax.jit``;
- ``jit``: the same jitted step on arrays sharded by ``NamedSharding(mesh, P("x"))``
  over 4 devices (no ``axis_name``: XLA inserts the collectives);
- ``shard_map``: the rule inside ``jax.shard_map`` on the per-device shards with
  ``axis_name="x"`` (``lax.psum`` / ``pmax`` reductions); the number of ``psum``/``pmax``
  in the step's jaxpr is recorded.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gradclip_core as gc  # noqa: E402
import gradclip_optax  # noqa: E402

from tests.optax.util import batch, mlp_loss, mlp_params  # noqa: E402

STEPS = 4
SIZES = (6, 8, 4)  # w0 (8, 6), b0 (8,), w1 (4, 8), b1 (4,): leading dims divisible by 4
SHAPES = {tuple(v.shape) for v in mlp_params(0, SIZES).values()}


def params0() -> dict:
    return mlp_params(0, SIZES)


def data(step: int) -> tuple:
    return batch(step, 16, SIZES, y_scale=30.0 if step == 2 else 1.0)


def loss(p: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return mlp_loss(p, x, y, jnp.mean)


RULES = {
    "global_norm": lambda: gc.clip_by_global_norm(0.5),
    "global_norm_optax": lambda: gc.clip_by_global_norm(0.5, semantics="optax"),
    "agc": lambda: gc.adaptive_clip(0.05),
    "zclip": lambda: gc.zclip(alpha=0.5, z_thresh=1.0, warmup_steps=2),
    "autoclip": lambda: gc.autoclip(50.0, history=10),
    "global_prune": lambda: gc.global_magnitude_prune(0.6, schedule=gc.polynomial_schedule(0, 3, 1, initial_sparsity=0.2)),
}


def make_tx(rule: gc.Rule, axis_name=None) -> optax.GradientTransformation:
    if rule.has_project:
        return gradclip_optax.wrap(rule, optax.sgd(0.1, momentum=0.9), axis_name=axis_name)
    return optax.chain(gradclip_optax.transform(rule, axis_name=axis_name), optax.sgd(0.1, momentum=0.9))


def run_jit(name: str, sharding=None) -> tuple:
    tx = make_tx(RULES[name]())
    params = params0()
    if sharding is not None:
        params = jax.device_put(params, sharding)
        assert all(len(leaf.sharding.device_set) == 4 and not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params))
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        g = jax.grad(loss)(params, x, y)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    infos = []
    for t in range(STEPS):
        params, state = step(params, state, *data(t))
        infos.append({k: float(v) for k, v in gradclip_optax.get_info(state).items()})
    return params, infos, state


def _specs(state, sharded_leaf) -> object:
    """P("x") for the leaves of the rule state that are shards (pruning masks), P() otherwise."""
    masks = set()
    for node in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, gc.PruneState)):
        if isinstance(node, gc.PruneState):
            masks.update(id(m) for m in node.masks)
    # (masks of the arrays a rule does not prune, e.g. biases under the default params="weights", are 0-d: P())
    return jax.tree.map(lambda leaf: P("x") if (id(leaf) in masks and leaf.ndim) or sharded_leaf(leaf) else P(), state)


def run_shard_map(name: str, mesh) -> tuple:
    tx = make_tx(RULES[name](), axis_name="x")
    params = params0()
    state = tx.init(params)
    # optimizer moments (momentum traces) are shaped like the params: shards too
    state_specs = _specs(state, lambda leaf: tuple(getattr(leaf, "shape", ())) in SHAPES and getattr(leaf, "ndim", 0) >= 1)
    pspec = jax.tree.map(lambda _: P("x"), params)

    def local_update(g, state, params):
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    sharded = jax.shard_map(local_update, mesh=mesh, in_specs=(pspec, state_specs, pspec), out_specs=(pspec, state_specs), check_vma=False)

    @jax.jit
    def step(params, state, x, y):
        return sharded(jax.grad(loss)(params, x, y), state, params)

    params = jax.device_put(params, NamedSharding(mesh, P("x")))
    state = jax.device_put(state, jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs))
    x, y = data(0)
    jaxpr = str(jax.make_jaxpr(sharded)(jax.grad(loss)(params, x, y), state, params))
    collectives = jaxpr.count("psum") + jaxpr.count("pmax")
    infos = []
    for t in range(STEPS):
        params, state = step(params, state, *data(t))
        infos.append({k: float(v) for k, v in gradclip_optax.get_info(state).items()})
    return params, infos, state, collectives


def rel(a: dict, b: dict) -> float:
    worst = 0.0
    for k in b:
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        worst = max(worst, float(np.max(np.abs(x - y)) / max(1e-30, float(np.max(np.abs(y))))))
    return worst


def info_rel(a: list, b: list) -> float:
    return max(abs(x[k] - y[k]) / max(1e-30, abs(y[k])) for x, y in zip(a, b) for k in y)


def masks_of(state) -> list:
    for node in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, gc.PruneState)):
        if isinstance(node, gc.PruneState):
            return [np.asarray(m) for m in node.masks]
    return []


def main() -> None:
    assert len(jax.devices()) == 4, jax.devices()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))  # Auto axes: jit may reshard freely
    out = {}
    for name in RULES:
        p1, i1, s1 = run_jit(name)
        p2, i2, s2 = run_jit(name, NamedSharding(mesh, P("x")))
        p3, i3, s3, n_coll = run_shard_map(name, mesh)
        m1, m2, m3 = masks_of(s1), masks_of(s2), masks_of(s3)
        out[name] = {
            "jit_weights_rel": rel(p2, p1),
            "jit_info_rel": info_rel(i2, i1),
            "shard_map_weights_rel": rel(p3, p1),
            "shard_map_info_rel": info_rel(i3, i1),
            "masks_equal": all(np.array_equal(a, b) for a, b in zip(m1, m2))
            and all(np.array_equal(a, b) for a, b in zip(m1, m3)),
            "n_masks": len(m1),
            "collectives": n_coll,
            "scales": [i.get("scale", i.get("clip_by_global_norm/scale", -1.0)) for i in i1],
            "sparsity": i1[-1].get("sparsity", -1.0),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
