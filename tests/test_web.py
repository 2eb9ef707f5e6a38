"""The inspection page in a real browser (Debian's chromium driven by Playwright, never a downloaded browser)
against a real TorchServe, through the page's own server."""

import dataclasses
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.images_for_tests import encode
from tests.service import answer_of
from training.inference.classes import CLASS_COLOURS, DEFECT_CLASSES, class_label
from training.inference.config import DECISION_FILE
from training.inference.familiarity import statistics_range
from training.inference.loaders import load_variant
from training.inference.tiling import predict_tiled
from training.renderer.synth import SynthConfig, generate_layer
from training.serving.archive import build_archives
from training.serving.launcher import LISTENERS, free_port, start
from web.server import make_server

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / ".venv" / "axe-core" / "axe.min.js"  # from the npm registry, put there by `make test`
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip
SIZE = 96


def write_triplet(images: list[np.ndarray], folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}_a{k}.png" for k in range(3)]
    for path, image in zip(paths, images, strict=True):
        path.write_bytes(encode(image))
    return paths


@pytest.fixture(scope="module")
def layers(tmp_path_factory) -> dict[str, list[Path]]:
    """A layer with defects and a clean one (no defect in its truth), as PNG files."""
    folder = tmp_path_factory.mktemp("page_layers")
    defective = generate_layer(dataclasses.replace(SynthConfig(size=SIZE), clean_fraction=0.0), seed=0, index=6)
    assert defective.truth.any()
    clean = generate_layer(dataclasses.replace(SynthConfig(size=SIZE), clean_fraction=1.0), seed=0, index=1)
    assert not clean.truth.any()
    return {"defective": write_triplet(defective.images, folder, "defective"),
            "clean": write_triplet(clean.images, folder, "clean")}  # fmt: skip


@pytest.fixture(scope="module")
def page_store(tiny_variants, layers, tmp_path_factory) -> Path:
    """Archives of the tiny model with a threshold between its highest probability on the clean layer and on the
    defective one, so the page meets both a fail and a pass (the two-epoch model separates them only so far), and
    with the capture statistics' ranges of those two layers, so a layer from another camera setting is unfamiliar."""
    import torch

    from training.inference.images import read_gray

    models = [load_variant(tiny_variants / f"model_{v}.pt") for v in ("fp32", "int8")]
    peaks, stacks = {}, []
    for name, paths in layers.items():
        stack = np.stack([read_gray(p).pixels for p in paths], axis=-1)
        stacks.append(stack)
        peaks[name] = [float(predict_tiled(model, stack, config).defect.max()) for config, model in models]
    low, high = max(peaks["clean"]), min(peaks["defective"])
    assert high > low + 1e-4, f"the tiny model does not rank the defective layer above the clean one: {peaks}"
    threshold = (low + high) / 2
    folder = tmp_path_factory.mktemp("page_variants")
    for name in ("checkpoint.pt", "model_fp32.pt", "model_int8.pt"):
        shutil.copy(tiny_variants / name, folder / name)
    ranges = {k: list(v) for k, v in statistics_range(stacks, models[0][0]).items()}
    for name in ("model_fp32.pt", "model_int8.pt"):
        payload = torch.load(folder / name, map_location="cpu", weights_only=True)
        payload["model_config"]["input_ranges"] = ranges
        torch.save(payload, folder / name)
    decision = json.loads((tiny_variants / DECISION_FILE).read_text())
    (folder / DECISION_FILE).write_text(json.dumps({**decision, "threshold": threshold, "rule": "between the layers"}))
    store = tmp_path_factory.mktemp("page_store")
    build_archives(folder / "checkpoint.pt", store, backend="pytorch")  # the files whose ranges were set
    return store


@pytest.fixture(scope="module")
def site(page_store, tmp_path_factory):
    """TorchServe and the page's server, both on free loopback ports; stopped afterwards."""
    server = start(page_store, tmp_path_factory.mktemp("page_ts"), ports={n: free_port() for n in LISTENERS},
                   foreground=True)  # fmt: skip
    httpd = make_server(free_port(), server.urls["inference"], server.key_file)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}/", "server": server}
    finally:
        httpd.shutdown()
        httpd.server_close()
        server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors = []
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    opened.goto(site["url"])
    opened.console_errors = errors  # a test that expects an error takes it out
    yield opened
    context.close()
    assert not errors, errors  # no script error, no CSP violation, no failed load


def submit(page, paths: list[Path], variant: str = "int8") -> None:
    for k, path in enumerate(paths):
        page.set_input_files(f"#angle{k}", str(path))
    page.check(f"#variant-{variant}")
    page.click("#submit")


def api_answer(site, paths: list[Path], model: str) -> dict:
    return answer_of(site["server"], model, [p.read_bytes() for p in paths])


