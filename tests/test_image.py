"""The serving image, built and run: docker/Dockerfile with the tiny archives, a real container (podman, runc),
its answers, its user and listeners, and SIGTERM with requests in flight. `make image-test` runs this module alone.

The container is removed also when a test fails. Its listeners are published on free loopback ports.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import requests

from tests.images_for_tests import encode, triplet
from training.inference.variants import model_names
from training.serving import image
from training.serving.launcher import LISTENERS, read_properties

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "response.schema.json").read_text())
IMAGE_CONFIG = read_properties(ROOT / "docker" / "config.properties")


@pytest.fixture(scope="module")
def built(tiny_store):
    return image.build(tiny_store, tag="localhost/lpbf-defects/serving:test")


@pytest.fixture(scope="module")
def container(built):
    """The image running and ready; removed afterwards, whatever happened."""
    running = image.run(built.tag)
    try:
        running.wait_ready()
        yield running
    finally:
        running.remove()


def predict(
    container, model: str, blobs: list[bytes], key: str | None = None, timeout: float = 300
) -> requests.Response:
    files = {f"angle{k}": (f"angle{k}.png", blob, "image/png") for k, blob in enumerate(blobs)}
    headers = {"Authorization": f"Bearer {key or container.keys()['inference']}"}
    return requests.post(f"{container.url('inference')}/predictions/{model}", files=files, headers=headers,
                         timeout=timeout)  # fmt: skip


def test_the_container_answers_both_variants_and_refuses_a_bad_request(container):
    blobs = [encode(im) for im in triplet(96, seed=2)]
    for model in model_names():
        response = predict(container, model, blobs)
        assert response.status_code == 200, response.text[:500]
        answer = response.json()
        jsonschema.validate(answer, SCHEMA)
        assert answer["model"]["name"] == model
    refused = predict(container, model_names()[0], blobs[:2])
    assert refused.status_code == 400
    jsonschema.validate(refused.json(), SCHEMA)
    assert refused.json()["reason"] == "image_count"


def test_the_server_runs_as_the_image_user_and_listens_only_where_its_config_says(container):
    assert container.exec("id", "-u").stdout.strip() == "10001"
    processes = image.podman("top", container.name, "user", "comm").stdout.splitlines()[1:]
    assert {line.split()[1] for line in processes} >= {"tini", "java", "python3"}  # the server and its workers
    assert {line.split()[0] for line in processes} == {"defects"}  # uid 10001
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in container.exec("cat", table).stdout.splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A":  # LISTEN
                address, port = local.rsplit(":", 1)
                listening.add((_address(address), int(port, 16)))
    expected = {("0.0.0.0", int(IMAGE_CONFIG[f"{n}_address"].rsplit(":", 1)[1])) for n in LISTENERS}
    for grpc in ("grpc_inference", "grpc_management"):
        expected.add((IMAGE_CONFIG[f"{grpc}_address"], int(IMAGE_CONFIG[f"{grpc}_port"])))
    assert listening == expected


def _address(hex_address: str) -> str:
    """/proc/net/tcp's address (IPv4, or IPv6 as four little-endian words) as text; IPv6's any address and
    IPv4-mapped addresses read as the IPv4 ones (Java listens on both through one IPv6 socket)."""
    words = [hex_address[i : i + 8] for i in range(0, len(hex_address), 8)]
    if len(words) == 4:
        if words == ["00000000"] * 4:
            return "0.0.0.0"
        if words[:3] != ["00000000", "00000000", "FFFF0000"]:
            return hex_address
        words = words[3:]
    return ".".join(str(int(words[0][i : i + 2], 16)) for i in (6, 4, 2, 0))


def test_sigterm_waits_for_every_request_in_flight_then_the_container_exits(container):
    """Runs last: the container stops. Four large layers queue behind one worker; SIGTERM comes as the first is
    being answered."""
    blobs = [encode(im) for im in triplet(2048, seed=4)]
    key = container.keys()["inference"]

    def send() -> int:
        return predict(container, model_names()[0], blobs, key).raise_for_status() or 200

    ended = image.sigterm_in_flight(container, send, 4)
    assert ended["results"] == [200] * 4 and ended["answered"] == 4
    assert ended["exit_code"] == 0, container.logs()
    assert "0 request(s) still in flight; stopping TorchServe" in container.logs(tail=None)  # serve.py drained
