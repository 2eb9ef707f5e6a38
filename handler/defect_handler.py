"""TorchServe handler: three light images of a layer in, defect decision, areas, boxes and mask out.

A thin BaseHandler subclass over the shared input and output contracts (`training.inference.layer`, `training.inference.tiling`,
`training.inference.answer`), which the archive packs next to the weights. Nothing here is a model constant: the
normalisation, tile size and threshold come from the archive's ModelConfig, the limits from its model-config.yaml.

Each request of a batch is answered on its own: a bad one gets a 4xx JSON error with a message that says what was
wrong, and the others are answered normally. The worker never dies of input.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from ts.metrics.dimension import Dimension
from ts.torch_handler.base_handler import BaseHandler

from handler.request import BadRequest, parse_request, request_options
from handler.settings import ServingConfig
from training.inference.answer import summarize
from training.inference.config import ModelConfig
from training.inference.layer import LayerError, decode_layer
from training.inference.tiling import predict_tiled
from training.inference.variants import load_variant, variant_of

log = logging.getLogger(__name__)


class DefectHandler(BaseHandler):
    """Serves one variant (float32 or int8) of the defect segmentation model."""

    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.serving = ServingConfig.from_yaml_dict(getattr(context, "model_yaml_config", None))
        torch.set_num_threads(self.serving.torch_threads)
        config = ModelConfig.from_dict(json.loads((model_dir / "model_config.json").read_text()))
        weights = model_dir / context.manifest["model"]["serializedFile"]
        self.config, self.model = load_variant(weights, config)
        self.variant = variant_of(self.config)
        self.model_info = {
            "name": context.model_name,
            "variant": self.variant,
            "version": context.manifest["model"].get("modelVersion", ""),
        }
        self.context = context
        self.initialized = True
        log.info("%s: %s model from %s, %d torch thread(s)", context.model_name, self.variant, weights.name,
                 self.serving.torch_threads)  # fmt: skip

    def handle(self, data: list[dict[str, Any]], context) -> list[str]:
        """Answer every request of the batch on its own (compact JSON); a bad one gets its own 4xx."""
        self.context = context
        answers = []
        for idx, request in enumerate(data):
            try:
                answer = self._answer(request, idx)
            except BadRequest as err:
                log.info("request %d refused (%d %s): %s", idx, err.code, err.reason, err)
                context.set_response_status(err.code, err.phrase, idx)
                answer = err.to_dict()
            context.set_response_content_type(idx, "application/json")
            answers.append(json.dumps(answer, separators=(",", ":")))
        return answers

    def _answer(self, request: dict[str, Any], idx: int) -> dict[str, Any]:
        started = time.perf_counter()
        blobs, names, options = parse_request(request)
        threshold, return_mask = request_options(options, self.config.threshold)
        try:
            layer = decode_layer(blobs, names, self.serving.max_image_pixels, min_side=self.config.size_multiple)
        except LayerError as err:
            raise BadRequest.from_layer_error(err) from err
        decoded = time.perf_counter()
        probabilities = predict_tiled(
            self.model, layer.stack, self.config, self.serving.tile_overlap, self.serving.tile_batch
        )  # (H, W) float32
        inferred = time.perf_counter()
        answer = summarize(probabilities, threshold, return_mask, self.serving.max_components)
        answer["converted_from_colour"] = [n for n, c in zip(names, layer.converted_from_colour, strict=True) if c]
        answer["model"] = self.model_info
        done = time.perf_counter()
        answer["timing_ms"] = {
            "decode": round((decoded - started) * 1e3, 2),
            "inference": round((inferred - decoded) * 1e3, 2),
            "postprocess": round((done - inferred) * 1e3, 2),
        }
        self._record(answer, idx)
        return answer

    def _record(self, answer: dict[str, Any], idx: int) -> None:
        """Custom metrics for TorchServe's Prometheus endpoint (declared in handler/metrics.yaml)."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        variant = Dimension("Variant", self.variant)
        decision = Dimension("Decision", "defect" if answer["defect"] else "clean")
        metrics.add_counter("DefectDecisions", 1, idx, [variant, decision])
        metrics.add_time("DefectInferenceTime", answer["timing_ms"]["inference"], idx, "ms", [variant])
