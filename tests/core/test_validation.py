"""Bad arguments raise ValueError at construction, naming the argument and the expected form."""

import math

import numpy as np
import pytest

import gradclip_core as gc
import gradclip_core.backend as gcb

BAD_THRESHOLDS = [-1.0, math.nan, math.inf, -math.inf, "1.0", None, True, np.ones(2)]


THRESHOLD_ARGS = [
    (lambda v: gc.clip_by_value(v), "clip_value"),
    (lambda v: gc.clip_by_norm(v), "max_norm"),
    (lambda v: gc.clip_by_global_norm(v), "max_norm"),
    (lambda v: gc.clip_by_block_rms(v), "threshold"),
    (lambda v: gc.clip_update_rms(v), "threshold"),
    (lambda v: gc.adaptive_clip(v, axis=0), "clipping"),
    (lambda v: gc.adaptive_clip(0.1, v, axis=0), "eps"),
]


@pytest.mark.parametrize(
    "make, arg, value",
    # clip_value=None means "use lo/hi" (tested below)
    [(m, a, v) for m, a in THRESHOLD_ARGS for v in BAD_THRESHOLDS if not (a == "clip_value" and v is None)],
)
def test_bad_thresholds(make, arg, value):
    with pytest.raises(ValueError, match=arg):
        make(value)


@pytest.mark.parametrize("make", [lambda: gc.clip_by_block_rms(0.0), lambda: gc.clip_update_rms(0.0)])
def test_rms_threshold_must_be_positive(make):
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        make()


def test_zero_thresholds_are_allowed_where_meaningful():
    gc.clip_by_value(0.0)
    gc.clip_by_global_norm(0.0)
    gc.clip_by_norm(0)
    gc.adaptive_clip(0.0, 0.0, axis=0)


def test_zero_d_arrays_are_accepted_as_thresholds():
    rule = gc.clip_by_global_norm(np.float32(2.0))
    g = [np.array([3.0, 4.0], np.float32)]
    out, _, _ = rule.update(g, rule.init(g))
    np.testing.assert_allclose(np.linalg.norm(out[0]), 2.0, rtol=1e-6)
    gc.clip_by_global_norm(np.asarray(2.0))  # traced/injected hyperparameters are 0-d arrays


@pytest.mark.parametrize("semantics", ["pytorch", "Torch", "jax", ""])
@pytest.mark.parametrize("make", [gc.clip_by_global_norm, gc.clip_by_norm])
def test_unknown_semantics(make, semantics):
    with pytest.raises(ValueError, match=r"semantics must be one of \['canonical', 'torch', 'optax', 'keras'\]"):
        make(1.0, semantics=semantics)


@pytest.mark.parametrize("ord", [0, 3, -1, "fro", "nuc", None, math.nan])
@pytest.mark.parametrize("make", [gc.clip_by_global_norm, gc.clip_by_norm])
def test_bad_ord(make, ord):
    with pytest.raises(ValueError, match="ord must be 1, 2 or inf"):
        make(1.0, ord=ord)


@pytest.mark.parametrize("semantics", ["optax", "keras"])
@pytest.mark.parametrize("make", [gc.clip_by_global_norm, gc.clip_by_norm])
def test_presets_without_other_norms(make, semantics):
    with pytest.raises(ValueError, match=f"semantics='{semantics}' only defines the 2-norm"):
        make(1.0, ord=1, semantics=semantics)


@pytest.mark.parametrize("ord", [1, 2, "inf", math.inf, 2.0])
def test_good_ords(ord):
    gc.clip_by_global_norm(1.0, ord=ord, semantics="torch")


@pytest.mark.parametrize(
    "make",
    [
        lambda: gc.clip_by_value(1.0, nonfinite="ignore"),
        lambda: gc.clip_by_norm(1.0, nonfinite=None),
        lambda: gc.clip_by_global_norm(1.0, nonfinite="Skip"),
        lambda: gc.clip_by_block_rms(1.0, nonfinite="nan"),
        lambda: gc.clip_update_rms(1.0, nonfinite=0),
        lambda: gc.adaptive_clip(0.1, axis=0, nonfinite="raise!"),
    ],
)
def test_unknown_nonfinite_policy(make):
    with pytest.raises(ValueError, match=r"nonfinite must be one of \['propagate', 'zero', 'skip', 'raise'\]"):
        make()


def test_clip_by_value_bounds():
    with pytest.raises(ValueError, match="mutually exclusive"):
        gc.clip_by_value(1.0, lo=-1.0)
    with pytest.raises(ValueError, match="needs clip_value, or at least one of lo/hi"):
        gc.clip_by_value()
    with pytest.raises(ValueError, match="lo must be <= hi"):
        gc.clip_by_value(lo=1.0, hi=0.0)
    with pytest.raises(ValueError, match="hi must be a finite number or None"):
        gc.clip_by_value(lo=0.0, hi=math.inf)
    with pytest.raises(ValueError, match="lo must be a finite number or None"):
        gc.clip_by_value(lo="a")
    gc.clip_by_value(lo=0.0)  # one-sided is fine
    gc.clip_by_value(hi=0.0)


@pytest.mark.parametrize("axis", ["rows", "out", 1.5, (), (0, 0), (0, "1"), True, [0, 1.0]])
def test_bad_axis_at_construction(axis):
    with pytest.raises(ValueError, match="axis"):
        gc.adaptive_clip(0.01, axis=axis)


def test_axis_out_of_range_at_update():
    rule = gc.adaptive_clip(0.01, axis=(2,))
    g = [np.ones((3, 4), np.float32)]
    with pytest.raises(ValueError, match=r"axis \(2,\) is out of range for an array of shape \(3, 4\)"):
        rule.update(g, rule.init(g), g)


def test_axis_none_needs_a_framework_layout_on_numpy():
    rule = gc.adaptive_clip(0.01)
    g = [np.ones((3, 4), np.float32)]
    with pytest.raises(ValueError, match="pass axis= explicitly"):
        rule.update(g, rule.init(g), g)


def test_optax_layout_rejects_rank_6():
    rule = gc.adaptive_clip(0.01, axis="optax")
    g = [np.ones((2,) * 6, np.float32)]
    with pytest.raises(ValueError, match="rank <= 5"):
        rule.update(g, rule.init(g), g)


def test_register_layout_validates():
    with pytest.raises(ValueError, match="layout must be one of"):
        gcb.register_layout("x", "columns")


def test_agc_needs_matching_params():
    rule = gc.adaptive_clip(0.01, axis=0)
    g = [np.ones((3, 4), np.float32)]
    with pytest.raises(ValueError, match="adaptive_clip needs the current parameters"):
        rule.update(g, rule.init(g))
    with pytest.raises(ValueError, match="one array per gradient"):
        rule.update(g, rule.init(g), g + g)
    with pytest.raises(ValueError, match=r"adaptive_clip: params array 0 has shape \(4, 3\)"):
        rule.update(g, rule.init(g), [np.ones((4, 3), np.float32)])
