"""Scenarios of _torch_worker.py beyond 1-D data parallel: 2-D meshes, pipeline stages, expert groups.

Each scenario computes, on every rank, the distributed result and the one-process result
of the same full tensors (no process group involved), and records the worst ulp distance
of the global norm, whether gradients / weights / masks are equal, and how many
collectives (``all_reduce`` + ``broadcast``) each step made. Works for 1, 2 and 4 ranks:

- ``mesh``: DTensors from ``distribute_tensor`` with mixed placements (``Shard(0)``,
  ``Shard(1)``, ``Replicate()``) on a 1-D mesh (1, 2 ranks) or a 2x2 (dp, tp) mesh (4
  ranks); and a model under tensor parallel (``ColwiseParallel`` / ``RowwiseParallel``
  over tp) and FSDP2 (``fully_shard`` over dp), trained with a rule attached.
- ``pipeline``: the layers split into stages of different array counts (2 stages on 2
  ranks; 2 stages x FSDP2-style ``Shard(0)`` DTensors over dp=2 on 4 ranks).
- ``expert``: 4 experts split over the expert group (2 ranks; on 4 ranks a 2x2 of
  pipeline x expert), the dense arrays replicated.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

import gradclip_core as gc
import gradclip_torch
from tests.distributed._torch_worker import RULES as WORKER_RULES

STEPS = 3
FACTORS = [1.0, 0.2, 4.0]  # gradient scale per step: clipped, not clipped, clipped


def ulp(a: float, b: float) -> int:
    """Distance in float32 ulps between two finite float32 values of the same sign."""
    return abs(int(np.float32(a).view(np.int32)) - int(np.float32(b).view(np.int32)))


class Counter:
    """Counts ``all_reduce`` and ``broadcast`` calls while active."""

    def __init__(self) -> None:
        self.n = 0
        self._real = {}

    def __enter__(self) -> "Counter":
        for name in ("all_reduce", "broadcast"):
            real = getattr(dist, name)
            self._real[name] = real

            def counting(*a, _real=real, **k):
                self.n += 1
                return _real(*a, **k)

            setattr(dist, name, counting)
        return self

    def __exit__(self, *exc) -> None:
        for name, real in self._real.items():
            setattr(dist, name, real)


_SHARED = ("global_norm", "global_norm_torch", "global_norm_inf", "zclip", "agc")  # the worker's rules
RULES = {**{k: WORKER_RULES[k] for k in _SHARED},
         "clip_by_norm": lambda: gc.clip_by_norm(1.0),  # per-array norms
         "global_prune": lambda: gc.global_magnitude_prune(0.5)}  # one-shot
# per-array pruning on shards (tied weights, every split on dim 0): counts and ERK from the full shapes
PER_ARRAY = {"score_prune_erk_ties": lambda: gc.score_prune(0.5, allocation="erk"),
             "taylor_erk_ties": lambda: gc.taylor_prune(0.5, allocation="erk", schedule=gc.one_shot(2)),
             "rigl_ties": lambda: gc.rigl(0.5, drop_fraction=0.5, update_every=1, end_step=10)}


def _full_tensors(shapes: list, seed: int) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes], [torch.randn(s, generator=g) * 3 for s in shapes]


def _compare(make, full_w: list, full_g: list, build, gather, parallel=None) -> dict:
    """Run ``make()`` on the distributed arrays (``build``) and on the full ones, STEPS steps.

    ``build(tensors) -> list`` makes this rank's parameters from full tensors (DTensors,
    a stage's subset...); ``gather(list) -> list`` turns this rank's arrays back into the
    full ones (for the comparison; every rank must call it). ``parallel``: a
    ``gradclip_torch.Parallel``, or a function of this rank's parameters returning one.
    """
    rule = make()
    prune = rule.has_project
    ref = [torch.nn.Parameter(w.clone()) for w in full_w]
    mine = build([w.clone() for w in full_w], params=True)
    if callable(parallel):
        parallel = parallel(mine)
    ref_state = st = None
    counts, ulps, info, ref_info = [], [], {}, {}
    for step in range(STEPS):
        for p, gr in zip(ref, full_g):
            p.grad = gr * FACTORS[step]
        for p, gr in zip(mine, build([gr * FACTORS[step] for gr in full_g])):
            p.grad = gr
        ref_state, ref_info = gradclip_torch.apply_(ref, rule, ref_state)
        with Counter() as c:
            st, info = gradclip_torch.apply_(mine, rule, st, parallel=parallel)
        n = c.n
        if prune:
            ref_state, more = gradclip_torch.project_(ref, rule, ref_state)
            ref_info = {**ref_info, **more}
            with Counter() as c:
                st, more = gradclip_torch.project_(mine, rule, st, parallel=parallel)
            info = {**info, **more}
            n = [n, c.n]
        counts.append(n)
        if "norm" in ref_info:
            ulps.append(ulp(float(info["norm"]), float(ref_info["norm"])))
    grads = gather([p.grad for p in mine])
    weights = gather([p.detach() for p in mine])
    return {
        "grads_equal": all(torch.equal(a, b.grad) for a, b in zip(grads, ref, strict=True)),
        "grads_ulp": max((int((a.view(torch.int32).long() - b.grad.view(torch.int32).long()).abs().max())
                          for a, b in zip(grads, ref) if a.numel()), default=0),
        "weights_equal": all(torch.equal(a, b.detach()) for a, b in zip(weights, ref, strict=True)),
        "weights_ulp": max((int((a.view(torch.int32).long() - b.detach().view(torch.int32).long()).abs().max())
                            for a, b in zip(weights, ref) if a.numel()), default=0),
        "info": {k: [float(info[k]), float(ref_info[k])] for k in ref_info if not k.startswith("sparsity/")},
        "norm_ulp": max(ulps, default=0),
        "collectives": counts,
    }


# --------------------------------------------------------------------------- 2-D mesh

SHAPES = [(8, 6), (6,), (5, 4), (3,), (6, 4, 2), (1, 5), (4, 6)]


def _mesh(world: int):
    from torch.distributed.tensor import init_device_mesh

    if world == 4:
        return init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    return init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))


def _placements(mesh, leading_only: bool = False, one_dim: bool = False) -> list:
    from torch.distributed.tensor import Replicate, Shard

    if one_dim:  # each array split along one tensor dim (any), as tensor parallel x replicated dp makes
        if mesh.ndim == 1:
            return [[Shard(1)], [Replicate()], [Shard(0)], [Shard(0)], [Shard(2)], [Shard(1)], [Shard(1)]]
        return [[Replicate(), Shard(1)], [Shard(0), Replicate()], [Replicate(), Shard(0)], [Replicate(), Replicate()],
                [Shard(0), Shard(0)], [Shard(1), Replicate()], [Shard(1), Shard(1)]]
    if mesh.ndim == 1:
        opts = [[Shard(0)], [Replicate()], [Shard(0)], [Shard(0)], [Replicate()], [Shard(0)], [Shard(1)]]
    else:
        opts = [[Shard(0), Shard(1)], [Shard(0), Replicate()], [Replicate(), Shard(0)], [Replicate(), Replicate()],
                [Shard(0), Shard(0)], [Shard(1), Replicate()], [Shard(1), Shard(0)]]
    if leading_only:  # every split on dim 0 (exact pruning ties)
        opts = [[Shard(0) if getattr(p, "dim", None) is not None else p for p in o] for o in opts]
    return opts


# unit-wise rules on arrays split along any one tensor dim: units spanning the shards (rows of a
# Shard(1) weight under "out_first") and whole ones; max_norm with Keras' axis=0 too
UNIT_RULES = {"agc_split": lambda: gc.adaptive_clip(10.0),  # (at the last step some units clipped, some not)
              "max_norm": lambda: gc.max_norm(1.5),
              "max_norm_axis0": lambda: gc.max_norm(1.5, axis=0)}
# ... and on arrays split along two tensor dims (2x2 mesh: Shard(0) x Shard(1) and Shard(1) x Shard(0),
# units spanning one of them: rows split by one mesh dim, partial across the other), beside the rest
TWO_DIM_RULES = {"agc_2d": lambda: gc.adaptive_clip(10.0), "max_norm_2d": lambda: gc.max_norm(1.5)}


def scenario_mesh(rank: int, world: int) -> dict:
    from torch.distributed.tensor import DTensor, distribute_tensor

    mesh = _mesh(world)
    full_w, full_g = _full_tensors(SHAPES, 11)
    tied_w = [torch.round(w * 2) / 2 for w in full_w]  # many ties: exact on dim-0 splits in mesh order
    rules = {**RULES, "global_prune_ties": RULES["global_prune"], **PER_ARRAY, **UNIT_RULES,
             **(TWO_DIM_RULES if mesh.ndim == 2 else {})}  # (a 1-D mesh splits one dim: UNIT_RULES' case)
    out = {}
    for name, make in rules.items():
        places = _placements(mesh, leading_only=name == "agc" or name.endswith("_ties"), one_dim=name in UNIT_RULES)

        def build(ts, params=False):
            d = [distribute_tensor(t, mesh, p) for t, p in zip(ts, places)]
            return [torch.nn.Parameter(x) for x in d] if params else d

        def gather(ts):
            return [t.full_tensor() if isinstance(t, DTensor) else t for t in ts]

        out[name] = _compare(make, tied_w if name.endswith("_ties") else full_w, full_g, build, gather)
    # a _StridedShard split along two tensor dims (no block of the full tensor: no offset) is refused
    out["agc_strided_error"] = _strided_refusal(mesh, full_w[0], full_g[0])
    # a Partial placement (gradients not reduced yet) is refused, naming the DTensor
    from torch.distributed.tensor import Partial

    p = torch.nn.Parameter(DTensor.from_local(torch.ones(2), mesh, [Partial()] * mesh.ndim))
    p.grad = DTensor.from_local(torch.ones(2), mesh, [Partial()] * mesh.ndim)
    try:
        gradclip_torch.apply_([p], gc.clip_by_global_norm(1.0))
        out["partial_error"] = ""
    except ValueError as e:
        out["partial_error"] = str(e)
    out["tp_train"] = _train_fsdp_tp(rank, world)
    # FSDP2 x tensor parallel with AGC / max_norm: on 2x2 the RowwiseParallel weight is Shard(0) x Shard(1),
    # its rows split by dp and spanning the tp shards (on 2 ranks, dp = 1: tp_units below covers it)
    if world == 4:
        out["fsdp_tp_units"] = _train_fsdp_tp(rank, world, rules={
            "agc": lambda: gc.adaptive_clip(0.02), "max_norm": lambda: gc.max_norm(0.6)})
    # tensor parallel alone (ColwiseParallel Shard(0), RowwiseParallel Shard(1) over tp; dp replicas
    # train on the same batch): AGC and max_norm, units spanning the Rowwise shards
    out["tp_units"] = _train_fsdp_tp(rank, world, fsdp=False, rules={
        "agc": lambda: gc.adaptive_clip(0.02), "max_norm": lambda: gc.max_norm(0.6)})
    out["float64"] = _float64_split(mesh)
    return out


def _float64_split(mesh) -> dict:
    """The global norm of a 2^20-element gradient (half ~1e3, half ~1e-2) split on dim 0 over the whole
    mesh, and of the full gradient in one process, with float32 and with float64 accumulation (issue 20)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    rng = np.random.default_rng(20)
    full = np.concatenate([rng.standard_normal(1 << 19) * 1e3, rng.standard_normal(1 << 19) * 1e-2]).astype(np.float32)
    rng.shuffle(full)
    full = torch.from_numpy(full.reshape(-1, 64))
    out = {"exact": float(np.float32(np.sqrt(np.sum(full.numpy().astype(np.longdouble) ** 2))))}
    for key, make in (("float32", lambda: gc.clip_by_global_norm(1.0)),
                      ("float64", lambda: gc.accumulate(gc.clip_by_global_norm(1.0), "float64"))):
        one = torch.nn.Parameter(torch.zeros_like(full))
        one.grad = full.clone()
        _, info1 = gradclip_torch.apply_([one], make())
        mine = torch.nn.Parameter(distribute_tensor(torch.zeros_like(full), mesh, [Shard(0)] * mesh.ndim))
        mine.grad = distribute_tensor(full.clone(), mesh, [Shard(0)] * mesh.ndim)
        _, info = gradclip_torch.apply_([mine], make())
        out[key] = [float(info["norm"]), float(info1["norm"]), str(info["norm"].dtype)]
    return out


