"""Each report of training/reports rendered from a tiny hand-made result: its key lines and where it came from."""

import json
from pathlib import Path

import pytest

from bench.load import Reliability, Throughput, summarize
from bench.model import Benchmark
from bench.serving import ServingBench
from client.ab_report import ABReport
from training.reports import ab, benchmarks, reliability, serving, throughput
from training.reports.provenance import source_commit

ROOT = Path(__file__).resolve().parents[1]

CPU = {"model": "Test CPU", "cores": 2, "torch": "2.x", "onnxruntime": "1.x", "openvino": "2026.x", "avx512_vnni": True,
       "amx_int8": False, "mhz": 2000.0}  # fmt: skip


def bench_result() -> Benchmark:
    times = {"fp32 eager": 120.0, "fp32 channels_last": 80.0, "static int8 FX frozen": 20.0, "OpenVINO fp32": 50.0,
             "OpenVINO int8 (NNCF)": 16.0, "ONNX Runtime int8 (QDQ)": 30.0, "prototype network, OpenVINO fp32": 150.0,
             "prototype network, OpenVINO int8 (NNCF)": 40.0}  # fmt: skip
    rows = [{"variant": v, "size": 512, "batch": 1, "threads": 2, "median_ms": ms, "p90_ms": ms + 1, "runs": 3,
             "precision": "int8" if "int8" in v else "fp32", "gmac": 13.4 if "prototype" in v else 4.0}
            for v, ms in times.items()]  # fmt: skip
    sizes = {"fp32 state dict": 8_000_000, "int8 state dict": 2_000_000}
    tiled = {"size": 2048, "tile": 2048, "overlap": 256, "threads": 2,
             "ms": {name: {"median_ms": ms, "p90_ms": ms + 10, "runs": 5}
                    for name, ms in (("fp32 eager", 9000.0), ("OpenVINO int8 (NNCF)", 450.0))},
             "seams": {"layer": 2048, "tile": 1024, "mosaics": 3, "changed_share": {"64": 0.006, "256": 0.0003}}}  # fmt: skip
    heads = [{"variant": v, "head": h, "size": 512, "threads": 2, "median_ms": ms, "p90_ms": ms + 2, "runs": 20}
             for v, h, ms in (("fp32 channels_last", "class", 84.0), ("fp32 channels_last", "binary", 80.0),
                              ("static int8 FX frozen", "class", 22.0), ("static int8 FX frozen", "binary", 20.0))]  # fmt: skip
    peaks = {"fp32": {"2": 100.0}, "int8": {"2": 400.0}}
    accuracy = {"OpenVINO int8 (NNCF)": {"mask_iou": 0.985, "decision_agreement": 1.0, "f1_float": 0.8, "f1_int8": 0.797,
                                         "f1_drop": 0.003}}  # fmt: skip
    return Benchmark("python -m bench model --checkpoint c.pt", "c.pt", CPU, rows, sizes, tiled, 4.0, heads, peaks,
                     accuracy)  # fmt: skip


