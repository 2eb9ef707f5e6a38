"""A real TorchServe on free loopback ports with both archives of the tiny model, real HTTP, stopped afterwards
(also when a test fails)."""

import base64
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import requests

from tests.images_for_tests import encode, png_header_only
from tests.service import answer_of
from training.renderer.synth import SynthConfig, generate_layer

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "response.schema.json").read_text())
MODELS = ("defect_fp32", "defect_int8")


@pytest.fixture(scope="module")
def server(torchserve):
    return torchserve


@pytest.fixture(scope="module")
def layer(tmp_path_factory) -> Path:
    """A synthetic 128x128 layer as three PNG files; returns the path prefix (..._a0.png etc.)."""
    out = tmp_path_factory.mktemp("layer")
    images = generate_layer(SynthConfig(size=128), seed=0, index=6).images
    for k, image in enumerate(images):
        (out / f"layer_a{k}.png").write_bytes(encode(image))
    return out / "layer"


def blobs_of(layer: Path) -> list[bytes]:
    return [Path(f"{layer}_a{k}.png").read_bytes() for k in range(3)]


def post(server, model, key=None, **kwargs) -> requests.Response:
    key = server.keys()["inference"] if key is None else key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{server.urls['inference']}/predictions/{model}", headers=headers, timeout=120, **kwargs)


def worker_pids(server, model) -> list[int]:
    answer = requests.get(
        f"{server.urls['management']}/models/{model}",
        headers={"Authorization": f"Bearer {server.keys()['management']}"},
        timeout=10,
    )
    return sorted(w["pid"] for w in answer.json()[0]["workers"])


@pytest.mark.parametrize("model", MODELS)
def test_both_variants_answer_multipart_and_json(server, layer, model):
    answer = answer_of(server, model, blobs_of(layer))
    jsonschema.validate(answer, SCHEMA)
    assert answer["model"]["name"] == model and answer["model"]["variant"] == model.split("_")[1]
    assert (answer["mask"]["width"], answer["mask"]["height"]) == (128, 128)
    body = {"images": [base64.b64encode(b).decode() for b in blobs_of(layer)], "return_mask": False}
    again = post(server, model, json=body)
    assert again.status_code == 200 and again.headers["content-type"].startswith("application/json")
    jsonschema.validate(again.json(), SCHEMA)
    assert "mask" not in again.json()
    assert again.json()["defect_area_px"] == answer["defect_area_px"]


def test_bad_inputs_are_answered_4xx_and_the_workers_live_on(server, layer):
    good = blobs_of(layer)
    before = {m: worker_pids(server, m) for m in MODELS}
    cases = [
        ({"files": {"angle0": good[0], "angle1": good[1]}}, 400, "image_count"),
        ({"files": {"angle0": good[0], "angle1": b"not an image", "angle2": good[2]}}, 400, "unreadable"),
        ({"files": {"angle0": good[0], "angle1": png_header_only(30000, 30000), "angle2": good[2]}}, 413, "too_many_pixels"),
        ({"files": {f"angle{k}": g for k, g in enumerate(good)}, "data": {"threshold": "7"}}, 400, "invalid_option"),
        ({"data": b'{"images": [', "headers_extra": {"Content-Type": "application/json"}}, 400, "invalid_json"),
    ]  # fmt: skip
    for model in MODELS:
        for kwargs, status, reason in cases:
            kwargs = dict(kwargs)
            extra = kwargs.pop("headers_extra", {})
            headers = {"Authorization": f"Bearer {server.keys()['inference']}", **extra}
            answer = requests.post(
                f"{server.urls['inference']}/predictions/{model}", headers=headers, timeout=60, **kwargs
            )
            assert answer.status_code == status, (model, reason, answer.text)
            jsonschema.validate(answer.json(), SCHEMA)
            assert answer.json()["reason"] == reason
        assert answer_of(server, model, good)["model"]["name"] == model
    assert {m: worker_pids(server, m) for m in MODELS} == before


