"""gradclip_torch against torch's native clipping and pruning, on a GPT-2-small-sized parameter set.

Times, in one process, on the same 148 gradients / weights (124M parameters), each rule
through the adapter against its native counterpart, alternating calls (median of
``--repeats``; the ratio is the median per-pair ratio, ours / native):

- ``clip_by_global_norm`` (canonical and ``semantics="torch"``; ``apply_`` and the
  ``attach`` hook on a no-op optimizer) vs ``clip_grad_norm_(foreach=True)``
  [DESIGN.md target <= 1.0x];
- ``clip_by_value`` vs ``clip_grad_value_(foreach=True)`` (two foreach clamps) [<= 1.1x],
  and with ``info="full"`` (the clipped-fraction count);
- the global-norm clip and ZClip folded into ``AdamW(fused=True)`` (``attach``: the scale goes
  into the fused step's ``grad_scale``) vs ``clip_grad_norm_`` + the same fused step [<= 0.88x];
- ``magnitude_prune`` / ``ln_structured_prune`` / ``random_prune`` (``project_``, one-shot)
  vs ``prune.l1_unstructured`` / ``ln_structured`` / ``random_unstructured`` on every
  tensor (2-D tensors only for the structured one), weights restored between calls;
- rules with no torch counterpart next to ``clip_grad_norm_`` as a reference, with their
  memory-traffic targets: per-array norm, block RMS, update RMS, AutoClip, ZClip and
  ``record_norms`` <= 1.05x (one read, one in-place scale), AGC and the norm constraints
  <= 1.4x (they also read the weights); N:M without a target;
- issue 19's scores, allocations, block and padded N:M pruning, RigL and SET next to
  ``magnitude_prune(0.5)`` (``_prune_cases.py``; a score <= 2.0x: one extra pass), LAMP next to
  ``torch.sort`` of every pruned array's int32 bits (its limit: <= 3.0x).

Every clipping row also checks DESIGN.md's memory target: extra peak memory <= 1% of the
gradients.

Global magnitude pruning against ``prune.global_unstructured`` runs in fresh processes
(``bench_prune.py``; ``python benchmarks/run.py`` includes it). Run::

    .venv/bin/python benchmarks/bench_torch.py [--device cpu|cuda] [--repeats 5] [--shapes gpt2|tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable

import torch
import torch.nn.utils.prune as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradclip_core as gc  # noqa: E402
import gradclip_torch  # noqa: E402
from _measure import peak_extra, repeats_for, time_pair  # noqa: E402
from _prune_cases import REF, SORT_REF, prune_cases  # noqa: E402
from _shapes import SHAPE_SETS, shape_set  # noqa: E402
from _table import Row, describe, emit  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


MEMORY_TARGET = 0.01  # DESIGN.md: extra peak memory of a clipping rule, as a fraction of the gradients


CONTROLS = ("(A/A)", "(native)")  # rows without gradclip code: the run's noise, or a native cost (no target)


@dataclasses.dataclass
class Case:
    """One row to time: our call against the native one (or a reference)."""

    label: str
    path: str
    ours: Callable[[], object]
    native_name: str
    native: Callable[[], object]
    reset: Callable[[], None] | None = None
    target: str = ""
    has_native: bool = True
    mem: bool = False  # the 1% extra-memory target applies
    mem_call: Callable[[], object] | None = None  # what the memory column measures, when not ``ours``
    note: str = ""


class NoStep(torch.optim.Optimizer):
    """An optimizer whose step does nothing: ``step()`` then only runs the hooks."""

    def __init__(self, params: list) -> None:
        super().__init__(params, {})

    def step(self, closure: Callable | None = None) -> None:  # noqa: D102
        return None


def make_params(device: str, dtype: torch.dtype, seed: int = 0, shapes: str = "gpt2") -> list[torch.nn.Parameter]:
    """The parameters of a shape set (random weights) with random gradients.

    Example:
      >>> [tuple(p.grad.shape) for p in make_params("cpu", torch.float32, shapes="tiny")][:2]
      [(512, 64), (64, 64)]
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for _, shape in shape_set(shapes):
        p = torch.nn.Parameter(torch.randn(shape, device=device, dtype=dtype, generator=gen))
        p.grad = torch.randn(shape, device=device, dtype=dtype, generator=gen)
        params.append(p)
    return params


