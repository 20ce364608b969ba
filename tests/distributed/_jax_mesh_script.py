"""Run by tests/distributed/test_jax_mesh.py in a fresh process with 4 host devices (a 2x2 mesh).

Mesh ``("data", "model")`` of 2x2 host devices. The parameters of a two-layer network
(``(out, in)`` layout) are sharded Megatron style: ``w0`` column parallel
``P("model", None)``, ``w1`` row parallel ``P(None, "model")``, the biases replicated;
the batch is ``P("data", None)``. For each rule, prints JSON with:

- ``fixed``: the jitted step on *given* gradients (seeded, a spike at step 2: the same
  inputs on one device and sharded, so only the rule's own reductions can differ):
  the worst ULP distance of the final weights, of every logged info value, masks equal;
  and the collectives XLA put into the compiled sharded step (the plain optimizer step
  on the same inputs has none: every one of them is the rule's), with the largest
  all-gather in elements against the largest parameter;
- ``train``: a few steps of real training (gradients by ``jax.grad`` on the sharded
  batch, whose matmuls sum in another order) against the one-device run: relative
  differences of weights and info, masks equal;
- ``shard_map``: the same given-gradient steps inside ``jax.shard_map`` with
  ``axis_name=("data", "model")`` on arrays sharded over both axes along their leading
  dimension, ULP distances as above.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gradclip_core as gc  # noqa: E402
import gradclip_optax  # noqa: E402

from tests import fixtures  # noqa: E402
from tests.distributed._jax_script import info_rel, rel  # noqa: E402  (a script too: sets the same XLA_FLAGS)
from tests.optax.util import batch, mlp_loss, mlp_params  # noqa: E402
from tests.parity.ulp import ulp_distance  # noqa: E402

STEPS = 4
SIZES = (16, 32, 8)  # w0 (32, 16), b0 (32,), w1 (8, 32), b1 (8,)
SPECS = {"w0": P("model", None), "b0": P(), "w1": P(None, "model"), "b1": P()}
MODES = ("jit", "train", "shard_map")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")

RULES = {
    "global_norm": lambda: gc.clip_by_global_norm(0.5),
    "agc": lambda: gc.adaptive_clip(0.05),
    "zclip": lambda: gc.zclip(alpha=0.5, z_thresh=1.0, warmup_steps=2),
    "autoclip": lambda: gc.autoclip(50.0, history=10),
    "global_prune": lambda: gc.global_magnitude_prune(0.6, schedule=gc.polynomial_schedule(0, 3, 1, initial_sparsity=0.2)),
    "score_prune_erk": lambda: gc.score_prune(0.6, allocation="erk", schedule=gc.polynomial_schedule(0, 3, 1, initial_sparsity=0.2)),
    "rigl": lambda: gc.rigl(0.5, drop_fraction=0.3, update_every=1, end_step=10),
    "taylor_erk": lambda: gc.taylor_prune(0.5, allocation="erk", schedule=gc.one_shot(2)),
    "set_wanda": lambda: gc.chain(gc.wanda_prune(0.3, act_norms=[np.linspace(0.5, 2.0, 16), np.linspace(2.0, 0.5, 32)],
                                                 axis=1),
                                  gc.sparse_evolutionary(0.5, drop_fraction=0.3, update_every=1, end_step=10)),
}


PRUNING = ("global_prune", "score_prune_erk", "rigl", "taylor_erk", "set_wanda")


def make_tx(rule: gc.Rule, axis_name=None) -> optax.GradientTransformation:
    if rule.has_project:
        return gradclip_optax.wrap(rule, optax.sgd(0.1, momentum=0.9), axis_name=axis_name)
    return optax.chain(gradclip_optax.transform(rule, axis_name=axis_name), optax.sgd(0.1, momentum=0.9))


def params0(name: str) -> dict:
    """The network's initial weights; for the pruning rules on a grid of 1/8: many ties (a quarter
    of them 0), so the masks depend on the tie order (global flat index: participant order under
    shard_map). (Not for the clips: where a step cancels a grid value, 1 ULP of the update is
    many ULP of the small result.)"""
    p = mlp_params(0, SIZES)
    return {k: jnp.round(v * 8.0) / 8.0 for k, v in p.items()} if name in PRUNING else p


def given_grads(step: int) -> dict:
    """Seeded normal gradients shaped like the params (x30 at step 2: the clips act)."""
    p = mlp_params(0, SIZES)
    arrays = fixtures.rand_arrays(10 + step, [p[k].shape for k in sorted(p)], scale=30.0 if step == 2 else 1.0)
    return {k: jnp.asarray(a) for k, a in zip(sorted(p), arrays)}


def masks_of(state) -> list:
    for node in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, (gc.PruneState, gc.DSTState))):
        if isinstance(node, (gc.PruneState, gc.DSTState)):
            return [np.asarray(m) for m in node.masks]
    return []


def collectives(hlo: str) -> dict:
    """``{op: count}`` of the collectives in compiled HLO text (async pairs counted once)."""
    out = {}
    for op in COLLECTIVES:
        n = len(re.findall(rf"= [^=]*? {op}(?:-start)?\(", hlo))
        if n:
            out[op] = n
    return out


def gathers_outside_cond(hlo: str) -> int:
    """All-gathers outside a ``lax.cond`` branch (a pruning rule's recomputation is one): run every step."""
    return sum("/cond/" not in line for line in hlo.splitlines() if re.search(r" all-gather(?:-start)?\(", line))


def largest_gather(hlo: str) -> int:
    """Elements of the largest all-gather result in compiled HLO text (0 if none)."""
    best = 0
    for shape in re.findall(r"= \w+\[([\d,]*)\][^=]*? all-gather(?:-start)?\(", hlo):
        best = max(best, int(np.prod([int(d) for d in shape.split(",") if d])))
    return best


def run_fixed(name: str, mesh=None) -> tuple:
    tx = make_tx(RULES[name]())
    params = params0(name)
    shard = (lambda t: jax.device_put(t, {k: NamedSharding(mesh, SPECS[k]) for k in t})) if mesh else (lambda t: t)
    params = shard(params)
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    hlo = ""
    if mesh is not None:  # one compilation, for the HLO and the steps (arguments placed as it expects)
        compiled = step.lower(params, state, shard(given_grads(0))).compile()
        hlo, where = compiled.as_text(), compiled.input_shardings[0]
        step = lambda *args: compiled(*jax.device_put(args, where))  # noqa: E731
    infos = []
    for t in range(STEPS):
        params, state = step(params, state, shard(given_grads(t)))
        infos.append({k: np.asarray(v) for k, v in gradclip_optax.get_info(state).items()})
    return params, infos, masks_of(state), hlo


def run_train(name: str, mesh=None) -> tuple:
    tx = make_tx(RULES[name]())
    params = params0(name)
    if mesh is not None:
        params = jax.device_put(params, {k: NamedSharding(mesh, SPECS[k]) for k in params})
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        g = jax.grad(lambda p: mlp_loss(p, x, y, jnp.mean))(params)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    infos = []
    for t in range(STEPS):
        x, y = batch(t, 16, SIZES, y_scale=30.0 if t == 2 else 1.0)
        if mesh is not None:
            x, y = jax.device_put((x, y), NamedSharding(mesh, P("data", None)))
        params, state = step(params, state, x, y)
        infos.append({k: float(v) for k, v in gradclip_optax.get_info(state).items()})
    return params, infos, masks_of(state)


def ulps(a: dict, b: dict) -> int:
    """Weights' distance in ulps of each array's largest magnitude (as the parity suite's ulp of the operands):
    a step's ``p + u`` cancels in some elements, where an ulp of the result would magnify a 1-ulp scale."""
    out = 0
    for k in b:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if y.size:
            unit = np.spacing(np.max(np.abs(y)).astype(y.dtype)).astype(np.float64)
            out = max(out, int(np.ceil(np.max(np.abs(x.astype(np.float64) - y)) / unit)))
    return out


def info_ulps(a: list, b: list) -> dict:
    return {k: max(ulp_distance(x[k], y[k]) for x, y in zip(a, b)) for k in b[0]}


def same_masks(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _state_specs(state, spec) -> object:
    """``spec`` for the leaves of the optimizer state that are shards (pruning masks, momentum traces), P() otherwise."""
    shapes = {tuple(v.shape) for v in mlp_params(0, SIZES).values()}
    return jax.tree.map(lambda leaf: spec if getattr(leaf, "ndim", 0) and tuple(leaf.shape) in shapes else P(), state)


def run_shard_map(name: str, mesh, axes) -> tuple:
    """The given-gradient steps inside ``jax.shard_map``: every array a block of leading rows over ``axes``."""
    spec = P(axes)
    tx = make_tx(RULES[name](), axis_name=axes)
    params = params0(name)
    state = tx.init(params)
    sspec = _state_specs(state, spec)
    pspec = jax.tree.map(lambda _: spec, params)

    def local(params, state, g):
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(pspec, sspec, pspec), out_specs=(pspec, sspec),
                                 check_vma=False))
    put = lambda t, specs: jax.device_put(t, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))  # noqa: E731
    params, state = put(params, pspec), put(state, sspec)
    jaxpr = str(jax.make_jaxpr(step)(params, state, given_grads(0)))
    infos = []
    for t in range(STEPS):
        params, state = step(params, state, put(given_grads(t), pspec))
        infos.append({k: np.asarray(v) for k, v in gradclip_optax.get_info(state).items()})
    return params, infos, masks_of(state), jaxpr.count("psum") + jaxpr.count("pmax")


