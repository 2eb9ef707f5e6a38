import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """16 small synthetic layers (64 x 64), prepared with truth: 6 train, 6 val, 4 test."""
    import dataclasses

    from training.preparation.prepare import PrepareConfig, prepare
    from training.renderer.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(
        dataclasses.replace(SynthConfig(size=64), clean_fraction=0.2), root / "synth", layers=16, seed=0, workers=1
    )
    config = PrepareConfig(split=(0.5, 0.25, 0.25))
    prepare(root / "synth" / "raw", root / "processed", config, root / "synth" / "truth", None, workers=1)
    return root / "processed"


@pytest.fixture(scope="session")
def tiny_run(tiny_prepared, tmp_path_factory) -> Path:
    """A two-epoch training on the tiny set (truth labels); copy it before changing it."""
    from training.learning.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_run")
    profile = TrainConfig("tiny", epochs=2, repeats=1, batch_size=2, crop=32, lr=1e-3, patience=5)
    train(tiny_prepared, out, profile, labels="truth", device_name="cpu", seed=0, command="CMD")
    return out


@pytest.fixture(scope="session")
def tiny_variants(tiny_run, tmp_path_factory) -> Path:
    """tiny_run's checkpoint evaluated and quantized: checkpoint.pt, decision.json, model_fp32.pt and model_int8.pt
    (2 calibration layers)."""
    import shutil

    from training.inference.quantization import QuantizationConfig
    from training.learning.evaluate import evaluate_checkpoint
    from training.learning.quantize import quantize_checkpoint

    out = tmp_path_factory.mktemp("tiny_variants")
    shutil.copy(tiny_run / "checkpoint.pt", out / "checkpoint.pt")
    evaluate_checkpoint(out / "checkpoint.pt", reference="truth")
    quantize_checkpoint(out / "checkpoint.pt", out, QuantizationConfig(calibration_images=2))
    return out


# The backend each variant of the tiny store runs on: chosen by hand rather than timed, so that every test of the
# server, the handler, the client and the page meets both backends, on every machine.
TINY_BACKENDS = {"fp32": "openvino", "int8": "pytorch"}


@pytest.fixture(scope="session")
def tiny_store(tiny_variants, tmp_path_factory) -> Path:
    """A model store with defect_fp32.mar (on OpenVINO) and defect_int8.mar (on PyTorch) of the tiny model."""
    from handler.settings import ServingConfig
    from training.serving.archive import build_archive, served_configs

    store = tmp_path_factory.mktemp("model_store")
    for key, backend in TINY_BACKENDS.items():
        weights, config = served_configs(tiny_variants / "checkpoint.pt", backend)[key]
        build_archive(weights, config, store, f"defect_{key}", ServingConfig(), "1.0")
    return store


@pytest.fixture(scope="session")
def torchserve(tiny_store, tmp_path_factory):
    """A real TorchServe on free loopback ports serving defect_fp32 and defect_int8 of the tiny model; stopped at
    the end of the session, also when tests fail."""
    from training.serving.launcher import LISTENERS, free_port, start

    server = start(
        tiny_store, tmp_path_factory.mktemp("torchserve"), ports={n: free_port() for n in LISTENERS}, foreground=True
    )
    yield server
    server.stop()
