"""Take a run's weights elsewhere (``occfeat export``): the image backbone as a timm state dict, or the
whole BEV network as safetensors with its config.

A run dir's checkpoints hold the BEV network among optimizer and RNG state, under occfeat's module
names, with the backbone cut where the network stops reading it (EfficientNet-B0's stride-32 blocks,
``conv_head``, ``bn2`` and the classifier; ResNet's ``layer4`` and ``fc``). Two exports fix that:

- ``timm``: the backbone as the state dict of ``timm.create_model(<backbone>, pretrained=False)``, which
  loads with ``strict=True``. The keys the run never trained (the cut stages) are filled from the
  initialisation the run started from (its backbone weights file, when it is still on disk and unchanged;
  else timm's random init with seed :data:`INIT_SEED`), and the file's metadata lists them, so nobody
  mistakes an untrained stage for a pretrained one. ``FILE.safetensors`` carries the metadata as
  safetensors metadata (JSON strings); any other name is a torch file ``{"state_dict", "meta"}`` (mmcv's
  checkpoint layout, read by timm's and mmcv's ``load_checkpoint``) that loads with ``weights_only=True``.
- ``safetensors``: the BEV network only (what ``forward_bev`` runs: encoder, lift/attention, compressor,
  decoder → F_B), without the pretraining heads (the unsplat decoder, the objectives' predictors) or a
  finetune run's segmentation / instance heads: what ``finetune --init`` carries over, too. The resolved
  network and grid config ride along as metadata, so :func:`load_network` rebuilds the module and loads
  it strictly without the run dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from occfeat.config import merge, to_dict
from occfeat.errors import OccfeatError
from occfeat.files import tmp_path, writing
from occfeat.grid import BevGrid
from occfeat.models import BevNetwork, NetworkConfig, build_network, upgrade_network_dict
from occfeat.models.encoder import ImageEncoder
from occfeat.train.rundir import atomic_save, load_checkpoint
from occfeat.weights import Provenance, create_timm_model, moco_v2_state_dict, read_pickled_weights, sha256_file

FORMATS = ("timm", "safetensors")
TIMM_FORMAT = "occfeat-timm-backbone/1"
NETWORK_FORMAT = "occfeat-network/1"
INIT_SEED = 0
"""Seed of timm's random init for the keys a run never trained, when its own initial weights are not on
disk (random-init runs, a moved weights file): the run's own random draw cannot be replayed (timm's
full model draws its layers in another order than the feature extractor the run built)."""


# ---------------------------------------------------------------- reading a run


@dataclass
class RunWeights:
    """What an export reads from a run's checkpoint: the BEV network's weights and how to rebuild it."""

    checkpoint: Path
    kind: str
    """"pretrain" or "finetune"."""
    network: NetworkConfig
    grid: BevGrid
    input_size: tuple[int, int]
    state: dict[str, torch.Tensor]
    """The BEV network's state dict, keys as the :class:`BevNetwork` module has them (no heads)."""
    backbone: dict
    """Where the backbone weights the run started from came from (:class:`occfeat.weights.Provenance`)."""
    step: int

    @property
    def backbone_random_init(self) -> bool:
        """The image backbone started from random weights (here or in the pretraining the run started from)."""
        return not self.backbone.get("pretrained", True)


