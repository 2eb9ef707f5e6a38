from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from handler.settings import ServingConfig
from training.inference import serialize
from training.inference.config import Decision, ModelConfig
from training.inference.quantization import QuantizationConfig
from training.preparation.labels import LabelConfig
from training.preparation.prepare import PrepareConfig
from training.renderer.camera import CameraConfig
from training.renderer.defects import DEFAULT_SPECS, DefectSpec
from training.renderer.surface import SurfaceConfig
from training.renderer.synth import SynthConfig


def _json(data: Any) -> Any:
    return json.loads(json.dumps(data))


def _model_config(config: ModelConfig) -> ModelConfig:
    return ModelConfig.from_dict(_json(config.to_dict()))


def _decision(decision: Decision) -> Decision:
    return serialize.from_dict(Decision, _json(serialize.to_dict(decision)))


def _quantization(config: QuantizationConfig) -> QuantizationConfig:
    return QuantizationConfig.from_dict(_json(config.to_dict()))


def _synth(config: SynthConfig) -> SynthConfig:
    return SynthConfig.from_json(_json(config.to_json()))


def _serving(config: ServingConfig) -> ServingConfig:
    return ServingConfig.from_yaml_dict(yaml.safe_load(yaml.safe_dump(config.to_yaml_dict())))


def _generic(config: Any) -> Any:
    return serialize.from_dict(type(config), _json(serialize.to_dict(config)))


ROUND_TRIPS = [
    (_model_config, ModelConfig()),
    (
        _model_config,
        ModelConfig(
            mean=(0.1, 0.2, 0.3),
            std=(0.5, 0.6, 0.7),
            azimuths_deg=(10.0, 130.0, 250.0),
            threshold=0.42,
            threshold_rule="max-f1 on val vs truth",
            label_source="heuristic",
            training={"layers": 5, "val": {"f1": 0.8}, "pretrained": None},
            quantization={"settings": QuantizationConfig(float_modules=("segmentation_head",)).to_dict()},
        ),
    ),
    (_decision, Decision(0.5, "max-f1", "abc123")),
    (_decision, Decision(0.25, "fixed", "def456", command="python -m training evaluate")),
    (_quantization, QuantizationConfig()),
    (
        _quantization,
        QuantizationConfig("dynamic", "onednn", "minmax", 4, ("segmentation_head", "decoder.blocks.0")),
    ),
    (_synth, SynthConfig()),
    (
        _synth,
        SynthConfig(
            size=64,
            azimuths_deg=(45.0, 165.0, 285.0),
            surface=SurfaceConfig(powder_albedo=0.5, parts_per_layer=(2, 3)),
            camera=CameraConfig(bit_depth=16, vignetting=(0.1, 0.2)),
            defects={**DEFAULT_SPECS, "pit": DefectSpec(1.0, (2, 3), (50.0, 60.0), (5.0, 6.0))},
        ).only_classes(("pit",)),
    ),
    (_serving, ServingConfig()),
    (_serving, ServingConfig(min_workers=2, max_workers=3, batch_size=4, threads=2, tile_overlap=0)),
    (_generic, SurfaceConfig(parts_per_layer=(0, 0))),
    (_generic, CameraConfig(illumination_gradient=(0.0, 0.5))),
    (_generic, DefectSpec(0.1, (1, 1), (1.0, 2.0), (3.0, 4.0))),
    (_generic, LabelConfig(threshold=3.0, open_px=5)),
    (_generic, PrepareConfig()),
    (_generic, PrepareConfig(vote="and", labels=LabelConfig(min_area_px=4), azimuths_deg=(0.0, 90.0, 180.0))),
]


@pytest.mark.parametrize(("round_trip", "config"), ROUND_TRIPS, ids=lambda v: type(v).__name__)
def test_config_round_trips_through_its_artifact_format(round_trip, config):
    assert round_trip(config) == config


