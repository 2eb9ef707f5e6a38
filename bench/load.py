"""Load, faults and the serving matrix against a real TorchServe on loopback, bounded in count and time.

- load: `requests` layers per variant at `concurrency`, through the factory client: errors, p50/p95/p99,
  throughput, and the frontend's and workers' resident memory before (after a warm-up) and after;
- fault: a worker SIGKILLed while the load runs: requests lost (with the client's retries), how long until the
  first answer after the kill, and until TorchServe reports a new worker ready;
- matrix: fp32 and int8 x batchSize 1 and 4 x one worker with two threads or two workers with one thread, each at
  concurrency 1, 4 and 8, beside the model alone with the same threads (archives rebuilt per setting).
"""

from __future__ import annotations

import logging
import os
import signal
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving import model_latency, synthetic_layer
from client.client import DefectClient, ServiceError
from handler.settings import ServingConfig
from training.inference import serialize
from training.inference.images import encode_png
from training.inference.variants import variant as variant_by_key
from training.serving.archive import build_archive, served_configs
from training.serving.launcher import LISTENERS, Server, free_port, start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reliability:
    """What `bench load` measured, written as its --json (these fields, in this order); training/reports/reliability.py
    renders it."""

    size: int  # layer side in pixels
    load: dict[str, dict[str, Any]]  # model -> `drive` figures with memory_before, memory_after and growth
    fault: dict[str, Any]  # the killed worker's run: model, requests, lost, recovery times, p99_ms, max_ms

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_dict(self)


