"""The serving container's main process and its probes (standard library only: the image's venv holds TorchServe
and the handler's dependencies, the archives hold the handler).

    serve.py                 start TorchServe in the foreground; on SIGTERM or SIGINT, drain, then stop it
    serve.py --check ready   exit 0 when every model has all its workers loaded, and the server is not draining
    serve.py --check live    exit 0 when the inference listener accepts a connection
    serve.py --drain         a cluster's preStop hook: mark the server as draining, wait for the endpoints to drop
                             it, then until nothing is in flight (the SIGTERM that follows finds nothing to wait for)

Draining: TorchServe's own shutdown (its JVM shutdown hook) closes every connection at once, so a request in flight
at SIGTERM would be lost. Here SIGTERM first marks the server as draining (readiness fails, so a cluster sends it no
new requests), then waits until no request is queued in the frontend (the management API's pendingRequests, every
model) and none is in a handler (each worker's handler keeps a file in BUSY_DIR while it answers), twice in a row,
and only then stops TorchServe. A second SIGTERM, or DRAIN_SECONDS, stops it at once.

The management API needs the management key, which expires (token_expiration_min); the probes renew it with the API
key, which does not, when the server refuses it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CONFIG = Path(os.environ.get("TS_CONFIG", "/home/model-server/config.properties"))
HOME = Path(os.environ.get("DEFECTS_HOME", "/home/model-server/run"))  # TorchServe's working folder: key_file.json
KEY_FILE = HOME / "key_file.json"
DRAINING = HOME / "draining"  # present while the server drains: readiness fails
# The handler keeps a file here while it answers (handler/defect_handler.py reads the same variable).
BUSY_DIR_VARIABLE = "DEFECTS_BUSY_DIR"
BUSY_DIR = HOME / "busy"
DRAIN_SECONDS = float(os.environ.get("DEFECTS_DRAIN_SECONDS", "300"))  # longest wait for requests in flight
IDLE_GAP_SECONDS = 0.5  # idle twice this far apart: a request between the queue and the handler is not missed
POLL_SECONDS = 0.2
ENDPOINT_SECONDS = 5.0  # --drain: how long a cluster takes to stop sending requests once readiness fails
# TorchServe's launcher, beside this interpreter (the image's venv), else on PATH.
_BESIDE = Path(sys.executable).parent / "torchserve"
TORCHSERVE = str(_BESIDE) if _BESIDE.exists() else "torchserve"


def properties(path: Path = CONFIG) -> dict[str, str]:
    """TorchServe's config.properties as a dict (key=value lines; # comments)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _address(name: str) -> tuple[str, int]:
    """(host, port) to reach a listener from inside the container (0.0.0.0 means every interface: loopback)."""
    url = properties()[f"{name}_address"]
    host, port = url.rsplit("://", 1)[-1].rsplit(":", 1)
    return ("127.0.0.1" if host in ("0.0.0.0", "") else host), int(port)


def _key(kind: str) -> str | None:
    """A key from key_file.json ("management", "inference", "API"); None where token authorization is off (no
    key file, as in the cluster, where the gateway authenticates)."""
    if not KEY_FILE.exists():
        return None
    return json.loads(KEY_FILE.read_text())[kind]["key"]


