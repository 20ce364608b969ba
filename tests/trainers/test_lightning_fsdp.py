"""Lightning FSDP2 (``ModelParallelStrategy`` + ``fully_shard``) and DDP on 2 gloo processes equal one process.

Lightning's ``ModelParallelStrategy`` runs on CPU with gloo: the parameters and gradients
are DTensors sharded on dim 0 of the data-parallel mesh, and ``LightningCallback``'s
rule reduces its global quantities over it (one collective per step for a global
clip). The ranks are launched here as Lightning's environment variables describe
(``LOCAL_RANK``...), each on half of every batch; the full weights must equal the plain
one-process loop on the whole batches (relative 1e-6: the sum of squares is reduced
over ranks in another order), pruning masks exactly. DDP (``strategy="ddp"``) is checked
the same way. Lightning's ``FSDPStrategy`` (FSDP1) refuses the CPU ("The strategy `fsdp`
requires a GPU accelerator"): not tested here.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from tests.distributed.ranks import run_ranks  # noqa: E402

from .util import plain_loop, batches, rules  # noqa: E402

WORKER = Path(__file__).with_name("_lightning_fsdp_worker.py")
# (ZClip makes the same one reduction as the global norm; under DDP the gradients are already global)
SPECS = ["fsdp2:global_norm", "fsdp2:global_prune", "ddp:global_norm"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("lightning_fsdp")
    out = tmp / "result.pt"
    port = str(_free_port())
    env = {"NODE_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    run_ranks(WORKER, 2, lambda r: [out, *SPECS], lambda r: {**env, "LOCAL_RANK": str(r)}, cwd=tmp)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("spec", SPECS)
def test_two_processes_equal_one(fsdp_results: dict, spec: str) -> None:
    kind, name = spec.split(":")
    got = fsdp_results[spec]
    assert got["type"] == ("DTensor" if kind == "fsdp2" else "Parameter")
    want, handle = plain_loop(rules()[name], batches(4))
    for a, b in zip(got["weights"], want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        if name == "global_prune":
            assert torch.equal(a == 0, b == 0)
    want_info = {k: float(v) for k, v in handle.info.items()}
    assert got["info"] == pytest.approx(want_info, rel=1e-5)
