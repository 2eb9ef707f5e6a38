"""The repository's config.properties: the settings README "Serving" promises."""

import base64
import re
from urllib.parse import urlparse

import numpy as np
import pytest

from handler.settings import ServingConfig
from training.inference.images import encode_png
from training.inference.variants import model_names
from training.serving.launcher import CONFIG, GRPC_LISTENERS, LISTENERS, read_properties

PROPS = read_properties(CONFIG)
MODELS = model_names()


@pytest.mark.parametrize("listener", LISTENERS)
def test_every_http_listener_is_on_loopback(listener):
    assert urlparse(PROPS[f"{listener}_address"]).hostname == "127.0.0.1"


@pytest.mark.parametrize("listener", GRPC_LISTENERS)
def test_the_grpc_listeners_are_on_loopback_too(listener):
    assert PROPS[f"{listener}_address"] == "127.0.0.1"


def test_token_authorization_on_for_a_shift_and_model_api_off():
    assert PROPS["disable_token_authorization"] == "false"
    assert 8 * 60 <= int(PROPS["token_expiration_min"]) <= 24 * 60
    assert PROPS["enable_model_api"] == "false"
    assert PROPS["enable_envvars_config"] == "false"  # the environment cannot switch these off
    assert PROPS["load_models"] == ",".join(f"{m}.mar" for m in MODELS)


def test_allowed_urls_match_only_the_archives_in_the_model_store():
    allowed = re.compile(PROPS["allowed_urls"])
    assert allowed.fullmatch("file:///srv/app/model_store/defect_int8.mar")
    for url in ("https://example.com/defect_int8.mar", "file:///tmp/defect_int8.mar", "file:///etc/passwd",
                "file:///srv/app/model_store/other.mar"):  # fmt: skip
        assert not allowed.fullmatch(url), url


def test_request_size_holds_three_2048_16_bit_pngs_and_no_more():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 65536, (2048, 2048), dtype=np.uint16)  # incompressible: the largest such PNG
    png = len(encode_png(noise))
    as_json = 3 * len(base64.b64encode(b"\0" * png)) + 200  # {"images": [...]} framing
    limit = int(PROPS["max_request_size"])
    assert as_json <= limit <= as_json * 1.02


def test_workers_times_threads_fit_two_cores():
    serving = ServingConfig()
    assert int(PROPS["default_workers_per_model"]) == serving.max_workers
    assert len(MODELS) * serving.max_workers * serving.threads <= 2


def test_metrics_in_prometheus_format_with_the_handler_metrics():
    assert PROPS["metrics_mode"] == "prometheus"
    declared = (CONFIG.parent / PROPS["metrics_config"]).read_text()
    assert "DefectDecisions" in declared and "DefectInferenceTime" in declared


def test_the_client_waits_at_least_as_long_as_the_server_may_take():
    from client.client import DefectClient

    assert DefectClient().timeout >= ServingConfig().response_timeout_s
