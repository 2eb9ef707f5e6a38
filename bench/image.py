"""`python -m bench image`: the serving image's figures in one run, from the archives of a model store: its size,
its build without and with the layer cache, seconds from `podman run` to the first answer, one layer's latency in
the container beside the same archives served on this machine (the two taking turns), and requests in flight at
SIGTERM with how many were answered. Written to docs/image.md by training/reports/image.py."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.serving import synthetic_layer
from client.client import DefectClient, ServiceError
from training.inference import serialize
from training.inference.images import encode_png
from training.inference.variants import default_model
from training.serving import image, launcher
from training.serving.timing import cpu_model, measure_alternating

IN_FLIGHT = 4  # requests in flight at SIGTERM
SIGTERM_SIZE = 2048  # their layers' side: large enough to be in flight for seconds


@dataclass(frozen=True)
class ImageBench:
    """What `bench image` measured, written as its --json (these fields, in this order)."""

    command: str
    cpu: str
    tag: str
    base: str
    size_bytes: int
    build_s: dict[str, float]  # "without cache" (base image and wheelhouse kept), "with cache"
    first_answer_s: float  # `podman run` to the first answer of the default model
    model: str
    size: int  # layer side of the latency rows
    latency: dict[str, dict[str, float]]  # "container", "this machine" -> `measure` summary
    sigterm: dict[str, Any]  # in_flight, answered, drain_s, exit_code, model, size

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageBench:
        return serialize.from_dict(cls, data, what="bench image JSON key")


def first_answer(client: DefectClient, blobs: list[bytes], since: float, timeout: float = 300.0) -> float:
    """Seconds from `since` (time.perf_counter) to the first answer, asking every half second."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.predict(blobs)
            return time.perf_counter() - since
        except (ServiceError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run(
    model_store: Path, size: int = 512, repeat: int = 20, max_seconds: float = 60.0, command: str = ""
) -> ImageBench:
    model = default_model()
    tag = image.IMAGE
    # The layer cache first: podman does not reuse the layers of a build without the cache, so that one comes last.
    image.build(model_store, tag)  # fills the cache where earlier builds have not
    cached = image.build(model_store, tag)
    cold = image.build(model_store, tag, cache=False)
    blobs = [encode_png(im) for im in synthetic_layer(size)]
    container = image.run(tag)
    try:
        deadline = time.monotonic() + 120  # the key file appears a moment after the start
        while True:
            try:
                key = container.keys()["inference"]
                break
            except image.ImageError:
                if time.monotonic() > deadline or container.state() != "running":
                    raise
                time.sleep(0.2)
        inside = DefectClient(container.url("inference"), model, key=key, retries=0)
        first = first_answer(inside, blobs, container.started)
        with tempfile.TemporaryDirectory(prefix="bench-image-") as home:
            ports = {name: launcher.free_port() for name in launcher.LISTENERS}
            host = launcher.start(model_store, Path(home), ports=ports, foreground=True)
            try:
                outside = DefectClient(host.urls["inference"], model, key_file=host.key_file, retries=0)
                latency = measure_alternating(
                    {"container": lambda: inside.predict(blobs), "this machine": lambda: outside.predict(blobs)},
                    repeat, max_seconds,
                )  # fmt: skip
            finally:
                host.stop()
        large = [encode_png(im) for im in synthetic_layer(SIGTERM_SIZE)]
        ended = image.sigterm_in_flight(container, lambda: inside.predict(large), IN_FLIGHT)
    finally:
        container.remove()
    sigterm = {k: v for k, v in ended.items() if k != "results"} | {"model": model, "size": SIGTERM_SIZE}
    return ImageBench(command, cpu_model(), tag, cold.base, cached.size_bytes,
                      {"without cache": cold.seconds, "with cache": cached.seconds}, round(first, 1),
                      model, size, latency, sigterm)  # fmt: skip
