"""torch.distributed glue: run a rule on the local parts of arrays split over processes.

The core runs a rule on *shards* (see :func:`gradclip_core.backend.collective`): every
array it sees is one participant's block of rows, the blocks of all participants
partition the full array, and it reduces its global quantities (sums of squares,
maxima, histogram counts) over the participants with one collective per reduction. This
module turns every torch layout into that form, so each element is seen exactly once:

- **DDP** (``DistributedDataParallel``): after ``backward()`` every rank holds the same,
  already all-reduced gradients, so a rule runs locally and gives the single-process
  result; nothing here is involved.
- **DTensors on any device mesh** (FSDP2 ``fully_shard``, tensor parallel
  ``parallelize_module``, HSDP, ``distribute_tensor``): per mesh dimension a placement
  ``Shard(d)`` (any ``d``; FSDP2's ``_StridedShard`` too) or ``Replicate()``. The rule
  gets the local shards (``to_local()``, aliasing the DTensors' storage). It reduces over
  the mesh dimensions on which *some* array is sharded (a dimension on which every array
  is replicated, such as HSDP's replicate dimension, is left out: every replica computes
  the same result). An array replicated on a reduced dimension (a ``RowwiseParallel``
  bias, a norm weight under FSDP2 x TP) is seen by its first replica only (coordinate 0
  on those dimensions); the others see an empty shard, and afterwards apply the same
  effect themselves when it is elementwise with 0-d factors (a global or per-array scale,
  a clamp: no communication), or receive the first replica's result (one broadcast per
  group of replicas, for masks, per-unit factors, new arrays).
- **Pipeline stages** (:class:`Parallel` ``pipeline=``): each rank of the pipeline
  group holds different whole arrays. The rule sees the arrays of every stage, stage by
  stage: its own, and empty shards shaped like the other stages' arrays (their shapes
  are exchanged once and cached), so the global quantities are summed over the stages.
- **Expert parallel** (:class:`Parallel` ``expert=``, ``experts=``): the expert
  arrays differ between the ranks of the expert group (each rank its own experts), the
  others are replicated over it. Experts are handled like pipeline stages, the other
  arrays like replicated DTensors (seen by expert rank 0).
- **Manual sharding**: plain tensors that are each rank's block of rows of the full
  arrays, with ``process_group=`` given to ``apply_`` / ``project_`` / ``attach``.

Collectives: one ``all_reduce`` per group and per reduction of the rule (a global-norm
clip: one over the mesh, one over the expert group, one over the pipeline group, each
only when present; a 2-D mesh reduces over its flattened group in one collective).

Exact pruning ties (score, then global flat index) hold when every DTensor is split on
dim 0 only, in mesh order (``Shard(0)`` on one mesh dimension, or ``Shard(0)`` on several
in mesh order), for pipeline stages and for expert groups. Other splits (``Shard(1)``,
``_StridedShard``) give the same masks as one process when no two scores tie at the
threshold; with ties at the threshold the same number of elements is pruned, the tied
ones chosen in (participant, local) order. Unit-wise rules (AGC, max-norm constraints)
learn each array's split axis (``Shard(d)`` on a mesh dimension of size > 1 splits tensor
dim ``d``; :func:`gradclip_core.backend.split_axes`): units spanning the shards (a
``RowwiseParallel`` weight's rows, ``Shard(1)``) get their norms from every shard. An array
split along two tensor dims (FSDP2 ``Shard(0)`` x ``RowwiseParallel`` ``Shard(1)``) whose
units span one of them only (rows: spanning the tp shards, split by dp) also gets each
rank's place in the full tensor (:func:`gradclip_core.backend.split_offsets`, from the
DTensor's global offset), so the rule sums its rows' partial norms in the same one
collective; when a split is a ``_StridedShard`` (not a block of the full tensor) the
offsets are unknown and the rule refuses the array, naming it.

Numerics: a norm is rebuilt from the shards' float32 partial sums, added in another
order than in one process, so it can differ in the last bits: within 1 ulp on small
arrays, tens of ulp on arrays of 10^5-10^6 elements (float32 accumulation itself is off
by that much from the exact norm, whatever the split). An array held whole by one rank
(a pipeline stage's or an expert rank's, not sharded further) keeps its one-process norm
bit for bit.

Rule states are built from what the rule sees: pruning masks are sharded like the
weights (``handle.state_dict()`` is per rank; empty for the arrays a rank does not see),
norm histories and EMA states are the same on every rank.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

import gradclip_core.backend as gcb
from gradclip_core import Clamp, Keep, On, Scale, Skip, Then, ZeroNonfinite

__all__ = ["Parallel", "reducer", "localize", "local", "is_dtensor"]

_OPS = {"sum": "SUM", "max": "MAX"}


class Parallel:
    """How a model is split over processes beyond what its DTensors say (pass as ``parallel=``).

    Args:
      pipeline: the pipeline-parallel process group: each of its ranks holds other
        whole arrays (its stage's layers); global quantities are summed over it.
      expert: the expert-parallel process group: the ``experts`` arrays differ between
        its ranks, every other array is the same on all of them (counted once).
      experts: the expert parameters of this rank (``torch.nn.Parameter`` s, matched by
        identity), e.g. ``model.moe.experts.parameters()`` (none on a pipeline stage
        without experts: it still takes part in the expert group's collectives).
      shards: a process group over which plain tensors are each rank's block of rows
        (what ``process_group=`` says).

    Raises:
      ValueError: ``experts`` without ``expert``.

    Example:
      >>> import gradclip_torch
      >>> gradclip_torch.Parallel()
      Parallel(pipeline=None, expert=None, experts=0, shards=None)
    """

    def __init__(self, *, pipeline: Any = None, expert: Any = None, experts: Iterable[torch.Tensor] = (),
                 shards: Any = None) -> None:
        experts = list(experts)
        if experts and expert is None:
            raise ValueError(f"Parallel: experts= ({len(experts)} parameters) needs the expert group expert=")
        for i, p in enumerate(experts):
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"Parallel: experts[{i}] must be a tensor (a parameter), got {type(p).__name__}")
        self.pipeline = pipeline
        self.expert = expert
        self.shards = shards
        self._experts = {id(p) for p in experts}
        self._keep = experts  # (ids stay valid while the parameters live)

    def is_expert(self, p: torch.Tensor) -> bool:
        """Whether ``p`` is one of this rank's expert parameters."""
        return id(p) in self._experts

    def __repr__(self) -> str:
        return (f"Parallel(pipeline={self.pipeline!r}, expert={self.expert!r}, experts={len(self._experts)}, "
                f"shards={self.shards!r})")


def as_parallel(process_group: Any = None, parallel: Parallel | None = None) -> Any:
    """The one distribution argument of ``apply_`` / ``project_`` / ``attach`` (``None``: local).

    Raises:
      ValueError: ``parallel`` is not a :class:`Parallel`, or a group is given while
        ``torch.distributed`` is not initialised (at ``attach``, not at the first step).
    """
    if parallel is not None and not isinstance(parallel, Parallel):
        raise ValueError(f"parallel must be a gradclip_torch.Parallel, got {type(parallel).__name__}")
    if parallel is not None and process_group is not None:
        if parallel.shards is not None:
            raise ValueError("give the shards' group once: process_group= or Parallel(shards=)")
        parallel = Parallel(pipeline=parallel.pipeline, expert=parallel.expert, experts=parallel._keep,
                            shards=process_group)
    out = process_group if parallel is None else parallel
    if out is not None:
        _check_initialised()
    return out


def _dtensor_type() -> type | None:
    """``DTensor``, or ``None`` while ``torch.distributed.tensor`` is not imported."""
    # Lazy detection (as einops does): no DTensor can exist before its module is
    # imported, and importing it here would cost every single-process call ~0.5 s
    # and ~40 MB on first use.
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (aliasing its storage), or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def _count_device(group: Any) -> torch.device:
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def _check_initialised() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group / parallel / DTensor gradients need torch.distributed to be initialised "
                         "(init_process_group)")


def reducer(group: Any = None, *, leading: bool | None = None, axes: Any = None,
            offsets: Any = None) -> gcb.Participants:
    """A :class:`gradclip_core.Participants` reducing over ``group`` with ``torch.distributed``.

    Args:
      group: a process group (``None``: the default group), or a sequence of process
        groups, reduced one after the other (participants in row-major order, the first
        group the slowest).
      leading: whether every shard is a block of the leading axis (see
        :class:`gradclip_core.backend.Participants`; derived from ``axes`` when given).
      axes: per array the rule sees, the tensor dims its shards split (``None``: dim 0).
      offsets: per array, ``None`` or this rank's ``(start, full)`` along each of its
        split dims (see :class:`gradclip_core.backend.Participants`).

    Returns:
      The reducer: ``all_reduce`` (SUM / MAX) on a copy of the partials (one per group),
      ``size`` and ``index`` from the groups' world sizes and ranks, ``total`` for static
      element counts (a small host-side all-reduce, only used when pruning recomputes
      its masks).

    Raises:
      ValueError: ``torch.distributed`` is not initialised.

    Example:
      >>> import gradclip_torch._distributed as d
      >>> d.reducer()  # doctest: +SKIP
    """
    _check_initialised()
    groups = list(group) if isinstance(group, (list, tuple)) else [group]

    def reduce(xp: Any, x: torch.Tensor, op: str) -> torch.Tensor:
        y = x.detach().clone().contiguous()
        for g in groups:
            dist.all_reduce(y, op=getattr(dist.ReduceOp, _OPS[op]), group=g)
        return y

    def total(n: int) -> int:
        t = torch.tensor([n], dtype=torch.int64, device=_count_device(groups[0]))
        for g in groups:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=g)
        return int(t.item())

    size, rank = 1, 0
    for g in reversed(groups):  # row-major: the last group varies fastest
        rank += dist.get_rank(g) * size
        size *= dist.get_world_size(g)
    return gcb.Participants(reduce, size=size, index=lambda xp: rank, total=total, leading=leading, axes=axes,
                            offsets=offsets)


