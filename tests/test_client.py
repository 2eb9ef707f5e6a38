"""The factory client: A/B arithmetic without a server, then predict, batch, shadow, retries and key rotation
against a real TorchServe."""

import csv
import json
import threading
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import requests

from client.__main__ import main as client_main
from client.ab import ABClient, WeightedSplit, bucket, parse_weights
from client.batch import run_batch
from client.client import DefectClient, KeySource, ServiceError
from training.renderer.synth import SynthConfig, generate_layer, write_layer
from training.serving.launcher import LISTENERS, free_port, start

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "response.schema.json").read_text())


def test_weights_parse_normalise_and_explain_mistakes():
    assert parse_weights("defect_fp32=9, defect_int8=1") == {"defect_fp32": 0.9, "defect_int8": 0.1}
    for bad in ("defect_fp32", "a=x", "a=-1", "a=0", "", "a=1,a=2"):
        with pytest.raises(ValueError):
            parse_weights(bad)


def test_split_is_sticky_and_close_to_its_weights_over_400_layer_ids():
    split = WeightedSplit.parse("defect_fp32=0.9,defect_int8=0.1")
    ids = [f"build7_layer_{i:05d}" for i in range(400)]
    chosen = [split.choose(i) for i in ids]
    assert chosen == [split.choose(i) for i in ids]  # the same id always goes to the same variant
    share = Counter(chosen)["defect_int8"] / len(ids)
    assert abs(share - 0.1) < 0.05, share  # binomial sd at n=400 is 0.015
    assert 0 <= bucket("x") < 1 and bucket("x") == bucket("x")
    assert WeightedSplit.parse("only=1").choose("anything") == "only"


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    client = DefectClient(backoff_s=0.5, max_backoff_s=4, seed=0)
    delays = [client.delay(n) for n in range(1, 7)]
    assert 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0 and 1.0 <= delays[2] <= 2.0
    assert all(2.0 <= d <= 4.0 for d in delays[3:])


def test_key_source_prefers_the_given_key_then_the_environment_then_the_file(tmp_path, monkeypatch):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "from-file"}}))
    monkeypatch.delenv("DEFECT_INFERENCE_KEY", raising=False)
    assert KeySource(key_file=key_file).get() == "from-file"
    monkeypatch.setenv("DEFECT_INFERENCE_KEY", "from-env")
    assert KeySource(key_file=key_file).get() == "from-env"
    assert KeySource("given", key_file).get() == "given"


