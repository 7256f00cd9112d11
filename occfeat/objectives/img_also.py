"""Img-ALSO (paper §4.2, Table 1's baseline): ALSO's self-supervised occupancy pretext (Boulch et al.,
CVPR 2023) with the LiDAR backbone replaced by the camera BEV network. Query points on the LiDAR lines of
sight are classified as empty (in front of the return) or occupied (just behind it) by an implicit decoder
on F_B, each (query, BEV cell within 1 m) pair on its own, as ALSO's SECOND variant.

The geometry and the decoder are pure functions and one module (:mod:`occfeat.objectives.also_queries`,
:mod:`occfeat.objectives.also_decoder`); what was taken from ALSO and what was adapted: docs/fidelity.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from occfeat.data.occupancy import points_in_frame
from occfeat.errors import OccfeatError
from occfeat.objectives.also_decoder import AlsoDecoder, also_loss
from occfeat.objectives.also_queries import (
    DECIMATION_CELL,
    MAX_QUERY_DIST,
    N_QUERIES,
    RECONSTRUCTION_RADIUS,
    decimate,
    line_of_sight_queries,
)
from occfeat.objectives.base import Context, Objective, ObjectiveConfig, SampleInput


class LineOfSight(SampleInput):
    """``also_points`` (M, 3) float32 query points in R and ``also_occupied`` (M,) uint8 labels, from the
    cached LiDAR points moved into R (decimated) and the key-frame sensor's position in R. Ragged: the
    collate pads them and adds ``also_points_mask`` / ``also_occupied_mask``."""

    ragged = ("also_points", "also_occupied")

    def __init__(self, n_queries: int, max_dist: float, decimation: float):
        self.n_queries, self.max_dist, self.decimation = n_queries, max_dist, decimation

    def __call__(self, sources, rig, ref_T_ego, rng) -> dict[str, torch.Tensor]:
        points = points_in_frame(sources.occupancy.points(rig.token).astype(np.float64), ref_T_ego)
        origin = (np.asarray(ref_T_ego, np.float64) @ np.append(rig.lidar_origin, 1.0))[:3]
        kept = points[decimate(points, self.decimation)]
        q = line_of_sight_queries(kept, origin, rng, self.n_queries, self.max_dist)
        return {"also_points": torch.from_numpy(q.points), "also_occupied": torch.from_numpy(q.occupied)}


@dataclass
class ImgAlsoConfig(ObjectiveConfig):
    """Img-ALSO's settings: ALSO's hyper-parameters as the OccFeat paper states them (§4.2)."""

    decimation: float = DECIMATION_CELL
    """Decimation grid of the LiDAR points the queries are drawn from, in metres (paper: 10 cm)."""
    max_query_dist: float = MAX_QUERY_DIST
    """Maximal distance of a near-surface query to its LiDAR point along the line of sight, in metres (paper: 10 cm)."""
    radius: float = RECONSTRUCTION_RADIUS
    """Reconstruction radius: a query is decoded from every BEV cell whose centre is within it in (x, y) (paper: 1 m)."""
    queries: int = N_QUERIES
    """Query points per sample (ALSO's SECOND configs: non_manifold_points 4096)."""
    hidden: int | None = None
    """Width of the decoder MLP; None: N_B (ALSO's latent_size 128 = N_B of the paper's networks)."""


class ImgAlso(Objective):
    """ALSO's per-pair implicit decoder on F_B; loss = BCE over all (query, support) pairs."""

    name = "img_also"
    label = "Img-ALSO"
    Config = ImgAlsoConfig
    sources = ("occupancy",)

    @classmethod
    def resolve(cls, cfg: ImgAlsoConfig, sources) -> ImgAlsoConfig:
        cfg = super().resolve(cfg, sources)
        if sources.occupancy.sweeps != 1:
            raise OccfeatError(
                f"objective 'img_also' draws its queries on the lines of sight of the key-frame sweep, but the occupancy cache "
                f"{sources.occupancy.path} holds {sources.occupancy.sweeps} sweeps; build one with `occfeat voxelize --sweeps 1`"
            )
        for key in ("decimation", "max_query_dist", "radius"):
            if not getattr(cfg, key) > 0:
                raise OccfeatError(f"objectives.img_also.{key}={getattr(cfg, key)} must be > 0 (metres)")
        if cfg.queries < 3:
            raise OccfeatError(f"objectives.img_also.queries={cfg.queries} must be >= 3 (one per query group)")
        return cfg

    def __init__(self, cfg: ImgAlsoConfig, grid, bev_channels: int, image_channels: int = 128):
        super().__init__(cfg, grid, bev_channels, image_channels)
        self.decoder = AlsoDecoder(bev_channels, cfg.hidden, cfg.radius)

    def inputs(self) -> list[SampleInput]:
        return [LineOfSight(self.cfg.queries, self.cfg.max_query_dist, self.cfg.decimation)]

    def forward(self, ctx: Context, batch: dict) -> dict[str, torch.Tensor]:
        pred = self.decoder(ctx.bev, batch["also_points"], batch["also_points_mask"], self.grid)
        return {"loss_img_also": also_loss(pred.occupancy, batch["also_occupied"], pred.mask)}