def checkpoint_path(run: Path) -> Path:
    """The checkpoint ``run`` names: a run dir's ``checkpoints/last.pt``, or the checkpoint file itself."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise OccfeatError(f"{run} not found; pass the --out of `occfeat pretrain` or `occfeat finetune` (or a checkpoint file in it)")
    if not (run / "config.yaml").is_file() and not (run / "checkpoints").is_dir():
        raise OccfeatError(f"{run} is not a run dir (no config.yaml, no checkpoints/); pass the --out of `occfeat pretrain` or `occfeat finetune`")
    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        raise OccfeatError(f"run dir {run} has no checkpoint (checkpoints/last.pt): train it first (rerun it with --resume), "
                           f"or pass one of its checkpoints/epoch_*.pt")
    return last


def read_run(run: str | Path) -> RunWeights:
    """The BEV network of a pretraining or finetune run (``run``: its dir or a checkpoint file in it),
    read with ``weights_only=True``; configs of earlier versions come back in today's schema."""
    path = checkpoint_path(Path(run))
    ckpt = load_checkpoint(path, if_damaged="pass another of its checkpoints/epoch_*.pt")
    task = ckpt.get("task") or {}
    backbone = (task.get("provenance") or {}).get("backbone") or {}  # both stages stamp it there
    if "network" in task:  # occfeat.train.pretrain: the network without the heads
        from occfeat.train.pretrain import config_from_saved

        cfg, kind, state = config_from_saved(ckpt["config"], f"the run of {path}"), "pretrain", task["network"]
    elif "model" in task:  # occfeat.train.finetune: the SegmentationModel = network + head
        from occfeat.train.finetune_config import config_from_dict

        cfg, kind = config_from_dict(ckpt["config"]), "finetune"
        state = {k[len("network."):]: v for k, v in task["model"].items() if k.startswith("network.")}
    else:
        raise OccfeatError(f"{path} holds no network weights; pass a run of `occfeat pretrain` or `occfeat finetune`")
    return RunWeights(path, kind, cfg.network, cfg.grid, tuple(cfg.input_size), state, backbone, int(ckpt["step"]))


def rebuild(cfg: NetworkConfig, grid: BevGrid, state: dict[str, torch.Tensor], where: str) -> BevNetwork:
    """The network of ``cfg`` on ``grid`` with ``state`` loaded strictly. Built random (``state`` replaces
    every weight, so no ImageNet file is needed) under a forked RNG, so the caller's random stream is untouched."""
    with torch.random.fork_rng(devices=[]):
        network = build_network(dataclasses.replace(cfg, random_init=True, backbone_weights=None), grid)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip().startswith(("Missing", "Unexpected", "size"))), str(e))
        raise OccfeatError(f"the weights of {where} do not fit its own network config ({first[:200]}); it was written by "
                           "another occfeat version: rerun the stage that wrote it") from None
    return network


# ---------------------------------------------------------------- the timm backbone


def image_backbone(network: BevNetwork, arch: str) -> torch.nn.Module:
    """The timm feature extractor inside ``network``'s image encoder; one-line error for a network without one."""
    encoders = [m for m in network.modules() if isinstance(m, ImageEncoder)]
    if not encoders:
        raise OccfeatError(f"network arch '{arch}' has no timm image backbone to export as --format timm; "
                           "export the whole network with --format safetensors")
    return encoders[0].backbone


