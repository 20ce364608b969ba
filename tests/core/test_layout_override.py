"""``gradclip_core.layout_override``: an adapter sets what ``axis=None`` means for a call."""

import numpy as np
import pytest

import gradclip_core as gc
from gradclip_core.backend import reduce_axes


def test_override_applies_inside_block_only():
    with pytest.raises(ValueError, match="axis=None"):
        reduce_axes(np, None, (3, 4))  # NumPy has no native layout
    with gc.layout_override("out_last"):
        assert reduce_axes(np, None, (3, 4)) == (0,)
        assert reduce_axes(np, None, (2, 2, 3, 5)) == (0, 1, 2)
        with gc.layout_override("out_first"):  # nests
            assert reduce_axes(np, None, (3, 4)) == (1,)
        assert reduce_axes(np, None, (3, 4)) == (0,)
        assert reduce_axes(np, "out_first", (3, 4)) == (1,)  # explicit axis wins
    with pytest.raises(ValueError, match="axis=None"):
        reduce_axes(np, None, (3, 4))


def test_override_restored_after_exception():
    with pytest.raises(RuntimeError):
        with gc.layout_override("optax"):
            raise RuntimeError
    with pytest.raises(ValueError):
        reduce_axes(np, None, (3, 4))


def test_override_rejects_unknown_layout():
    with pytest.raises(ValueError, match="layout must be one of"):
        with gc.layout_override("in_first"):
            pass


def test_adaptive_clip_axis_none_under_override_equals_explicit_axis():
    rng = np.random.default_rng(0)
    w = [rng.normal(size=(4, 3)).astype(np.float32)]
    g = [rng.normal(size=(4, 3)).astype(np.float32) * 10]
    explicit = gc.adaptive_clip(0.05, axis="out_last")
    implicit = gc.adaptive_clip(0.05)
    want, _, _ = explicit.update(g, explicit.init(w), w)
    with gc.layout_override("out_last"):
        got, _, _ = implicit.update(g, implicit.init(w), w)
    np.testing.assert_array_equal(got[0], want[0])