# ----------------------------------------------------------------------------- layouts


def _root(mesh: Any, root: Any = None) -> tuple[Any, list]:
    """``(root mesh, root dim of each of mesh's dims)``: a slice (``mesh["tp"]``) maps into its root.

    ``root``: the root of the other arrays; a mesh whose named dimensions are a slice of it
    with the same ranks counts as that slice.
    """
    get = getattr(mesh, "_get_root_mesh", None)  # (private API; without it every mesh is its own root)
    own = get() if get is not None else None
    own = mesh if own is None else own
    if root is None or own == root:
        root = own
    if root == mesh:
        return mesh, list(range(mesh.ndim))
    names, rnames = mesh.mesh_dim_names, root.mesh_dim_names
    if names is None or rnames is None or any(n not in rnames for n in names) or not torch.equal(
            root[tuple(names)].mesh, mesh.mesh):
        raise ValueError(f"gradclip_torch: DTensors live on {mesh} and on {root}, not slices of one mesh; one rule "
                         "needs one mesh (or named slices of it): apply the rule per mesh")
    return root, [rnames.index(n) for n in names]


def _placements(i: int, t: Any, root: Any = None) -> tuple[Any, set, set, dict]:
    """``(root mesh, sharded root dims, replicated root dims, {sharded root dim: tensor dim})`` of DTensor ``t``.

    A DTensor on a slice of a mesh (FSDP2's ``mesh["dp"]`` beside tensor-parallel layers on
    the whole mesh) is replicated over the root's other dimensions.
    """
    root, dims = _root(t.device_mesh, root)
    sharded, replicated, tdims = set(), set(range(root.ndim)) - set(dims), {}
    for d, p in zip(dims, t.placements):
        if p.is_replicate():
            replicated.add(d)
        elif p.is_partial():
            raise ValueError(f"gradclip_torch: DTensor {i} has a Partial placement on mesh dim {d} "
                             f"({tuple(t.placements)}): reduce it first (redistribute to Shard or Replicate)")
        elif isinstance(getattr(p, "dim", None), int):
            sharded.add(d)
            tdims[d] = p.dim
        else:
            raise ValueError(f"gradclip_torch: DTensor {i} has an unknown placement {p!r} on mesh dim {d}")
    return root, sharded, replicated, tdims