def _read_init_file(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """The tensors of a backbone weights file as the run read it (MoCo v2: the query encoder)."""
    if kind == "moco_v2":
        return moco_v2_state_dict(read_pickled_weights(path)) or {}
    from timm.models import load_state_dict  # safetensors or torch; picks state_dict/model, strips module.

    return load_state_dict(str(path), weights_only=True)


def initial_state(name: str, backbone: dict) -> tuple[dict[str, torch.Tensor], set[str], str]:
    """The state dict of the full timm model ``name`` as the run's backbone started: (state, the keys
    of it that are timm's random init with :data:`INIT_SEED`, a one-phrase description).

    ``backbone`` is the run's backbone provenance: "file:PATH" / "moco_v2:PATH" use that file when it is
    on disk with the recorded sha256 (keys it lacks, e.g. MoCo's classifier, stay random); "hub" the HF
    cache when it holds the weights; "random-init", or a source that cannot be had, timm's random init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        random = timm.create_model(name, pretrained=False).state_dict()
    rand = f"timm's random init (seed {INIT_SEED})"
    kind, _, where = str(backbone.get("source", "random-init")).partition(":")
    if kind in ("file", "moco_v2"):
        path = Path(where)
        if not path.is_file():
            return random, set(random), f"{rand}, since the run's weights file {path} is not on disk"
        if backbone.get("sha256") and sha256_file(path) != backbone["sha256"]:
            return random, set(random), f"{rand}, since the run's weights file {path} changed (sha256 differs)"
        try:
            loaded = _read_init_file(path, kind)
        except Exception as e:  # noqa: BLE001 - any unreadable file: the export still stands, and says so
            return random, set(random), f"{rand}, since the run's weights file {path} cannot be read ({type(e).__name__})"
        fits = {k: v for k, v in loaded.items() if k in random and tuple(v.shape) == tuple(random[k].shape)}
        return {**random, **fits}, set(random) - set(fits), f"the run's initial weights {path}"
    if kind == "hub":
        try:
            model, _ = create_timm_model(name)
        except OccfeatError:
            return random, set(random), f"{rand}, since the hub weights the run started from are not in the HF cache"
        return model.state_dict(), set(), f"timm's pretrained weights of '{name}' (HF cache), as the run started"
    return random, set(random), rand  # a random-init run: the summary line says so once (describe)


def covering_prefixes(selected: list[str], keys: list[str]) -> list[str]:
    """The shortest dotted prefixes that cover ``selected`` and nothing else among ``keys``, in ``keys``
    order: a readable name for a set of state-dict keys, e.g. ["blocks.5", "blocks.6", "conv_head",
    "bn2", "classifier"] for EfficientNet-B0's untrained stages."""
    chosen = set(selected)
    out: list[str] = []
    for key in keys:
        if key not in chosen or any(key == p or key.startswith(p + ".") for p in out):
            continue
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            prefix = ".".join(parts[:n])
            if all(k in chosen for k in keys if k == prefix or k.startswith(prefix + ".")):
                out.append(prefix)
                break
    return out


def timm_backbone_state(run: RunWeights) -> tuple[dict[str, torch.Tensor], dict]:
    """(the state dict of ``timm.create_model(backbone)`` with the run's trained backbone weights, the
    export's metadata: which keys were never trained and what filled them)."""
    network = rebuild(run.network, run.grid, run.state, str(run.checkpoint))
    name = run.network.backbone
    trained = image_backbone(network, run.network.arch).state_dict()
    init, random_keys, filled_from = initial_state(name, run.backbone)
    foreign = [k for k, v in trained.items() if k not in init or tuple(init[k].shape) != tuple(v.shape)]
    if foreign:
        raise OccfeatError(f"the run's backbone has {len(foreign)} weights that timm model '{name}' names or shapes otherwise "
                           f"(e.g. {foreign[0]}); --format timm supports backbones whose feature extractor keeps timm's names "
                           "(efficientnet_*, resnet*): use --format safetensors")
    state = {k: trained.get(k, v).detach().cpu().contiguous() for k, v in init.items()}  # timm's key order
    keys = list(state)
    untrained = [k for k in keys if k not in trained]
    random_untrained = [k for k in untrained if k in random_keys]
    meta = {
        "format": TIMM_FORMAT,
        "timm_model": name,
        "load": f"timm.create_model('{name}', pretrained=False).load_state_dict(state_dict, strict=True)",
        "source": str(run.checkpoint),
        "run_kind": run.kind,
        "step": run.step,
        "trained_keys": len(keys) - len(untrained),
        "untrained_keys": untrained,
        "untrained_modules": covering_prefixes(untrained, keys),
        "untrained_filled_from": filled_from,
        "untrained_random_keys": random_untrained,
        "untrained_random_modules": covering_prefixes(random_untrained, keys),
        "backbone_random_init": run.backbone_random_init,
        "backbone_provenance": run.backbone,
    }
    return state, meta


# ---------------------------------------------------------------- files


def _encode(meta: dict) -> dict[str, str]:
    """safetensors metadata is str → str: strings as they are, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _decode(meta: dict[str, str]) -> dict:
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _write_safetensors(tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    """Atomically (a temporary file renamed over ``path``), as every file occfeat writes."""
    data = save(tensors, metadata=_encode(meta))
    tmp = tmp_path(path)
    with writing(path, then="rerun occfeat export"):
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing file unless asked, and a folder always; make the parent folder."""
    if out.is_dir():
        raise OccfeatError(f"--out {out} is a directory; name the file to write (e.g. {out / 'backbone.safetensors'})")
    if out.exists() and not overwrite:
        raise OccfeatError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)


def read_export_metadata(path: str | Path) -> dict:
    """The metadata of a file written by :func:`export` (either format, either suffix), JSON decoded."""
    path = Path(path)
    if not path.is_file():
        raise OccfeatError(f"{path} not found; make it with `occfeat export RUN --format timm|safetensors --out {path}`")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return _decode(f.metadata() or {})
        except (SafetensorError, OSError) as e:
            raise OccfeatError(f"{path} is not a readable safetensors file ({e}); export it again") from None
    obj = read_pickled_weights(path)
    return dict(obj.get("meta") or {}) if isinstance(obj, dict) else {}


