"""The answer's one definition (training/inference/answer.py), its generated schema, and the readers of the
answer (the client, the benches, the page) that must use only documented fields."""

import json
import re
from pathlib import Path

import jsonschema
import pytest

from training.inference.answer import Answer, Component, Detection, Familiarity, Light, MaskImage, ModelInfo, Timing
from training.inference.serialize import to_dict
from training.inference.variants import VARIANTS
from training.serving.schema import SCHEMA_FILE, render, response_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = response_schema()
ANSWER = SCHEMA["$defs"]["Answer"]["properties"]
NESTED = {"mask": "MaskImage", "model": "ModelInfo", "timing_ms": "Timing", "components": "Component",
          "familiarity": "Familiarity"}  # fmt: skip


def example(mask: bool = True) -> Answer:
    detection = Detection(True, 0.9, 0.5, 12, 1.5, (1, 2, 3, 4), (Component((1, 2, 3, 4), 12, 0.9),), 1,
                          MaskImage("png", "base64", 8, 8, "AAAA") if mask else None)  # fmt: skip
    return Answer.of(detection, converted_from_colour=("angle1",), lights=(Light("angle0", 0.0),),
                     model=ModelInfo("defect_int8", "int8", "pytorch", "1.0"), timing_ms=Timing(1.0, 2.0, 3.0),
                     familiarity=Familiarity(False, ("exposure_0: median level 0.83 of full scale, trained on "
                                                     "0.21-0.62: check the camera (exposure, gain) or the lights",),
                                             {"exposure_0": 0.83, "saturated": 0.0}, True))  # fmt: skip


def test_the_committed_schema_is_the_one_the_answer_classes_generate():
    assert SCHEMA_FILE.read_text() == render(), "run `python -m training schema`"


def test_typed_answers_validate_and_an_untyped_extra_field_does_not():
    for mask in (True, False):
        answer = to_dict(example(mask))
        jsonschema.validate(answer, SCHEMA)
        assert ("mask" in answer) == mask
    with pytest.raises(jsonschema.ValidationError, match="colour"):
        jsonschema.validate({**to_dict(example()), "colour": "red"}, SCHEMA)


def test_every_answer_says_whether_the_layer_is_like_the_training_layers():
    assert "familiarity" in SCHEMA["$defs"]["Answer"]["required"]
    assert set(SCHEMA["$defs"]["Familiarity"]["required"]) == {"familiar", "reasons", "statistics",
                                                                 "statistics_checked"}  # fmt: skip
    answer = to_dict(example())
    assert answer["familiarity"]["statistics"] == {"exposure_0": 0.83, "saturated": 0.0}
    answer_only = {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/Answer"}  # its errors name the field
    with pytest.raises(jsonschema.ValidationError, match="'familiarity' is a required property"):
        jsonschema.validate({k: v for k, v in answer.items() if k != "familiarity"}, answer_only)
    with pytest.raises(jsonschema.ValidationError, match="'high' is not of type 'number'"):
        jsonschema.validate({**answer, "familiarity": {**answer["familiarity"], "statistics": {"x": "high"}}}, SCHEMA)


def test_the_documented_familiarity_example_is_a_valid_one_with_every_statistic():
    from training.inference.familiarity import statistic_names

    [block] = [b for b in re.findall(r"```json\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
               if b.startswith('"familiarity"')]  # fmt: skip
    documented = json.loads("{" + block + "}")["familiarity"]
    jsonschema.validate(documented, {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/Familiarity"})
    assert tuple(documented["statistics"]) == statistic_names(3)


def _documented(path: str) -> bool:
    top, _, sub = path.partition(".")
    if top not in ANSWER:
        return False
    return not sub or sub in SCHEMA["$defs"][NESTED[top]]["properties"]


def test_the_page_reads_only_documented_fields():
    script = (ROOT / "web" / "app.js").read_text()
    used = set(re.findall(r"\banswer\.([a-z0-9_]+(?:\.[a-z0-9_]+)?)", script))
    used = {u if u.split(".")[0] in NESTED else u.split(".")[0] for u in used}  # answer.bbox.join: a method
    assert {"defect", "bbox", "model.variant", "timing_ms.inference", "familiarity.reasons"} <= used  # the scan works
    assert [u for u in used if not _documented(u)] == []


def test_the_client_and_benches_read_only_documented_fields():
    pattern = re.compile(r"answer(?:\.get\(|\[)\"([a-z0-9_]+)\"(?:[^\[\n]*?\[\"([a-z0-9_]+)\"\])?")
    used = set()
    for path in [*(ROOT / "client").glob("*.py"), *(ROOT / "bench").glob("*.py")]:
        for top, sub in pattern.findall(path.read_text()):
            used.add(f"{top}.{sub}" if sub and top in NESTED else top)
    assert {"defect", "mask.data", "timing_ms", "familiarity"} <= used  # the scan finds what it should
    assert [u for u in used if not _documented(u)] == []


def test_the_page_offers_every_registered_variant():
    page = (ROOT / "web" / "index.html").read_text()
    offered = re.findall(r'name="variant" value="([a-z0-9]+)"', page)
    assert sorted(offered) == sorted([*(v.key for v in VARIANTS), "both"])


def test_error_reasons_are_the_request_parsers():
    from handler.request import REASONS

    assert SCHEMA["$defs"]["ErrorAnswer"]["properties"]["reason"]["enum"] == list(REASONS)
    assert json.loads(SCHEMA_FILE.read_text())["oneOf"][1] == {"$ref": "#/$defs/ErrorAnswer"}
