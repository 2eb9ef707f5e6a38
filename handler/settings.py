"""How one variant is served: TorchServe's per-model settings and the handler's own, written into the archive's
model-config.yaml by `archive` and read back by the handler. The defaults are typed here and nowhere else."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.inference import serialize
from training.inference.config import SIZE_MULTIPLE, TILE_OVERLAP, TILE_SIZE

# TorchServe's model-config.yaml keys for the fields of ServingConfig that it reads itself.
_TORCHSERVE_KEYS = {
    "min_workers": "minWorkers",
    "max_workers": "maxWorkers",
    "batch_size": "batchSize",
    "max_batch_delay_ms": "maxBatchDelay",
    "response_timeout_s": "responseTimeout",
    "startup_timeout_s": "startupTimeout",
}


@dataclass(frozen=True)
class ServingConfig:
    # TorchServe: one worker per variant and one torch thread per worker, so two variants fit two cores.
    min_workers: int = 1
    max_workers: int = 1
    batch_size: int = 1  # requests per handler call; each is answered on its own
    max_batch_delay_ms: int = 20
    response_timeout_s: int = 120  # one 2048x2048 fp32 layer takes seconds on one thread
    startup_timeout_s: int = 120
    # The handler.
    threads: int = 1
    max_image_pixels: int = 4096 * 4096  # per image, checked from the header before decoding
    tile_size: int = TILE_SIZE  # pixels a side a tile of a large layer answers for, at most
    tile_overlap: int = TILE_OVERLAP  # pixels shared by neighbouring tiles of a large layer, at least
    # The side of the layers this variant expects (its camera's; 512 is our generator's): the worker runs the
    # shapes of such a layer once at load, so that its first answer does not pay for preparing them, and `archive`
    # times the backends on one.
    layer_side: int = 512
    max_components: int = 100  # components listed per answer, largest first (all are counted)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if f.name == "tile_overlap" else 1):
                raise ValueError(f"serving setting {f.name} must be a positive whole number, got {value!r}")
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers {self.min_workers} exceeds max_workers {self.max_workers}")
        if self.tile_size % SIZE_MULTIPLE:
            raise ValueError(f"serving setting tile_size must be a multiple of {SIZE_MULTIPLE}, got {self.tile_size}")
        if self.tile_overlap >= self.tile_size:
            raise ValueError(f"tile_overlap {self.tile_overlap} must be smaller than tile_size {self.tile_size}")

    def to_yaml_dict(self) -> dict[str, Any]:
        """model-config.yaml content: TorchServe's keys at the top, ours under `handler`."""
        values = serialize.to_dict(self)
        top = {key: values.pop(name) for name, key in _TORCHSERVE_KEYS.items()}
        return {**top, "handler": values}

    @classmethod
    def from_yaml_dict(cls, data: dict[str, Any] | None) -> ServingConfig:
        """Read back `to_yaml_dict()` output (TorchServe's other top-level keys are its own business); settings
        left out keep their defaults, unknown handler settings are refused."""
        data = data or {}
        handler = data.get("handler") or {}
        if not isinstance(handler, Mapping):
            raise ValueError(f"`handler:` in model-config.yaml must be a mapping of settings, got {handler!r}")
        misplaced = sorted(set(handler) & set(_TORCHSERVE_KEYS))
        if misplaced:
            raise ValueError(
                f"handler setting(s) {misplaced} in model-config.yaml are TorchServe's: write them at the top as "
                f"{[_TORCHSERVE_KEYS[name] for name in misplaced]}"
            )
        values = {name: data[key] for name, key in _TORCHSERVE_KEYS.items() if key in data}
        return serialize.from_dict(cls, {**values, **handler}, what="model-config.yaml handler setting")