def main() -> None:
    assert len(jax.devices()) == 4, jax.devices()
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    plan = dict(a.partition("=")[::2] for a in sys.argv[1:]) or dict.fromkeys(RULES, "")
    out = {}
    for name, wanted in plan.items():
        modes = wanted.split("+") if wanted else MODES
        t0 = time.perf_counter()
        r = out[name] = {}
        p1, i1, m1, _ = run_fixed(name)
        r["n_masks"] = len(m1)
        r["info"] = {k: float(v) for k, v in i1[-1].items()}
        r["scales"] = [float(i.get("scale", -1.0)) for i in i1]
        if "jit" in modes:
            p2, i2, m2, hlo = run_fixed(name, mesh)
            r["jit"] = {"weights_ulp": ulps(p2, p1), "info_ulp": info_ulps(i2, i1), "masks_equal": same_masks(m2, m1),
                        "collectives": collectives(hlo), "largest_gather": largest_gather(hlo),
                        "gathers_outside_cond": gathers_outside_cond(hlo),
                        "largest_param": max(int(np.prod(v.shape)) for v in p1.values())}
        if "train" in modes:
            q1, j1, n1 = run_train(name)
            q2, j2, n2 = run_train(name, mesh)
            r["train"] = {"weights_rel": rel(q2, q1), "masks_equal": same_masks(n2, n1),
                          "info_rel": info_rel(j2, j1)}
        if "shard_map" in modes:
            for axes in (("data", "model"), "model"):
                key = "shard_map_" + "_".join(np.atleast_1d(axes))
                try:
                    p3, i3, m3, n = run_shard_map(name, mesh, axes)
                except ValueError as e:
                    r[key] = {"error": str(e)}
                    continue
                r[key] = {"weights_ulp": ulps(p3, p1), "info_ulp": info_ulps(i3, i1), "masks_equal": same_masks(m3, m1),
                          "collectives": n}
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
