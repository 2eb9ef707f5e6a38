import base64
import json

import pytest

from handler.request import BadRequest, Options, parse_request, request_options
from training.inference.answer import UNKNOWN_SCALE, Scale
from training.inference.classes import DEFECT_CLASSES
from training.inference.config import ModelConfig
from training.inference.layer import LayerError
from training.inference.serialize import to_dict

IMAGES = [b"img0", b"img1", b"img2"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def refused(request) -> BadRequest:
    with pytest.raises(BadRequest) as err:
        parse_request(request)
    return err.value


def test_multipart_fields_and_text_options():
    request = {"angle0": bytearray(b"img0"), "angle1": b"img1", "angle2": b"img2", "threshold": "0.4"}
    blobs, names, options = parse_request(request)
    assert blobs == IMAGES and names == ["angle0", "angle1", "angle2"] and options == {"threshold": "0.4"}


@pytest.mark.parametrize("as_bytes", [False, True])
def test_json_body_decoded_or_raw(as_bytes):
    body = {"images": [b64(i) for i in IMAGES], "return_mask": False}
    request = {"body": json.dumps(body).encode() if as_bytes else body}
    blobs, names, options = parse_request(request)
    assert blobs == IMAGES and names[1] == "images[1]" and options == {"return_mask": False}


def test_data_urls_are_accepted():
    body = {"images": [f"data:image/png;base64,{b64(i)}" for i in IMAGES]}
    assert parse_request({"body": body})[0] == IMAGES


def test_bad_requests_say_what_was_wrong():
    err = refused({"angle0": b"a", "angle1": b"b"})
    assert err.reason == "image_count" and "angle2" in str(err) and err.code == 400
    err = refused({"angle0": b"a", "angle1": b"b", "angle2": b"c", "angle3": b"d"})
    assert err.reason == "unexpected_field" and "angle3" in str(err)
    assert refused({}).reason == "image_count"
    err = refused({"body": b"{not json"})
    assert err.reason == "invalid_json" and "JSON" in str(err)
    assert refused({"body": b"\x89PNG\r\n\x1a\n\x00"}).reason == "invalid_json"  # one raw image as the body
    assert refused({"body": [1, 2, 3]}).reason == "invalid_json"
    assert refused({"body": {"images": "abc"}}).reason == "invalid_json"
    err = refused({"body": {"images": [b64(b"a"), b64(b"b")]}})
    assert err.reason == "image_count" and "got 2" in str(err)
    assert refused({"body": {"images": [b64(i) for i in IMAGES], "colour": 1}}).reason == "unexpected_field"
    err = refused({"body": {"images": [b64(b"a"), "%%% not base64", b64(b"c")]}})
    assert err.reason == "invalid_base64" and "images[1]" in str(err)
    assert refused({"body": {"images": [b64(b"a"), 7, b64(b"c")]}}).reason == "invalid_base64"


BINARY = ModelConfig(threshold=0.7)
CLASSES = ModelConfig(threshold=0.5, class_names=DEFECT_CLASSES, pitch_um=25.0)


def test_options_default_to_the_model_threshold_and_a_mask():
    assert request_options({}, BINARY) == Options(0.7, True, "binary", (), UNKNOWN_SCALE)
    assert request_options({"threshold": "0.25", "return_mask": "false"}, BINARY) == Options(0.25, False)
    assert request_options({"return_mask": True}, BINARY) == Options(0.7, True)


def test_class_options_and_pitch():
    asked = request_options({"ignore_classes": "spatter, pit", "mask_format": "classes"}, CLASSES)
    assert asked.ignore_classes == ("spatter", "pit") and asked.mask_format == "classes"
    assert request_options({"ignore_classes": ["spatter"]}, CLASSES).ignore_classes == ("spatter",)
    assert request_options({}, CLASSES).scale == Scale(25.0, "model", "")
    assert request_options({"pitch_um": "30.5"}, CLASSES).scale == Scale(30.5, "request", "")
    assert request_options({"pitch_um": 40}, BINARY).scale == Scale(40.0, "request", "")
    assert request_options({}, BINARY).scale.pitch_um is None and "pitch_um" in request_options({}, BINARY).scale.note


@pytest.mark.parametrize(
    "options, config, words",
    [
        ({"threshold": "1.5"}, BINARY, "threshold"),
        ({"threshold": "x"}, BINARY, "threshold"),
        ({"return_mask": "maybe"}, BINARY, "return_mask"),
        ({"pitch_um": "0"}, BINARY, "pitch_um must be above 0"),
        ({"pitch_um": "-25"}, BINARY, "pitch_um must be above 0"),
        ({"pitch_um": "nan"}, BINARY, "pitch_um must be above 0"),
        ({"pitch_um": "wide"}, BINARY, "pitch_um must be a number"),
        ({"pitch_um": True}, BINARY, "pitch_um must be a number"),
        ({"ignore_classes": "spatter,crack"}, CLASSES, "unknown ignore_classes class(es) 'crack'; accepted: recoater"),
        ({"ignore_classes": [3]}, CLASSES, "ignore_classes must be a list of class names"),
        ({"ignore_classes": {"a": 1}}, CLASSES, "ignore_classes must be a list"),
        ({"ignore_classes": "spatter"}, BINARY, "ignore_classes needs a model with defect classes"),
        ({"mask_format": "classes"}, BINARY, "mask_format classes needs a model with defect classes"),
        ({"mask_format": "rgb"}, CLASSES, "mask_format must be one of binary, classes"),
    ],
)
def test_bad_options_are_refused_naming_the_field(options, config, words):
    with pytest.raises(BadRequest) as err:
        request_options(options, config)
    assert err.value.reason == "invalid_option" and err.value.code == 400
    assert words in str(err.value)


def test_layer_errors_map_to_statuses():
    assert BadRequest.from_layer_error(LayerError("too_many_pixels", "m")).code == 413
    error = BadRequest.from_layer_error(LayerError("size_mismatch", "sizes differ"))
    assert error.code == 400 and to_dict(error.answer()) == {
        "code": 400, "type": "BadRequest", "reason": "size_mismatch", "message": "sizes differ"
    }  # fmt: skip


def test_text_and_json_parts_are_refused_as_images_not_crashed_on():
    blobs, _, _ = parse_request({"angle0": "some text", "angle1": b"b", "angle2": b"c"})
    assert blobs[0] == b"some text"  # the decoder then calls it unreadable
    err = refused({"angle0": {"a": 1}, "angle1": b"b", "angle2": b"c"})
    assert err.reason == "unreadable" and "angle0" in str(err)
