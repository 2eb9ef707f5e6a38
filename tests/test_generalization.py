"""bench/generalization.py and training/reports/generalization.py: the scoring, the document, the command line and
one tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from bench import generalization as gen
from bench.__main__ import main
from training.learning.schedule import PROFILES
from training.reports.generalization import render, write_report


def _scores(f1: float, flagged: int, clean: int = 4) -> gen.Scores:
    return gen.Scores(layers=10, clean_layers=clean, defects=12, precision=0.5, recall=0.25, f1=f1,
                      defect_recall=0.75, touched=0.875, clean_flagged=flagged, clean_flagged_share=0.0123)  # fmt: skip


def _result() -> gen.Generalization:
    tests = [
        gen.TestSet("a", "set alpha", "nothing", "our generator", 1000, 10),
        gen.TestSet("b", "set beta", "light elevation 70 deg", "our generator", 1001, 10),
        gen.TestSet("c", "set gamma", "another renderer", "second renderer", 1002, 10),
    ]
    models = [
        gen.ModelResult("intensity", "fixed", 0.41, "max-f1 on val vs truth", 3, 2, 61.0,
                        {"a": _scores(0.9, 0), "b": _scores(0.5, 3), "c": _scores(0.25, 4)}),
        gen.ModelResult("shading", "randomised", 0.37, "max-f1 on val vs truth", 4, 4, 75.0,
                        {"a": _scores(0.8, 1), "b": _scores(0.7, 0), "c": _scores(0.6, 2)}),
    ]  # fmt: skip
    training = [gen.TrainingSet("fixed", "one set of settings", 0, 20, 16, 4)]
    return gen.Generalization("python -m bench generalization --size 64", 64, PROFILES["quick"], 0, 0.25, training,
                              tests, models, 12.5)  # fmt: skip


def test_document_has_a_table_per_test_set_with_a_row_per_model():
    result = _result()
    text = render(result)
    assert "Produced by `python -m bench generalization` at " in text
    assert "python -m bench generalization --size 64" in text
    for test in result.test_sets:
        section = text.split(f"### {test.name}\n")[1].split("\n#")[0]
        rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
        assert [row.split(" | ")[0][2:] for row in rows] == [m.name for m in result.models]
        for model, row in zip(result.models, rows, strict=True):
            s = model.scores[test.key]
            assert f"| {s.clean_flagged} of {s.clean_layers} |" in row
            assert f"| {s.f1:.3f} |" in row
    assert "defect recall (≥ 1/4 covered)" in text
    summary = text.split("## Summary")[1].split("## Limits")[0]
    assert "| shading, randomised physics | 0.800 / 0.750 / 1 of 4 | 0.700 / 0.750 / 0 of 4 |" in summary
    limits = text.split("## Limits")[1]
    assert "seed 0" in limits and "10 layers" in limits and "4 of them clean" in limits


def test_from_json_rewrites_the_same_document(tmp_path):
    result = _result()
    gen.save_json(result, tmp_path / "result.json")
    assert gen.Generalization.from_dict(json.loads((tmp_path / "result.json").read_text())) == result
    write_report(result, tmp_path / "direct.md")
    code = main(["generalization", "--from-json", str(tmp_path / "result.json"), "--report", str(tmp_path / "doc.md")])
    assert code == 0
    assert (tmp_path / "doc.md").read_bytes() == (tmp_path / "direct.md").read_bytes()


def _two_defects() -> tuple[np.ndarray, np.ndarray]:
    """A truth with two defects (4x4 of class 1, 10x10 of class 2) and a mask covering the first wholly and 10
    pixels (a tenth) of the second."""
    truth = np.zeros((32, 32), np.uint8)
    truth[2:6, 2:6] = 1
    truth[15:25, 15:25] = 2
    mask = np.zeros((32, 32), bool)
    mask[2:6, 2:6] = True
    mask[15, 15:25] = True
    return mask, truth


@pytest.mark.parametrize("flagged_pixels", [0, 1, 5])
def test_score_counts_defects_found_touched_and_clean_false_alarms(flagged_pixels):
    mask, truth = _two_defects()
    clean_truth = np.zeros((32, 32), np.uint8)
    clean_probs = np.zeros((32, 32), np.float32)
    clean_probs.flat[:flagged_pixels] = 0.5  # at the threshold: flagged, as the answer would
    s = gen.score([mask.astype(np.float32), clean_probs], [truth, clean_truth], threshold=0.5)
    assert (s.layers, s.clean_layers, s.defects) == (2, 1, 2)
    assert s.defect_recall == 0.5 and s.touched == 1.0
    assert s.clean_flagged == int(flagged_pixels > 0)
    assert s.clean_flagged_share == pytest.approx(flagged_pixels / 32**2)
    tp, fp, fn = 16 + 10, flagged_pixels, 90
    assert (s.precision, s.recall, s.f1) == pytest.approx((tp / (tp + fp), tp / (tp + fn), 2 * tp / (2 * tp + fp + fn)))


def test_score_without_defects_or_clean_layers_says_none():
    mask, truth = _two_defects()
    s = gen.score([mask.astype(np.float32)], [truth], threshold=0.5)
    assert s.clean_layers == 0 and s.clean_flagged == 0 and s.clean_flagged_share is None
    clean = gen.score([np.zeros((8, 8), np.float32)], [np.zeros((8, 8), np.uint8)], threshold=0.5)
    assert clean.defect_recall is None and clean.touched is None and clean.f1 == 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--representations", "intensity,colour"], "unknown 'colour'; choose one or more of: shading, shading+albedo"),
        (["--physics", "fixed,wild"], "unknown 'wild'; choose one or more of: fixed, randomised"),
        (["--physics", ","], "nothing in ','"),
        (["--size", "48"], "layer size must be at least 64"),
        (["--test-layers", "0"], "at least 2 training layers"),
        (["--minutes", "0"], "training minutes must be positive"),
        (["--workers", "0"], "workers must be at least 1"),
    ],
)
def test_argument_errors_say_what_is_valid(argv, message, tmp_path, capsys):
    assert main(["generalization", "--work", str(tmp_path / "work"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_a_folder_it_did_not_write_is_left_alone(tmp_path):
    folder = tmp_path / "test" / "generator-fixed"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="did not write"):
        gen.rendered(gen.test_sets(64)[0], folder, 1, 1, "")
    assert (folder / "mine.txt").read_text() == "keep"


@pytest.fixture
def one_thread():
    """One torch thread: tiny layers gain nothing from two, and on a shared machine two threads wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_run_writes_a_document_naming_every_test_set_and_reuses_its_model(tmp_path, one_thread):
    profile = dataclasses.replace(PROFILES["quick"], epochs=1, max_val_layers=2, crop=32, batch_size=2)
    settings = gen.Settings(work=tmp_path / "work", size=64, train_layers=6, test_layers=3,
                            representations=("intensity",), physics=("randomised",), profile=profile, workers=1,
                            command="python -m bench generalization --size 64 --fine-tune", fine_tune=True)  # fmt: skip
    result = gen.run(settings)
    write_report(result, tmp_path / "generalization.md")
    text = (tmp_path / "generalization.md").read_text()
    for test in gen.test_sets(64):
        assert f"### {test.name}\n" in text
    model, tuned = result.models
    assert model.name in text and set(model.scores) == {t.key for t in result.test_sets}
    assert all(s.layers == 3 for s in model.scores.values())
    assert tuned.name == f"{model.name}, {gen.TUNED}" and tuned.name in text and set(tuned.scores) == set(model.scores)
    tuned_args = json.loads((tmp_path / "work" / "runs" / "intensity-randomised-tuned" / "args.json").read_text())
    assert (tuned_args["labels"], tuned_args["init"]) == (
        "heuristic",
        str(settings.work / "runs" / "intensity-randomised" / "checkpoint.pt"),
    )

    prepared = tmp_path / "work" / "prepared" / "randomised"
    run_dir = tmp_path / "work" / "runs" / "intensity-randomised"
    written = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    source = json.loads((prepared / gen.SETTINGS_FILE).read_text())["settings"]
    profile = dataclasses.replace(profile, representation="intensity")
    config, _, summary = gen.trained(prepared, run_dir, profile, source, retrain=False, command="")
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == written  # reused, not trained again
    assert (config.threshold, summary["epochs_run"]) == (model.threshold, model.epochs_run)

    tuned_checkpoint = tmp_path / "work" / "runs" / "intensity-randomised-tuned" / "checkpoint.pt"
    tuned_written = tuned_checkpoint.stat().st_mtime_ns
    gen.fine_tuned(settings, "intensity", "randomised", profile, run_dir / "checkpoint.pt", [])
    assert tuned_checkpoint.stat().st_mtime_ns == tuned_written  # same base weights: the fine-tuned model is reused
    other = dataclasses.replace(profile, lr=profile.lr / 2)
    gen.trained(prepared, run_dir, other, source, retrain=False, command="")  # the base model trained anew, otherwise
    gen.fine_tuned(settings, "intensity", "randomised", profile, run_dir / "checkpoint.pt", [])
    assert tuned_checkpoint.stat().st_mtime_ns != tuned_written  # new base weights: fine-tuned anew from them
