"""Global magnitude pruning at 50% on the GPT-2-small parameter set: gradclip vs torch.nn.utils.prune.

Each measurement runs in a fresh subprocess (clean peak memory): the parameters are
created, the baseline RSS is read, then one pruning call is timed and the peak RSS
(``ru_maxrss``) minus the baseline is the extra peak memory. Printed: time ratio
(native / gradclip, target >= 20x) and gradclip's extra peak memory as a fraction of
the weights (target <= 1/4, the bool masks set aside: the new masks, and the rule
state's initial all-True masks that ``rule.init`` made; each set is 1/4 of float32
weights).

    .venv/bin/python benchmarks/bench_prune.py            # one native repetition (~30 s)
    .venv/bin/python benchmarks/bench_prune.py --reps 3   # gradclip repetitions (best of)
    .venv/bin/python benchmarks/bench_prune.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {here!r})
import torch
from _shapes import shape_set
torch.manual_seed(0)
torch.set_num_threads({threads})
mods = torch.nn.ModuleList()
for name, shape in shape_set({shapes!r}):
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(torch.randn(shape))
    mods.append(m)
weights = sum(p.numel() * p.element_size() for p in mods.parameters())
mask_bytes = sum(p.numel() for p in mods.parameters())  # bool masks
import gradclip_core as gc, gradclip_torch
rule = gc.global_magnitude_prune(0.5, params="all")  # every array, as global_unstructured here
params = list(mods.parameters())
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
if {kind!r} == "native":
    import torch.nn.utils.prune as P
    run = lambda: P.global_unstructured([(m, "weight") for m in mods], pruning_method=P.L1Unstructured, amount=0.5)
    reps = 1
elif {kind!r} == "core":
    run = lambda: gradclip_torch.project_(params, rule)
    reps = {reps}
else:  # module helper: buffers + one-shot project
    def run():
        if hasattr(mods, "_gradclip_prune"):
            gradclip_torch.strip(mods)
        gradclip_torch.prune(mods, rule, [f"{{i}}.weight" for i in range(len(mods))])
    reps = {reps}
base = rss()
peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
times = []
for _ in range(reps):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
zeros = sum(int((m.weight == 0).sum()) for m in mods)
print(json.dumps(dict(time=min(times), extra=max(0, peak - max(base, peak0)), weights=weights, masks=mask_bytes, zeros=zeros)))
"""


SCORES_CHILD = r"""
import json, sys, time
sys.path.insert(0, {here!r})
import torch
from _shapes import shape_set
torch.manual_seed(0)
torch.set_num_threads({threads})
params = [torch.nn.Parameter(torch.randn(shape)) for _, shape in shape_set({shapes!r})]
for p in params:
    p.grad = torch.randn_like(p)
import gradclip_core as gc, gradclip_torch
weights = [p for p in params if p.ndim >= 2]
norms = [torch.rand(p.shape[1]) + 0.5 for p in weights]
rules = {rules}
out = {{}}
for label, make in rules.items():
    rule = eval(make)
    state, _ = gradclip_torch.apply_(params, rule)  # (gradient scores accumulate here; count 0 kept below)
    gradclip_torch.project_(params, rule, state)  # warm-up
    times = []
    for _ in range({reps}):
        t = time.perf_counter(); gradclip_torch.project_(params, rule, state); times.append(time.perf_counter() - t)
    out[label] = min(times)
print(json.dumps(out))
"""

# Issue 19: every score, allocation and group against per-array magnitude pruning on the same weights
# (one call of project_ that recomputes the masks). A score may cost one extra pass over the weights.
SCORE_RULES = {
    "magnitude_prune(0.5)": "gc.magnitude_prune(0.5)",
    "wanda_prune(0.5)": "gc.wanda_prune(0.5, act_norms=norms, axis=1)",
    "wanda_prune(0.5, per_output)": "gc.wanda_prune(0.5, act_norms=norms, axis=1, allocation=gc.per_output())",
    "taylor_prune(0.5)": "gc.taylor_prune(0.5)",
    "movement_prune(0.5)": "gc.movement_prune(0.5)",
    "score_prune(0.5, score=random)": "gc.score_prune(0.5, score='random')",
    "score_prune(0.5, allocation=global)": "gc.score_prune(0.5, allocation='global')",
    "score_prune(0.5, allocation=erk)": "gc.score_prune(0.5, allocation='erk')",
    "score_prune(0.5, allocation=lamp)": "gc.score_prune(0.5, allocation='lamp')",
    "score_prune(0.5, allocation=owl)": "gc.score_prune(0.5, score=gc.wanda_score(norms, axis=1), allocation='owl')",
    "score_prune(0.5, global, min/max)": "gc.score_prune(0.5, allocation='global', min_sparsity=0.2, max_sparsity=0.8)",
    "score_prune(0.5, group=blocks(4, 4))": "gc.score_prune(0.5, group=gc.blocks(4, 4))",
    "score_prune(0.5, group=units(heads))": "gc.score_prune(0.5, group=gc.units('out_first', size=64))",
    "score_prune(nm(2, 4), wanda)": "gc.score_prune(0.5, score=gc.wanda_score(norms, axis=1), group=gc.nm(2, 4, axis=1))",
}
SCORE_TARGET = {"wanda_prune(0.5)": 2.0, "taylor_prune(0.5)": 2.0, "movement_prune(0.5)": 2.0,
                "score_prune(0.5, score=random)": 2.0}  # one extra pass over the weights


