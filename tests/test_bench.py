import json
import shutil
import subprocess
import sys

from bench.model import conv_macs, head_configs
from training.inference.config import ModelConfig
from training.inference.model import build_model
from training.serving.timing import measure, measure_alternating


def test_conv_macs_of_the_unet_at_512():
    from training.inference.config import SMP_DECODER

    assert 13.3e9 < conv_macs(build_model(ModelConfig(decoder_channels=SMP_DECODER)), 512) < 13.5e9  # the prototype's
    assert 3.6e9 < conv_macs(build_model(ModelConfig()), 512) < 3.8e9  # ours: the figure config.py states


def test_alternating_runs_take_turns():
    order = []
    timings = measure_alternating({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 4, 10)
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 4  # two warm-up calls each, then one each per round
    assert {n: t["runs"] for n, t in timings.items()} == {"a": 4, "b": 4}


def test_head_configs_differ_only_in_the_head():
    configs = head_configs(ModelConfig())
    assert [c.out_channels for c in configs.values()] == [7, 1]
    assert configs["class"].replace(class_names=()) == configs["binary"]


def test_measure_reports_median_and_p90():
    calls = []
    timing = measure(lambda: calls.append(1), repeat=5, max_seconds=10)
    assert timing["runs"] == 5 and len(calls) == 7  # two warm-up runs
    calls.clear()
    assert measure(lambda: calls.append(1), repeat=5, max_seconds=10, warm_up=0)["runs"] == len(calls) == 5
    assert 0 <= timing["median_ms"] <= timing["p90_ms"]


def test_bench_command_writes_the_report(tiny_run, tmp_path, repo_root):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    report = tmp_path / "bench.md"
    command = [
        sys.executable, "-m", "bench", "model", "--checkpoint", str(run / "checkpoint.pt"), "--sizes", "64",
        "--batch", "1", "--threads", "1", "--repeat", "3", "--layer-size", "600", "--report", str(report),
        "--json", str(tmp_path / "bench.json"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    raw = json.loads((tmp_path / "bench.json").read_text())
    variants = {r["variant"] for r in raw["rows"]}
    assert {"fp32 eager", "static int8 FX frozen", "ONNX Runtime int8 (QDQ)", "dynamic int8 (prototype)", "OpenVINO fp32",
            "OpenVINO int8 (NNCF)", "prototype network, OpenVINO int8 (NNCF)"} <= variants  # fmt: skip
    assert all(r["gmac"] > 0 and r["precision"] in ("fp32", "int8") for r in raw["rows"])
    assert all(raw["peaks"][p]["1"] > 0 for p in ("fp32", "int8"))
    accuracy = raw["accuracy"]
    assert set(accuracy) >= {"OpenVINO fp32", "OpenVINO int8 (NNCF)", "static int8 FX frozen"}
    assert accuracy["OpenVINO fp32"]["mask_iou"] > 0.999  # the same weights
    assert set(raw["tiled_layer"]["ms"]) >= {"OpenVINO int8 (NNCF)", "static int8 FX frozen"}
    seams = raw["tiled_layer"]["seams"]  # 64-pixel test layers: 256 mosaics through 128 tiles
    assert (seams["layer"], seams["tile"]) == (256, 128) and 0 <= seams["changed_share"]["64"] <= 1
    heads = {(r["variant"], r["head"]) for r in raw["heads"]}
    assert heads == {(v, h) for v in ("fp32 channels_last", "static int8 FX frozen") for h in ("class", "binary")}
    assert all(r["runs"] == 3 and 0 < r["median_ms"] <= r["p90_ms"] for r in raw["heads"])
    text = report.read_text()
    assert "python -m bench model" in text and "| static int8 FX frozen |" in text
    assert "What tiles change: 3 layers of 256²" in text
    assert "class head vs binary head" in text and "| fp32 channels_last | " in text
    assert (tmp_path / "bench.png").stat().st_size > 1000
    # the report again from the raw figures alone, through the old command line, which forwards to bench model
    report.unlink()
    again = [
        sys.executable,
        "-m",
        "training",
        "bench",
        "--from-json",
        str(tmp_path / "bench.json"),
        "--report",
        str(report),
    ]
    assert subprocess.run(again, cwd=repo_root, capture_output=True, timeout=120).returncode == 0
    assert "| static int8 FX frozen |" in report.read_text()
