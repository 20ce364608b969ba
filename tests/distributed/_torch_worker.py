"""Worker of tests/distributed/test_torch_distributed.py: one rank of a gloo job.

Every scenario runs the distributed version (DDP or FSDP2 / DTensor shards) and, in
the same process without any process group involvement, the single-process version of
the same computation, and records what differs. Rank 0 writes the results as JSON.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys

import torch
import torch.distributed as dist

import gradclip_core as gc
import gradclip_torch
from tests.torch.util import batch, mlp

STEPS = 4
BATCH = 16


def _model() -> torch.nn.Module:
    # Linear(6, 1): its weight (1, 6) and bias (1,) leave rank 1 with empty shards;
    # the bias of 3 shards unevenly.
    return mlp(0, sizes=(8, 6, 3, 1))


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    return batch(step, n=BATCH, sizes=(8, 1), x_scale=1.0, y_scale=30.0 if step == 2 else 1.0)  # a spike at step 2


RULES = {
    "global_norm": lambda: gc.clip_by_global_norm(0.5),
    "global_norm_torch": lambda: gc.clip_by_global_norm(0.5, semantics="torch"),
    "global_norm_inf": lambda: gc.clip_by_global_norm(0.2, ord="inf"),
    "agc": lambda: gc.adaptive_clip(0.05),
    "zclip": lambda: gc.zclip(alpha=0.5, z_thresh=1.0, warmup_steps=2),
    "autoclip": lambda: gc.autoclip(50.0, history=8),
    "adagc": lambda: gc.adagc(beta=0.5, warmup_steps=2, lambda_abs=1e3),  # per-array norms: one collective
    "global_prune": lambda: gc.global_magnitude_prune(
        0.6, schedule=gc.polynomial_schedule(0, 3, 1, initial_sparsity=0.2)
    ),
}


def _train(model: torch.nn.Module, rule: gc.Rule, rank: int, world: int) -> tuple[list, list]:
    """STEPS SGD steps with ``rule`` attached; ``world`` ranks each see a slice of the batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    handle = gradclip_torch.attach(opt, rule)
    infos = []
    for step in range(STEPS):
        x, y = _data(step)
        n = BATCH // world
        x, y = x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        infos.append({k: float(v) for k, v in handle.info.items()})
    return infos, handle


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _max_rel(a: list, b: list) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        d = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
        worst = max(worst, d / max(1e-30, y.double().abs().max().item() if y.numel() else 1.0))
    return worst


def _info_diff(a: list, b: list) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        for k in y:
            worst = max(worst, abs(x[k] - y[k]) / max(1e-30, abs(y[k])))
    return worst