@pytest.mark.parametrize("config", [c for _, c in ROUND_TRIPS], ids=lambda v: type(v).__name__)
def test_to_dict_is_json_ready(config):
    data = serialize.to_dict(config)
    assert _json(data) == data  # no tuples, no dataclasses: what JSON gives back is what was written


def test_a_list_from_json_becomes_a_tuple_where_the_field_is_a_tuple():
    config = ModelConfig.from_dict({"mean": [0.1, 0.2, 0.3], "azimuths_deg": [0, 90, 180]})
    assert config.mean == (0.1, 0.2, 0.3) and type(config.mean) is tuple
    assert type(config.azimuths_deg) is tuple and type(config.std) is tuple
    synth = SynthConfig.from_json({"surface": {"parts_per_layer": [2, 2]}, "defects": {"pit": {"count": [1, 3]}}})
    assert synth.surface.parts_per_layer == (2, 2) and type(synth.surface.parts_per_layer) is tuple
    assert synth.defects["pit"].count == (1, 3) and type(synth.defects["pit"].count) is tuple
    assert type(QuantizationConfig.from_dict({"float_modules": ["a"]}).float_modules) is tuple


def test_checkpoint_config_written_by_the_old_code_loads_identically():
    config = ModelConfig(threshold=0.3, training={"layers": 5}, quantization={"settings": {"engine": "x86"}})
    assert ModelConfig.from_dict(dataclasses.asdict(config)) == config  # in a checkpoint: tuples kept
    assert ModelConfig.from_dict(_json(dataclasses.asdict(config))) == config  # in model_config.json: lists
    old = {"threshold": 0.5, "threshold_rule": "default", "azimuths_deg": [0.0, 120.0, 240.0]}  # no newer fields
    assert ModelConfig.from_dict(old) == ModelConfig(threshold=0.5, threshold_rule="default")
    assert ModelConfig.from_dict({**old, "classes": 1}).class_names == ()  # before class names: one output, binary
    with pytest.raises(ValueError, match="predates class names: train it again"):
        ModelConfig.from_dict({**old, "classes": 7})
    with pytest.raises(ValueError, match=r"class_names must be empty .* or the defect classes in their order"):
        ModelConfig(class_names=("spatter", "pit"))
    synth = SynthConfig(size=64).only_classes(("spatter",))
    assert SynthConfig.from_json(_json(dataclasses.asdict(synth))) == synth


def test_keys_left_out_keep_their_defaults_also_when_nested():
    assert ModelConfig.from_dict({}) == ModelConfig()
    assert ServingConfig.from_yaml_dict({"handler": {}}) == ServingConfig()
    synth = SynthConfig.from_json({"surface": {"powder_albedo": 0.5}, "defects": {"pit": {"probability": 1.0}}})
    assert synth.surface == SurfaceConfig(powder_albedo=0.5) and synth.camera == CameraConfig()
    assert synth.defects["pit"] == dataclasses.replace(DEFAULT_SPECS["pit"], probability=1.0)
    assert {n: s for n, s in synth.defects.items() if n != "pit"} == {
        n: s for n, s in DEFAULT_SPECS.items() if n != "pit"
    }


def test_optional_fields_take_none_or_a_value():
    assert PrepareConfig.__dataclass_fields__["azimuths_deg"].default is None
    assert serialize.from_dict(PrepareConfig, {"azimuths_deg": None}).azimuths_deg is None
    given = serialize.from_dict(PrepareConfig, {"azimuths_deg": [0, 90, 180], "split": [0.5, 0.25, 0.25]})
    assert given.azimuths_deg == (0, 90, 180) and type(given.azimuths_deg) is tuple and type(given.split) is tuple
    assert ModelConfig.from_dict({"threshold": None, "quantization": None}) == ModelConfig()


