"""The serving image's Dockerfile and its build: hadolint-clean, in step with the repository (pins, config, ports,
user, the files it copies), and a build that lacks something says what. tests/test_image.py builds and runs it."""

import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from training.serving.launcher import LISTENERS, read_properties

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
TEXT = DOCKERFILE.read_text()
INSTRUCTIONS = [
    line.strip() for line in re.sub(r"\\\n", " ", TEXT).splitlines() if line.strip() and not line.startswith("#")
]


def instructions(name: str) -> list[str]:
    return [line[len(name) + 1 :] for line in INSTRUCTIONS if line.startswith(name + " ")]


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_stage_is_on_the_base_image_build_argument_debian_bookworm_by_default():
    assert instructions("ARG")[0] == "BASE_IMAGE=debian:bookworm-slim"
    assert {line.split()[0] for line in instructions("FROM")} == {"${BASE_IMAGE}"}


def test_a_base_without_python_3_11_fails_the_build_at_once_saying_so():
    [check] = [line for line in instructions("RUN") if "sys.version_info" in line]
    snippet = shlex.split(check[check.index("python3 -c") :])[2]
    ok = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True)
    assert ok.returncode == 0  # this Python is 3.11, as bookworm's
    newer = subprocess.run([sys.executable, "-c", f"import sys; sys.version_info = (3, 13, 0)\n{snippet}"],
                           capture_output=True, text=True)  # fmt: skip
    assert newer.returncode == 1
    assert "the base image gives Python 3.13; the pinned wheels need Python 3.11" in newer.stderr


def test_serving_pins_are_the_repository_pins():
    def pins(path: Path) -> dict[str, str]:
        found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M)
        return {name.lower(): version for name, version in found}

    image, repo = pins(ROOT / "docker" / "requirements-serving.txt"), pins(ROOT / "requirements.txt")
    assert image and all(repo.get(name) == version for name, version in image.items()), (image, repo)


def test_image_config_listens_on_the_container_interfaces_at_the_exposed_ports():
    # What else differs from config.properties, and why, is declared in training/serving/deployments.py, which
    # renders docker/config.properties (tests/test_deployments.py).
    host, image = read_properties(ROOT / "config.properties"), read_properties(ROOT / "docker" / "config.properties")
    for name in LISTENERS:  # the same ports, on all interfaces inside the container
        inside, outside = urlparse(image[f"{name}_address"]), urlparse(host[f"{name}_address"])
        assert inside.hostname == "0.0.0.0" and inside.port == outside.port
        assert str(inside.port) in instructions("EXPOSE")[0].split()
    assert image["grpc_inference_address"] == image["grpc_management_address"] == "127.0.0.1"


def test_runs_as_a_fixed_non_root_user_that_k8s_runs_as_too():
    user = instructions("USER")[-1]
    assert user.isdigit() and int(user) > 0
    for variant in ("fp32", "int8"):
        deployment = next(yaml.safe_load_all((ROOT / "k8s" / f"defect-{variant}.yaml").read_text()))
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user)


def test_the_health_check_asks_whether_the_models_are_loaded_with_no_key_of_its_own():
    [check] = instructions("HEALTHCHECK")
    command = yaml.safe_load(check[check.index("CMD") + 4 :])
    assert command == ["python", "/opt/defects/serve.py", "--check", "ready"]
    assert "key" not in check.lower()  # serve.py reads key_file.json and renews an expired management key


def test_tini_passes_signals_to_serve_py_which_drains_then_stops_torchserve():
    [entrypoint] = instructions("ENTRYPOINT")
    assert yaml.safe_load(entrypoint) == ["tini", "--", "python", "/opt/defects/serve.py"]
    serve = _serve_module()
    assert Path("/home/model-server/config.properties") == serve.CONFIG
    assert "/home/model-server/config.properties" in [shlex.split(c)[-1] for c in instructions("COPY")]


def test_serve_py_and_the_handler_name_the_same_busy_folder_variable():
    from handler.defect_handler import BUSY_DIR_VARIABLE

    assert _serve_module().BUSY_DIR_VARIABLE == BUSY_DIR_VARIABLE


def _serve_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve", ROOT / "docker" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_everything_copied_is_in_the_build_context():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!")):
                keep = negate
        return keep

    for copy in instructions("COPY"):
        if "--from=" in copy:  # from another stage
            continue
        parts = [p for p in shlex.split(copy) if not p.startswith("--")]
        for source in parts[:-1]:
            assert included(source), f"{source} is excluded by .dockerignore"
            if not source.endswith(".mar"):  # the archives are build outputs (make serve / training archive)
                assert (ROOT / source).exists(), source