def test_a_body_over_the_request_limit_is_refused_by_the_frontend(server):
    limit = int(re.search(r"max_request_size=(\d+)", (server.home / "config.properties").read_text()).group(1))
    answer = requests.post(
        f"{server.urls['inference']}/predictions/defect_int8",
        headers={"Authorization": f"Bearer {server.keys()['inference']}", "Content-Type": "application/octet-stream"},
        data=b"0" * (limit + 1),
        timeout=60,
    )
    assert answer.status_code == 413
    ping = requests.get(
        f"{server.urls['inference']}/ping",
        headers={"Authorization": f"Bearer {server.keys()['inference']}"},
        timeout=10,
    )
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"


def test_requests_without_or_with_a_wrong_token_are_refused(server, layer):
    files = {f"angle{k}": b for k, b in enumerate(blobs_of(layer))}
    for key in ("", "wrong-key"):
        answer = post(server, "defect_int8", key=key, files=files)
        assert answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException"


def test_custom_metrics_reach_the_prometheus_endpoint(server, layer):
    answer_of(server, "defect_int8", blobs_of(layer))
    text = requests.get(f"{server.urls['metrics']}/metrics", timeout=10).text
    assert re.search(r'DefectDecisions\{Variant="int8",Decision="(defect|clean)",ModelName="defect_int8"', text)
    assert re.search(r'DefectInferenceTime\{Variant="int8",ModelName="defect_int8"', text)
    assert re.search(r'UnfamiliarLayers\{Variant="int8",ModelName="defect_int8"', text)  # 0 while familiar
    assert re.search(r'DefectComponents\{Variant="int8",Class="spatter",ModelName="defect_int8"', text)


@pytest.mark.parametrize("model", MODELS)
def test_the_serving_bench_splits_a_request_into_its_parts(server, layer, model):
    from bench.serving import frontend_counters, http_latency

    before = frontend_counters(server, model)
    figures = http_latency(server, model, blobs_of(layer), repeat=3, max_seconds=30)
    after = frontend_counters(server, model)
    assert figures["runs"] == 3 and after["requests"] - before["requests"] == 5  # two warm-up requests, three timed
    worker, frontend = figures["worker_ms"], figures["frontend_ms"]
    assert set(worker) == {"decode", "inference", "postprocess"}
    handler = sum(worker.values())
    assert 0 < handler < frontend["inference"] < figures["p90_ms"]  # the handler inside the worker inside HTTP
    assert frontend["queue"] >= 0


def code_blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def as_here(code: str, server, layer: Path) -> str:
    """The documented example with only the address, the key file and the layer replaced."""
    return (
        code.replace("http://127.0.0.1:8080", server.urls["inference"])
        .replace("http://127.0.0.1:8081", server.urls["management"])
        .replace("runs/serve/key_file.json", str(server.key_file))
        .replace("data/demo/synth/raw/layer_00006", str(layer))
    )


def test_the_documented_examples_work_as_written(server, layer, tmp_path):
    shells = [b for b in code_blocks("bash") if "/predictions/" in b]
    assert len(shells) == 2
    for block in shells:
        done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + as_here(block, server, layer)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        jsonschema.validate(json.loads(done.stdout), SCHEMA)
    [python] = code_blocks("python")
    script = tmp_path / "example.py"
    script.write_text(as_here(python, server, layer))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "True"  # the decoded mask has the reported area