def _mesh_groups(mesh: Any, dims: Sequence[int]) -> list:
    """Process groups reducing over mesh ``dims`` (one when the mesh can be flattened)."""
    if not dims:
        return []
    if len(dims) == 1:
        return [mesh.get_group(dims[0])]
    if len(dims) == mesh.ndim and mesh.size() == dist.get_world_size():
        return [None]  # the whole mesh is the default group
    names = mesh.mesh_dim_names
    if names is not None:
        with contextlib.suppress(Exception):  # (a private API: fall back to one collective per dim)
            return [mesh[tuple(names[d] for d in dims)]._flatten().get_group()]
    return [mesh.get_group(d) for d in dims]


def _replica_steps(mesh: Any, dims: tuple, coord: list) -> tuple:
    """Broadcasts ``((group, source global rank), ...)`` taking coordinate 0 on ``dims`` to this rank."""
    groups = _mesh_groups(mesh, list(dims))
    per_dim = len(groups) > 1  # (one broadcast per dimension, each from coordinate 0 on it)
    steps = []
    for k, g in enumerate(groups):
        zero = set(dims) if not per_dim else {dims[k]}
        src = mesh.mesh[tuple(0 if d in zero else c for d, c in enumerate(coord))]
        steps.append((g, int(src)))
    return tuple(steps)


