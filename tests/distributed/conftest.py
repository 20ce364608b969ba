"""The worker scripts run in their own processes (gloo ranks; JAX and Keras with 4 host devices).

They are not test modules, and importing ``_jax_script`` here would set ``XLA_FLAGS``
in this process: keep pytest's doctest collection away from them.
"""

collect_ignore = ["_jax_script.py", "_torch_worker.py", "_jax_mesh_script.py", "_keras_mesh_script.py"]