def test_the_benchmarks_report_states_the_served_int8_speed_up_and_its_provenance(tmp_path):
    report = tmp_path / "bench.md"
    benchmarks.write_report(bench_result(), report)
    lines = report.read_text().splitlines()
    assert f"Produced by `python -m bench model` at {source_commit()}. Regenerate:" in lines
    # each variant served on its faster build: OpenVINO fp32 (50 ms) and OpenVINO int8 (16 ms)
    assert "- served fp32: OpenVINO fp32; served int8: OpenVINO int8 (NNCF) (each variant's faster build, as " \
           "`archive` chooses)" in lines  # fmt: skip
    speed_up = [line for line in lines if line.startswith("- **int8 speed-up**")]
    assert speed_up and speed_up[0].endswith("**3.1x**")  # 50 ms / 16 ms
    assert (
        "- **served int8 vs the prototype's network on OpenVINO int8**: **2.50x** faster (target >= 2x: met)" in lines
    )
    assert "- served fp32 vs OpenVINO fp32 of the same network: 1.00x (1.00x when OpenVINO serves it)" in lines
    assert "- served int8 vs ONNX Runtime int8 (QDQ): 1.9x" in lines
    assert "| OpenVINO int8 (NNCF) | 4.0 | 250 | 62% |" in lines  # 4 GMAC / 16 ms against the 400 GMAC/s int8 peak
    assert "| prototype network, OpenVINO fp32 | 13.4 | 89 | 89% |" in lines
    assert "| OpenVINO int8 (NNCF) | 0.9850 | 1.000 | 0.800 | 0.797 | 0.0030 |" in lines
    assert "- fastest int8 (OpenVINO int8 (NNCF)): 450 ms (target <= 500 ms: met)" in lines
    assert "- OpenVINO int8 (NNCF): 450 ms (p90 460, 5 runs)" in lines
    assert any(
        "the share of pixels decided differently, by overlap: 64 px: 0.600%, 256 px: 0.030%" in line for line in lines
    )
    assert "| fp32 eager | 120.0 (121.0) |" in lines and "fp32 / int8 state dict: 4.00x smaller." in lines
    assert "| fp32 channels_last | 84.0 (86.0) | 80.0 (82.0) | 1.050 | 20 |" in lines  # class / binary head
    assert "| static int8 FX frozen | 22.0 (24.0) | 20.0 (22.0) | 1.100 | 20 |" in lines
    assert lines[-1] == "![latency](bench.png)" and (tmp_path / "bench.png").stat().st_size > 1000


def test_a_benchmark_reads_back_from_the_json_it_writes():
    result = bench_result()
    again = Benchmark.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result and list(result.to_dict()) == ["command", "checkpoint", "cpu", "rows", "sizes_bytes",
                                                          "tiled_layer", "gmac_512", "heads", "peaks", "accuracy"]  # fmt: skip
    older = {k: v for k, v in result.to_dict().items() if k != "heads"}  # a run from before the head rows
    assert Benchmark.from_dict(older).heads == [] and "class head" not in benchmarks.render(
        Benchmark.from_dict(older), "b.png"
    )


def serving_row(model: str, size: int, http: float, alone: float) -> dict:
    worker = {"decode": 1.0, "inference": alone + 4.0, "postprocess": 2.0}
    frontend = {"inference": alone + 4.0 + 3.0 + 5.0, "queue": 0.5}  # the handler's 3 ms and 5 ms of the worker's own
    return {"model": model, "size": size,
            "http": {"median_ms": http, "p90_ms": http, "runs": 3, "worker_ms": worker, "frontend_ms": frontend},
            "model_only": {"median_ms": alone, "p90_ms": alone, "runs": 3}, "threads": 1}  # fmt: skip


def test_the_serving_report_compares_int8_with_fp32_over_http(tmp_path):
    result = ServingBench("python -m bench serving X", CPU, 3,
                          [serving_row("defect_fp32", 512, 200.0, 160.0), serving_row("defect_int8", 512, 50.0, 40.0)])  # fmt: skip
    report = tmp_path / "serving.md"
    serving.write_report(result, report)
    lines = report.read_text().splitlines()
    assert f"Produced by `python -m bench serving` at {source_commit()}. Regenerate:" in lines
    assert "- 512²: int8 answers 4.0x faster than fp32 over HTTP" in lines
    # overhead 40 = decode 1 + answer 2 + model 4 slower in the worker + worker and socket 5 + HTTP and client 27.5
    # (200 - 172 in the worker - 0.5 queued)
    assert "| defect_fp32 | 512² | 200.0 (200.0) | 160.0 (160.0) | **40.0** | 1.0 | 2.0 | 4.0 | 5.0 | 27.5 |" in lines
    assert (tmp_path / "serving.png").exists()
    assert (
        serving.summary(result)
        == "serving overhead (HTTP - model alone): defect_fp32 512² 40.0 ms, defect_int8 512² 10.0 ms"
    )


