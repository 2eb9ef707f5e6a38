"""The serving image, built and run: docker/Dockerfile with the tiny archives, a real container (podman, runc),
its answers, its user and listeners, and SIGTERM with requests in flight. `make image-test` runs this module alone.

The container is stopped and removed also when a test fails. Its listeners are published on free loopback ports.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
import requests

from tests.images_for_tests import encode, triplet
from training.inference.variants import model_names
from training.serving import image
from training.serving.launcher import LISTENERS, free_port, read_properties

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "response.schema.json").read_text())
IMAGE_CONFIG = read_properties(ROOT / "docker" / "config.properties")
CONTAINER_PORTS = {name: int(IMAGE_CONFIG[f"{name}_address"].rsplit(":", 1)[1]) for name in LISTENERS}
READY_SECONDS = 300


@pytest.fixture(scope="module")
def built(tiny_store):
    return image.build(tiny_store, tag="localhost/lpbf-defects/serving:test")


@pytest.fixture(scope="module")
def container(built):
    """The image running, its listeners on free loopback ports; stopped and removed afterwards, whatever happened."""
    name = f"defects-test-{uuid.uuid4().hex[:8]}"
    ports = {listener: free_port() for listener in LISTENERS}
    publish = [f"--publish=127.0.0.1:{ports[n]}:{CONTAINER_PORTS[n]}" for n in LISTENERS]
    started = time.perf_counter()
    image.podman("run", "--detach", "--name", name, *image.ULIMITS, *publish, built.tag)
    try:
        deadline = time.monotonic() + READY_SECONDS
        while image.podman("exec", name, "python", "/opt/defects/serve.py", "--check", "ready", check=False).returncode:
            state = image.podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                logs = image.podman("logs", name, check=False)
                pytest.fail(
                    f"container {state}, not ready after {READY_SECONDS} s:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
                )
            time.sleep(1)
        keys = json.loads(image.podman("exec", name, "cat", "/home/model-server/run/key_file.json").stdout)
        yield {"name": name, "ports": ports, "keys": keys, "ready_s": time.perf_counter() - started}
    finally:
        image.podman("rm", "--force", "--time", "5", name, check=False)


def _predict(container, model: str, blobs: list[bytes], timeout: float = 120) -> requests.Response:
    url = f"http://127.0.0.1:{container['ports']['inference']}/predictions/{model}"
    files = {f"angle{k}": (f"angle{k}.png", blob, "image/png") for k, blob in enumerate(blobs)}
    headers = {"Authorization": f"Bearer {container['keys']['inference']['key']}"}
    return requests.post(url, files=files, headers=headers, timeout=timeout)


def test_the_container_answers_both_variants_and_refuses_a_bad_request(container):
    blobs = [encode(im) for im in triplet(96, seed=2)]
    for model in model_names():
        response = _predict(container, model, blobs)
        assert response.status_code == 200, response.text[:500]
        answer = response.json()
        jsonschema.validate(answer, SCHEMA)
        assert answer["model"]["name"] == model
    refused = _predict(container, model_names()[0], blobs[:2])
    assert refused.status_code == 400
    jsonschema.validate(refused.json(), SCHEMA)
    assert refused.json()["reason"] == "image_count"


def test_the_server_runs_as_the_image_user_and_listens_only_where_its_config_says(container):
    name = container["name"]
    assert image.podman("exec", name, "id", "-u").stdout.strip() == "10001"
    users = image.podman("top", name, "user", "comm").stdout.splitlines()[1:]
    assert users and all(line.split()[0] in ("10001", "defects") for line in users), users
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        rows = image.podman("exec", name, "cat", table).stdout.splitlines()[1:]
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A":  # LISTEN
                address, port = local.rsplit(":", 1)
                listening.add((_address(address), int(port, 16)))
    expected = {("0.0.0.0", port) for port in CONTAINER_PORTS.values()}
    expected |= {
        (IMAGE_CONFIG[f"{g}_address"], int(IMAGE_CONFIG[f"{g}_port"])) for g in ("grpc_inference", "grpc_management")
    }
    assert listening == expected


def _address(hex_address: str) -> str:
    """/proc/net/tcp's little-endian hex IPv4 (or the IPv6 any/loopback) as text."""
    if len(hex_address) == 8:
        return ".".join(str(int(hex_address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    return {"0" * 32: "0.0.0.0", "0" * 24 + "01000000": "127.0.0.1"}.get(hex_address, hex_address)


def test_sigterm_waits_for_every_request_in_flight_then_the_container_exits(container):
    """Runs last: the container stops. Requests queue behind one worker; SIGTERM comes while they are in flight."""
    name = container["name"]
    blobs = [encode(im) for im in triplet(2048, seed=4)]
    model = model_names()[0]
    results: list[int] = []

    def send() -> None:
        try:
            results.append(_predict(container, model, blobs, timeout=300).status_code)
        except requests.RequestException as err:
            results.append(repr(err))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while not image.podman("exec", name, "ls", "/home/model-server/run/busy").stdout.strip():
        assert time.monotonic() < deadline, "no request reached a worker"
        time.sleep(0.05)
    image.podman("kill", "--signal", "TERM", name)
    for thread in threads:
        thread.join(timeout=300)
    exit_code = image.podman("wait", name, timeout=120).stdout.strip()
    logs = image.podman("logs", name, check=False)
    assert results == [200] * 4, results
    assert exit_code == "0", logs.stdout[-3000:] + logs.stderr[-3000:]
    assert "draining" in logs.stdout + logs.stderr
