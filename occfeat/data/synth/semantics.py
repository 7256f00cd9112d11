"""Per-pixel semantic labels that ``occfeat synth`` writes beside each camera image.

For every camera image ``DATAROOT/<filename>`` (the sample_data ``filename``, e.g.
``samples/CAM_FRONT/x.jpg``) there is a PNG ``DATAROOT/occfeat_semantics/<filename, .jpg → .png>``
of the same width and height, mode "L" (uint8), holding one class id per pixel: the index into
``SEMANTIC_CLASSES`` of what the camera ray hit first. The nuScenes devkit ignores the folder.

How the renderer's materials map onto the classes (``GROUND_CLASS``, ``KIND_CLASS``):
ground: asphalt → road; white and yellow paint → lane_marking (car-park bay lines are white paint
too, so they are lane_marking, not parking); the white stripes of a zebra crossing → crosswalk (the
asphalt between the stripes stays road); sidewalk → sidewalk; car-park surface → parking; grass →
terrain. Boxes: vehicle.car → car; truck, bus, trailer, construction →
large_vehicle; motorcycle, bicycle → two_wheeler; pedestrian → pedestrian; building → building;
tree trunk and crown → vegetation; pole → pole. A ray that hits nothing → sky.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from occfeat.data.synth.world import (
    ASPHALT, CARPARK, GRASS, KIND_BIG, KIND_BUILDING, KIND_CAR, KIND_CROWN, KIND_PED, KIND_POLE, KIND_TRUNK,
    KIND_TWO_WHEEL, SIDEWALK, WHITE_PAINT, YELLOW_PAINT, ZEBRA,
)

SEMANTIC_CLASSES: tuple[str, ...] = (
    "sky", "road", "lane_marking", "crosswalk", "sidewalk", "parking", "terrain", "building", "vegetation", "pole",
    "car", "large_vehicle", "two_wheeler", "pedestrian",
)
"""Class names; the index is the class id stored in the PNGs."""
SEMANTICS_DIR = "occfeat_semantics"
"""Top-level folder of the dataroot that holds the label PNGs (a mirror of the camera folders)."""


def semantics_path(dataroot: str | Path, filename: str) -> Path:
    """The label PNG of the camera image ``filename`` (relative to ``dataroot``, as in sample_data)."""
    return Path(dataroot) / SEMANTICS_DIR / PurePosixPath(filename).with_suffix(".png")


def _ids(table: dict[int, str]) -> np.ndarray:
    out = np.zeros(max(table) + 1, dtype=np.uint8)
    for index, name in table.items():
        out[index] = SEMANTIC_CLASSES.index(name)
    return out


GROUND_CLASS = _ids({GRASS: "terrain", ASPHALT: "road", SIDEWALK: "sidewalk", ZEBRA: "crosswalk",
                     WHITE_PAINT: "lane_marking", YELLOW_PAINT: "lane_marking", CARPARK: "parking"})
"""Class id of each ground material (indexed by the material ids of ``world``)."""
KIND_CLASS = _ids({KIND_CAR: "car", KIND_BIG: "large_vehicle", KIND_TWO_WHEEL: "two_wheeler", KIND_PED: "pedestrian",
                   KIND_BUILDING: "building", KIND_TRUNK: "vegetation", KIND_CROWN: "vegetation", KIND_POLE: "pole"})
"""Class id of each box kind (indexed by the kind ids of ``world``)."""
SKY = SEMANTIC_CLASSES.index("sky")
