"""A value set for the length of a ``with`` block, per thread and task, cheap to read when unset.

Two things the core reads on every rule call are set by adapters around it: the array
names (:mod:`gradclip_core.backend._names`) and the collective of a sharded run
(:mod:`gradclip_core.backend._collective`). Each is a ``ContextVar`` (threads and asyncio
tasks see their own), plus a count of the blocks open in any thread: while none is, a
read returns ``None`` without touching the ``ContextVar``. ``torch.compile`` cannot trace
``ContextVar.get`` (a graph break in every rule call) but reads a plain attribute, with a
guard on its value. A block opened inside such a trace (``scope(value, traced=True)``)
goes on a plain stack instead of the ``ContextVar`` (the trace runs in one thread), and
so does every block opened inside it.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Any, Iterator

__all__ = ["ScopedValue"]


class ScopedValue:
    """A ``ContextVar`` with a count of open blocks.

    Example:
      >>> v = ScopedValue("example")
      >>> with v.scope(3):
      ...     v.get(), v.is_open
      (3, True)
      >>> v.get(), v.is_open
      (None, False)
    """

    def __init__(self, name: str) -> None:
        self._var: contextvars.ContextVar[Any] = contextvars.ContextVar(name, default=None)
        self._open = [0]  # blocks open in any thread
        self._lock = threading.Lock()
        self._traced: list = []  # blocks opened inside a compiler's trace: a plain stack

    @property
    def is_open(self) -> bool:
        """Whether a :meth:`scope` block is open in any thread (a plain read)."""
        return self._open[0] != 0 or bool(self._traced)

    def get(self) -> Any:
        """The value of the innermost block of this thread / task, ``None`` outside every block."""
        if self._traced:
            return self._traced[-1]
        return None if self._open[0] == 0 else self._var.get()

    @contextlib.contextmanager
    def scope(self, value: Any, *, traced: bool = False) -> Iterator[None]:
        """Within the block, :meth:`get` returns ``value`` (in this thread / task).

        ``traced``: the block runs inside a compiler's trace that cannot trace a
        ``ContextVar`` (e.g. ``torch.compiler.is_compiling()``); blocks inside it are traced too.
        """
        if traced or self._traced:
            self._traced.append(value)
            try:
                yield
            finally:
                self._traced.pop()
            return
        token = self._var.set(value)
        with self._lock:
            self._open[0] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[0] -= 1
            self._var.reset(token)
