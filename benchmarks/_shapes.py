"""Parameter shapes shared by the benchmarks: a GPT-2-small-sized model (148 tensors, 124M params)."""

from __future__ import annotations

__all__ = ["gpt2_small_shapes", "shape_set", "SHAPE_SETS"]


def gpt2_small_shapes(n_layer: int = 12, d: int = 768, vocab: int = 50257, ctx: int = 1024) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every GPT-2 small parameter, in the HF ``GPT2LMHeadModel`` order.

    Linear weights use torch's ``(out, in)`` layout for torch's benchmark (HF's Conv1D stores
    ``(in, out)``; the layout does not change a global-norm benchmark).

    Example:
      >>> shapes = gpt2_small_shapes()
      >>> len(shapes), sum(__import__("math").prod(s) for _, s in shapes)
      (148, 124439808)
    """
    shapes: list[tuple[str, tuple[int, ...]]] = [("wte", (vocab, d)), ("wpe", (ctx, d))]
    for i in range(n_layer):
        p = f"h.{i}."
        shapes += [
            (p + "ln_1.weight", (d,)),
            (p + "ln_1.bias", (d,)),
            (p + "attn.c_attn.weight", (3 * d, d)),
            (p + "attn.c_attn.bias", (3 * d,)),
            (p + "attn.c_proj.weight", (d, d)),
            (p + "attn.c_proj.bias", (d,)),
            (p + "ln_2.weight", (d,)),
            (p + "ln_2.bias", (d,)),
            (p + "mlp.c_fc.weight", (4 * d, d)),
            (p + "mlp.c_fc.bias", (4 * d,)),
            (p + "mlp.c_proj.weight", (d, 4 * d)),
            (p + "mlp.c_proj.bias", (d,)),
        ]
    shapes += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return shapes


SHAPE_SETS = ("gpt2", "tiny", "small")


def shape_set(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``"gpt2"``: GPT-2 small (148 tensors, 124M params); ``"tiny"``: one 64-wide layer, for smoke tests;
    ``"small"``: two 256-wide layers (5.8M params), for quick measurements on a shared machine.

    Example:
      >>> len(shape_set("tiny")), sum(__import__("math").prod(s) for _, s in shape_set("tiny"))
      (16, 86976)
    """
    if name == "gpt2":
        return gpt2_small_shapes()
    if name == "tiny":
        return gpt2_small_shapes(n_layer=1, d=64, vocab=512, ctx=64)
    if name == "small":
        return gpt2_small_shapes(n_layer=2, d=256, vocab=16384, ctx=256)
    raise ValueError(f"shape set must be one of {SHAPE_SETS}, got {name!r}")
