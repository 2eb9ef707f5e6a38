"""The handler with TorchServe's own Context and metrics cache, on an unpacked archive: no server."""

import base64
import dataclasses
import json
import zipfile
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handler.defect_handler import DefectHandler
from tests.conftest import TINY_BACKENDS
from tests.images_for_tests import encode, lit_layer, png_header_only, triplet
from training.inference.classes import DEFECT_CLASSES
from training.inference.config import ModelConfig
from training.inference.familiarity import assess, statistics_range
from training.inference.loaders import load_variant
from training.inference.postprocess import detect
from training.inference.serialize import to_dict
from training.inference.tiling import predict_tiled

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "response.schema.json").read_text())


def unpack(mar: Path, into: Path) -> Path:
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(into)
    return into


def make_context(model_dir: Path) -> Context:
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    metrics = MetricsCacheYamlImpl(config_file_path=str(ROOT / "handler" / "metrics.yaml"))
    metrics.initialize_cache()
    model_yaml = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    name = manifest["model"]["modelName"]
    metrics.model_name = name
    return Context(name, str(model_dir), manifest, 1, None, "0.12.0", metrics=metrics, model_yaml_config=model_yaml)


def serve(handler: DefectHandler, context: Context, batch: list[dict]) -> list[tuple[int, dict]]:
    """What TorchServe's Service.predict does around handle(): request ids and per-request status."""
    context.request_ids = {i: f"req-{i}" for i in range(len(batch))}
    context.metrics.request_ids = context.request_ids
    context.request_processor = [RequestProcessor({}) for _ in batch]
    bodies = handler.handle(batch, context)
    assert len(bodies) == len(batch)
    out = []
    for i, body in enumerate(bodies):
        code, _ = context.get_response_status(i)
        assert context.get_response_content_type(i) == "application/json"
        answer = json.loads(body)
        jsonschema.validate(answer, SCHEMA)
        out.append((code or 200, answer))
    return out


def load_handler(store: Path, folder: Path, variant: str):
    model_dir = unpack(store / f"defect_{variant}.mar", folder)
    context = make_context(model_dir)
    handler = DefectHandler()
    handler.initialize(context)
    return handler, context, model_dir


@pytest.fixture(scope="module", params=["fp32", "int8"])
def loaded(request, tiny_store, tmp_path_factory):
    return load_handler(tiny_store, tmp_path_factory.mktemp(f"unpacked_{request.param}"), request.param)


@pytest.fixture(scope="module")
def loaded_int8(tiny_store, tmp_path_factory):
    """The int8 variant alone, for the large layer (the fast one)."""
    return load_handler(tiny_store, tmp_path_factory.mktemp("unpacked_large"), "int8")


def multipart(blobs, **options) -> dict:
    return {**{f"angle{k}": bytearray(b) for k, b in enumerate(blobs)}, **options}


def layer_blobs(size=96, dtype=np.uint8, seed=0):
    return [encode(im) for im in triplet(size, dtype, seed)]


def test_a_good_triplet_is_answered_as_the_library_answers_it(loaded):
    handler, context, model_dir = loaded
    images = triplet(96)
    [(code, answer)] = serve(handler, context, [multipart([encode(im) for im in images])])
    assert code == 200
    config = ModelConfig.from_dict(json.loads((model_dir / "model_config.json").read_text()))
    _, model = load_variant(model_dir / context.manifest["model"]["serializedFile"])
    expected = to_dict(
        detect(
            predict_tiled(model, np.stack(images, -1), config), config.threshold, True, handler.serving.max_components
        )
    )
    for key in ("defect", "max_confidence", "defect_area_px", "bbox", "components", "components_total", "threshold",
                "classes_available", "class_summary", "scale", "defect_area_mm2", "bbox_mm"):  # fmt: skip
        assert answer[key] == expected[key], key
    assert answer["mask"] == expected["mask"]
    variant = context.model_name.removeprefix("defect_")
    backend = TINY_BACKENDS[variant]
    assert answer["model"] == {"name": context.model_name, "variant": variant, "backend": backend, "version": "1.0"}
    assert answer["lights"] == [{"field": f"angle{k}", "azimuth_deg": a} for k, a in enumerate(config.azimuths_deg)]
    assert set(answer["timing_ms"]) == {"decode", "inference", "postprocess"}
    stack = np.stack(images, -1)
    assert answer["familiarity"] == to_dict(assess(stack, config, expected["defect_area_px"] / stack[..., 0].size))


