"""gc.accumulate(rule, "float64") in ``gradclip_keras.Optimizer``: fit, variable dtypes, saving; JAX without x64: the error."""

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras

from ..fixtures import regression
from .util import dense_model, to_np

BACKEND = keras.backend.backend()


def _x64() -> bool:
    if BACKEND != "jax":
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


def test_fit_keeps_variable_dtypes_and_info_float32(tmp_path):
    rule = gc.accumulate(gc.chain(gc.clip_by_global_norm(1.0), gc.zclip(warmup_steps=2)), "float64")
    opt = gradclip_keras.Optimizer(keras.optimizers.SGD(1e-2), rule)
    model = dense_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = regression(0, 32, 4, 2, y_scale=50.0)
    if not _x64():
        with pytest.raises(ValueError, match="jax_enable_x64"):
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        return
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all("float64" not in str(v.dtype) for v in opt.variables)
    norm = opt.gradclip_info["clip_by_global_norm/norm"]
    assert "float32" in str(norm.dtype) and float(to_np(norm)) > 1.0
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.rule.config == rule.config


def test_norm_is_the_exactly_rounded_one():
    if not _x64():
        pytest.skip("JAX without x64: the error is tested above")
    rng = np.random.default_rng(0)
    g = (rng.standard_normal((4096, 64)) * 1e3).astype(np.float32)
    rule = gc.accumulate(gc.clip_by_global_norm(1.0))
    _, _, info = rule.update([keras.ops.convert_to_tensor(g)], ())
    assert float(to_np(info["norm"])) == np.float32(np.sqrt(np.sum(g.astype(np.longdouble) ** 2)))
