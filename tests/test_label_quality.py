import numpy as np
import pytest

from training.preparation.label_quality import layer_stats, pick_examples, summarize
from training.reports.label_quality import findings


def tiny_layer():
    truth = np.zeros((6, 6), np.uint8)
    truth[0:2, 0:2] = 5  # spatter, 4 px
    truth[4:6, 4:6] = 6  # pit, 4 px
    votes = np.zeros((6, 6), np.uint8)
    votes[0:2, 0:2] = 3  # every light flags the spatter
    votes[5, 5] = 1  # one light flags a pixel of the pit
    votes[3, 0] = 2  # two lights flag a clean pixel
    return votes, truth


def test_layer_stats_per_rule_and_class():
    stats = layer_stats(*tiny_layer())
    assert not stats["clean"]
    assert stats["rules"]["and"]["counts"] == {"tp": 4, "fp": 0, "fn": 4, "tn": 28}
    assert stats["rules"]["majority"]["counts"] == {"tp": 4, "fp": 1, "fn": 4, "tn": 27}
    assert stats["rules"]["or"]["counts"] == {"tp": 5, "fp": 1, "fn": 3, "tn": 27}
    assert stats["rules"]["majority"]["classes"]["pit"] == {"pixels": 4, "covered": 0, "found": 0, "instances": 1}
    assert stats["rules"]["or"]["classes"]["pit"]["found"] == 1


def test_summary_micro_averages_and_counts_false_alarms_on_clean_layers():
    votes, truth = tiny_layer()
    clean_votes = np.zeros((6, 6), np.uint8)
    clean_votes[2, 2] = 2
    stats = [("a", layer_stats(votes, truth)), ("b", layer_stats(clean_votes, np.zeros((6, 6), np.uint8)))]
    summary = summarize(stats, chosen="majority")
    majority = summary["rules"]["majority"]
    assert summary["layers"] == 2 and summary["clean_layers"] == 1
    assert majority["precision"] == pytest.approx(4 / 6) and majority["recall"] == pytest.approx(4 / 8)
    assert majority["clean_layers_flagged"] == 1 and summary["rules"]["and"]["clean_layers_flagged"] == 0
    assert majority["classes"]["spatter"]["instance_recall"] == 1.0
    assert majority["classes"]["swelling"]["instance_recall"] is None
    assert pick_examples(stats, n=1) == ["a"]


def test_findings_are_drawn_from_the_numbers():
    votes, truth = tiny_layer()
    summary = summarize([("a", layer_stats(votes, truth))], chosen="majority")
    text = "\n".join(findings(summary))
    assert "`or` (0.556)" in text  # IoU 5 / (5 + 1 + 3)
    assert "fewer than half of their instances: pit" in text
    assert "pixel recall below 0.5): pit" in text
    assert "as the prototype found" not in text  # and labels 4 px, majority 5 px: not sparser by half
