"""torch.distributed (gloo, local processes): DDP and FSDP2 runs equal the single-process run.

Each rank runs ``_torch_worker.py``; it trains a small MLP 4 steps (SGD with momentum,
a gradient spike at step 3) with a rule attached, under DDP and under FSDP2
(``fully_shard``, DTensor gradients, uneven and empty shards), and the same training in
one process; and it applies every global rule to the same full tensors as DTensor
shards (``distribute_tensor(..., Shard(0))``) and as plain tensors, counting the
``torch.distributed.all_reduce`` calls the rule makes.

What is compared:
- training: final weights and every logged info value, relative difference <= 1e-6
  (a global sum of squares reduced over ranks in a different order may differ in
  the last bit, which momentum carries for a few steps; measured ~1e-7), pruning masks
  bit for bit;
- shards vs plain tensors: gradients, weights, masks and info (ties included: the
  weights are rounded to a grid of 0.5) bit for bit here (gradients up to 2 ulp
  allowed), and exactly ONE collective per step for global-norm clip, AutoClip, ZClip,
  record_norms; two for AGC (units of 1-d biases span ranks) and for
  ``nonfinite="skip"`` (the finite flag); one per histogram pass for global pruning.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from .ranks import launch_torch  # noqa: E402

RULES = ["global_norm", "global_norm_torch", "global_norm_inf", "agc", "zclip", "autoclip", "adagc", "global_prune"]


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
@pytest.mark.parametrize("rule", RULES)
def test_training_equals_single_process(two_ranks: list[dict], kind: str, rule: str) -> None:
    for rank, res in enumerate(two_ranks):
        r = res[kind][rule]
        assert r["weights_rel"] <= 1e-6, (rank, r)
        assert r["info_rel"] <= 1e-5, (rank, r)  # zclip's EMA variance amplifies the last bit
        if rule == "global_prune":
            assert r["masks_equal"], (rank, r)
            assert r["sparsity"] == pytest.approx(0.5949, abs=1e-3)  # polynomial schedule at step 3


def test_the_rules_act_in_the_training_run(two_ranks: list[dict]) -> None:
    """The runs above compare something: clipping happens on the spike step."""
    r = two_ranks[0]["fsdp2"]
    assert r["global_norm"]["spike_or_clip"][2] < 0.1  # scale on the spike step
    assert r["zclip"]["spike_or_clip"][2:] == [1.0, 0.0]  # ZClip's spike flag after warm-up: the spike step only


EXPECTED_COLLECTIVES = {  # per apply_ (and per project_ for pruning), per step
    "global_norm": 1, "global_norm_torch": 1, "global_norm_inf": 1, "zclip": 1, "autoclip": 1,
    "record_norms": 1, "clip_by_norm": 1, "agc": 2, "global_norm_skip": 2, "adagc": 1,
}


def _check_shards(results: list[dict]) -> None:
    for rank, res in enumerate(results):
        for name, r in res["shards"].items():
            assert r["weights_equal"], (rank, name)
            assert r["grads_rel"] <= 2.5e-7, (rank, name, r["grads_rel"])
            for key, (got, want) in r["info"].items():
                assert got == pytest.approx(want, rel=2.5e-7, abs=0), (rank, name, key)
            if name in EXPECTED_COLLECTIVES:
                assert r["collectives"] == [EXPECTED_COLLECTIVES[name]] * 3, (name, r["collectives"])
        # global pruning: nothing to reduce in update; recompute = element count, 2 histogram
        # passes, tie offsets, sparsity info; later steps (one-shot) only the sparsity info
        assert res["shards"]["global_prune"]["collectives"] == [0, 5] * 3
        assert res["shards"]["global_prune_normalized"]["collectives"] == [0, 6, 0, 1, 0, 1]


def test_dtensor_shards_equal_plain_tensors(two_ranks: list[dict]) -> None:
    _check_shards(two_ranks)


def test_four_ranks_empty_shards(tmp_path: Path) -> None:
    """Four ranks: the (1, 7) weight and (1,) bias live on rank 0 only, (3,) is split 1/1/1/0."""
    _check_shards(launch_torch(tmp_path, 4, "shards"))
