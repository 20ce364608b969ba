"""The FSDP worker runs in its own processes (gloo ranks): not a test module, keep doctest collection away."""

collect_ignore = ["_lightning_fsdp_worker.py"]