def _strided_refusal(mesh, w: torch.Tensor, g: torch.Tensor) -> str:
    """AGC on a DTensor ``_StridedShard(0)`` x ``Shard(1)`` (2x2 mesh): the error ("" if none or not 2x2)."""
    if mesh.ndim != 2:
        return ""
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard

    places = [_StridedShard(0, split_factor=2), Shard(1)]
    p = torch.nn.Parameter(distribute_tensor(w.clone(), mesh, places))
    p.grad = distribute_tensor(g.clone(), mesh, places)
    try:
        gradclip_torch.apply_([p], gc.adaptive_clip(0.05))
    except ValueError as e:
        return str(e)
    return ""


def _tp_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6), torch.nn.Tanh(),
                               torch.nn.Linear(6, 4))


def _train_fsdp_tp(rank: int, world: int, *, fsdp: bool = True, rules: dict | None = None) -> dict:
    """FSDP2 over dp x tensor parallel over tp (a 2-D mesh; 1 x world when world < 4), vs one process.

    ``fsdp=False``: tensor parallel only, every dp replica training on the whole batch.
    """
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Replicate, init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    dp, tp = (2, 2) if world == 4 else (1, world)
    mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(8, 8, generator=g) * (20.0 if s == 3 else 1.0), torch.randn(8, 4, generator=g))
            for s in range(4)]
    rules = rules or {"global_norm": lambda: gc.clip_by_global_norm(0.5),
             "global_prune": lambda: gc.chain(gc.clip_by_global_norm(1.0), gc.global_magnitude_prune(0.5)),
             # update clipping (after the step; replicated weights synced from their first replica)
             "update_norm": lambda: gc.clip_update_norm(sigma=0.5, history=4, min_history=2)}
    out = {}
    for name, make in rules.items():
        ref = _tp_model()
        model = _tp_model()
        plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}
        if not fsdp:  # (every parameter a DTensor: the last layer too)
            plan["4"] = ColwiseParallel(output_layouts=Replicate())
        parallelize_module(model, mesh["tp"], plan)
        if fsdp:
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh["dp"])
            fully_shard(model, mesh=mesh["dp"])
        res = {"placements": sorted({str(tuple(p.placements)) for p in model.parameters()})}
        ulps = []
        infos = []
        for m, part in ((ref, None), (model, mesh.get_coordinate()[0])):
            opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
            handle = gradclip_torch.attach(opt, make())
            for x, y in data:
                if part is not None and fsdp:  # each dp rank its half of the batch (the tp ranks the same)
                    n = x.shape[0] // dp
                    x, y = x[part * n:(part + 1) * n], y[part * n:(part + 1) * n]
                opt.zero_grad()
                torch.nn.functional.mse_loss(m(x), y).backward()
                opt.step()
                key = next((k for k in ("norm", "clip_by_global_norm/norm", "clipped_fraction") if k in handle.info),
                           None)
                infos.append(0.0 if key is None else float(handle.info[key]))
                if "clipped_fraction" in handle.info:
                    res.setdefault("fractions", []).append(infos[-1])
                if part is not None and "clipped" in handle.info:
                    res["clipped"] = res.get("clipped", 0) + int(handle.info["clipped"])
        ulps = [ulp(a, b) for a, b in zip(infos[len(data):], infos[:len(data)])]
        weights = [p.full_tensor() if isinstance(p, DTensor) else p for p in model.parameters()]
        res["norm_ulp"] = max(ulps)
        res["weights_rel"] = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(weights, ref.parameters()))
        res["zeros_equal"] = all(torch.equal(a.detach() == 0, b.detach() == 0) for a, b in zip(weights, ref.parameters()))
        res["zeros"] = int(sum(int((a == 0).sum()) for a in weights))
        out[name] = res
    return out


