"""The worker scripts run in their own processes (gloo ranks; JAX and Keras with 4 host devices).

They are not test modules, and importing ``_jax_script`` here would set ``XLA_FLAGS``
in this process: keep pytest's doctest collection away from them.
"""

from pathlib import Path

import pytest

collect_ignore = ["_jax_script.py", "_torch_worker.py", "_torch_parallel.py", "_jax_mesh_script.py", "_keras_mesh_script.py"]


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One 2-rank gloo launch of every torch scenario (each launch costs seconds): each rank's results."""
    pytest.importorskip("torch")
    from .ranks import launch_torch

    return launch_torch(Path(tmp_path_factory.mktemp("gloo2")), 2, "ddp,fsdp2,shards,mesh,pipeline,expert")
