"""What a run folder keeps so that the best model can be served and the run resumed.

- `checkpoint.pt`: the best epoch by validation F1: ModelConfig (with `best_epoch` and its scores) and the averaged
  weights.
- `last.pt`: the latest epoch's full state: weights, optimiser, gradient scaler, weight average and `RunState`, read
  by --resume.
- `args.json`: the resolved arguments of the command that started the run, with each resumption noted after it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.inference.config import ModelConfig
from training.inference.images import write_json
from training.inference.model import load_checkpoint, save_checkpoint
from training.learning.averaging import WeightAverage

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where the loop stands: what last.pt carries besides weights, optimiser and scaler."""

    epochs_done: int = 0
    step: int = 0  # optimiser steps taken, over all epochs (the learning-rate schedule follows it)
    best_f1: float = -1.0
    stale: int = 0  # epochs since best_f1 last improved (early stopping)
    seconds: float = 0.0  # time used by the earlier sessions of a resumed run
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv so far

    def score(self, f1: float) -> bool:
        """Count an epoch's validation F1: True when it beats the best so far (ties do not)."""
        if f1 > self.best_f1:
            self.best_f1, self.stale = f1, 0
            return True
        self.stale += 1
        return False


def started_config(out_dir: Path) -> ModelConfig:
    """The ModelConfig a run started with, from its last.pt (what --resume rebuilds the model from)."""
    last = Path(out_dir) / "last.pt"
    if not last.exists():
        raise FileNotFoundError(f"--resume: {last} not found")
    return ModelConfig.from_dict(torch.load(last, map_location="cpu", weights_only=True)["model_config"])


def load_last(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    average: WeightAverage,
    device: torch.device,
) -> tuple[RunState, ModelConfig]:
    """Restore weights, optimiser, scaler and weight average from out_dir/last.pt in place; return the state to
    continue from and the ModelConfig the run started with."""
    last = Path(out_dir) / "last.pt"
    if not last.exists():
        raise FileNotFoundError(f"--resume: {last} not found")
    payload = torch.load(last, map_location=device, weights_only=True)
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    average.load_state_dict(payload["average"])
    state = RunState(
        epochs_done=payload["epoch"] + 1,
        step=payload["step"],
        best_f1=payload["best_f1"],
        stale=payload["stale"],
        seconds=payload["seconds"],
        rows=payload["rows"],
    )
    log.info("resuming %s after epoch %d (best validation F1 %.4f)", out_dir, payload["epoch"], state.best_f1)
    return state, ModelConfig.from_dict(payload["model_config"])


def save_last(
    out_dir: Path,
    config: ModelConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    average: WeightAverage,
    state: RunState,
    seconds: float,
) -> None:
    """Write last.pt: everything --resume needs to continue after the epoch just finished."""
    save_checkpoint(Path(out_dir) / "last.pt", config, model.state_dict(), optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict(), average=average.state_dict(), step=state.step, epoch=state.epochs_done - 1, best_f1=state.best_f1,
                    stale=state.stale, rows=state.rows, seconds=seconds)  # fmt: skip


def save_best(out_dir: Path, config: ModelConfig, model: torch.nn.Module, epoch: int, scores: dict[str, float]) -> None:
    """Write checkpoint.pt for `epoch` (counted from 1), its validation scores recorded in the ModelConfig."""
    best_config = config.replace(training={**config.training, "best_epoch": epoch, "val": scores})
    save_checkpoint(Path(out_dir) / "checkpoint.pt", best_config, model.state_dict(), epoch=epoch)


# What a fine-tuned model keeps from the model it starts from: everything that shapes its input and its network.
INHERITED = ("encoder", "decoder_channels", "class_names", "representation", "background_sigma_px", "mean", "std")


def initial_weights(init: Path, config: ModelConfig) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """For `train --init`: the new run's config with the starting model's input and network (INHERITED), and that
    model's weights. Refuses a model trained for other light azimuths: its channels would mean other lights."""
    start, model, _ = load_checkpoint(init)
    if tuple(start.azimuths_deg) != tuple(config.azimuths_deg):
        raise ValueError(
            f"{init} was trained for lights at {list(start.azimuths_deg)} degrees, the data's lights are at "
            f"{list(config.azimuths_deg)}: render synthetic layers for these lights (`python -m training synth "
            f"--lights ...`) and train from them, or prepare the data with the model's light order"
        )
    inherited = {name: getattr(start, name) for name in INHERITED}
    training = {**config.training, "init": str(init), "init_label_source": start.label_source}
    return config.replace(**inherited, training=training), model.state_dict()


def run_arguments(args: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """args.json's content: a new run's arguments, or a resumed run's first arguments with this resumption's
    command, profile and device appended to "resumed"."""
    if previous is None:
        return args
    resumption = {k: args[k] for k in ("command", "profile", "device")}
    return {**previous, "resumed": [*previous.get("resumed", []), resumption]}


def write_args(out_dir: Path, args: dict[str, Any], resume: bool) -> None:
    """Write args.json; on --resume keep the command that started the run and note this resumption."""
    path = Path(out_dir) / "args.json"
    previous = json.loads(path.read_text()) if resume and path.exists() else None
    write_json(path, run_arguments(args, previous))
