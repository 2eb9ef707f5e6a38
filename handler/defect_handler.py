"""TorchServe handler: three light images of a layer in, defect decision, areas, boxes and mask out.

A thin BaseHandler subclass over the inference contract (`training.inference`) and this package's request parsing
and settings; the archive packs both packages whole next to the weights. Nothing here is a model constant: the
normalisation, tile size, light azimuths (and so the order of the image fields) and threshold come from the
archive's ModelConfig, the limits from its model-config.yaml, the variant and backend from the registry.

Each request of a batch is answered on its own: a bad one gets a 4xx JSON error with a message that says what was
wrong, and the others are answered normally. The worker never dies of input.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from ts.metrics.dimension import Dimension
from ts.torch_handler.base_handler import BaseHandler

from handler.request import BadRequest, parse_request, request_options
from handler.settings import ServingConfig
from training.inference.answer import Answer, Light, ModelInfo, Timing
from training.inference.config import ModelConfig
from training.inference.familiarity import assess
from training.inference.layer import LayerError, decode_layer
from training.inference.loaders import load_variant
from training.inference.postprocess import detect
from training.inference.serialize import to_dict
from training.inference.tiling import predict_tiled, warm_up
from training.inference.variants import variant_of

log = logging.getLogger(__name__)

# A folder where the worker keeps a file (named by its process id) while it answers, when the environment names one:
# the serving container drains by it before it stops TorchServe (docker/serve.py, which sets it).
BUSY_DIR_VARIABLE = "DEFECTS_BUSY_DIR"


@contextlib.contextmanager
def answering() -> Iterator[None]:
    """Keep this worker's file in the busy folder (if the environment names one) for the duration."""
    folder = os.environ.get(BUSY_DIR_VARIABLE)
    if not folder:
        yield
        return
    marker = Path(folder) / str(os.getpid())
    marker.touch()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


class DefectHandler(BaseHandler):
    """Serves one registered variant of the defect segmentation model."""

    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.serving = ServingConfig.from_yaml_dict(getattr(context, "model_yaml_config", None))
        torch.set_num_threads(self.serving.threads)
        config = ModelConfig.from_dict(json.loads((model_dir / "model_config.json").read_text()))
        if config.threshold is None:
            raise ValueError(f"{model_dir / 'model_config.json'} has no decision threshold: rebuild the archive")
        weights = model_dir / context.manifest["model"]["serializedFile"]
        self.config, self.model = load_variant(weights, config, self.serving.threads)
        variant = variant_of(self.config)
        self.model_info = ModelInfo(
            context.model_name, variant.key, self.config.backend, context.manifest["model"].get("modelVersion", "")
        )
        self.lights = tuple(Light(f, a) for f, a in zip(config.image_fields, config.azimuths_deg, strict=True))
        started = time.perf_counter()
        warm_up(self.model, self.config, self.serving.layer_side, self.serving.tile_size, self.serving.tile_overlap)
        self.context = context
        self.initialized = True
        log.info("%s: %s model from %s on %s, %d thread(s), warmed up in %.0f ms", context.model_name, variant.key,
                 weights.name, self.config.backend, self.serving.threads, (time.perf_counter() - started) * 1e3)  # fmt: skip

    def handle(self, data: list[dict[str, Any]], context) -> list[str]:
        """Answer every request of the batch on its own (compact JSON); a bad one gets its own 4xx."""
        self.context = context
        answers = []
        with answering():
            for idx, request in enumerate(data):
                try:
                    answer = self._answer(request, idx)
                except BadRequest as err:
                    log.info("request %d refused (%d %s): %s", idx, err.code, err.reason, err)
                    context.set_response_status(err.code, err.phrase, idx)
                    answer = err.answer()
                context.set_response_content_type(idx, "application/json")
                answers.append(json.dumps(to_dict(answer), separators=(",", ":")))
        return answers

    def _answer(self, request: dict[str, Any], idx: int) -> Answer:
        started = time.perf_counter()
        blobs, names, options = parse_request(request, self.config.image_fields)
        asked = request_options(options, self.config)
        try:
            layer = decode_layer(blobs, names, self.serving.max_image_pixels, min_side=self.config.size_multiple)
        except LayerError as err:
            raise BadRequest.from_layer_error(err) from err
        decoded = time.perf_counter()
        prediction = predict_tiled(
            self.model, layer.stack, self.config, self.serving.tile_size, self.serving.tile_overlap
        )
        inferred = time.perf_counter()
        detection = detect(prediction, asked.threshold, asked.return_mask, self.serving.max_components, asked.scale,
                           asked.ignore_classes, asked.mask_format)  # fmt: skip
        familiarity = assess(layer.stack, self.config, detection.flagged_px / prediction.defect.size)
        done = time.perf_counter()
        answer = Answer.of(
            detection,
            converted_from_colour=tuple(n for n, c in zip(names, layer.converted_from_colour, strict=True) if c),
            lights=self.lights,
            model=self.model_info,
            timing_ms=Timing(*(round(s * 1e3, 2) for s in (decoded - started, inferred - decoded, done - inferred))),
            familiarity=familiarity,
        )
        self._record(answer, idx)
        return answer

    def _record(self, answer: Answer, idx: int) -> None:
        """Custom metrics for TorchServe's Prometheus endpoint (declared in handler/metrics.yaml)."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        variant = Dimension("Variant", answer.model.variant)
        decision = Dimension("Decision", "defect" if answer.defect else "clean")
        metrics.add_counter("DefectDecisions", 1, idx, [variant, decision])
        # 0 for a familiar layer, so the series exists from the first answer and reads 0 rather than absent
        metrics.add_counter("UnfamiliarLayers", int(not answer.familiarity.familiar), idx, [variant])
        for summary in answer.class_summary:  # every class from the first answer on, so each series reads 0, not absent
            components = summary.components if summary.counted else 0
            metrics.add_counter("DefectComponents", components, idx, [variant, Dimension("Class", summary.name)])
        metrics.add_time("DefectInferenceTime", answer.timing_ms.inference, idx, "ms", [variant])
