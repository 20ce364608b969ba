"""Array-namespace resolution: array-api-compat plus a registry that adapters extend.

Every core function starts with ``xp = namespace(*arrays)``. Most frameworks are
resolved by :mod:`array_api_compat`; adapters register namespaces it does not know
(the Keras adapter registers one over ``keras.ops`` for TensorFlow tensors) and may
attach *multi-array primitives* (e.g. torch's ``_foreach_norm``) and a default
weight *layout* to a namespace.

Nothing here imports a framework: detection is by predicate, lazily, in the style
of array-api-compat's ``is_*_array`` helpers and einops' backend lookup.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import array_api_compat

__all__ = [
    "namespace",
    "namespace_name",
    "register_namespace",
    "registered_namespaces",
]


class _Entry(NamedTuple):
    name: str
    is_array: Callable[[Any], bool]
    xp: Any


# Checked before array-api-compat, most recently registered first.
_REGISTRY: list[_Entry] = []


def register_namespace(name: str, is_array: Callable[[Any], bool], xp: Any) -> None:
    """Register an Array API namespace for arrays that array-api-compat does not know.

    Args:
      name: a unique, stable name (used to look up multi-array primitives and layouts).
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
    """Names of the namespaces registered by adapters, most recent first."""
    return tuple(e.name for e in _REGISTRY)


def namespace(*arrays: Any) -> Any:
    """Return the Array API namespace of ``arrays``.

    Registered namespaces are tried first (in registration order, newest first), then
    :func:`array_api_compat.array_namespace`. Python scalars and ``None`` are ignored.

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
                raise TypeError(
                    f"arrays mix namespace {entry.name!r} with other array types: {sorted(set(bad))}"
                )
            return entry.xp
    # array_namespace's answer depends on the arrays' types only: one of each is enough
    # (a model's hundreds of tensors would otherwise be checked one by one every step).
    return array_api_compat.array_namespace(*{type(a): a for a in arrs}.values())


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
