"""`python -m bench generalization`: does a model trained on our generator's layers find defects on layers rendered
differently?

Two training sets come from our generator, one with fixed physics (every layer under the same lights, camera and
powder) and one with randomised physics (each layer draws its own); one model is trained per training set and input
representation, its threshold chosen on its own validation layers. Each model is then scored on held-out test sets
that change one thing at a time (light elevation outside the randomised range, grain and exposure, bit depth,
pixel pitch) and on layers of the second renderer, which shares no code with ours. `training.reports.generalization`
renders the result.

Under the work folder: `train/<physics>/` and `test/<key>/` (rendered: raw/, truth/, meta/), `prepared/<physics>/`
(what `train` reads, with its label-quality report) and `runs/<representation>-<physics>/` (checkpoint.pt,
decision.json). Each folder records its settings in generalization.json and is reused while they match.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.second_renderer import SecondRendererConfig, render_set
from training.inference import serialize
from training.inference.config import REPRESENTATIONS, Decision, ModelConfig
from training.inference.familiarity import assess
from training.inference.images import read_png_array, write_json
from training.inference.model import load_checkpoint, state_digest
from training.inference.postprocess import defect_mask
from training.inference.tiling import predict_tiled
from training.learning.evaluate import Rule, evaluate_checkpoint
from training.learning.metrics import FOUND_COVERAGE, Counts, components_found, confusion
from training.learning.schedule import TrainConfig
from training.learning.train import train
from training.preparation.prepare import PrepareConfig, prepare
from training.renderer.camera import CameraConfig
from training.renderer.surface import SurfaceConfig
from training.renderer.synth import SynthConfig, synthesize
from training.workers import resolve_workers

log = logging.getLogger(__name__)

PHYSICS = {"fixed": False, "randomised": True}  # training set -> SynthConfig.randomize
TRAIN_SEED = 0  # both training sets, and every training run
TEST_SEED = 1000  # test set k renders with seed TEST_SEED + k, so no test layer repeats a training layer
TEST_CLEAN_FRACTION = 0.25  # clean layers in each test set: where false alarms are counted
TRAIN_SPLIT = (0.8, 0.2, 0.0)  # the test sets are rendered apart: a prepared set holds train and val layers only
RULE = Rule("max-f1")
TUNE_SEED = 2000  # the second renderer's layers a model is fine-tuned on (--fine-tune): none is a test layer
TUNE_ELEVATION_DEG = 38.0  # between the two second-renderer test sets' elevations
TUNED = "fine-tuned on second-renderer heuristic labels"
SETTINGS_FILE = "generalization.json"
MIN_SIZE = 64  # the second renderer's smallest layer


@dataclass(frozen=True)
class RenderedSet:
    """A set of layers to render: folder key, the name the document shows, what differs from the fixed training
    layers, and the renderer's config (a SecondRendererConfig for the second renderer, else a SynthConfig)."""

    key: str
    name: str
    changes: str
    config: SynthConfig | SecondRendererConfig
    seed: int

    @property
    def renderer(self) -> str:
        return "second renderer" if isinstance(self.config, SecondRendererConfig) else "our generator"

    def settings(self, layers: int) -> dict[str, Any]:
        return {
            "renderer": self.renderer,
            "config": serialize.to_dict(self.config),
            "seed": self.seed,
            "layers": layers,
        }


def training_sets(size: int, physics: Iterable[str] = PHYSICS) -> list[RenderedSet]:
    """Our generator with fixed physics and with randomised physics: same layer count and seed."""
    fixed, drawn = SynthConfig(size=size, randomize=False), SynthConfig(size=size, randomize=True)
    r = drawn.physics
    changes = {
        "fixed": f"one set of render settings for every layer: light elevation {fixed.elevation_deg:g} deg, pitch "
        f"{fixed.pitch_um:g} um, one camera and one powder",
        "randomised": f"each layer draws its settings: light elevation {r.elevation_deg[0]:g}-{r.elevation_deg[1]:g} "
        f"deg, pitch {r.pitch_um[0]:g}-{r.pitch_um[1]:g} um, exposure, response curve, noise, blur, vignetting, "
        "powder and part appearance, hatch spacing",
    }
    configs = {"fixed": fixed, "randomised": drawn}
    return [RenderedSet(name, f"{name} physics", changes[name], configs[name], TRAIN_SEED) for name in physics]


