"""keras.distribution.DataParallel (JAX backend, 4 host devices): fit equals the one-device fit.

A fresh process (``XLA_FLAGS`` must give JAX 4 CPU devices before it starts) fits the
same model twice, 3 epochs of 4 batches (the last batch of each epoch, whose info is
compared, has 30x targets: the clips act), with
``gradclip_keras.Optimizer(SGD(momentum), rule)``: once on one device, once under
``keras.distribution.DataParallel`` over 4 devices (each batch split 4 ways; the JAX
trainer's gradient is the global one, so the rule sees the same gradients). Final
weights must agree to 1e-6 relative (summation order of the sharded batch), info to 1e-5.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

if keras.backend.backend() != "jax":
    pytest.skip("keras.distribution runs on the JAX backend", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import json, numpy as np, jax, keras
import gradclip_core as gc, gradclip_keras
from tests.fixtures import regression
from tests.keras.util import dense_model
assert len(jax.devices()) == 4

RULES = {
    "global_norm": lambda: gc.clip_by_global_norm(0.5),
    "global_norm_keras": lambda: gc.clip_by_global_norm(0.5, semantics="keras"),
    "agc": lambda: gc.adaptive_clip(0.05),
    "zclip": lambda: gc.zclip(alpha=0.5, z_thresh=1.0, warmup_steps=2),
}
x, y = regression(0, 64, 6, 2)
y[48:] *= 30.0  # the last batch of each epoch, whose info is recorded

def fit(name):
    model = dense_model(0, (6, 8, 2))
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(0.05, momentum=0.9), RULES[name]())
    model.compile(optimizer=opt, loss="mse")
    infos = []
    for _ in range(3):
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        infos.append({k: float(v) for k, v in opt.info.items()})
    return [np.asarray(w) for w in model.get_weights()], infos

def rel(a, b):
    return max(float(np.max(np.abs(p - q)) / max(1e-30, float(np.max(np.abs(q))))) for p, q in zip(a, b))

out = {}
single = {name: fit(name) for name in RULES}
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu")))
for name in RULES:
    w, infos = fit(name)
    w1, infos1 = single[name]
    out[name] = {
        "weights_rel": rel(w, w1),
        "info_rel": max(abs(a[k] - b[k]) / max(1e-30, abs(b[k])) for a, b in zip(infos, infos1) for k in b),
        "info": infos1,
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("rule", ["global_norm", "global_norm_keras", "agc", "zclip"])
def test_data_parallel_fit_equals_one_device(results, rule):
    r = results[rule]
    assert r["weights_rel"] <= 1e-6, r
    assert r["info_rel"] <= 1e-5, r


def test_the_clip_acts(results):
    assert min(i["scale"] for i in results["global_norm"]["info"]) < 1.0
