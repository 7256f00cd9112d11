"""occfeat.config's fields whose dataclass is chosen by name: a ``dict[str, Base]`` field (one entry per
name, e.g. a pretraining's objectives) and a plain field keyed by ``variant_key`` (e.g. ``network.arch``).
Small test-only dataclasses stand in for the real ones."""

from dataclasses import dataclass, field

import pytest
import yaml

from occfeat.config import Variants, load_config, merge, resolve_saved, to_dict
from occfeat.errors import OccfeatError


@dataclass
class Part(Variants):
    weight: float = 1.0

    @classmethod
    def variants(cls) -> dict[str, type]:
        return {"a": PartA, "b": PartB}


@dataclass
class PartA(Part):
    size: int = 3


@dataclass
class PartB(Part):
    mode: str = "x"


@dataclass
class Shape(Variants):
    variant_key = "kind"
    kind: str = "box"
    scale: float = 1.0

    @classmethod
    def variants(cls) -> dict[str, type]:
        return {"box": Box, "ball": Ball}


@dataclass
class Box(Shape):
    sides: int = 6


@dataclass
class Ball(Shape):
    kind: str = "ball"
    radius: float = 0.5


@dataclass
class Holder:
    parts: dict[str, Part] = field(default_factory=lambda: {"a": PartA()})
    shape: Shape = field(default_factory=Box)


def test_a_name_picks_the_class_and_a_mapping_merges_into_the_entry():
    cfg = merge(Holder(), {"parts": {"b": {"mode": "y"}, "a": {"size": 5}}})
    assert cfg.parts == {"a": PartA(size=5), "b": PartB(mode="y")} and type(cfg.parts["b"]) is PartB
    cfg = merge(cfg, {"parts": {"a": {"weight": 2}}})  # merges into the entry: size stays
    assert cfg.parts["a"] == PartA(weight=2.0, size=5) and isinstance(cfg.parts["a"].weight, float)
    assert merge(Holder(), {"parts": {"b": True}}).parts == {"a": PartA(), "b": PartB()}  # a bare switch-on
    assert Holder().parts == {"a": PartA()}  # the default is never mutated


def test_null_removes_an_entry():
    assert merge(Holder(), {"parts": {"a": None}}).parts == {}
    assert merge(Holder(), {"parts": {"b": None}}).parts == {"a": PartA()}  # removing an absent one is a no-op


def test_unknown_names_and_keys_are_one_line_errors_listing_the_known_ones():
    with pytest.raises(OccfeatError, match=r"^override\.parts: unknown name 'c' \(known: a, b\)$") as e:
        load_config(Holder, None, ["parts.c.size=1"])
    assert "\n" not in str(e.value)
    with pytest.raises(OccfeatError, match=r"^config\.parts\.a: unknown key 'mode' \(known: size, weight\)$"):
        merge(Holder(), {"parts": {"a": {"mode": "y"}}})
    with pytest.raises(OccfeatError, match=r"config\.parts: expected a mapping of names to settings \(known names: a, b\)"):
        merge(Holder(), {"parts": ["a"]})
    with pytest.raises(OccfeatError, match=r"config\.parts\.a: expected a mapping of settings \(or null to remove it\)"):
        merge(Holder(), {"parts": {"a": 3}})


def test_the_variant_key_switches_a_plain_field_carrying_shared_fields():
    cfg = merge(Holder(), {"shape": {"scale": 2, "sides": 4}})
    cfg = merge(cfg, {"shape": {"kind": "ball", "radius": 1}})
    assert cfg.shape == Ball(scale=2.0, radius=1.0)  # scale carried over, Box's sides dropped
    assert merge(cfg, {"shape": {"kind": "ball"}}).shape == Ball(scale=2.0, radius=1.0)  # same kind: its knobs stay
    with pytest.raises(OccfeatError, match=r"config\.shape: unknown key 'sides'"):
        merge(cfg, {"shape": {"sides": 3}})
    with pytest.raises(OccfeatError, match=r"config\.shape\.kind: unknown kind 'cone' \(known: ball, box\)"):
        merge(cfg, {"shape": {"kind": "cone"}})


def test_a_saved_config_resolves_back_to_the_same_dataclasses():
    cfg = merge(Holder(), {"parts": {"a": {"size": 7}, "b": {"mode": "z"}}, "shape": {"kind": "ball", "radius": 2}})
    saved = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    assert resolve_saved(Holder, saved, "saved") == cfg


def test_a_saved_config_keeps_an_entry_removed_from_the_defaults():
    cfg = merge(Holder(), {"parts": {"a": None, "b": {}}})
    assert resolve_saved(Holder, to_dict(cfg), "saved").parts == {"b": PartB()}
