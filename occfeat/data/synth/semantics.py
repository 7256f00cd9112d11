"""Per-pixel semantic labels that ``occfeat synth`` writes beside each camera JPEG.

For every camera image ``DATAROOT/<filename>`` (the sample_data ``filename``), a PNG
``DATAROOT/occfeat_semantics/<filename with .jpg replaced by .png>``, the same size as the JPEG, mode "L"
(uint8), one class id per pixel; the id indexes :data:`SEMANTIC_CLASSES`. The nuScenes devkit ignores the
folder. ``occfeat extract --teacher semantic-standin`` reads these labels.
"""

from __future__ import annotations

from pathlib import Path

SEMANTIC_CLASSES = (
    "sky", "road", "lane_marking", "crosswalk", "sidewalk", "parking", "terrain", "building", "vegetation", "pole",
    "car", "large_vehicle", "two_wheeler", "pedestrian",
)  # fmt: skip
"""Class names; a pixel's label is the index of its class."""
SEMANTICS_DIR = "occfeat_semantics"
"""The sidecar folder at the top of the dataroot."""


def semantics_path(dataroot: str | Path, filename: str) -> Path:
    """The label PNG of the camera image ``DATAROOT/filename`` (``filename`` as in sample_data)."""
    return Path(dataroot) / SEMANTICS_DIR / Path(filename).with_suffix(".png")
