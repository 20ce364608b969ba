"""Fused CPU loops in C (``_native.c``), compiled on first use by the system C compiler, called through ctypes.

NumPy runs a rule's per-element formula as one operation at a time over an in-cache chunk;
Clippy's ratio is seven of them, a counted clamp five, the hash of SET's random scores about
thirty, and on a CPU those runs are compute-bound, not a read of memory. ``_native.c`` has each
formula as one loop, with the same IEEE operations in the same order (no FMA contraction, no
fast-math), so its results are the NumPy path's bit for bit (``tests/torch/test_native.py``).

The library is built once per source and compiler into a cache folder
(``$GRADCLIP_CACHE``, else ``$XDG_CACHE_HOME/gradclip``, else ``~/.cache/gradclip``; about
1 s with GCC, which builds AVX-512 / AVX2 / baseline clones on x86-64 Linux), written under a temporary name and renamed, so concurrent processes do not
clash. Without a working C compiler (``$CC``, else ``cc``), or with ``GRADCLIP_NATIVE=0``,
:func:`library` returns ``None`` and the kernels keep their NumPy loops; the reason is
logged once (logger ``gradclip``, level INFO) and given by :func:`unavailable_reason`.

ctypes releases the GIL during a call, so the torch kernels run these loops on their thread
pool's shares, as they run NumPy's.

Example:
  >>> a, b, lib = np.array([4.0, 5.0]), np.ones(2), library()
  >>> lib is None or lib.gc_diff_sumsq_f64(address(a), address(b), 2) == 25.0
  True
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Any

import numpy as np

__all__ = ["library", "unavailable_reason", "address", "SOURCE"]

SOURCE = pathlib.Path(__file__).with_name("_native.c")
_LOG = logging.getLogger("gradclip")
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}  # "lib": the CDLL or None; "why": the reason it is None
_FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-std=c99"]

_I64, _U32, _INT, _P = ctypes.c_int64, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "gc_min_ratio_f32": (ctypes.c_float, [_P, _P, _I64, ctypes.c_float, ctypes.c_float, _INT]),
    "gc_min_ratio_f64": (ctypes.c_double, [_P, _P, _I64, ctypes.c_double, ctypes.c_double, _INT]),
    "gc_diff_sumsq_f32": (ctypes.c_double, [_P, _P, _I64]),
    "gc_diff_sumsq_f64": (ctypes.c_double, [_P, _P, _I64]),
    "gc_sumsq_f32": (ctypes.c_double, [_P, _I64]),
    "gc_clamp_count_f32": (_I64, [_P, _I64, ctypes.c_float, ctypes.c_float]),
    "gc_clamp_count_f64": (_I64, [_P, _I64, ctypes.c_double, ctypes.c_double]),
    "gc_hash_keys": (None, [_P, _I64, _U32, _U32, _U32, _INT, _P]),
    "gc_lamp_scatter": (None, [_P, _P, _I64, _P]),
}


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("GRADCLIP_CACHE")
    if root:
        return pathlib.Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache") / "gradclip"


def _compiler() -> list[str] | None:
    cc = os.environ.get("CC", "cc").split()
    return cc if cc and shutil.which(cc[0]) else None


def _build(cc: list[str], out: pathlib.Path) -> None:
    """Compile ``SOURCE`` to ``out`` (with the x86-64 clones where the compiler takes them), atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        err = ""
        for extra in (["-DGC_CLONES"], []):
            proc = subprocess.run([*cc, *_FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(tmp, out)
                return
            err = proc.stdout
        raise RuntimeError(f"{' '.join(cc)} failed: {err.strip()[-500:]}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> tuple[Any, str]:
    if os.environ.get("GRADCLIP_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled by GRADCLIP_NATIVE=0"
    if sys.platform == "win32":
        return None, "not built on Windows"
    cc = _compiler()
    if cc is None:
        return None, f"no C compiler ({os.environ.get('CC', 'cc')} not found)"
    src = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, " ".join(cc).encode(), " ".join(_FLAGS).encode(),
                                     os.uname().machine.encode()])).hexdigest()[:16]
    path = _cache_dir() / f"native-{key}.so"
    try:
        if not path.exists():
            _build(cc, path)
        lib = ctypes.CDLL(str(path))
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return None, f"could not build or load {path.name}: {e}"
    return lib, ""


def library() -> Any:
    """The compiled fused loops (a ``ctypes.CDLL``), built on the first call; ``None`` where they cannot be.

    Returns:
      the library, or ``None`` (no C compiler, ``GRADCLIP_NATIVE=0``, Windows, or a build error:
      :func:`unavailable_reason` says which); the callers then run their NumPy loops.
    """
    if "lib" not in _STATE:
        with _LOCK:
            if "lib" not in _STATE:
                lib, why = _load()
                if lib is None:
                    _LOG.info("gradclip: fused CPU loops unavailable (%s); using NumPy", why)
                _STATE["why"], _STATE["lib"] = why, lib
    return _STATE["lib"]


def unavailable_reason() -> str:
    """Why :func:`library` is ``None`` (``""`` when it is loaded)."""
    library()
    return _STATE["why"]


def address(a: np.ndarray, start: int = 0) -> int:
    """The address of element ``start`` of the contiguous 1-D NumPy array ``a`` (a ``void *`` argument of the loops)."""
    return a.ctypes.data + start * a.itemsize
