"""The static devkit tables (category, attribute, visibility, sensor) and token generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# nuScenes' 23 categories, with their lidarseg indices.
CATEGORIES: tuple[str, ...] = (
    "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle",
    "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
)
ATTRIBUTES: tuple[str, ...] = (
    "vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
    "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving",
)
# nuScenes' visibility bins: fraction of the annotation visible over all six images.
VISIBILITY: tuple[tuple[str, str, float], ...] = (
    ("1", "v0-40", 0.4), ("2", "v40-60", 0.6), ("3", "v60-80", 0.8), ("4", "v80-100", 1.01),
)


class Tokens:
    """32-hex-digit tokens from a seeded generator: same seed → same tokens, in the same order."""

    def __init__(self, *seed: int):
        self.rng = np.random.default_rng(list(seed))

    def __call__(self) -> str:
        return self.rng.bytes(16).hex()


def visibility_token(fraction: float) -> str:
    for token, _, upper in VISIBILITY:
        if fraction < upper:
            return token
    return VISIBILITY[-1][0]


def attribute_name(category: str, moving: bool, stopped_in_traffic: bool) -> str:
    if category.startswith("human.pedestrian"):
        return "pedestrian.moving" if moving else "pedestrian.standing"
    if category in ("vehicle.bicycle", "vehicle.motorcycle"):
        return "cycle.with_rider" if moving or stopped_in_traffic else "cycle.without_rider"
    if moving:
        return "vehicle.moving"
    return "vehicle.stopped" if stopped_in_traffic else "vehicle.parked"


def static_tables(tokens: Tokens, channels: list[tuple[str, str]]) -> dict[str, list[dict]]:
    """category, attribute, visibility and sensor tables. channels: (channel, modality)."""
    return {
        "category": [{"token": tokens(), "name": n, "description": n.replace(".", " "), "index": i + 1}
                     for i, n in enumerate(CATEGORIES)],
        "attribute": [{"token": tokens(), "name": n, "description": n.replace(".", " ")} for n in ATTRIBUTES],
        "visibility": [{"token": t, "level": lvl, "description": f"visibility of whole object is between "
                        f"{lvl[1:].split('-')[0]} and {lvl.split('-')[1]} %"} for t, lvl, _ in VISIBILITY],
        "sensor": [{"token": tokens(), "channel": c, "modality": m} for c, m in channels],
    }


def write_tables(folder: Path, tables: dict[str, list[dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in tables.items():
        (folder / f"{name}.json").write_text(json.dumps(records, indent=1))