@dataclass(frozen=True)
class Throughput:
    """What `bench matrix` measured, written as its --json; training/reports/throughput.py renders it."""

    command: str
    rows: list[dict[str, Any]]  # one per variant, batch, workers, threads and concurrency, as `matrix` returns them
    summary: dict[str, Any]  # `summarize(rows)`

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_dict(self)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 and the longest of `values` (ms): an outage that fewer than 1 % of the requests met shows only
    in the longest."""
    array = np.asarray(values)
    return {**{f"p{q}_ms": float(np.percentile(array, q)) for q in (50, 95, 99)}, "max_ms": float(array.max())}


def memory_mb(server: Server) -> dict[str, float]:
    """Resident memory of the TorchServe frontend (Java) and of its Python workers, in MB."""
    import psutil

    frontend = workers = 0.0
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            rss = process.memory_info().rss / 1e6
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "java" in process.name():
            frontend += rss
        elif "model_service_worker" in command:
            workers += rss
    return {"frontend_mb": round(frontend, 1), "workers_mb": round(workers, 1)}


def worker_pids(server: Server, model: str) -> list[int]:
    import requests

    answer = requests.get(f"{server.urls['management']}/models/{model}",
                          headers={"Authorization": f"Bearer {server.keys()['management']}"}, timeout=10)  # fmt: skip
    return [w["pid"] for w in answer.json()[0]["workers"] if w.get("status") == "READY"]


def drive(server: Server, model: str, layers: list[list[bytes]], requests: int, concurrency: int,
          on_progress=None) -> dict[str, Any]:  # fmt: skip
    """`requests` predictions at `concurrency`, one client (and HTTP session) per thread, with retries. Latency
    percentiles are of what each caller waited (`Prediction.latency_ms`: retries and backoff included), so an outage
    shows in them."""
    local = threading.local()
    latencies: list[float] = []
    ends: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        if not hasattr(local, "client"):
            local.client = DefectClient(server.urls["inference"], model, key_file=server.key_file, retries=30,
                                        backoff_s=0.1, max_backoff_s=1.0)  # fmt: skip
        try:
            prediction = local.client.predict(layers[i % len(layers)], return_mask=True, layer_id=str(i))
        except ServiceError as err:
            with lock:
                errors.append(str(err))
            return
        with lock:
            latencies.append(prediction.latency_ms)  # the caller's wait, not only the last attempt
            ends.append(time.monotonic())
            if on_progress:
                on_progress(len(latencies))

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    seconds = time.monotonic() - started
    return {"requests": requests, "concurrency": concurrency, "errors": len(errors), "error_samples": errors[:3],
            "seconds": round(seconds, 2), "throughput_per_s": len(latencies) / seconds, **percentiles(latencies),
            "ends": ends}  # fmt: skip


def load_and_fault(
    store: Path, models: tuple[str, ...], size: int, requests: int, concurrency: int, warmup: int | None = None
) -> Reliability:
    """Load per model with memory before (after `warmup` requests, default a fifth of the load: the JVM grows its
    heap to a steady size over the first few hundred) and after; then a killed worker under the same load."""
    layers = [[encode_png(im) for im in synthetic_layer(size, index=i)] for i in range(4)]
    loads: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        server = start(store, Path(tmp) / "home", models, ports={n: free_port() for n in LISTENERS}, foreground=True)
        try:
            for model in models:
                drive(server, model, layers, warmup or max(2 * concurrency, requests // 5), concurrency)
                before = memory_mb(server)
                run = drive(server, model, layers, requests, concurrency)
                run.pop("ends")
                after = memory_mb(server)
                growth = {k: (after[k] - before[k]) / before[k] for k in before if before[k]}
                loads[model] = {**run, "memory_before": before, "memory_after": after, "growth": growth}
                log.info("%s: %d requests, %d errors, p50 %.1f ms, %.1f/s, memory %s -> %s", model, requests,
                         run["errors"], run["p50_ms"], run["throughput_per_s"], before, after)  # fmt: skip
            model = models[-1]
            victim = worker_pids(server, model)[0]
            killed: dict[str, float] = {}

            def watch() -> None:  # until TorchServe reports a new worker ready
                while time.monotonic() < killed["at"] + 180:
                    pids = worker_pids(server, model)
                    if pids and victim not in pids:
                        killed["ready"] = time.monotonic()
                        return
                    time.sleep(0.1)

            watcher = threading.Thread(target=watch, daemon=True)

            def kill_after(done: int) -> None:
                if done == max(4, requests // 10) and not killed:
                    os.kill(victim, signal.SIGKILL)
                    killed["at"] = time.monotonic()
                    watcher.start()

            run = drive(server, model, layers, requests, concurrency, on_progress=kill_after)
            watcher.join(timeout=180)
            first_after = min((t for t in run.pop("ends") if t > killed["at"]), default=float("nan"))
            ready = killed.get("ready")
            fault = {
                "model": model, "requests": requests, "lost": run["errors"],
                "first_answer_after_kill_s": round(first_after - killed["at"], 2),
                "worker_ready_after_kill_s": round(ready - killed["at"], 2) if ready else None,
                "p99_ms": run["p99_ms"], "max_ms": run["max_ms"],
            }  # fmt: skip
            log.info("fault: %s", fault)
        finally:
            server.stop()
    return Reliability(size, loads, fault)


def matrix(checkpoint: Path, size: int, requests: int, concurrencies: list[int], cores: int = 2) -> list[dict]:
    files = served_configs(checkpoint)
    layers = [[encode_png(im) for im in synthetic_layer(size, index=i)] for i in range(4)]
    stack = np.stack(synthetic_layer(size, index=0), axis=-1)
    rows = []
    for variant, (weights, config) in files.items():
        for batch in (1, 4):
            for workers in (1, cores):
                serving = ServingConfig(min_workers=workers, max_workers=workers, batch_size=batch,
                                        threads=max(1, cores // workers))  # fmt: skip
                name = variant_by_key(variant).model_name
                with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
                    store = Path(tmp) / "store"
                    build_archive(weights, config, store, name, serving, "1.0")
                    server = start(store, Path(tmp) / "home", (name,), ports={n: free_port() for n in LISTENERS},
                                   foreground=True)  # fmt: skip
                    try:
                        drive(server, name, layers, 8, max(concurrencies))  # warm-up
                        for concurrency in concurrencies:
                            run = drive(server, name, layers, requests, concurrency)
                            run.pop("ends")
                            rows.append({"variant": variant, "batch": batch, "workers": workers,
                                         "threads": serving.threads, **run})  # fmt: skip
                            log.info("%s b%d w%d t%d c%d: p50 %.1f ms, %.2f/s, %d errors", variant, batch, workers,
                                     serving.threads, concurrency, run["p50_ms"], run["throughput_per_s"],
                                     run["errors"])  # fmt: skip
                    finally:
                        server.stop()
                alone = model_latency(weights, serving, stack, 10, 30.0)
                for row in rows:
                    if (row["variant"], row["batch"], row["workers"]) == (variant, batch, workers):
                        row["model_p50_ms"] = alone["median_ms"]
    return rows


def summarize(rows: list[dict]) -> dict[str, Any]:
    """The issue's two ratios: best int8 over best fp32 throughput; HTTP p50 / model p50 at concurrency 1."""
    best = {
        v: max((r for r in rows if r["variant"] == v), key=lambda r: r["throughput_per_s"]) for v in ("fp32", "int8")
    }
    single = [r for r in rows if r["concurrency"] == 1 and r["batch"] == 1]
    return {
        "throughput_ratio": best["int8"]["throughput_per_s"] / best["fp32"]["throughput_per_s"],
        "best": best,
        "overhead": {
            f"{r['variant']} w{r['workers']} t{r['threads']}": r["p50_ms"] / r["model_p50_ms"] for r in single
        },
        "median_overhead": statistics.median(r["p50_ms"] / r["model_p50_ms"] for r in single),
    }


def store_from_checkpoint(checkpoint: Path, folder: Path, serving: ServingConfig = ServingConfig()) -> Path:
    for key, (weights, config) in served_configs(checkpoint).items():
        build_archive(weights, config, folder, variant_by_key(key).model_name, serving, "1.0")
    return folder