class _Plan:
    """What the rule sees: one slot per array of the whole model, and how results return."""

    def __init__(self) -> None:
        self.groups: list = []  # process groups the reducer reduces over, in order
        self.axes: list = []  # per slot: the tensor dims its shards split (gradclip_core.backend.split_axes)
        self.offsets: list = []  # per slot: None or ((start, full), ...) per split dim (backend.split_offsets)
        # per local array i: slot index in the rule's list, or the owner's data if a replica
        self.slot_of: list[int] = []
        self.seen: list[bool] = []  # whether this rank's rule sees array i (False: an empty shard)
        self.replica_group: list = []  # replicated arrays: the broadcasts from the replica that sees them
        self.pads: list = []  # (slot, shape, dtype) of the other ranks' arrays
        self.names: list = []  # per slot (None: unnamed)
        self.n_slots = 0


_META: dict = {}


def _gather_meta(group: Any, meta: list) -> list:
    """Every rank's ``meta`` over ``group`` (one ``all_gather_object``, cached by group and ``meta``)."""
    key = (id(group), tuple(meta))
    if key not in _META:
        out = [None] * dist.get_world_size(group)
        dist.all_gather_object(out, meta, group=group)
        _META[key] = out
    return _META[key]


def _plan(first: Sequence[torch.Tensor], par: Any) -> _Plan | None:
    """The layout of one call (``None``: a local rule, nothing distributed)."""
    dtensor = _dtensor_type()
    dts = [dtensor is not None and isinstance(t, dtensor) for t in first]
    parallel = par if isinstance(par, Parallel) else None
    shards = parallel.shards if parallel is not None else par
    if not any(dts) and parallel is None and shards is None:
        return None
    _check_initialised()
    plan = _Plan()
    n = len(first)
    plan.seen = [True] * n
    plan.replica_group = [None] * n
    split = [(0,)] * n  # per array: the tensor dims split over the reduced mesh dims
    where: list = [None] * n  # per array split along two dims or more: ((start, full), ...) (_offsets)
    mesh_groups: list = []
    if any(dts):
        if not all(dts):
            i = dts.index(False)
            raise ValueError(
                f"gradclip_torch: tensor {i} is a plain tensor among DTensors; a rule runs either on DTensors "
                "(FSDP2 / tensor parallel) or on plain tensors, not a mix"
            )
        meshes = {id(t.device_mesh): t.device_mesh for t in first}.values()
        biggest = max(meshes, key=lambda m: m.ndim)  # the root (or the largest slice of it)
        root = _root(biggest)[0]
        lay = [_placements(i, t, root) for i, t in enumerate(first)]
        mesh = root
        lay = [x[1:] for x in lay]
        wide = {d for d in range(mesh.ndim) if mesh.size(d) > 1}  # (a dimension of size 1 splits nothing)
        reduce_dims = sorted(set().union(*(s for s, _, _ in lay)) & wide)
        mesh_groups = _mesh_groups(mesh, reduce_dims)
        coord = mesh.get_coordinate()
        for i, (sh, rep, tdims) in enumerate(lay):
            split[i] = tuple(sorted({tdims[d] for d in sh if d in wide})) or (0,)
            if len(split[i]) > 1:
                where[i] = _offsets(first[i], split[i])
            dup = tuple(d for d in reduce_dims if d in rep)
            if dup and any(coord[d] != 0 for d in dup):
                plan.seen[i] = False
            if dup:
                plan.replica_group[i] = _replica_steps(mesh, dup, coord)
    elif shards is not None and dist.get_world_size(shards) > 1:
        mesh_groups = [shards]
    expert_group = parallel.expert if parallel is not None else None
    pipeline = parallel.pipeline if parallel is not None else None
    if expert_group is not None and dist.get_world_size(expert_group) == 1:
        expert_group = None  # (a group of one: nothing to reduce)
    if pipeline is not None and dist.get_world_size(pipeline) == 1:
        pipeline = None
    # slots: stage by stage; within a stage the non-expert arrays, then each expert rank's experts
    is_exp = [expert_group is not None and parallel.is_expert(t) for t in first]
    mine = [i for i in range(n) if not is_exp[i]]
    exps = [i for i in range(n) if is_exp[i]]

    names = gcb.current_names()  # (exchanged too: name patterns must select the same arrays everywhere)

    def desc(ix: list) -> tuple:
        return tuple((tuple(local(first[i]).shape), str(local(first[i]).dtype).replace("torch.", ""),
                      None if names is None or i >= len(names) else str(names[i]), split[i],
                      None if where[i] is None else tuple(f for _, f in where[i])) for i in ix)

    if expert_group is not None:
        ep_rank = dist.get_rank(expert_group)
        for i in mine:  # replicated over the expert group: expert rank 0 sees them
            if plan.replica_group[i] is not None:
                raise ValueError(f"gradclip_torch: array {i} is replicated over both mesh dimensions and the expert "
                                 "group; put the expert arrays on the mesh instead (Shard over an expert dimension)")
            plan.seen[i] = ep_rank == 0
            plan.replica_group[i] = ((expert_group, dist.get_global_rank(expert_group, 0)),)
        ep_meta = _gather_meta(expert_group, list(desc(exps)))
    else:
        ep_rank, ep_meta = 0, [list(desc(exps))]
    stages = [(desc(mine), ep_meta)]  # per stage: its non-expert arrays, each expert rank's experts
    pp_rank = 0
    if pipeline is not None:
        pp_rank = dist.get_rank(pipeline)
        stages = _gather_meta(pipeline, [desc(mine), tuple(tuple(m) for m in ep_meta)])
    slot = 0
    plan.slot_of = [-1] * n
    for s, (dense, experts_by_rank) in enumerate(stages):
        for j, (shape, dtype, name, axes, full) in enumerate(dense):
            if s == pp_rank:
                plan.slot_of[mine[j]] = slot
            else:
                plan.pads.append((slot, _empty_shape(shape, axes), dtype))
            plan.names.append(name)
            plan.axes.append(axes)
            plan.offsets.append(where[mine[j]] if s == pp_rank else _pad_offsets(full))
            slot += 1
        for e, ex in enumerate(experts_by_rank):
            for j, (shape, dtype, name, axes, full) in enumerate(ex):
                own = s == pp_rank and e == ep_rank
                if own:
                    plan.slot_of[exps[j]] = slot
                else:
                    plan.pads.append((slot, _empty_shape(shape, axes), dtype))
                plan.names.append(name)
                plan.axes.append(axes)
                plan.offsets.append(where[exps[j]] if own else _pad_offsets(full))
                slot += 1
    plan.n_slots = slot
    plan.groups = mesh_groups + ([expert_group] if expert_group is not None else []) + (
        [pipeline] if pipeline is not None else [])
    return plan


