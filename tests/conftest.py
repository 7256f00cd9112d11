"""Shared fixtures. Each stage owns one fixture module under tests/fixtures/ (synth world, caches,
runs), so stages add fixtures without editing this file. Fixtures are session-scoped: the tiny
synthetic world and the caches built from it are made once per test run."""

import pytest

from occfeat.grid import BevGrid

pytest_plugins = [
    "tests.fixtures.synth",
    "tests.fixtures.occupancy",
    "tests.fixtures.features",
]

# A small grid for CPU tests: the same height bins as the default grid (occfeat/grid.py), 1 m cells over
# +-25 m around the ego (the synthetic-tiny recipes use this grid; hand-computed cell indices rely on it).
TEST_GRID = BevGrid(bounds=((-25.0, 25.0), (-25.0, 25.0), (-4.5, 5.5)), shape=(50, 50, 8))


@pytest.fixture(scope="session")
def test_grid() -> BevGrid:
    return TEST_GRID
