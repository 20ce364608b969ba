"""Namespace resolution: array-api-compat, the registry, multi-array primitives, lazy kernels."""

import array_api_strict
import numpy as np
import pytest

import gradclip_core as gc
from gradclip_core import backend
from gradclip_core.backend import _namespace
from gradclip_core.backend import _primitives as _multi


class Tagged(np.ndarray):
    """An array type array-api-compat knows only as NumPy; a registry entry claims it."""


@pytest.fixture
def clean_registry():
    saved = list(_namespace._REGISTRY), {k: dict(v) for k, v in _multi._OVERRIDES.items()}
    yield
    _namespace._REGISTRY[:] = saved[0]
    _multi._OVERRIDES.clear()
    _multi._OVERRIDES.update(saved[1])


def test_numpy_and_strict_resolve_through_array_api_compat():
    assert backend.namespace(np.ones(2)).__name__ == "array_api_compat.numpy"
    assert backend.namespace(array_api_strict.ones(2)) is array_api_strict
    assert backend.namespace(None, 1.0, np.ones(2)).__name__ == "array_api_compat.numpy"


def test_no_array_is_a_type_error():
    with pytest.raises(TypeError, match="at least one array"):
        backend.namespace(None, 2.0)


def test_mixing_frameworks_is_rejected():
    with pytest.raises(TypeError):
        backend.namespace(np.ones(2), array_api_strict.ones(2))


def test_registered_namespace_wins_and_is_named(clean_registry):
    sentinel = type("NS", (), {"__name__": "tagged_ns"})()
    backend.register_namespace("tagged", lambda a: isinstance(a, Tagged), sentinel)
    t = np.ones(3).view(Tagged)
    assert backend.namespace(t) is sentinel
    assert backend.namespace_name(sentinel) == "tagged"
    assert "tagged" in backend.registered_namespaces()
    with pytest.raises(TypeError, match="mix namespace 'tagged'"):
        backend.namespace(t, np.ones(3))
    # re-registering replaces the entry
    backend.register_namespace("tagged", lambda a: False, sentinel)
    assert backend.namespace(t).__name__ == "array_api_compat.numpy"
    assert backend.registered_namespaces().count("tagged") == 1


@pytest.mark.parametrize("bad", [("", lambda a: True), ("x", "not callable")])
def test_register_namespace_validates(bad, clean_registry):
    with pytest.raises(ValueError):
        backend.register_namespace(bad[0], bad[1], np)


def test_multi_ops_override_is_used_and_validated(clean_registry):
    calls = []

    def fake_multiply(xp, xs, factors):
        calls.append(len(xs))
        return [x * xp.astype(f, x.dtype) for x, f in zip(xs, factors)]

    backend.register_primitives("array_api_compat.numpy", multiply=fake_multiply)
    rule = gc.clip_by_global_norm(1.0)
    g = [np.full(4, 3.0, np.float32), np.ones(2, np.float32)]
    out, _, _ = rule.update(g, rule.init(g))
    assert calls == [2]
    np.testing.assert_allclose(np.sqrt(sum(np.sum(o.astype(np.float64) ** 2) for o in out)), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown primitives"):
        backend.register_primitives("array_api_compat.numpy", fast_everything=print)


def test_default_primitives_accumulate_in_float32_at_least():
    xp = backend.namespace(np.ones(1))
    xs = [np.full(10, 300.0, np.float16), np.ones(3, np.float64), np.zeros((0, 2), np.float32)]
    norms = _multi.array_norms(xp, xs, 2.0, xp.float32)
    assert [n.dtype for n in norms] == [np.float32] * 3
    assert float(norms[0]) == pytest.approx(300.0 * np.sqrt(10), rel=1e-6)  # fp16 sum would overflow
    assert float(norms[2]) == 0.0
    sums = _multi.array_sumsq(xp, xs, xp.float64)
    assert [s.dtype for s in sums] == [np.float64] * 3
    out = _multi.multiply(xp, xs[:2], [np.float32(0.5), np.float32(2.0)])
    assert out[0].dtype == np.float16 and out[1].dtype == np.float64


def test_kernels_load_on_first_use_and_only_then():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, gradclip_core as gc\n"
        "from gradclip_core.backend import _namespace\n"
        "print(sorted(_namespace._LOADED))\n"
        "r = gc.global_magnitude_prune(0.5); w = [np.ones((2, 2), np.float32)]; r.project(w, r.init(w))\n"
        "print(sorted(_namespace._LOADED), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "['array_api_compat.numpy'] False"