def _offsets(t: Any, axes: tuple) -> tuple | None:
    """``((start, full), ...)`` of DTensor ``t``'s local shard along tensor dims ``axes``; ``None`` if not blocks.

    (A ``_StridedShard`` interleaves blocks: no single offset; the rule then refuses the
    array where it would need one.)
    """
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(not p.is_replicate() and type(p) is not Shard for p in t.placements):
        return None
    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    if len(offset) != t.ndim:
        return None
    return tuple((int(offset[d]), int(t.shape[d])) for d in axes)


def _pad_offsets(full: tuple | None) -> tuple | None:
    """The offsets of an empty shard (another stage's / expert rank's array): start 0 of each full extent."""
    return None if full is None else tuple((0, f) for f in full)


def _empty_shape(shape: tuple, axes: tuple) -> tuple:
    """The shape of an empty shard of an array whose shards (of ``shape``) split ``axes``: empty along each.

    (Every participant then has the same units where they span the shards, and none of
    those split among some participants only.)
    """
    dims = [d for d in axes if d < len(shape)] or [0]
    return tuple(0 if d in dims else n for d, n in enumerate(shape))


def _none_of(t: torch.Tensor, axes: tuple) -> torch.Tensor:
    """An empty view of ``t`` shaped like :func:`_empty_shape` (what a replica that does not see ``t`` passes)."""
    if not t.ndim:
        return t.reshape(1)[:0]
    for d in [d for d in axes if d < t.ndim] or [0]:
        t = t.narrow(d, 0, 0)
    return t


