"""THE training loop (pretrain and finetune both run through :func:`fit`), readable top to bottom:
schedule, forward (autocast), backward, gradient accumulation, clip, step, log, checkpoint.

A *task* says what is trained and how the loss is computed; the loop owns everything else:

- ``task.model``: the ``nn.Module`` holding every trained parameter; ``model(batch)`` is its forward
  (under DDP the loop wraps it, and ``task.loss`` must call the module it is given, not ``task.model``);
- ``task.train_set``: a map-style Dataset; ``task.collate``: its collate_fn; optional
  ``train_set.set_epoch(e)`` lets augmentation depend on (seed, epoch, index) only;
- ``task.loss(model, batch) -> (loss, {term: float})``: ``batch`` is already on the device;
- ``task.checkpoint_payload() -> dict`` / ``task.load_checkpoint_payload(d)``: what goes in a checkpoint
  beside the loop state (model parts, provenance); ``task.config_dict() -> dict``: the resolved config,
  with the :class:`TrainConfig` under ``"train"``;
- optional ``task.find_unused_parameters`` (bool) for DDP when a loss leaves some parameters unused;
- optional ``task.run_files() -> {name: text}``: extra files for the run dir (e.g. provenance.json);
- optional ``task.resolve_saved(saved) -> dict``: a saved config in today's schema (``--resume`` compares
  it with ``config_dict()``, so configs written by earlier versions still resume).

Run dir: ``config.yaml``, ``metrics.jsonl`` (one row per logging step), ``tensorboard/`` (the same
scalars as TensorBoard events, :mod:`occfeat.train.tblog`), ``checkpoints/last.pt`` (the full state,
rewritten atomically every epoch) and ``checkpoints/epoch_NNN.pt`` (task payload + config + step, the
newest ``train.keep_snapshots`` epochs). A run that finished every epoch of a schedule that cannot be
extended (onecycle) keeps only the weights in last.pt: its optimizer state, twice the weights' size,
could never be used again. Resume is exact: the data order is a pure function of (seed, epoch), the
position inside an epoch follows from the step count, and RNG states are restored. How each file is
written so that a kill or a full disk never leaves a run that cannot continue: :mod:`occfeat.train.rundir`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from occfeat.errors import OccfeatError
from occfeat.files import write_text_atomic, writing
from occfeat.lock import output_lock
from occfeat.train import dist as D
from occfeat.progress import progress_bar
from occfeat.train.rundir import (  # noqa: F401 - re-exported: the loop's checkpoint API
    CHECKPOINT_FORMAT,
    atomic_save,
    config_diff,
    extendable,
    load_checkpoint,
    prepare_run_dir,
    prune_snapshots,
    truncate_metrics,
)
from occfeat.train.tblog import log_scalars, open_writer


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults are the paper's pretraining ones (§4.1); finetune recipes override."""

    optimizer: str = "adam"
    """"adam" (pretraining) or "adamw" (finetuning)."""
    lr: float = 1e-3
    """Peak learning rate (the constant one for schedule="constant")."""
    weight_decay: float = 1e-7
    schedule: str = "constant"
    """"constant", or "onecycle" (Simple-BEV's: 5% linear warm-up, linear anneal, no momentum cycling)."""
    epochs: int = 50
    batch_size: int = 16
    """Samples per forward pass summed over all DDP ranks (each rank takes batch_size / world_size)."""
    grad_accum: int = 1
    """Forward passes per optimizer step: the effective batch is batch_size * grad_accum."""
    grad_clip: float = 5.0
    """Max global gradient norm (Simple-BEV's value); 0 disables clipping."""
    amp: str = "auto"
    """"auto" (bf16 autocast on CUDA, off on CPU), "bf16" or "off"."""
    log_every: int = 10
    """Optimizer steps between metrics.jsonl rows."""
    num_workers: int = 4
    """DataLoader worker processes (0: load in the main process)."""
    seed: int = 0
    """Seeds the data order and augmentation (with the epoch); the model is seeded by its builder."""
    device: str = "auto"
    """"auto" (this rank's CUDA device, else CPU), "cpu", "cuda"."""
    max_steps: int = 0
    """Stop after this many optimizer steps in total (0: run every epoch); writes a resumable checkpoint."""
    keep_snapshots: int = 1
    """Epoch snapshots (checkpoints/epoch_NNN.pt, the weights alone) to keep, the newest; 0: none; at
    least ``epochs``: every epoch's. last.pt is always kept: --resume, ``finetune --init RUN`` and
    evaluation read it. One by default: the final weights as a file a third of last.pt's size (no
    optimizer state) that ``finetune --init`` takes, without a 1 % finetune's 100 epochs filling the disk."""


