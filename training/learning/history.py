"""The record of a run, epoch by epoch: one row per epoch (training loss, learning rate, validation scores, seconds)
written to `metrics.csv` and TensorBoard (`tb/`), drawn as `curves.png`, and summarised by its best epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.inference.images import write_csv
from training.learning.validation import VALIDATION_THRESHOLD
from training.reports.figures import pyplot, save_png

SCORES = ("precision", "recall", "f1", "iou", "defect_recall")  # validation scores plotted and summarised


def epoch_row(epoch: int, losses: list[float], lr: float, scores: dict[str, float], seconds: float) -> dict[str, Any]:
    """One metrics.csv row; `epoch` counts from 1 and `seconds` is the run's time so far."""
    train_loss = float(np.mean(losses)) if losses else float("nan")
    return {"epoch": epoch, "train_loss": train_loss, "lr": lr, **scores, "seconds": round(seconds, 1)}


def summarize(rows: list[dict[str, Any]], seconds: float, checkpoint: Path) -> dict[str, Any]:
    """The best epoch by validation F1 (the first of equals), the epochs run and where the best checkpoint is."""
    best = max(rows, key=lambda r: r["f1"])
    return {
        "best_epoch": best["epoch"],
        "epochs_run": len(rows),
        **{k: best[k] for k in SCORES},
        "seconds": round(seconds, 1),
        "checkpoint": str(checkpoint),
    }


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation scores against the epoch, side by side."""
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [r["train_loss"] for r in rows], marker="o")
    a.set_xlabel("epoch")
    a.set_title("training loss (Dice + BCE)")
    for key in SCORES:
        b.plot(epochs, [r[key] for r in rows], marker=".", label=key)
    b.set_ylim(0, 1)
    b.set_xlabel("epoch")
    b.set_title(f"validation (threshold {VALIDATION_THRESHOLD})")
    b.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


class History:
    """The rows of a run folder and their files; only the main process keeps one. A resumed run starts from the
    rows saved in last.pt, so metrics.csv and the curves cover the whole run."""

    def __init__(self, out_dir: Path, rows: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # a slow import, paid only by the process that writes

        self.out_dir = Path(out_dir)
        self.rows = rows
        self.writer = SummaryWriter(str(self.out_dir / "tb"))

    def add(self, row: dict[str, Any]) -> None:
        """Append an epoch's row: TensorBoard scalars, and metrics.csv rewritten whole."""
        self.rows.append(row)
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, row["epoch"])
        write_csv(self.out_dir / "metrics.csv", list(self.rows[0]), self.rows)

    def close(self) -> None:
        """Flush TensorBoard and draw curves.png."""
        self.writer.close()
        plot_curves(self.rows, self.out_dir / "curves.png")
