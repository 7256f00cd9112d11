"""Dataclass configs and YAML recipes.

Dataclasses (defined next to the code they configure) are the one home of every default. A recipe is
a short YAML *delta* over those defaults; ``base: other.yaml`` (relative to the recipe) chains recipes,
and ``key.sub=value`` overrides from the command line go last. Unknown keys are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from occfeat.errors import OccfeatError

C = TypeVar("C")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def _coerce(value, t, where: str):
    """Light coercion of YAML values to the annotated type (tuples from lists, floats from ints)."""
    origin = typing.get_origin(t)
    if _is_dataclass_type(t):
        if not isinstance(value, dict):
            raise OccfeatError(f"{where}: expected a mapping, got {value!r}")
        return merge(t(), value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where) if len(args) == 1 else value
    if origin is tuple and not isinstance(value, (list, tuple)):
        raise OccfeatError(f"{where}: expected a list (e.g. [224, 400]), got {value!r}")
    if origin is tuple:
        args = typing.get_args(t)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        return tuple(_coerce(v, a, where) for v, a in zip(value, args)) if args else tuple(value)
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if t is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads a bare 1 or 0.5 as a number
    if t in _SCALARS and not _SCALARS[t][0](value):
        raise OccfeatError(f"{where}: expected {_SCALARS[t][1]}, got {value!r}")
    return value


# What a scalar field accepts after coercion, and how the error names it.
_SCALARS = {
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer (e.g. 4)"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number (e.g. 1e-4)"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def merge(cfg: C, delta: dict, where: str = "config") -> C:
    """A copy of dataclass ``cfg`` with ``delta`` (nested dict) applied; unknown keys are errors."""
    types_ = _field_types(type(cfg))
    changes = {}
    for key, value in delta.items():
        if key not in types_:
            raise OccfeatError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(types_))})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, f"{where}.{key}")
        else:
            changes[key] = _coerce(value, types_[key], f"{where}.{key}")
    return dataclasses.replace(cfg, **changes)


class _OverrideLoader(yaml.SafeLoader):
    """YAML for ``key=value`` overrides: only true/false are booleans, so ``train.amp=off`` stays the string "off"."""


_OverrideLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_OverrideLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` → nested dict, values parsed as YAML (``[1, 2]`` is a list, ``1e-4`` a number)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise OccfeatError(f"override '{item}' is not key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise OccfeatError(f"override '{item}' sets a key inside '{p}', which another override sets to a value")
        try:
            node[parts[-1]] = yaml.load(raw, Loader=_OverrideLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            raise OccfeatError(f"override '{item}' is not valid YAML ({str(e).splitlines()[0]}); quote the value or close its brackets") from None
    return out


def read_recipe(path: str | Path) -> dict:
    """The recipe's delta, with its ``base:`` chain resolved (base first, then this file)."""
    path = Path(path)
    if not path.is_file():
        raise OccfeatError(f"recipe {path} not found; see the recipes/ folder for the available ones")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise OccfeatError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise OccfeatError(f"recipe {path} must be a mapping of config keys")
    base = data.pop("base", None)
    if base is None:
        return data
    return deep_update(read_recipe(path.parent / base), data)


def deep_update(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[C], recipe: str | Path | None = None, overrides: list[str] | dict | None = None) -> C:
    """Defaults of ``cls`` ← recipe delta (with its bases) ← overrides."""
    cfg = cls()
    if recipe is not None:
        cfg = merge(cfg, read_recipe(recipe), where=str(recipe))
    if overrides:
        delta = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        cfg = merge(cfg, delta, where="override")
    return cfg


def to_dict(cfg) -> dict:
    """JSON-able dict of a (nested) dataclass config, for run dirs and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