# ---------------------------------------------------------------- the two exports


def export(run: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> dict:
    """Write ``run``'s weights to ``out`` in format ``fmt`` (:data:`FORMATS`); returns the file's metadata."""
    out = Path(out)
    if fmt not in FORMATS:
        raise OccfeatError(f"unknown --format '{fmt}'; choose {' or '.join(FORMATS)}")
    if fmt == "safetensors" and out.suffix != ".safetensors":
        raise OccfeatError(f"--format safetensors writes a safetensors file: name it *.safetensors, not {out.name}")
    check_out(out, overwrite)
    weights = read_run(run)
    if fmt == "timm":
        state, meta = timm_backbone_state(weights)
        if out.suffix == ".safetensors":
            _write_safetensors(state, meta, out)
        else:  # mmcv's checkpoint layout: timm.models.load_checkpoint and mmcv's load_checkpoint read state_dict
            atomic_save({"state_dict": state, "meta": meta}, out, then="rerun occfeat export")
        return meta
    meta = network_metadata(weights)
    rebuild(weights.network, weights.grid, weights.state, str(weights.checkpoint))  # refuse weights that would not reload
    _write_safetensors({k: v.detach().cpu().contiguous() for k, v in weights.state.items()}, meta, out)
    return meta


def network_metadata(run: RunWeights) -> dict:
    """What :func:`load_network` needs to rebuild the network, and where its weights came from."""
    return {
        "format": NETWORK_FORMAT,
        "arch": run.network.arch,
        "backbone": run.network.backbone,
        "network": to_dict(run.network),
        "grid": run.grid.spec(),
        "input_size": list(run.input_size),
        "contents": "the BEV network (forward_bev -> F_B) without heads; occfeat.export.load_network(FILE) rebuilds it",
        "source": str(run.checkpoint),
        "run_kind": run.kind,
        "step": run.step,
        "backbone_random_init": run.backbone_random_init,
        "backbone_provenance": run.backbone,
    }


def describe(meta: dict, out: str | Path) -> str:
    """The command's one-line summary of an export: what was written and, for a backbone, which of its
    weights were never trained and what filled them."""
    random = "; the run's backbone started from random weights, not ImageNet" if meta.get("backbone_random_init") else ""
    if meta.get("format") == NETWORK_FORMAT:
        return (f"wrote {out}: the {meta['arch']} network ({meta['backbone']}) without heads, from {meta['run_kind']} step {meta['step']}, "
                f"its config in the metadata; load it with occfeat.export.load_network{random}")
    untrained = meta["untrained_keys"]
    total = meta["trained_keys"] + len(untrained)
    never = (f"{len(untrained)} never trained ({', '.join(meta['untrained_modules'])}), filled from {meta['untrained_filled_from']}"
             if untrained else "every key trained")
    if 0 < len(meta["untrained_random_keys"]) < len(untrained):  # e.g. MoCo v2 weights have no classifier
        never += f" except {', '.join(meta['untrained_random_modules'])}: timm's random init (seed {INIT_SEED})"
    return (f"wrote {out}: timm '{meta['timm_model']}' state dict of {total} tensors (load_state_dict strict=True); "
            f"{meta['trained_keys']} trained by the {meta['run_kind']} run (step {meta['step']}), {never}{random}")


def load_network(path: str | Path, device: str | torch.device = "cpu") -> BevNetwork:
    """The BEV network of a ``--format safetensors`` export, rebuilt from its config and loaded strictly;
    its ``provenance`` is the run's backbone provenance."""
    path = Path(path)
    meta = read_export_metadata(path)
    if meta.get("format") != NETWORK_FORMAT:
        raise OccfeatError(f"{path} is not an occfeat network export (format {NETWORK_FORMAT}); "
                           "make one with `occfeat export RUN --format safetensors`")
    cfg = merge(NetworkConfig(), upgrade_network_dict(meta["network"]), where=f"{path} network config")
    network = rebuild(cfg, BevGrid.from_spec(meta["grid"]), load_file(str(path)), str(path))
    prov = meta.get("backbone_provenance") or {}
    if {f.name for f in dataclasses.fields(Provenance)} >= set(prov) >= {"model", "pretrained", "source"}:
        network.provenance = Provenance(**prov)
    return network.to(device)