def test_sets(size: int) -> list[RenderedSet]:
    """The held-out sets, each changing one thing against the fixed training layers (or being the second renderer)."""
    base = SynthConfig(size=size, clean_fraction=TEST_CLEAN_FRACTION, randomize=False)
    ranges = base.physics
    low, high = dataclasses.replace(base, elevation_deg=10.0), dataclasses.replace(base, elevation_deg=70.0)
    grain = dataclasses.replace(
        base,
        surface=SurfaceConfig(particle_diameter_um=60.0, powder_albedo=0.7),
        camera=CameraConfig(target_level=0.7),
    )
    deep = dataclasses.replace(base, randomize=True, camera=CameraConfig(bit_depth=16))
    pitch = dataclasses.replace(base, pitch_um=40.0)
    second = [
        SecondRendererConfig(size=size, elevation_deg=e, clean_fraction=TEST_CLEAN_FRACTION) for e in (30.0, 45.0)
    ]
    outside = f"outside the randomised {ranges.elevation_deg[0]:g}-{ranges.elevation_deg[1]:g}"
    sets = [
        ("generator-fixed", "generator, fixed settings", "nothing: the fixed training settings, other layers", base),
        ("generator-randomised", "generator, randomised", "the randomised training settings, other layers",
         dataclasses.replace(base, randomize=True)),
        ("low-light", f"low light, elevation {low.elevation_deg:g} deg",
         f"light elevation {low.elevation_deg:g} deg, {outside}", low),
        ("high-light", f"high light, elevation {high.elevation_deg:g} deg",
         f"light elevation {high.elevation_deg:g} deg, {outside}", high),
        ("grain-exposure", "other grain and exposure",
         f"powder grains of {grain.surface.particle_diameter_um:g} um (training {base.surface.particle_diameter_um:g}),"
         f" powder albedo {grain.surface.powder_albedo:g} ({base.surface.powder_albedo:g}), exposure level "
         f"{grain.camera.target_level:g} ({base.camera.target_level:g})", grain),
        ("16-bit", f"{deep.camera.bit_depth}-bit", f"randomised settings, {deep.camera.bit_depth}-bit images "
         f"(training {base.camera.bit_depth}-bit)", deep),
        ("pitch", f"pitch {pitch.pitch_um:g} um", f"{pitch.pitch_um:g} um per pixel (training {base.pitch_um:g}): "
         "every feature fewer pixels across", pitch),
        *[(f"second-{c.elevation_deg:g}", f"second renderer, elevation {c.elevation_deg:g}",
           f"another renderer (discrete particles, Oren-Nayar and Blinn-Phong shading, soft shadows, its own camera "
           f"and defect shapes), light elevation {c.elevation_deg:g} deg", c) for c in second],
    ]  # fmt: skip
    return [
        RenderedSet(key, name, changes, config, TEST_SEED + k) for k, (key, name, changes, config) in enumerate(sets)
    ]


def parse_names(text: str, known: Iterable[str], option: str) -> tuple[str, ...]:
    """Comma-separated choices of `option`, in the given order without repeats; ValueError naming the valid ones."""
    known = tuple(known)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        got = f"unknown {', '.join(repr(n) for n in unknown)}" if unknown else f"nothing in {text!r}"
        raise ValueError(f"{option}: {got}; choose one or more of: {', '.join(known)} (comma-separated)")
    return names


@dataclass(frozen=True)
class Settings:
    """What one run renders, trains and scores. `profile` is the training profile before each model's
    representation is set in it."""

    work: Path
    size: int
    train_layers: int
    test_layers: int
    representations: tuple[str, ...]
    physics: tuple[str, ...]
    profile: TrainConfig
    retrain: bool = False
    workers: int | None = None
    command: str = ""
    fine_tune: bool = False  # also fine-tune each randomised-physics model on the second renderer's heuristic labels

    def __post_init__(self) -> None:
        parse_names(",".join(self.representations), REPRESENTATIONS, "--representations")
        parse_names(",".join(self.physics), PHYSICS, "--physics")
        if self.size < max(MIN_SIZE, self.profile.crop):
            raise ValueError(
                f"layer size must be at least {MIN_SIZE} (the second renderer's smallest) and at least the training "
                f"crop of {self.profile.crop} pixels, got {self.size}"
            )
        if self.train_layers < 2 or self.test_layers < 1:
            raise ValueError(
                f"need at least 2 training layers (train and val) and 1 test layer, got {self.train_layers} and "
                f"{self.test_layers}"
            )
        if self.profile.max_minutes is not None and self.profile.max_minutes <= 0:
            raise ValueError(f"training minutes must be positive, got {self.profile.max_minutes}")
        resolve_workers(self.workers, 1)


@dataclass(frozen=True)
class Scores:
    """One model on one test set, at its threshold. Pixel scores are pooled over the set's layers; a defect is one
    connected component of one class in the truth."""

    layers: int
    clean_layers: int  # layers whose truth is empty
    defects: int
    precision: float
    recall: float
    f1: float
    defect_recall: float | None  # share of defects the mask covers at least `coverage`; None without defects
    touched: float | None  # share of defects the mask touches at all
    clean_flagged: int  # clean layers whose answer says defect
    clean_flagged_share: float | None  # mean share of a clean layer's pixels flagged; None without clean layers
    unfamiliar: int = 0  # layers the answer calls unlike the training layers (`familiarity.assess`)


def score(probabilities: Iterable[np.ndarray], truths: Iterable[np.ndarray], threshold: float,
          coverage: float = FOUND_COVERAGE, unfamiliar: int = 0) -> Scores:  # fmt: skip
    """Scores of (H, W) probabilities against (H, W) truth maps (0 = no defect, else a class id) at `threshold`,
    with the decision the served answer makes on clean layers (`Detection.defect`); `unfamiliar` is passed
    through (the layers `familiarity.assess` doubted)."""
    counts = Counts()
    layers = clean = flagged = found = touched = defects = 0
    shares: list[float] = []
    for probs, truth in zip(probabilities, truths, strict=True):
        mask = defect_mask(probs, threshold)  # (H, W) bool
        counts = counts + confusion(mask, truth > 0)
        layers += 1
        for class_id in np.unique(truth[truth > 0]):
            f, n = components_found(mask, truth == class_id, coverage)
            t, _ = components_found(mask, truth == class_id, coverage=0.0)
            found, touched, defects = found + f, touched + t, defects + n
        if not truth.any():
            clean += 1
            flagged += bool(mask.any())  # what the served answer's `defect` says: the mask holds a region
            shares.append(float(mask.mean()))
    return Scores(
        layers=layers,
        clean_layers=clean,
        defects=defects,
        precision=counts.precision(),
        recall=counts.recall(),
        f1=counts.f1(),
        defect_recall=found / defects if defects else None,
        touched=touched / defects if defects else None,
        clean_flagged=flagged,
        clean_flagged_share=float(np.mean(shares)) if shares else None,
        unfamiliar=unfamiliar,
    )


@dataclass(frozen=True)
class TrainingSet:
    physics: str  # a key of PHYSICS
    changes: str
    seed: int
    layers: int
    train_layers: int  # after the split
    val_layers: int


@dataclass(frozen=True)
class TestSet:
    key: str
    name: str
    changes: str
    renderer: str
    seed: int
    layers: int


@dataclass(frozen=True)
class ModelResult:
    representation: str
    physics: str
    threshold: float
    threshold_rule: str
    epochs_run: int
    best_epoch: int
    train_seconds: float
    scores: dict[str, Scores]  # TestSet.key -> scores
    tuned: str = ""  # how the model was fine-tuned after training, if it was

    @property
    def name(self) -> str:
        return f"{self.representation}, {self.physics} physics" + (f", {self.tuned}" if self.tuned else "")


@dataclass(frozen=True)
class Generalization:
    """What `bench generalization` measured, written as its --json; training/reports/generalization.py renders it."""

    command: str
    size: int
    profile: TrainConfig  # before each model's representation is set in it
    train_seed: int  # of every training run (and of both training sets' rendering)
    found_coverage: float  # a defect counts as found when the mask covers at least this share of it
    training_sets: list[TrainingSet]
    test_sets: list[TestSet]
    models: list[ModelResult]
    seconds: float  # this run's, rendering and training left out where reused

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Generalization:
        """Rebuild from the --json of an earlier run, e.g. to render its document again."""
        return serialize.from_dict(cls, data, what="generalization JSON key")


def save_json(result: Generalization, path: Path) -> None:
    write_json(path, result.to_dict())


# Folders of the work directory, each reused while the settings recorded in it match.


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples as lists: as the record reads back


def _recorded(folder: Path) -> dict[str, Any] | None:
    path = folder / SETTINGS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _reusable(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The folder's record when it was completed with these settings, else None."""
    record = _recorded(folder)
    return record if record and record.get("complete") and record["settings"] == _plain(settings) else None


def _start(folder: Path, settings: dict[str, Any]) -> None:
    """Empty the folder (only when this benchmark made it) and record that work with `settings` began in it."""
    if folder.exists() and any(folder.iterdir()):
        if _recorded(folder) is None:
            raise ValueError(f"{folder} holds files this benchmark did not write; remove them or choose another --work")
        log.info("%s: starting afresh (other settings, unfinished work or --retrain)", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / SETTINGS_FILE, {"settings": _plain(settings), "complete": False})


def _finish(folder: Path, settings: dict[str, Any], **facts: Any) -> None:
    write_json(folder / SETTINGS_FILE, {"settings": _plain(settings), "complete": True, **facts})


def rendered(data: RenderedSet, folder: Path, layers: int, workers: int | None, command: str) -> Path:
    """The folder holding `layers` layers of `data`, rendered unless it already does."""
    settings = data.settings(layers)
    if _reusable(folder, settings):
        log.info("%s: reusing %d rendered layers in %s", data.name, layers, folder)
        return folder
    _start(folder, settings)
    log.info("%s: rendering %d layers with %s into %s", data.name, layers, data.renderer, folder)
    if isinstance(data.config, SecondRendererConfig):
        render_set(data.config, folder, layers, data.seed, command=command, workers=resolve_workers(workers, layers))
    else:
        synthesize(data.config, folder, layers, seed=data.seed, workers=workers, command=command)
    _finish(folder, settings)
    return folder


def prepared(raw_set: Path, folder: Path, source: dict[str, Any], workers: int | None, command: str) -> dict[str, Any]:
    """Prepare a rendered training set with its exact truth (label-quality report inside the folder); the record."""
    config = PrepareConfig(split=TRAIN_SPLIT)
    settings = {"rendered": source, "prepare": serialize.to_dict(config)}
    record = _reusable(folder, settings)
    if record:
        log.info("reusing the prepared layers in %s", folder)
        return record
    _start(folder, settings)
    log.info("preparing %s into %s", raw_set, folder)
    report = prepare(raw_set / "raw", folder, config, raw_set / "truth", folder, workers, command)
    splits = report["splits"]
    if not (splits["train"] and splits["val"]):
        raise ValueError(
            f"{folder} has {splits['train']} train and {splits['val']} val layers; training needs both: raise "
            "--train-layers"
        )
    _finish(folder, settings, splits=splits)
    return _recorded(folder)  # type: ignore[return-value]


def trained(data_dir: Path, run_dir: Path, profile: TrainConfig, source: dict[str, Any], retrain: bool,
            command: str, labels: str = "truth", init: Path | None = None,
            ) -> tuple[ModelConfig, Any, dict[str, Any]]:  # fmt: skip
    """The model of a run folder with its decision threshold: trained (from `init`'s weights when given) unless a
    checkpoint with the same settings is there, its threshold chosen by `evaluate` (max F1 on val against the
    labels it learned from) unless a decision for these weights is there. Returns the config with the threshold,
    the model and the training summary."""
    settings = {"data": source, "profile": dataclasses.asdict(profile), "labels": labels, "seed": TRAIN_SEED}
    if init is not None:  # the weights, not only the path: a retrained base model means a new fine-tuned one
        settings["init"] = {"checkpoint": str(init), "weights": state_digest(load_checkpoint(init)[2]["state_dict"])}
    checkpoint = run_dir / "checkpoint.pt"
    record = None if retrain else _reusable(run_dir, settings)
    if record and checkpoint.exists():
        log.info("reusing the model in %s", run_dir)
    else:
        _start(run_dir, settings)
        summary = train(data_dir, run_dir, profile, labels=labels, seed=TRAIN_SEED, command=command, init=init)
        _finish(run_dir, settings, summary=summary)
        record = _recorded(run_dir)
    config, model, payload = load_checkpoint(checkpoint)
    try:
        config = config.with_decision(Decision.read(checkpoint, state_digest(payload["state_dict"])))
    except (FileNotFoundError, ValueError):
        evaluation = evaluate_checkpoint(checkpoint, data_dir, split="val", threshold_split="val", rule=RULE,
                                         reference="labels", command=command)  # fmt: skip
        config = evaluation.config
    return config, model, record["summary"]  # type: ignore[index]


def read_layers(folder: Path, lights: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(stack (H, W, lights), truth (H, W)) of each layer of a rendered folder, in layer order."""
    for truth_path in sorted((folder / "truth").glob("*.png")):
        lid = truth_path.stem
        stack = np.dstack([read_png_array(folder / "raw" / f"{lid}_a{k}.png") for k in range(lights)])
        yield stack, read_png_array(truth_path)


def score_model(model: Any, config: ModelConfig, folder: Path, name: str) -> Scores:
    """Tiled inference of every layer of a test folder, scored at the config's threshold."""
    pairs = list(read_layers(folder, len(config.azimuths_deg)))
    probabilities = [predict_tiled(model, stack, config).defect for stack, _ in tqdm(pairs, desc=name, unit="layer")]
    doubted = sum(
        not assess(stack, config, float(defect_mask(probs, config.threshold).mean())).familiar
        for (stack, _), probs in zip(pairs, probabilities, strict=True)
    )
    return score(probabilities, (truth for _, truth in pairs), config.threshold, unfamiliar=doubted)


def fine_tuned(settings: Settings, rep: str, physics: str, profile: TrainConfig, checkpoint: Path,
               tests: list[RenderedSet]) -> ModelResult:  # fmt: skip
    """What a user with another printer can do: fine-tune a synthetic model (`train --init`) on that printer's own
    layers with the heuristic labels `prepare` makes (here the second renderer's, never its truth), its threshold
    chosen against those labels; scored like the others."""
    work, command = Path(settings.work), settings.command
    tuning = RenderedSet("tune-second", "second renderer, fine-tuning layers",
                         f"the second renderer at elevation {TUNE_ELEVATION_DEG:g} deg",
                         SecondRendererConfig(size=settings.size, elevation_deg=TUNE_ELEVATION_DEG), TUNE_SEED)  # fmt: skip
    folder = rendered(tuning, work / "tune" / tuning.key, settings.train_layers, settings.workers, command)
    record = prepared(folder, work / "prepared" / tuning.key, tuning.settings(settings.train_layers),
                      settings.workers, command)  # fmt: skip
    run_dir = work / "runs" / f"{rep}-{physics}-tuned"
    config, model, summary = trained(work / "prepared" / tuning.key, run_dir, profile, record["settings"],
                                     settings.retrain, command, labels="heuristic", init=checkpoint)  # fmt: skip
    scores = {}
    for data in tests:
        log.info("fine-tuned %s: scoring on %s", rep, data.name)
        scores[data.key] = score_model(model, config, work / "test" / data.key, data.name)
    return ModelResult(rep, physics, config.threshold, config.threshold_rule, summary["epochs_run"],
                       summary["best_epoch"], summary["seconds"], scores, tuned=TUNED)  # fmt: skip


def run(settings: Settings) -> Generalization:
    """Render, prepare, train (or reuse) and score every model on every test set."""
    started = time.perf_counter()
    work, command, workers = Path(settings.work), settings.command, settings.workers
    sources: dict[str, dict[str, Any]] = {}
    train_infos = []
    for data in training_sets(settings.size, settings.physics):
        folder = rendered(data, work / "train" / data.key, settings.train_layers, workers, command)
        prepared_record = prepared(folder, work / "prepared" / data.key, data.settings(settings.train_layers),
                                   workers, command)  # fmt: skip
        sources[data.key] = prepared_record["settings"]
        splits = prepared_record["splits"]
        train_infos.append(TrainingSet(data.key, data.changes, data.seed, settings.train_layers, splits["train"],
                                       splits["val"]))  # fmt: skip
    tests = test_sets(settings.size)
    for data in tests:
        rendered(data, work / "test" / data.key, settings.test_layers, workers, command)

    jobs = [(rep, physics) for physics in settings.physics for rep in settings.representations]
    models = []
    for i, (rep, physics) in enumerate(jobs, start=1):
        log.info("model %d of %d: %s, %s physics", i, len(jobs), rep, physics)
        profile = dataclasses.replace(settings.profile, representation=rep)
        run_dir = work / "runs" / f"{rep}-{physics}"
        config, model, summary = trained(work / "prepared" / physics, run_dir, profile, sources[physics],
                                         settings.retrain, command)  # fmt: skip
        scores = {}
        for j, data in enumerate(tests, start=1):
            log.info("model %d of %d: scoring on test set %d of %d, %s", i, len(jobs), j, len(tests), data.name)
            scores[data.key] = score_model(model, config, work / "test" / data.key, data.name)
        models.append(ModelResult(rep, physics, config.threshold, config.threshold_rule, summary["epochs_run"],
                                  summary["best_epoch"], summary["seconds"], scores))  # fmt: skip
        if settings.fine_tune and PHYSICS[physics]:
            models.append(fine_tuned(settings, rep, physics, profile, run_dir / "checkpoint.pt", tests))
    return Generalization(
        command=command,
        size=settings.size,
        profile=settings.profile,
        train_seed=TRAIN_SEED,
        found_coverage=FOUND_COVERAGE,
        training_sets=train_infos,
        test_sets=[TestSet(d.key, d.name, d.changes, d.renderer, d.seed, settings.test_layers) for d in tests],
        models=models,
        seconds=round(time.perf_counter() - started, 1),
    )
