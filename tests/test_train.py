import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.inference.classes import DEFECT_CLASSES
from training.inference.config import ModelConfig
from training.inference.model import load_checkpoint
from training.learning.checkpoints import RunState, run_arguments
from training.learning.devices import Processes, shared_flag
from training.learning.history import epoch_row, summarize
from training.learning.metrics import Counts
from training.learning.schedule import PROFILES, budget_spent, check_profile, out_of_time, progress
from training.learning.train import TrainConfig, lr_factor, resolve_device, train
from training.learning.validation import Validation

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
    assert config.training["pos_weight"] == TINY.pos_weight and config.training["best_epoch"] == payload["epoch"]
    assert config.representation == ModelConfig.representation and "average" in torch.load(
        run_dir / "last.pt", weights_only=True
    )
    assert set(config.input_ranges) >= {"contrast", "saturated"}  # the capture statistics serving compares with
    assert config.class_names == DEFECT_CLASSES and len(config.training["class_weights"]) == len(DEFECT_CLASSES)
    assert set(config.training["class_pixels"]) == set(DEFECT_CLASSES) and "class_accuracy" in rows[0]
    assert config.pitch_um is None  # the tiny layers draw their pitches: no one pitch to record


def test_binary_training_from_truth_and_a_stated_pitch(tiny_prepared, tmp_path):
    train(tiny_prepared, tmp_path, dataclasses.replace(TINY, epochs=1), labels="truth", device_name="cpu",
          classes=False, pitch_um=30.0)  # fmt: skip
    config, _, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert config.class_names == () and config.out_channels == 1 and config.pitch_um == 30.0
    assert "class_weights" not in config.training
    assert "class_accuracy" not in (tmp_path / "metrics.csv").read_text()
    tuned = tmp_path / "tuned"  # a binary model fine-tuned on class maps stays binary
    train(tiny_prepared, tuned, dataclasses.replace(TINY, epochs=1), labels="truth", device_name="cpu",
          init=tmp_path / "checkpoint.pt")  # fmt: skip
    config, _, _ = load_checkpoint(tuned / "checkpoint.pt")
    assert config.class_names == () and "class_weights" not in config.training and config.pitch_um is None


def test_resume_continues_where_it_stopped(run_dir, tiny_prepared):
    train(tiny_prepared, run_dir, dataclasses.replace(TINY, epochs=3), labels="truth", device_name="cpu", resume=True)
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    args = json.loads((run_dir / "args.json").read_text())
    assert args["command"] == "CMD" and len(args["resumed"]) == 1  # the starting command is kept
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 3 * 3  # 6 layers, batch 2: 3 steps an epoch, counted on
    assert state["optimizer"]["state"]  # Adam moments carried over


def test_fine_tuning_starts_from_the_model_and_keeps_its_input_and_network(tiny_run, tiny_prepared, tmp_path):
    start, start_model, _ = load_checkpoint(tiny_run / "checkpoint.pt")
    still = dataclasses.replace(TINY, epochs=1, lr=1e-12, representation="intensity", decoder_channels=(8,) * 5)
    train(tiny_prepared, tmp_path, still, labels="heuristic", device_name="cpu", init=tiny_run / "checkpoint.pt")
    config, model, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (config.representation, config.decoder_channels) == (start.representation, start.decoder_channels)
    assert config.training["init"] == str(tiny_run / "checkpoint.pt") and config.label_source == "heuristic"
    first = "encoder.features.0.0.weight"  # a learning rate of 1e-12 leaves the weights where they started
    torch.testing.assert_close(model.state_dict()[first], start_model.state_dict()[first])
    assert json.loads((tmp_path / "args.json").read_text())["init"] == str(tiny_run / "checkpoint.pt")
    # a class model learning from labels without classes keeps its classes, taught by its starting weights
    assert config.class_names == start.class_names == DEFECT_CLASSES
    assert config.training["classes_kept_by"] == "distillation from --init"
    # resumed without --init (and other network options): the run's own network, and its teacher again
    train(tiny_prepared, tmp_path, dataclasses.replace(TINY, epochs=2, lr=1e-12), labels="heuristic",
          device_name="cpu", resume=True)  # fmt: skip
    resumed, _, _ = load_checkpoint(tmp_path / "last.pt")
    assert (resumed.representation, resumed.decoder_channels) == (start.representation, start.decoder_channels)
    assert resumed.training["classes_kept_by"] == "distillation from --init"


def test_fine_tuning_refuses_a_model_for_other_lights(tmp_path):
    from training.inference.config import ModelConfig
    from training.inference.model import build_model, save_checkpoint
    from training.learning.checkpoints import initial_weights

    other = ModelConfig(azimuths_deg=(0.0, 90.0, 180.0), decoder_channels=(8,) * 5)
    save_checkpoint(tmp_path / "other.pt", other, build_model(other).state_dict())
    with pytest.raises(ValueError, match=r"trained for lights at \[0.0, 90.0, 180.0\] degrees, the data's"):
        initial_weights(tmp_path / "other.pt", ModelConfig())


