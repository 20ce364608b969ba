"""Proximal shrinkage and weight constraints (project-only rules), on NumPy and array-api-strict."""

import numpy as np
import pytest

import gradclip_core as gc

from .util import NAMESPACES, to_np, to_xp


def project(rule, xp, params):
    p = to_xp(xp, params)
    out, _, info = rule.project(p, rule.init(p))
    return to_np(out), {k: float(v) for k, v in info.items()}


@pytest.mark.parametrize("xp", NAMESPACES)
def test_soft_threshold_and_mcp_formulas(xp):
    w = np.array([-2.0, -0.5, 0.0, 0.25, 0.75, 1.0, 3.5, np.nan, np.inf], np.float32)
    out, info = project(gc.soft_threshold(0.5), xp, [w])
    expected = np.sign(w) * np.maximum(np.abs(w) - 0.5, 0)
    np.testing.assert_array_equal(out[0], expected.astype(np.float32))
    out, _ = project(gc.mcp_threshold(0.5, gamma=3.0), xp, [w])
    a = np.abs(w.astype(np.float64))
    firm = np.where(a <= 0.5, 0, np.where(a <= 1.5, np.sign(w) * (a - 0.5) * 1.5, w))
    np.testing.assert_allclose(out[0], firm, rtol=1e-7)
    assert np.isnan(out[0][7]) and out[0][8] == np.inf


@pytest.mark.parametrize("xp", NAMESPACES)
def test_clip_weights_and_non_neg_are_exact(xp):
    w = np.array([-0.02, -0.005, 0.5, np.nan], np.float32)
    out, info = project(gc.clip_weights(0.01, info="full"), xp, [w])
    assert out[0][:3].tolist() == np.float32([-0.01, -0.005, 0.01]).tolist() and np.isnan(out[0][3])
    assert info["clipped_fraction"] == 0.5
    out, _ = project(gc.clip_weights(lo=0.0, hi=0.1), xp, [w])
    assert out[0][:3].tolist() == np.float32([0.0, 0.0, 0.1]).tolist()
    out, info = project(gc.non_neg(info="full"), xp, [w])
    assert out[0][:3].tolist() == np.float32([0, 0, 0.5]).tolist() and np.isnan(out[0][3])


def keras_norm(w, axis, desired=None, eps=1e-7):
    n = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    return w / (eps + n) if desired is None else w * (desired(n) / (eps + n))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_norm_constraints_follow_keras_formulas(xp):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3)).astype(np.float32) * 3
    cases = [
        (gc.max_norm(2.0, axis=0), lambda n: np.clip(n, 0, 2.0)),
        (gc.min_max_norm(1.0, 2.0, rate=0.5, axis=0), lambda n: 0.5 * np.clip(n, 1.0, 2.0) + 0.5 * n),
        (gc.unit_norm(axis=0), None),
    ]
    for rule, desired in cases:
        out, _ = project(rule, xp, [w])
        np.testing.assert_allclose(out[0], keras_norm(w, 0, desired), rtol=3e-6)
    out, _ = project(gc.max_norm(2.0, axis="out_first"), xp, [w])
    np.testing.assert_allclose(out[0], keras_norm(w, 1, lambda n: np.clip(n, 0, 2.0)), rtol=3e-6)


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: gc.soft_threshold(-1.0), "threshold"),
        (lambda: gc.mcp_threshold(0.1, gamma=1.0), "gamma"),
        (lambda: gc.clip_weights(0.1, lo=0.0), "mutually exclusive"),
        (lambda: gc.clip_weights(lo=1.0, hi=0.0), "lo must be <= hi"),
        (lambda: gc.max_norm(-1.0, axis=0), "max_value"),
        (lambda: gc.min_max_norm(2.0, 1.0, axis=0), "min_value"),
        (lambda: gc.min_max_norm(0.0, 1.0, rate=2.0, axis=0), "rate"),
        (lambda: gc.unit_norm(axis="rows"), "axis"),
    ],
)
def test_bad_arguments(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


@pytest.mark.parametrize("name", ["soft_threshold", "mcp_threshold", "clip_weights", "max_norm", "min_max_norm", "unit_norm", "non_neg"])
def test_project_only_and_config_round_trip(name):
    rule = {"soft_threshold": lambda: gc.soft_threshold(0.1), "mcp_threshold": lambda: gc.mcp_threshold(0.1),
            "clip_weights": lambda: gc.clip_weights(0.1), "max_norm": lambda: gc.max_norm(axis=0),
            "min_max_norm": lambda: gc.min_max_norm(axis=0), "unit_norm": lambda: gc.unit_norm(axis=0),
            "non_neg": lambda: gc.non_neg()}[name]()
    assert rule.has_project and rule.name == name
    assert gc.from_config(rule.config).config == rule.config
    g = [np.ones(3, np.float32)]
    assert rule.update(g, rule.init(g))[0][0] is g[0]
