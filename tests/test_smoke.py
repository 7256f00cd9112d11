"""The smoke test: every pretrain and finetune recipe, every registered network and every registered
objective is built and trained for two steps on the tiny synthetic world. Networks and objectives are
discovered from their registries, so a new one cannot escape this file."""

from pathlib import Path

import pytest
import torch

from occfeat.models import camera_networks
from occfeat.objectives import registry
from tests.fixtures.pretrain import make_task, shrink, tiny

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_RECIPES = sorted((REPO / "recipes" / "pretrain").glob("*.yaml"))
FINETUNE_RECIPES = sorted((REPO / "recipes" / "finetune").glob("*.yaml"))


def two_steps(task) -> dict:
    """Two optimizer steps; checks the total is the weighted sum of the objectives' terms and that the
    image encoder gets gradients. Returns the last terms."""
    loader = torch.utils.data.DataLoader(task.train_set, batch_size=1, collate_fn=task.collate)
    opt = torch.optim.Adam(task.model.parameters(), lr=1e-3)
    encoder = task.model.network.encoder.backbone
    for _, batch in zip(range(2), loader):
        opt.zero_grad()
        loss, terms = task.loss(task.model, batch)
        assert torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in encoder.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, "no gradient reached the image encoder"
        opt.step()
    weighted = sum(c.weight * float(terms[f"loss_{name}"]) for name, c in task.cfg.objectives.items())
    assert float(terms["loss"]) == pytest.approx(weighted, rel=1e-5)
    return terms


@pytest.mark.parametrize("recipe", PRETRAIN_RECIPES, ids=lambda p: p.stem)
def test_every_pretrain_recipe_takes_two_steps(recipe, test_grid, synth_root, occupancy_h5, features_h5):
    task = make_task(recipe, test_grid, synth_root, occupancy_h5, features_h5)
    terms = two_steps(task)
    assert set(terms) >= {"loss", *(f"loss_{n}" for n in task.cfg.objectives)}


@pytest.mark.parametrize("arch", sorted(camera_networks()))
def test_every_network_pretrains_two_steps(arch, test_grid, synth_root, occupancy_h5, features_h5):
    # with the perspective objective too: every network hands its image features to the objectives
    task = make_task(None, test_grid, synth_root, occupancy_h5, features_h5, network={"arch": arch}, objectives={"perspective": {}})
    assert task.cfg.network.arch == arch and "perspective" in task.cfg.objectives
    two_steps(task)


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_objective_alone_takes_two_steps(name, test_grid, synth_root, occupancy_h5, features_h5):
    alone = {other: None for other in registry() if other != name}
    task = make_task(None, test_grid, synth_root, occupancy_h5, features_h5, objectives={**alone, name: {}})
    assert list(task.cfg.objectives) == [name]
    terms = two_steps(task)
    assert float(terms[f"loss_{name}"]) != 0.0
    stamp = task.model.objectives[name].stamp()
    assert stamp["label"] and "weight" in stamp


@pytest.mark.parametrize("recipe", FINETUNE_RECIPES, ids=lambda p: p.stem)
def test_every_finetune_recipe_takes_two_steps(recipe, tmp_path, test_grid, synth_root):
    from occfeat.data.index import SampleIndex
    from occfeat.train.finetune import FinetuneTask, resolve_config, segmentation_set
    from occfeat.train.init import build_model
    from tests.fixtures.synth import TINY_VERSION

    small = tiny(test_grid)
    for task_name in ("vehicle", "map"):
        cfg = shrink(resolve_config(recipe, task_name, 1.0, {k: small[k] for k in ("grid", "input_size", "network", "train")}))
        index = SampleIndex(synth_root, TINY_VERSION, "mini_train")
        model, pretraining, provenance = build_model(cfg, None)
        stamp = {"init": pretraining.to_dict(), "provenance": provenance.to_dict(), "data": {}}
        task = FinetuneTask(cfg, model, segmentation_set(index, index.tokens[:2], cfg, tmp_path / "gt", train=True, progress=False), stamp)
        loader = torch.utils.data.DataLoader(task.train_set, batch_size=1, collate_fn=task.collate)
        opt = torch.optim.Adam(task.model.parameters(), lr=1e-3)
        for _, batch in zip(range(2), loader):
            opt.zero_grad()
            loss, terms = task.loss(task.model, batch)
            assert torch.isfinite(loss) and "loss_ce" in terms
            loss.backward()
            opt.step()
