"""The bad-input corpus (tests/bad_requests.py) against a real TorchServe: every case gets its status and a JSON
message, nothing gets a 5xx, the workers are the same processes afterwards, and a valid request is still answered."""

import pytest
import requests

from tests.bad_requests import CASES
from tests.images_for_tests import encode, triplet
from tests.service import answer_of

pytestmark = [pytest.mark.server, pytest.mark.slow]
MODELS = ("defect_int8", "defect_fp32")  # one on PyTorch, one on OpenVINO (tests/conftest.py TINY_BACKENDS)


def worker_pids(server) -> dict[str, list[int]]:
    pids = {}
    for model in MODELS:
        answer = requests.get(f"{server.urls['management']}/models/{model}",
                              headers={"Authorization": f"Bearer {server.keys()['management']}"}, timeout=10)  # fmt: skip
        pids[model] = sorted(w["pid"] for w in answer.json()[0]["workers"])
    return pids


def test_the_corpus_meets_both_backends(torchserve):
    good = [encode(image) for image in triplet(64, seed=11)]
    assert {answer_of(torchserve, model, good)["model"]["backend"] for model in MODELS} == {"pytorch", "openvino"}


def test_the_corpus_has_at_least_30_malformed_requests():
    assert len([c for c in CASES if c.status >= 400]) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("model", MODELS)
def test_every_case_gets_its_status_and_the_workers_survive(torchserve, model):
    good = [encode(image) for image in triplet(64, seed=11)]
    before = worker_pids(torchserve)
    failures = []
    for case in CASES:
        kwargs = case.build(good)
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {torchserve.keys()['inference']}"}
        answer = requests.post(f"{torchserve.urls['inference']}/predictions/{case.model or model}",
                               headers=headers, timeout=120, **kwargs)  # fmt: skip
        try:
            body = answer.json()
        except ValueError:
            body = {"message": None, "raw": answer.text[:200]}
        got = (answer.status_code, body.get("reason") if answer.status_code >= 400 and case.reason else case.reason)
        if got != (case.status, case.reason) or (
            answer.status_code >= 400 and case.message and not body.get("message")
        ):
            failures.append(f"{case.name}: expected {case.status} {case.reason}, got {answer.status_code} {body}")
        assert answer.status_code < 500, f"{case.name}: {answer.status_code} {answer.text[:300]}"
    assert not failures, "\n".join(failures)
    assert worker_pids(torchserve) == before  # no worker died of any of it
    assert answer_of(torchserve, model, good)["model"]["name"] == model
