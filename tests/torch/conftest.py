"""Fixtures of the torch tests."""

from __future__ import annotations

import pytest

from gradclip_core.backend import _native


@pytest.fixture(params=["c-loops", "numpy-loops"])
def loops(request, monkeypatch):
    """The eager CPU kernels' inner loops: the fused C loops (:mod:`gradclip_core.backend._native`), or NumPy's
    operations on in-cache chunks (what runs without a C compiler). Skips the C case where they cannot be built."""
    if request.param == "c-loops":
        if _native.library() is None:
            pytest.skip(f"no fused C loops here: {_native.unavailable_reason()}")
    else:
        monkeypatch.setitem(_native._STATE, "lib", None)
        monkeypatch.setitem(_native._STATE, "why", "turned off by the test")
    return request.param
