"""Which arrays a rule acts on: :class:`Params`, :func:`on`, and the names adapters give the arrays.

A rule sees a flat list of arrays. By default clipping rules and constraints act on all
of them, and pruning rules on the *weights*: arrays of rank >= 2 (Linear / Conv /
Embedding weights, Keras kernels), not biases, norm scales or scalars, as
``torch.nn.utils.prune`` users, tfmot and jaxpruner expect. Any rule can be restricted,
by rank and by name: ``gc.on(rule, gc.Params(exclude=["*embed*"]))``, or for pruning
rules ``params=`` of the factory.

Names: each adapter names the arrays the way its framework does (torch
``named_parameters`` names, optax tree paths ``"layer/w"``, Keras variable paths) with
:func:`array_names` around the rule's calls; without names (the core on plain lists)
an array is named by its position, ``"0"``, ``"1"``, ... Patterns are ``fnmatch`` globs.

A restricted rule runs on the selected arrays only; its effect applies to them
(:class:`~gradclip_core.On`); its pruning masks are kept for every array (a 0-d ``True``
for the others, so a state holds one mask per array whatever the selection), and
``sparsity/<i>`` info keys keep the arrays' positions.
"""

from __future__ import annotations

import fnmatch
import contextlib
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from ._effect import Keep, On

__all__ = ["Params", "on", "resolve_params", "selected", "prepare_selection"]



class Params(NamedTuple):
    """A selection of arrays by name and rank.

    Attributes:
      include: ``fnmatch`` patterns; an array must match one of them (``None``: every name).
      exclude: patterns; an array matching one of them is left out.
      min_ndim: the smallest rank selected (2: weights only; 0: everything).

    Example:
      >>> Params(exclude=["*bias"]).accepts("0.bias", (4,)), Params(min_ndim=2).accepts("w", (4, 4))
      (False, True)
    """

    include: tuple | None = None
    exclude: tuple = ()
    min_ndim: int = 0

    def accepts(self, name: str, shape: Sequence[int]) -> bool:
        """Whether an array called ``name`` of ``shape`` is selected."""
        if len(shape) < self.min_ndim:
            return False
        if self.include is not None and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


PRESETS = {"all": Params(), "weights": Params(min_ndim=2)}


def resolve_params(params: Any) -> Params:
    """``"all"``, ``"weights"`` or a :class:`Params` (also its fields as a dict or list: configs)."""
    if isinstance(params, str):
        if params not in PRESETS:
            raise ValueError(f"params must be 'all', 'weights' or a gradclip_core.Params, got {params!r}")
        return PRESETS[params]
    if isinstance(params, Params):
        spec = params
    elif isinstance(params, dict):
        spec = Params(**params)
    elif isinstance(params, (list, tuple)) and len(params) == 3:
        spec = Params(*params)
    else:
        raise ValueError(f"params must be 'all', 'weights' or a gradclip_core.Params, got {params!r}")
    for field in ("include", "exclude"):
        value = getattr(spec, field)
        if value is None and field == "include":
            continue
        if isinstance(value, str) or not all(isinstance(p, str) for p in value):
            raise ValueError(f"Params.{field} must be a list of name patterns (strings), got {value!r}")
    if isinstance(spec.min_ndim, bool) or not isinstance(spec.min_ndim, int) or spec.min_ndim < 0:
        raise ValueError(f"Params.min_ndim must be an int >= 0, got {spec.min_ndim!r}")
    return Params(None if spec.include is None else tuple(spec.include), tuple(spec.exclude), spec.min_ndim)


def config_of(params: Params) -> Any:
    """``params`` as a JSON-able config value (a preset name where it is one)."""
    for name, preset in PRESETS.items():
        if params == preset:
            return name
    return {"include": None if params.include is None else list(params.include), "exclude": list(params.exclude),
            "min_ndim": params.min_ndim}


_ACCEPTED: dict = {}  # (params, name, shape) -> selected: pattern matching (fnmatch) runs once, eagerly


