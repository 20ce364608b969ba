"""Array-namespace resolution, and the lazy loading of each framework's fast kernels.

Every core function starts with ``xp = namespace(*arrays)``. Frameworks are resolved
by :mod:`array_api_compat`, except TensorFlow, which it does not know: gradclip has its
own small namespace for TensorFlow tensors (:mod:`gradclip_core.backend._tensorflow`).
Anyone can register a namespace for another array type with :func:`register_namespace`.

Per-framework kernels (torch's ``_foreach_*`` and chunked radix histograms, JAX's
``lax.fori_loop`` selection, NumPy's ``bincount``) live in one module each under
:mod:`gradclip_core.backend` and are imported the first time an array of that framework
is seen (as array-api-compat and einops detect backends), never when the core itself is
imported: ``import gradclip_core`` loads NumPy and array-api-compat only.
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Any, Callable, NamedTuple

import array_api_compat

__all__ = [
    "namespace",
    "namespace_name",
    "register_namespace",
    "registered_namespaces",
    "ensure_kernels",
    "device_kw",
    "state_namespace",
]


class _Entry(NamedTuple):
    name: str
    is_array: Callable[[Any], bool]
    xp: Any


# Checked before array-api-compat, most recently registered first.
_REGISTRY: list[_Entry] = []
# Kernel modules (gradclip_core.backend.<module>), by the namespace name they serve.
_KERNELS = {
    "array_api_compat.numpy": "_numpy",
    "array_api_compat.torch": "_torch",
    "jax.numpy": "_jax",
    "tensorflow": "_tensorflow",
}
_LOADED: set[str] = set()
_LOCK = threading.Lock()
# Array types resolved by array-api-compat (its answer depends on the type only).
_BY_TYPE: dict[type, Any] = {}


def ensure_kernels(name: str) -> None:
    """Import the kernel module of the namespace called ``name`` once (no-op for others).

    Example:
      >>> ensure_kernels("array_api_compat.numpy")  # registers NumPy's bincount histogram
    """
    module = _KERNELS.get(name)
    if module is None or name in _LOADED:
        return
    with _LOCK:
        if name in _LOADED:
            return
        importlib.import_module(f"{__package__}.{module}").register()
        _LOADED.add(name)


def register_namespace(name: str, is_array: Callable[[Any], bool], xp: Any) -> None:
    """Register an Array API namespace for arrays that array-api-compat does not know.

    Args:
      name: a unique, stable name (used to look up primitives and layouts).
        Registering the same name again replaces the earlier entry.
      is_array: predicate telling whether an object is an array of this namespace.
        It must be cheap and must not import anything heavy.
      xp: the namespace object (module-like, with the Array API functions the core uses).

    Example:
      >>> import numpy as np
      >>> class Tagged(np.ndarray): pass
      >>> register_namespace("tagged", lambda a: isinstance(a, Tagged), np)  # doctest: +SKIP
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(is_array):
        raise ValueError(f"is_array must be callable, got {type(is_array).__name__}")
    _REGISTRY[:] = [e for e in _REGISTRY if e.name != name]
    _REGISTRY.insert(0, _Entry(name, is_array, xp))


def registered_namespaces() -> tuple[str, ...]:
    """Names of the namespaces registered with :func:`register_namespace`, most recent first."""
    return tuple(e.name for e in _REGISTRY)


def _is_tensorflow(x: Any) -> bool:
    """A TensorFlow tensor or variable, told by its type's module (no TensorFlow import)."""
    return "tensorflow" in sys.modules and type(x).__module__.startswith("tensorflow.")