def summary(page, variant: str) -> dict[str, str]:
    panel = page.locator(f'.panel[data-variant="{variant}"]')
    return {field: panel.locator(f'[data-field="{field}"]').inner_text() for field in
            ("decision", "max_confidence", "defect_area_pct", "bbox", "components", "variant")}  # fmt: skip


def magenta_pixels(page, variant: str) -> int:
    return page.locator(f'.panel[data-variant="{variant}"] canvas').evaluate(
        """canvas => {
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let count = 0;
            for (let i = 0; i < data.length; i += 4) if (data[i] === 255 && data[i + 1] === 0 && data[i + 2] === 255) count++;
            return count;
        }"""
    )


def colour_pixels(page, variant: str, colour: str) -> int:
    """Pixels of the overlay drawn exactly in a '#RRGGBB' colour."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return page.locator(f'.panel[data-variant="{variant}"] canvas').evaluate(
        """(canvas, rgb) => {
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let count = 0;
            for (let i = 0; i < data.length; i += 4) if (data[i] === rgb[0] && data[i + 1] === rgb[1] && data[i + 2] === rgb[2]) count++;
            return count;
        }""",
        rgb,
    )


def test_a_defective_layer_fails_with_overlay_and_the_api_numbers(page, site, layers):
    from playwright.sync_api import expect

    submit(page, layers["defective"], "int8")
    expect(page.locator("#verdict")).to_contain_text("Fail: defects found (int8", timeout=60_000)
    answer = api_answer(site, layers["defective"], "defect_int8")
    shown = summary(page, "int8")
    assert shown["decision"] == "Fail (defect found)"
    assert shown["max_confidence"] == f"{answer['max_confidence']:.3f}"
    mm2 = "" if answer["defect_area_mm2"] is None else f", {answer['defect_area_mm2']:.3f} mm²"
    assert shown["defect_area_pct"] == f"{answer['defect_area_pct']:.2f} % ({answer['defect_area_px']} px{mm2})"
    mm = "" if answer["bbox_mm"] is None else "; " + ", ".join(f"{v:.2f}" for v in answer["bbox_mm"]) + " mm"
    assert shown["bbox"] == ", ".join(map(str, answer["bbox"])) + " px" + mm
    assert shown["components"] == str(answer["components_total"])
    assert shown["variant"] == f"int8 (defect_int8, version 1.0, {answer['model']['backend']})"
    assert magenta_pixels(page, "int8") > 0  # the outline is drawn
    canvas = page.locator('.panel[data-variant="int8"] canvas')
    assert canvas.get_attribute("aria-label").startswith("The layer with")
    panel = page.locator('.panel[data-variant="int8"]')
    if answer["classes_available"]:  # each region boxed in its class's colour, every class named in text
        assert panel.locator(".class-legend li").all_inner_texts() == [class_label(n) for n in DEFECT_CLASSES]
        first = answer["components"][0]["class_name"]
        assert class_label(first) in canvas.get_attribute("aria-label")
        assert colour_pixels(page, "int8", CLASS_COLOURS[first]) > 0
        rows = panel.locator(".class-table tbody tr")
        assert rows.count() == len(DEFECT_CLASSES) and panel.locator(".class-table").is_visible()
        for c in answer["class_summary"]:
            row = panel.locator(f'.class-table tr[data-class="{c["name"]}"]')
            assert row.locator("td").first.inner_text() == str(c["components"])
    else:
        assert panel.locator(".class-legend li").all_inner_texts() == ["defect (no class)"]
        assert panel.locator(".class-table").is_hidden()
    assert canvas.evaluate("c => [c.width, c.height]") == [SIZE, SIZE]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_defective.png"), full_page=True)


def test_a_clean_layer_passes_and_the_same_layer_from_a_brighter_camera_is_in_doubt(page, layers, tmp_path):
    from playwright.sync_api import expect

    from training.inference.images import read_gray

    submit(page, layers["clean"], "fp32")
    expect(page.locator("#verdict")).to_contain_text("Pass: no defects found (float32)", timeout=60_000)
    assert summary(page, "fp32")["bbox"] == "none"
    assert magenta_pixels(page, "fp32") == 0
    doubt = page.locator('.panel[data-variant="fp32"] .doubt')
    assert doubt.is_hidden() and "unlike" not in page.locator("#verdict").inner_text()
    assert page.locator('.panel[data-variant="fp32"] [data-field="familiar"]').inner_text() == "Yes"
    brighter = [np.clip(read_gray(p).pixels * 1.8, 0, 255).astype(np.uint8) for p in layers["clean"]]
    submit(page, write_triplet(brighter, tmp_path, "brighter"), "fp32")  # exposure up 1.8x: pixels clip
    expect(page.locator("#verdict")).to_contain_text(
        "This layer is unlike the layers the model was trained on: exposure_0: median level", timeout=60_000
    )
    expect(page.locator("#verdict")).to_contain_text("Check the camera and lights before trusting the result.")
    assert doubt.is_visible() and doubt.inner_text().startswith("This layer is unlike the layers")
    assert "saturated: " in doubt.inner_text()
    assert page.locator('.panel[data-variant="fp32"] [data-field="familiar"]').inner_text().startswith("No: check")


def test_both_variants_side_by_side_with_their_agreement(page, layers):
    from playwright.sync_api import expect

    submit(page, layers["defective"], "both")
    expect(page.locator("#agreement")).to_contain_text("mask IoU between them", timeout=60_000)
    assert page.locator(".panel").count() == 2
    for variant in ("fp32", "int8"):
        assert page.locator(f'.panel[data-variant="{variant}"] [data-field="latency"]').inner_text().endswith("ms)")


def choose_by_keyboard(page, path: str) -> None:
    """Space on the focused file input opens the chooser. Headless chromium now and then drops that first key press
    (seen about one run in four, at any of the three inputs); a person would press again, and so does this."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt, timeout in enumerate((5_000, 30_000)):
        try:
            with page.expect_file_chooser(timeout=timeout) as chooser:
                page.keyboard.press("Space")
            chooser.value.set_files(path)
            return
        except PlaywrightTimeout:
            if attempt:
                raise


