import json
import shutil
import zipfile

import pytest
import torch
import yaml

from training.archive import HANDLER, PACKAGE, SERVING_MODULES, build_archive, check_variants, imported_training_modules
from training.config import ModelConfig
from training.model import save_checkpoint
from training.serving import ServingConfig


def test_the_packed_modules_are_all_the_handler_needs():
    needed = imported_training_modules(HANDLER)
    for module in SERVING_MODULES:
        needed |= imported_training_modules(PACKAGE / f"{module}.py")
    assert needed <= set(SERVING_MODULES), f"add {sorted(needed - set(SERVING_MODULES))} to SERVING_MODULES"


def test_archives_hold_handler_modules_weights_and_both_configs(tiny_store):
    for variant in ("fp32", "int8"):
        with zipfile.ZipFile(tiny_store / f"defect_{variant}.mar") as mar:
            names = set(mar.namelist())
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
            config = ModelConfig.from_dict(json.loads(mar.read("model_config.json")))
            serving = ServingConfig.from_yaml_dict(yaml.safe_load(mar.read("model-config.yaml")))
        assert {f"training/{m}.py" for m in SERVING_MODULES} <= names
        assert {"defect_handler.py", f"model_{variant}.pt"} <= names
        assert manifest["model"]["modelName"] == f"defect_{variant}"
        assert manifest["model"]["handler"] == "defect_handler.py"
        assert (config.quantization is not None) == (variant == "int8")
        assert serving == ServingConfig()


def test_variants_must_come_from_the_checkpoint_and_carry_its_threshold(tiny_variants, tmp_path):
    for name in ("checkpoint.pt", "model_fp32.pt", "model_int8.pt"):
        shutil.copy(tiny_variants / name, tmp_path / name)
    assert set(check_variants(tmp_path / "checkpoint.pt")) == {"fp32", "int8"}
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    config = ModelConfig.from_dict(payload["model_config"]).replace(threshold=0.42)  # evaluate ran after quantize
    save_checkpoint(tmp_path / "checkpoint.pt", config, payload["state_dict"])
    with pytest.raises(ValueError, match="run quantize again"):
        check_variants(tmp_path / "checkpoint.pt")
    (tmp_path / "model_int8.pt").unlink()
    with pytest.raises(FileNotFoundError, match="quantize"):
        check_variants(tmp_path / "checkpoint.pt")


def test_a_failed_archive_leaves_the_previous_one_intact(tiny_variants, tiny_store, tmp_path):
    shutil.copy(tiny_store / "defect_int8.mar", tmp_path / "defect_int8.mar")
    before = (tmp_path / "defect_int8.mar").read_bytes()
    with pytest.raises(RuntimeError, match="torch-model-archiver failed"):
        build_archive(tiny_variants / "model_int8.pt", tmp_path, "defect_int8", ServingConfig(), "1.0",
                      handler=tmp_path / "no_such_handler.py")  # fmt: skip
    assert (tmp_path / "defect_int8.mar").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["defect_int8.mar"]  # no temporary folder left
