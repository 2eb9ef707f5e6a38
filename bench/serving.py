"""Single-request HTTP latency of each served variant beside the model-only time of the same archive, in one run.

A TorchServe is started on free loopback ports with the archives of a model store; for each layer size, one
synthetic layer is sent `repeat` times to each variant, one request at a time, after warm-up. The model-only time is
the same archive's model (unpacked, loaded as the worker loads it, with the worker's torch threads) running the
same layer through the same tiled inference in this process, after the server has stopped. HTTP time / model time
is the serving overhead: decoding the three PNGs, the answer (components, mask PNG, JSON) and the transport.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.model import cpu_description, measure
from client.client import DefectClient
from handler.settings import ServingConfig
from training.inference.images import encode_png, write_atomic, write_json
from training.inference.loaders import load_variant
from training.inference.tiling import predict_tiled
from training.inference.variants import model_names, variant
from training.renderer.synth import SynthConfig, generate_layer
from training.reports.figures import pyplot, save_png
from training.reports.provenance import produced_by
from training.serving.launcher import LISTENERS, free_port, start

log = logging.getLogger(__name__)


def synthetic_layer(size: int, seed: int = 0, index: int = 6) -> list[np.ndarray]:
    """Three light images of one synthetic layer of size x size pixels."""
    return generate_layer(SynthConfig(size=size), seed, index).images


def _unpack(mar: Path, into: Path) -> tuple[Path, ServingConfig]:
    import yaml

    with zipfile.ZipFile(mar) as archive:
        archive.extractall(into)
    manifest = json.loads((into / "MAR-INF" / "MANIFEST.json").read_text())
    serving = ServingConfig.from_yaml_dict(yaml.safe_load((into / "model-config.yaml").read_text()))
    return into / manifest["model"]["serializedFile"], serving


def http_latency(server, model: str, blobs: list[bytes], repeat: int, max_seconds: float) -> dict[str, Any]:
    """Wall time of one POST at a time, and the worker's own timings of the last answer."""
    last: dict[str, Any] = {}
    client = DefectClient(server.urls["inference"], model, key_file=server.key_file, retries=0)

    def once() -> None:
        last.update(client.predict(blobs).answer["timing_ms"])  # a refusal raises ServiceError

    figures = measure(once, repeat, max_seconds)
    return {**figures, "worker_ms": dict(last)}


def model_latency(weights: Path, serving: ServingConfig, stack: np.ndarray, repeat: int, max_seconds: float) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(serving.torch_threads)
    try:
        config, model = load_variant(weights)
        return measure(
            lambda: predict_tiled(model, stack, config, serving.tile_overlap, serving.tile_batch), repeat, max_seconds
        )
    finally:
        torch.set_num_threads(threads)


def run(
    model_store: Path,
    sizes: list[int],
    repeat: int = 10,
    max_seconds: float = 60.0,
    models: tuple[str, ...] | None = None,
    command: str = "",
) -> dict[str, Any]:
    models = models or model_names()
    layers = {size: synthetic_layer(size) for size in sizes}
    blobs = {size: [encode_png(im) for im in images] for size, images in layers.items()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        server = start(model_store, tmp / "home", models, ports={n: free_port() for n in LISTENERS}, foreground=True)
        try:
            for size in sizes:
                for model in models:
                    figures = http_latency(server, model, blobs[size], repeat, max_seconds)
                    rows.append({"model": model, "size": size, "http": figures})
                    log.info("%s %d px: HTTP %.1f ms (p90 %.1f)", model, size, figures["median_ms"], figures["p90_ms"])
        finally:
            server.stop()
        for model in models:
            weights, serving = _unpack(model_store / f"{model}.mar", tmp / model)
            for row in (r for r in rows if r["model"] == model):
                stack = np.stack(layers[row["size"]], axis=-1)
                row["model_only"] = model_latency(weights, serving, stack, repeat, max_seconds)
                row["torch_threads"] = serving.torch_threads
                log.info("%s %d px: model only %.1f ms", model, row["size"], row["model_only"]["median_ms"])
    return {"command": command, "cpu": cpu_description(), "repeat": repeat, "rows": rows}


def write_report(result: dict[str, Any], report: Path) -> None:
    rows = result["rows"]
    table = [
        "| variant | layer | HTTP median (p90) ms | model only median (p90) ms | HTTP / model | worker: decode / inference / postprocess ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        http, alone, worker = r["http"], r["model_only"], r["http"]["worker_ms"]
        table.append(
            f"| {r['model']} | {r['size']}² | {http['median_ms']:.1f} ({http['p90_ms']:.1f}) | "
            f"{alone['median_ms']:.1f} ({alone['p90_ms']:.1f}) | {http['median_ms'] / alone['median_ms']:.2f} | "
            f"{worker['decode']:.1f} / {worker['inference']:.1f} / {worker['postprocess']:.1f} |"
        )
    speedups = []
    for size in sorted({r["size"] for r in rows}):
        pair = {r["model"]: r for r in rows if r["size"] == size}
        fp32, int8 = variant("fp32").model_name, variant("int8").model_name
        if {fp32, int8} <= set(pair):
            ratio = pair[fp32]["http"]["median_ms"] / pair[int8]["http"]["median_ms"]
            speedups.append(f"- {size}²: int8 answers {ratio:.1f}x faster than fp32 over HTTP")
    cpu = result["cpu"]
    threads = sorted({r["torch_threads"] for r in rows})
    text = "\n".join(
        [
            "# Serving latency: one request at a time over HTTP, beside the model alone",
            "",
            f"{produced_by('python -m bench serving')} Regenerate:",
            "",
            "```bash",
            result["command"],
            "```",
            "",
            f"Machine: {cpu.get('model', 'unknown CPU')}, {cpu.get('cores')} cores visible; torch {cpu.get('torch')}. "
            f"A real TorchServe on loopback with the archives of the model store, one worker per variant with "
            f"{', '.join(map(str, threads))} torch thread(s), as `config.properties` and the archives set it; one synthetic "
            f"layer (three 8-bit PNGs) per size, {result['repeat']} requests per row after two warm-up requests. "
            "'model only' is the same archive's model, loaded as the worker loads it and with the same threads, "
            "running the same layer through the same tiled inference in one process after the server stopped. "
            "The machine is shared, so quote ratios.",
            "",
            *table,
            "",
            *speedups,
            "",
            "HTTP / model is the serving overhead: PNG decoding, the answer (components, mask PNG, JSON) and the "
            "transport. The worker's own split of the last request is in the last column.",
            "",
            f"![latency]({report.with_suffix('').name}.png)",
            "",
        ]
    )
    write_atomic(report, text.encode())
    fig, ax = pyplot().subplots(figsize=(7, 3.5))
    labels = [f"{r['model']} {r['size']}²" for r in rows]
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["http"]["median_ms"] for r in rows], 0.4, label="HTTP")
    ax.barh(y + 0.2, [r["model_only"]["median_ms"] for r in rows], 0.4, label="model only")
    ax.set_yticks(y, labels)
    ax.set_xscale("log")
    ax.set_xlabel("median latency (ms, log scale)")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    save_png(fig, report.with_suffix(".png"))


def summary(result: dict[str, Any]) -> str:
    ratios = [r["http"]["median_ms"] / r["model_only"]["median_ms"] for r in result["rows"]]
    return f"HTTP / model-only median over {len(ratios)} rows: {statistics.median(ratios):.2f}"


def save(result: dict[str, Any], path: Path) -> None:
    write_json(path, result)
