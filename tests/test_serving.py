import pytest
import yaml

from handler.settings import ServingConfig


def test_yaml_round_trip_puts_torchserve_keys_on_top():
    config = ServingConfig(batch_size=4, threads=2, max_image_pixels=1000)
    data = yaml.safe_load(yaml.safe_dump(config.to_yaml_dict()))
    assert data["batchSize"] == 4 and data["minWorkers"] == 1 and data["responseTimeout"] == 120
    assert data["handler"]["threads"] == 2 and "batch_size" not in data["handler"]
    assert ServingConfig.from_yaml_dict(data) == config


def test_missing_yaml_gives_defaults():
    assert ServingConfig.from_yaml_dict(None) == ServingConfig()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threads": 0}, "threads must be a positive whole number"),
        ({"batch_size": -1}, "batch_size must be a positive whole number"),
        ({"tile_size": 1.5}, "tile_size must be a positive whole number"),
        ({"min_workers": 3}, "min_workers 3 exceeds max_workers 1"),
        ({"tile_size": 1000}, "tile_size must be a multiple of 32, got 1000"),
        ({"tile_size": 256, "tile_overlap": 256}, "tile_overlap 256 must be smaller than tile_size 256"),
    ],
)
def test_bad_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        ServingConfig(**change)


def test_unknown_handler_setting_is_named():
    with pytest.raises(ValueError, match="tile_sise"):
        ServingConfig.from_yaml_dict({"handler": {"tile_sise": 3}})
