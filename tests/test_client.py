"""The factory client: A/B arithmetic without a server, then predict, batch, shadow, retries and key rotation
against a real TorchServe."""

import csv
import json
import re
import shutil
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
from training.inference.classes import DEFECT_CLASSES
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


class FakeTime:
    """A clock that moves only when slept on or when a fake request takes its round trip."""

    def __init__(self) -> None:
        self.now, self.slept = 1000.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeSession:
    """Answers POSTs with the given statuses in turn, each taking `round_trip_s` on the fake clock."""

    def __init__(self, statuses: list[int], time_: FakeTime, round_trip_s: float = 0.02) -> None:
        self.statuses, self.time, self.round_trip_s = list(statuses), time_, round_trip_s

    def post(self, *args, **kwargs) -> requests.Response:
        self.time.now += self.round_trip_s
        response = requests.Response()
        response.status_code = self.statuses.pop(0)
        body = {"defect": False} if response.status_code == 200 else {"code": 503, "message": "no worker"}
        response._content = json.dumps(body).encode()
        return response


def test_latency_is_the_callers_whole_wait_with_retries_and_backoff():
    fake = FakeTime()
    client = DefectClient(session=FakeSession([503, 503, 200], fake), sleep=fake.sleep, clock=fake.clock,
                          retries=5, backoff_s=0.5, seed=0)  # fmt: skip
    prediction = client.predict([b"a", b"b", b"c"])
    assert prediction.attempts == 3 and len(fake.slept) == 2 and sum(fake.slept) >= 0.75  # 0.25-0.5 s + 0.5-1 s
    assert prediction.latency_ms == pytest.approx((sum(fake.slept) + 3 * 0.02) * 1e3)
    assert prediction.attempt_ms == pytest.approx(20.0)  # the answering request alone


def raw_folder(folder: Path, layers: list[str], images: list[bytes] | None = None) -> Path:
    """<layer>_a<k>.png files (the given bytes, or placeholders) and a file that forms no triplet."""
    folder.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        for k in range(3):
            (folder / f"{layer}_a{k}.png").write_bytes(images[k] if images else b"placeholder")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_batch_whose_layers_go_unanswered_exits_1_and_says_why(tmp_path, capsys):
    raw = raw_folder(tmp_path / "raw", ["L1", "L2"])
    out = tmp_path / "out.jsonl"
    url = f"http://127.0.0.1:{free_port()}"
    code = client_main(["batch", "--raw", str(raw), "--out", str(out), "--url", url, "--key", "k", "--retries", "0"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 of 2 layers failed: 2 x no answer after 1 attempt (e.g. L1)" in captured.err  # notes.txt not counted
    assert "0 layers answered" in captured.out and str(out) in captured.out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["layer_id"], r["status"], r["error_kind"]) for r in records} == {
        ("L1", "error", "no answer after 1 attempt"),
        ("L2", "error", "no answer after 1 attempt"),
    }


class AnsweringSession:
    """Answers every POST with HTTP 200 and the answer `answer_for` gives for the posted angle0 file's bytes."""

    def __init__(self, answer_for) -> None:
        self.answer_for = answer_for

    def post(self, url, files, **kwargs) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(self.answer_for(files["angle0"][1])).encode()
        return response


