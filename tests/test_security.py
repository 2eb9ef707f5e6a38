"""Security of the running service: tokens on every API, no way to load code, no key in the logs, and neither the
environment nor an archive's requirements.txt can change that."""

import json
import zipfile
from pathlib import Path

import pytest
import requests

from tests.images_for_tests import encode, triplet
from tests.service import answer_of
from training.serving.launcher import CONFIG, LISTENERS, free_port, read_properties, start

pytestmark = [pytest.mark.server, pytest.mark.slow]

# Each would loosen the server if TorchServe read it: enable_envvars_config=true makes TorchServe copy every TS_<KEY>
# variable over the config file's <key> (ConfigManager.setSystemVars).
HOSTILE_ENVIRONMENT = {
    "TS_MAX_REQUEST_SIZE": "1000",
    "TS_NUMBER_OF_NETTY_THREADS": "7",
    "TS_ENABLE_MODEL_API": "true",
    "TS_INSTALL_PY_DEP_PER_MODEL": "true",
}
# pip fails at once on this (no index, no such package): an archive that needs it loads only if pip never runs.
REQUIREMENTS = "--no-index\nno-such-package-lpbf-defects==0.0.0\n"


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


def with_requirements(archive: Path, out: Path) -> Path:
    """A copy of `archive` carrying a requirements.txt, as `torch-model-archiver --requirements-file` packs it: the
    file at the archive's root and named in MANIFEST.json's model.requirementsFile."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["requirementsFile"] = "requirements.txt"
                data = json.dumps(manifest, indent=4).encode()
            target.writestr(item, data)
        target.writestr("requirements.txt", REQUIREMENTS)
    return out


@pytest.fixture(scope="module")
def hostile(tiny_store, tmp_path_factory):
    """One TorchServe with the repository's config, started with HOSTILE_ENVIRONMENT set and serving an archive
    whose requirements.txt pip cannot install."""
    root = tmp_path_factory.mktemp("hostile")
    archive = with_requirements(tiny_store / "defect_int8.mar", root / "store" / "defect_int8.mar")
    with pytest.MonkeyPatch.context() as env:
        for name, value in HOSTILE_ENVIRONMENT.items():
            env.setenv(name, value)
        try:
            server = start(archive.parent, root / "home", ("defect_int8",), ports={n: free_port() for n in LISTENERS},
                           foreground=True, timeout=90)  # fmt: skip
        except (TimeoutError, RuntimeError) as err:
            logs = "\n".join(p.read_text(errors="replace") for p in (root / "home").rglob("*.log"))
            pip = [line for line in logs.splitlines() if "pip" in line.lower()][-3:]
            pytest.fail(f"TorchServe did not serve the archive: {err}; pip in the logs: {pip}")
    yield server
    server.stop()


def startup_log(server) -> str:
    return (server.home / "logs" / "ts_log.log").read_text(errors="replace")


def test_the_environment_cannot_change_the_settings(hostile):
    settings = read_properties(CONFIG)
    log = startup_log(hostile)
    for label, key in (("Maximum Request Size", "max_request_size"), ("Netty threads", "number_of_netty_threads")):
        reported = [line for line in log.splitlines() if line.startswith(f"{label}: ")]
        assert reported and all(line == f"{label}: {settings[key]}" for line in reported), (key, reported)
    blobs = [encode(image) for image in triplet(64, seed=0)]
    assert sum(map(len, blobs)) > 4 * int(HOSTILE_ENVIRONMENT["TS_MAX_REQUEST_SIZE"])
    assert "defect" in answer_of(hostile, "defect_int8", blobs, return_mask=False)  # a larger request is answered
    registered = management(hostile, "POST", "/models?url=defect_int8.mar&initial_workers=1")
    assert registered.status_code == 405, registered.text  # TS_ENABLE_MODEL_API=true did not turn the API on


def test_an_archives_requirements_are_not_installed(hostile):
    with zipfile.ZipFile(hostile.home.parent / "store" / "defect_int8.mar") as archive:
        assert json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["requirementsFile"] == "requirements.txt"
    listed = management(hostile, "GET", "/models/defect_int8").json()
    assert any(w["status"] == "READY" for w in listed[0]["workers"])  # loaded although pip could not install it
    logs = "\n".join(p.read_text(errors="replace") for p in hostile.home.rglob("*.log"))
    assert "custom pip package" not in logs.lower()  # TorchServe logs every install it tries, failed or done
