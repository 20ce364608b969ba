"""One rank of Lightning FSDP2 / DDP runs (gloo on CPU): run by test_lightning_fsdp.py.

Usage: ``python _lightning_fsdp_worker.py OUT STRATEGY:RULE...`` (``fsdp2``:
``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model``; ``ddp``) with Lightning's environment
variables set (``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``: Lightning then takes the processes as launched). Each rank trains on its
half of every batch (rows ``4r:4r+4``); FSDP2 averages the gradients over the ranks, so
the step is the one-process step on the whole batch. Rank 0 saves the full weights and
the last info of each rule to ``OUT`` (``torch.save``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import lightning.pytorch as pl
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gradclip_torch  # noqa: E402
from tests.trainers.util import LR, MOMENTUM, batches, loss_fn, make_net, rules  # noqa: E402


class ShardedModule(pl.LightningModule):
    def __init__(self, shard: bool) -> None:
        super().__init__()
        self.net = make_net()
        self.shard = shard

    def configure_model(self) -> None:
        if not self.shard:
            return
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        return loss_fn(self.net, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)


def main(out: str, specs: list[str]) -> None:
    rank = int(os.environ["LOCAL_RANK"])
    data = [(x[4 * rank:4 * rank + 4], y[4 * rank:4 * rank + 4]) for x, y in batches(4)]
    results = {}
    for spec in specs:
        kind, name = spec.split(":")
        callback = gradclip_torch.LightningCallback(rules()[name])
        module = ShardedModule(shard=kind == "fsdp2")
        strategy = ModelParallelStrategy(2, 1) if kind == "fsdp2" else "ddp"
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, precision="32",
                             max_steps=len(data), callbacks=[callback], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                             default_root_dir=os.path.dirname(out))
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None, shuffle=False))
        params = list(module.parameters())
        weights = [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in params]
        results[spec] = {"weights": weights, "info": {k: float(v) for k, v in callback.info.items()},
                         "type": type(params[0]).__name__}
    if rank == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