def test_the_whole_flow_by_keyboard_alone(page, layers):
    from playwright.sync_api import expect

    for k, path in enumerate(layers["defective"]):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == f"angle{k}"
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none", "the focused control shows no focus outline"
        choose_by_keyboard(page, str(path))
        expect(page.locator(f"#angle{k}")).to_have_value(re.compile(re.escape(path.name)))  # chooser closed
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "variant-int8"
    page.keyboard.press("ArrowRight")  # radio group: arrows move the choice
    assert page.evaluate("document.activeElement.id") == "variant-fp32"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "submit"
    page.keyboard.press("Enter")
    expect(page.locator("#verdict")).to_contain_text("(float32", timeout=60_000)


def test_a_bad_file_gives_a_readable_error_announced(page, layers, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "notes.png"
    bad.write_text("these are my notes, not an image")
    submit(page, [layers["defective"][0], bad, layers["defective"][2]], "int8")
    error = page.locator("#error")
    expect(error).to_contain_text("HTTP 400", timeout=60_000)
    expect(error).to_contain_text("angle1")
    assert error.get_attribute("role") == "alert"
    assert page.locator("#verdict").inner_text() == ""
    expected = [e for e in page.console_errors if "status of 400" in e]
    assert len(expected) == 1  # the browser logs the refused request itself
    page.console_errors.remove(expected[0])


def test_a_missing_image_is_named_before_anything_is_sent(page, layers):
    from playwright.sync_api import expect

    page.set_input_files("#angle0", str(layers["clean"][0]))
    page.click("#submit")
    expect(page.locator("#error")).to_have_text("Choose an image for light 1.")


def test_no_serious_or_critical_accessibility_violations(browser, site, layers):
    from playwright.sync_api import expect

    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make test` fetches axe-core from the npm registry")
    context = browser.new_context(bypass_csp=True)  # axe is injected as a script the page's CSP would refuse
    page = context.new_page()
    try:
        page.goto(site["url"])
        submit(page, layers["defective"], "both")  # check the page with its results shown
        expect(page.locator("#agreement")).to_contain_text("mask IoU", timeout=60_000)
        page.add_script_tag(path=str(AXE))
        result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        bad = [
            (v["id"], v["impact"], v["help"]) for v in result["violations"] if v["impact"] in ("serious", "critical")
        ]
        assert not bad, bad
        (ARTIFACTS / "axe_violations.json").write_text(json.dumps(result["violations"], indent=1))
    finally:
        context.close()


def test_the_page_server_serves_only_the_page_and_keeps_the_key(site):
    base = site["url"]
    config = requests.get(base + "config", timeout=10).json()
    assert config["models"] == {"fp32": "defect_fp32", "int8": "defect_int8"}
    assert site["server"].keys()["inference"] not in json.dumps(config)
    assert requests.get(base + "server.py", timeout=10).status_code == 404
    assert requests.post(base + "predictions/other_model", data=b"x", timeout=10).status_code == 404
    headers = requests.get(base, timeout=10).headers
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    with pytest.raises(ValueError, match="loopback"):
        make_server(free_port(), "http://127.0.0.1:1", Path("k.json"), host="0.0.0.0")


def test_torchserve_demands_the_token_on_the_cors_preflight(site):
    """Why the page goes through its own server: a browser's preflight carries no credentials, and TorchServe 0.12
    refuses it, so a page on another origin could never call the API with the key. If this starts to pass a 2xx,
    TorchServe changed and the design can be revisited."""
    preflight = requests.options(
        f"{site['server'].urls['inference']}/predictions/defect_int8",
        headers={
            "Origin": "http://127.0.0.1:8000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 400 and "InvalidKeyException" in preflight.text
