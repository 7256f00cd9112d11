"""Dataclass configs and YAML recipes.

Dataclasses (defined next to the code they configure) are the one home of every default. A recipe is
a short YAML *delta* over those defaults; ``base: other.yaml`` (next to the recipe, else a shipped
recipe: :func:`find_recipe`) chains recipes, and ``key.sub=value`` overrides from the command line go
last. Unknown keys are errors, so a typo never silently falls back to a default.

Two kinds of fields choose their dataclass from the data (see :class:`Variants`):

- a field typed by a base class with a ``variant_key`` (``network: NetworkConfig``, key ``arch``): the
  key's value picks the subclass (``network: {arch: bevformer}`` gives a ``BevFormerConfig``), carrying
  over the fields both classes share;
- a ``dict[str, Base]`` field whose base has variants (``objectives: dict[str, ObjectiveConfig]``): each
  name picks its class, a mapping merges into the entry of that name, ``null`` removes it.

Saved configs are read back through the same merge (:func:`resolve_saved`), so a config written before a
defaulted field existed resolves to today's dataclass and compares equal.
"""

from __future__ import annotations

import dataclasses
import difflib
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


class Variants:
    """Mixin for a config base class whose concrete dataclass is chosen by name.

    ``variants()`` maps each name to its dataclass (it may import lazily, so the registry lives next to
    the code it configures); ``variant_key`` names the field that holds the name when the config is a
    plain field (``arch`` for networks); a ``dict[str, Base]`` field uses its keys instead.
    """

    variant_key: typing.ClassVar[str | None] = None

    @classmethod
    def variants(cls) -> dict[str, type]:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def variant(cls, name, where: str) -> type:
        known = cls.variants()
        if name not in known:
            raise OccfeatError(f"{where}: unknown {cls.variant_key or 'name'} '{name}' (known: {', '.join(sorted(known))})")
        return known[name]


def _is_variant_base(t) -> bool:
    return isinstance(t, type) and issubclass(t, Variants)


def _switch_variant(current, name, where: str):
    """``current`` turned into the variant ``name``: a default instance of that class with the fields both share copied over."""
    cls = type(current).variant(name, where)
    if type(current) is cls:
        return current
    shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(current)}
    return dataclasses.replace(cls(), **{k: getattr(current, k) for k in shared if k != current.variant_key})


def _merge_variant_dict(current: dict, delta, base: type, where: str) -> dict:
    if not isinstance(delta, dict):
        raise OccfeatError(f"{where}: expected a mapping of names to settings (known names: {', '.join(sorted(base.variants()))}), got {delta!r}")
    out = dict(current)
    for name, value in delta.items():
        if value is None:
            out.pop(name, None)
            continue
        cls = base.variant(name, where)
        if value is True:
            value = {}
        if not isinstance(value, dict):
            raise OccfeatError(f"{where}.{name}: expected a mapping of settings (or null to remove it), got {value!r}")
        out[name] = merge(out.get(name) or cls(), value, f"{where}.{name}")
    return out


def merge(cfg: C, delta: dict, where: str = "config") -> C:
    """A copy of dataclass ``cfg`` with ``delta`` (nested dict) applied; unknown keys are errors."""
    if not isinstance(delta, dict):
        raise OccfeatError(f"{where}: expected a mapping, got {delta!r}")
    key = getattr(cfg, "variant_key", None)
    if key is not None and key in delta:  # the variant first, so its own fields are known below
        cfg = _switch_variant(cfg, delta[key], f"{where}.{key}")
    types_ = _field_types(type(cfg))
    changes = {}
    for key, value in delta.items():
        if key not in types_:
            raise OccfeatError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(types_))})")
        current = getattr(cfg, key)
        args = typing.get_args(types_[key])
        if typing.get_origin(types_[key]) is dict and len(args) == 2 and _is_variant_base(args[1]):
            changes[key] = _merge_variant_dict(current, value, args[1], f"{where}.{key}")
        elif dataclasses.is_dataclass(current) and isinstance(value, dict):
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