def measure_scores(reps: int, threads: int, shapes: str = "gpt2", only: str | None = None) -> dict:
    """Seconds of one mask recomputation (``project_``) per rule of ``SCORE_RULES``, in one fresh process."""
    rules = {k: v for k, v in SCORE_RULES.items() if only is None or only in k or k == "magnitude_prune(0.5)"}
    code = SCORES_CHILD.format(here=str(HERE), reps=reps, threads=threads, shapes=shapes, rules=repr(rules))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(kind: str, reps: int, threads: int, shapes: str = "gpt2") -> dict:
    """One pruning call of ``kind`` (native, core, module) in a fresh process: time and extra peak RSS."""
    code = CHILD.format(here=str(HERE), kind=kind, reps=reps, threads=threads, shapes=shapes)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


MEMORY_TARGET = 0.25  # extra peak memory, masks aside, as a fraction of the weights


def masks_aside(r: dict) -> float:
    """Extra peak memory over the weights with both bool mask sets aside (the new masks and
    the rule state's initial all-True ones)."""
    return (r["extra"] - 2 * r["masks"]) / r["weights"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=2, help="gradclip repetitions (best of); native runs once")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both sides (on a shared 2-core machine, 2 threads make every "
                         "small op wait at an OpenMP barrier whenever another process holds a core)")
    ap.add_argument("--scores", action="store_true", help="issue 19: scores/allocations/groups vs magnitude_prune")
    ap.add_argument("--shapes", default="gpt2", help="gpt2 or tiny")
    ap.add_argument("--rules", default=None, help="with --scores: only rules containing this text")
    args = ap.parse_args()
    if args.scores:
        t = measure_scores(args.reps, args.threads, args.shapes, args.rules)
        base = t["magnitude_prune(0.5)"]
        print(f"{args.shapes}: one mask recomputation (project_), torch, {args.threads} thread(s), best of {args.reps}")
        for k, v in t.items():
            target = SCORE_TARGET.get(k)
            verdict = "" if target is None else f" [target <= {target}x: {'holds' if v / base <= target else 'MISSED'}]"
            print(f"{k:40} {v * 1e3:10.1f} ms {v / base:7.2f}x magnitude{verdict}")
        return
    res = {k: measure(k, 1 if k == "native" else args.reps, args.threads) for k in ("core", "module", "native")}
    n = res["native"]
    print(f"GPT-2 small: {n['weights'] / 2**20:.0f} MiB of float32 weights, global magnitude pruning at 50%")
    print(f"(torch threads: {args.threads}; gradclip best of {args.reps}, native once)")
    print(f"{'':36} {'time (s)':>9} {'extra peak':>11} {'/ weights':>10} {'pruned':>11}")
    for k, label in (("native", "torch.nn.utils.prune.global_unstr."), ("core", "gradclip_torch.project_"), ("module", "gradclip_torch.prune (buffers)")):
        r = res[k]
        print(f"{label:36} {r['time']:9.2f} {r['extra'] / 2**20:9.0f}Mi {r['extra'] / r['weights']:10.3f} {r['zeros']:11d}")
    for k in ("core", "module"):
        r = res[k]
        print(f"{k}: speed-up vs native {n['time'] / r['time']:.1f}x [target >= 20x]; extra peak memory "
              f"{masks_aside(r):.3f} of the weights with both mask sets aside [target <= {MEMORY_TARGET}], "
              f"{(r['extra'] - r['masks']) / r['weights']:.3f} with the new masks aside")


if __name__ == "__main__":
    main()
