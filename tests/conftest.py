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

# A small grid for CPU tests: same height bins as the paper's grid, 1 m cells over +-25 m.
TEST_GRID = BevGrid(bounds=((-25.0, 25.0), (-25.0, 25.0), (-3.5, 6.5)), shape=(50, 50, 8))


@pytest.fixture(scope="session")
def test_grid() -> BevGrid:
    return TEST_GRID
