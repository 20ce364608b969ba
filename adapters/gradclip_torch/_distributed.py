"""torch.distributed glue: run a rule on the local shards of DTensors (FSDP2) or of a process group.

- **DDP** (``DistributedDataParallel``): after ``backward()`` every rank holds the same,
  already all-reduced gradients, so a rule runs locally and gives the single-process
  result; nothing here is involved.
- **FSDP2** (``torch.distributed.fsdp.fully_shard``): parameters and gradients are
  ``DTensor`` s sharded on dim 0 (``Shard(0)``) over a 1-D device mesh. :func:`localize`
  detects them, hands the rule their local shards (``to_local()``, which aliases the
  DTensor's storage, so results are written back in place) and activates a
  :class:`gradclip_core.Participants` reducer doing ``torch.distributed.all_reduce``
  (SUM / MAX) on the mesh's process group. The core stacks its per-array partials
  (see :func:`gradclip_core.backend.collective`), so a global-norm clip costs one collective per
  step, and a global pruning recomputation one per histogram pass.
- **Manual sharding**: plain tensors that are each rank's block of rows of the full
  arrays, with ``process_group=`` given to ``apply_`` / ``project_`` / ``attach``.

Rule states are built from the local shards: pruning masks are sharded like the
weights (``handle.state_dict()`` is per rank), norm histories and EMA states are the
same on every rank.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

import gradclip_core.backend as gcb

__all__ = ["reducer", "localize", "local", "is_dtensor"]

_OPS = {"sum": "SUM", "max": "MAX"}


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


def reducer(group: Any = None) -> gcb.Participants:
    """A :class:`gradclip_core.Participants` reducing over ``group`` with ``torch.distributed``.

    Args:
      group: a process group (``None``: the default group).

    Returns:
      The reducer: ``all_reduce`` (SUM / MAX) on a copy of the partials, ``size`` and
      ``index`` from the group's world size and rank, ``total`` for static element counts
      (a small host-side all-reduce, only used when pruning recomputes its masks).

    Raises:
      ValueError: ``torch.distributed`` is not initialised.

    Example:
      >>> import gradclip_torch._distributed as d
      >>> d.reducer()  # doctest: +SKIP
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group / DTensor gradients need torch.distributed to be initialised (init_process_group)")

    def reduce(xp: Any, x: torch.Tensor, op: str) -> torch.Tensor:
        y = x.detach().clone().contiguous()
        dist.all_reduce(y, op=getattr(dist.ReduceOp, _OPS[op]), group=group)
        return y

    def total(n: int) -> int:
        t = torch.tensor([n], dtype=torch.int64, device=_count_device(group))
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return int(t.item())

    rank = dist.get_rank(group)
    return gcb.Participants(reduce, size=dist.get_world_size(group), index=lambda xp: rank, total=total)


def _mesh_group(tensors: Sequence[torch.Tensor]) -> Any:
    """The process group of the DTensors' 1-D mesh; checks the layout the core supports."""
    from torch.distributed.tensor import Shard

    mesh = tensors[0].device_mesh
    for i, t in enumerate(tensors):
        if not is_dtensor(t):
            raise ValueError(
                f"gradclip_torch: tensor {i} is a plain tensor among DTensors; a rule runs either on DTensors "
                "(FSDP2) or on plain tensors, not a mix"
            )
        if t.device_mesh != mesh:
            raise ValueError("gradclip_torch: the DTensors live on different device meshes; one rule needs one mesh")
        if mesh.ndim != 1 or tuple(t.placements) != (Shard(0),):
            raise ValueError(
                f"gradclip_torch: DTensor {i} has placements {tuple(t.placements)} on a {mesh.ndim}-D mesh; "
                "supported: Shard(0) on a 1-D mesh (what fully_shard makes)"
            )
    return mesh.get_group()


@contextlib.contextmanager
def localize(
    groups: Sequence[Sequence[torch.Tensor]], process_group: Any = None
) -> Iterator[list[list[torch.Tensor]]]:
    """Local shards of ``groups`` of tensors, with the matching reducer active.

    Args:
      groups: lists of tensors (e.g. ``[params, grads]``); DTensors anywhere make the
        whole call sharded.
      process_group: for plain tensors that are shards: the group to reduce over.
        Ignored when there is no DTensor and it is ``None`` (a local rule).

    Yields:
      The same lists with DTensors replaced by their local shards.

    Raises:
      ValueError: a mix of DTensors and plain tensors, or an unsupported placement.
    """
    flat = [t for g in groups for t in g]
    dtensor = _dtensor_type()  # looked up once, not per tensor
    if dtensor is not None and any(isinstance(t, dtensor) for t in flat):
        group = _mesh_group(flat)
        with gcb.collective(reducer(group)):
            yield [[local(t) for t in g] for g in groups]
    elif process_group is not None:
        with gcb.collective(reducer(process_group)):
            yield [list(g) for g in groups]
    else:
        yield [list(g) for g in groups]
