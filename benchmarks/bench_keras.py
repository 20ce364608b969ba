"""gradclip_keras' optimizer wrapper against Keras' own clipping options, on GPT-2 small's parameters.

Times, in one run, on the same 148 gradients (124M parameters), one optimizer step of

- ``keras.optimizers.SGD(lr, global_clipnorm=1.0)`` (native), and
- ``gradclip_keras.Optimizer(SGD(lr), clip_by_global_norm(1.0, semantics="keras"))``,

and likewise ``clipnorm`` vs ``clip_by_norm(semantics="keras")`` and ``clipvalue`` vs
``clip_by_value``, and the rules Keras lacks (canonical global norm, block RMS, AutoClip,
ZClip, ``record_norms``, AGC, max-norm) next to ``global_clipnorm``, and issue 19's
pruning rules (``_prune_cases.py``: scores, allocations, block and padded N:M pruning,
RigL, SET) next to the wrapper with ``magnitude_prune(0.5)``, masks recomputed every step
(LAMP next to the backend's sort of every pruned array, its limit, as in the torch and optax suites),

each on its own copy of the variables, the way Keras' trainer runs it on the active
backend (``KERAS_BACKEND``): TensorFlow ``optimizer.apply`` inside a ``tf.function``,
JAX ``optimizer.stateless_apply`` under ``jax.jit``, torch eager ``optimizer.apply``.
The two sides alternate after a warm-up; prints the median time of each and the median
per-pair ratio (wrapper / native; DESIGN.md target: <= 1.1x for the clipping rules). One
backend per process (Keras reads ``KERAS_BACKEND`` at import). Run::

    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_keras.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradclip_core as gc  # noqa: E402
import gradclip_keras  # noqa: E402
from _measure import ROW_BUDGET_S, peak_extra, repeats_for, time_pair  # noqa: E402
from _prune_cases import REF, SORT_REF, prune_cases  # noqa: E402
from _shapes import SHAPE_SETS, shape_set  # noqa: E402
from _table import Row, describe, emit  # noqa: E402

LR = 1e-4


PATHS = {"tensorflow": "tf.function(apply)", "jax": "jit(stateless_apply)", "torch": "eager apply"}


def make_grads(seed: int = 0, shapes: str = "gpt2") -> list[Any]:
    """Random float32 gradients of a shape set's parameters, as backend tensors."""
    rng = np.random.default_rng(seed)
    return [keras.ops.convert_to_tensor(rng.standard_normal(s, dtype=np.float32)) for _, s in shape_set(shapes)]


def make_variables(shapes: str = "gpt2", seed: int | None = None) -> list[keras.Variable]:
    """Zero-initialised variables of a shape set (standard normal with a ``seed``: weights to prune)."""
    rng = None if seed is None else np.random.default_rng(seed)
    return [keras.Variable(keras.ops.zeros(s) if rng is None else rng.standard_normal(s, dtype=np.float32),
                           name=n.replace(".", "_")) for n, s in shape_set(shapes)]


def _sync(x: Any) -> None:
    """Wait for ``x`` (a backend tensor)."""
    keras.ops.convert_to_numpy(keras.ops.sum(x))


def step_fn(opt: keras.optimizers.Optimizer, variables: list, grads: list) -> Callable[[], Any]:
    """One optimizer step as the backend's trainer runs it; returns something to sync on."""
    opt.build(variables)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(gs):
            opt.apply(gs, variables)
            return variables[-1].value

        return lambda: step(grads)
    if backend == "jax":
        import jax

        apply = jax.jit(opt.stateless_apply, donate_argnums=(0, 2))
        state = {"t": [v.value for v in variables], "o": [v.value for v in opt.variables]}

        def run():
            state["t"], state["o"] = apply(state["o"], grads, state["t"])
            return state["t"][-1]

        run.values = lambda: state["t"]  # the weights now (the variables' buffers are donated to the step)
        return run

    def run():
        opt.apply(grads, variables)
        return variables[-1].value

    return run