def scenario_train(kind: str, rank: int, world: int) -> dict:
    """Train with DDP or FSDP2 and with one process; compare weights, infos and masks."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for name, make in RULES.items():
        ref_model = _model()
        ref_infos, ref_handle = _train(ref_model, make(), 0, 1)
        model = _model()
        if kind == "ddp":
            dist_model = DDP(model)
        else:
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            dist_model = fully_shard(model)
        infos, handle = _train(dist_model, make(), rank, world)
        weights = [_full(p.detach()) for p in model.parameters()]
        res = {
            "weights_rel": _max_rel(weights, [p.detach() for p in ref_model.parameters()]),
            "info_rel": _info_diff(infos, ref_infos),
            "info_keys": sorted(ref_infos[-1]),
            "spike_or_clip": [i.get("spike", i.get("scale", -1.0)) for i in infos],
        }
        if name == "global_prune":
            masks = ref_handle.state.masks
            local = handle.state.masks  # local shards (rank's block of rows)
            ok = True
            for m, ref in zip(local, masks):
                if kind == "fsdp2" and ref.ndim:  # the rank's block of rows (torch.chunk sizes, as Shard(0));
                    # (0-d masks: the arrays not pruned, e.g. biases under the default params="weights")
                    chunk = -(-ref.shape[0] // world)
                    ref = ref[rank * chunk : (rank + 1) * chunk]
                ok &= bool(torch.equal(m, ref))
            res["masks_equal"] = ok
            res["sparsity"] = infos[-1]["sparsity"]
        out[name] = res
    return out


def scenario_shards(rank: int, world: int) -> dict:
    """The same full tensors as DTensor shards vs plain: exact results, collectives counted."""
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(7)
    shapes = [(5, 4), (3,), (1, 7), (1,), (6, 2, 2), (0, 3)]
    full_w = [torch.randn(s, generator=g) for s in shapes]
    full_g = [torch.randn(s, generator=g) * 3 for s in shapes]
    # many exact ties for pruning: magnitudes on a coarse grid
    tied = [torch.round(w * 2) / 2 for w in full_w]

    calls = {"n": 0}
    real = dist.all_reduce

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    def params_of(ws: list, sharded: bool) -> list:
        return [torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [Shard(0)]) if sharded else w.clone()) for w in ws]

    def set_grads(ps: list, factor: float, sharded: bool) -> None:
        for p, gr in zip(ps, full_g):
            gr = gr * factor
            p.grad = distribute_tensor(gr, mesh, [Shard(0)]) if sharded else gr

    out = {}
    rules = dict(RULES)
    rules["record_norms"] = lambda: gc.record_norms(4)
    rules["clip_by_norm"] = lambda: gc.clip_by_norm(1.0)
    rules["global_prune_normalized"] = lambda: gc.global_magnitude_prune(0.5, normalize=True)
    rules["magnitude_prune"] = lambda: gc.magnitude_prune(0.5)
    rules["global_norm_skip"] = lambda: gc.clip_by_global_norm(0.5, nonfinite="skip")
    for name, make in rules.items():
        rule = make()
        prune = rule.has_project
        ws = tied if prune else full_w
        ref = params_of(ws, False)
        shd = params_of(ws, True)
        ref_state, ref_info = None, {}
        st = None
        dist.all_reduce = counting
        try:
            counts = []
            for step in range(3):  # three steps: stateful rules see their state again
                factor = [1.0, 0.2, 4.0][step]
                set_grads(ref, factor, False)
                set_grads(shd, factor, True)
                ref_state, ref_info = gradclip_torch.apply_(ref, rule, ref_state)
                calls["n"] = 0
                st, info = gradclip_torch.apply_(shd, rule, st)
                counts.append(calls["n"])
                if prune:
                    ref_state, ref_pinfo = gradclip_torch.project_(ref, rule, ref_state)
                    calls["n"] = 0
                    st, pinfo = gradclip_torch.project_(shd, rule, st)
                    counts.append(calls["n"])
                    ref_info, info = {**ref_info, **ref_pinfo}, {**info, **pinfo}
        finally:
            dist.all_reduce = real
        grads = [p.grad.full_tensor() for p in shd]
        weights = [p.detach().full_tensor() for p in shd]
        res = {
            "grads_rel": _max_rel(grads, [p.grad for p in ref]),
            "grads_equal": all(torch.equal(a, b.grad) for a, b in zip(grads, ref)),
            "weights_equal": all(torch.equal(a, b.detach()) for a, b in zip(weights, ref)),
            "info": {k: [float(info[k]), float(ref_info[k])] for k in ref_info},
            "collectives": counts,
        }
        out[name] = res
    return out


def main(rank: int, world: int, init: str, path: str, scenarios: str) -> None:
    faulthandler.dump_traceback_later(float(os.environ.get("GRADCLIP_WORKER_TIMEOUT", 200)), exit=True)  # a hung collective: tracebacks in the test's failure
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        res = {}
        from tests.distributed import _torch_parallel as par

        more = {"shards": scenario_shards, "mesh": par.scenario_mesh, "pipeline": par.scenario_pipeline,
                "expert": par.scenario_expert}
        for name in scenarios.split(","):
            res[name] = more[name](rank, world) if name in more else scenario_train(name, rank, world)
        ranks = [None] * world
        dist.all_gather_object(ranks, res)
        if rank == 0:
            with open(path, "w") as f:
                json.dump(ranks, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
