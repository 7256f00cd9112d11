"""Img-ALSO's pretext on hand-made rays: decimation, line-of-sight queries, BEV supports, decoder, loss."""

import math

import numpy as np
import pytest
import torch

from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.objectives.also_decoder import AlsoDecoder, also_intensity_loss, also_loss
from occfeat.objectives.also_queries import (
    NO_INTENSITY,
    decimate,
    line_of_sight_queries,
    query_supports,
    support_window,
)

GRID_1M = BevGrid(bounds=((-25.0, 25.0), (-25.0, 25.0), (-4.5, 5.5)), shape=(50, 50, 8))
GRID_HALF = BevGrid(bounds=((-6.0, 6.0), (-5.0, 5.0), (-4.5, 5.5)), shape=(24, 20, 8))  # 0.5 m cells, paper's size

# Returns on four well-separated rays, at known distances from the sensor.
RAYS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.6, 0.0, 0.8], [0.6, -0.8, 0.0]])
DISTANCES = np.array([5.0, 10.0, 20.0, 2.5])


def _rays_from(origin):
    return (origin + RAYS * DISTANCES[:, None]).astype(np.float32)


# ---- decimation ----

def test_decimate_keeps_the_first_point_of_each_10cm_cell():
    pts = np.array([
        [0.01, 0.02, 0.03],   # cell (0, 0, 0)
        [0.09, 0.05, 0.01],   # same cell: dropped
        [0.11, 0.02, 0.03],   # cell (1, 0, 0)
        [-0.01, 0.02, 0.03],  # cell (-1, 0, 0): floor, not truncation toward 0
        [0.15, 0.08, 0.099],  # cell (1, 0, 0) again: dropped
        [5.0, -3.0, 1.0],
    ])
    kept = decimate(pts, 0.10)
    assert kept.tolist() == [0, 2, 3, 5]


def test_decimate_one_point_per_cell_on_a_random_cloud():
    pts = np.random.default_rng(0).uniform(-2, 2, size=(5000, 3))
    kept = decimate(pts, 0.10)
    cells_all = {tuple(c) for c in np.floor(pts / 0.10).astype(int)}
    cells_kept = [tuple(c) for c in np.floor(pts[kept] / 0.10).astype(int)]
    assert len(cells_kept) == len(set(cells_kept)) == len(cells_all)
    with pytest.raises(OccfeatError):
        decimate(pts, 0.0)


# ---- line-of-sight queries ----

def _match(queries, origin, points):
    """For each query: index of the ray it lies on, its distance to the sensor, its distance off the ray."""
    rel = queries.astype(np.float64) - origin
    dirs = (points - origin) / np.linalg.norm(points - origin, axis=1, keepdims=True)
    ray = np.argmax(rel @ dirs.T, axis=1)
    along = np.einsum("md,md->m", rel, dirs[ray])
    off = np.linalg.norm(rel - along[:, None] * dirs[ray], axis=1)
    return ray, along, off


@pytest.mark.parametrize("origin", [np.zeros(3), np.array([0.9, -0.3, 1.84])])
def test_queries_lie_on_the_lines_of_sight_with_the_right_labels(origin):
    pts = _rays_from(origin)
    q = line_of_sight_queries(pts, origin, np.random.default_rng(1), n_queries=12, max_dist=0.10)
    assert q.points.shape == (12, 3) and q.points.dtype == np.float32
    ray, along, off = _match(q.points, origin, pts.astype(np.float64))
    assert off.max() < 1e-5  # on the sensor -> return line
    d = DISTANCES[ray]
    behind, front, far = slice(0, 4), slice(4, 8), slice(8, 12)
    # every return is used once per group (4 returns, 4 queries per group)
    assert sorted(ray[behind]) == sorted(ray[front]) == sorted(ray[far]) == [0, 1, 2, 3]
    eps = 1e-5
    assert np.all((along[behind] >= d[behind] - eps) & (along[behind] <= d[behind] + 0.10 + eps))
    assert np.all((along[front] <= d[front] + eps) & (along[front] >= d[front] - 0.10 - eps))
    assert np.all((along[far] >= -eps) & (along[far] <= d[far] + eps))
    assert q.occupied.tolist() == [1] * 4 + [0] * 8  # behind the surface = occupied, in front = empty
    # "within 10 cm of its point" for the near-surface queries
    near = np.linalg.norm(q.points[:8] - pts[ray[:8]], axis=1)
    assert near.max() <= 0.10 + 1e-5


