import ast
import json
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml

from handler.settings import ServingConfig
from tests.conftest import TINY_BACKENDS
from training.inference import openvino_backend
from training.inference.config import ModelConfig
from training.inference.model import save_checkpoint
from training.inference.variants import variant as variant_named
from training.serving.archive import build_archive, served_configs, stage_packages

PROJECT_PACKAGES = ("training", "handler", "client", "bench", "web")


def _project_imports(path) -> set[str]:
    """Dotted names of this project's modules a Python file imports (at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n.split(".")[0] in PROJECT_PACKAGES}
    return found


def test_the_shipped_packages_import_only_themselves(tmp_path):
    staged = stage_packages(tmp_path)
    modules = {".".join(p.with_suffix("").parts).removesuffix(".__init__") for p in staged if p.suffix == ".py"}
    for path in staged:
        if path.suffix == ".py":
            outside = {n for n in _project_imports(tmp_path / path) if n not in modules}
            assert not outside, f"{path} imports {sorted(outside)}, which the archive does not ship"


def test_the_handler_imports_from_an_unpacked_archive_alone(tiny_store, tmp_path):
    with zipfile.ZipFile(tiny_store / "defect_int8.mar") as mar:
        mar.extractall(tmp_path)
    probe = (
        "import sys, defect_handler, handler.request, training.inference.answer as a\n"
        "files = [defect_handler.__file__, handler.request.__file__, a.__file__]\n"
        "assert all(f.startswith(sys.argv[1]) for f in files), files"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_archives_hold_handler_modules_weights_and_both_configs(tiny_store):
    for variant in ("fp32", "int8"):
        with zipfile.ZipFile(tiny_store / f"defect_{variant}.mar") as mar:
            names = set(mar.namelist())
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
            config = ModelConfig.from_dict(json.loads(mar.read("model_config.json")))
            serving = ServingConfig.from_yaml_dict(yaml.safe_load(mar.read("model-config.yaml")))
        assert {"handler/request.py", "training/__init__.py", "training/inference/answer.py"} <= names
        assert not any(n.startswith(("training/learning", "training/serving")) for n in names)
        weights = variant_named(variant).build(TINY_BACKENDS[variant]).file
        assert {"defect_handler.py", weights} <= names and manifest["model"]["serializedFile"] == weights
        if weights.endswith(".xml"):  # an OpenVINO IR: its weights beside it
            assert weights.replace(".xml", ".bin") in names
        assert config.backend == TINY_BACKENDS[variant] and config.backend_choice is None  # chosen by hand
        assert manifest["model"]["modelName"] == f"defect_{variant}"
        assert manifest["model"]["handler"] == "defect_handler.py"
        assert (config.quantization is not None) == (variant == "int8")
        assert serving == ServingConfig()


def _copy_variants(tiny_variants, folder):
    for name in ("checkpoint.pt", "decision.json", "model_fp32.pt", "model_int8.pt", "model_fp32.xml",
                 "model_fp32.bin", "model_int8.xml", "model_int8.bin"):  # fmt: skip
        shutil.copy(tiny_variants / name, folder / name)


def test_each_variant_is_served_on_the_backend_measured_fastest_here(tiny_variants, tmp_path):
    _copy_variants(tiny_variants, tmp_path)
    serving = ServingConfig(threads=1)
    for key, (weights, config) in served_configs(tmp_path / "checkpoint.pt", serving=serving).items():
        choice = config.backend_choice  # timed on a layer of the side serving expects
        assert choice["threads"] == 1 and choice["input"] == [
            1,
            config.in_channels,
            serving.layer_side,
            serving.layer_side,
        ]
        assert set(choice["ms"]) == {"pytorch", "openvino"} and all(t["runs"] >= 3 for t in choice["ms"].values())
        assert config.backend == min(choice["ms"], key=lambda b: choice["ms"][b]["median_ms"])
        assert weights.name == variant_named(key).build(config.backend).file


def test_variants_must_come_from_the_checkpoint_and_are_served_at_its_decision(tiny_variants, tmp_path):
    _copy_variants(tiny_variants, tmp_path)
    decision = json.loads((tmp_path / "decision.json").read_text())
    for backend in ("pytorch", "openvino"):
        served = served_configs(tmp_path / "checkpoint.pt", backend)
        assert set(served) == {"fp32", "int8"} and {c.backend for _, c in served.values()} == {backend}
        assert all(config.threshold == decision["threshold"] for _, config in served.values())
    with pytest.raises(ValueError, match="unknown backend 'onnx'; choose from: auto, pytorch, openvino"):
        served_configs(tmp_path / "checkpoint.pt", "onnx")
    (tmp_path / "decision.json").write_text(json.dumps({**decision, "threshold": 0.42}))  # evaluate ran again
    assert {c.threshold for _, c in served_configs(tmp_path / "checkpoint.pt", "pytorch").values()} == {0.42}
    config, model = openvino_backend.read(tmp_path / "model_fp32.xml")
    openvino_backend.save(model, config, tmp_path / "model_fp32.xml", "digest of other weights")
    with pytest.raises(ValueError, match=r"model_fp32\.xml was not made from"):
        served_configs(tmp_path / "checkpoint.pt")  # every build is checked before any is timed
    served_configs(tmp_path / "checkpoint.pt", "pytorch")  # the PyTorch builds alone need only their own files
    shutil.copy(tiny_variants / "model_fp32.xml", tmp_path / "model_fp32.xml")
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in payload["state_dict"].items()}  # trained again
    save_checkpoint(tmp_path / "checkpoint.pt", ModelConfig.from_dict(payload["model_config"]), state)
    with pytest.raises(ValueError, match="run `python -m training evaluate"):
        served_configs(tmp_path / "checkpoint.pt", "pytorch")
    (tmp_path / "decision.json").unlink()
    with pytest.raises(FileNotFoundError, match="evaluate"):
        served_configs(tmp_path / "checkpoint.pt", "pytorch")
    shutil.copy(tiny_variants / "checkpoint.pt", tmp_path / "checkpoint.pt")
    shutil.copy(tiny_variants / "decision.json", tmp_path / "decision.json")
    (tmp_path / "model_int8.xml").unlink()
    with pytest.raises(FileNotFoundError, match="quantize"):
        served_configs(tmp_path / "checkpoint.pt", "openvino")


def test_a_failed_archive_leaves_the_previous_one_intact(tiny_variants, tiny_store, tmp_path):
    shutil.copy(tiny_store / "defect_int8.mar", tmp_path / "defect_int8.mar")
    before = (tmp_path / "defect_int8.mar").read_bytes()
    with pytest.raises(RuntimeError, match="torch-model-archiver failed"):
        (weights, config) = served_configs(tiny_variants / "checkpoint.pt", "pytorch")["int8"]
        build_archive(weights, config, tmp_path, "defect_int8", ServingConfig(), "1.0",
                      handler=tmp_path / "no_such_handler.py")  # fmt: skip
    assert (tmp_path / "defect_int8.mar").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["defect_int8.mar"]  # no temporary folder left
