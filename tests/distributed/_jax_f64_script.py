"""gc.accumulate(rule, "float64") in JAX: first without x64 (the ValueError), then with it: a jitted optax
step (dtypes as unwrapped), and under jax.shard_map on 1, 2 and 4 host devices the global norm of the same
2^20-element float32 gradient, split by rows, against the exactly rounded norm.

Prints one JSON line: the jit facts, and per number of devices the float32 and float64 norms (and the exact one).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gradclip_core as gc  # noqa: E402
import gradclip_optax  # noqa: E402


def without_x64_then_jit() -> dict:
    """The error without x64; then, x64 on, a jitted optax step's state, info and update dtypes (as unwrapped)."""
    rule = gc.accumulate(gc.chain(gc.clip_by_global_norm(1.0), gc.zclip()))
    g = {"w": jnp.ones((64, 64), jnp.float32)}
    tx = gradclip_optax.transform(rule)
    try:
        tx.update(g, tx.init(g))
        err = ""
    except ValueError as e:
        err = str(e)
    jax.config.update("jax_enable_x64", True)
    state = tx.init(g)
    before = [str(x.dtype) for x in jax.tree.leaves(state)]
    step = jax.jit(tx.update)
    u, state = step(g, state)
    u, state = step(g, state)
    info = gradclip_optax.get_info(state)
    return {"err": err, "before": before, "after": [str(x.dtype) for x in jax.tree.leaves(state)],
            "info": sorted({str(v.dtype) for v in info.values()}), "norm": float(info["clip_by_global_norm/norm"]),
            "update": str(u["w"].dtype)}


def main() -> None:
    out: dict = {"jit": without_x64_then_jit()}
    rng = np.random.default_rng(20)
    full = np.concatenate([rng.standard_normal(1 << 19) * 1e3, rng.standard_normal(1 << 19) * 1e-2]).astype(np.float32)
    rng.shuffle(full)
    full = full.reshape(-1, 64)
    out["exact"] = float(np.float32(np.sqrt(np.sum(full.astype(np.longdouble) ** 2))))
    rules = {"float32": gc.clip_by_global_norm(1.0), "float64": gc.accumulate(gc.clip_by_global_norm(1.0), "float64")}
    for n in (1, 2, 4):
        mesh = Mesh(np.array(jax.devices()[:n]), ("d",))
        for key, rule in rules.items():
            tx = gradclip_optax.transform(rule, axis_name="d")

            def local(g, tx=tx):
                u, state = tx.update(g, tx.init(g))
                return u, gradclip_optax.get_info(state)["norm"]

            step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("d"),), out_specs=(P("d"), P()), check_vma=False))
            g = jax.device_put(jnp.asarray(full), NamedSharding(mesh, P("d")))
            u, norm = step(g)
            jaxpr = str(jax.make_jaxpr(step)(g))
            psums = [line for line in jaxpr.splitlines() if "psum" in line]
            out.setdefault(str(n), {})[key] = [float(norm), str(norm.dtype), str(u.dtype),
                                               bool(psums) and all("f64" in line for line in psums)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