def _get(url: str, key: str | None, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def management(path: str, timeout: float = 5.0) -> object:
    """GET the management API at `path` (JSON); an expired management key is renewed once with the API key."""
    host, port = _address("management")
    base = f"http://{host}:{port}"
    status, body = _get(f"{base}{path}", _key("management"), timeout)
    if status in (400, 401, 403) and KEY_FILE.exists():  # TorchServe 0.12 answers an expired key with 400
        renewed, _ = _get(f"{base}/token?type=management", _key("API"), timeout)
        if renewed == 200:  # the frontend has rewritten key_file.json
            status, body = _get(f"{base}{path}", _key("management"), timeout)
    if status != 200:
        raise RuntimeError(f"management API {path}: HTTP {status}: {body[:200]!r}")
    return json.loads(body)


def descriptions() -> list[dict]:
    """Each registered model's description (its default version)."""
    names = [m["modelName"] for m in management("/models")["models"]]
    return [management(f"/models/{name}")[0] for name in names]


def ready() -> tuple[bool, str]:
    """Every model has all its minimum workers loaded (status READY), and the server is not draining."""
    if DRAINING.exists():
        return False, "draining"
    models = descriptions()
    if not models:
        return False, "no model is registered"
    for model in models:
        loaded = sum(w.get("status") == "READY" for w in model.get("workers", []))
        if loaded < max(1, model.get("minWorkers", 1)):
            return False, f"{model['modelName']}: {loaded} of {model.get('minWorkers', 1)} workers loaded"
    return True, "ready"


def live() -> tuple[bool, str]:
    """The inference listener accepts a connection (the frontend is up); cheap, with no key."""
    host, port = _address("inference")
    try:
        with socket.create_connection((host, port), timeout=3):
            return True, "accepting"
    except OSError as err:
        return False, f"inference listener {host}:{port}: {err}"


def in_flight() -> int:
    """Requests queued in the frontend plus requests in a handler now."""
    queued = sum(m.get("jobQueueStatus", {}).get("pendingRequests", 0) for m in descriptions())
    answering = len(list(BUSY_DIR.glob("*"))) if BUSY_DIR.exists() else 0
    return queued + answering


def drain(deadline: float, stop: list[bool]) -> int:
    """Wait until nothing is in flight twice in a row, IDLE_GAP_SECONDS apart (or the deadline, or a second
    signal); returns what was still in flight."""
    idle_since = None
    while time.monotonic() < deadline and not stop[0]:
        try:
            busy = in_flight()
        except (OSError, RuntimeError, KeyError, ValueError) as err:  # the frontend is gone: nothing to wait for
            print(f"serve.py: cannot read the queue ({err}); stopping", flush=True)
            return 0
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= IDLE_GAP_SECONDS:
            return 0
        time.sleep(POLL_SECONDS)
    return in_flight()


def serve() -> int:
    """TorchServe in the foreground until SIGTERM or SIGINT, then drain and stop it; its exit status."""
    DRAINING.unlink(missing_ok=True)
    BUSY_DIR.mkdir(parents=True, exist_ok=True)
    for stale in BUSY_DIR.glob("*"):
        stale.unlink()
    env = {**os.environ, BUSY_DIR_VARIABLE: str(BUSY_DIR)}
    command = [TORCHSERVE, "--start", "--foreground", "--ncs", "--ts-config", str(CONFIG)]
    server = subprocess.Popen(command, env=env, start_new_session=True)  # signals reach it only through here
    signals: list[int] = []
    stop = [False]

    def on_signal(number: int, _frame: object) -> None:
        if signals:
            stop[0] = True  # a second signal: stop without waiting
        DRAINING.touch()  # readiness fails from now on
        signals.append(number)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while server.poll() is None and not signals:
        time.sleep(POLL_SECONDS)
    if server.poll() is not None:  # TorchServe ended on its own
        return server.returncode
    started = time.monotonic()
    print(f"serve.py: signal {signals[0]}: draining (at most {DRAIN_SECONDS:.0f} s)", flush=True)
    left = drain(started + DRAIN_SECONDS, stop)
    print(f"serve.py: drained in {time.monotonic() - started:.1f} s, {left} request(s) still in flight; stopping "
          "TorchServe", flush=True)  # fmt: skip
    subprocess.run([TORCHSERVE, "--stop"], env=env, check=False)
    try:
        server.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    DRAINING.unlink(missing_ok=True)
    return 0 if left == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", choices=("ready", "live"), help="probe the running server instead of serving")
    parser.add_argument("--drain", action="store_true", help="drain the running server (a preStop hook)")
    args = parser.parse_args(argv)
    if args.drain:
        DRAINING.touch()
        time.sleep(ENDPOINT_SECONDS)
        left = drain(time.monotonic() + DRAIN_SECONDS, [False])
        print(f"drained, {left} request(s) still in flight")
        return 0 if left == 0 else 1
    if args.check is None:
        return serve()
    try:
        ok, why = (ready if args.check == "ready" else live)()
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        ok, why = False, str(err)
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