RECIPE_KINDS = ("pretrain", "finetune", "studies")
"""The folders of the shipped recipes, one per kind of config (a config class names its folder in a
``recipe_kind`` class attribute, so a bare ``--recipe NAME`` is looked up there)."""

RECIPE_SUFFIXES = (".yaml", ".yml")


def recipes_root() -> Path:
    """Where the recipes shipped with occfeat are: ``occfeat/recipes`` in an installed wheel (setup.py maps
    the repository's ``recipes/`` there, as it maps ``cli/`` to ``occfeat/cli``), else ``recipes/`` at the
    root of the source checkout this package is in (editable installs included)."""
    package = Path(__file__).resolve().parent
    installed = package / "recipes"
    return installed if installed.is_dir() else package.parent / "recipes"


def recipe_stem(name: str | Path) -> str:
    """A recipe's name without its folder and ``.yaml``; ``lambda-0.1`` keeps its dot (unlike ``Path.stem``)."""
    base = Path(name).name
    return next((base[: -len(s)] for s in RECIPE_SUFFIXES if base.endswith(s)), base)


def find_recipe(name: str | Path, kind: str | None = None) -> Path:
    """The recipe file ``name`` stands for: an existing file as given (a path), else a shipped recipe (see
    :func:`shipped_recipe`). The same command line then works in the repository and from a wheel."""
    path = Path(name)
    return path if path.is_file() else shipped_recipe(name, kind)


def shipped_recipe(name: str | Path, kind: str | None = None) -> Path:
    """A recipe shipped with occfeat (:func:`recipes_root`) by its name: relative to the recipes folder
    (``pretrain/synthetic-tiny.yaml``, also without ``.yaml``, also as the README writes it from the
    repository root, ``recipes/pretrain/...``), or bare (``synthetic-tiny``) in ``kind``'s folder, or
    without a kind in the one folder that has it. Not found or ambiguous: a one-line error with close names.
    """
    root, rel = recipes_root(), _relative_name(name)
    if rel is not None:
        rel = rel if rel.name.endswith(RECIPE_SUFFIXES) else rel.with_name(rel.name + ".yaml")
        if (root / rel).is_file():
            return root / rel
        if len(rel.parts) == 1:
            found = [root / k / rel for k in ([kind] if kind else RECIPE_KINDS) if (root / k / rel).is_file()]
            if len(found) == 1:
                return found[0]
            if found:
                names = ", ".join(f"{f.parent.name}/{recipe_stem(f)}" for f in found)
                raise OccfeatError(f"recipe '{name}' is in several folders of the shipped recipes ({names}); name one of them")
    where = "" if rel is None else f", and no recipe of that name in {kind + '/ of ' if kind else ''}the shipped recipes"
    close = close_recipe_names(name, kind)
    hint = f"close names: {', '.join(close)}" if close else f"the shipped recipes are in {root}"
    raise OccfeatError(f"recipe '{name}' not found: no such file{where}; {hint}")


def _relative_name(name: str | Path) -> Path | None:
    """``name`` relative to the recipes folder (a leading ``recipes/`` dropped); None for an absolute path."""
    path = Path(name)
    parts = path.parts[1:] if path.parts[:1] == ("recipes",) else path.parts
    return None if path.is_absolute() or not parts else Path(*parts)


def close_recipe_names(name: str | Path, kind: str | None = None, n: int = 3) -> list[str]:
    """Shipped recipe names that look like ``name``, for a not-found message: first the same name in
    another folder (``finetune/synthetic-lidar`` asked for as a pretrain recipe), then bare names of
    ``kind`` (``synthetic-tiny``), then folder-qualified names of every kind."""
    root = recipes_root()
    files = sorted(f for k in RECIPE_KINDS if (root / k).is_dir() for f in (root / k).iterdir() if f.name.endswith(RECIPE_SUFFIXES))
    qualified = [f"{f.parent.name}/{recipe_stem(f)}" for f in files]
    rel = _relative_name(name) or Path(name)
    same = [q for f, q in zip(files, qualified) if recipe_stem(f) == recipe_stem(rel)]
    bare = difflib.get_close_matches(recipe_stem(rel), [recipe_stem(f) for f in files if f.parent.name == kind], n=n)
    full = difflib.get_close_matches((rel.parent / recipe_stem(rel)).as_posix(), qualified, n=n)
    return list(dict.fromkeys(same + bare + full))[:n]


