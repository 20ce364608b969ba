"""Clippy through ``gradclip_keras.Optimizer`` on JAX: passes over memory of the step (issue 15).

Counted from the compiled HLO (tests/hlo_passes.py), as tests/keras/test_keras_passes.py
does for the gradient rules. ``SGD(global_clipnorm=1.0)``'s step is 4 passes. Clippy's
step: the inner step fused into the rule's reads of the weights and gradients (2), and
again into the in-place write-back (3): 5. Its ratios reach the min without a weight-sized
temporary through the JAX kernel of ``min_bound_ratio`` (the default's select wrote and
read one: 7). JAX backend only; the timings are in ``benchmarks/bench_keras.py``.
"""

import keras
import numpy as np
import pytest

import gradclip_core as gc
import gradclip_keras

from ..hlo_passes import full_size_elements

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="counts passes in the JAX step's HLO")

SHAPES = ((256, 512), (512,), (512, 256), (256,))  # two Dense kernels (in, out) and their biases
N = sum(int(np.prod(s)) for s in SHAPES)


def test_clippy_step_five_passes():
    import jax

    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.standard_normal(s, dtype=np.float32)) for s in SHAPES]
    grads = [keras.ops.convert_to_tensor(rng.standard_normal(s, dtype=np.float32)) for s in SHAPES]
    optimizer = gradclip_keras.Optimizer(keras.optimizers.SGD(1e-3), gc.clippy())
    optimizer.build(variables)
    step = jax.jit(optimizer.stateless_apply, donate_argnums=(0, 2))
    compiled = step.lower([v.value for v in optimizer.variables], grads, [v.value for v in variables]).compile()
    assert full_size_elements(compiled.as_text(), 256 * 256) / N <= 5.0 + 0.01