@pytest.mark.parametrize(
    ("load", "data", "named"),
    [
        (ModelConfig.from_dict, {"colour": 1}, "unknown ModelConfig field"),
        (SynthConfig.from_json, {"colour": "blue"}, "unknown synth config key"),
        (SynthConfig.from_json, {"surface": {"colour": "blue"}}, "in surface"),
        (SynthConfig.from_json, {"defects": {"pit": {"colour": "blue"}}}, r"in defects\['pit'\]"),
        (QuantizationConfig.from_dict, {"colour": "blue"}, "unknown quantization setting"),
        (ServingConfig.from_yaml_dict, {"handler": {"colour": "blue"}}, "unknown model-config.yaml handler setting"),
    ],
)
def test_unknown_keys_are_named_with_the_known_ones_and_what_to_do(load, data, named):
    with pytest.raises(ValueError, match=named) as err:
        load(data)
    message = str(err.value)
    assert "'colour'" in message and "known: [" in message and "newer version" in message


def test_unknown_defect_class_is_named_before_its_keys_are_missed():
    with pytest.raises(ValueError, match=r"unknown defect class\(es\) \['pits'\]; choose from: .*pit"):
        SynthConfig.from_json({"defects": {"pits": {"probability": 1.0}}})


def test_torchserve_setting_under_handler_says_where_it_belongs():
    with pytest.raises(ValueError, match=r"\['batch_size'\].*\['batchSize'\]"):
        ServingConfig.from_yaml_dict({"handler": {"batch_size": 2}})


def test_missing_required_field_is_named():
    with pytest.raises(ValueError, match=r"missing Decision field\(s\) \['rule', 'weights_digest'\]"):
        serialize.from_dict(Decision, {"threshold": 0.5})
    with pytest.raises(ValueError, match=r"missing DefectSpec field\(s\) \['count'\]"):
        serialize.from_dict(DefectSpec, {"probability": 0.5, "size_um": [1, 2], "height_um": [1, 2]})


def test_decision_file_is_read_with_the_same_rules(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    decision = Decision(0.4, "max-f1", "abc")
    assert json.loads(decision.write(checkpoint).read_text()) == serialize.to_dict(decision)
    assert Decision.read(checkpoint, "abc") == decision
    (tmp_path / "decision.json").write_text(json.dumps({**serialize.to_dict(decision), "margin": 0.1}))
    with pytest.raises(ValueError, match="'margin'"):
        Decision.read(checkpoint, "abc")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mean": [0.5, 0.5]}, r"mean must have 3 values, got 2"),
        ({"mean": 0.5}, r"mean must be a list, got float"),
        ({"training": [1, 2]}, r"training must be a mapping"),
        ([1, 2], r"ModelConfig must be a mapping"),
    ],
)
def test_values_of_the_wrong_shape_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_nested_value_of_the_wrong_shape_says_where():
    with pytest.raises(ValueError, match=r"camera\.vignetting must be a list"):
        SynthConfig.from_json({"camera": {"vignetting": 0.1}})
    with pytest.raises(ValueError, match="surface must be a mapping"):
        SynthConfig.from_json({"surface": 3})


@dataclass(frozen=True)
class _Leaf:
    name: str
    weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class _Tree:
    leaves: dict[str, _Leaf] = field(default_factory=dict)
    chain: list[_Leaf] = field(default_factory=list)
    best: _Leaf | None = None
    pair: tuple[str, int] = ("a", 1)
    extra: dict[str, Any] = field(default_factory=dict)


def test_generic_nesting_optional_and_containers_of_dataclasses():
    tree = _Tree(
        leaves={"x": _Leaf("x", (1.0, 2.0))},
        chain=[_Leaf("y")],
        best=_Leaf("z", (3.0,)),
        pair=("b", 2),
        extra={"k": [1, {"m": None}]},
    )
    data = serialize.to_dict(tree)
    assert data["leaves"] == {"x": {"name": "x", "weights": [1.0, 2.0]}} and data["best"]["weights"] == [3.0]
    assert serialize.from_dict(_Tree, _json(data)) == tree
    assert serialize.from_dict(_Tree, {"best": None}) == _Tree()


def test_to_dict_needs_a_dataclass_instance():
    with pytest.raises(TypeError):
        serialize.to_dict(ModelConfig)
    with pytest.raises(TypeError):
        serialize.to_dict({"a": 1})