def read_recipe(path: str | Path, kind: str | None = None) -> dict:
    """The recipe's delta, with its ``base:`` chain resolved (base first, then this file).

    ``path``: a file or a shipped recipe's name (:func:`find_recipe`). ``base:`` names a file next to the
    recipe (``.yaml`` optional), else a shipped recipe of the same ``kind``, so a recipe of your own can
    build on a shipped one.
    """
    return _read_recipe_chain(find_recipe(path, kind), kind, ())


def _read_recipe_chain(path: Path, kind: str | None, seen: tuple[Path, ...]) -> dict:
    if path.resolve() in seen:
        raise OccfeatError(f"recipe {path}: its base: chain comes back to {path.name}; end the chain at a recipe without base:")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise OccfeatError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise OccfeatError(f"recipe {path} must be a mapping of config keys")
    base = data.pop("base", None)
    if base is None:
        return data
    nearby = [path.parent / str(base)] + ([] if str(base).endswith(RECIPE_SUFFIXES) else [path.parent / f"{base}.yaml"])
    try:
        parent = next((p for p in nearby if p.is_file()), None) or shipped_recipe(str(base), kind)
    except OccfeatError as e:
        raise OccfeatError(f"in recipe {path}: base: {e}") from None
    return deep_update(_read_recipe_chain(parent, kind, (*seen, path.resolve())), data)


def deep_update(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[C], recipe: str | Path | None = None, overrides: list[str] | dict | None = None) -> C:
    """Defaults of ``cls`` ← recipe delta (with its bases) ← overrides. ``recipe``: a file or a shipped
    recipe's name, looked up in the folder of ``cls.recipe_kind`` when it has one (:func:`find_recipe`)."""
    cfg = cls()
    if recipe is not None:
        cfg = merge(cfg, read_recipe(recipe, getattr(cls, "recipe_kind", None)), where=str(recipe))
    if overrides:
        delta = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        cfg = merge(cfg, delta, where="override")
    return cfg


def resolve_saved(cls: type[C], saved: dict, where: str, upgrade=None) -> C:
    """A config saved by an earlier run (``config.yaml``, a checkpoint), re-resolved through today's
    dataclass: today's defaults ← ``upgrade(saved)`` (renames from older schemas, see the owner's
    ``upgrade`` function). A field added since then takes its default, so the saved run still compares
    equal to the same recipe resolved today."""
    delta = upgrade(saved) if upgrade is not None else saved
    default = cls()
    return merge(default, _complete(default, delta), where=where)


def _complete(cfg, saved: dict) -> dict:
    """A saved config is whole, not a delta: a named entry of a ``dict[str, Base]`` field that the saved
    dict lacks was removed (``null``), not left at today's default."""
    if not isinstance(saved, dict) or not dataclasses.is_dataclass(cfg):
        return saved
    types_ = _field_types(type(cfg))
    out = dict(saved)
    for key, value in saved.items():
        if key not in types_:
            continue
        args = typing.get_args(types_[key])
        current = getattr(cfg, key)
        if typing.get_origin(types_[key]) is dict and len(args) == 2 and _is_variant_base(args[1]) and isinstance(value, dict):
            out[key] = {**{name: None for name in current if name not in value}, **value}
        elif dataclasses.is_dataclass(current):
            out[key] = _complete(current, value)
    return out


def to_dict(cfg) -> dict:
    """JSON-able dict of a (nested) dataclass config, for run dirs and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(dump_config(cfg))


def dump_config(cfg) -> str:
    """The resolved config as YAML, as ``--print-config`` shows it and ``config.yaml`` stores it."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