def test_the_image_carries_every_registered_archive():
    from training.inference.variants import VARIANTS

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    copied = re.findall(r"model_store/([\w.]+\.mar)", dockerfile)
    assert sorted(copied) == sorted(v.archive for v in VARIANTS)


def test_a_build_without_an_archive_or_a_pinned_wheel_says_what_is_missing(tmp_path, tiny_store):
    from training.serving import image

    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    for name, version in image.pins().items():
        if name != "openvino":
            (wheelhouse / f"{name}-{version}-py3-none-any.whl").write_bytes(b"")
    assert image.missing_wheels(wheelhouse) == [f"openvino=={image.pins()['openvino']}"]
    (tmp_path / "context").mkdir()
    with pytest.raises(image.ImageError, match=r"has no wheel of openvino==\S+ \(pinned in docker/requirements"):
        image.stage(tmp_path / "context", tiny_store, wheelhouse)
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(image.ImageError, match=r"missing archive\(s\) \S+/defect_fp32.mar, \S+/defect_int8.mar"):
        image.stage(tmp_path / "context", store, wheelhouse)


def test_serve_py_answers_every_request_in_flight_at_sigterm_then_stops_torchserve(tiny_store, tmp_path):
    """The container's main process, here on this machine (tests/test_image.py runs it in the image): TorchServe's
    own shutdown would close the connections of requests in flight; serve.py drains them first."""
    import signal
    import threading
    import time

    from tests.images_for_tests import encode, triplet
    from tests.service import answer_of
    from training.inference.variants import model_names
    from training.serving.launcher import GRPC_LISTENERS, free_port, prepare

    home = tmp_path / "home"
    ports = {name: free_port() for name in (*LISTENERS, *GRPC_LISTENERS)}
    addresses = {f"{name}_address": f"http://127.0.0.1:{ports[name]}" for name in LISTENERS}
    metrics = {"metrics_config": str(ROOT / "handler" / "metrics.yaml")}
    server = prepare(tiny_store, home, ports=ports, config=ROOT / "docker" / "config.properties",
                     overrides={**addresses, **metrics})  # fmt: skip
    env = {**server.env(), "TS_CONFIG": str(home / "config.properties"), "DEFECTS_HOME": str(home)}
    serve = subprocess.Popen([sys.executable, str(ROOT / "docker" / "serve.py")], cwd=home, env=env)
    try:
        server.wait_ready()
        check = [sys.executable, str(ROOT / "docker" / "serve.py"), "--check", "ready"]
        assert subprocess.run(check, env=env, capture_output=True, text=True).stdout.strip() == "ready"
        blobs = [encode(im) for im in triplet(2048, seed=4)]
        results = []

        def send() -> None:
            try:
                results.append(answer_of(server, model_names()[0], blobs, return_mask=False)["defect_area_px"] >= 0)
            except Exception as err:
                results.append(repr(err))

        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while not list((home / "busy").glob("*")):
            assert time.monotonic() < deadline, "no request reached a worker"
            time.sleep(0.01)
        serve.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10  # readiness fails as soon as serve.py has the signal
        while subprocess.run(check, env=env, capture_output=True, text=True).stdout.strip() != "draining":
            assert time.monotonic() < deadline, "still ready after SIGTERM"
        for thread in threads:
            thread.join(timeout=300)
        assert results == [True] * 4, results
        assert serve.wait(timeout=120) == 0
        assert subprocess.run(check, env=env, capture_output=True, text=True).returncode == 1  # it is gone
    finally:
        if serve.poll() is None:
            serve.kill()
        server.stop()


def test_the_container_s_paths_are_the_same_in_the_dockerfile_serve_py_the_build_and_the_cluster():
    """The working folder (key file, busy folder) and serve.py's path, written where each is used, agree."""
    from training.serving import image

    serve = _serve_module()
    assert instructions("WORKDIR") == [image.CONTAINER_HOME] and str(serve.HOME) == image.CONTAINER_HOME
    assert str(serve.BUSY_DIR) == f"{image.CONTAINER_HOME}/busy"  # what Container.answering lists
    assert yaml.safe_load(instructions("ENTRYPOINT")[0])[-1] == image.SERVE
    assert image.SERVE in instructions("HEALTHCHECK")[0]
    for path in (ROOT / "k8s").glob("defect-*.yaml"):
        container = next(yaml.safe_load_all(path.read_text()))["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["exec"]["command"][1] == image.SERVE
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {image.CONTAINER_HOME}
