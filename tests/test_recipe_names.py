"""``--recipe NAME``: a path as given, else a recipe shipped with occfeat by its name (occfeat.config.find_recipe),
so the README's commands work from any directory and from a wheel. Run from an empty directory here, so
that nothing resolves through the repository's ``recipes/`` by accident of the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from occfeat.config import find_recipe, load_config, read_recipe, recipe_stem, recipes_root
from occfeat.errors import OccfeatError
from occfeat.pipeline import StudyConfig, load_study, pretraining_name
from occfeat.train.finetune_config import FinetuneConfig, resolve_config
from occfeat.train.pretrain import PretrainConfig

SHIPPED = Path(__file__).resolve().parents[1] / "recipes"
ALL = sorted(SHIPPED.glob("*/*.yaml"))
KIND_OF = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "studies": StudyConfig}


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_checkout_ships_its_recipes_folder():
    assert recipes_root() == SHIPPED


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_recipe_resolves_by_its_bare_name_within_its_kind(path):
    assert find_recipe(recipe_stem(path), KIND_OF[path.parent.name].recipe_kind) == path


@pytest.mark.parametrize(
    "name", ["pretrain/synthetic-tiny.yaml", "pretrain/synthetic-tiny", "recipes/pretrain/synthetic-tiny.yaml", "recipes/pretrain/synthetic-tiny"]
)
def test_relative_names_resolve_outside_the_repository(name):
    assert find_recipe(name) == SHIPPED / "pretrain" / "synthetic-tiny.yaml"


def test_a_dotted_name_keeps_its_dot():
    assert find_recipe("lambda-0.1", "pretrain") == SHIPPED / "pretrain" / "lambda-0.1.yaml"
    assert recipe_stem("pretrain/lambda-0.1.yaml") == recipe_stem("lambda-0.1") == "lambda-0.1"
    assert pretraining_name("pretrain/lambda-0.1") == "lambda-0.1"


def test_an_existing_path_wins_over_a_shipped_name(elsewhere):
    (elsewhere / "pretrain").mkdir()
    mine = elsewhere / "pretrain" / "synthetic-tiny.yaml"
    mine.write_text("train: {lr: 0.5}\n")
    assert find_recipe("pretrain/synthetic-tiny.yaml") == Path("pretrain/synthetic-tiny.yaml")
    assert load_config(PretrainConfig, "pretrain/synthetic-tiny.yaml").train.lr == 0.5
    assert find_recipe("synthetic-tiny", "pretrain") == SHIPPED / "pretrain" / "synthetic-tiny.yaml"  # no file of that name here


def test_a_bare_name_without_a_kind_must_be_unique():
    assert find_recipe("synthetic-lidar") == SHIPPED / "finetune" / "synthetic-lidar.yaml"
    with pytest.raises(OccfeatError, match=r"several folders.*pretrain/synthetic-tiny, finetune/synthetic-tiny"):
        find_recipe("synthetic-tiny")


@pytest.mark.parametrize(
    ("name", "kind", "close"),
    [
        ("synthetic-tinny", "pretrain", "synthetic-tiny"),
        ("synthetic-lidar", "pretrain", "finetune/synthetic-lidar"),  # the right name in another folder comes first
        ("recipes/pretrain/synthtic-tiny.yaml", None, "pretrain/synthetic-tiny"),
    ],
)
def test_a_missing_name_is_one_line_listing_close_names(name, kind, close):
    with pytest.raises(OccfeatError) as e:
        find_recipe(name, kind)
    msg = str(e.value)
    assert "\n" not in msg and f"recipe '{name}' not found" in msg
    assert msg.split("close names: ")[1].split(", ")[0] == close


def test_a_missing_absolute_path_is_not_looked_up_among_the_shipped(elsewhere):
    with pytest.raises(OccfeatError, match=r"synthetic-tiny.yaml' not found: no such file; close names: "):
        find_recipe(elsewhere / "pretrain" / "synthetic-tiny.yaml")


def test_config_classes_resolve_bare_names_in_their_own_folder():
    assert load_config(PretrainConfig, "synthetic-tiny") == load_config(PretrainConfig, SHIPPED / "pretrain" / "synthetic-tiny.yaml")
    by_name = resolve_config("synthetic-tiny", "vehicle", 0.1)
    assert by_name == resolve_config(SHIPPED / "finetune" / "synthetic-tiny.yaml", "vehicle", 0.1)
    assert by_name.grid != load_config(FinetuneConfig).grid  # the recipe was read (its CPU grid)


def test_own_recipe_builds_on_a_shipped_one(elsewhere):
    """``base:`` is a file next to the recipe, else a shipped recipe of the same kind."""
    (elsewhere / "mine.yaml").write_text("base: synthetic-tiny\ntrain: {lr: 0.5}\n")
    cfg = load_config(PretrainConfig, elsewhere / "mine.yaml")
    assert cfg.train.lr == 0.5 and cfg.grid == load_config(PretrainConfig, "synthetic-tiny").grid
    (elsewhere / "synthetic-tiny.yaml").write_text("train: {epochs: 7}\n")  # a local base wins
    assert load_config(PretrainConfig, elsewhere / "mine.yaml").train.epochs == 7


def test_a_base_chain_that_loops_or_names_nothing_is_one_line(elsewhere):
    (elsewhere / "a.yaml").write_text("base: b.yaml\n")
    (elsewhere / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(OccfeatError, match="base: chain comes back to a.yaml"):
        read_recipe(elsewhere / "a.yaml")
    (elsewhere / "c.yaml").write_text("base: synthetic-tinny\n")
    with pytest.raises(OccfeatError, match=r"in recipe .*c.yaml: base: recipe 'synthetic-tinny' not found.*close names: synthetic-tiny"):
        read_recipe(elsewhere / "c.yaml", "pretrain")


def test_a_study_and_the_recipes_it_names_resolve_from_another_directory():
    from occfeat.pipeline import load_pretrainings

    study = load_study("ci")
    assert study == load_study(SHIPPED / "studies" / "ci.yaml")
    grid = resolve_config(study.finetune_recipe, "vehicle", 1.0).grid
    assert set(load_pretrainings(study, grid)) == {"none", "synthetic-tiny", "synthetic-img-also", "synthetic-tiny-random-teacher"}
