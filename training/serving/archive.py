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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from handler.settings import ServingConfig
from training.inference.config import Decision, ModelConfig
from training.inference.images import write_json
from training.inference.model import state_digest
from training.inference.variants import MODEL_PREFIX, VARIANTS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HANDLER = ROOT / "handler" / "defect_handler.py"
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


def _load(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run `python -m training quantize --checkpoint {path.parent / 'checkpoint.pt'}` first"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def served_configs(checkpoint: Path) -> dict[str, tuple[Path, ModelConfig]]:
    """Per registered variant: its model file beside the checkpoint, checked to come from the checkpoint's
    weights, and the ModelConfig it is served with (its own, with the threshold `evaluate` chose)."""
    checkpoint = Path(checkpoint)
    digest = state_digest(_load(checkpoint)["state_dict"])
    decision = Decision.read(checkpoint, digest)
    files = {v.key: checkpoint.parent / v.file for v in VARIANTS}
    payloads = {key: _load(path) for key, path in files.items()}  # every file present before any is judged
    served = {}
    for key, payload in payloads.items():
        stored = ModelConfig.from_dict(payload["model_config"])
        origin = stored.quantization["source_digest"] if stored.quantization else state_digest(payload["state_dict"])
        if origin != digest:
            raise ValueError(f"{files[key]} was not made from {checkpoint} (weights differ): run quantize again")
        served[key] = (files[key], stored.with_decision(decision))
    return served


def build_archive(
    weights: Path,
    config: ModelConfig,
    out_dir: Path,
    name: str,
    serving: ServingConfig,
    version: str,
    handler: Path = HANDLER,
) -> Path:
    """One .mar from a model file and the ModelConfig it is served with; returns its path."""
    if config.threshold is None:
        raise ValueError(f"{weights}: the served ModelConfig needs a decision threshold (run evaluate)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="archive-") as tmp:
        tmp = Path(tmp)
        stage = tmp / "stage"
        stage_packages(stage)
        write_json(stage / "model_config.json", config.to_dict())
        yaml_path = tmp / "model-config.yaml"
        yaml_path.write_text(yaml.safe_dump(serving.to_yaml_dict(), sort_keys=False))
        export = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))  # same file system: the rename is atomic
        try:
            command = [
                sys.executable, "-m", "model_archiver.model_packaging",
                "--model-name", name, "--version", version,
                "--serialized-file", str(weights), "--handler", str(handler),
                "--extra-files", str(stage), "--config-file", str(yaml_path),
                "--export-path", str(export), "--force",
            ]  # fmt: skip
            env = {**os.environ, "TMPDIR": str(tmp / "archiver")}  # its staging folder, away from everyone's
            (tmp / "archiver").mkdir()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"torch-model-archiver failed for {name}: {done.stderr.strip() or done.stdout}")
            target = out_dir / f"{name}.mar"
            os.replace(export / f"{name}.mar", target)
        finally:
            shutil.rmtree(export, ignore_errors=True)
    return target


def build_archives(
    checkpoint: Path,
    out_dir: Path,
    serving: ServingConfig = ServingConfig(),
    version: str = "1.0",
    prefix: str = MODEL_PREFIX,
) -> dict[str, Path]:
    """An archive per registered variant (<prefix>_<key>.mar) from the model files `quantize` wrote beside the
    checkpoint and the threshold `evaluate` wrote there."""
    return {
        key: build_archive(weights, config, out_dir, f"{prefix}_{key}", serving, version)
        for key, (weights, config) in served_configs(checkpoint).items()
    }
