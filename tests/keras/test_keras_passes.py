"""Passes over memory of the Keras/JAX step (``jax.jit(stateless_apply)``), against Keras' own (issue 15).

Counted from the compiled HLO (tests/hlo_passes.py). ``SGD(global_clipnorm=1.0)``'s step
reads the gradients for the norm, then reads them and the weights and writes the weights
once (4 passes). Through ``gradclip_keras.Optimizer``, AGC adds one read of the weights
for their unit norms (5: the factors fuse into SGD's update, as ``optax.adaptive_grad_clip``'s
do into ``optax.sgd``'s); max-norm reads the new weights for their norms, then reads and
writes them (6); ``skip_on_spike`` reads the gradients for the norm and selects the old values
in SGD's write on a skipped step (4). (The global-norm clips: tests/optax/test_passes.py, the same core.)
An extra pass in the wrapper (a copy of the variables, a full-size ``where``, a scale that
does not fuse) fails here. JAX backend only; the timings are in ``benchmarks/bench_keras.py``.
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


def _passes(optimizer) -> float:
    import jax

    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.standard_normal(s, dtype=np.float32)) for s in SHAPES]
    grads = [keras.ops.convert_to_tensor(rng.standard_normal(s, dtype=np.float32)) for s in SHAPES]
    optimizer.build(variables)
    step = jax.jit(optimizer.stateless_apply, donate_argnums=(0, 2))
    compiled = step.lower([v.value for v in optimizer.variables], grads, [v.value for v in variables]).compile()
    return full_size_elements(compiled.as_text(), 256 * 256) / N


@pytest.fixture(scope="module")
def native() -> float:
    return _passes(keras.optimizers.SGD(1e-3, global_clipnorm=1.0))


@pytest.mark.parametrize("rule, passes", [
    (lambda: gc.adaptive_clip(0.01), 5),
    (lambda: gc.max_norm(2.0), 6),
    (lambda: gc.skip_on_spike(), 4),  # the norm's read is global_clipnorm's; the skip's select fuses into SGD's write
], ids=["adaptive_clip", "max_norm", "skip_on_spike"])
def test_wrapper_passes(rule, passes, native):
    assert native == pytest.approx(4.0, abs=0.02)
    ours = _passes(gradclip_keras.Optimizer(keras.optimizers.SGD(1e-3), rule()))
    assert ours <= native * passes / 4 + 0.01
