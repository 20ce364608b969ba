"""Passes over memory of a compiled XLA computation, counted from its HLO (issue 15).

The optax and Keras/JAX tests compare the compiled step of a rule with the native one:
an extra pass over the weights or gradients (a full-size ``where``, a copy, a convert, a
scale that does not fuse into the optimizer's update) shows up here, where a timing on a
shared machine could not tell it from noise. XLA's own ``cost_analysis()`` counts every
operand of a fusion in full, also a long vector of which the fusion reads one slice (the
core's per-unit factors of every array, concatenated), so it is not used.
"""

from __future__ import annotations

import math
import re

__all__ = ["full_size_elements"]

_DEF = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")
_SHAPE = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]")
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}  # no memory traffic of their own


def full_size_elements(hlo_text: str, min_elements: int) -> int:
    """Elements read and written by the entry computation's instructions, counting arrays of ``min_elements`` or more.

    Each instruction of the entry computation (a fusion is one) reads its operands and
    writes its result once; arrays smaller than ``min_elements`` (biases, norms, scalars)
    are left out. Divided by the size of the weights, it is the number of passes.

    Args:
      hlo_text: ``jax.jit(f).lower(...).compile().as_text()``.
      min_elements: the smallest array counted.

    Returns:
      The number of elements moved.

    Example:
      >>> text = '''ENTRY %main (p: f32[100,10]) -> f32[100,10] {
      ...   %p = f32[100,10]{1,0} parameter(0)
      ...   %n = f32[10]{0} fusion(%p), kind=kLoop, calls=%norm
      ...   ROOT %s = f32[100,10]{1,0} fusion(%p, %n), kind=kLoop, calls=%scale
      ... }'''
      >>> full_size_elements(text, 1000)  # read for the norms, read and write to scale
      3000
    """
    entry = hlo_text[hlo_text.index("ENTRY"):]
    sizes: dict[str, list[int]] = {}  # name -> its array sizes (several for a tuple)
    total = 0
    for line in entry.splitlines()[1:]:
        m = _DEF.match(line)
        if not m:
            continue
        name, out_type, op, rest = m.groups()
        out = [math.prod(int(d) for d in dims.split(",")) if dims else 1 for dims in _SHAPE.findall(out_type)]
        operands = re.findall(r"%([\w.\-]+)", rest.split("),")[0])
        if op == "get-tuple-element":
            out = [sizes[operands[0]][int(re.search(r"index=(\d+)", rest).group(1))]]
        sizes[name] = out
        if op in _FREE:
            continue
        total += sum(n for o in operands for n in sizes.get(o, ()) if n >= min_elements)
        total += sum(n for n in out if n >= min_elements)
    return total
