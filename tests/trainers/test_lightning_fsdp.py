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

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from .util import plain_loop, batches, rules  # noqa: E402

WORKER = Path(__file__).with_name("_lightning_fsdp_worker.py")
ROOT = Path(__file__).resolve().parents[2]
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
    procs = []
    for rank in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "adapters"), os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), *SPECS], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} failed:\n{logs[rank][-4000:]}"
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
