"""Pretraining objectives: one file per objective (its config, per-sample inputs, head, loss and stamp).

A pretraining config lists objectives by name with their settings (``objectives: {occupancy: {weight: 1},
features: {weight: 0.01}}`` is OccFeat, paper eq. 1); the total loss is the weighted sum of their terms.
Every module of this package that defines an :class:`~occfeat.objectives.base.Objective` subclass with a
``name`` is found by :func:`registry`: adding an objective is one new file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from occfeat.objectives.base import Objective, ObjectiveConfig, SampleInput, Sources

_REGISTRY: dict[str, type[Objective]] = {}


def registry() -> dict[str, type[Objective]]:
    """name → Objective class, for every objective defined in this package (modules imported once)."""
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        found: dict[str, type[Objective]] = {}
        stack = list(Objective.__subclasses__())
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            if getattr(cls, "name", None) and cls.__module__.startswith(__name__ + "."):
                if cls.name in found and found[cls.name] is not cls:
                    raise RuntimeError(f"two objectives are named {cls.name!r}: {found[cls.name]} and {cls}")
                found[cls.name] = cls
        _REGISTRY.update(sorted(found.items()))
    return _REGISTRY


__all__ = ["Objective", "ObjectiveConfig", "SampleInput", "Sources", "registry"]
