"""The training loop: AdamW with warm-up and cosine decay, Dice + BCE, validation every epoch, best checkpoint by
validation F1, early stopping, resume, and DistributedDataParallel when started with torchrun.

Run folder: `checkpoint.pt` (best: ModelConfig + weights), `last.pt` (full state for --resume), `metrics.csv`,
`tb/` (TensorBoard), `curves.png`, `args.json` (resolved arguments and profile).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from training.inference.answer import defect_mask
from training.inference.config import ModelConfig
from training.inference.images import write_csv, write_json
from training.inference.model import build_model, load_pretrained_encoder, save_checkpoint
from training.inference.preprocess import channel_statistics
from training.inference.tiling import predict_probabilities
from training.learning.augment import training_transform
from training.learning.dataset import LayerRecord, TrainingCrops, load_split
from training.learning.losses import dice_bce_loss, pos_weight_from_density
from training.learning.metrics import Counts, components_found, confusion
from training.reports.figures import pyplot, save_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    profile: str
    epochs: int
    repeats: int  # crops drawn from each training layer per epoch
    batch_size: int
    crop: int
    lr: float
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    patience: int = 10  # epochs without a better validation F1 before stopping
    max_minutes: float | None = None  # wall-clock budget for the loop (validation included)
    defect_crop_share: float = 0.5
    max_val_layers: int | None = None

    def __post_init__(self) -> None:
        if self.crop % 32 or self.crop < 32:
            raise ValueError(f"crop must be a positive multiple of 32 (the U-Net's stride), got {self.crop}")
        if min(self.epochs, self.repeats, self.batch_size) < 1:
            raise ValueError(f"epochs, repeats and batch size must be at least 1, got {self}")


PROFILES: dict[str, TrainConfig] = {
    # Fits in 4 minutes on 2 CPU cores (setup and the final save included): for the demo and the tests.
    "quick": TrainConfig(
        "quick",
        epochs=30,
        repeats=2,
        batch_size=8,
        crop=160,
        lr=3e-3,
        warmup_fraction=0.1,
        patience=30,
        max_minutes=3.4,
        max_val_layers=12,
    ),
    # The documented recipe for a better model (a GPU makes it short).
    "full": TrainConfig("full", epochs=120, repeats=8, batch_size=16, crop=320, lr=1e-3, patience=20),
}


def check_profile(name: str) -> TrainConfig:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from: {', '.join(PROFILES)}")
    return PROFILES[name]


def resolve_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but PyTorch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps asked for, but PyTorch sees no Apple Metal device")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; choose from: auto, cpu, cuda, mps")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 over the first `warmup` share of training, then cosine decay to 0 at progress 1."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))))


@dataclass
class Validation:
    counts: Counts
    found: int
    instances: int
    truth_counts: Counts | None = None

    def row(self) -> dict[str, float]:
        c = self.counts
        row = {
            "precision": c.precision(),
            "recall": c.recall(),
            "f1": c.f1(),
            "iou": c.iou(),
            "defect_recall": self.found / self.instances if self.instances else float("nan"),
        }
        if self.truth_counts is not None:
            row["f1_vs_truth"] = self.truth_counts.f1()
        return row


def validate(
    model: torch.nn.Module, records: list[LayerRecord], config: ModelConfig, device: torch.device
) -> Validation:
    """Pixel counts and defect-level recall at the config's threshold over whole validation layers."""
    model.eval()
    counts, truth_counts = Counts(), Counts()
    found = instances = 0
    for record in records:
        predicted = defect_mask(predict_probabilities(model, record.stack, config, device), config.threshold)
        counts = counts + confusion(predicted, record.label > 0)
        f, n = components_found(predicted, record.label > 0)
        found, instances = found + f, instances + n
        if record.truth is not None:
            truth_counts = truth_counts + confusion(predicted, record.truth > 0)
    model.train()
    has_truth = any(r.truth is not None for r in records)
    return Validation(counts, found, instances, truth_counts if has_truth else None)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run directly."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _elapsed(started: float, world: int) -> float:
    """Seconds since `started` on rank 0, shared by every process so that all of them stop on the same step and
    use the same learning rate."""
    elapsed = time.perf_counter() - started
    if world > 1:
        shared = torch.tensor([elapsed], dtype=torch.float64)
        dist.broadcast(shared, src=0)
        elapsed = float(shared.item())
    return elapsed


