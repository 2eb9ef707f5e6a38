"""The training loop: AdamW with warm-up and cosine decay, Dice + BCE (and the defect class, `losses`), an average of the weights, validation of that
average every epoch, best checkpoint by validation F1, early stopping, resume, and DistributedDataParallel when
started with torchrun.

Run folder: `checkpoint.pt` (best: ModelConfig + weights), `last.pt` (full state for --resume), `metrics.csv`,
`tb/` (TensorBoard), `curves.png`, `args.json` (resolved arguments and profile).

The parts live beside this module: profiles and the learning-rate schedule in `schedule`, devices and processes in
`devices`, the layers and crops in `feed`, validation in `validation`, the run folder's files in `checkpoints` and
`history`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.inference.config import ModelConfig
from training.inference.familiarity import statistics_range
from training.inference.model import build_model, load_checkpoint, load_pretrained_encoder
from training.learning.averaging import WeightAverage
from training.learning.checkpoints import (
    RunState,
    initial_weights,
    load_last,
    save_best,
    save_last,
    started_config,
    write_args,
)
from training.learning.dataset import LayerRecord
from training.learning.devices import Processes, finish, resolve_device, shared_elapsed, shared_flag, start
from training.learning.feed import Feed, initial_config, load_records
from training.learning.history import History, epoch_row, summarize
from training.learning.losses import segmentation_loss
from training.learning.schedule import TrainConfig, budget_spent, check_profile, lr_factor, out_of_time, progress
from training.learning.validation import validate

# check_profile and resolve_device are imported from here by the command line and the tests.
__all__ = ["TrainConfig", "check_profile", "lr_factor", "resolve_device", "train"]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """One training run's parts, built by `setup` and carried from epoch to epoch."""

    profile: TrainConfig
    processes: Processes
    device: torch.device
    out_dir: Path
    seed: int
    pos_weight: float
    config: ModelConfig
    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    average: WeightAverage  # what validation scores and checkpoint.pt keeps
    feed: Feed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    val_records: list[LayerRecord]
    state: RunState
    history: History | None = None  # the main process's metrics.csv, TensorBoard and curves
    class_weights: torch.Tensor | None = None  # a class model learning classes from truth class maps
    teacher: torch.nn.Module | None = (
        None  # a class model's starting weights, when it learns from labels without classes
    )

    @property
    def total_steps(self) -> int:
        return self.profile.epochs * max(1, len(self.feed.loader))


def setup(data_dir: Path, out_dir: Path, profile: TrainConfig, labels: str, masks_dir: Path | None,
          device_name: str, seed: int, pos_weight: float | None, pretrained: bool, resume: bool, loader_workers: int,
          command: str, init: Path | None = None, classes: bool = True,
          pitch_um: float | None = None) -> Run:  # fmt: skip
    """Device and processes, seeds, data, model, optimiser and scaler, restored from last.pt on resume; on the main
    process also args.json and the history. The order is the order of random draws: keep it."""
    processes, device = start(device_name)
    seed_everything(seed + processes.rank)
    train_records, val_records = load_records(data_dir, labels, masks_dir, profile.max_val_layers)
    config, density, weight = initial_config(
        data_dir, train_records, val_records, labels, profile, seed, pos_weight, pretrained, classes, pitch_um
    )
    weights = teacher_weights = None
    if resume:  # the run's own config, as it started: a fine-tuned run's network is its starting model's
        config = started_config(out_dir)
        if config.training.get("classes_kept_by"):
            teacher_weights = load_checkpoint(Path(config.training["init"]))[1].state_dict()
    elif init is not None:
        config, weights = initial_weights(init, config)
        if not config.class_names:  # a binary starting model stays binary: no class weights to record
            dropped = ("class_pixels", "class_weights")
            config = config.replace(training={k: v for k, v in config.training.items() if k not in dropped})
    if not resume:  # the capture statistics the model is trained on, for serving to say when a layer is unlike them
        config = config.replace(input_ranges=statistics_range((r.stack for r in train_records), config))
    model = build_model(config)
    class_targets = bool(config.class_names) and labels == "truth" and classes
    class_weights = torch.tensor(config.training["class_weights"]) if class_targets else None
    if weights is not None:
        model.load_state_dict(weights)
        if config.class_names and not class_targets:  # keep what the starting model knows of classes
            teacher_weights = weights
            config = config.replace(training={**config.training, "classes_kept_by": "distillation from --init"})
    teacher = None
    if teacher_weights is not None:
        teacher = build_model(config)
        teacher.load_state_dict(teacher_weights)
        teacher.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
    if weights is None and not resume and pretrained:
        loaded = load_pretrained_encoder(model, config.encoder)
        config = config.replace(training={**config.training, "pretrained": loaded})
    model.to(device, memory_format=torch.channels_last)  # faster convolutions on CPUs (measured: steps of 160² crops)
    net: torch.nn.Module = DistributedDataParallel(model) if processes.distributed else model
    feed = Feed.build(train_records, config, profile, processes, seed, loader_workers, class_targets)
    optimizer = torch.optim.AdamW(net.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    average = WeightAverage(model, profile.average_decay)
    state = RunState()
    if resume:
        state, config = load_last(out_dir, model, optimizer, scaler, average, device)
    run = Run(profile, processes, device, out_dir, seed, weight, config, model, net, average, feed, optimizer,
              scaler, val_records, state, class_weights=class_weights, teacher=teacher)  # fmt: skip

    if processes.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        args = {"command": command, "data": str(data_dir), "labels": labels, "masks": str(masks_dir) if masks_dir else None,
                "device": str(device), "world_size": processes.world, "seed": seed, "pos_weight": weight,
                "pretrained": pretrained, "resume": resume, "init": str(init) if init else None,
                "profile": dataclasses.asdict(profile),
                "model_config": config.to_dict()}  # fmt: skip
        write_args(out_dir, args, resume)
        run.history = History(out_dir, state.rows)  # appends to state.rows, which last.pt saves
        log.info(
            "training on %s (%d process%s): %d train layers, %d val, labels %s (density %.4f, pos_weight %.1f), %d steps/epoch",
            device, processes.world, "es" if processes.distributed else "", len(train_records), len(val_records), labels,
            density, weight, max(1, len(feed.loader)),
        )  # fmt: skip
    if resume and budget_spent(state.seconds, profile.budget_seconds):
        raise ValueError(
            f"{out_dir} already used its {profile.max_minutes}-minute budget; resume with a larger --max-minutes"
        )
    return run


def train_step(run: Run, batch: dict[str, torch.Tensor]) -> float:
    """One optimiser step on a batch (float16 autocast on CUDA); returns its loss."""
    images = batch["image"].to(run.device, memory_format=torch.channels_last)
    masks = batch["mask"].to(run.device)
    with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.device.type == "cuda"):
        logits = run.net(images)
        if run.teacher is not None:
            with torch.no_grad():
                teacher = run.teacher(images)
    loss = segmentation_loss(logits, masks, run.pos_weight, run.class_weights,
                             teacher if run.teacher is not None else None)  # fmt: skip
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.average.update(run.model)
    run.state.step += 1
    return float(loss.detach())