def test_the_batch_summary_says_which_layers_are_unlike_the_training_layers(tmp_path):
    raw = raw_folder(tmp_path / "raw", ["usual"], [b"usual"] * 3)
    raw_folder(raw, ["bright"], [b"bright"] * 3)
    reasons = ["exposure_0: median level 0.83 of full scale, trained on 0.21-0.62: check the camera",
               "saturated: 9.0% of pixels at full scale, trained on 0.0%-0.5%: check the camera's exposure"]  # fmt: skip

    def answer_for(image: bytes) -> dict:
        unfamiliar = image == b"bright"
        return {"defect": unfamiliar, "familiarity": {"familiar": not unfamiliar, "reasons": reasons if unfamiliar else [],
                                                      "statistics": {}, "statistics_checked": True}}  # fmt: skip

    client = DefectClient("http://test", key="k", session=AnsweringSession(answer_for), retries=0)
    summary = tmp_path / "summary.csv"
    result = run_batch(client, raw, tmp_path / "out.jsonl", summary, concurrency=1, progress=False)
    assert (result.answered, result.defects, result.unfamiliar) == (2, 1, 1)
    assert "2 layers answered (1 with defects, 1 unlike the training layers;" in result.line()
    rows = {r["layer_id"]: r for r in csv.DictReader(summary.read_text().splitlines())}
    assert (rows["usual"]["familiar"], rows["usual"]["unfamiliar_reasons"]) == ("True", "")
    assert (rows["bright"]["familiar"], rows["bright"]["unfamiliar_reasons"]) == ("False", "; ".join(reasons))


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
    assert {r["familiar"] for r in rows} <= {"True", "False"}  # every answered layer says whether it is familiar
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
    sent = []  # (Authorization header, HTTP status) of every request the client made

    class Recording(requests.Session):
        def post(self, *args, **kwargs):
            response = super().post(*args, **kwargs)
            sent.append((kwargs["headers"].get("Authorization"), response.status_code))
            return response

    client = client_for(torchserve, session=Recording())
    client.predict(layer_files(synthetic))
    old = torchserve.keys()["inference"]
    assert sent == [(f"Bearer {old}", 200)]  # the client holds the old key
    rotated = requests.post(
        f"{torchserve.urls['management']}/token?type=inference",
        headers={"Authorization": f"Bearer {torchserve.keys()['API']}"},
        timeout=10,
    )
    assert rotated.status_code == 200
    new = torchserve.keys()["inference"]
    assert new != old, "the key file still holds the old inference key after rotation"
    angles = {f"angle{k}": path.read_bytes() for k, path in enumerate(layer_files(synthetic))}
    refused = requests.post(f"{torchserve.urls['inference']}/predictions/defect_int8", files=angles,
                            headers={"Authorization": f"Bearer {old}"}, timeout=30)  # fmt: skip
    assert refused.status_code >= 400 and refused.json()["type"] == "InvalidKeyException", refused.text
    sent.clear()
    prediction = client.predict(layer_files(synthetic))
    # the old key was refused, the client re-read the key file, and the new key was accepted
    assert sent == [(f"Bearer {old}", refused.status_code), (f"Bearer {new}", 200)]
    assert prediction.attempts == 1  # a try repeated at once with a re-read key does not count


@pytest.mark.server
def test_the_command_line_predicts_and_reports_ab(torchserve, synthetic, tmp_path, capsys):
    common = ["--url", torchserve.urls["inference"], "--key-file", str(torchserve.key_file)]
    angles = [str(p) for p in layer_files(synthetic, 2)]
    out, overlay = tmp_path / "answer.json", tmp_path / "overlay.png"
    options = ["--pitch", "20", "--ignore-classes", "spatter"]
    assert (
        client_main(["predict", "--angles", *angles, "--out", str(out), "--overlay", str(overlay), *options, *common])
        == 0
    )
    record = json.loads(out.read_text())
    assert record["layer_id"] == "layer_00002" and overlay.stat().st_size > 0
    assert record["answer"]["scale"] == {"pitch_um": 20.0, "source": "request", "note": ""}  # the options were sent
    assert record["answer"]["ignored_classes"] == ["spatter"]
    report = tmp_path / "ab.md"
    code = client_main(["ab-report", "--data", str(synthetic), "--requests", "4", "--report", str(report), *common])
    assert code == 0
    text = report.read_text()
    assert "python -m client ab-report" in text and "defect_int8" in text and "F1" in text
    assert re.search(r"\| defect_int8 \|.* \| \d+ of \d+ \|$", text, re.M)  # unfamiliar layers, counted
    assert re.search(r"^\| spatter \| \d+ \(\d+\) \| \d+ \(\d+\) \| \d+\.\d% \|$", text, re.M)  # per class
    printed = capsys.readouterr().out
    assert "agreement over" in printed
    assert client_main(["predict", "--angles", angles[0], angles[1], "/no/such.png", *common]) == 2


