"""Checkpoint/resume of stateful rules in ``gradclip_keras.Optimizer`` continues exactly.

Each stateful rule (autoclip's ring buffer, zclip's EMA statistics, record_norms'
history) trains ``CUT`` steps in ``fit``, the model is saved to a ``.keras`` file and
loaded back (a new model, optimizer and rule from the file), and ``fit`` goes on for
the remaining steps; weights, the rule state variables, the inner optimizer's variables
and the last info must equal an uninterrupted run of all the steps bit for bit. The
data has spikes so the rules actually clip (checked).
"""

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras

from .util import to_np

B, STEPS, CUT = 4, 10, 6

RULES = {
    "autoclip": lambda: gc.autoclip(30.0, 5),
    "zclip": lambda: gc.zclip(alpha=0.8, z_thresh=1.5, warmup_steps=3),
    "record_norms": lambda: gc.chain(gc.record_norms(6), gc.clip_by_global_norm(20.0)),
}


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * B, 3)).astype(np.float32)
    y = rng.normal(size=(STEPS * B, 2)).astype(np.float32)
    for step in (4, 7, 8):  # spikes, before and after the cut
        y[step * B:(step + 1) * B] *= 40.0
    return x, y


def _compiled(rule):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=gradclip_keras.Optimizer(keras.optimizers.Adam(0.05), rule), loss="mse")
    return model


def _fit(model, x, y, scales=None):
    callbacks = [] if scales is None else [_Scales(scales)]
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)


def _snapshot(model):
    opt = model.optimizer
    return {
        "weights": [to_np(v) for v in model.trainable_weights],
        "state": [to_np(v) for v in opt.gradclip_state],
        "inner": [to_np(v) for v in opt.inner_optimizer.variables],
        "info": {k: to_np(v) for k, v in opt.info.items()},
    }


@pytest.mark.parametrize("name", sorted(RULES))
def test_save_load_resume_equals_uninterrupted_run(name, tmp_path):
    x, y = _data()
    cut = CUT * B

    whole = _compiled(RULES[name]())
    whole.scales = []
    _fit(whole, x, y, whole.scales)
    want = _snapshot(whole)

    first = _compiled(RULES[name]())
    _fit(first, x[:cut], y[:cut])
    path = tmp_path / "ckpt.keras"
    first.save(path)
    resumed = keras.saving.load_model(path)
    assert isinstance(resumed.optimizer, gradclip_keras.Optimizer)
    assert resumed.optimizer.rule.config == first.optimizer.rule.config
    for a, b in zip(resumed.optimizer.gradclip_state, first.optimizer.gradclip_state):  # state came back
        np.testing.assert_array_equal(to_np(a), to_np(b))
    _fit(resumed, x[cut:], y[cut:])
    got = _snapshot(resumed)

    assert int(to_np(resumed.optimizer.iterations)) == STEPS
    for key in ("weights", "state", "inner"):
        assert len(got[key]) == len(want[key]) > 0
        for a, b in zip(got[key], want[key]):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b, err_msg=key)
    assert got["info"].keys() == want["info"].keys()
    for k in want["info"]:
        np.testing.assert_array_equal(got["info"][k], want["info"][k], err_msg=k)
    assert min(whole.scales) < 1.0  # the rule did clip the spikes


class _Scales(keras.callbacks.Callback):
    """Collects the wrapper's last ``scale`` after every batch."""

    def __init__(self, scales):
        super().__init__()
        self.scales = scales

    def on_train_batch_end(self, batch, logs=None):
        info = self.model.optimizer.info
        key = next(k for k in info if k.endswith("scale"))
        self.scales.append(float(to_np(info[key])))