class Task(Protocol):
    model: torch.nn.Module
    train_set: Dataset

    def collate(self, items: list) -> Any: ...
    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...
    def checkpoint_payload(self) -> dict: ...
    def load_checkpoint_payload(self, payload: dict) -> None: ...
    def config_dict(self) -> dict: ...


class ResumableSampler(Sampler[int]):
    """:class:`DistributedSampler` order for one epoch (seeded by seed + epoch), skipping the first
    ``skip`` samples of this rank's share: how a resumed run continues mid-epoch on the same data."""

    def __init__(self, dataset: Dataset, env: D.DistEnv, seed: int, epoch: int, skip: int = 0):
        self.inner = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed, drop_last=True)
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip :])

    def __len__(self) -> int:
        return len(self.inner) - self.skip


# ---- small helpers ----
def to_device(x, device: torch.device):
    """Tensors in (nested dicts/lists of) a batch moved to ``device``; anything else as is."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def _rng_state() -> dict:
    """Every RNG the loop touches, in types ``torch.load(weights_only=True)`` accepts (ints, lists, tensors)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "mt": list(mt), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},  # fmt: skip
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    py, nps = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["mt"]), py["gauss"]))
    keys = nps["keys"].numpy().astype(np.uint32)
    np.random.set_state((nps["kind"], keys, nps["pos"], nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    makers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if cfg.optimizer not in makers:
        raise OccfeatError(f"train.optimizer={cfg.optimizer!r} is not one of {', '.join(makers)}")
    return makers[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, total_steps: int):
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total_steps + 1, pct_start=0.05, cycle_momentum=False, anneal_strategy="linear"
        )
    raise OccfeatError(f"train.schedule={cfg.schedule!r} is not one of constant, onecycle")


def _check(cfg: TrainConfig, env: D.DistEnv, n_samples: int) -> tuple[int, int]:
    """(per-rank batch, optimizer steps per epoch), or a one-line error for settings that cannot run."""
    for name in ("epochs", "batch_size", "grad_accum", "log_every"):
        if getattr(cfg, name) < 1:
            raise OccfeatError(f"train.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.keep_snapshots < 0:
        raise OccfeatError(f"train.keep_snapshots must be >= 0 (0 keeps no epoch snapshot, only last.pt), got {cfg.keep_snapshots}")
    if cfg.amp not in ("auto", "bf16", "off"):
        raise OccfeatError(f"train.amp={cfg.amp!r} is not one of auto, bf16, off")
    if cfg.batch_size % env.world_size:
        raise OccfeatError(f"train.batch_size={cfg.batch_size} does not split over {env.world_size} processes; use a multiple")
    per_rank = cfg.batch_size // env.world_size
    steps = (n_samples // env.world_size) // per_rank // cfg.grad_accum
    if steps < 1:
        raise OccfeatError(
            f"the training set has {n_samples} samples, fewer than one optimizer step needs "
            f"(batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum}); lower train.batch_size or use a larger split"
        )
    return per_rank, steps


def fit(task: Task, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
        name: str | None = None) -> dict:
    """Train ``task`` under ``cfg``, writing into ``run_dir``. Returns a summary dict:
    {"step", "epoch", "last" (the last metrics row), "checkpoint" (path of last.pt), "samples_per_s"}.

    ``progress``: the main process draws a bar labelled ``<name> epoch k/N`` (``name`` defaults to the run
    dir's name; whole lines when stderr is not a terminal, :mod:`occfeat.progress`); False: silent."""
    run_dir = Path(run_dir)
    env = D.init_distributed()
    try:
        # One writer per run dir (rank 0 holds it for the whole run): a second command on it gets one line.
        with output_lock(run_dir, "run dir") if env.is_main else contextlib.nullcontext():
            return _fit(task, cfg, run_dir, resume, env, progress, name or run_dir.name)
    finally:
        D.shutdown(env)


def epoch_label(name: str, step: int, steps_per_epoch: int, epochs: int) -> str:
    """The bar's description: ``"<name> epoch k/N"`` for the epoch the next step belongs to (1-based)."""
    return f"{name} epoch {min(step // steps_per_epoch + 1, epochs)}/{epochs}"


def _fit(task: Task, cfg: TrainConfig, run_dir: Path, resume: bool, env: D.DistEnv, progress: bool, run_name: str) -> dict:
    device = D.resolve_device(cfg.device, env)
    config = task.config_dict()
    per_rank, steps_per_epoch = _check(cfg, env, len(task.train_set))
    total_steps = cfg.epochs * steps_per_epoch
    stop_step = min(total_steps, cfg.max_steps) if cfg.max_steps > 0 else total_steps

    # Rank 0 checks the run dir; every rank learns the verdict so all stop together.
    ckpt, err = None, None
    if env.is_main:
        try:
            ckpt = prepare_run_dir(run_dir, config, resume, getattr(task, "resolve_saved", None))
        except OccfeatError as e:
            err = str(e)
    err = D.broadcast_error(err, env)
    if err:
        raise OccfeatError(err)
    if env.enabled and not env.is_main and resume and (run_dir / "checkpoints" / "last.pt").exists():
        ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # rank 0 read it fine just before
    ckpt_dir, metrics_path = run_dir / "checkpoints", run_dir / "metrics.jsonl"
    if env.is_main:
        # config.yaml first: a run dir without it is "not started", which both a fresh run and --resume restart.
        with writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        with writing(ckpt_dir):
            ckpt_dir.mkdir(exist_ok=True)
        for name, text in getattr(task, "run_files", dict)().items():
            write_text_atomic(run_dir / name, text)

    model = task.model.to(device)
    optimizer = _make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    scheduler = _make_scheduler(cfg, optimizer, total_steps)
    step = 0
    if resume and ckpt is None and env.is_main:
        truncate_metrics(metrics_path, 0)  # killed before its first checkpoint: start over cleanly
    if ckpt is not None:
        task.load_checkpoint_payload(ckpt["task"])
        step = int(ckpt["step"])
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"])
        elif step < stop_step:  # the weights-only last.pt of a finished onecycle run (see save below)
            raise OccfeatError(f"{run_dir / 'checkpoints' / 'last.pt'} is the final checkpoint of a finished run (weights only, "
                               f"no optimizer state) and cannot train further; start a new --out")
        if env.is_main:
            truncate_metrics(metrics_path, step)
    train_model = model
    if env.enabled:
        train_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(task, "find_unused_parameters", False)),
        )
    use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    last_good = ckpt_dir / "last.pt" if ckpt is not None else None
    ckpt_step = step  # the step last.pt holds
    # TensorBoard: the main process, and only when there is something to log. On resume, TensorBoard drops
    # the events the killed invocation logged after the checkpoint (purge_step: the next step logged).
    writer = open_writer(run_dir, purge_step=step + 1 if resume else None) if env.is_main and step < stop_step else None

    def save(epoch_done: bool) -> Path:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "epoch": step // steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "config": config,
            "task": task.checkpoint_payload(),
        }
        # A failed write (full disk, read-only folder) leaves the previous last.pt whole: say how to go on from it.
        then = f"rerun with --resume (it continues from step {ckpt_step})"
        if epoch_done:  # weights-only snapshot per epoch (what finetune --init can point at), the newest few
            if cfg.keep_snapshots > 0:
                atomic_save(state, ckpt_dir / f"epoch_{step // steps_per_epoch:03d}.pt", then)
            prune_snapshots(ckpt_dir, cfg.keep_snapshots)
        # A finished run whose schedule cannot be extended never steps again: its last.pt needs the weights alone.
        if step < total_steps or extendable(cfg.schedule):
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=_rng_state())
        atomic_save(state, ckpt_dir / "last.pt", then)
        if writer is not None:
            writer.flush()  # the events up to the checkpoint are on disk whenever last.pt is
        return ckpt_dir / "last.pt"

    samples_per_step = cfg.batch_size * cfg.grad_accum
    bar = progress_bar(total=stop_step, initial=step, enabled=env.is_main and progress, unit="step",
                       desc=epoch_label(run_name, step, steps_per_epoch, cfg.epochs))
    last_row: dict = {}
    t_run, steps_run = time.perf_counter(), 0
    t_log, steps_since_log = time.perf_counter(), 0
    model.train()
    while step < stop_step:
        epoch = step // steps_per_epoch
        bar.set_description(epoch_label(run_name, step, steps_per_epoch, cfg.epochs), refresh=False)
        if hasattr(task.train_set, "set_epoch"):
            task.train_set.set_epoch(epoch)
        # The position inside the epoch follows from the step count: skip what earlier steps consumed.
        sampler = ResumableSampler(task.train_set, env, cfg.seed, epoch, skip=(step % steps_per_epoch) * cfg.grad_accum * per_rank)
        loader = DataLoader(
            task.train_set,
            batch_size=per_rank,
            sampler=sampler,
            collate_fn=task.collate,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            # Its own generator: iter(loader) otherwise draws the workers' base seed from the global torch
            # RNG, so a resumed run (a new loader mid-epoch) would shift the model's randomness (drop-path,
            # dropout) against an uninterrupted one.
            generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch),
        )
        batches = iter(loader)
        while step < stop_step and step // steps_per_epoch == epoch:
            terms: dict[str, float] = {}
            finite = True
            for micro in range(cfg.grad_accum):
                batch = to_device(next(batches), device)
                # Under DDP, only the last micro-batch all-reduces gradients.
                sync = micro == cfg.grad_accum - 1 or not env.enabled
                with contextlib.nullcontext() if sync else train_model.no_sync():
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                        loss, parts = task.loss(train_model, batch)
                    finite &= bool(torch.isfinite(loss.detach()))
                    (loss / cfg.grad_accum).backward()
                for k, v in parts.items():
                    terms[k] = terms.get(k, 0.0) + float(v) / cfg.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            # One all-reduce per step: the non-finite flag (every rank must stop together) and the loss terms.
            names = sorted(terms)
            vec = torch.tensor([0.0 if finite else 1.0] + [terms[k] for k in names], dtype=torch.float64, device=device)
            vec = D.all_reduce_mean(vec, env)
            if vec[0] > 0 or not torch.isfinite(grad_norm):
                what = "loss" if vec[0] > 0 else "gradient norm"
                where = f"last good checkpoint kept at {last_good}" if last_good else "no checkpoint was written yet"
                bar.close()
                if writer is not None:
                    writer.close()
                raise OccfeatError(
                    f"{what} became NaN/inf at step {step + 1} (epoch {epoch + 1}); {where}; lower the lr or check the inputs"
                )
            lr = optimizer.param_groups[0]["lr"]  # the lr this step used (logged below)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            steps_run += 1
            steps_since_log += 1
            terms = {k: float(v) for k, v in zip(names, vec[1:].tolist())}
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items()}, refresh=False)
            if step % cfg.log_every == 0 or step == stop_step:
                now = time.perf_counter()
                last_row = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "lr": lr,
                    **terms,
                    "samples_per_s": steps_since_log * samples_per_step / (now - t_log),
                }
                t_log, steps_since_log = now, 0
                if env.is_main:
                    with writing(metrics_path, then="rerun with --resume"), open(metrics_path, "a") as f:
                        f.write(json.dumps(last_row) + "\n")
                    log_scalars(writer, last_row, step)
                bar.set_postfix({**{k: f"{v:.4f}" for k, v in terms.items()}, "samples/s": f"{last_row['samples_per_s']:.1f}"})
        del batches  # ends this epoch's workers before the next epoch starts its own
        epoch_done = step % steps_per_epoch == 0
        if env.is_main and (epoch_done or step == stop_step):
            last_good, ckpt_step = save(epoch_done), step
        D.barrier(env)
    bar.close()
    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - t_run
    return {
        "step": step,
        "epoch": step / steps_per_epoch,
        "last": last_row,
        "checkpoint": ckpt_dir / "last.pt",
        "samples_per_s": steps_run * samples_per_step / elapsed if steps_run else 0.0,
    }