def test_query_counts_follow_also_split_and_shrink_with_few_points():
    pts = _rays_from(np.zeros(3))
    q = line_of_sight_queries(pts, np.zeros(3), np.random.default_rng(0), n_queries=10)
    assert q.occupied.tolist() == [1] * 4 + [0] * 6  # n - 2*(n//3) behind, n//3 in front, n//3 far
    q = line_of_sight_queries(pts[:2], np.zeros(3), np.random.default_rng(0), n_queries=12)
    assert q.occupied.tolist() == [1] * 2 + [0] * 4  # each group draws without replacement
    q = line_of_sight_queries(np.zeros((0, 3)), np.zeros(3), np.random.default_rng(0), n_queries=12)
    assert q.points.shape == (0, 3)


def test_queries_are_deterministic_given_the_generator():
    pts = np.random.default_rng(5).uniform(-20, 20, size=(300, 3)).astype(np.float32)
    a = line_of_sight_queries(pts, np.zeros(3), np.random.default_rng(7), n_queries=99)
    b = line_of_sight_queries(pts, np.zeros(3), np.random.default_rng(7), n_queries=99)
    c = line_of_sight_queries(pts, np.zeros(3), np.random.default_rng(8), n_queries=99)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.occupied, b.occupied)
    assert not np.array_equal(a.points, c.points)


def test_intensity_targets_near_the_surface_only():
    origin = np.zeros(3)
    pts = _rays_from(origin)
    inten = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    q = line_of_sight_queries(pts, origin, np.random.default_rng(3), n_queries=12, intensities=inten)
    ray, _, _ = _match(q.points, origin, pts.astype(np.float64))
    np.testing.assert_allclose(q.intensity[:8], inten[ray[:8]])
    assert np.all(q.intensity[8:] == NO_INTENSITY)
    assert np.all(line_of_sight_queries(pts, origin, np.random.default_rng(3), 12).intensity == NO_INTENSITY)
    with pytest.raises(OccfeatError):
        line_of_sight_queries(pts, origin, np.random.default_rng(3), 12, intensities=inten[:2])


# ---- supports within the reconstruction radius ----

@pytest.mark.parametrize("grid", [GRID_1M, GRID_HALF])
def test_supports_are_exactly_the_cells_within_1m(grid):
    rng = np.random.default_rng(2)
    lo, hi = grid.lower[:2] - 1.5, grid.upper[:2] + 1.5  # some queries beyond the border
    q = np.concatenate([rng.uniform(lo, hi, size=(200, 2)), rng.uniform(-3, 3, size=(200, 1))], axis=1)
    cells, offsets, mask = query_supports(torch.tensor(q[None], dtype=torch.float32), grid, 1.0)
    centres = grid.bev_centers().reshape(-1, 2)
    qf = torch.tensor(q, dtype=torch.float32).double().numpy()
    for m in range(len(q)):
        dist = np.linalg.norm(centres - qf[m, :2], axis=1)
        expected = set(np.nonzero(dist <= 1.0)[0].tolist())
        got = cells[0, m][mask[0, m]].tolist()
        assert len(got) == len(set(got)) and set(got) == expected
        rel = offsets[0, m][mask[0, m]].numpy()
        np.testing.assert_allclose(rel[:, :2], qf[m, :2] - centres[got], atol=1e-5)
        np.testing.assert_allclose(rel[:, 2], qf[m, 2], atol=1e-5)  # supports at z = 0


def test_support_window_and_a_query_with_no_support():
    assert support_window(GRID_HALF, 1.0).shape == (25, 2) and support_window(GRID_1M, 1.0).shape == (9, 2)
    coarse = BevGrid(bounds=((-10.0, 10.0), (-10.0, 10.0), (-4.5, 5.5)), shape=(10, 10, 8))  # 2 m cells
    q = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [30.0, 0.0, 0.0]]])  # a centre; a corner; outside
    _, _, mask = query_supports(q, coarse, 1.0)
    assert mask[0].sum(dim=1).tolist() == [1, 0, 0]


# ---- decoder and loss ----

