"""gradclip_optax against optax's native transforms, on a GPT-2-small-sized parameter set.

Times, in one process, under ``jax.jit``, on the same 148 gradients (124M parameters),
each rule's ``gradclip_optax.transform(rule).update`` against the native transform's
``update`` (alternating calls after a compiling warm-up, ``block_until_ready``; median of
``--repeats``; ratio = median per-pair ratio, ours / native):

- ``clip_by_global_norm`` (canonical and ``semantics="optax"``) vs ``optax.clip_by_global_norm``
  [DESIGN.md target <= 1.05x]; ``clip_by_value`` vs ``optax.clip``; ``clip_by_block_rms``
  vs ``optax.clip_by_block_rms``; ``adaptive_clip`` vs ``optax.adaptive_grad_clip``;
- pruning (``jit(rule.project)``, one-shot: the masks are recomputed every call) and the
  rules with no optax counterpart next to ``optax.clip_by_global_norm`` as a reference;
- issue 19's scores, allocations, block and padded N:M pruning, RigL and SET next to
  ``magnitude_prune(0.5)`` (``_prune_cases.py``; a score <= 2.0x: one extra pass), LAMP next to
  ``jnp.sort`` of every pruned array's int32 bits (its limit: <= 3.0x);
  magnitude (per array and global) and 2:4 pruning against jaxpruner's mask calculators,
  written out (``jaxpruner_prune``: its argsorts; jaxpruner itself is not installed here);
- a control pair of native steps, ``optax.adaptive_grad_clip`` + ``optax.sgd`` next to
  ``optax.clip_by_global_norm`` + ``optax.sgd`` (``jit``, weights donated): what AGC's
  unit norms cost on this machine, the floor of the Keras rows' AGC ratio (their
  reference is ``SGD(global_clipnorm)``'s step); and ``optax.clip_by_global_norm`` against
  a second ``jit`` of itself (A/A): its distance from 1.00x is the run's noise on these rows.

Run::

    .venv/bin/python benchmarks/bench_optax.py [--repeats 10] [--dtype float32|bfloat16] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _measure import ROW_BUDGET_S, peak_extra, repeats_for, time_pair  # noqa: E402
from _prune_cases import REF, SORT_REF, prune_cases  # noqa: E402
from _shapes import SHAPE_SETS, shape_set  # noqa: E402
from _table import Row, describe, emit  # noqa: E402


def _jax():
    import jax  # imported late: --device selects the platform first

    return jax


def make_grads(dtype: Any, seed: int = 0, shapes: str = "gpt2") -> dict:
    """Random gradients of a shape set, as a name -> array dict (a pytree)."""
    jax = _jax()
    key = jax.random.PRNGKey(seed)
    return {name: jax.random.normal(jax.random.fold_in(key, i), shape, dtype) for i, (name, shape) in enumerate(shape_set(shapes))}


def jitted_update(tx: Any, grads: dict, params: dict | None = None) -> Callable[[], Any]:
    """A no-argument call of ``jax.jit(tx.update)`` on ``grads`` (the step a training loop runs)."""
    jax = _jax()
    update, state = jax.jit(tx.update), tx.init(grads)
    return lambda: update(grads, state, params)


def jitted_step(tx: Any, grads: dict, params: dict) -> Callable[[], Any]:
    """A no-argument optimizer step, ``tx.update`` then ``optax.apply_updates`` under one ``jax.jit``.

    The weights (a copy of ``params``) and the optimizer state are donated, as a training
    loop runs it, so the new weights are written in place.
    """
    jax = _jax()
    import optax

    state = {"p": jax.tree.map(lambda x: x.copy(), params)}
    state["s"] = tx.init(state["p"])

    def f(p: Any, s: Any, g: Any) -> tuple:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(f, donate_argnums=(0, 1))

    def run() -> Any:
        state["p"], state["s"] = step(state["p"], state["s"], grads)
        return state["p"]

    return run


def suite(dtype: str = "float32", repeats: int = 10, warmup: int = 2, shapes: str = "gpt2", device: str = "cpu",
          only_rules: str | None = None) -> list[Row]:
    """Every optax row of the unified benchmark (see the module docstring).

    Args:
      dtype: gradient dtype name.
      repeats: timed calls per side (median).
      warmup: untimed calls per side first (the first compiles).
      shapes: ``"gpt2"`` or ``"tiny"``.
      device: ``"cpu"`` or ``"cuda"`` (the platform JAX was started with).
      only_rules: keep the rows whose rule contains this text.

    Returns:
      The rows.
    """
    jax = _jax()
    import jax.numpy as jnp
    import optax

    import gradclip_core as gc
    import gradclip_optax

    grads = make_grads(jnp.dtype(dtype), shapes=shapes)
    params = make_grads(jnp.dtype(dtype), seed=1, shapes=shapes)
    mem_kind = "jax" if device == "cuda" else "rss"
    sync = jax.block_until_ready
    ref = ("(ref) optax.clip_by_global_norm", jitted_update(optax.clip_by_global_norm(1.0), grads))
    T = gradclip_optax.transform
    cases = [
        ("clip_by_global_norm(1.0)", T(gc.clip_by_global_norm(1.0)), "optax.clip_by_global_norm", optax.clip_by_global_norm(1.0), "<= 1.05x"),
        ('clip_by_global_norm(1.0, semantics="optax")', T(gc.clip_by_global_norm(1.0, semantics="optax")),
         "optax.clip_by_global_norm", optax.clip_by_global_norm(1.0), "<= 1.05x"),
        ("clip_by_value(0.5)", T(gc.clip_by_value(0.5)), "optax.clip", optax.clip(0.5), "<= 1.1x"),
        ("clip_by_block_rms(1.0)", T(gc.clip_by_block_rms(1.0)), "optax.clip_by_block_rms", optax.clip_by_block_rms(1.0), "<= 1.1x"),
        ("adaptive_clip(0.01)", T(gc.adaptive_clip(0.01)), "optax.adaptive_grad_clip", optax.adaptive_grad_clip(0.01), "<= 1.1x"),
    ]
    no_native = {
        "autoclip(10, 1000)": gc.autoclip(10.0, 1000),
        "zclip()": gc.zclip(),
        "adagc()": gc.adagc(),
        "clip_update_rms(1.0)": gc.clip_update_rms(1.0),
        "clip_by_norm(1.0)": gc.clip_by_norm(1.0),
        "record_norms(100)": gc.record_norms(100),
        "skip_on_spike()": gc.skip_on_spike(),
        "monitor(clip_by_global_norm(1.0))": gc.monitor(gc.clip_by_global_norm(1.0)),
    }
    prune_rules = {
        "global_magnitude_prune(0.5)": gc.global_magnitude_prune(0.5),
        "magnitude_prune(0.5)": gc.magnitude_prune(0.5),
        "nm_prune(2, 4, axis=-1)": gc.nm_prune(2, 4, axis=-1),
        "max_norm(2.0)": gc.max_norm(2.0),
    }
    jobs: list[tuple[str, str, Callable, str, Callable, str, bool, str]] = []
    for label, ours, nname, native, target in cases:
        p = params if "adaptive" in label else None
        jobs.append((label, "transform, jit", jitted_update(ours, grads, p), nname, jitted_update(native, grads, p), target, True, ""))
    # control: the same native update compiled twice (A/A): how far a ratio strays from 1.00x on this run
    jobs.append(("(A/A) optax.clip_by_global_norm(1.0)", "jit", jitted_update(optax.clip_by_global_norm(1.0), grads),
                 "optax.clip_by_global_norm (a second jit)", ref[1], "", True,
                 "control, no gradclip code: the run's noise on the optax rows (identical programs)"))
    for label, rule in no_native.items():
        jobs.append((label, "transform, jit", jitted_update(T(rule), grads), *ref, "<= 1.1x", False, ""))
    flat = list(params.values())
    jaxpruner = {"global_magnitude_prune(0.5)": "global", "magnitude_prune(0.5)": "array", "nm_prune(2, 4, axis=-1)": "2:4"}
    for label, rule in prune_rules.items():
        proj = jax.jit(lambda ps, rule=rule: rule.project(ps, rule.init(ps))[0])
        if label in jaxpruner:  # jaxpruner's mask calculators, written out (argsorts): one-shot, masks recomputed
            how = jaxpruner[label]
            theirs = jax.jit(lambda ps, how=how: jaxpruner_prune(ps, 0.5, how))
            jobs.append((label, "jit(project)", lambda proj=proj: proj(flat), f"(ref) jaxpruner-style {how} masks",
                         lambda theirs=theirs: theirs(flat), "<= 1.0x", False, "one-shot: masks recomputed"))
            continue
        jobs.append((label, "jit(project)", lambda proj=proj: proj(flat), *ref, "<= 1.1x", False, ""))
    # issue 19's pruning rules next to magnitude_prune: one mask recomputation (jit(project) from the state after
    # one update: movement / Taylor scores), or one RigL / SET connectivity update (jit(update + project), step 1)
    gflat = list(grads.values())
    cases = prune_cases(shapes)
    # jnp.sort of the int32 bits of every pruned array: one operand, XLA's fast sort (a float32 sort or a
    # sort with a second operand runs the comparator sort, several times slower on the CPU)
    sort_all = jax.jit(lambda ps: [jnp.sort(jax.lax.bitcast_convert_type(p.reshape(-1), jnp.int32))
                                   for p in ps if p.ndim >= 2])
    sort_ref = (f"(ref) {SORT_REF} (jit(jnp.sort), int32 bits)", lambda: sort_all(flat))
    for label, case in cases.items():
        rule, state = case.rule, case.rule.init(flat)
        if case.dst:
            state = state._replace(count=jnp.ones((), jnp.int32))
            step = jax.jit(lambda gs, ps, st, rule=rule: rule.project(ps, rule.update(gs, st, ps)[1])[0])
            fn, path = (lambda step=step, state=state: step(gflat, flat, state)), "jit(update + project)"
        else:
            state = jax.jit(rule.update)(gflat, state, flat)[1]
            proj = jax.jit(lambda ps, st, rule=rule: rule.project(ps, st)[0])
            fn, path = (lambda proj=proj, state=state: proj(flat, state)), "jit(project)"
        if label == REF:
            ref_prune = (f"(ref) {REF} jit(project)", fn)
        elif case.ref == "sort":
            jobs.append((label, path, fn, *sort_ref, case.target, False, case.note))
        else:
            jobs.append((label, path, fn, *ref_prune, case.target, False, case.note))
    # update clipping (rule.on_update), as it runs after the optimizer (the update read once; Clippy also the weights)
    jobs.append(("clip_update_norm()", "transform, jit", jitted_update(T(gc.clip_update_norm()), grads), *ref, "<= 1.1x",
                 False, "on the update"))
    jobs.append(("clippy()", "transform, jit", jitted_update(T(gc.clippy()), grads, params), *ref, "<= 1.4x", False,
                 "on the update; reads the weights too"))
    jobs.append(("update_ratio()", "transform, jit", jitted_update(T(gc.update_ratio()), grads, params), *ref, "<= 1.4x",
                 False, "on the update; reads the weights too"))
    # control: optax's own AGC step next to its own global-norm clip step (both with SGD; no gradclip code)
    ref_step = ("(ref) optax.clip_by_global_norm(1.0) + sgd", jitted_step(optax.chain(optax.clip_by_global_norm(1.0),
                                                                                      optax.sgd(1e-4)), grads, params))
    jobs.append(("(native) optax.adaptive_grad_clip(0.01) + sgd", "jit(update + apply_updates)",
                 jitted_step(optax.chain(optax.adaptive_grad_clip(0.01), optax.sgd(1e-4)), grads, params), *ref_step, "",
                 False, "control, no gradclip code: native AGC's cost over a global-norm clip, the floor of the "
                        "Keras adaptive_clip rows' ratio"))

    rows = []
    for label, path, ours, nname, native, target, has_native, note in jobs:
        if only_rules and only_rules not in label:
            continue
        print(f"  optax: {label} ({path})...", file=sys.stderr, flush=True)
        n, w = repeats_for(repeats, target, control=label.startswith(("(A/A)", "(native)"))), warmup
        if shapes == "gpt2" and "lamp" in label:  # XLA's CPU sort of every array: about a minute per call here
            n, w = min(3, n), 1
            note += f"; {n} pairs, {w} warm-up (limited: XLA's CPU sort is slow)"
        if shapes == "gpt2" and nname.startswith("(ref) jaxpruner-style") and "2:4" not in nname:  # (XLA's CPU sort)
            n, w = min(3, n), 1
            note += f"; {n} pairs, {w} warm-up"
        t_o, t_n, r, pairs = time_pair(ours, native, sync, n, w, budget_s=ROW_BUDGET_S)
        if pairs < n:
            note += ("; " if note else "") + f"{pairs} pairs (a {ROW_BUDGET_S:.0f}-s budget per row)"
        rows.append(Row(label, "optax", path, nname, t_o * 1e3, t_n * 1e3, peak_extra(ours, sync, mem_kind),
                        peak_extra(native, sync, mem_kind), target, note, has_native, paired_ratio=r))
    return rows


def jaxpruner_prune(params: list, amount: float, how: str) -> list:
    """Pruning as jaxpruner computes its masks (``mask_calculator.py``; jaxpruner is not installed here).

    ``how``: ``"array"`` / ``"global"``: ``_topk_mask_calculator_internal`` (an ``argsort`` of
    the negated flat scores, the kept count's threshold, ties by flat index) per array, or
    on all arrays' scores concatenated (jaxpruner's global pruners); ``"2:4"``:
    ``topk_n_by_m_mask_calculator`` (``argsort().argsort()`` ranks in groups of 4 along the
    last axis). The benchmark's reference for our magnitude and N:M pruning under ``jax.jit``.

    Example:
      >>> import jax.numpy as jnp
      >>> [m.tolist() for m in jaxpruner_prune([jnp.array([3.0, -1.0, 2.0, 0.5])], 0.5, "array")]
      [[3.0, 0.0, 2.0, 0.0]]
    """
    jax = _jax()
    jnp = jax.numpy

    def keep(scores):
        flat = scores.reshape(-1)
        num_ones = max(1, round(flat.size * (1 - amount)))
        top = jnp.argsort(-flat)[num_ones - 1]
        threshold = flat[top]
        return ((flat >= threshold) & ((jnp.arange(flat.size) <= top) | (flat != threshold))).reshape(scores.shape)

    def n_by_m(scores, n=2, m=4):
        ranks = scores.reshape(-1, m).argsort().argsort()
        return (ranks >= m - n).reshape(scores.shape)

    scores = [jnp.abs(p) for p in params]
    if how == "global":
        mask = keep(jnp.concatenate([s.ravel() for s in scores]))
        masks, start = [], 0
        for p in params:
            masks.append(mask[start: start + p.size].reshape(p.shape))
            start += p.size
    elif how == "2:4":
        masks = [n_by_m(s) if s.ndim >= 2 and s.shape[-1] % 4 == 0 else jnp.ones(s.shape, bool) for s in scores]
    else:
        masks = [keep(s) for s in scores]
    return [jnp.where(m, p, 0) for m, p in zip(masks, params)]


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats per side (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per side first (the first compiles)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="gradient dtype")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="JAX platform")
    ap.add_argument("--shapes", default="gpt2", choices=SHAPE_SETS, help="parameter set (tiny: smoke test)")
    ap.add_argument("--rules", default=None, help="only rows whose rule contains this text")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", args.device)
    jax = _jax()
    try:
        dev = jax.devices(args.device if args.device == "cpu" else "gpu")[0]
    except RuntimeError as e:
        ap.error(f"--device {args.device}: JAX has no such device ({e})")
    import optax

    print(f"jax {jax.__version__}, optax {optax.__version__}, device {dev.device_kind}, "
          f"{describe(args.shapes)}, {args.dtype}, median of {args.repeats}")
    rows = suite(args.dtype, args.repeats, args.warmup, args.shapes, args.device, args.rules)
    emit(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
