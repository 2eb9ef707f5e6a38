"""docs/generalization.md: how models trained on our generator's layers score on layers rendered differently, from
what `python -m bench generalization` measured: one table per test set, a summary across them, and the limits."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from training.inference.images import write_atomic
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # typing only: rendering needs no torch
    from bench.generalization import Generalization, Scores, TestSet


def _value(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _share(coverage: float) -> str:
    """0.25 -> 1/4: the coverage a found defect needs, as a fraction."""
    fraction = Fraction(coverage).limit_denominator(100)
    return f"{fraction.numerator}/{fraction.denominator}"


def _flagged(s: Scores) -> str:
    return f"{s.clean_flagged} of {s.clean_layers}"


def _budget(result: Generalization) -> str:
    p = result.profile
    minutes = f"at most {p.max_minutes:g} minutes of training" if p.max_minutes else "no time budget"
    return (
        f"the `{p.profile}` profile: at most {p.epochs} epoch{'s' * (p.epochs != 1)} of {p.repeats} random "
        f"{p.crop}² crops per layer, "
        f"batch {p.batch_size}, {minutes}, validation on at most {p.max_val_layers or 'all'} layers"
    )


def _intro(result: Generalization) -> list[str]:
    first = result.training_sets[0]
    tests = result.test_sets
    return [
        "Does a model trained on our generator's layers find defects on layers rendered differently? Each model is "
        f"a U-Net trained on {first.layers} synthetic layers of {result.size}² pixels with exact truth, one model "
        f"per input representation and training set, by {_budget(result)}. Its decision threshold is chosen on its own "
        "validation layers (the rule and the scores there are in the table of models); it is then scored at that "
        f"threshold on {len(tests)} test sets of {tests[0].layers} layers each, rendered with seeds that no training "
        "layer used and read straight from their raw images and truth. Inference is the service's: tiled "
        "probabilities, the mask at the threshold (the regions at or above it that reach even odds somewhere: "
        "`defect_mask`), and a layer is flagged when its mask holds a region.",
        "",
        "Training sets (same layer count and seed):",
        "",
        *[
            f"- **{t.physics} physics** ({t.train_layers} train, {t.val_layers} val layers): {t.changes}."
            for t in result.training_sets
        ],
        "",
        "Test sets (what differs from the fixed-physics training layers):",
        "",
        "| test set | renderer | what it changes | layers | clean layers | defects |",
        "|---|---|---|---|---|---|",
        *[_test_row(result, t) for t in tests],
        "",
        f"Figures: pixel precision (P), recall (R) and F1 pooled over a test set's pixels against the truth; "
        f"**defect recall**: the share of the truth's defects (connected components of one class) that the mask "
        f"covers at least {_share(result.found_coverage)}; **touched**: the share it touches at all; **clean flagged**: "
        "clean layers (empty truth) whose answer says defect; **flagged share**: the mean share of a clean layer's "
        "pixels flagged; **unfamiliar**: layers whose answer says they are unlike the training layers "
        "(`training/inference/familiarity.py`: capture statistics outside the training range, or most of the "
        "layer flagged). On test sets like the training layers, unfamiliar layers are false alarms of that check.",
    ]


def _test_row(result: Generalization, t: TestSet) -> str:
    scores = next((m.scores[t.key] for m in result.models), None)
    clean, defects = ("n/a", "n/a") if scores is None else (scores.clean_layers, scores.defects)
    return f"| {t.name} | {t.renderer} | {t.changes} | {t.layers} | {clean} | {defects} |"


def _models_table(result: Generalization) -> list[str]:
    return [
        "| model | epochs run | best epoch | training minutes | threshold | how it was chosen |",
        "|---|---|---|---|---|---|",
        *[
            f"| {m.name} | {m.epochs_run} | {m.best_epoch} | {m.train_seconds / 60:.1f} | {m.threshold:.3f} | "
            f"{m.threshold_rule} |"
            for m in result.models
        ],
    ]


def _test_table(result: Generalization, t: TestSet) -> list[str]:
    coverage = _share(result.found_coverage)
    return [
        f"### {t.name}",
        "",
        f"{t.renderer}, seed {t.seed}: {t.changes}.",
        "",
        f"| model | pixel P | pixel R | pixel F1 | defect recall (≥ {coverage} covered) | touched | clean layers "
        "flagged | mean flagged share, clean layers | unfamiliar layers |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {m.name} | {_value(s.precision)} | {_value(s.recall)} | {_value(s.f1)} | {_value(s.defect_recall)} | "
            f"{_value(s.touched)} | {_flagged(s)} | {_value(s.clean_flagged_share)} | {s.unfamiliar} of {s.layers} |"
            for m in result.models
            for s in [m.scores[t.key]]
        ],
        "",
    ]


def _summary_table(result: Generalization) -> list[str]:
    tests = result.test_sets
    return [
        f"Each cell: pixel F1 / defect recall (≥ {_share(result.found_coverage)} covered) / clean layers flagged.",
        "",
        "| model | " + " | ".join(t.name for t in tests) + " |",
        "|---|" + "---|" * len(tests),
        *[
            f"| {m.name} | "
            + " | ".join(
                f"{_value(s.f1)} / {_value(s.defect_recall)} / {_flagged(s)}" for s in (m.scores[t.key] for t in tests)
            )
            + " |"
            for m in result.models
        ],
    ]


def _span(values: list[int]) -> str:
    """Distinct whole numbers as "3" or "2 to 5"."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low} to {high}"


def _limits(result: Generalization) -> str:
    p, tests, models = result.profile, result.test_sets, result.models
    layers = _span([t.layers for t in result.training_sets])
    text = (
        "Every layer here is synthetic: two renderers' idea of a powder bed, not images from a real printer, so a "
        "model that does well on every test set may still fail on a real machine's optics, lighting and defects. "
        f"Each model was trained once, with seed {result.train_seed}, on the {layers} layers of its training set; the spread between training "
        "seeds is not measured, so a difference between two models says little unless it is large and holds across "
        f"test sets. Each test set holds {tests[0].layers} layers"
    )
    if not models:
        return text + "."
    cleans = [m.scores[t.key].clean_layers for m in models for t in tests]
    epochs = [m.epochs_run for m in models]
    text += (
        f", {_span(cleans)} of them clean: one layer more or less flagged moves a false-alarm count by one, and the "
        f"pooled pixel figures lean on the largest defects. The models ran {_span(epochs)} of the profile's "
        f"{p.epochs} epochs"
    )
    text += "; a longer training may rank them differently." if min(epochs) < p.epochs else "."
    return text + " Thresholds were chosen on each training set's own validation layers, never on a test set."


def render(result: Generalization) -> str:
    """The Markdown of the document."""
    return "\n".join(
        [
            "# Generalisation: trained on our generator, tested on layers rendered differently",
            "",
            f"{produced_by('python -m bench generalization')} Regenerate:",
            "",
            "```bash",
            result.command,
            "```",
            "",
            *_intro(result),
            "",
            "## Models",
            "",
            *_models_table(result),
            "",
            "## Per test set",
            "",
            *[line for t in result.test_sets for line in _test_table(result, t)],
            "## Summary",
            "",
            *_summary_table(result),
            "",
            "## Limits",
            "",
            _limits(result),
            "",
            f"This run took {result.seconds / 60:.1f} minutes (data and models reused from an earlier run not counted).",
            "",
        ]
    )


def write_report(result: Generalization, path: Path) -> None:
    """Write the document to `path`."""
    write_atomic(path, render(result).encode())
