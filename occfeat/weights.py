"""Pretrained weights for timm models (the DINOv2 teacher, ImageNet backbones), offline-first.

Three sources, in this order:

1. ``weights=PATH``: a local safetensors / .pth / .bin file, loaded through timm's own pretrained path
   (``pretrained_cfg_overlay=dict(file=PATH)``), so timm's checkpoint filters apply (original DINOv2
   checkpoints included). A MoCo v2 checkpoint (the official ``moco_v2_800ep_pretrain.pth.tar`` layout,
   see :func:`moco_v2_state_dict`) is detected and loaded directly into a ResNet. Pickled files are read
   with ``torch.load(weights_only=True)``: a file holding anything but tensors and plain containers is
   refused rather than unpickled.
2. The Hugging Face cache / hub, through ``timm.create_model(name, pretrained=True)``. Set
   ``HF_HUB_OFFLINE=1`` to use a pre-filled cache on a machine without network.
3. ``random_init=True``: only when asked. The returned :class:`Provenance` says so, and every cache,
   checkpoint and report row that depends on the model must carry it.

Anything else is a one-line :class:`OccfeatError` saying how to provide weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch

from occfeat.errors import OccfeatError


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights came from. ``pretrained=False`` means random init, on request."""

    model: str
    pretrained: bool
    source: str  # "file:<path>", "moco_v2:<path>" (a MoCo v2 checkpoint), "hub", or "random-init"
    sha256: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the HF endpoint: huggingface_hub itself retries for about a minute."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline_unless_reachable():
    """Use the HF cache alone (as HF_HUB_OFFLINE=1 would) when the hub cannot be reached."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    if not saved and not _hub_reachable():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _first_detail(e: Exception) -> str:
    """The informative line of a load error: torch's load_state_dict puts a header line first."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith(("Missing key", "Unexpected key", "size mismatch"))), None)
    return (detail or (lines[0] if lines else type(e).__name__))[:240]


MOCO_PREFIX = "module.encoder_q."
"""MoCo (v1/v2) saves its DDP-wrapped model: the query encoder is a torchvision ResNet under this prefix."""


def read_pickled_weights(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; one-line error if it needs arbitrary unpickling."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise OccfeatError(
            f"weights file {path} holds Python objects other than tensors and plain containers, which occfeat "
            f"will not unpickle; re-save its state dict (torch.save(ckpt['state_dict'], ...)) or convert to safetensors"
        ) from e
    except (RuntimeError, OSError, EOFError) as e:
        raise OccfeatError(f"weights file {path} is not a readable torch checkpoint: {_first_detail(e)}") from e


def moco_v2_state_dict(ckpt: object) -> dict[str, torch.Tensor] | None:
    """The query encoder of a MoCo v2 checkpoint in torchvision ResNet names (= timm's), else None.

    Layout (facebookresearch/moco ``main_moco.py``): ``{"epoch", "arch", "state_dict", "optimizer"}`` where
    ``state_dict`` keys are ``module.encoder_q.<torchvision key>`` (the query encoder),
    ``module.encoder_k.*`` (the momentum encoder), ``module.queue`` / ``module.queue_ptr``. The prefix is
    stripped; ``encoder_k``, the queue and the MLP projection head ``fc.*`` are dropped.
    """
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not any(str(k).startswith(MOCO_PREFIX) for k in sd):
        return None
    out = {k[len(MOCO_PREFIX) :]: v for k, v in sd.items() if k.startswith(MOCO_PREFIX)}
    return {k: v for k, v in out.items() if not k.startswith("fc.")}


def _load_moco_v2(name: str, path: Path, state: dict[str, torch.Tensor], **kwargs) -> torch.nn.Module:
    """A timm model with every one of its weights from a MoCo v2 query encoder (none missing).

    Keys of layers the model does not build (e.g. ``layer4`` of a ``features_only`` ResNet cut at stride
    16) are ignored; any other mismatch is a one-line error.
    """
    model = timm.create_model(name, pretrained=False, **kwargs)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise OccfeatError(f"MoCo v2 checkpoint {path} does not fit timm model '{name}': {_first_detail(e)}") from e
    built = {k.split(".")[0] for k in model.state_dict()}
    stray = [k for k in result.unexpected_keys if k.split(".")[0] in built]
    if result.missing_keys or stray:
        what = f"lacks {result.missing_keys[:2]}" if result.missing_keys else f"has extra {stray[:2]}"
        raise OccfeatError(
            f"MoCo v2 checkpoint {path} {what} for timm model '{name}' "
            f"({len(result.missing_keys)} missing, {len(stray)} extra); MoCo v2 weights fit network.backbone=resnet50"
        )
    return model


def create_timm_model(
    name: str,
    weights: str | Path | None = None,
    random_init: bool = False,
    weights_flag: str = "--weights",
    random_flag: str = "--random-init",
    **kwargs,
) -> tuple[torch.nn.Module, Provenance]:
    """``timm.create_model(name, **kwargs)`` with weights from a file, the HF cache/hub, or random init.

    ``weights_flag``/``random_flag`` name the CLI options in the error message.
    """
    if not timm.is_model(name):
        raise OccfeatError(f"timm has no model named '{name}'; see timm.list_models()")
    if random_init:
        return timm.create_model(name, pretrained=False, **kwargs), Provenance(name, False, "random-init")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise OccfeatError(f"weights file {path} not found; pass an existing safetensors/.pth file to {weights_flag}")
        if path.suffix != ".safetensors":
            moco = moco_v2_state_dict(read_pickled_weights(path))
            if moco is not None:
                model = _load_moco_v2(name, path, moco, **kwargs)
                return model, Provenance(name, True, f"moco_v2:{path.resolve()}", sha256_file(path))
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            raise OccfeatError(f"weights file {path} does not fit timm model '{name}': {_first_detail(e)}") from e
        return model, Provenance(name, True, f"file:{path.resolve()}", sha256_file(path))
    try:
        with _hub_offline_unless_reachable():
            model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - hub/cache failures come as many types (OSError, HTTP, LocalEntryNotFound)
        raise OccfeatError(
            f"no weights for '{name}' offline: pass {weights_flag} PATH (safetensors/.pth), or fill the HF cache "
            f"and set HF_HUB_OFFLINE=1, or ask for {random_flag} ({type(e).__name__})"
        ) from e
    return model, Provenance(name, True, "hub")