def test_the_reliability_report_states_what_the_killed_worker_lost():
    run = {"requests": 10, "concurrency": 2, "errors": 0, "p50_ms": 10.0, "p95_ms": 12.0, "p99_ms": 13.0,
           "throughput_per_s": 5.0, "memory_before": {"frontend_mb": 100.0, "workers_mb": 200.0},
           "memory_after": {"frontend_mb": 110.0, "workers_mb": 200.0}, "growth": {"frontend_mb": 0.1, "workers_mb": 0.0}}  # fmt: skip
    fault = {"model": "defect_int8", "requests": 10, "lost": 0, "first_answer_after_kill_s": 2.0,
             "worker_ready_after_kill_s": None, "p99_ms": 2100.0, "max_ms": 2200.0}  # fmt: skip
    text = reliability.render(Reliability(128, {"defect_int8": run}, fault), "python -m bench load X", CPU)
    lines = text.splitlines()
    assert f"Produced by `python -m bench load` at {source_commit()}. Regenerate:" in lines
    assert "| defect_int8 | 10 | 2 | 0 | 10.0 | 12.0 | 13.0 | 5.00 | 100 → 110 (+10.0%) | 200 → 200 (+0.0%) |" in lines
    assert "Requests lost: **0**." in text and "no new worker ready before the run ended" in text


def test_the_throughput_report_states_the_int8_ratio():
    rows = [
        {"variant": v, "batch": 1, "workers": 1, "threads": 2, "concurrency": c, "p50_ms": p, "throughput_per_s": 1000 / p,
         "model_p50_ms": p / 1.2}
        for v, p in (("fp32", 100.0), ("int8", 25.0)) for c in (1, 8)
    ]  # fmt: skip
    lines = throughput.render(Throughput("python -m bench matrix X", rows, summarize(rows)), 256).splitlines()
    assert lines[0] == "# Serving throughput over HTTP (256², a real TorchServe on loopback)"
    assert f"Produced by `python -m bench matrix` at {source_commit()}. Regenerate:" in lines
    assert "- int8 serving throughput vs fp32, best setting of each: **4.0x** (40.00 vs 10.00 layers/s)" in lines


@pytest.fixture
def ab_result() -> ABReport:
    def model(p50: float, f1: float | None, unfamiliar: int | None) -> dict:
        return {"requests": 2, "p50_ms": p50, "p95_ms": p50, "p99_ms": p50, "throughput_per_s": 1000 / p50,
                "f1_vs_truth": f1, "layers_scored": 2, "unfamiliar_layers": unfamiliar,
                "latencies_ms": [p50, p50 + 1]}  # fmt: skip

    agreement = {"pair": ["defect_fp32", "defect_int8"], "layers": 2, "mask_iou_pooled": 0.99, "mask_iou_mean": 0.95,
                 "mask_iou_min": 0.9, "decision_agreement": 1.0}  # fmt: skip
    return ABReport("python -m client ab-report X", "the service at http://test",
                    {"defect_fp32": model(180.0, 0.97, 1), "defect_int8": model(60.0, None, None)}, agreement)  # fmt: skip


def test_the_ab_report_states_the_agreement_and_the_latency_ratio(ab_result, tmp_path):
    report = tmp_path / "ab.md"
    ab.write_report(ab_result, report)
    lines = report.read_text().splitlines()
    assert f"Produced by `python -m client ab-report` at {source_commit()}. Regenerate:" in lines
    assert "| defect_fp32 | 2 | 180.0 | 180.0 | 180.0 | 5.56 | 0.970 | 1 of 2 |" in lines
    assert "| defect_int8 | 2 | 60.0 | 60.0 | 60.0 | 16.67 | - | - |" in lines  # its answers did not say
    assert any("same defect decision on 100.0% of layers; median latency defect_fp32 / defect_int8 = 3.00." in line
               for line in lines)  # fmt: skip
    assert (tmp_path / "ab.png").exists()
    table = ab.summary_table(ab_result).splitlines()
    assert table[1].split() == ["defect_fp32", "180.0", "180.0", "180.0", "5.56", "0.970", "1", "of", "2"]
    assert table[2].split() == ["defect_int8", "60.0", "60.0", "60.0", "16.67", "-", "-"]
    assert table[-1].startswith("agreement over 2 layers: mask IoU 0.9900 pooled")
    assert "The variants answer without defect classes." in lines


