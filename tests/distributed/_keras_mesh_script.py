"""Run by tests/keras/test_keras_model_parallel.py in a fresh process (JAX backend, 4 host devices).

(It lives here, out of the Keras test processes' doctest collection: importing it sets ``XLA_FLAGS``.)

Fits the same two-layer model (``Dense`` kernels ``(6, 8)`` and ``(8, 4)``, weights
from ``tests/fixtures.py``) twice per case: on one device, and under
``keras.distribution.ModelParallel`` on a 2x2 ``DeviceMesh(("batch", "model"))`` whose
``LayoutMap`` splits the first kernel by columns ``(None, "model")`` and its bias
``("model",)``, the second kernel by rows ``("model", None)`` (its bias replicated),
with the batch split over ``"batch"``. Cases (argv picks some; default all):

- ``opt_<rule>``: ``gradclip_keras.Optimizer(SGD(momentum), rule)`` inside ``model.fit``;
- ``callback_prune``: ``gradclip_keras.Callback(global_magnitude_prune)`` after every batch;
- ``constraint``: ``gradclip_keras.Constraint(max_norm)`` as the kernels' ``kernel_constraint``.

Prints JSON: per case, the relative difference of the final weights, of every logged
info value (per epoch), whether the pruning masks (zero patterns) are equal, and
whether the distributed weights really are sharded (``device_set`` of 4, not replicated).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import gradclip_core as gc  # noqa: E402
import gradclip_keras  # noqa: E402

from tests.fixtures import mlp_weights, regression  # noqa: E402

SIZES = (6, 8, 4)
EPOCHS = 3
SCHEDULE = dict(begin_step=0, end_step=6, frequency=2, initial_sparsity=0.2)

RULES = {
    "opt_global_norm": lambda: gc.clip_by_global_norm(0.5),
    "opt_agc": lambda: gc.adaptive_clip(0.05),
    "opt_zclip": lambda: gc.zclip(alpha=0.5, z_thresh=1.0, warmup_steps=2),
    "opt_global_prune": lambda: gc.global_magnitude_prune(0.6, schedule=gc.polynomial_schedule(**SCHEDULE)),
    "opt_prune_and_clip": lambda: gc.chain(gc.global_magnitude_prune(0.6, schedule=gc.polynomial_schedule(**SCHEDULE)),
                                           gc.clip_by_global_norm(0.5)),
    "callback_prune": lambda: gc.global_magnitude_prune(0.6, schedule=gc.polynomial_schedule(**SCHEDULE)),
    "constraint": lambda: gc.max_norm(0.4),
}

x, y = regression(0, 64, SIZES[0], SIZES[-1])
y[48:] *= 30.0  # the last batch of each epoch, whose info is recorded: the clips act


def model(constraint=None) -> keras.Model:
    keras.utils.set_random_seed(0)
    kw = {} if constraint is None else {"kernel_constraint": constraint}
    m = keras.Sequential([
        keras.Input((SIZES[0],)),
        keras.layers.Dense(SIZES[1], activation="tanh", name="l0", **kw),
        keras.layers.Dense(SIZES[2], name="l1", **kw),
    ], name="net")  # (the info keys name the variables by path: the same in every fit)
    m.set_weights([w.T if w.ndim == 2 else w for w in mlp_weights(0, SIZES)])
    return m


def fit(case: str) -> tuple:
    rule = RULES[case]()
    inner = keras.optimizers.SGD(0.05, momentum=0.9)
    callbacks = []
    if case.startswith("opt_"):
        m, opt = model(), gradclip_keras.Optimizer(inner, rule)
        source = opt
    elif case == "callback_prune":
        m, opt = model(), inner
        source = gradclip_keras.Callback(rule)
        callbacks.append(source)
    else:
        m, opt, source = model(gradclip_keras.Constraint(rule)), inner, None
    m.compile(optimizer=opt, loss="mse")
    infos = []
    for _ in range(EPOCHS):
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        infos.append({} if source is None else {k: float(v) for k, v in source.info.items()})
    sharded = all(len(v.value.sharding.device_set) == 4 for v in m.trainable_variables) and any(
        not v.value.sharding.is_fully_replicated for v in m.trainable_variables)
    return [np.asarray(w) for w in m.get_weights()], infos, sharded


def rel(a: list, b: list) -> float:
    return max(float(np.max(np.abs(p - q)) / max(1e-30, float(np.max(np.abs(q))))) for p, q in zip(a, b))


def main() -> None:
    assert len(jax.devices()) == 4, jax.devices()
    cases = sys.argv[1:] or list(RULES)
    single = {case: fit(case) for case in cases}
    mesh = keras.distribution.DeviceMesh((2, 2), ("batch", "model"), devices=keras.distribution.list_devices("cpu"))
    layouts = keras.distribution.LayoutMap(mesh)
    layouts[".*/l0/kernel"] = (None, "model")
    layouts[".*/l0/bias"] = ("model",)
    layouts[".*/l1/kernel"] = ("model", None)
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch"))
    out = {}
    for case in cases:
        w, infos, sharded = fit(case)
        w1, infos1, _ = single[case]
        out[case] = {
            "weights_rel": rel(w, w1),
            "info_rel": max([abs(a[k] - b[k]) / max(1e-30, abs(b[k])) for a, b in zip(infos, infos1) for k in b] or [0.0]),
            "zeros_equal": all(np.array_equal(p == 0, q == 0) for p, q in zip(w, w1)),
            "zeros": int(sum(np.sum(q == 0) for q in w1)),
            "sharded": sharded,
            "info": infos1,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