def test_a_refused_connection_is_retried_then_reported():
    sleeps = []
    client = DefectClient(f"http://127.0.0.1:{free_port()}", retries=3, sleep=sleeps.append, seed=1)
    with pytest.raises(ServiceError, match="no answer after 4 attempt"):
        client.predict([b"a", b"b", b"c"])
    assert len(sleeps) == 3


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Eight 96x96 synthetic layers (raw/, truth/), a stray file and an incomplete triplet."""
    out = tmp_path_factory.mktemp("factory")
    for index in range(8):
        write_layer(generate_layer(SynthConfig(size=96), seed=2, index=index), out)
    (out / "raw" / "notes.txt").write_text("not an image")
    (out / "raw" / "lonely_a0.png").write_bytes((out / "raw" / "layer_00000_a0.png").read_bytes())
    return out


def layer_files(synthetic: Path, index: int = 0) -> list[Path]:
    return [synthetic / "raw" / f"layer_{index:05d}_a{k}.png" for k in range(3)]


def client_for(server, **kwargs) -> DefectClient:
    return DefectClient(server.urls["inference"], key_file=server.key_file, **kwargs)


@pytest.mark.server
def test_predict_returns_the_answer_and_who_gave_it(torchserve, synthetic):
    prediction = client_for(torchserve).predict(layer_files(synthetic), "defect_fp32", layer_id="layer_00000")
    assert prediction.model == "defect_fp32" and prediction.attempts == 1 and prediction.latency_ms > 0
    jsonschema.validate(prediction.answer, SCHEMA)


@pytest.mark.server
def test_a_4xx_is_shown_with_its_message_and_not_retried(torchserve, synthetic, tmp_path):
    posts = []

    class Counting(requests.Session):
        def post(self, *args, **kwargs):
            posts.append(1)
            return super().post(*args, **kwargs)

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    client = client_for(torchserve, session=Counting(), retries=4)
    with pytest.raises(ServiceError) as err:
        client.predict([layer_files(synthetic)[0], bad, layer_files(synthetic)[2]])
    assert err.value.status == 400 and err.value.reason == "unreadable" and "angle1" in str(err.value)
    assert len(posts) == 1


@pytest.mark.server
def test_batch_writes_lines_summary_and_overlays_and_reports_skipped_files(torchserve, synthetic, tmp_path):
    split = WeightedSplit.parse("defect_fp32=0.5,defect_int8=0.5")
    result = run_batch(ABClient(client_for(torchserve), split=split), synthetic / "raw", tmp_path / "out.jsonl",
                       tmp_path / "summary.csv", tmp_path / "overlays", concurrency=3, progress=False)  # fmt: skip
    assert (result.answered, result.failed) == (8, 0)
    assert {s["reason"] for s in result.skipped} == {"unrecognised_name", "incomplete_triplet"}
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["layer_id"] for r in lines) == [f"layer_{i:05d}" for i in range(8)]
    for record in lines:
        assert record["model"] == split.choose(record["layer_id"])  # every result records who answered
    rows = list(csv.DictReader((tmp_path / "summary.csv").read_text().splitlines()))
    assert [r["layer_id"] for r in rows] == sorted(r["layer_id"] for r in lines)
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 8
    assert not (tmp_path / "out.jsonl.partial").exists()


@pytest.mark.server
def test_shadow_returns_the_primary_and_compares_the_other(torchserve, synthetic):
    router = ABClient(client_for(torchserve), shadow=("defect_fp32", "defect_int8"))
    prediction, comparison = router.predict(layer_files(synthetic, 3), "layer_00003", return_mask=False)
    assert prediction.model == "defect_fp32" and "mask" not in prediction.answer
    assert 0.0 <= comparison["mask_iou"] <= 1.0
    assert isinstance(comparison["decision_agreement"], bool)
    assert set(comparison["latency_ms"]) == {"defect_fp32", "defect_int8"}
    assert all(v > 0 for v in comparison["latency_ms"].values())
    assert comparison["defect_area_px"]["defect_fp32"] == prediction.answer["defect_area_px"]


@pytest.mark.server
def test_a_rotated_key_is_picked_up_from_the_key_file(torchserve, synthetic):
    client = client_for(torchserve)
    client.predict(layer_files(synthetic))
    rotated = requests.post(
        f"{torchserve.urls['management']}/token?type=inference",
        headers={"Authorization": f"Bearer {torchserve.keys()['API']}"},
        timeout=10,
    )
    assert rotated.status_code == 200
    prediction = client.predict(layer_files(synthetic))  # the old key is refused; the client re-reads the file
    assert prediction.attempts == 1


@pytest.mark.server
def test_the_command_line_predicts_and_reports_ab(torchserve, synthetic, tmp_path, capsys):
    common = ["--url", torchserve.urls["inference"], "--key-file", str(torchserve.key_file)]
    angles = [str(p) for p in layer_files(synthetic, 2)]
    out, overlay = tmp_path / "answer.json", tmp_path / "overlay.png"
    assert client_main(["predict", "--angles", *angles, "--out", str(out), "--overlay", str(overlay), *common]) == 0
    assert json.loads(out.read_text())["layer_id"] == "layer_00002" and overlay.stat().st_size > 0
    report = tmp_path / "ab.md"
    code = client_main(["ab-report", "--data", str(synthetic), "--requests", "4", "--report", str(report), *common])
    assert code == 0
    text = report.read_text()
    assert "python -m client ab-report" in text and "defect_int8" in text and "F1" in text
    printed = capsys.readouterr().out
    assert "agreement over" in printed
    assert client_main(["predict", "--angles", angles[0], angles[1], "/no/such.png", *common]) == 2


@pytest.mark.server
@pytest.mark.slow
def test_a_batch_survives_the_server_stopping_and_starting_again(tiny_store, tmp_path):
    """No layer is lost: requests in flight and those sent while the server is down are retried until it is back
    (with new keys, which the client reads from the new key file)."""
    big = tmp_path / "big"
    for index in range(16):
        write_layer(generate_layer(SynthConfig(size=384), seed=3, index=index), big)
    ports = {n: free_port() for n in LISTENERS}
    home = tmp_path / "home"
    server = start(tiny_store, home, ("defect_fp32",), ports=ports, foreground=True)
    client = DefectClient(server.urls["inference"], "defect_fp32", key_file=server.key_file, retries=40,
                          backoff_s=0.2, max_backoff_s=1.0)  # fmt: skip
    out = tmp_path / "out.jsonl"
    outcome = {}
    batch = threading.Thread(
        target=lambda: outcome.update(result=run_batch(client, big / "raw", out, concurrency=2, progress=False))
    )
    batch.start()
    try:
        partial = out.with_name("out.jsonl.partial")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not partial.exists() or len(partial.read_text().splitlines()) < 2):
            time.sleep(0.05)
        server.stop()
        server = start(tiny_store, home, ("defect_fp32",), ports=ports, foreground=True)
        batch.join(timeout=300)
    finally:
        server.stop()
    assert not batch.is_alive()
    result = outcome["result"]
    assert (result.answered, result.failed) == (16, 0)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["layer_id"] for r in records}) == 16
    assert max(r["attempts"] for r in records) > 1  # some requests did meet the stopped server
