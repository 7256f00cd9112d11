"""The map of the synthetic world in the nuScenes map-expansion format (schema 1.3), and the
``map`` table's drivable-area mask PNG. Built from the same ``Layout`` arrays as the ground shader.

Layers filled: drivable_area, road_segment, road_block, lane, ped_crossing, walkway, stop_line,
carpark_area, road_divider, lane_divider; traffic_light, lane_connector, arcline_path_3 and
connectivity are present and empty. Roads are axis-aligned, so every polygon is a rectangle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from occfeat.data.synth.tables import Tokens
from occfeat.data.synth.world import Layout

MASK_RESOLUTION = 0.1  # metres per pixel, as nuScenes' semantic prior


class _MapBuilder:
    def __init__(self, tokens: Tokens):
        self.t = tokens
        self.layers: dict[str, list] = {k: [] for k in (
            "node", "line", "polygon", "drivable_area", "road_segment", "road_block", "lane", "ped_crossing",
            "walkway", "stop_line", "carpark_area", "road_divider", "lane_divider", "traffic_light", "lane_connector")}

    def nodes(self, pts) -> list[str]:
        out = []
        for x, y in pts:
            tok = self.t()
            self.layers["node"].append({"token": tok, "x": float(x), "y": float(y)})
            out.append(tok)
        return out

    def rect(self, x0, x1, y0, y1) -> str:
        tok = self.t()
        self.layers["polygon"].append({"token": tok, "exterior_node_tokens": self.nodes(
            [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]), "holes": []})
        return tok

    def line(self, pts) -> tuple[str, list[str]]:
        tok, nodes = self.t(), self.nodes(pts)
        self.layers["line"].append({"token": tok, "node_tokens": nodes})
        return tok, nodes

    def add(self, layer: str, **record) -> str:
        tok = self.t()
        self.layers[layer].append({"token": tok, **record})
        return tok


def _xy(axis: int, along: float, across: float) -> tuple[float, float]:
    return (along, across) if axis == 0 else (across, along)


def _rect(axis: int, a0: float, a1: float, c0: float, c1: float) -> tuple[float, float, float, float]:
    """Axis-aligned rectangle from along/across ranges → (x0, x1, y0, y1)."""
    (x0, y0), (x1, y1) = _xy(axis, min(a0, a1), min(c0, c1)), _xy(axis, max(a0, a1), max(c0, c1))
    return x0, x1, y0, y1


def build_map(layout: Layout, tokens: Tokens) -> dict:
    s, ext = layout.spec, layout.spec.extent
    hw, c = layout.half_widths, layout.centers
    m = _MapBuilder(tokens)
    da_polys = []
    da_token = tokens()
    for axis in (0, 1):
        for k, ck in enumerate(c):
            da_polys.append(m.rect(*_rect(axis, 0.0, ext, ck - hw[axis, k], ck + hw[axis, k])))
            cross_hw = hw[1 - axis]
            # stretches between intersections (and from the map edges to the first/last one)
            edges = [0.0] + [e for j, cj in enumerate(c) for e in (cj - cross_hw[j], cj + cross_hw[j])] + [ext]
            for a0, a1 in zip(edges[0::2], edges[1::2]):
                seg = m.add("road_segment", polygon_token=m.rect(*_rect(axis, a0, a1, ck - hw[axis, k], ck + hw[axis, k])),
                            is_intersection=False, drivable_area_token=da_token)
                div, _ = m.line([_xy(axis, a0, ck), _xy(axis, a1, ck)])
                m.add("road_divider", line_token=div, road_segment_token=seg)
                for d in (-1, 1):
                    lanes = int(layout.lanes[axis, k])
                    acr = [layout.lane_across(axis, k, d, ln) for ln in range(lanes)]
                    lo = min(acr) - s.lane_width / 2
                    m.add("road_block", polygon_token=m.rect(*_rect(axis, a0, a1, lo, lo + lanes * s.lane_width)),
                          from_edge_line_token="", to_edge_line_token="", road_segment_token=seg)
                    for ln, a in enumerate(acr):
                        m.add("lane", polygon_token=m.rect(*_rect(axis, a0, a1, a - s.lane_width / 2, a + s.lane_width / 2)),
                              lane_type="CAR", from_edge_line_token="", to_edge_line_token="",
                              left_lane_divider_segments=[], right_lane_divider_segments=[])
                    for ln in range(1, lanes):  # between same-direction lanes
                        a = (acr[ln - 1] + acr[ln]) / 2
                        tok, nodes = m.line([_xy(axis, a0, a), _xy(axis, a1, a)])
                        m.add("lane_divider", line_token=tok, lane_divider_segments=[
                            {"node_token": n, "segment_type": "DOUBLE_DASHED_WHITE"} for n in nodes])
            # sidewalks on both sides, between the cross roads
            for side in (-1, 1):
                near, far = ck + side * hw[axis, k], ck + side * (hw[axis, k] + s.sidewalk_width)
                for a0, a1 in zip(edges[0::2], edges[1::2]):
                    m.add("walkway", polygon_token=m.rect(*_rect(axis, a0, a1, near, far)))
    for i, ci in enumerate(c):  # intersections, crossings, stop lines
        for j, cj in enumerate(c):
            x0, x1, y0, y1 = cj - hw[1, j], cj + hw[1, j], ci - hw[0, i], ci + hw[0, i]
            m.add("road_segment", polygon_token=m.rect(x0, x1, y0, y1), is_intersection=True, drivable_area_token=da_token)
            for axis, k, centre, cross_hw in ((0, i, cj, hw[1, j]), (1, j, ci, hw[0, i])):
                for side in (-1, 1):
                    z0 = centre + side * (cross_hw + s.crossing_gap)
                    z1 = z0 + side * s.crossing_width
                    pc = m.add("ped_crossing", polygon_token=m.rect(*_rect(axis, z0, z1, c[k] - hw[axis, k], c[k] + hw[axis, k])),
                               road_segment_token="")
                    l0 = z1 + side * s.stop_gap
                    # incoming traffic travels towards the intersection: direction -side
                    acr = [layout.lane_across(axis, k, -side, ln) for ln in range(int(layout.lanes[axis, k]))]
                    lo, hi = min(acr) - s.lane_width / 2, max(acr) + s.lane_width / 2
                    m.add("stop_line", polygon_token=m.rect(*_rect(axis, l0, l0 + side * s.stop_width, lo, hi)),
                          stop_line_type="PED_CROSSING", ped_crossing_tokens=[pc], traffic_light_tokens=[],
                          road_block_token="")
    for x0, x1, y0, y1, pax, _near, _d in layout.carparks:
        poly = m.rect(x0, x1, y0, y1)
        da_polys.append(poly)
        m.add("carpark_area", polygon_token=poly, orientation=0.0 if pax == 0 else float(np.pi / 2), road_block_token="")
    m.layers["drivable_area"].append({"token": da_token, "polygon_tokens": da_polys})
    return {"version": "1.3", "canvas_edge": [ext, ext], **m.layers, "arcline_path_3": {}, "connectivity": {}}


def drivable_mask(layout: Layout) -> np.ndarray:
    """(H, W) uint8 0/255 drivable area at MASK_RESOLUTION; row 0 is the map's top (largest y)."""
    n = int(round(layout.spec.extent / MASK_RESOLUTION))
    centres = (np.arange(n) + 0.5) * MASK_RESOLUTION
    hw = layout.half_widths
    on_x = np.zeros(n, bool)  # columns on a road along y
    on_y = np.zeros(n, bool)  # rows (by y) on a road along x
    for k, ck in enumerate(layout.centers):
        on_y |= np.abs(centres - ck) < hw[0, k]
        on_x |= np.abs(centres - ck) < hw[1, k]
    mask = on_y[:, None] | on_x[None, :]  # [iy, ix]
    for x0, x1, y0, y1, *_ in layout.carparks:
        mask[np.ix_((centres >= y0) & (centres < y1), (centres >= x0) & (centres < x1))] = True
    return (mask[::-1] * 255).astype(np.uint8)


def write_map(root: Path, layout: Layout, map_name: str, tokens: Tokens) -> str:
    """Writes maps/expansion/<map>.json and maps/<token>.png; returns the mask's relative filename."""
    (root / "maps" / "expansion").mkdir(parents=True, exist_ok=True)
    (root / "maps" / "expansion" / f"{map_name}.json").write_text(json.dumps(build_map(layout, tokens)))
    filename = f"maps/{tokens()}.png"
    Image.fromarray(drivable_mask(layout), mode="L").save(root / filename, optimize=False)
    return filename