def train_epoch(run: Run, epoch: int, started: float) -> list[float]:
    """Train on one epoch of crops (0-based `epoch`), the learning rate set before each step; returns the losses.
    With a time budget, stop early on the same step in every process to leave room for validation."""
    profile, budget = run.profile, run.profile.budget_seconds
    run.feed.reseed(epoch, run.seed, run.processes)
    losses: list[float] = []
    bar = tqdm(run.feed.loader, desc=f"epoch {epoch + 1}/{profile.epochs}", unit="batch",
               disable=not run.processes.main, leave=False)  # fmt: skip
    for batch in bar:
        elapsed = shared_elapsed(started, run.processes) if budget else 0.0
        done = progress(run.state.step, run.total_steps, elapsed, budget)
        for group in run.optimizer.param_groups:
            group["lr"] = profile.lr * lr_factor(done, profile.warmup_fraction)
        losses.append(train_step(run, batch))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if out_of_time(elapsed, budget):
            break
    return losses


def end_epoch(run: Run, epoch: int, losses: list[float], started: float) -> bool:
    """On the main process: validate, record the epoch, save checkpoint.pt when it is the best and last.pt always;
    returns whether to stop (patience or time budget spent)."""
    assert run.history is not None, "only the main process ends an epoch"
    scores = validate(run.average.model, run.val_records, run.config, run.device).row()
    lr = run.optimizer.param_groups[0]["lr"]
    row = epoch_row(epoch + 1, losses, lr, scores, time.perf_counter() - started)
    run.history.add(row)
    improved = run.state.score(row["f1"])
    if improved:
        save_best(run.out_dir, run.config, run.average.model, epoch + 1, scores)
    save_last(run.out_dir, run.config, run.model, run.optimizer, run.scaler, run.average, run.state,
              time.perf_counter() - started)  # fmt: skip
    log.info(
        "epoch %d: loss %.4f, val P %.3f R %.3f F1 %.3f IoU %.3f defect recall %.3f%s",
        epoch + 1, row["train_loss"], row["precision"], row["recall"], row["f1"], row["iou"], row["defect_recall"],
        " (best)" if improved else "",
    )  # fmt: skip
    if out_of_time(time.perf_counter() - started, run.profile.budget_seconds):
        log.info("time budget of %.1f minutes reached after epoch %d", run.profile.max_minutes, epoch + 1)
        return True
    if run.state.stale >= run.profile.patience:
        log.info("no better validation F1 for %d epochs: stopping early", run.state.stale)
        return True
    return False


def train(
    data_dir: Path,
    out_dir: Path,
    profile: TrainConfig,
    labels: str = "truth",
    masks_dir: Path | None = None,
    device_name: str = "auto",
    seed: int = 0,
    pos_weight: float | None = None,
    pretrained: bool = False,
    resume: bool = False,
    loader_workers: int = 0,
    command: str = "",
    init: Path | None = None,
    classes: bool = True,
    pitch_um: float | None = None,
) -> dict[str, Any]:
    """Train a model on a prepared folder, from scratch or (`init`) from another model's weights; returns a summary
    of the best epoch (empty on processes other than the main one). From exact truth the model learns the defect
    classes too, unless `classes` is off; `pitch_um` states the pitch of the camera it will serve."""
    out_dir = Path(out_dir)
    run = setup(data_dir, out_dir, profile, labels, masks_dir, device_name, seed, pos_weight, pretrained, resume,
                loader_workers, command, init, classes, pitch_um)  # fmt: skip
    started = time.perf_counter() - run.state.seconds
    run.net.train()
    for epoch in range(run.state.epochs_done, profile.epochs):
        losses = train_epoch(run, epoch, started)
        run.state.epochs_done = epoch + 1
        stop = end_epoch(run, epoch, losses, started) if run.processes.main else False
        if shared_flag(stop, run.processes):
            break

    summary: dict[str, Any] = {}
    if run.history is not None:
        run.history.close()
        summary = summarize(run.history.rows, time.perf_counter() - started, out_dir / "checkpoint.pt")
    finish(run.processes)
    return summary