def sort_fn(variables: list, step: Callable[[], Any]) -> tuple[str, Callable[[], Any]]:
    """The sort reference of a LAMP row: the backend's exact sort of the int32 bits of every pruned (>= 2-d)
    variable, through the step's path (a ``tf.function``, ``jax.jit``, eager torch); returns its name and it.

    It sorts the weights as ``step`` (:func:`step_fn` of ``variables``) leaves them, the values LAMP sorts.

    Sorting the bits sorts the non-negative floats; one int32 operand is each backend's fastest sort
    (TensorFlow's ``tf.sort`` is a ``top_k`` of every element, JAX's a one-operand XLA sort, torch's a
    radix sort).
    """
    backend = keras.backend.backend()
    ranked = [v for v in variables if len(v.shape) >= 2]
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda: [tf.sort(tf.bitcast(tf.reshape(v.value, [-1]), tf.int32)) for v in ranked])
        return "tf.function(tf.sort)", lambda: fn()[-1]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        fn = jax.jit(lambda vs: [jnp.sort(jax.lax.bitcast_convert_type(x.reshape(-1), jnp.int32)) for x in vs])
        return "jit(jnp.sort)", lambda: fn([x for x in step.values() if x.ndim >= 2])[-1]
    import torch

    return "torch.sort", lambda: [torch.sort(v.value.reshape(-1).view(torch.int32)).values for v in ranked][-1]


_REF = ("(ref) SGD(global_clipnorm=1.0)", {"global_clipnorm": 1.0})
PAIRS = (
    # (rule label, gradclip rule factory, native name, native SGD kwargs, target)
    ('clip_by_global_norm(1.0, semantics="keras")', lambda: gc.clip_by_global_norm(1.0, semantics="keras"),
     "SGD(global_clipnorm=1.0)", {"global_clipnorm": 1.0}, "<= 1.1x"),
    ('clip_by_norm(1.0, semantics="keras")', lambda: gc.clip_by_norm(1.0, semantics="keras"),
     "SGD(clipnorm=1.0)", {"clipnorm": 1.0}, "<= 1.1x"),
    ("clip_by_value(0.5)", lambda: gc.clip_by_value(0.5), "SGD(clipvalue=0.5)", {"clipvalue": 0.5}, "<= 1.1x"),
    # rules Keras lacks, next to its global_clipnorm (one read and one scale of the gradients)
    ("clip_by_global_norm(1.0)", lambda: gc.clip_by_global_norm(1.0), *_REF, "<= 1.1x"),
    ("clip_by_block_rms(1.0)", lambda: gc.clip_by_block_rms(1.0), *_REF, "<= 1.1x"),
    ("autoclip(10, 1000)", lambda: gc.autoclip(10.0, 1000), *_REF, "<= 1.1x"),
    ("zclip()", lambda: gc.zclip(), *_REF, "<= 1.1x"),
    ("adagc()", lambda: gc.adagc(), *_REF, "<= 1.1x"),
    ("record_norms(100)", lambda: gc.record_norms(100), *_REF, "<= 1.1x"),
    ("skip_on_spike()", lambda: gc.skip_on_spike(), *_REF, "<= 1.1x"),
    ("monitor(clip_by_global_norm(1.0))", lambda: gc.monitor(gc.clip_by_global_norm(1.0)), *_REF, "<= 1.1x"),
    # rules that also read the weights. Passes over memory next to the reference step (norm of
    # g; scale of g fused with SGD's read g, read w, write w: 4): AGC adds the weights' unit norms
    # (5, ~1.25x); max-norm projects after the step (norms of w, then read and write w: 6, ~1.5x).
    ("adaptive_clip(0.01)", lambda: gc.adaptive_clip(0.01), *_REF, "<= 1.4x"),
    ("max_norm(2.0)", lambda: gc.max_norm(2.0), *_REF, "<= 1.6x"),
    # update clipping (rule.on_update): the rule on w_new - w_old after the step. JAX (jit): the inner step
    # traced twice, once fused into the rule's reads of w and g (2 passes), once into the in-place write-back
    # (3): ~1.3x of the reference's 4 (clippy: its ratios fuse into the min by the JAX kernel of min_bound_ratio,
    # no temporary; 5.7 passes, as SGD's learning rate is broadcast to a weight-sized array once per shape, which
    # the fused mins of that shape's arrays read, as clip_update_norm's norms do: ~2.5x against its ~1.7x, a gap
    # that neither the division nor the min makes, measured). TF / torch (op by op): the snapshot 2,
    # w_new - w_old 3, the rule 1-2, the write-back 3-5 next to the step's 4: ~3x (Clippy on TF: its minima in
    # one small jit_compile loop per array reading w_new and w_old, no w_new - w_old formed but in the write-back)
    ("clip_update_norm()", lambda: gc.clip_update_norm(), *_REF, "<= 3.0x"),
    ("clippy()", lambda: gc.clippy(), *_REF, "<= 3.0x"),
    ("update_ratio()", lambda: gc.update_ratio(), *_REF, "<= 3.0x"),
)


