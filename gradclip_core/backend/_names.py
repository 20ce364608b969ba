"""Names of the arrays a rule runs on, for error messages and per-array info keys.

The core sees flat lists of arrays; only the adapter knows what they are (torch
parameter names, optax tree paths, Keras variable paths). An adapter that knows them
runs the rule inside :func:`array_names`: :class:`gradclip_core.Params` patterns then
match those names, the core's errors name the array (``'encoder.0.weight'``) instead of
its position, and :func:`name_info` renames per-array info keys (``sparsity/3`` ->
``sparsity/encoder.0.weight``) the same way.

Names may be given lazily (a function returning them), computed once when first needed
(an error message, a ``Params`` pattern): an adapter can pass, e.g., a function that
computes tree paths. Adapters run ``init`` inside the same block as ``update`` /
``project``, so a selection by name is the same at every call.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

from ._scoped import ScopedValue

__all__ = ["array_names", "array_label", "name_info", "current_names", "global_index"]

_NAMES = ScopedValue("gradclip_array_names")  # (read without the ContextVar while no block is open: torch.compile)
# Index maps of the restricted rules (gc.on: the i-th array the inner rule sees is array
# POSITIONS[-1][i] of the outer one), for error labels without names and for the split axes
# of a sharded run (gradclip_core.backend.split_axes): see global_index.
POSITIONS: list = []
# The per-array info keys of the core: ``sparsity/<i>`` (pruning), ``norm/<i>`` (monitor),
# ``ratio/<i>`` (update_ratio), also under a chain's prefix.
_PER_ARRAY = re.compile(r"^(.*?(?:^|/)(?:sparsity|norm|ratio))/(\d+)$")


class _Lazy:
    """Names resolved once, on first use."""

    def __init__(self, fn: Callable[[], Sequence[str]]) -> None:
        self._fn, self._names = fn, None

    def get(self) -> Sequence[str]:
        if self._names is None:
            self._names = [str(n) for n in self._fn()]
        return self._names




@contextlib.contextmanager
def array_names(names: Sequence[str] | Callable[[], Sequence[str]] | None, *, traced: bool = False) -> Iterator[None]:
    """Name the arrays of the rule calls made inside (position ``i`` is called ``names[i]``).

    Args:
      names: a sequence of names, one per array in the order the rule sees them, a
        function returning one (called at most once, only when a name is needed), or
        ``None`` (positions).
      traced: the block runs inside a compiler's trace (e.g. ``torch.compiler.is_compiling()``),
        which cannot trace a ``ContextVar``: the names go on a plain module-level stack
        instead (the trace runs in one thread).

    Example:
      >>> with array_names(["w", "b"]):
      ...     array_label(1)
      "'b'"
      >>> array_label(1)
      'array 1'
    """
    if names is None and not _NAMES.is_open:  # nothing to name, nothing named: touch no ContextVar
        yield
        return
    value = _Lazy(names) if callable(names) else (None if names is None else list(names))
    with _NAMES.scope(value, traced=traced):
        yield


def current_names() -> Sequence[str] | None:
    """The names of the innermost :func:`array_names` block, or ``None`` (resolved if lazy)."""
    value = _NAMES.get()
    return value.get() if isinstance(value, _Lazy) else value


def array_label(i: int) -> str:
    """How an error message refers to array ``i``: its quoted name, or ``array i``.

    Example:
      >>> array_label(3)
      'array 3'
    """
    names = current_names()
    if names is not None and 0 <= i < len(names):
        name = names[i]
        return f"array {name}" if name.isdigit() else repr(name)  # (digits: a position, e.g. in a list)
    return f"array {global_index(i)}"


def global_index(i: int) -> int:
    """The position among all arrays of the array a restricted rule (``gc.on``) calls ``i``.

    Args:
      i: the position in the list the (restricted) rule was given.

    Returns:
      ``i`` itself outside restricted rules; nested restrictions map innermost first.

    Example:
      >>> global_index(2)
      2
    """
    for positions in reversed(POSITIONS):  # a rule restricted to some arrays (gc.on): their positions
        if 0 <= i < len(positions):
            i = positions[i]
    return i


def name_info(info: Mapping[str, Any], names: Sequence[str] | Callable[[], Sequence[str]] | None) -> dict:
    """``info`` with per-array keys (``sparsity/<i>``, also inside a chain's prefix) named.

    Args:
      info: a rule's info dict.
      names: one name per array, or a function returning them (called only when
        ``info`` has a per-array key), or ``None`` (``info`` unchanged).

    Returns:
      A new dict, same values and order, ``.../sparsity/<i>`` renamed ``.../sparsity/<names[i]>``.

    Example:
      >>> name_info({"sparsity": 0.5, "prune/sparsity/1": 0.25}, ["w", "b"])
      {'sparsity': 0.5, 'prune/sparsity/b': 0.25}
    """
    if names is None:
        return dict(info)
    out = {}
    for k, v in info.items():
        m = _PER_ARRAY.match(k)
        if m is not None:
            if callable(names):
                names = [str(n) for n in names()]
            if int(m.group(2)) < len(names):
                k = f"{m.group(1)}/{names[int(m.group(2))]}"
        out[k] = v
    return out