def test_the_ab_report_compares_per_class(ab_result, tmp_path):
    import dataclasses

    classes = {"defect_fp32": {"spatter": {"components": 3, "area_px": 40, "layers": 2}},
               "defect_int8": {"spatter": {"components": 2, "area_px": 31, "layers": 1}}}  # fmt: skip
    models = {m: {**r, "classes": classes[m]} for m, r in ab_result.models.items()}
    agreement = {**ab_result.agreement, "classes": {"spatter": 0.5, "pit": 1.0}}
    report = tmp_path / "ab.md"
    ab.write_report(dataclasses.replace(ab_result, models=models, agreement=agreement), report)
    lines = report.read_text().splitlines()
    assert "| class | defect_fp32 regions (layers) | defect_int8 regions (layers) | same presence |" in lines
    assert "| spatter | 3 (2) | 2 (1) | 50.0% |" in lines and "| pit | 0 (0) | 0 (0) | 100.0% |" in lines


def test_a_changed_document_is_not_a_change_of_the_code(tmp_path):
    import subprocess

    from training.reports import provenance

    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    for name in ("code.py", "README.md", "docs/figure.png"):
        (repo / name).write_text("1")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    original = provenance.ROOT
    try:
        provenance.ROOT = repo
        for name, dirty in (("docs/figure.png", False), ("README.md", False), ("code.py", True)):
            provenance.source_commit.cache_clear()
            (repo / name).write_text("2")
            assert provenance.source_commit().endswith("with uncommitted changes") == dirty, name
    finally:
        provenance.ROOT = original
        provenance.source_commit.cache_clear()


def test_the_image_report_shows_each_figure_with_its_command():
    from bench.image import ImageBench
    from training.reports.image import render

    result = ImageBench(
        "python -m bench image --model-store model_store", "AMD EPYC", "localhost/lpbf-defects/serving:latest",
        "localhost/debian:bookworm-minbase", 6_860_000_000, {"without cache": 294.0, "with cache": 3.0}, 14.2,
        "defect_int8", 512, {"container": {"median_ms": 80.0, "p90_ms": 90.0, "runs": 20},
                             "this machine": {"median_ms": 78.0, "p90_ms": 85.0, "runs": 20}},
        {"in_flight": 4, "answered": 4, "drain_s": 11.6, "exit_code": 0, "model": "defect_int8", "size": 2048},
    )  # fmt: skip
    text = render(ImageBench.from_dict(result.to_dict()))
    assert "python -m bench image --model-store model_store" in text and "Produced by `python -m bench image`" in text
    assert "6.86 GB" in text and "| 294 s |" in text and "| 3 s |" in text
    assert "80.0 (90.0) ms, 20 runs" in text and "(container / this machine: 1.03)" in text
    assert "4 answered, exit code 0, 11.6 s from SIGTERM to exit" in text


def test_the_readme_container_section_holds_the_image_report_s_table(tmp_path):
    """bench image writes its table into the README between two markers: the committed README holds one such block,
    the same table as docs/image.md, and a README without the markers is refused with nothing written."""
    from bench.image import ImageBench
    from training.reports import image as report

    readme = (ROOT / "README.md").read_text()
    start, end = report.readme_span(readme)
    block = readme[start:end].splitlines()
    rows = [line for line in block if line.startswith("|")]
    documented = [line for line in (ROOT / "docs" / "image.md").read_text().splitlines() if line.startswith("|")]
    assert rows == documented and len(rows) > 2
    assert readme.index("### Container:") < start < readme.index("### Serving latency")
    result = ImageBench.from_dict({
        "command": "python -m bench image", "cpu": "cpu", "tag": "t", "base": "b", "size_bytes": 10**9,
        "build_s": {"without cache": 1.0, "with cache": 1.0}, "first_answer_s": 1.0, "model": "m", "size": 512,
        "latency": {k: {"median_ms": 1.0, "p90_ms": 1.0, "runs": 1} for k in ("container", "this machine")},
        "sigterm": {"in_flight": 1, "answered": 1, "drain_s": 1.0, "exit_code": 0, "model": "m", "size": 8},
    })  # fmt: skip
    (tmp_path / "README.md").write_text("# x\n\nno block\n")
    with pytest.raises(ValueError, match="no <!-- python -m bench image: start -->"):
        report.write_report(result, tmp_path / "image.md", tmp_path / "README.md")
    assert not (tmp_path / "image.md").exists()
    replaced = report.with_readme_block(readme, result)
    assert replaced[:start] == readme[:start] and replaced.endswith(readme[end:])