def _elementwise(effect: Any) -> bool:
    """Whether ``effect`` acts on each element alone with 0-d factors (any array may receive it)."""
    if isinstance(effect, (Keep, ZeroNonfinite)):
        return True
    if isinstance(effect, Scale):
        return all(f is None or not isinstance(f, torch.Tensor) or f.ndim == 0 for f in effect.factors)
    if isinstance(effect, Clamp):
        return all(b is None or not isinstance(b, torch.Tensor) or b.ndim == 0 for b in (effect.lo, effect.hi))
    if isinstance(effect, Then):
        return all(_elementwise(e) for e in effect.effects)
    if isinstance(effect, (Skip, On)):
        return _elementwise(effect.effect)
    return False


class Local(list):
    """The local views of :func:`localize` (one list per group given), and how to finish."""

    def __init__(self, views: list, full: list, plan: _Plan | None) -> None:
        super().__init__(views)
        self._full = full
        self._plan = plan

    def info(self, info: dict) -> dict:
        """``info`` with per-array keys named after the model's arrays when the rule saw other ranks' arrays too."""
        plan = self._plan
        if plan is None or not plan.pads or any(n is None for n in plan.names):
            return dict(info)  # (unnamed: positions in the order of the stages / expert ranks)
        return gcb.name_info(info, plan.names)

    def finish(self, effect: Any, group: int) -> None:
        """After ``effect`` was applied to ``self[group]``: bring it to the arrays this rank did not see.

        An elementwise effect with 0-d factors is applied to them here; any other is
        replaced by the result of the rank that saw them (one broadcast per group and dtype).
        """
        plan = self._plan
        if plan is None or all(g is None for g in plan.replica_group):
            return
        full = self._full[group]
        if _elementwise(effect):
            views = list(self[group])
            xs = [torch.empty((0,), dtype=v.dtype, device=v.device) for v in views]
            for i, seen in enumerate(plan.seen):
                if not seen:
                    xs[plan.slot_of[i]] = full[i]
            gcb.apply_effect(gcb.namespace(*full), xs, effect, inplace=True)
            return
        self.sync(group)

    def sync(self, group: int) -> None:
        """Replicated arrays: every replica takes the result of the one that saw them (broadcasts)."""
        plan = self._plan
        if plan is None or all(g is None for g in plan.replica_group):  # (the same on every rank)
            return
        full = self._full[group]
        buckets: dict = {}
        for i, steps in enumerate(plan.replica_group):
            if steps is not None and full[i].numel():
                key = (tuple((id(g), src) for g, src in steps), full[i].dtype)
                buckets.setdefault(key, (steps, []))[1].append(i)
        for steps, idx in buckets.values():
            buf = torch.cat([full[i].reshape(-1) for i in idx])
            for g, src in steps:
                dist.broadcast(buf, src=src, group=g)
            start = 0
            for i in idx:
                m = full[i].numel()
                if not plan.seen[i]:
                    full[i].copy_(buf[start:start + m].view_as(full[i]))
                start += m