def suite(device: str = "cpu", dtype: str = "float32", repeats: int = 5, warmup: int = 1, shapes: str = "gpt2",
          only_rules: str | None = None) -> list[Row]:
    """Every torch row of the unified benchmark.

    Args:
      device: ``"cpu"`` or ``"cuda"``.
      dtype: gradient / weight dtype name.
      repeats: timed calls per side (median).
      warmup: untimed calls per side first.
      shapes: ``"gpt2"`` or ``"tiny"``.
      only_rules: keep the rows whose rule contains this text.

    Returns:
      The rows.
    """
    dt = DTYPES[dtype]
    params = make_params(device, dt, shapes=shapes)
    mem_kind = "torch_cuda" if device.startswith("cuda") else "rss"

    def sync(_: object) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    mods = []
    for p in params:
        m = torch.nn.Module()
        m.weight = p
        mods.append(m)
    original = [p.detach().clone() for p in params]
    # the gradient rows start every timed call from the same random gradients (an untimed copy), so each call
    # clips (global norm ~1e4 against max_norm 1.0; 62% of the elements outside the value clip's 0.5):
    # on the CPU an in-place scale skips arrays whose factor is exactly 1, and clipped-once gradients would
    # time that shortcut instead of the clip
    grads0 = [p.grad.detach().clone() for p in params]

    def fresh_grads() -> None:
        with torch.no_grad():
            torch._foreach_copy_([p.grad for p in params], grads0)

    def restore() -> None:
        with torch.no_grad():
            for m, w in zip(mods, original):
                if hasattr(m, "weight_orig"):
                    P.remove(m, "weight")
                m.weight.copy_(w)

    def restore_grads() -> None:
        # RigL / SET rows: an update masks the gradients in place (as the pruning rows' apply_ does), and a
        # training step's next gradients are dense again (autodiff): the original ones are restored between
        # calls (ranking masked ones made RigL's growth a selection among ~n/2 equal zero scores)
        restore()
        fresh_grads()

    def hook_path(rule: gc.Rule) -> Callable[[], None]:
        opt = NoStep(params)
        gradclip_torch.attach(opt, rule)
        return opt.step

    norm_native = ("clip_grad_norm_(foreach=True)", lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True))
    clamp_native = ("foreach clamp (clip_grad_value_)", lambda: torch.nn.utils.clip_grad_value_(params, 0.5, foreach=True))
    two_d = [m for m in mods if m.weight.ndim == 2]
    grad_bytes = sum(p.numel() * p.element_size() for p in params)
    cases: list[Case] = []
    for label, rule in (("clip_by_global_norm(1.0)", gc.clip_by_global_norm(1.0)),
                        ('clip_by_global_norm(1.0, semantics="torch")', gc.clip_by_global_norm(1.0, semantics="torch"))):
        cases.append(Case(label, "apply_", lambda rule=rule: gradclip_torch.apply_(params, rule), *norm_native,
                          fresh_grads, target="<= 1.0x", mem=True))
        cases.append(Case(label, "attach", hook_path(rule), *norm_native, fresh_grads, target="<= 1.0x", mem=True))
    # control: clip_grad_norm_ against itself (A/A): how far a ratio strays from 1.00x on this run, the
    # noise on the headline rows' 1.0x target
    cases.append(Case("(A/A) clip_grad_norm_(1.0, foreach=True)", "native",
                      lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True),
                      "clip_grad_norm_(foreach=True) (a second call site)", norm_native[1], fresh_grads,
                      note="control, no gradclip code: the run's noise on the torch rows (identical calls)"))
    value, counted = gc.clip_by_value(0.5), gc.clip_by_value(0.5, info="full")
    cases.append(Case("clip_by_value(0.5)", "apply_", lambda: gradclip_torch.apply_(params, value), *clamp_native,
                      fresh_grads, target="<= 1.1x", mem=True))
    cases.append(Case('clip_by_value(0.5, info="full")', "apply_", lambda: gradclip_torch.apply_(params, counted),
                      *clamp_native, fresh_grads, target="<= 1.5x",
                      note="opt-in clipped_fraction: on the CPU counted in the clamp's pass (one fused C loop; elsewhere one more read)"))
    # the clip folded into a fused optimizer step, against clip_grad_norm_ + the same step
    for label, rule in (("clip_by_global_norm(1.0)", gc.clip_by_global_norm(1.0)), ("zclip()", gc.zclip())):
        ours_opt = torch.optim.AdamW(params, lr=1e-9, fused=True)
        gradclip_torch.attach(ours_opt, rule)
        native_opt = torch.optim.AdamW(params, lr=1e-9, fused=True)

        def native_step(native_opt=native_opt) -> None:
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            native_opt.step()

        cases.append(Case(label, "attach + AdamW(fused=True)", ours_opt.step, "clip_grad_norm_ + AdamW(fused=True)",
                          native_step, fresh_grads, target="<= 0.88x",
                          note="scale folded into grad_scale; the fused kernel stores the unscaled gradients back: "
                               "9 of the reference's 10 passes by count (the grad_scale control row times that write-back)"))
    # control: what a grad_scale costs torch's fused step by itself. Given one, the kernel divides every gradient
    # and stores it back (8 passes over memory, not 7), so a clip folded into it costs 1 (the norm) + 8 passes
    # against the reference's 3 (norm, scale in place) + 7: ~0.9x for the rows above by count (writes may cost less)
    scaled_opt = torch.optim.AdamW(params, lr=1e-9, fused=True)
    scaled_opt.grad_scale = torch.ones((), dtype=torch.float32, device=params[0].device)
    plain_opt = torch.optim.AdamW(params, lr=1e-9, fused=True)
    cases.append(Case("(native) AdamW(fused=True) with grad_scale=1", "native", scaled_opt.step,
                      "AdamW(fused=True), no grad_scale", plain_opt.step, fresh_grads,
                      note="control, no gradclip code: the fused kernel's gradient write-back when given a grad_scale "
                           "(8 passes vs 7 by count), what keeps the fused rows above 0.8x"))
    mag, ln, rnd = gc.magnitude_prune(0.5), gc.ln_structured_prune(0.5, ord=2, axis="out_first"), gc.random_prune(0.5, seed=0)
    cases.append(Case("magnitude_prune(0.5)", "project_", lambda: gradclip_torch.project_(params, mag), "prune.l1_unstructured",
                      lambda: [P.l1_unstructured(m, "weight", 0.5) for m in mods], restore, target="<= 1.0x"))
    ln_params = [m.weight for m in two_d]
    cases.append(Case("ln_structured_prune(0.5, ord=2) [2-D]", "project_", lambda: gradclip_torch.project_(ln_params, ln),
                      "prune.ln_structured(n=2, dim=0)", lambda: [P.ln_structured(m, "weight", 0.5, n=2, dim=0) for m in two_d],
                      restore, target="<= 1.0x"))
    cases.append(Case("random_prune(0.5)", "project_", lambda: gradclip_torch.project_(params, rnd), "prune.random_unstructured",
                      lambda: [P.random_unstructured(m, "weight", 0.5) for m in mods], restore, target="<= 1.0x"))
    # rules without a torch counterpart, next to clip_grad_norm_ (their memory-traffic limit relative to it)
    no_native = {
        "clip_by_norm(1.0)": ("apply_", gc.clip_by_norm(1.0), "<= 1.05x"),
        "clip_by_block_rms(1.0)": ("apply_", gc.clip_by_block_rms(1.0), "<= 1.05x"),
        "clip_update_rms(1.0)": ("apply_", gc.clip_update_rms(1.0), "<= 1.05x"),
        "autoclip(10, 1000)": ("attach", gc.autoclip(10.0, 1000), "<= 1.05x"),
        "zclip()": ("attach", gc.zclip(), "<= 1.05x"),
        "adagc()": ("attach", gc.adagc(), "<= 1.1x"),
        "record_norms(100)": ("attach", gc.record_norms(100), "<= 1.05x"),
        "skip_on_spike()": ("attach", gc.skip_on_spike(), "<= 1.1x"),
        "monitor(clip_by_global_norm(1.0))": ("attach", gc.monitor(gc.clip_by_global_norm(1.0)), "<= 1.1x"),
        # float64 sums by design (opt-in): the norm pass runs at half the float32 vector width, in chunks
        'accumulate(clip_by_global_norm(1.0), "float64")': ("apply_", gc.accumulate(gc.clip_by_global_norm(1.0)), "<= 2.5x"),
        "adaptive_clip(0.01)": ("apply_", gc.adaptive_clip(0.01), "<= 1.4x"),
        "max_norm(2.0)": ("project_", gc.max_norm(2.0), "<= 1.4x"),
        "min_max_norm(0.5, 2.0)": ("project_", gc.min_max_norm(0.5, 2.0), "<= 1.4x"),
        "unit_norm()": ("project_", gc.unit_norm(), "<= 1.4x"),
    }
    for label, (path, rule, target) in no_native.items():
        if path == "apply_":
            fn = lambda rule=rule: gradclip_torch.apply_(params, rule)  # noqa: E731
        elif path == "attach":
            fn = hook_path(rule)
        else:
            fn = lambda rule=rule: gradclip_torch.project_(params, rule)  # noqa: E731
        reset = restore if path == "project_" else fresh_grads
        note = ("the same gradients every call: the rule's threshold is their norm, no clip (on the CPU nothing "
                "is written)" if label.startswith(("autoclip", "zclip", "skip_on_spike")) else "")
        cases.append(Case(label, path, fn, "(ref) " + norm_native[0], norm_native[1], reset, target=target,
                          has_native=False, mem=True, note=note))
    # N:M groups: a local selection (ranks within each group of 4), next to the exact per-array magnitude
    # selection of the same weights: <= 2.0x (the keys, one transposing copy, 6 comparisons per group)
    nm = gc.nm_prune(2, 4, axis=-1)
    cases.append(Case("nm_prune(2, 4, axis=-1)", "project_", lambda: gradclip_torch.project_(params, nm),
                      f"(ref) {REF} project_", lambda: gradclip_torch.project_(params, mag), restore, target="<= 2.0x",
                      has_native=False))
    # issue 19's pruning rules next to magnitude_prune: one mask recomputation (project_ with the state
    # after one apply_: movement / Taylor scores; the count stays 0), or one RigL / SET update step (attach)
    ranked = [p for p in params if p.ndim >= 2]  # what params="weights" prunes

    def sort_weights() -> list:
        with torch.no_grad():
            return [torch.sort(p.reshape(-1).view(torch.int32)) for p in ranked]

    for label, case in prune_cases(shapes).items():
        if label == REF:
            continue
        if case.dst:
            fn, path = hook_path(case.rule), "attach"
        else:
            state, _ = gradclip_torch.apply_(params, case.rule)
            fn, path = (lambda rule=case.rule, state=state: gradclip_torch.project_(params, rule, state)), "project_"
        ref_name, ref = f"(ref) {REF} project_", lambda: gradclip_torch.project_(params, mag)
        if case.ref == "sort":  # torch.sort of the int32 bits: the radix sort (a float sort is ~4x slower)
            ref_name, ref = f"(ref) {SORT_REF} (torch.sort, int32 bits)", sort_weights
        cases.append(Case(label, path, fn, ref_name, ref, restore_grads if case.dst else restore, target=case.target,
                          has_native=False, note=case.note))
    # update clipping (rule.on_update): a copy of the weights before the step, the correction after it
    # (gradclip_torch.attach); NoStep leaves the weights as they are (an unclipped step: nothing is written
    # back), the hooks do their whole work. Passes over memory, through the post-step seam (the rule reads
    # w_new and w_old, the update formed chunk by chunk in cache, never written): the snapshot (2), the
    # rule's reads (2: w_new, w_old; update_ratio 3: w_old's norm too), the write-back only where clipped
    # (none here), against clip_grad_norm_'s 3. The handle keeps its one weight-sized buffer (the
    # snapshot) from step to step, so the memory column is a new handle's first step.
    for label, rule, limit in (("clip_update_norm()", gc.clip_update_norm(), "1.5x"), ("clippy()", gc.clippy(), "1.6x"),
                               ("update_ratio()", gc.update_ratio(), "1.9x")):
        cases.append(Case(label, "attach (post-step)", hook_path(rule), "(ref) " + norm_native[0], norm_native[1],
                          target="<= 2.5x", has_native=False, mem_call=lambda rule=rule: hook_path(rule)(),
                          note=f"snapshot (1 weight copy, kept by the handle) + the rule reading w_new, w_old; "
                               f"no delta written: limit {limit}"))

    rows = []
    for c in cases:
        if only_rules and only_rules not in c.label:
            continue
        print(f"  torch: {c.label} ({c.path})...", file=sys.stderr, flush=True)
        t_o, t_n, r, _ = time_pair(c.ours, c.native, sync, repeats_for(repeats, c.target, c.label.startswith(CONTROLS)),
                                    warmup, c.reset)
        if c.reset:
            c.reset()
        m_n = peak_extra(c.native, sync, mem_kind)
        if c.reset:
            c.reset()
        m_o = peak_extra(c.mem_call or c.ours, sync, mem_kind)
        frac = None if not c.mem or m_o is None else m_o / grad_bytes
        rows.append(Row(c.label, "torch", c.path, c.native_name, t_o * 1e3, t_n * 1e3, m_o, m_n, c.target, c.note,
                        has_native=c.has_native, paired_ratio=r, mem_of_weights=frac,
                        mem_target=MEMORY_TARGET if c.mem else None))
    restore()
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: torch on the GPU")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="gradient dtype")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side first")
    parser.add_argument("--shapes", default="gpt2", choices=SHAPE_SETS, help="parameter set (tiny: smoke test)")
    parser.add_argument("--rules", default=None, help="only rows whose rule contains this text")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    from gradclip_core.backend import _native

    loops = "on" if _native.library() is not None else f"off ({_native.unavailable_reason()})"
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{describe(args.shapes)}, {args.dtype}, median of {args.repeats}, fused C loops {loops}")
    rows = suite(args.device, args.dtype, args.repeats, args.warmup, args.shapes, args.rules)
    emit(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
