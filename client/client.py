"""DefectClient: three images of a layer to the service and its answer back, with retries and the inference key.

Retries: connection errors and HTTP 503 / 507 (a worker restarting or out of resources) are retried with
exponential backoff and jitter. A key the server calls invalid makes the client re-read the key file once (the
server rotated it, or restarted with new keys) and try again. Any other 4xx is the caller's mistake: it is raised
at once with the server's message and not retried.

Latency is what the caller waited: from the first attempt to the answer, retries, backoff sleeps and key reloads
included (`Prediction.latency_ms`); the last attempt alone is `Prediction.attempt_ms`.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from training.inference.variants import default_model

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_KEY_FILE = Path("runs/serve/key_file.json")
KEY_ENV = "DEFECT_INFERENCE_KEY"
DEFAULT_TIMEOUT_S = 120.0  # per request: at least the server's per-model responseTimeout (a test compares them)
RETRY_STATUS = frozenset({503, 507})

ImageInput = bytes | str | Path


class ServiceError(RuntimeError):
    """The service refused a request or could not be reached. `status`: the HTTP status (None: no answer);
    `reason`: the handler's reason code, else TorchServe's error type; `attempts`: requests sent."""

    def __init__(
        self, message: str, status: int | None = None, reason: str | None = None, attempts: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.attempts = status, reason, attempts

    @property
    def kind(self) -> str:
        """What went wrong without this request's details, to group many failures: "HTTP 400 unreadable",
        "no answer after 6 attempts"."""
        if self.status is None:
            count = f" after {self.attempts} attempt{'s' if self.attempts != 1 else ''}" if self.attempts else ""
            return f"no answer{count}"
        return f"HTTP {self.status} {self.reason}" if self.reason else f"HTTP {self.status}"


@dataclass(frozen=True)
class Prediction:
    model: str  # which model (variant) answered
    answer: dict[str, Any]  # the service's JSON (docs/response.schema.json)
    latency_ms: float  # what the caller waited: first attempt to answer, retries, backoff and key reloads included
    attempt_ms: float  # the successful attempt alone: its HTTP round trip
    attempts: int  # tries counted against `retries` (one repeated at once with a re-read key is not counted)
    layer_id: str | None = None


@dataclass
class KeySource:
    """The inference key: given directly, else from the environment variable, else from TorchServe's key file."""

    key: str | None = None
    key_file: Path | None = None
    env: str = KEY_ENV
    _cached: str | None = field(default=None, repr=False)

    def get(self) -> str | None:
        if self._cached is None:
            self._cached = self.key or os.environ.get(self.env) or self._from_file()
        return self._cached

    def reload(self) -> bool:
        """Re-read the key file; True when it now gives a different key."""
        if self.key_file is None:
            return False
        old, self._cached = self._cached, None
        try:
            return self.get() != old
        except (OSError, ValueError, KeyError):
            return False

    def _from_file(self) -> str | None:
        if self.key_file is None:
            return None
        import json

        return json.loads(Path(self.key_file).read_text())["inference"]["key"]


def _read(image: ImageInput) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


class DefectClient:
    """`DefectClient(url, model).predict([a0, a1, a2])` -> Prediction. Images are bytes or file paths."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str | None = None,
        key: str | None = None,
        key_file: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        options: dict[str, str] | None = None,
    ) -> None:
        """`model`: the model asked when `predict` names none (default: the registry's default variant);
        `options`: request options sent with every layer, e.g. {"pitch_um": "25", "ignore_classes": "spatter"}
        (docs/api.md; the server checks them); `sleep` and `clock` are the backoff's and the latency's (replace
        both to test without waiting)."""
        if retries < 0 or backoff_s < 0 or timeout <= 0:
            raise ValueError(f"retries and backoff must be >= 0 and timeout > 0; got {retries}, {backoff_s}, {timeout}")
        self.url = url.rstrip("/")
        self.model = model or default_model()
        self.keys = KeySource(key, Path(key_file) if key_file else None)
        self.timeout, self.retries = timeout, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.session = session or requests.Session()
        self._sleep, self._clock, self._random = sleep, clock, random.Random(seed)
        self.options = dict(options or {})

    def delay(self, attempt: int) -> float:
        """Backoff before retry `attempt` (1, 2, ...): exponential, capped, with jitter over its upper half."""
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base / 2 + self._random.uniform(0, base / 2)

    def predict(
        self,
        images: Sequence[ImageInput],
        model: str | None = None,
        threshold: float | None = None,
        return_mask: bool = True,
        layer_id: str | None = None,
    ) -> Prediction:
        """Answer for one layer from `model` (default: the client's). Raises ServiceError when refused or when
        every retry failed. The Prediction's latency is the caller's whole wait, retries included."""
        if len(images) != 3:
            raise ValueError(f"a layer needs three images (one per light), got {len(images)}")
        model = model or self.model
        blobs = [_read(image) for image in images]
        fields = {**self.options, "return_mask": "true" if return_mask else "false"}
        if threshold is not None:
            fields["threshold"] = str(threshold)
        attempt, reloaded, last = 0, False, "no attempt made"
        waited_from = self._clock()
        while attempt <= self.retries:
            attempt += 1
            started = self._clock()
            try:
                response = self.session.post(
                    f"{self.url}/predictions/{model}",
                    files={f"angle{k}": (f"angle{k}", blob) for k, blob in enumerate(blobs)},
                    data=fields,
                    headers=self._headers(),
                    timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as err:
                last = f"{type(err).__name__}: {err}"
            else:
                answered = self._clock()
                body = _json(response)
                if response.status_code == 200:
                    waited, took = (answered - waited_from) * 1e3, (answered - started) * 1e3
                    return Prediction(model, body, waited, took, attempt, layer_id)
                message = body.get("message") or response.text[:200]
                if body.get("type") == "InvalidKeyException":
                    if not reloaded and self.keys.reload():
                        reloaded, attempt = True, attempt - 1  # a fresh key: this try does not count
                        continue
                    if self.keys.key_file is None:
                        raise ServiceError(f"{model}: the inference key was refused: {message}", response.status_code,
                                           body.get("type"), attempt)  # fmt: skip
                    last = f"HTTP {response.status_code}: {message} (key file {self.keys.key_file})"
                elif response.status_code in RETRY_STATUS:
                    last = f"HTTP {response.status_code}: {message}"
                else:
                    raise ServiceError(f"{model}: HTTP {response.status_code}: {message}", response.status_code,
                                       body.get("reason") or body.get("type"), attempt)  # fmt: skip
            reloaded = False
            if attempt <= self.retries:
                self.keys.reload()  # a restarted server has new keys
                self._sleep(self.delay(attempt))
        raise ServiceError(f"{model}: no answer after {attempt} attempt(s); last: {last}", attempts=attempt)

    def _headers(self) -> dict[str, str]:
        try:
            key = self.keys.get()
        except (OSError, ValueError, KeyError):
            key = None  # the key file is missing while the server restarts: the server will say so
        return {"Authorization": f"Bearer {key}"} if key else {}


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
