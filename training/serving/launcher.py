"""Start, wait for and stop a TorchServe of this project: the repository's config.properties with its ports and
folders replaced, a private home folder (logs, key_file.json, pid file), and the inference key read back.

Used by `python -m training serve` / `stop` (`make serve`, `make stop`) and by the tests, which start their own
server on free loopback ports and stop it also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.inference.variants import model_names

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.properties"
LISTENERS = ("inference", "management", "metrics")  # HTTP
GRPC_LISTENERS = ("grpc_inference", "grpc_management")
TORCHSERVE = "torchserve"  # TorchServe's launcher, a console script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java properties file (no continuation lines; `\\\\` unescaped)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().replace("\\\\", "\\")
    return values


def render_config(template: Path, changes: dict[str, str]) -> str:
    """The template's text with the given keys' values replaced (keys it lacks are appended)."""
    lines, seen = [], set()
    for line in Path(template).read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in changes:
            line = f"{key}={changes[key]}"
            seen.add(key)
        lines.append(line)
    lines += [f"{k}={v}" for k, v in changes.items() if k not in seen]
    return "\n".join(lines) + "\n"


@dataclass
class Server:
    home: Path  # logs, key_file.json, config.properties, pid file
    urls: dict[str, str]  # listener -> base URL
    models: tuple[str, ...]
    model_store: Path | None = None  # where the archives are, when prepared here
    process: subprocess.Popen | None = None  # set when started in the foreground by this process

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    def keys(self) -> dict[str, str]:
        """{"inference": ..., "management": ..., "API": ...} from key_file.json."""
        data = json.loads(self.key_file.read_text())
        return {name: entry["key"] for name, entry in data.items()}

    def env(self) -> dict[str, str]:
        tmp = self.home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        inherited = {k: v for k, v in os.environ.items() if k != "TS_CONFIG_FILE"}  # it would replace --ts-config
        return {
            **inherited,
            "TMPDIR": str(tmp),  # TorchServe's pid file lives in the temp dir: one per server
            "LOG_LOCATION": str(self.home / "logs"),
            "METRICS_LOCATION": str(self.home / "logs"),
        }

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until every model answers GET /ping as Healthy and has a ready worker (management API, with the key)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.process.returncode}; see {self.home / 'logs'}")
            died = self.worker_failure()
            if died:
                raise RuntimeError(
                    f"a model worker failed to start: {died}; see {self.home / 'logs' / 'model_log.log'}"
                )
            try:
                if self.key_file.exists() and all(self._ready(m) for m in self.models):
                    return
                last = "models not ready"
            except (OSError, urllib.error.URLError, KeyError, ValueError) as err:
                last = str(err)
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe not ready after {timeout:.0f} s ({last}); see {self.home / 'logs'}")

    def worker_failure(self) -> str | None:
        """The last line of the traceback of a worker that died while loading its model, if one did."""
        log = self.home / "logs" / "model_log.log"
        if not log.exists():
            return None
        lines = [line.split("MODEL_LOG - ", 1)[-1] for line in log.read_text(errors="replace").splitlines()]
        if not any("Backend worker process died" in line for line in lines):
            return None
        errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
        return errors[-1] if errors else "Backend worker process died"

    def _ready(self, model: str) -> bool:
        request = urllib.request.Request(
            f"{self.urls['management']}/models/{model}",
            headers={"Authorization": f"Bearer {self.keys()['management']}"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            workers = json.loads(answer.read())[0]["workers"]
        return any(w.get("status") == "READY" for w in workers)

    def stop(self, timeout: float = 30.0) -> str:
        """`torchserve --stop` for this server's home, then kill what is left of the process group; returns what
        the launcher said."""
        done = subprocess.run(
            [tool(TORCHSERVE), "--stop"], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )  # fmt: skip
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        return (done.stdout + done.stderr).strip()


def tool(name: str) -> str:
    """A console script of this environment (torchserve, torch-model-archiver), else the one on PATH."""
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def port_changes(base: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    """The settings that move a server of config `base` to `ports` (listener -> port; gRPC and worker ports drawn
    when not given), so that servers can run side by side on one machine."""
    changes = {f"{name}_address": re.sub(r":\d+$", f":{ports[name]}", base[f"{name}_address"]) for name in LISTENERS}
    for name in GRPC_LISTENERS:
        changes[f"{name}_port"] = str(ports.get(name) or free_port())
    changes["initial_worker_port"] = str(ports.get("workers", ports["inference"] + 1000))  # worker socket numbers
    return changes


def prepare(
    model_store: Path,
    home: Path,
    models: tuple[str, ...] | None = None,
    ports: dict[str, int] | None = None,
    config: Path = CONFIG,
    overrides: dict[str, str] | None = None,
) -> Server:
    """A server's home folder with its config.properties: `config` with the archives `<model>.mar` of
    `model_store`, ports replaced when given (gRPC and worker ports too, so that servers can run side by side), and
    further settings from `overrides` (e.g. the CORS origin of a page on another port)."""
    models = models or model_names()  # every registered variant
    home, model_store = Path(home).resolve(), Path(model_store).resolve()
    for model in models:
        if not (model_store / f"{model}.mar").exists():
            raise FileNotFoundError(f"{model_store / model}.mar not found: run `python -m training archive` first")
    home.mkdir(parents=True, exist_ok=True)
    base = read_properties(config)
    changes = {
        "model_store": str(model_store),
        "load_models": ",".join(f"{m}.mar" for m in models),
        "metrics_config": str((config.parent / base.get("metrics_config", "handler/metrics.yaml")).resolve()),
        "allowed_urls": f"file://{model_store}/({'|'.join(models)})\\\\.mar",
    }
    if ports:
        changes.update(port_changes(base, ports))
    urls = {name: changes.get(f"{name}_address", base[f"{name}_address"]) for name in LISTENERS}
    changes.update(overrides or {})
    (home / "config.properties").write_text(render_config(config, changes))
    return Server(home, urls, tuple(models), model_store)


def start_command(server: Server, path: Callable[[Path], str] = str) -> list[str]:
    """TorchServe's own start line for a prepared server, as its users write it (its config names the same store and
    archives); `path` writes the paths (`shown`: as a person would type them here)."""
    return [
        TORCHSERVE, "--start", "--ncs", "--ts-config", path(server.home / "config.properties"),
        "--model-store", path(server.model_store), "--models", *(f"{m}={m}.mar" for m in server.models),
    ]  # fmt: skip


def shown(path: Path) -> str:
    """`path` as a command line shows it: relative to the working folder when it lies inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def start(
    model_store: Path,
    home: Path,
    models: tuple[str, ...] | None = None,
    ports: dict[str, int] | None = None,
    config: Path = CONFIG,
    foreground: bool = False,
    timeout: float = 180.0,
    overrides: dict[str, str] | None = None,
) -> Server:
    """TorchServe as `prepare` sets it up, started and ready: every model has a loaded worker. `foreground` keeps it
    a child of this process (the tests' way)."""
    server = prepare(model_store, home, models, ports, config, overrides)
    home = server.home
    command = [tool(TORCHSERVE), *start_command(server)[1:]]
    log = open(home / "torchserve.out", "ab")  # noqa: SIM115 - the server keeps writing after this returns
    if foreground:
        server.process = subprocess.Popen(
            [*command, "--foreground"], cwd=home, env=server.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    else:
        subprocess.run(command, cwd=home, env=server.env(), stdout=log, stderr=subprocess.STDOUT, check=True)
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server
