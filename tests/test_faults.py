"""Faults under load: a worker killed with SIGKILL while requests are in flight is restarted by TorchServe, and
with the client's retries every request is answered. (The server stopped and started under a batch is in
tests/test_client.py.)"""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from client.client import DefectClient
from tests.images_for_tests import encode, triplet
from training.serving.launcher import LISTENERS, free_port, start

pytestmark = [pytest.mark.server, pytest.mark.slow]


def workers(server, model: str) -> list[dict]:
    answer = requests.get(f"{server.urls['management']}/models/{model}",
                          headers={"Authorization": f"Bearer {server.keys()['management']}"}, timeout=10)  # fmt: skip
    return answer.json()[0]["workers"]


def test_a_killed_worker_is_restarted_and_no_request_is_lost(tiny_store, tmp_path):
    server = start(tiny_store, tmp_path / "home", ("defect_int8",), ports={n: free_port() for n in LISTENERS},
                   foreground=True)  # fmt: skip
    try:
        client = DefectClient(server.urls["inference"], "defect_int8", key_file=server.key_file, retries=30,
                              backoff_s=0.1, max_backoff_s=1.0)  # fmt: skip
        layers = [[encode(image) for image in triplet(256, seed=s)] for s in range(4)]
        [victim] = [w["pid"] for w in workers(server, "defect_int8")]
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.predict, layers[i % 4], layer_id=f"layer-{i}") for i in range(48)]
            deadline = time.monotonic() + 120
            while sum(f.done() for f in futures) < 6:
                if time.monotonic() > deadline:
                    pytest.fail("fewer than 6 of 48 requests were answered within 120 s, before any worker was killed")
                time.sleep(0.01)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            answers = [f.result(timeout=300) for f in futures]  # raises if any request was lost
        assert len(answers) == 48 and all(a.answer["model"]["name"] == "defect_int8" for a in answers)
        assert max(a.attempts for a in answers) > 1  # some requests met the dead worker and were retried
        retried = [a for a in answers if a.attempts > 1]
        assert all(a.latency_ms - a.attempt_ms >= 50 for a in retried)  # the wait counts the backoff (>= 0.05 s)
        deadline = killed + 120
        while time.monotonic() < deadline:
            now = workers(server, "defect_int8")
            if now and now[0]["pid"] != victim and now[0]["status"] == "READY":
                break
            time.sleep(0.2)
        else:
            pytest.fail("TorchServe did not restart the killed worker within 120 s")
    finally:
        server.stop()
