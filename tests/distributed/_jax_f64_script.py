"""gc.accumulate(rule, "float64") under jax.shard_map on 1, 2 and 4 host devices (x64 on): the global norm of
the same 2^20-element float32 gradient, split by rows, against the one-device and the exactly rounded norm.

Prints one JSON line: per number of devices, the float32 and float64 norms (and the exact one).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gradclip_core as gc  # noqa: E402
import gradclip_optax  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(20)
    full = np.concatenate([rng.standard_normal(1 << 19) * 1e3, rng.standard_normal(1 << 19) * 1e-2]).astype(np.float32)
    rng.shuffle(full)
    full = full.reshape(-1, 64)
    out: dict = {"exact": float(np.float32(np.sqrt(np.sum(full.astype(np.longdouble) ** 2))))}
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
