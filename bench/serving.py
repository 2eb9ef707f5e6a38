"""Single-request HTTP latency of each served variant beside the model-only time of the same archive, in one run.

A TorchServe is started on free loopback ports with the archives of a model store; for each layer size, one
synthetic layer is sent `repeat` times to each variant, one request at a time, after warm-up. The model-only time is
the same archive's model (unpacked, loaded as the worker loads it, with the worker's torch threads) running the
same layer through the same tiled inference in this process, after the server has stopped. HTTP time minus model
time is the serving overhead, split into its parts: the handler's own (decoding the three PNGs; the answer:
components, mask PNG, familiarity), the model's time in the worker beside its time alone, TorchServe's worker and
its socket to the frontend, and the frontend's HTTP with the client.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch

from bench.model import cpu_description
from client.client import DefectClient
from handler.settings import ServingConfig
from training.inference import serialize
from training.inference.images import encode_png, write_json
from training.inference.loaders import load_variant
from training.inference.tiling import predict_tiled
from training.inference.variants import model_names
from training.renderer.synth import SynthConfig, generate_layer
from training.serving.launcher import LISTENERS, free_port, start
from training.serving.timing import measure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingBench:
    """What `bench serving` measured, written as its --json (these fields, in this order); training/reports/serving.py
    renders it."""

    command: str
    cpu: dict[str, Any]  # `bench.model.cpu_description()`
    repeat: int  # timed requests per row
    rows: list[dict[str, Any]]  # model, size, http (`http_latency`), model_only (`measure`), threads

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_dict(self)


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


FRONTEND_COUNTERS = {  # TorchServe's cumulative per-model counters on its Prometheus endpoint
    "requests": "ts_inference_requests_total",
    "inference_us": "ts_inference_latency_microseconds",
    "queue_us": "ts_queue_latency_microseconds",
}


def frontend_counters(server, model: str) -> dict[str, float]:
    """TorchServe's own totals for one model so far: requests, and microseconds in inference (the frontend's time
    from handing the request to the worker to its answer) and in the queue."""
    text = requests.get(f"{server.urls['metrics']}/metrics", timeout=10).text
    totals = dict.fromkeys(FRONTEND_COUNTERS, 0.0)
    for line in text.splitlines():
        for key, metric in FRONTEND_COUNTERS.items():
            if line.startswith(metric + "{") and f'model_name="{model}"' in line:
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


def http_latency(server, model: str, blobs: list[bytes], repeat: int, max_seconds: float) -> dict[str, Any]:
    """Wall time of one POST at a time after two warm-up requests, with the parts of it: the handler's own split
    (median of each part over the timed requests) and, from TorchServe's counters over the same requests, the
    frontend's mean time in the worker and in the queue."""
    client = DefectClient(server.urls["inference"], model, key_file=server.key_file, retries=0)
    parts: list[dict[str, float]] = []

    def once() -> None:
        parts.append(client.predict(blobs).answer["timing_ms"])  # a refusal raises ServiceError

    once()
    once()
    parts.clear()
    before = frontend_counters(server, model)  # after the warm-up: TorchServe's counters see the timed requests only
    figures = measure(once, repeat, max_seconds, warm_up=0)
    after = frontend_counters(server, model)
    served = after["requests"] - before["requests"]
    frontend = {
        "inference": (after["inference_us"] - before["inference_us"]) / served / 1e3 if served else None,
        "queue": (after["queue_us"] - before["queue_us"]) / served / 1e3 if served else None,
    }
    worker = {part: statistics.median(p[part] for p in parts) for part in parts[0]}
    return {**figures, "worker_ms": worker, "frontend_ms": frontend}


def model_latency(weights: Path, serving: ServingConfig, stack: np.ndarray, repeat: int, max_seconds: float) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(serving.threads)
    try:
        config, model = load_variant(weights)
        return measure(
            lambda: predict_tiled(model, stack, config, serving.tile_size, serving.tile_overlap), repeat, max_seconds
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
) -> ServingBench:
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
                row["threads"] = serving.threads
                log.info("%s %d px: model only %.1f ms", model, row["size"], row["model_only"]["median_ms"])
    return ServingBench(command, cpu_description(), repeat, rows)


def save(result: ServingBench, path: Path) -> None:
    write_json(path, result.to_dict())
