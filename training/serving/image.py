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

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
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


def build(archives: Path, tag: str = IMAGE, base: str | None = None, wheelhouse: Path = WHEELHOUSE) -> Build:
    """Build the serving image from the archives in `archives`; the wheelhouse is made first when it lacks a pin."""
    ensure_tools()
    if missing_wheels(wheelhouse) and wheelhouse == WHEELHOUSE:
        make_wheelhouse(wheelhouse)
    base = base or base_image()
    with tempfile.TemporaryDirectory(prefix="image-context-", dir=ROOT / "docker") as folder:
        context = Path(folder)
        stage(context, Path(archives), wheelhouse)
        started = time.perf_counter()
        podman("build", "--format", "docker", "--isolation", "chroot", "--network", "host", "--layers",
               "--build-arg", f"BASE_IMAGE={base}", "-f", str(context / "docker" / "Dockerfile"), "-t", tag,
               str(context))  # fmt: skip
        seconds = time.perf_counter() - started
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    return Build(tag, base, round(seconds, 1), size)