def selected(params: Params, arrays: Sequence[Any]) -> list[int]:
    """Positions of the ``arrays`` that ``params`` selects (names from :func:`array_names`, else positions).

    Each answer is remembered, so a step traced by a compiler (``torch.compile`` cannot
    trace ``fnmatch``'s regular expressions) finds the answers of an earlier eager call:
    adapters make one at init (see :func:`gradclip_core.backend.prepare_selection`).
    """
    from .backend._names import current_names  # (one place for the names: errors use them too)

    names = current_names()
    if names is None or len(names) != len(arrays):
        names = tuple(str(i) for i in range(len(arrays)))
    out = []
    for i, (n, a) in enumerate(zip(names, arrays)):
        key = (params, n, tuple(a.shape))
        hit = _ACCEPTED.get(key)
        if hit is None:
            hit = _ACCEPTED[key] = params.accepts(n, key[2])
        if hit:
            out.append(i)
    return out


def prepare_selection(rule: Any, arrays: Sequence[Any]) -> None:
    """Match every :class:`Params` of ``rule`` (and its parts) against ``arrays`` now, eagerly.

    Run inside :func:`array_names` by an adapter before a step that a compiler may trace.
    """
    spec = getattr(rule, "params", None)
    if isinstance(spec, Params):
        selected(spec, arrays)  # (a restriction inside it sees a subset: matched at its first eager call)
        return
    for part in getattr(rule, "parts", ()) or ():
        prepare_selection(part, arrays)