def _reseed_worker(_worker_id: int) -> None:
    """DataLoader workers get copies of the transform with the same random state: give each its own stream."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(int(torch.initial_seed() % 2**32))


def _plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [r["train_loss"] for r in rows], marker="o")
    a.set_xlabel("epoch")
    a.set_title("training loss (Dice + BCE)")
    for key in ("precision", "recall", "f1", "iou", "defect_recall"):
        b.plot(epochs, [r[key] for r in rows], marker=".", label=key)
    b.set_ylim(0, 1)
    b.set_xlabel("epoch")
    b.set_title("validation (threshold 0.5)")
    b.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def dataset_azimuths(data_dir: Path) -> tuple[float, float, float]:
    report = Path(data_dir) / "prepare_report.json"
    if report.exists():
        azimuths = json.loads(report.read_text()).get("azimuths_deg")
        if azimuths:
            return tuple(azimuths)  # type: ignore[return-value]
    return (0.0, 120.0, 240.0)


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
) -> dict[str, Any]:
    """Train a model on a prepared folder; returns a summary of the best epoch."""
    rank, world, local_rank = _distributed()
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() and device_name in ("auto", "cuda") else "gloo"
        dist.init_process_group(backend)
    device = resolve_device(device_name)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    main = rank == 0
    out_dir = Path(out_dir)
    seed_everything(seed + rank)

    train_records = load_split(data_dir, "train", labels, masks_dir)
    val_records = load_split(data_dir, "val", labels, masks_dir)[: profile.max_val_layers]
    if not val_records:
        raise ValueError(f"the val split of {data_dir} is empty: prepare more layers or change --split")
    density = float(np.mean([r.label.mean() for r in train_records]))
    weight = pos_weight if pos_weight is not None else pos_weight_from_density(density)
    mean, std = channel_statistics([r.stack for r in train_records])
    config = ModelConfig(
        mean=mean,
        std=std,
        azimuths_deg=dataset_azimuths(data_dir),
        label_source=labels,
        training={
            "data": str(data_dir),
            "profile": profile.profile,
            "train_layers": len(train_records),
            "val_layers": len(val_records),
            "label_density": round(density, 6),
            "pos_weight": round(weight, 3),
            "seed": seed,
            "pretrained": pretrained,
        },
    )

    model = build_model(config)
    if pretrained:
        config = config.replace(
            training={**config.training, "pretrained": load_pretrained_encoder(model, config.encoder)}
        )
    model.to(device)
    net: torch.nn.Module = DistributedDataParallel(model) if world > 1 else model

    transform = training_transform(profile.crop, config.azimuths_deg, profile.defect_crop_share)
    transform.set_random_seed(seed + rank)
    crops = TrainingCrops(train_records, config, transform, profile.repeats)
    generator = torch.Generator().manual_seed(seed)
    sampler = (
        DistributedSampler(crops, world, rank, seed=seed) if world > 1 else RandomSampler(crops, generator=generator)
    )
    loader = DataLoader(
        crops,
        batch_size=profile.batch_size,
        sampler=sampler,
        num_workers=loader_workers,
        worker_init_fn=_reseed_worker if loader_workers > 0 else None,
        generator=generator,
        drop_last=len(crops) >= profile.batch_size,
    )
    steps_per_epoch = max(1, len(loader))
    total_steps = profile.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(net.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    rows: list[dict[str, Any]] = []
    start_epoch, best_f1, stale, used_seconds, step = 0, -1.0, 0, 0.0, 0
    if resume:
        last = out_dir / "last.pt"
        if not last.exists():
            raise FileNotFoundError(f"--resume: {last} not found")
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_f1, stale, step = state["epoch"] + 1, state["best_f1"], state["stale"], state["step"]
        rows, used_seconds = state["rows"], state["seconds"]
        config = ModelConfig.from_dict(state["model_config"])
        log.info("resuming %s after epoch %d (best validation F1 %.4f)", out_dir, state["epoch"], best_f1)

    writer = None
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        args = {"command": command, "data": str(data_dir), "labels": labels, "masks": str(masks_dir) if masks_dir else None,
                "device": str(device), "world_size": world, "seed": seed, "pos_weight": weight, "pretrained": pretrained,
                "resume": resume, "profile": dataclasses.asdict(profile), "model_config": config.to_dict()}  # fmt: skip
        previous = out_dir / "args.json"
        if resume and previous.exists():  # keep the command that started the run; note each resumption
            first = json.loads(previous.read_text())
            args = {
                **first,
                "resumed": [*first.get("resumed", []), {k: args[k] for k in ("command", "profile", "device")}],
            }
        write_json(previous, args)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
        log.info(
            "training on %s (%d process%s): %d train layers, %d val, labels %s (density %.4f, pos_weight %.1f), %d steps/epoch",
            device, world, "es" if world > 1 else "", len(train_records), len(val_records), labels, density, weight, steps_per_epoch,
        )  # fmt: skip

    started = time.perf_counter() - used_seconds
    budget = profile.max_minutes * 60 if profile.max_minutes else None
    net.train()
    epoch = start_epoch
    if budget and resume and used_seconds >= 0.9 * budget:
        raise ValueError(
            f"{out_dir} already used its {profile.max_minutes}-minute budget; resume with a larger --max-minutes"
        )
    for epoch in range(start_epoch, profile.epochs):
        # Crops and their order depend on (seed, rank, epoch) only, so a resumed run continues the same sequence.
        transform.set_random_seed(seed + rank + 1000 * epoch)
        generator.manual_seed(seed + 1000 * epoch)
        if world > 1:
            sampler.set_epoch(epoch)  # type: ignore[union-attr]
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{profile.epochs}", unit="batch", disable=not main, leave=False)
        for batch in bar:
            # The schedule runs over the epochs or, when there is a time budget, over whichever ends first.
            progress = step / total_steps
            elapsed = _elapsed(started, world) if budget else 0.0
            if budget:
                progress = max(progress, elapsed / (0.9 * budget))
            for group in optimizer.param_groups:
                group["lr"] = profile.lr * lr_factor(progress, profile.warmup_fraction)
            images, masks = batch["image"].to(device), batch["mask"].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = net(images)
            loss = dice_bce_loss(logits, masks, weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if budget and elapsed > budget * 0.9:
                break  # leave room for validation inside the budget (the same step on every process)
        stop = False
        if main:
            result = validate(model, val_records, config, device).row()
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   "lr": optimizer.param_groups[0]["lr"], **result, "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
            rows.append(row)
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch + 1)  # type: ignore[union-attr]
            improved = row["f1"] > best_f1
            if improved:
                best_f1, stale = row["f1"], 0
                best_config = config.replace(training={**config.training, "best_epoch": epoch + 1, "val": result})
                save_checkpoint(out_dir / "checkpoint.pt", best_config, model.state_dict(), epoch=epoch + 1)
            else:
                stale += 1
            write_csv(out_dir / "metrics.csv", list(rows[0]), rows)
            save_checkpoint(out_dir / "last.pt", config, model.state_dict(), optimizer=optimizer.state_dict(),
                            scaler=scaler.state_dict(), step=step, epoch=epoch, best_f1=best_f1, stale=stale, rows=rows,
                            seconds=time.perf_counter() - started)  # fmt: skip
            log.info(
                "epoch %d: loss %.4f, val P %.3f R %.3f F1 %.3f IoU %.3f defect recall %.3f%s",
                epoch + 1, row["train_loss"], row["precision"], row["recall"], row["f1"], row["iou"], row["defect_recall"],
                " (best)" if improved else "",
            )  # fmt: skip
            out_of_time = budget is not None and time.perf_counter() - started > budget * 0.9
            stop = stale >= profile.patience or out_of_time
            if out_of_time:
                log.info("time budget of %.1f minutes reached after epoch %d", profile.max_minutes, epoch + 1)
            elif stale >= profile.patience:
                log.info("no better validation F1 for %d epochs: stopping early", stale)
        if world > 1:
            flag = [stop]
            dist.broadcast_object_list(flag, src=0)
            stop = flag[0]
        if stop:
            break

    summary: dict[str, Any] = {}
    if main:
        writer.close()  # type: ignore[union-attr]
        _plot_curves(rows, out_dir / "curves.png")
        best = max(rows, key=lambda r: r["f1"])
        summary = {"best_epoch": best["epoch"], "epochs_run": len(rows), **{k: best[k] for k in ("precision", "recall", "f1", "iou", "defect_recall")},
                   "seconds": round(time.perf_counter() - started, 1), "checkpoint": str(out_dir / "checkpoint.pt")}  # fmt: skip
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary
