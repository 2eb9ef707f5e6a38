"""TorchServe archives (.mar) of every registered variant (`training.inference.variants`): the `handler` package, the inference contract
(`training.inference`), the weights, the ModelConfig as JSON and a model-config.yaml each, packed by
torch-model-archiver. Whole packages are packed, so no list of modules is kept by hand.

torch-model-archiver stages its files in `<tmpdir>/<model-name>` and deletes that folder first, so it runs with a
private temporary directory; `--extra-files DIR` copies DIR's children flat into the archive root, so the packages
are staged as `<stage>/handler/` and `<stage>/training/inference/` and `<stage>` is passed, which keeps both
importable in the worker.
Each archive is written next to its final name and renamed into place: a failed run leaves the old one intact.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from handler.settings import ServingConfig
from training.inference import openvino_backend
from training.inference.config import Decision, ModelConfig
from training.inference.images import write_json
from training.inference.loaders import load_variant, model_files, read_model_file
from training.inference.model import state_digest
from training.inference.tiling import tile_shapes
from training.inference.variants import BACKENDS, MODEL_PREFIX, OPENVINO, VARIANTS
from training.serving.launcher import shown, tool
from training.serving.timing import cpu_model, measure_alternating

log = logging.getLogger(__name__)

AUTO = "auto"  # serve each variant on the backend measured fastest when the archive is built
ROOT = Path(__file__).resolve().parents[2]
HANDLER = ROOT / "handler" / "defect_handler.py"
ARCHIVER = "torch-model-archiver"
STAGED_FILES, STAGED_CONFIG = "files", "model-config.yaml"  # in a variant's staged folder: --extra-files, --config-file
# What a worker imports, packed whole: (source folder, where it goes in the archive).
SHIPPED_PACKAGES = (
    (ROOT / "handler", Path("handler")),
    (ROOT / "training" / "inference", Path("training") / "inference"),
)


def stage_packages(stage: Path) -> list[Path]:
    """Copy the packages a worker imports into `stage` (and `training/__init__.py` above the inference package);
    returns the staged files, relative to `stage`."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, target in SHIPPED_PACKAGES:
        shutil.copytree(source, stage / target, ignore=skip)
    shutil.copy2(ROOT / "training" / "__init__.py", stage / "training" / "__init__.py")
    return sorted(p.relative_to(stage) for p in stage.rglob("*") if p.is_file())


def _read(path: Path) -> tuple[ModelConfig, Any]:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run `python -m training quantize --checkpoint {path.parent / 'checkpoint.pt'}` first"
        )
    return read_model_file(path)


def _origin(config: ModelConfig, payload: Any) -> str:
    """The digest of the checkpoint weights a model file was made from."""
    if config.quantization:
        return config.quantization["source_digest"]
    if config.backend == OPENVINO:
        return openvino_backend.source_digest(payload)
    return state_digest(payload)