def _is_masks_state(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields") and "masks" in node._fields


def _expand(state: Any, idx: list[int], arrays: Sequence[Any]) -> Any:
    """The inner state with every ``masks`` tuple widened to all arrays (0-d ``True`` for the others)."""
    if _is_masks_state(state):
        from .backend._namespace import device_kw, namespace

        full: list = []
        pos = {j: k for k, j in enumerate(idx)}
        for j, a in enumerate(arrays):
            if j in pos:
                full.append(state.masks[pos[j]])
            else:
                xp = namespace(a)
                full.append(xp.ones((), dtype=xp.bool, **device_kw([a])))
        scores = getattr(state, "scores", ())
        if isinstance(scores, tuple) and scores:  # accumulated pruning scores: 0-d zeros for the others
            acc: list = []
            for j, a in enumerate(arrays):
                if j in pos:
                    acc.append(scores[pos[j]])
                else:
                    xp = namespace(a)
                    acc.append(xp.zeros((), dtype=xp.float32, **device_kw([a])))
            return state._replace(masks=tuple(full), scores=tuple(acc))
        regrown = getattr(state, "regrown", ())
        if isinstance(regrown, tuple) and regrown:  # dynamic sparse training: 0-d False for the others
            grown: list = []
            for j, a in enumerate(arrays):
                if j in pos:
                    grown.append(regrown[pos[j]])
                else:
                    xp = namespace(a)
                    grown.append(xp.zeros((), dtype=xp.bool, **device_kw([a])))
            return state._replace(masks=tuple(full), regrown=tuple(grown))
        return state._replace(masks=tuple(full))
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return tuple(_expand(s, idx, arrays) for s in state)
    return state


def _contract(state: Any, idx: list[int], n: int, name: str) -> Any:
    """The inverse of :func:`_expand`: only the selected arrays' masks (``n``: the number of arrays)."""
    if _is_masks_state(state):
        if not isinstance(state.masks, tuple) or len(state.masks) != n:
            got = len(state.masks) if isinstance(state.masks, tuple) else type(state.masks).__name__
            raise ValueError(f"{name}: the state has {got} masks for {n} arrays (call rule.init on these params)")
        scores = getattr(state, "scores", ())
        if isinstance(scores, tuple) and len(scores) == n:
            return state._replace(masks=tuple(state.masks[j] for j in idx), scores=tuple(scores[j] for j in idx))
        regrown = getattr(state, "regrown", ())
        if isinstance(regrown, tuple) and len(regrown) == n:
            return state._replace(masks=tuple(state.masks[j] for j in idx), regrown=tuple(regrown[j] for j in idx))
        return state._replace(masks=tuple(state.masks[j] for j in idx))
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return tuple(_contract(s, idx, n, name) for s in state)
    return state


def _adopt(state: Any, arrays: Sequence[Any]) -> Any:
    """``state`` with its leaves as arrays of ``arrays``' namespace and device (a state built from no array)."""
    from .backend._namespace import device_kw, namespace
    from .backend._tree import flatten_state, unflatten_state

    leaves, treedef = flatten_state(state)
    xp = namespace(*arrays)
    kw = device_kw(arrays)
    return unflatten_state(treedef, [xp.asarray(leaf, **kw) for leaf in leaves])


def _renumber(info: dict, idx: list[int]) -> dict:
    """Per-array info keys (``.../<j>``) of the selected arrays renamed to their positions among all."""
    out = {}
    for k, v in info.items():
        head, _, tail = k.rpartition("/")
        if head and tail.isdigit() and int(tail) < len(idx):
            k = f"{head}/{idx[int(tail)]}"
        out[k] = v
    return out


def on(rule: Any, params: Any) -> Any:
    """``rule`` acting only on the arrays ``params`` selects (see :mod:`gradclip_core._params`).

    Applied to a rule that is already restricted (e.g. a pruning rule with its default
    ``"weights"``), the new selection replaces the old one.

    Args:
      rule: any :class:`~gradclip_core.Rule` (a chain too).
      params: ``"all"``, ``"weights"`` (rank >= 2) or a :class:`Params`.

    Returns:
      The restricted rule; its ``config`` records the selection (``from_config`` rebuilds it).

    Example:
      >>> import numpy as np
      >>> import gradclip_core as gc
      >>> rule = gc.on(gc.clip_by_global_norm(1.0), gc.Params(exclude=["1"]))  # names are positions here
      >>> out, _, info = rule.update([np.array([3.0, 4.0], np.float32), np.array([100.0], np.float32)], ())
      >>> [o.astype(float).round(4).tolist() for o in out], float(info["norm"])
      ([[0.6, 0.8], [100.0]], 5.0)
    """
    from ._rule import Rule

    if not isinstance(rule, Rule):
        raise ValueError(f"on() needs a gradclip Rule, got {type(rule).__name__}")
    spec = resolve_params(params)
    base = rule.parts[0] if rule.params is not None else rule  # a new selection replaces the old one
    config = dict(rule.config)
    if config.get("rule") == "on":
        config = dict(config["rule_config"])
    if not config:
        new_config: dict = {}
    elif "params" in config:  # a factory with its own params= argument (the pruning rules)
        new_config = {**config, "params": config_of(spec)}
    elif spec == PRESETS["all"]:
        new_config = config
    else:
        new_config = {"rule": "on", "rule_config": config, "params": config_of(spec)}
    if spec == PRESETS["all"]:
        return base.replace(config=new_config)
    return _restrict(base, spec, new_config)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _restrict(inner: Any, spec: Params, config: Any) -> Any:
    from ._rule import Rule

    def init(params: Sequence[Any]) -> Any:
        params = list(params)
        idx = selected(spec, params)
        state = inner.init([params[j] for j in idx])
        if params and not idx:  # built without an array to take the framework from: adopt the params'
            state = _adopt(state, params)
        return _expand(state, idx, params)

    def run(arrays: list, state: Any, call: Callable[[list, list, Any], tuple]) -> tuple:
        from .backend._names import POSITIONS, array_names, current_names

        idx = selected(spec, arrays)
        names = current_names()
        subset = len(idx) != len(arrays)
        # The inner rule's errors must name its arrays as the caller knows them: by their names
        # (a nested array_names block), or, without names, by their positions among all arrays
        # (an index map; no ContextVar is touched then, which torch.compile could not trace).
        # The index map also gives the inner rule its arrays' split axes on shards (split_axes).
        named = subset and names is not None and len(names) == len(arrays)
        if subset:
            POSITIONS.append(idx)
        try:
            with array_names([names[j] for j in idx]) if named else _nothing():
                effect, new_state, info = call(idx, [arrays[j] for j in idx], _contract(state, idx, len(arrays), inner.name))
        finally:
            if subset:
                POSITIONS.pop()
        new_state = _expand(new_state, idx, arrays)
        if not isinstance(effect, Keep) and len(idx) != len(arrays):
            effect = On(tuple(idx), effect)
        return effect, new_state, _renumber(info, idx)

    def update_effect(grads: Sequence[Any], state: Any, params: Sequence[Any] | None = None) -> tuple:
        def call(idx: list, sub: list, st: Any) -> tuple:
            return inner.update_effect(sub, st, None if params is None else [list(params)[j] for j in idx])

        return run(list(grads), state, call)

    def project_effect(params: Sequence[Any], state: Any) -> tuple:
        return run(list(params), state, lambda idx, sub, st: inner.project_effect(sub, st))

    return Rule(
        init=init,
        name=inner.name,
        needs_params=inner.needs_params,
        on_update=inner.on_update,
        config=config,
        update_effect=update_effect if inner.has_update else None,
        project_effect=project_effect if inner.has_project else None,
        parts=(inner,),
        params=spec,
    )
