import shutil

import numpy as np
import pytest

from training.inference.classes import CLASS_IDS, DEFECT_CLASSES
from training.inference.config import DECISION_FILE, Decision
from training.inference.model import load_checkpoint, state_digest
from training.learning.evaluate import BINS, Curve, Rule, class_scores, detection_scores, evaluate, parse_rule


def test_curve_counts_and_threshold_rules():
    curve = Curve.empty()
    probabilities = np.array([0.95, 0.85, 0.6, 0.4, 0.3, 0.1])
    reference = np.array([True, True, False, True, False, False])
    curve.add(probabilities, reference)
    table = curve.table()
    i = int(0.5 * BINS)  # threshold 0.5: predicted 0.95, 0.85, 0.6 -> tp 2, fp 1, fn 1
    assert table["precision"][i] == pytest.approx(2 / 3) and table["recall"][i] == pytest.approx(2 / 3)
    threshold, at = curve.choose(Rule("max-f1"))
    assert at["f1"] == pytest.approx(max(table["f1"][1:BINS]))
    assert 0.3 < threshold <= 0.4 and at["recall"] == 1.0  # keeping 0.4 gives F1 0.857
    threshold, at = curve.choose(Rule("min-recall", 0.6))
    assert at["precision"] == 1.0 and 0.6 < threshold <= 0.85
    exact = Curve.empty()  # a probability exactly at a threshold counts as positive there, as `p >= t` does
    exact.add(np.array([0.5, 0.3], np.float32), np.array([True, False]))
    assert exact.table()["recall"][500] == 1.0 and exact.table()["recall"][501] == 0.0
    with pytest.raises(ValueError, match="no threshold reaches"):
        Curve.empty().choose(Rule("min-recall", 0.5)) if False else curve_without_positives().choose(
            Rule("min-recall", 0.5)
        )


def curve_without_positives():
    curve = Curve.empty()
    curve.add(np.array([0.2, 0.7]), np.array([False, False]))
    curve.positives[0] = 1  # one positive that no threshold above zero can recall
    return curve


@pytest.mark.parametrize(
    ("words", "rule"), [(["max-f1"], Rule("max-f1")), (["min-recall", "0.9"], Rule("min-recall", 0.9))]
)
def test_parse_rule(words, rule):
    assert parse_rule(words) == rule


@pytest.mark.parametrize("words", [["best"], ["min-recall"], ["min-recall", "1.5"], ["min-recall", "x"]])
def test_parse_rule_rejects(words):
    with pytest.raises(ValueError, match="max-f1' or 'min-recall R"):
        parse_rule(words)


def test_detection_scores_against_truth_and_heuristic(tiny_prepared):
    from training.learning.dataset import load_split

    records = load_split(tiny_prepared, "test", "heuristic")
    perfect = detection_scores([r.truth > 0 for r in records], records)
    assert perfect["vs_truth"]["f1"] == 1.0 and perfect["vs_truth"]["defect_recall"] == 1.0
    nothing = detection_scores([np.zeros_like(r.label, bool) for r in records], records)
    assert nothing["vs_truth"]["recall"] == 0.0 and nothing["vs_truth"]["defect_recall"] == 0.0


def test_evaluate_writes_a_decision_beside_the_untouched_checkpoint_and_a_report(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "checkpoint.pt").read_bytes()
    results = evaluate([run / "checkpoint.pt"], tmp_path / "docs" / "results.md", command="EVAL")
    assert (run / "checkpoint.pt").read_bytes() == before  # no command rewrites another command's output
    config, model, _ = load_checkpoint(run / "checkpoint.pt")
    decision = Decision.read(run / "checkpoint.pt", state_digest(model.state_dict()))
    assert decision.threshold == pytest.approx(results[0].threshold) and "max-f1 on val vs truth" in decision.rule
    assert decision.command == "EVAL" and config.threshold is None
    with pytest.raises(ValueError, match="other weights"):
        Decision.read(run / "checkpoint.pt", "0" * 16)
    (run / DECISION_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="python -m training evaluate --checkpoint"):
        Decision.read(run / "checkpoint.pt", state_digest(model.state_dict()))
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| U-Net trained on truth |" in text and "| heuristic labeller (baseline) |" in text
    assert "CMD" in text and "EVAL" in text  # the commands that regenerate it
    for name in ("results_pr.png", "results_examples.png", "results_classes.png"):
        assert (tmp_path / "docs" / name).stat().st_size > 1000
    assert (run / "pr_curve.png").exists()
    assert "## Per class (class models)" in text and "| trained on truth | defect recall of its class |" in text
    assert results[0].classes["classes"] == list(DEFECT_CLASSES)


def test_class_scores_count_a_defect_found_only_by_the_mask_of_its_class():
    from training.learning.dataset import LayerRecord

    truth = np.zeros((20, 20), np.uint8)
    truth[2:6, 2:6] = CLASS_IDS["spatter"]  # 16 px
    truth[10:14, 10:18] = CLASS_IDS["recoater_streak"]  # 32 px
    record = LayerRecord("L", np.zeros((20, 20, 3), np.uint8), truth > 0, truth, truth > 0)
    mask = truth > 0
    classes = truth.copy()
    classes[10:14, 10:18] = CLASS_IDS["pit"]  # the streak is found, but called a pit
    regions = np.full((20, 20), -1)
    regions[2:6, 2:6], regions[10:14, 10:18] = CLASS_IDS["spatter"] - 1, CLASS_IDS["pit"] - 1
    scores = class_scores([mask], [classes], [regions], [record], DEFECT_CLASSES)
    assert scores["defect_recall"]["spatter"] == 1.0 and scores["defect_recall"]["recoater_streak"] == 0.0
    assert scores["pixel_iou"]["spatter"] == 1.0 and scores["pixel_iou"]["pit"] == 0.0
    assert scores["pixel_iou"]["swelling"] is None and scores["instances"]["recoater_streak"] == 1
    matrix = np.asarray(scores["confusion"])
    streak, pit, spatter = (DEFECT_CLASSES.index(n) for n in ("recoater_streak", "pit", "spatter"))
    assert matrix[spatter, spatter] == 1 and matrix[streak, pit] == 1 and matrix.sum() == 2
    assert scores["regions_right"] == 0.5 and scores["regions_unmatched"] == 0


def test_evaluate_on_real_data_without_truth_reports_n_a(tiny_run, tiny_prepared, tmp_path):
    from training.inference.model import save_checkpoint
    from training.preparation.prepare import PrepareConfig, prepare

    data = tmp_path / "no_truth"
    prepare(tiny_prepared.parent / "synth" / "raw", data, PrepareConfig(split=(0.5, 0.25, 0.25)), None, None, workers=1)
    config, model, _ = load_checkpoint(tiny_run / "checkpoint.pt")
    save_checkpoint(tmp_path / "c.pt", config.replace(label_source="heuristic"), model.state_dict())
    results = evaluate([tmp_path / "c.pt"], tmp_path / "r.md", data_dir=data)
    assert results[0].scores["vs_truth"] is None
    assert "| n/a | n/a | n/a | n/a | n/a |" in (tmp_path / "r.md").read_text()