def _controls(grads: list, shapes: str, repeats: int, warmup: int, only_rules: str | None) -> list[Row]:
    """Control rows, no gradclip code: ``SGD(global_clipnorm)`` against itself (A/A: the run's noise on the
    Keras rows), and on JAX native AGC (``optax.adaptive_grad_clip`` + ``optax.sgd``) against
    ``optax.clip_by_global_norm`` + ``optax.sgd`` on the same arrays: what AGC's unit norms cost over a
    global-norm clip on this backend, the floor of the ``adaptive_clip`` row."""
    backend = keras.backend.backend()
    jobs = []
    aa = "(A/A) SGD(global_clipnorm=1.0)"
    if not only_rules or only_rules in aa:
        jobs.append((aa, "native, " + PATHS[backend], "SGD(global_clipnorm=1.0) (a second step)",
                     lambda: step_fn(keras.optimizers.SGD(LR, global_clipnorm=1.0), make_variables(shapes), grads),
                     lambda: step_fn(keras.optimizers.SGD(LR, global_clipnorm=1.0), make_variables(shapes), grads),
                     "control, no gradclip code: the run's noise on the Keras rows (identical steps)"))
    agc = "(native) optax.adaptive_grad_clip(0.01) + sgd"
    if backend == "jax" and (not only_rules or only_rules in agc or only_rules in "adaptive_clip(0.01)"):
        import optax
        from bench_optax import jitted_step  # (optax's step: update + apply_updates, weights donated)

        def optax_step(tx: Any, variables: list, grads: list) -> Callable[[], Any]:
            run = jitted_step(tx, grads, [v.value for v in variables])
            return lambda: run()[-1]

        jobs.append((agc, "jit(update + apply_updates)", "(ref) optax.clip_by_global_norm(1.0) + sgd",
                     lambda: optax_step(optax.chain(optax.adaptive_grad_clip(0.01), optax.sgd(LR)),
                                        make_variables(shapes), grads),
                     lambda: optax_step(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(LR)),
                                        make_variables(shapes), grads),
                     "control, no gradclip code: native AGC's cost over a global-norm clip on these arrays, "
                     "the floor of the adaptive_clip row"))
    rows = []
    for label, path, native_name, make_ours, make_native, note in jobs:
        print(f"  keras/{backend}: {label}...", file=sys.stderr, flush=True)
        ours, native = make_ours(), make_native()
        t_o, t_n, r, _ = time_pair(ours, native, _sync, repeats_for(repeats, "", control=True), warmup)
        rows.append(Row(label, f"keras/{backend}", path, native_name, t_o * 1e3, t_n * 1e3,
                        peak_extra(ours, _sync, "rss"), peak_extra(native, _sync, "rss"), "", note, paired_ratio=r,
                        has_native=not native_name.startswith("(ref)")))
        del ours, native
    return rows