def time_builds(
    files: dict[str, Path], serving: ServingConfig, repeat: int = 10, max_seconds: float = 5.0
) -> dict[str, Any]:
    """Latency of each backend's build of one variant (`files`: backend -> model file) on the largest tile of a
    layer of `serving.layer_side`, as the handler runs it on `serving.threads` threads, the builds taking turns;
    recorded in the served ModelConfig's backend_choice."""
    previous = torch.get_num_threads()
    torch.set_num_threads(serving.threads)
    try:
        models = {backend: load_variant(path, threads=serving.threads) for backend, path in files.items()}
        config = next(iter(models.values()))[0]
        shapes = tile_shapes(serving.layer_side, serving.layer_side, config, serving.tile_size, serving.tile_overlap)
        x = torch.randn(1, config.in_channels, *max(shapes), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            timings = measure_alternating(
                {b: partial(model, x) for b, (_, model) in models.items()}, repeat, max_seconds
            )
    finally:
        torch.set_num_threads(previous)
    return {"input": list(x.shape), "threads": serving.threads, "cpu": cpu_model(), "ms": timings}


def served_configs(
    checkpoint: Path, backend: str = AUTO, serving: ServingConfig = ServingConfig()
) -> dict[str, tuple[Path, ModelConfig]]:
    """Per registered variant: the model file it is served from and the ModelConfig it is served with (its own,
    with the threshold `evaluate` chose). With `backend` AUTO each variant's builds are timed here as `serving`
    runs them (`time_builds`) and the fastest is served, the measurement recorded in the config; else the named
    backend serves every variant. Every model file that may be served is checked to come from the checkpoint's
    weights, before any is timed."""
    if backend != AUTO and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from: {AUTO}, {', '.join(BACKENDS)}")
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    digest = state_digest(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    decision = Decision.read(checkpoint, digest)
    files = {  # the builds that may be served: every backend's when timing decides
        v.key: {b.backend: checkpoint.parent / b.file for b in v.builds if backend in (AUTO, b.backend)}
        for v in VARIANTS
    }
    stored = {key: {b: _read(path) for b, path in paths.items()} for key, paths in files.items()}  # every file first
    for key, builds in stored.items():
        for b, (config, payload) in builds.items():
            if _origin(config, payload) != digest:
                raise ValueError(f"{files[key][b]} was not made from {checkpoint} (weights differ): run quantize again")
    served = {}
    for key, paths in files.items():
        choice = None
        chosen = backend
        if backend == AUTO:
            choice = time_builds(paths, serving)
            chosen = min(choice["ms"], key=lambda b: choice["ms"][b]["median_ms"])
            log.info("%s: %s", key, ", ".join(f"{b} {t['median_ms']:.1f} ms" for b, t in choice["ms"].items()))
        config = stored[key][chosen][0].with_decision(decision).replace(backend_choice=choice)
        served[key] = (paths[chosen], config)
    return served


def archiver_command(name: str, version: str, weights: Path, handler: Path, staged: Path, export: Path) -> list[str]:
    """The torch-model-archiver line that packs one variant from its staged folder (`stage_archive`)."""
    return [
        ARCHIVER, "--model-name", name, "--version", version,
        "--serialized-file", shown(weights), "--handler", shown(handler),
        "--extra-files", shown(staged / STAGED_FILES), "--config-file", shown(staged / STAGED_CONFIG),
        "--export-path", shown(export), "--force",
    ]  # fmt: skip


def stage_archive(weights: Path, config: ModelConfig, serving: ServingConfig, staged: Path) -> None:
    """What torch-model-archiver packs beside the model file and the handler, in `staged`: the extra files (the
    packages, the served ModelConfig, the files the model file needs beside it) and the model-config.yaml."""
    if config.threshold is None:
        raise ValueError(f"{weights}: the served ModelConfig needs a decision threshold (run evaluate)")
    files = staged / STAGED_FILES
    stage_packages(files)
    write_json(files / "model_config.json", config.to_dict())
    for part in model_files(weights)[1:]:  # what the serialized file needs beside it (an IR's weights)
        shutil.copy2(part, files / part.name)
    (staged / STAGED_CONFIG).write_text(yaml.safe_dump(serving.to_yaml_dict(), sort_keys=False))


def build_archive(
    weights: Path,
    config: ModelConfig,
    out_dir: Path,
    name: str,
    serving: ServingConfig,
    version: str,
    handler: Path = HANDLER,
    stage: Path | None = None,
) -> Path:
    """One .mar from a model file and the ModelConfig it is served with; returns its path. With `stage`, what was
    packed stays in `stage/<name>` (replacing an earlier one), so that `archiver_command` can be run by hand."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if stage is not None:
        Path(stage).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="archive-") as tmp:
        tmp = Path(tmp)
        # Staged beside where it is kept, when kept, and renamed into place once the archive is made.
        staged = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=stage or tmp))
        export = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))  # same file system: the rename is atomic
        try:
            stage_archive(weights, config, serving, staged)
            command = archiver_command(name, version, weights, handler, staged, export)
            env = {**os.environ, "TMPDIR": str(tmp / "archiver")}  # its staging folder, away from everyone's
            (tmp / "archiver").mkdir()
            done = subprocess.run([tool(ARCHIVER), *command[1:]], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"torch-model-archiver failed for {name}: {done.stderr.strip() or done.stdout}")
            target = out_dir / f"{name}.mar"
            os.replace(export / f"{name}.mar", target)
            if stage is not None:
                kept = Path(stage) / name
                shutil.rmtree(kept, ignore_errors=True)
                os.replace(staged, kept)
                log.info("%s: %s", name, shlex.join(archiver_command(name, version, weights, handler, kept, out_dir)))
        finally:
            shutil.rmtree(export, ignore_errors=True)
            shutil.rmtree(staged, ignore_errors=True)
    return target


def build_archives(
    checkpoint: Path,
    out_dir: Path,
    serving: ServingConfig = ServingConfig(),
    version: str = "1.0",
    prefix: str = MODEL_PREFIX,
    backend: str = AUTO,
    stage: Path | None = None,
) -> dict[str, Path]:
    """An archive per registered variant (<prefix>_<key>.mar) from the model files `quantize` wrote beside the
    checkpoint and the threshold `evaluate` wrote there, each on `backend` (AUTO: the fastest measured here); with
    `stage`, what each packs is kept in `stage/<prefix>_<key>` (`build_archive`)."""
    return {
        key: build_archive(weights, config, out_dir, f"{prefix}_{key}", serving, version, stage=stage)
        for key, (weights, config) in served_configs(checkpoint, backend, serving).items()
    }
