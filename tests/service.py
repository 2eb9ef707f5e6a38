"""Asking a test's TorchServe for an answer, through the factory client (a refusal raises ServiceError)."""

from __future__ import annotations

from typing import Any

from client.client import DefectClient


def answer_of(server, model: str, blobs: list[bytes], return_mask: bool = True) -> dict[str, Any]:
    client = DefectClient(server.urls["inference"], model, key_file=server.key_file, retries=0)
    return client.predict(blobs, return_mask=return_mask).answer