def test_weight_average_follows_the_model_with_a_warm_up():
    from training.learning.averaging import WeightAverage

    model = torch.nn.BatchNorm1d(2)
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.num_batches_tracked.fill_(7)
    average.update(model)  # first update: decay (1 + 1) / (10 + 1), so the average moves 9/11 of the way
    torch.testing.assert_close(average.model.weight, torch.full((2,), 1.0 + 2.0 * 9 / 11))
    assert int(average.model.num_batches_tracked) == 7  # integer buffers are copied
    for _ in range(200):
        average.update(model)
    torch.testing.assert_close(average.model.weight, torch.full((2,), 3.0))
    assert not any(p.requires_grad for p in average.model.parameters())
    with pytest.raises(ValueError, match=r"decay must be within 0\.\.1"):
        WeightAverage(model, decay=1.0)


def test_resume_refuses_a_run_whose_time_budget_is_spent(run_dir, tiny_prepared):
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


def test_unknown_profile_lists_the_choices():
    assert check_profile("quick") is PROFILES["quick"]
    with pytest.raises(ValueError, match="choose from: quick, full"):
        check_profile("fast")


@pytest.mark.parametrize(("max_minutes", "seconds"), [(None, None), (0, None), (0.5, 30.0), (2, 120)])
def test_budget_seconds(max_minutes, seconds):
    assert dataclasses.replace(TINY, max_minutes=max_minutes).budget_seconds == seconds


@pytest.mark.parametrize(
    ("step", "elapsed", "budget", "expected"),
    [
        (0, 0.0, None, 0.0),
        (5, 999.0, None, 0.5),  # no budget: the clock does not count
        (5, 9.0, 100.0, 0.5),  # steps ahead of the clock
        (5, 72.0, 100.0, 0.8),  # the clock ahead of the steps: 72 s of the 90 s training share
        (10, 0.0, 100.0, 1.0),
    ],
)
def test_progress_follows_whichever_ends_first(step, elapsed, budget, expected):
    assert progress(step, 10, elapsed, budget) == pytest.approx(expected)


@pytest.mark.parametrize(("elapsed", "budget", "stop"), [(1e9, None, False), (89.0, 100.0, False), (91.0, 100.0, True)])
def test_out_of_time_leaves_a_tenth_of_the_budget(elapsed, budget, stop):
    assert out_of_time(elapsed, budget) is stop


@pytest.mark.parametrize(("used", "budget", "spent"), [(1e9, None, False), (89.0, 100.0, False), (91.0, 100.0, True)])
def test_budget_spent(used, budget, spent):
    assert budget_spent(used, budget) is spent


def test_run_state_counts_epochs_without_a_better_f1():
    state = RunState()
    improved = [state.score(f1) for f1 in (0.2, 0.5, 0.5, 0.4, float("nan"), 0.6)]
    assert improved == [True, True, False, False, False, True]
    assert state.best_f1 == 0.6 and state.stale == 0
    state.score(0.1)
    assert state.stale == 1


def test_run_arguments_keep_the_first_command_and_note_each_resumption():
    first = {"command": "train A", "profile": {"epochs": 2}, "device": "cpu", "seed": 0}
    assert run_arguments(first, None) is first
    again = {**first, "command": "train B", "profile": {"epochs": 3}, "seed": 1}
    once = run_arguments(again, first)
    assert once["command"] == "train A" and once["seed"] == 0
    assert once["resumed"] == [{"command": "train B", "profile": {"epochs": 3}, "device": "cpu"}]
    twice = run_arguments({**again, "command": "train C"}, once)
    assert [r["command"] for r in twice["resumed"]] == ["train B", "train C"]


def test_epoch_rows_and_their_summary():
    scores = {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "iou": 0.2, "defect_recall": 1.0}
    first = epoch_row(1, [1.0, 3.0], 1e-3, scores, 12.34)
    assert list(first) == ["epoch", "train_loss", "lr", *scores, "seconds"]
    assert first["train_loss"] == 2.0 and first["seconds"] == 12.3
    assert math.isnan(epoch_row(2, [], 1e-3, scores, 0.0)["train_loss"])  # a budget can end an epoch before a step
    second = epoch_row(2, [1.0], 1e-4, {**scores, "f1": 0.9}, 20.0)
    third = epoch_row(3, [1.0], 1e-5, {**scores, "f1": 0.9}, 30.0)
    summary = summarize([first, second, third], 31.06, Path("run/checkpoint.pt"))
    assert summary["best_epoch"] == 2 and summary["epochs_run"] == 3 and summary["f1"] == 0.9  # the first of equals
    assert summary["seconds"] == 31.1 and summary["checkpoint"] == str(Path("run/checkpoint.pt"))


@pytest.mark.parametrize(
    ("truth", "keys"),
    [(None, {"precision", "recall", "f1", "iou", "defect_recall"}), (Counts(1, 0, 0, 5), {"f1_vs_truth"})],
)
def test_validation_row(truth, keys):
    row = Validation(Counts(tp=2, fp=2, fn=0, tn=4), found=1, instances=2, truth_counts=truth).row()
    assert keys <= set(row) and row["f1"] == pytest.approx(2 / 3)
    assert ("f1_vs_truth" in row) == (truth is not None)
    assert math.isnan(Validation(Counts(), 0, 0).row()["defect_recall"])  # no defects to find


def test_processes_from_the_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = Processes.from_environment()
    assert alone == Processes(0, 1, 0) and alone.main and not alone.distributed
    assert shared_flag(True, alone) is True  # one process: nothing to broadcast
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    other = Processes.from_environment()
    assert other == Processes(3, 4, 1) and not other.main and other.distributed