def _reference_decoder(dec, bev, queries, grid):
    """Slow reference: ALSO's per-pair concat -> MLP, by brute force over every cell."""
    centres = torch.tensor(grid.bev_centers().reshape(-1, 2), dtype=torch.float32)
    feats = bev.flatten(2).transpose(1, 2)  # (B, X*Y, C)
    out = {}
    for b in range(queries.shape[0]):
        for m in range(queries.shape[1]):
            d = queries[b, m, :2] - centres
            for n in torch.nonzero(d.norm(dim=1) <= dec.radius)[:, 0].tolist():
                rel = torch.cat([d[n], queries[b, m, 2:3]])
                h = dec.fc_in(torch.cat([feats[b, n], rel]))
                for layer in dec.mlp:
                    h = layer(torch.relu(h))
                out[(b, m, n)] = dec.fc_out(h)
    return out


def test_decoder_matches_the_per_pair_reference_and_masks_padding():
    torch.manual_seed(0)
    grid = GRID_HALF
    dec = AlsoDecoder(bev_channels=8, hidden=16)
    bev = torch.randn(2, 8, *grid.shape[:2], requires_grad=True)
    queries = torch.tensor(np.random.default_rng(4).uniform(-4, 4, size=(2, 6, 3)), dtype=torch.float32)
    qmask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    pred = dec(bev, queries, qmask, grid)
    k = len(support_window(grid, 1.0))
    assert pred.occupancy.shape == pred.intensity.shape == pred.mask.shape == (2, 6, k)
    assert not pred.mask[1, 4:].any() and torch.all(pred.occupancy[~pred.mask] == 0)
    cells, _, _ = query_supports(queries, grid, 1.0)
    ref = _reference_decoder(dec, bev, queries, grid)
    got = {(b, m, int(cells[b, m, j])): torch.stack([pred.occupancy[b, m, j], pred.intensity[b, m, j]])
           for b, m, j in pred.mask.nonzero().tolist()}
    expected = {key: v for key, v in ref.items() if qmask[key[0], key[1]]}
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)


def test_gradients_reach_exactly_the_supporting_bev_cells():
    torch.manual_seed(1)
    grid = GRID_1M
    dec = AlsoDecoder(bev_channels=4, hidden=32)
    bev = torch.randn(1, 4, *grid.shape[:2], requires_grad=True)
    queries = torch.tensor([[[0.3, 0.4, 0.5], [10.2, -7.7, 1.0]]])
    pred = dec(bev, queries, torch.ones(1, 2, dtype=torch.bool), grid)
    also_loss(pred.occupancy, torch.tensor([[1.0, 0.0]]), pred.mask).backward()
    touched = set(torch.nonzero(bev.grad[0].abs().sum(dim=0).flatten() > 0)[:, 0].tolist())
    cells, _, mask = query_supports(queries, grid, 1.0)
    assert touched == set(cells[mask].tolist()) and len(touched) >= 2



def test_gradients_are_bit_reproducible_when_many_pairs_share_a_cell():
    """Thousands of pairs per cell (a 1 m grid, queries crowded near the ego): the backward must sum them in
    a fixed order, or two identical runs drift apart and --resume cannot continue a run exactly."""
    torch.manual_seed(2)
    dec = AlsoDecoder(bev_channels=8, hidden=16)
    bev = torch.randn(2, 8, *GRID_1M.shape[:2], requires_grad=True)
    queries = torch.rand(2, 4000, 3) * 6 - 3
    labels = (torch.rand(2, 4000) > 0.5).float()

    def grad():
        bev.grad = None
        pred = dec(bev, queries, torch.ones(2, 4000, dtype=torch.bool), GRID_1M)
        also_loss(pred.occupancy, labels, pred.mask).backward()
        return bev.grad.clone()

    first = grad()
    assert all(torch.equal(first, grad()) for _ in range(4))

def test_loss_equals_hand_computed_bce():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 5.0]]])
    occupied = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[[True, True], [True, False]]])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (softplus(-0.0) + softplus(-2.0) + softplus(-1.0)) / 3  # label 1: softplus(-x); label 0: softplus(x)
    assert also_loss(logits, occupied, mask).item() == pytest.approx(expected, rel=1e-6)
    # intensity: |0.5-0.2| and |0.1-0.2| count; the second query has no target (-1)
    pred = torch.tensor([[[0.5, 0.1], [0.9, 0.0]]])
    assert also_intensity_loss(pred, torch.tensor([[0.2, -1.0]]), mask).item() == pytest.approx(0.2, rel=1e-6)


def test_loss_with_no_valid_pair_is_zero_and_differentiable():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    loss = also_loss(logits, torch.ones(1, 3), torch.zeros(1, 3, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)
