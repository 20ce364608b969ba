"""Passes over memory of the compiled optax steps, against optax's own (issue 15).

Counted from the compiled HLO (tests/hlo_passes.py): a global-norm clip reads the
gradients once for the norm and once to scale them, and writes them once (3 passes), as
``optax.clip_by_global_norm`` does; AGC adds one read of the weights, as
``optax.adaptive_grad_clip``. An extra pass (a full-size ``where``, a copy, a convert, a
scale that does not fuse) fails here. The timings of the same steps are in
``benchmarks/bench_optax.py``.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import gradclip_core as gc
import gradclip_optax

from ..hlo_passes import full_size_elements

# two weight-sized matrices and their biases (the biases are 0.3% of the bytes)
SHAPES = ((256, 512), (512,), (512, 256), (256,))
N = sum(int(np.prod(s)) for s in SHAPES)


def _tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {f"p{i}": jax.numpy.asarray(rng.standard_normal(s, dtype=np.float32)) for i, s in enumerate(SHAPES)}


def _passes(compiled) -> float:
    """Weight-sized arrays the compiled computation reads and writes, in passes over all of them."""
    return full_size_elements(compiled.as_text(), 256 * 256) / N


def _update_passes(tx, params=None) -> float:
    grads = _tree(0)
    return _passes(jax.jit(tx.update).lower(grads, tx.init(grads), params).compile())


@pytest.fixture(scope="module")
def native_clip() -> float:
    return _update_passes(optax.clip_by_global_norm(1.0))


def test_native_global_clip_is_three_passes(native_clip):
    assert native_clip == pytest.approx(3.0, abs=0.02)  # read for the norm; read, write to scale


@pytest.mark.parametrize("rule", [
    gc.clip_by_global_norm(1.0),
    gc.monitor(gc.clip_by_global_norm(1.0)),
], ids=["canonical", "monitor"])
def test_global_clip_no_extra_pass(rule, native_clip):
    assert _update_passes(gradclip_optax.transform(rule)) <= native_clip + 0.01


def test_adaptive_clip_passes_as_optax():
    params = _tree(1)
    native = _update_passes(optax.adaptive_grad_clip(0.01), params)
    ours = _update_passes(gradclip_optax.transform(gc.adaptive_clip(0.01)), params)
    assert native == pytest.approx(4.0, abs=0.02)  # the gradients' and the weights' unit norms, then the scale
    assert ours <= native + 0.01


def test_max_norm_project_three_passes(native_clip):
    rule = gc.max_norm(2.0)
    params = list(_tree(1).values())
    compiled = jax.jit(lambda ps: rule.project(ps, rule.init(ps))[0]).lower(params).compile()
    assert _passes(compiled) <= native_clip + 0.01  # the weights' unit norms, then read and write them once