@pytest.mark.server
def test_the_batch_command_exits_1_when_a_layer_is_refused(torchserve, synthetic, tmp_path, capsys):
    common = ["--url", torchserve.urls["inference"], "--key-file", str(torchserve.key_file)]
    raw = raw_folder(tmp_path / "raw", [])
    for index in range(2):
        for path in layer_files(synthetic, index):
            shutil.copy(path, raw / path.name)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.csv"
    batch = ["batch", "--raw", str(raw), "--out", str(out), "--summary", str(summary), *common]
    assert client_main(batch) == 0  # every layer answered; notes.txt is skipped, not a failure
    assert "2 layers answered" in capsys.readouterr().out
    good = [p.read_bytes() for p in layer_files(synthetic, 5)]
    raw_folder(raw, ["bad_layer"], [good[0], b"not a png", good[2]])
    assert client_main(batch) == 1
    captured = capsys.readouterr()
    assert "1 of 3 layers failed: 1 x HTTP 400 unreadable (e.g. bad_layer)" in captured.err, captured.err
    assert "2 layers answered" in captured.out and "1 failed" in captured.out
    records = {r["layer_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"layer_00000", "layer_00001", "bad_layer"}  # the outputs are written all the same
    assert records["bad_layer"]["status"] == "error" and "angle1" in records["bad_layer"]["error"]
    rows = {r["layer_id"]: r for r in csv.DictReader(summary.read_text().splitlines())}
    assert rows["bad_layer"]["error_kind"] == "HTTP 400 unreadable" and rows["layer_00000"]["status"] == "ok"
    assert float(rows["layer_00000"]["latency_ms"]) >= float(rows["layer_00000"]["attempt_ms"]) > 0


@pytest.mark.server
@pytest.mark.slow
def test_a_batch_survives_the_server_stopping_and_starting_again(tiny_store, tmp_path):
    """No layer is lost: requests in flight and those sent while the server is down are retried until it is back
    (with new keys, which the client reads from the new key file)."""
    big = tmp_path / "big"
    for index in range(16):
        write_layer(generate_layer(SynthConfig(size=384), seed=3, index=index), big)
    layer_of = {path.read_bytes(): path.name.rsplit("_a", 1)[0] for path in (big / "raw").glob("*_a0.png")}
    events = []  # (layer id, monotonic time, HTTP status or "no connection") of every request the client made

    class Recording(requests.Session):
        def post(self, *args, **kwargs):
            layer = layer_of[kwargs["files"]["angle0"][1]]
            try:
                response = super().post(*args, **kwargs)
            except requests.ConnectionError:
                events.append((layer, time.monotonic(), "no connection"))
                raise
            events.append((layer, time.monotonic(), response.status_code))
            return response

    ports = {n: free_port() for n in LISTENERS}
    home = tmp_path / "home"
    server = start(tiny_store, home, ("defect_fp32",), ports=ports, foreground=True)
    old_key = server.keys()["inference"]
    client = DefectClient(server.urls["inference"], "defect_fp32", key_file=server.key_file, retries=40,
                          backoff_s=0.2, max_backoff_s=1.0, session=Recording())  # fmt: skip
    out = tmp_path / "out.jsonl"
    outcome = {}
    batch = threading.Thread(
        target=lambda: outcome.update(result=run_batch(client, big / "raw", out, concurrency=2, progress=False)),
        daemon=True,  # a failed test does not wait for the batch's retries
    )
    batch.start()
    try:
        partial = out.with_name("out.jsonl.partial")
        deadline = time.monotonic() + 60
        while not partial.exists() or len(partial.read_text().splitlines()) < 2:
            if time.monotonic() > deadline:
                pytest.fail("the batch answered fewer than 2 layers within 60 s of starting")
            time.sleep(0.05)
        stopping = time.monotonic()
        server.stop()
        assert server.process.poll() is not None, "TorchServe is still running after stop()"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.urls['inference']}/ping", timeout=5)  # really down
        assert batch.is_alive(), "the batch ended before the server stopped: nothing was sent during the outage"
        server = start(tiny_store, home, ("defect_fp32",), ports=ports, foreground=True)  # back: its model is ready
        back = time.monotonic()
        batch.join(timeout=300)
        if batch.is_alive():
            pytest.fail("the batch did not finish within 300 s of the server coming back")
    finally:
        server.stop()
    new_key = server.keys()["inference"]
    assert new_key != old_key and client.keys.get() == new_key  # the client read the restarted server's key
    result = outcome["result"]
    assert (result.answered, result.failed) == (16, 0)
    records = {r["layer_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(records) == 16 and all(r["status"] == "ok" for r in records.values())
    met_outage = {layer for layer, at, status in events if status != 200 and stopping <= at <= back}
    assert met_outage, "no request met the stopped server"
    for layer in met_outage:  # each was answered later, after retries, and its latency counts the wait
        assert records[layer]["attempts"] > 1, records[layer]
        failed = max(at for lay, at, status in events if lay == layer and status != 200)
        assert any(at > failed for lay, at, status in events if lay == layer and status == 200), layer
        assert records[layer]["latency_ms"] > records[layer]["attempt_ms"]


def test_class_totals_and_agreement_over_layers():
    from client.ab_report import class_agreement, class_totals

    spatter = {"name": "spatter", "components": 2, "area_px": 9, "area_mm2": None, "counted": True}
    none = {**spatter, "components": 0, "area_px": 0}
    a = {"L1": {"spatter": spatter}, "L2": {"spatter": none}}
    b = {"L1": {"spatter": none}, "L2": {"spatter": none}}
    assert class_totals(a.values()) == {"spatter": {"components": 2, "area_px": 9, "layers": 1}}
    assert class_agreement(a, b, ["L1", "L2"]) == {"spatter": 0.5}
    assert class_totals([{}]) == {} and class_agreement({"L1": {}}, {"L1": {}}, ["L1"]) == {}


def test_the_csv_has_a_column_per_class_and_millimetres():
    from client.batch import CLASS_COLUMNS, SUMMARY_COLUMNS, _summary_row

    assert {f"{n}_components" for n in DEFECT_CLASSES} <= set(CLASS_COLUMNS) <= set(SUMMARY_COLUMNS)
    summary = [{"name": n, "components": 1, "area_px": 4, "area_mm2": 0.0025, "counted": True} for n in DEFECT_CLASSES]
    answer = {"defect": True, "class_summary": summary, "defect_area_mm2": 0.015, "bbox": [1, 2, 3, 4],
              "bbox_mm": [0.025, 0.05, 0.075, 0.1]}  # fmt: skip
    row = _summary_row({"layer_id": "L", "status": "ok", "answer": answer})
    assert (
        row["spatter_components"] == 1
        and row["pit_area_mm2"] == 0.0025
        and row["bbox_mm"] == "[0.025, 0.05, 0.075, 0.1]"
    )
    binary = _summary_row({"layer_id": "L", "status": "ok", "answer": {"defect": False, "bbox": None}})
    assert binary["spatter_components"] == "" and binary["defect_area_mm2"] == "" and set(row) == set(binary)


def test_the_overlay_boxes_each_region_in_its_class_colour():
    import numpy as np

    from client.overlay import overlay, rgb
    from training.inference.classes import CLASS_COLOURS, UNCLASSIFIED_COLOUR

    stack, mask = np.full((40, 40, 3), 90, np.uint8), np.zeros((40, 40), bool)
    mask[5:9, 5:9] = mask[20:30, 25:30] = True
    components = [{"bbox": [5, 5, 4, 4], "class_name": "spatter"}, {"bbox": [25, 20, 5, 10], "class_name": None}]
    image = overlay(stack, mask, components)
    assert tuple(image[4, 6]) == rgb(CLASS_COLOURS["spatter"])  # the row just above the first box
    assert tuple(image[19, 27]) == rgb(UNCLASSIFIED_COLOUR)
    assert tuple(image[5, 5]) == (255, 0, 255)  # the mask's outline stays magenta