def test_a_class_model_names_classes_and_a_stated_pitch_gives_millimetres(loaded):
    handler, context, _ = loaded
    assert handler.config.class_names == DEFECT_CLASSES  # the tiny model learned from exact truth
    options = {"threshold": "0.01", "pitch_um": "20", "mask_format": "classes"}
    [(code, answer)] = serve(handler, context, [multipart(layer_blobs(), **options)])
    assert code == 200 and answer["classes_available"] and answer["defect"]
    assert [c["name"] for c in answer["class_summary"]] == list(DEFECT_CLASSES)
    assert sum(c["area_px"] for c in answer["class_summary"]) == answer["defect_area_px"]
    assert all(c["class_name"] in DEFECT_CLASSES and 0 < c["class_confidence"] <= 1 for c in answer["components"])
    assert answer["scale"] == {"pitch_um": 20.0, "source": "request", "note": ""}
    assert answer["defect_area_mm2"] == pytest.approx(answer["defect_area_px"] * 0.02**2, rel=1e-4)
    classes = cv2.imdecode(np.frombuffer(base64.b64decode(answer["mask"]["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert answer["mask"]["kind"] == "classes" and set(np.unique(classes)) <= set(range(len(DEFECT_CLASSES) + 1))
    assert int(np.count_nonzero(classes)) == answer["defect_area_px"]
    every = ",".join(DEFECT_CLASSES)  # every class ignored: nothing is left to decide on
    [(_, none_left)] = serve(handler, context, [multipart(layer_blobs(), threshold="0.01", ignore_classes=every)])
    assert not none_left["defect"] and none_left["defect_area_px"] == 0
    assert not any(c["counted"] for c in none_left["class_summary"])
    assert none_left["ignored_classes"] == list(DEFECT_CLASSES)


def test_json_body_with_threshold_override_and_no_mask(loaded):
    handler, context, _ = loaded
    body = {"images": [base64.b64encode(b).decode() for b in layer_blobs()], "threshold": 0.05, "return_mask": False}
    [(code, low)] = serve(handler, context, [{"body": body}])
    [(_, high)] = serve(handler, context, [{"body": {**body, "threshold": 0.95}}])
    assert code == 200 and low["threshold"] == 0.05 and "mask" not in low
    assert low["defect_area_px"] >= high["defect_area_px"]


def test_colour_and_16_bit_inputs_are_accepted(loaded):
    handler, context, _ = loaded
    gray = triplet(64, np.uint16)
    [(code, answer)] = serve(handler, context, [multipart([encode(im) for im in gray])])
    assert code == 200 and answer["converted_from_colour"] == []
    colour = [encode(np.stack([im] * 3, -1)) for im in triplet(64)]
    [(code, answer)] = serve(handler, context, [multipart(colour)])
    assert code == 200 and answer["converted_from_colour"] == ["angle0", "angle1", "angle2"]


def bad_requests() -> dict[str, tuple[dict, int, str]]:
    good = layer_blobs(64)
    return {
        "missing image": (multipart(good[:2]), 400, "image_count"),
        "extra image": ({**multipart(good), "angle3": bytearray(good[0])}, 400, "unexpected_field"),
        "empty file": (multipart([good[0], b"", good[2]]), 400, "unreadable"),
        "undecodable bytes": (multipart([good[0], b"GIF89a....", good[2]]), 400, "unreadable"),
        "truncated png": (multipart([good[0], good[1][:100], good[2]]), 400, "unreadable"),
        "sizes differ": (multipart([good[0], good[1], layer_blobs(96)[2]]), 400, "size_mismatch"),
        "bit depths differ": (multipart([good[0], good[1], encode(triplet(64, np.uint16)[2])]), 400, "bit_depth_mismatch"),
        "too small": (multipart(layer_blobs(8)), 400, "too_small"),
        "header over the pixel limit": (multipart([good[0], png_header_only(5000, 5000), good[2]]), 413, "too_many_pixels"),
        "decompression bomb": (multipart([png_header_only(30000, 30000), *good[1:]]), 413, "too_many_pixels"),
        "threshold out of range": (multipart(good, threshold="1.5"), 400, "invalid_option"),
        "return_mask not a flag": (multipart(good, return_mask="perhaps"), 400, "invalid_option"),
        "malformed json": ({"body": bytearray(b'{"images": [')}, 400, "invalid_json"),
        "invalid base64": ({"body": {"images": ["@@", "@@", "@@"]}}, 400, "invalid_base64"),
        "no images at all": ({}, 400, "image_count"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(bad_requests()))
def test_bad_input_gets_a_4xx_that_says_why(loaded, case):
    handler, context, _ = loaded
    request, status, reason = bad_requests()[case]
    [(code, answer)] = serve(handler, context, [request])
    assert (code, answer["code"], answer["reason"]) == (status, status, reason)
    assert len(answer["message"]) > 10


def test_a_bad_request_in_a_batch_fails_alone(loaded):
    handler, context, _ = loaded
    good = multipart(layer_blobs(64))
    results = serve(handler, context, [good, multipart(layer_blobs(64)[:2]), good])
    assert [code for code, _ in results] == [200, 400, 200]
    assert results[0][1]["defect_area_px"] == results[2][1]["defect_area_px"]


def test_a_layer_larger_than_a_tile_goes_through_the_tiles_serving_sets(loaded_int8, monkeypatch):
    handler, context, model_dir = loaded_int8
    monkeypatch.setattr(handler, "serving", dataclasses.replace(handler.serving, tile_size=1024, tile_overlap=128))
    images = triplet(2048, np.uint8, seed=3)
    [(code, answer)] = serve(handler, context, [multipart([encode(im) for im in images], return_mask="true")])
    assert code == 200
    assert (answer["mask"]["width"], answer["mask"]["height"]) == (2048, 2048)
    config = ModelConfig.from_dict(json.loads((model_dir / "model_config.json").read_text()))
    config, model = load_variant(model_dir / context.manifest["model"]["serializedFile"], config)
    serving = handler.serving
    probabilities = predict_tiled(model, np.stack(images, -1), config, serving.tile_size, serving.tile_overlap)
    assert answer["defect_area_px"] == detect(probabilities, config.threshold).defect_area_px


def test_custom_metrics_are_emitted(loaded, caplog):
    handler, context, _ = loaded
    with caplog.at_level("INFO"):
        serve(handler, context, [multipart(layer_blobs(64))])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]
    decisions = [line for line in lines if line.startswith("[METRICS]DefectDecisions.")]
    assert decisions and f"Variant:{handler.model_info.variant}" in decisions[-1] and "Decision:" in decisions[-1]
    assert any(line.startswith("[METRICS]DefectInferenceTime.") for line in lines)
    unfamiliar = [line for line in lines if line.startswith("[METRICS]UnfamiliarLayers.")]
    assert unfamiliar and f"Variant:{handler.model_info.variant}" in unfamiliar[-1]
    per_class = [line for line in lines if line.startswith("[METRICS]DefectComponents.")]
    assert {name for name in DEFECT_CLASSES if any(f"Class:{name}" in line for line in per_class)} == set(
        DEFECT_CLASSES
    )


@pytest.fixture(scope="module")
def loaded_with_ranges(tiny_store, tmp_path_factory):
    """The int8 variant served with the capture statistics' ranges of six layers of one camera setting."""
    model_dir = unpack(tiny_store / "defect_int8.mar", tmp_path_factory.mktemp("unpacked_ranges"))
    config = ModelConfig.from_dict(json.loads((model_dir / "model_config.json").read_text()))
    ranges = statistics_range([lit_layer(seed, size=96) for seed in range(6)], config)
    (model_dir / "model_config.json").write_text(json.dumps(config.replace(input_ranges=ranges).to_dict()))
    context = make_context(model_dir)
    handler = DefectHandler()
    handler.initialize(context)
    return handler, context


def test_a_layer_from_a_changed_camera_is_answered_with_the_doubt_and_counted(loaded_with_ranges, caplog):
    handler, context = loaded_with_ranges
    layer = lit_layer(seed=100, size=96)
    bright = np.clip(layer.astype(np.float32) * 1.8, 0, 255).astype(np.uint8)  # exposure up, pixels clip
    with caplog.at_level("INFO"):
        answers = serve(handler, context, [multipart([encode(layer[..., k]) for k in range(3)], threshold="0.99"),
                                           multipart([encode(bright[..., k]) for k in range(3)], threshold="0.99")])  # fmt: skip
    [(_, same), (_, changed)] = answers
    assert same["familiarity"]["familiar"] and same["familiarity"]["reasons"] == []
    assert same["familiarity"]["statistics_checked"] and changed["familiarity"]["statistics_checked"]
    assert not changed["familiarity"]["familiar"]
    named = {reason.split(":")[0] for reason in changed["familiarity"]["reasons"]}
    assert {"exposure_0", "exposure_1", "exposure_2", "saturated"} <= named
    decided = detect(predict_tiled(handler.model, bright, handler.config), 0.99)
    assert (changed["defect"], changed["defect_area_px"]) == (decided.defect, decided.defect_area_px)  # unchanged
    counts = [line.split("|")[0] for line in (r.getMessage() for r in caplog.records)
              if line.startswith("[METRICS]UnfamiliarLayers.")]  # fmt: skip
    assert [float(line.rpartition(":")[2]) for line in counts] == [0.0, 1.0]


# How far the two backends' answers to one layer may differ, at a threshold that flags half of it (the median
# probability: the most pixels near the threshold, the hardest place to agree). float32 runs the same weights, so
# only the order of floating-point sums differs. Each int8 build is its own quantization of them (PyTorch's FX,
# NNCF's) calibrated here on two layers of a two-epoch model, so they agree only roughly; the trained model's
# agreement with float32 is measured by `quantize` (docs/quantization.md).
SAME_WEIGHTS_PROBABILITY = 1e-4  # |difference| of the highest probability
SAME_WEIGHTS_MASK_IOU = 0.999  # of the two defect masks
OWN_QUANTIZATION_MASK_IOU = 0.8


def _mask(answer: dict) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(answer["mask"]["data"]), np.uint8), cv2.IMREAD_UNCHANGED) > 0


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_both_backends_give_the_same_answer_within_the_stated_tolerance(variant, tiny_variants, tmp_path):
    from handler.settings import ServingConfig
    from training.serving.archive import build_archive, served_configs

    images = triplet(128, seed=4)
    config, model = load_variant(tiny_variants / "model_fp32.pt")
    threshold = float(np.median(predict_tiled(model, np.stack(images, -1), config).defect))  # half the layer flagged
    answers = {}
    for backend in ("pytorch", "openvino"):
        weights, served = served_configs(tiny_variants / "checkpoint.pt", backend)[variant]
        build_archive(weights, served, tmp_path / backend, f"defect_{variant}", ServingConfig(), "1.0")
        handler, context, _ = load_handler(tmp_path / backend, tmp_path / f"unpacked_{backend}", variant)
        request = multipart([encode(im) for im in images], threshold=f"{threshold:.6f}")
        [(code, answers[backend])] = serve(handler, context, [request])
        assert code == 200 and answers[backend]["model"]["backend"] == backend
    a, b = answers["pytorch"], answers["openvino"]
    masks = _mask(a), _mask(b)
    assert all(0.2 < m.mean() < 0.8 for m in masks)  # a mask with edges to disagree on
    iou = np.count_nonzero(masks[0] & masks[1]) / np.count_nonzero(masks[0] | masks[1])
    assert a["defect"] == b["defect"] and a["classes_available"] == b["classes_available"]
    if variant == "fp32":
        assert abs(a["max_confidence"] - b["max_confidence"]) <= SAME_WEIGHTS_PROBABILITY
        assert iou >= SAME_WEIGHTS_MASK_IOU
    else:
        assert iou >= OWN_QUANTIZATION_MASK_IOU


def test_the_worker_keeps_a_busy_file_while_it_answers(loaded_int8, monkeypatch, tmp_path):
    """The serving container drains by these files before it stops TorchServe (docker/serve.py)."""
    import os

    from handler.defect_handler import BUSY_DIR_VARIABLE

    handler, context, _ = loaded_int8
    monkeypatch.setenv(BUSY_DIR_VARIABLE, str(tmp_path))
    model, seen = handler.model, []

    def recording(x):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        return model(x)

    monkeypatch.setattr(handler, "model", recording)
    [(code, _)] = serve(handler, context, [multipart(layer_blobs(64))])
    assert code == 200 and seen == [[str(os.getpid())]]
    assert not list(tmp_path.iterdir())  # gone once answered
    [(code, _)] = serve(handler, context, [multipart(layer_blobs(64)[:2])])  # refused: gone all the same
    assert code == 400 and not list(tmp_path.iterdir())