def test_the_documented_rotation_replaces_the_inference_key(server, layer):
    [rotate] = [b for b in code_blocks("bash") if "/token" in b]
    old = server.keys()["inference"]
    done = subprocess.run(["bash", "-c", as_here(rotate, server, layer)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    new = server.keys()["inference"]
    assert new != old
    files = {f"angle{k}": b for k, b in enumerate(blobs_of(layer))}
    assert post(server, "defect_int8", key=old, files=files).status_code == 400
    assert post(server, "defect_int8", key=new, files=files).status_code == 200


def test_the_large_layer_is_tiled_through_http(server):
    rng = np.random.default_rng(1)
    blobs = [encode(rng.integers(0, 255, (1100, 700), dtype=np.uint8)) for _ in range(3)]
    answer = answer_of(server, "defect_int8", blobs)
    assert (answer["mask"]["width"], answer["mask"]["height"]) == (700, 1100)


def test_every_listening_socket_of_the_server_is_on_loopback(server):
    import psutil

    processes = psutil.Process(server.process.pid).children(recursive=True)
    listening = [
        c.laddr for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    ]  # fmt: skip
    assert len(listening) >= 5  # inference, management, metrics, gRPC inference and management
    for addr in listening:
        ip = ipaddress.ip_address(addr.ip)
        ip = getattr(ip, "ipv4_mapped", None) or ip  # Java listens on IPv6 sockets: ::ffff:127.0.0.1
        assert ip.is_loopback, listening


def readme_lines(marker: str) -> list[str]:
    """The commands of the README's bash block that holds `marker`, continuation lines joined, comments dropped."""
    [block] = [b for b in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S) if marker in b]
    joined = block.replace("\\\n", " ")
    return [line for line in (shlex.join(shlex.split(x, comments=True)) for x in joined.splitlines()) if line]


def test_the_readme_torchserve_lines_run_as_written_and_serve_a_layer(tiny_variants, layer, tmp_path, monkeypatch):
    """The README's torch-model-archiver and torchserve lines, run as written from a folder laid out like the
    repository (runs/demo holding the tiny model), with the repository's config.properties moved to free ports;
    they are the lines `archive --stage` and `serve` print, and the server they start answers a layer."""
    from training.inference.variants import OPENVINO, VARIANTS, model_names
    from training.serving import launcher
    from training.serving.archive import HANDLER, archiver_command

    lines = readme_lines("torch-model-archiver --model-name")
    monkeypatch.chdir(tmp_path)
    for name in ("training", "handler"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copytree(tiny_variants, tmp_path / "runs" / "demo")
    listeners = launcher.LISTENERS
    changes = launcher.port_changes(
        launcher.read_properties(launcher.CONFIG), {n: launcher.free_port() for n in listeners}
    )
    (tmp_path / "config.properties").write_text(launcher.render_config(launcher.CONFIG, changes))
    urls = {n: changes[f"{n}_address"] for n in listeners}
    server = launcher.Server(tmp_path, urls, model_names(), tmp_path / "model_store")
    # What archive --stage and serve print is what the README says.
    stage, demo = tmp_path / "runs" / "demo" / "stage", tmp_path / "runs" / "demo"
    printed = [
        archiver_command(v.model_name, "1.0", demo / v.build(OPENVINO).file, HANDLER, stage / v.model_name, server.model_store)
        for v in VARIANTS
    ]  # fmt: skip
    assert lines[1:-2] == [shlex.join(p).replace(f"{ROOT}/", "") for p in printed]  # the handler from the root
    assert lines[-2] == shlex.join(launcher.start_command(server, launcher.shown))
    assert lines[-1] == f"{launcher.TORCHSERVE} --stop"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    out = tmp_path / "out.log"  # a file, not a pipe: TorchServe's frontend keeps its output open after --start

    def run(line: str) -> subprocess.CompletedProcess:
        with out.open("w") as log:
            done = subprocess.run(
                shlex.split(line), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300
            )
        assert done.returncode == 0, f"{line}\n{out.read_text()}"
        return done

    try:
        for line in lines[:-1]:
            run(line)
        assert sorted(p.name for p in server.model_store.iterdir()) == [f"{m}.mar" for m in server.models]
        server.wait_ready()
        for model in server.models:
            jsonschema.validate(answer_of(server, model, blobs_of(layer)), SCHEMA)
    finally:
        run(lines[-1])
