"""Serve the inspection page on loopback with Python's standard library, and pass its requests on to TorchServe.

POST /predictions/<model> (one of the configured models) is forwarded to the inference API with the current
inference key from TorchServe's key_file.json (read on every request, so a rotated key is used at once) and the
answer comes back as it is. The key never reaches the browser. Why not let the page call TorchServe directly with
the key and CORS: TorchServe 0.12 demands the token on the CORS preflight too, which browsers send without
credentials, so the browser never gets to make the real request (tests/test_web.py shows it).
GET /config tells the page the model names and where the service is.
"""

from __future__ import annotations

import functools
import json
import logging
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from training.inference.classes import CLASS_COLOURS, DEFECT_CLASSES, UNCLASSIFIED_COLOUR, class_label
from training.inference.variants import VARIANTS
from training.serving.launcher import CONFIG, read_properties

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent
STATIC = {"/", "/index.html", "/app.js", "/style.css"}
MAX_BODY = int(read_properties(CONFIG)["max_request_size"])  # TorchServe's own limit: three 2048² 16-bit PNGs
FORWARDED = ("Content-Type",)


class PageHandler(SimpleHTTPRequestHandler):
    """The page's files and /config; nothing else of the folder is served."""

    def __init__(self, *args, settings: dict, **kwargs) -> None:
        self.settings = settings
        super().__init__(*args, directory=str(PAGE), **kwargs)

    def end_headers(self) -> None:
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'",
        )
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path == "/config":
            self._config()
        elif path in STATIC:
            super().do_GET()
        else:
            self.send_error(HTTPStatus.NOT_FOUND, "not part of the inspection page")

    def do_HEAD(self) -> None:
        if urlparse(self.path).path in STATIC:
            super().do_HEAD()
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        model = path.removeprefix("/predictions/")
        if not path.startswith("/predictions/") or model not in self.settings["models"].values():
            self.send_error(
                HTTPStatus.NOT_FOUND,
                f"POST /predictions/<model>, model one of {sorted(self.settings['models'].values())}",
            )
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"code": 413, "message": f"the request is {length} bytes; "
                       f"the service accepts at most {MAX_BODY} (three 2048x2048 16-bit PNGs)"})  # fmt: skip
            self.close_connection = True
            return
        body = self.rfile.read(length)
        status, headers, answer = self._forward(model, body)
        if status == 400 and b"InvalidKeyException" in answer:  # rotated between reading the key and using it
            status, headers, answer = self._forward(model, body)
        self.send_response(status)
        self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(answer)

    def _forward(self, model: str, body: bytes) -> tuple[int, dict, bytes]:
        headers = {name: self.headers[name] for name in FORWARDED if self.headers.get(name)}
        try:
            headers["Authorization"] = f"Bearer {self._key()}"
        except (OSError, ValueError, KeyError) as err:
            return 503, {}, json.dumps({"code": 503, "message": str(err)}).encode()
        request = urllib.request.Request(
            f"{self.settings['inference_url']}/predictions/{model}", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings["timeout"]) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()
        except (urllib.error.URLError, TimeoutError) as err:
            message = f"the defect detection service at {self.settings['inference_url']} did not answer ({err}); is it running (make serve)?"
            return 502, {}, json.dumps({"code": 502, "message": message}).encode()

    def _key(self) -> str:
        key_file = Path(self.settings["key_file"])
        try:
            return json.loads(key_file.read_text())["inference"]["key"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"no inference key in {key_file} ({err}); is TorchServe running (make serve)?") from err

    def _config(self) -> None:
        labels = {v.key: v.label for v in VARIANTS}
        classes = {name: {"label": class_label(name), "colour": CLASS_COLOURS[name]} for name in DEFECT_CLASSES}
        body = {"service": self.settings["inference_url"], "models": self.settings["models"], "labels": labels,
                "classes": classes, "unclassified_colour": UNCLASSIFIED_COLOUR}  # fmt: skip
        self._json(HTTPStatus.OK, body)

    def _json(self, status: HTTPStatus, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        log.info("%s - %s", self.address_string(), format % args)


def make_server(
    port: int,
    inference_url: str,
    key_file: Path,
    models: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 150.0,
) -> ThreadingHTTPServer:
    """A server for the page; call serve_forever() (the caller owns it). Only loopback hosts are accepted: whoever
    reaches this server uses the service with its key."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the page's server calls the service with its key: bind it to loopback, not {host!r}")
    settings = {
        "inference_url": inference_url.rstrip("/"),
        "key_file": str(key_file),
        "models": models or {v.key: v.model_name for v in VARIANTS},
        "timeout": timeout,
    }
    return ThreadingHTTPServer((host, port), functools.partial(PageHandler, settings=settings))