@contextlib.contextmanager
def localize(groups: Sequence[Sequence[torch.Tensor]], process_group: Any = None) -> Iterator[Local]:
    """What the rule sees of ``groups`` of tensors, with the matching reducer active.

    Args:
      groups: lists of tensors (e.g. ``[params, grads]``), aligned; the first holds the
        parameters (matched against :class:`Parallel` ``experts``). DTensors anywhere make
        the whole call sharded.
      process_group: a process group for plain tensors that are shards, a
        :class:`Parallel`, or ``None`` (DTensors, or a local rule).

    Yields:
      A :class:`Local`: per group the list the rule sees (local shards; empty shards for
      the arrays of other stages / experts and for replicas this rank does not see).
      Call its ``finish(effect, group)`` after applying the rule's effect to that group.

    Raises:
      ValueError: a mix of DTensors and plain tensors, several meshes, an unsupported placement.
    """
    first = list(groups[0]) if groups else []
    plan = _plan(first, process_group) if first or process_group is not None else None
    if plan is None:  # (the single-process path: nothing looked at per tensor)
        same = [list(g) for g in groups]
        yield Local(same, same, None)
        return
    full = [[local(t) for t in g] for g in groups]
    views = []
    for g in full:
        v: list = [None] * plan.n_slots
        for i, t in enumerate(g):
            v[plan.slot_of[i]] = t if plan.seen[i] else _none_of(t, plan.axes[plan.slot_of[i]])
        if plan.pads:
            ref = g[0] if g else None
            device = ref.device if ref is not None else torch.device("cpu")
            for s, shape, dtype in plan.pads:
                v[s] = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        views.append(v)
    # other ranks' arrays among ours: their names too (exchanged), or positions when unnamed
    named = plan.names if all(n is not None for n in plan.names) else None
    with gcb.collective(reducer(plan.groups, axes=plan.axes, offsets=plan.offsets) if plan.groups else None), \
            (gcb.array_names(named) if plan.pads else contextlib.nullcontext()):
        yield Local(views, full, plan)
