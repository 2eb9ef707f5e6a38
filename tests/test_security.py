"""Security of the running service: tokens on every API, no way to load code, no key in the logs."""

import pytest
import requests

pytestmark = [pytest.mark.server, pytest.mark.slow]


def management(server, method: str, path: str, key: str | None = "management") -> requests.Response:
    headers = {"Authorization": f"Bearer {server.keys()[key] if key in ('management', 'inference', 'API') else key}"}
    return requests.request(method, f"{server.urls['management']}{path}", headers=headers if key else {}, timeout=30)


def test_the_management_api_wants_the_management_key(torchserve):
    assert management(torchserve, "GET", "/models", key=None).status_code == 400
    assert management(torchserve, "GET", "/models", key="not-the-key").status_code == 400
    assert management(torchserve, "GET", "/models", key="inference").status_code == 400  # the wrong kind of key
    listed = management(torchserve, "GET", "/models")
    assert listed.status_code == 200
    assert sorted(m["modelName"] for m in listed.json()["models"]) == ["defect_fp32", "defect_int8"]


@pytest.mark.parametrize(
    "url",
    ["https://example.com/evil.mar", "file:///etc/passwd", "../../etc/passwd", "defect_int8.mar"],
)
def test_no_model_can_be_registered_or_removed_even_with_the_key(torchserve, url):
    registered = management(torchserve, "POST", f"/models?url={url}&initial_workers=1")
    assert registered.status_code == 405, registered.text  # the model-control API is off
    assert management(torchserve, "DELETE", "/models/defect_int8").status_code == 405
    listed = management(torchserve, "GET", "/models").json()["models"]
    assert sorted(m["modelName"] for m in listed) == ["defect_fp32", "defect_int8"]


def test_no_key_is_written_to_the_logs(torchserve):
    keys = set(torchserve.keys().values())
    logs = [p for p in torchserve.home.rglob("*") if p.is_file() and p.name != "key_file.json"]
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert not any(key in text for key in keys), f"a key appears in {path}"


def test_the_key_file_is_readable_by_its_owner_only(torchserve):
    assert torchserve.key_file.stat().st_mode & 0o777 == 0o600
