import numpy as np
import pytest

from training.learning.metrics import Counts, components_found, confusion


def test_confusion_counts_on_a_tiny_mask():
    predicted = np.array([[1, 1, 0], [0, 0, 0]], bool)
    reference = np.array([[1, 0, 0], [1, 0, 0]], bool)
    assert confusion(predicted, reference) == Counts(tp=1, fp=1, fn=1, tn=3)


@pytest.mark.parametrize(
    ("counts", "precision", "recall", "iou", "f1"),
    [
        (Counts(tp=1, fp=1, fn=1, tn=3), 0.5, 0.5, 1 / 3, 0.5),
        (Counts(tp=3, fp=0, fn=1, tn=0), 1.0, 0.75, 0.75, 6 / 7),
        (Counts(tp=0, fp=0, fn=0, tn=9), 1.0, 1.0, 1.0, 1.0),  # nothing to find, nothing claimed
        (Counts(tp=0, fp=2, fn=0, tn=9), 0.0, 1.0, 0.0, 0.0),
    ],
)
def test_scores_from_counts(counts, precision, recall, iou, f1):
    assert counts.precision() == pytest.approx(precision)
    assert counts.recall() == pytest.approx(recall)
    assert counts.iou() == pytest.approx(iou)
    assert counts.f1() == pytest.approx(f1)


def test_counts_add_up_and_shapes_must_match():
    assert Counts(1, 2, 3, 4) + Counts(1, 1, 1, 1) == Counts(2, 3, 4, 5)
    with pytest.raises(ValueError, match="shapes differ"):
        confusion(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_components_found_counts_touched_reference_components():
    reference = np.zeros((6, 6), bool)
    reference[0, 0:2] = True  # component 1
    reference[4:6, 4:6] = True  # component 2
    predicted = np.zeros((6, 6), bool)
    predicted[5, 5] = True  # touches component 2, covers a quarter of it
    assert components_found(predicted, reference, coverage=0.0) == (1, 2)
    assert components_found(predicted, reference, coverage=0.26) == (0, 2)  # just more than it covers
    predicted[0, 0] = True  # half of component 1
    assert components_found(predicted, reference, coverage=0.5) == (1, 2)
    assert components_found(predicted, np.zeros((6, 6), bool), coverage=0.0) == (0, 0)


def test_a_defect_counts_as_found_when_a_quarter_of_it_is_covered():
    from training.learning.metrics import FOUND_COVERAGE, components_found

    truth = np.zeros((10, 30), bool)
    truth[:, 0:10] = True  # 100 pixels
    truth[:, 20:30] = True  # 100 pixels
    predicted = np.zeros_like(truth)
    predicted[:3, 0:10] = True  # 30% of the first
    predicted[:2, 20:30] = True  # 20% of the second
    assert FOUND_COVERAGE == 0.25
    assert components_found(predicted, truth) == (1, 2)
    assert components_found(predicted, truth, coverage=0.0) == (2, 2)  # touched, the looser figure
    assert components_found(predicted, np.zeros_like(truth)) == (0, 0)
