"""The serving image (docker/Dockerfile), built and run with podman: `python -m training image` (`make image`) and
the container test (`make image-test`, part of `make test`).

Where no registry answers, the base image is made here: `debootstrap --variant=minbase bookworm` into a folder,
imported into podman as LOCAL_BASE. Python packages come from a wheelhouse made here from the pinned requirements
(`pip download`), installed inside the build with `--no-index`, as an offline factory builds. The build context is
staged in a temporary folder holding exactly what the Dockerfile copies (the wheelhouse hard-linked), so the archives
can come from any model store and the layer cache still applies.

podman here: `--isolation chroot` to build (no nested namespaces), runc as the runtime and explicit ulimits to run
(the default runtime and limits are refused in this kind of sandbox).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.inference.variants import VARIANTS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
REQUIREMENTS = ROOT / "docker" / "requirements-serving.txt"
WHEELHOUSE = ROOT / "docker" / "wheelhouse"  # `pip download` of REQUIREMENTS (ignored by git)
# What the Dockerfile copies from the build context besides the archives and the wheelhouse.
CONTEXT_FILES = (
    "docker/config.properties",
    "docker/requirements-serving.txt",
    "docker/serve.py",
    "handler/metrics.yaml",
)
IMAGE = "localhost/lpbf-defects/serving:latest"
CONTAINER_HOME = "/home/model-server/run"  # the image's WORKDIR: key_file.json, logs, the busy folder (docker/serve.py)
SERVE = "/opt/defects/serve.py"  # the image's main process and probes
REGISTRY_BASE = "docker.io/library/debian:bookworm-slim"
LOCAL_BASE = "localhost/debian:bookworm-minbase"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}  # command -> Debian package
RUN_FLAGS = ("--runtime", "runc")  # podman's global flags for every command that runs a container
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


class ImageError(RuntimeError):
    """A build that cannot go on, with what is missing."""


@dataclass(frozen=True)
class Build:
    tag: str
    base: str
    seconds: float
    size_bytes: int


def podman(*args: str, check: bool = True, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run podman with runc as its runtime; output captured as text."""
    done = subprocess.run(["podman", *RUN_FLAGS, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        raise ImageError(f"podman {' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def ensure_tools() -> None:
    """podman, runc and debootstrap: installed with apt-get when missing and running as root, else an error that
    names the packages."""
    missing = [package for command, package in TOOLS.items() if shutil.which(command) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImageError(
            f"the image needs {', '.join(missing)}: install them, e.g. sudo apt-get install {' '.join(missing)}"
        )
    log.info("installing %s with apt-get", ", ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, capture_output=True)


def has_image(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def base_image(pull: bool = True) -> str:
    """A Debian bookworm image to build on: LOCAL_BASE when made earlier, else the registry's when it answers, else
    one made here with debootstrap."""
    if has_image(LOCAL_BASE):
        return LOCAL_BASE
    if pull and podman("pull", "--quiet", REGISTRY_BASE, check=False, timeout=120).returncode == 0:
        return REGISTRY_BASE
    log.info("no registry image: making %s with debootstrap from %s", LOCAL_BASE, DEBIAN_MIRROR)
    with tempfile.TemporaryDirectory(prefix="bookworm-", dir=ROOT / "docker") as folder:
        rootfs = Path(folder) / "rootfs"
        done = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise ImageError(f"debootstrap bookworm failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman("import", "-", LOCAL_BASE, stdin=tar.stdout)
        tar.wait()
    return LOCAL_BASE


def pins(requirements: Path = REQUIREMENTS) -> dict[str, str]:
    """name (normalised) -> version of every `name==version` line."""
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", requirements.read_text(), re.M)
    return {_normalise(name): version for name, version in found}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def missing_wheels(wheelhouse: Path, requirements: Path = REQUIREMENTS) -> list[str]:
    """The pinned packages the wheelhouse has no wheel of, as `name==version`."""
    have = set()
    for wheel in wheelhouse.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        have.add((_normalise(name), version.split("+")[0]))
    return [f"{name}=={version}" for name, version in pins(requirements).items() if (name, version) not in have]


def make_wheelhouse(wheelhouse: Path = WHEELHOUSE, requirements: Path = REQUIREMENTS) -> Path:
    """Wheels of every pinned package and its dependencies, from the package index pip is configured with (files
    already there are kept)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
                           "-r", str(requirements), "-d", str(wheelhouse)], capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise ImageError(f"pip download of {requirements.name} failed: {done.stderr.strip()[-2000:]}")
    return wheelhouse


def stage(context: Path, archives: Path, wheelhouse: Path) -> None:
    """The build context: what the Dockerfile copies, the archives from `archives`, the wheelhouse hard-linked."""
    wanted = [archives / v.archive for v in VARIANTS]
    absent = [str(p) for p in wanted if not p.is_file()]
    if absent:
        raise ImageError(f"missing archive(s) {', '.join(absent)}: run `python -m training archive` (or make demo)")
    lacking = missing_wheels(wheelhouse)
    if lacking:
        raise ImageError(f"the wheelhouse {wheelhouse} has no wheel of {', '.join(lacking)} (pinned in "
                         f"{REQUIREMENTS.relative_to(ROOT)}): run `pip download -r {REQUIREMENTS.relative_to(ROOT)} "
                         f"-d {wheelhouse}` where the package index answers")  # fmt: skip
    for name in (*CONTEXT_FILES, "docker/Dockerfile"):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    (context / "model_store").mkdir()
    for archive in wanted:
        shutil.copy2(archive, context / "model_store" / archive.name)
    (context / "docker" / "wheelhouse").mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        try:
            os.link(wheel, context / "docker" / "wheelhouse" / wheel.name)
        except OSError:  # another file system
            shutil.copy2(wheel, context / "docker" / "wheelhouse" / wheel.name)


def build(
    archives: Path, tag: str = IMAGE, base: str | None = None, wheelhouse: Path = WHEELHOUSE, cache: bool = True
) -> Build:
    """Build the serving image from the archives in `archives`; the wheelhouse is made first when it lacks a pin.
    `cache=False` builds every layer again (the base image and the wheelhouse are kept)."""
    ensure_tools()
    if missing_wheels(wheelhouse) and wheelhouse == WHEELHOUSE:
        make_wheelhouse(wheelhouse)
    base = base or base_image()
    with tempfile.TemporaryDirectory(prefix="image-context-", dir=ROOT / "docker") as folder:
        context = Path(folder)
        stage(context, Path(archives), wheelhouse)
        started = time.perf_counter()
        podman("build", "--format", "docker", "--isolation", "chroot", "--network", "host", "--layers",
               *(() if cache else ("--no-cache",)),
               "--build-arg", f"BASE_IMAGE={base}", "-f", str(context / "docker" / "Dockerfile"), "-t", tag,
               str(context))  # fmt: skip
        seconds = time.perf_counter() - started
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    return Build(tag, base, round(seconds, 1), size)


@dataclass
class Container:
    """A running container of the serving image, its listeners published on loopback ports of this machine."""

    name: str
    ports: dict[str, int]  # listener (LISTENERS) -> port on 127.0.0.1
    started: float  # time.perf_counter() when it was started

    def url(self, listener: str) -> str:
        return f"http://127.0.0.1:{self.ports[listener]}"

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *command, check=check)

    def ready(self) -> bool:
        """The image's own readiness check: every model's workers loaded, not draining."""
        return self.exec("python", SERVE, "--check", "ready", check=False).returncode == 0

    def state(self) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.name, check=False).stdout.strip() or "gone"

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Seconds from the start until ready; raises with the container's log when it stops or times out."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.state() != "running" or time.monotonic() > deadline:
                raise ImageError(
                    f"container {self.name} {self.state()}, not ready after {timeout:.0f} s:\n{self.logs()}"
                )
            time.sleep(0.5)
        return time.perf_counter() - self.started

    def keys(self) -> dict[str, str]:
        """{"inference": ..., "management": ..., "API": ...} from the container's key_file.json."""
        data = json.loads(self.exec("cat", f"{CONTAINER_HOME}/key_file.json").stdout)
        return {name: entry["key"] for name, entry in data.items()}

    def answering(self) -> bool:
        """A handler is answering a request now (its busy file, docker/serve.py)."""
        return bool(self.exec("ls", f"{CONTAINER_HOME}/busy", check=False).stdout.strip())

    def logs(self, tail: int | None = 4000) -> str:
        """What the container printed (its last `tail` characters; all of it with None)."""
        done = podman("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-tail if tail else 0 :]

    def remove(self) -> None:
        podman("rm", "--force", "--time", "5", self.name, check=False)


def run(tag: str = IMAGE, name: str | None = None) -> Container:
    """Start the image detached, each listener of docker/config.properties published on a free loopback port."""
    from training.serving.launcher import LISTENERS, free_port, read_properties

    config = read_properties(ROOT / "docker" / "config.properties")
    inside = {n: int(config[f"{n}_address"].rsplit(":", 1)[1]) for n in LISTENERS}
    ports = {n: free_port() for n in LISTENERS}
    name = name or f"defects-{uuid.uuid4().hex[:8]}"
    publish = [f"--publish=127.0.0.1:{ports[n]}:{inside[n]}" for n in LISTENERS]
    started = time.perf_counter()
    podman("run", "--detach", "--name", name, *ULIMITS, *publish, tag)
    return Container(name, ports, started)


def sigterm_in_flight(container: Container, send: Callable[[], object], count: int, timeout: float = 300.0) -> dict:
    """`count` requests at once (each `send()`, which returns a result or raises), SIGTERM to the container once a
    handler answers the first, then every result and how the container ended: {"in_flight", "answered" (results
    that are not errors), "results", "drain_s" (SIGTERM to exit), "exit_code"}."""
    results: list[object] = []

    def one() -> None:
        try:
            results.append(send())
        except Exception as err:  # a lost request is a result to count, whatever it raised
            results.append(err)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    while not container.answering():
        if time.monotonic() > deadline:
            raise ImageError(f"no request reached a handler in {timeout:.0f} s:\n{container.logs()}")
        time.sleep(0.05)
    signalled = time.perf_counter()
    podman("kill", "--signal", "TERM", container.name)
    for thread in threads:
        thread.join(timeout=timeout)
    exit_code = podman("wait", container.name, timeout=timeout).stdout.strip()
    return {"in_flight": count, "answered": sum(not isinstance(r, Exception) for r in results), "results": results,
            "drain_s": round(time.perf_counter() - signalled, 1), "exit_code": int(exit_code)}  # fmt: skip
