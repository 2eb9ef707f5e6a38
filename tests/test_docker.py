"""The serving image's Dockerfile: hadolint-clean, and in step with the repository (pins, config, ports, user,
the files it copies). No Docker engine runs here, so the image itself is not built by the tests."""

import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

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


def test_based_on_the_official_torchserve_cpu_image():
    assert instructions("FROM") == ["pytorch/torchserve:0.12.0-cpu"]


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


def test_healthcheck_pings_with_the_inference_key():
    [check] = instructions("HEALTHCHECK")
    assert "/ping" in check and "key_file.json" in check and "Authorization" in check


def test_starts_torchserve_as_the_tests_do():
    [entrypoint] = instructions("ENTRYPOINT")
    command = yaml.safe_load(entrypoint)  # the JSON form
    assert command[:4] == ["torchserve", "--start", "--foreground", "--ncs"]
    assert command[command.index("--ts-config") + 1] == "/home/model-server/config.properties"


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