def suite(repeats: int = 10, warmup: int = 2, shapes: str = "gpt2", only_rules: str | None = None,
          part: str = "all") -> list[Row]:
    """Every Keras row (this process' backend) of the unified benchmark.

    Each pair times one SGD step with the native option against the wrapper around a plain
    SGD, each on its own copy of the variables (freed after the pair).

    Args:
      repeats: timed steps per side (median).
      warmup: untimed steps per side first (the first traces / compiles).
      shapes: ``"gpt2"`` or ``"tiny"``.
      only_rules: keep the rows whose rule contains this text.
      part: ``"clip"`` (the clipping and constraint pairs), ``"prune"`` (the pruning rows) or ``"all"``.
        ``benchmarks/run.py`` runs the two parts in separate processes: on TensorFlow every
        row's step keeps ~0.7 GB of native memory after its variables are freed (not Python
        objects: they are collected), and the 35 GPT-2 rows of one process outgrew 24 GiB.

    Returns:
      The rows.
    """
    grads = make_grads(shapes=shapes)
    backend = keras.backend.backend()
    rows = []
    for label, rule, native_name, kwargs, target in PAIRS if part in ("all", "clip") else ():
        if only_rules and only_rules not in label:
            continue
        print(f"  keras/{backend}: {label}...", file=sys.stderr, flush=True)
        native = step_fn(keras.optimizers.SGD(LR, **kwargs), make_variables(shapes), grads)
        ours = step_fn(gradclip_keras.Optimizer(keras.optimizers.SGD(LR), rule()), make_variables(shapes), grads)
        t_o, t_n, r, _ = time_pair(ours, native, _sync, repeats_for(repeats, target), warmup)
        rows.append(Row(label, f"keras/{backend}", "Optimizer, " + PATHS[backend], native_name, t_o * 1e3, t_n * 1e3,
                        peak_extra(ours, _sync, "rss"), peak_extra(native, _sync, "rss"), target, paired_ratio=r,
                        has_native=not native_name.startswith("(ref)")))
        del native, ours
    if part in ("all", "clip"):
        rows += _controls(grads, shapes, repeats, warmup, only_rules)
    # issue 19's pruning rules next to magnitude_prune, each recomputing its masks on every step (RigL / SET:
    # a connectivity update on every step), on random weights; one reference step for all rows
    cases = prune_cases(shapes, every_step=True)
    labels = [lb for lb in cases if lb != REF and not (only_rules and only_rules not in lb) and part in ("all", "prune")]
    # TensorFlow runs a selection as unfused graph ops (seconds per step on GPT-2 small): fewer pairs there
    few = backend == "tensorflow" and shapes == "gpt2"
    ref = ref_peak = None
    for label in labels:
        case = cases[label]
        print(f"  keras/{backend}: {label}...", file=sys.stderr, flush=True)
        if ref is None:
            ref = step_fn(gradclip_keras.Optimizer(keras.optimizers.SGD(LR), cases[REF].rule),
                          make_variables(shapes, 1), grads)
        variables = make_variables(shapes, 1)
        ours = step_fn(gradclip_keras.Optimizer(keras.optimizers.SGD(LR), case.rule), variables, grads)
        ref_name, this_ref = f"(ref) Optimizer(SGD, {REF})", ref
        if case.ref == "sort":  # LAMP: a sort of every pruned array is its limit
            sort_name, this_ref = sort_fn(variables, ours)
            ref_name = f"(ref) {SORT_REF} ({sort_name}, int32 bits)"
        n, w = (min(3, repeats), 1) if few else (repeats_for(repeats, case.target), warmup)
        t_o, t_n, r, pairs = time_pair(ours, this_ref, _sync, n, w, budget_s=ROW_BUDGET_S)
        this_peak = peak_extra(this_ref, _sync, "rss") if case.ref == "sort" else None
        ref_peak = peak_extra(ref, _sync, "rss") if ref_peak is None else ref_peak
        note = case.note or "masks recomputed every step"
        if pairs < n:
            note += ("; " if note else "") + f"{pairs} pairs (a {ROW_BUDGET_S:.0f}-s budget per row)"
        if few:
            note += f"; TF: {n} pairs, {w} warm-up (limited: seconds per step)"
        rows.append(Row(label, f"keras/{backend}", "Optimizer, " + PATHS[backend], ref_name,
                        t_o * 1e3, t_n * 1e3, peak_extra(ours, _sync, "rss"),
                        ref_peak if this_peak is None else this_peak, case.target, note, paired_ratio=r,
                        has_native=False))
        del ours, this_ref, variables
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the benchmark for this process' Keras backend; returns the rows."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per side (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    ap.add_argument("--shapes", default="gpt2", choices=SHAPE_SETS, help="parameter set (tiny: smoke test)")
    ap.add_argument("--rules", default=None, help="only rows whose rule contains this text")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--part", default="all", choices=["all", "clip", "prune"], help="clipping or pruning rows only")
    args = ap.parse_args(argv)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {describe(args.shapes)}, "
          f"float32, median of {args.repeats}")
    rows = suite(args.repeats, args.warmup, args.shapes, args.rules, args.part)
    emit(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