def _torch_tensors(arrs: list) -> bool:
    """All ``arrs`` are torch tensors (``nn.Parameter`` included), told without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and all(isinstance(a, torch.Tensor) for a in arrs)


def _torch_namespace() -> Any:
    """``array_api_compat.torch``, resolved without array-api-compat's ``lru_cache``-d type checks.

    Under ``torch.compile`` dynamo traces through whatever resolves the namespace, and
    warns about every ``functools.lru_cache`` it meets there (array-api-compat's type
    predicates): for torch tensors the answer is known, so nothing is traced.
    """
    xp = sys.modules.get("array_api_compat.torch")
    return xp if xp is not None else importlib.import_module("array_api_compat.torch")


def namespace(*arrays: Any) -> Any:
    """Return the Array API namespace of ``arrays``.

    Registered namespaces are tried first (newest first), then TensorFlow (gradclip's
    own namespace, loaded on first use), then :func:`array_api_compat.array_namespace`.
    Python scalars and ``None`` are ignored.

    Args:
      *arrays: arrays of one framework (``None`` and Python numbers are skipped).

    Returns:
      The namespace module (e.g. ``array_api_compat.numpy``, ``jax.numpy``).

    Raises:
      TypeError: if no array is given or the arrays belong to different namespaces.

    Example:
      >>> import numpy as np
      >>> namespace(np.ones(3)).__name__
      'array_api_compat.numpy'
    """
    arrs = [a for a in arrays if a is not None and not isinstance(a, (bool, int, float, complex))]
    if not arrs:
        raise TypeError("namespace() needs at least one array")
    for entry in _REGISTRY:
        if entry.is_array(arrs[0]):
            bad = [type(a).__name__ for a in arrs if not entry.is_array(a)]
            if bad:
                raise TypeError(f"arrays mix namespace {entry.name!r} with other array types: {sorted(set(bad))}")
            return entry.xp
    types = {type(a): a for a in arrs}
    if len(types) == 1:
        xp = _BY_TYPE.get(next(iter(types)))
        if xp is not None:
            return xp
    if _torch_tensors(arrs):
        return _torch_namespace()
    if _is_tensorflow(arrs[0]):
        ensure_kernels("tensorflow")  # registers the TensorFlow namespace
        return namespace(*arrs)
    # array_namespace's answer depends on the arrays' types only: one of each is enough
    # (a model's hundreds of tensors would otherwise be checked one by one every step).
    xp = array_api_compat.array_namespace(*types.values())
    if len(types) == 1:
        _BY_TYPE[next(iter(types))] = xp
    return xp


def namespace_name(xp: Any) -> str:
    """Stable name of a namespace: the registered name, else the module name.

    Example:
      >>> import numpy as np
      >>> namespace_name(namespace(np.ones(1)))
      'array_api_compat.numpy'
    """
    for entry in _REGISTRY:
        if entry.xp is xp:
            return entry.name
    return getattr(xp, "__name__", type(xp).__name__)


def device_kw(arrays: Any) -> dict:
    """``{"device": ...}`` of the first array (so new state lives where the params do), or ``{}``.

    Example:
      >>> import numpy as np
      >>> device_kw([np.ones(2)])
      {'device': 'cpu'}
    """
    if not arrays:
        return {}
    if _torch_tensors(arrays[:1]):  # (no array-api-compat type checks to trace under torch.compile)
        return {"device": arrays[0].device}
    try:
        device = array_api_compat.device(arrays[0])
    except Exception:  # a namespace array-api-compat does not know (e.g. TensorFlow)
        return {}
    # A JAX array sharded over several devices reports its sharding (e.g. P("x") over a
    # mesh), which cannot place a 0-d or differently shaped state: leave placement to JAX.
    devices = getattr(device, "device_set", None)
    if devices is not None and len(devices) > 1:
        return {}
    # An uncommitted JAX array (made without a device, e.g. a temporary of a rule's init
    # on sharded params) would become committed by ``device=``, and a state committed to
    # one device cannot enter ``jax.jit`` beside params sharded over several.
    try:
        committed = getattr(arrays[0], "committed", True)
    except Exception:  # a JAX tracer refuses the question (under jit, placement is XLA's anyway)
        committed = True
    if committed is False:
        return {}
    return {"device": device}


def state_namespace(params: Any) -> Any:
    """Namespace for a new rule state: the params', or NumPy's when there are none."""
    params = list(params)
    if params:
        return namespace(*params)
    import array_api_compat.numpy as np_xp

    return np_xp