# ------------------------------------------------------------------ pipeline / experts

PIPE_SHAPES = [(6, 5), (6,), (7, 6), (7,), (3, 7), (3,)]
STAGE_OF = [0, 0, 0, 0, 1, 1]  # stage 0: 4 arrays, stage 1: 2 arrays


def _split_groups(world: int, inner: int) -> tuple:
    """``(outer group, inner group)`` of a row-major (world // inner, inner) grid of ranks."""
    rank = dist.get_rank()
    outer = world // inner
    mine_outer = mine_inner = None
    for i in range(outer):  # (every rank creates every group, in the same order)
        g = dist.new_group(list(range(i * inner, (i + 1) * inner)))
        if rank // inner == i:
            mine_inner = g
    for j in range(inner):
        g = dist.new_group(list(range(j, world, inner)))
        if rank % inner == j:
            mine_outer = g
    return mine_outer, mine_inner


def scenario_pipeline(rank: int, world: int) -> dict:
    """Stages hold different arrays; on 4 ranks each stage's arrays are Shard(0) DTensors over dp=2."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor, init_device_mesh

    dp = 2 if world == 4 else 1
    stages = world // dp
    mesh = init_device_mesh("cpu", (stages, dp), mesh_dim_names=("pp", "dp")) if world > 1 else None
    pp_group = mesh.get_group("pp") if mesh is not None else dist.group.WORLD
    stage = rank // dp
    stage_of = [min(s, stages - 1) for s in STAGE_OF]
    idx = [i for i, s in enumerate(stage_of) if s == stage]
    full_w, full_g = _full_tensors(PIPE_SHAPES, 13)
    tied_w = [torch.round(w * 2) / 2 for w in full_w]  # pipeline splits keep exact ties
    parallel = gradclip_torch.Parallel(pipeline=pp_group)

    def build(ts, params=False):
        ts = [ts[i] for i in idx]
        if dp > 1:
            ts = [distribute_tensor(t, mesh["dp"], [Shard(0)]) for t in ts]
        return [torch.nn.Parameter(t) for t in ts] if params else ts

    def gather(ts):
        ts = [t.full_tensor() if isinstance(t, DTensor) else t for t in ts]
        full = []
        for i, shape in enumerate(PIPE_SHAPES):  # the stage holding array i sends it to every rank
            buf = ts[idx.index(i)].clone() if i in idx else torch.zeros(shape)
            if stages > 1:
                src = stage_of[i] * dp + rank % dp
                dist.broadcast(buf, src=src, group=pp_group)
            full.append(buf)
        return full

    out = {}
    for name, make in {**RULES, **PER_ARRAY}.items():
        tied = name == "global_prune" or name.endswith("_ties")
        out[name] = _compare(make, tied_w if tied else full_w, full_g, build, gather, parallel)
    # named parameters: per-array info keys name every stage's arrays; a name pattern selects the same ones
    def label(i):
        return f"layer{i // 2}.{'weight' if i % 2 == 0 else 'bias'}"

    rule = gc.magnitude_prune(0.5, params=gc.Params(include=("*.weight",), exclude=("layer1.*",)))
    _, info = gradclip_torch.project_([(label(i), p) for i, p in zip(idx, build(full_w, True))], rule,
                                      parallel=parallel)
    _, ref = gradclip_torch.project_([(label(i), torch.nn.Parameter(w.clone())) for i, w in enumerate(full_w)], rule)
    out["named"] = {k: [float(info[k]), float(ref[k])] for k in ref} if sorted(info) == sorted(ref) else sorted(info)
    return out


EXPERT_SHAPES = [(6, 5), (6,), (4, 6), (4,)]  # dense arrays, replicated over the expert group
EXPERT = (3, 4)  # each of the 4 experts: one (3, 4) weight


def scenario_expert(rank: int, world: int) -> dict:
    """4 experts over the expert group (2 ranks; 4 ranks: pipeline 2 x expert 2), dense arrays replicated."""
    ep = 2 if world >= 2 else 1
    if world == 4:
        pp_group, ep_group = _split_groups(world, ep)
    else:
        pp_group, ep_group = None, dist.group.WORLD
    stages = world // ep
    stage, e = rank // ep, rank % ep
    per = 4 // ep
    n_dense = len(EXPERT_SHAPES)
    shapes = EXPERT_SHAPES + [EXPERT] * 4
    # the one-process order: stage by stage, dense arrays then the experts in expert-rank order
    stage_dense = [list(range(n_dense))] if stages == 1 else [[0, 1], [2, 3]]
    stage_exp = [list(range(n_dense, n_dense + 4))] if stages == 1 else [[4, 5, 6, 7], []]
    order = []
    for s in range(stages):
        order += stage_dense[s] + stage_exp[s]
    full_w, full_g = _full_tensors(shapes, 17)
    full_w, full_g = [full_w[i] for i in order], [full_g[i] for i in order]
    pos = {a: k for k, a in enumerate(order)}
    dense = [pos[a] for a in stage_dense[stage]]
    exps = [pos[a] for a in stage_exp[stage]][e * per:(e + 1) * per] if stage_exp[stage] else []
    mine_idx = dense + exps

    def gather(ts):
        full = []
        for i in range(len(order)):
            buf = ts[mine_idx.index(i)].clone() if i in mine_idx else torch.zeros(full_w[i].shape)
            owner_stage = next(s for s in range(stages) if order[i] in stage_dense[s] + stage_exp[s])
            owner_e = 0
            if order[i] in stage_exp[owner_stage]:
                owner_e = stage_exp[owner_stage].index(order[i]) // per
            src = owner_stage * ep + owner_e
            dist.broadcast(buf, src=src)
            full.append(buf)
        return full

    def build(ts, params=False):
        out = [ts[i] for i in mine_idx]
        return [torch.nn.Parameter(t) for t in out] if params else out

    def parallel(mine):  # (a stage without experts still takes part in the expert group's collectives)
        return gradclip_torch.Parallel(pipeline=pp_group, expert=ep_group, experts=mine[len(dense):])

    return {name: _compare(make, full_w, full_g, build, gather, parallel) for name, make in RULES.items()}
