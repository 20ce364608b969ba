"""RMS clipping: optax's clip_by_block_rms order and Adafactor's update clipping."""

import numpy as np
import pytest

import gradclip_core as gc

from .util import NAMESPACES, SHAPES, rand_arrays, run_update


def ref_block_rms(u, t):
    """optax: u / max(1, sqrt(mean(|u|^2)) / t) (float64)."""
    u = np.asarray(u, np.float64)
    rms = np.sqrt(np.mean(u * u)) if u.size else 0.0
    return u / max(1.0, rms / t)


def ref_adafactor(u, d):
    """Shazeer & Stern 2018, eq. (update clipping): U / max(1, RMS(U) / d), RMS = ||U|| / sqrt(n)."""
    u = np.asarray(u, np.float64)
    rms = np.linalg.norm(u.ravel()) / np.sqrt(max(u.size, 1))
    return u / max(1.0, rms / d)


@pytest.mark.parametrize("xp", NAMESPACES)
@pytest.mark.parametrize("make, ref", [(gc.clip_by_block_rms, ref_block_rms), (gc.clip_update_rms, ref_adafactor)])
@pytest.mark.parametrize("threshold", [0.1, 1.0, 10.0])
def test_matches_reference(xp, make, ref, threshold):
    grads = rand_arrays(7, SHAPES, scale=1.0)
    out, _, info = run_update(make(threshold), xp, grads)
    for o, g in zip(out, grads):
        assert o.dtype == g.dtype
        np.testing.assert_allclose(o.astype(np.float64), ref(g, threshold), rtol=3e-6)
        if o.size:
            assert np.sqrt(np.mean(o.astype(np.float64) ** 2)) <= threshold * (1 + 1e-5)
    rms = [np.sqrt(np.mean(g.astype(np.float64) ** 2)) if g.size else 0.0 for g in grads]
    assert info["max_rms"] == pytest.approx(max(rms), rel=2e-6)
    assert info["clipped_fraction"] == pytest.approx(np.mean([r > threshold for r in rms]))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_size_zero_has_rms_zero_not_nan(xp):
    out, _, info = run_update(gc.clip_by_block_rms(1.0), xp, [np.zeros((0, 3), np.float32)])
    assert out[0].shape == (0, 3) and info["max_rms"] == 0.0


def test_default_adafactor_threshold_is_one():
    assert gc.clip_update_rms().config["threshold"] == 1.0
