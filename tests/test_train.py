import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from training.inference.model import load_checkpoint
from training.learning.train import TrainConfig, lr_factor, resolve_device, train

TINY = TrainConfig("tiny", epochs=2, repeats=1, batch_size=2, crop=32, lr=1e-3, patience=5)


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_training_writes_the_run_folder(run_dir):
    for name in ("checkpoint.pt", "last.pt", "metrics.csv", "curves.png", "args.json"):
        assert (run_dir / name).exists(), name
    assert any((run_dir / "tb").iterdir())
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"precision", "recall", "f1", "iou", "defect_recall", "train_loss"} <= set(rows[0])
    args = json.loads((run_dir / "args.json").read_text())
    assert args["command"] == "CMD" and args["labels"] == "truth" and args["profile"]["crop"] == 32
    config, _, payload = load_checkpoint(run_dir / "checkpoint.pt")
    assert config.label_source == "truth" and config.training["train_layers"] == 6
    assert config.training["pos_weight"] > 1 and config.training["best_epoch"] == payload["epoch"]
    assert len(config.mean) == 3 and min(config.std) > 0


def test_resume_continues_where_it_stopped(run_dir, tiny_prepared):
    import dataclasses

    train(tiny_prepared, run_dir, dataclasses.replace(TINY, epochs=3), labels="truth", device_name="cpu", resume=True)
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    args = json.loads((run_dir / "args.json").read_text())
    assert args["command"] == "CMD" and len(args["resumed"]) == 1  # the starting command is kept
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 3 * 3  # 6 layers, batch 2: 3 steps an epoch, counted on
    assert state["optimizer"]["state"]  # Adam moments carried over


def test_resume_refuses_a_run_whose_time_budget_is_spent(run_dir, tiny_prepared):
    import dataclasses

    spent = dataclasses.replace(TINY, epochs=9, max_minutes=1e-4)
    with pytest.raises(ValueError, match="already used its"):
        train(tiny_prepared, run_dir, spent, labels="truth", device_name="cpu", resume=True)


def test_two_process_distributed_training_with_torchrun(tiny_prepared, tmp_path, repo_root):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training", "train", "--data", str(tiny_prepared), "--out", str(out), "--labels", "truth",
        "--device", "cpu", "--epochs", "1", "--batch-size", "2", "--crop", "32", "--repeats", "1", "--max-minutes", "10",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=repo_root, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    assert (out / "checkpoint.pt").exists()
    assert json.loads((out / "args.json").read_text())["world_size"] == 2


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0.0, 0.1) == pytest.approx(0.01)
    assert lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-9)


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_profile_checks():
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig("x", epochs=1, repeats=1, batch_size=1, crop=50, lr=1e-3)
