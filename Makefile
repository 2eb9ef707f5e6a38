# Two commands: `make demo` runs the pipeline, `make test` runs the checks. Both set everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements

.PHONY: setup java browser-deps chromium image image-test demo serve stop web test lint format label-report results results-data results-train results-prototype results-docs clean

setup: $(STAMP) java

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else print(f"note: Python {v[0]}.{v[1]}; pinned torch wheels are cached here for 3.11 only, pip may download them"))' || true
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

# TorchServe needs Java 17 or newer: install it when missing and running as root, else say what to install.
java:
	@if java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Java 17 not found: installing openjdk-17-jre-headless with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	else \
		echo "error: TorchServe needs Java 17. Install it, e.g.: sudo apt-get install openjdk-17-jre-headless"; exit 1; \
	fi

# The pipeline on a small synthetic set: synth (randomised physics, lights at DEMO_LIGHTS) -> prepare (with the
# label-quality report) -> train (quick profile, on the exact truth that synthetic layers come with) -> evaluate
# against exact truth -> quantize to int8 -> archive both variants -> serve them with TorchServe and send one real
# request for a synthetic layer. The server keeps running.
DEMO := data/demo
DEMO_LAYERS ?= 64
# The azimuths of your printer's three lights, in the order of its images (counter-clockwise from +x, degrees).
DEMO_LIGHTS ?= 0,120,240
# Micrometres per pixel of your printer's camera: the served model answers in mm and mm² with it (the synthetic
# layers draw their own pitches, so the model learns defects at many scales).
DEMO_PITCH ?= 25
# The layer sent to the server: a test-split layer with a recoater hopping band, two streaks and spatter.
DEMO_LAYER_ID ?= layer_00023
DEMO_LAYER = $(DEMO)/synth/raw/$(DEMO_LAYER_ID)
demo: setup
	$(PY) -m training synth --out $(DEMO)/synth --layers $(DEMO_LAYERS) --seed 0 --lights $(DEMO_LIGHTS)
	$(PY) -m training prepare --raw $(DEMO)/synth/raw --truth $(DEMO)/synth/truth --out $(DEMO)/processed --report-dir $(DEMO)/report
	$(PY) -m training train --data $(DEMO)/processed --out runs/demo --labels truth --profile quick --pitch $(DEMO_PITCH)
	$(PY) -m training evaluate --checkpoint runs/demo/checkpoint.pt --report runs/demo/results.md
	$(PY) -m training quantize --checkpoint runs/demo/checkpoint.pt --calibration 16
	$(PY) -m training archive --checkpoint runs/demo/checkpoint.pt --out model_store
	@$(PY) -m training stop > /dev/null  # a server left by an earlier demo
	$(PY) -m training serve --probe $(DEMO_LAYER)_a0.png $(DEMO_LAYER)_a1.png $(DEMO_LAYER)_a2.png
	$(PY) -m client ab-report --data $(DEMO)/processed --split test --requests 16 --report runs/demo/ab_report.md
	@echo "demo done: label quality in $(DEMO)/report/label_quality.md; model, curves and results in runs/demo/;"
	@echo "archives in model_store/; A/B report in runs/demo/ab_report.md; TorchServe still running: make stop"

# TorchServe with both variants in the background (archives built from runs/demo when model_store lacks them).
SERVE_CHECKPOINT ?= runs/demo/checkpoint.pt
serve: setup
	@test -f model_store/defect_fp32.mar -a -f model_store/defect_int8.mar || \
		$(PY) -m training archive --checkpoint $(SERVE_CHECKPOINT) --out model_store
	$(PY) -m training serve

stop: $(STAMP)
	$(PY) -m training stop

# The inspection page on http://127.0.0.1:8000 for the server of `make serve` (Ctrl-C stops it).
web: $(STAMP)
	$(PY) -m web --port 8000 --inference-url http://127.0.0.1:8080 --key-file runs/serve/key_file.json

test: setup lint browser-deps
	$(PY) -m pytest

# The serving image (docker/Dockerfile) from the archives in model_store/ (`python -m training archive`, or make demo),
# built with podman on a Debian bookworm base made with debootstrap where no registry answers (podman, runc and
# debootstrap are installed with apt-get when missing and running as root: training/serving/image.py).
image: setup
	$(PY) -m training image --archives model_store

# Builds the image with the tests' tiny archives, runs it, and checks its answers, user, listeners and SIGTERM drain.
image-test: setup
	$(PY) -m pytest tests/test_image.py

# The browser tests drive Debian's chromium (never a browser a test tool downloads) with Playwright, and check
# accessibility with axe-core, fetched from the npm registry and checked against its published sha512.
AXE_VERSION := 4.14.1
AXE_SHA512 := FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==
AXE := $(VENV)/axe-core/axe.min.js
browser-deps: chromium $(AXE)

chromium:
	@if [ -x /usr/bin/chromium ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "chromium not found: installing Debian's chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "error: the browser tests need Debian's chromium at /usr/bin/chromium: sudo apt-get install chromium"; exit 1; \
	fi

$(AXE): $(STAMP)
	$(PY) -m web.vendor axe-core $(AXE_VERSION) $(AXE_SHA512) $@

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Regenerates docs/label_quality.md and its figures (the command is written into the document).
label-report: setup
	$(PY) -m training synth --out data/label-report/synth --layers 200 --seed 0
	$(PY) -m training prepare --raw data/label-report/synth/raw --truth data/label-report/synth/truth --out data/label-report/processed --report-dir docs

clean:
	rm -rf data/demo data/label-report data/results runs/demo runs/serve model_store/*.mar .pytest_cache .ruff_cache

# Regenerates docs/results.md: two trainings (heuristic labels, exact truth) on the same synthetic set, evaluated
# against exact truth. On 2 CPU cores the two trainings run side by side, one core each, for RESULTS_MINUTES,
# with the full profile's schedule and smaller crops and batches (many more steps per minute on a CPU).
RESULTS := data/results
RESULTS_MINUTES ?= 55
results-data: setup
	$(PY) -m training synth --out $(RESULTS)/synth --layers 300 --seed 1
	$(PY) -m training prepare --raw $(RESULTS)/synth/raw --truth $(RESULTS)/synth/truth --out $(RESULTS)/processed --report-dir $(RESULTS)/report

results-train: results-data
	@mkdir -p runs
	OMP_NUM_THREADS=1 $(PY) -m training train --data $(RESULTS)/processed --out runs/results-truth --labels truth --profile full --crop 192 --batch-size 8 --max-minutes $(RESULTS_MINUTES) > runs/results-truth.log 2>&1 & \
	OMP_NUM_THREADS=1 $(PY) -m training train --data $(RESULTS)/processed --out runs/results-heuristic --labels heuristic --profile full --crop 192 --batch-size 8 --max-minutes $(RESULTS_MINUTES) > runs/results-heuristic.log 2>&1 & \
	wait
	@tail -n 1 runs/results-truth.log runs/results-heuristic.log

# The prototype's network (smp's default decoder) trained with the truth model's recipe and budget, alone on one core:
# `bench model` holds the served int8 to its speed on OpenVINO and its accuracy.
PROTOTYPE_DECODER := 256,128,64,32,16
results-prototype: results-data
	@mkdir -p runs
	OMP_NUM_THREADS=1 $(PY) -m training train --data $(RESULTS)/processed --out runs/results-prototype --labels truth --profile full --crop 192 --batch-size 8 --max-minutes $(RESULTS_MINUTES) --decoder $(PROTOTYPE_DECODER) > runs/results-prototype.log 2>&1
	$(PY) -m training evaluate --checkpoint runs/results-prototype/checkpoint.pt --report runs/results-prototype/results.md
	@tail -n 1 runs/results-prototype.log

results: results-train results-prototype
	$(MAKE) results-docs

# The documents from existing runs: results (both models vs truth), int8 agreement, CPU benchmarks, serving latency,
# the A/B report, serving throughput (docs/throughput.md), reliability under load and the serving image (docs/image.md).
results-docs: setup
	$(PY) -m training evaluate --checkpoint runs/results-heuristic/checkpoint.pt --checkpoint runs/results-truth/checkpoint.pt --report docs/results.md
	$(PY) -m training quantize --checkpoint runs/results-truth/checkpoint.pt --report docs/quantization.md --sweep 4,8,16,32,64
	$(PY) -m bench model --checkpoint runs/results-truth/checkpoint.pt $(if $(wildcard runs/results-prototype/decision.json),--prototype runs/results-prototype/checkpoint.pt) --json runs/results-truth/bench.json
	$(PY) -m training archive --checkpoint runs/results-truth/checkpoint.pt --out runs/results-truth/model_store
	$(PY) -m bench serving --model-store runs/results-truth/model_store --json runs/results-truth/serving.json
	$(PY) -m client ab-report --model-store runs/results-truth/model_store --data $(RESULTS)/processed --requests 100 --json runs/results-truth/ab_report.json
	$(PY) -m bench matrix --checkpoint runs/results-truth/checkpoint.pt --json runs/results-truth/matrix.json
	$(PY) -m bench load --checkpoint runs/results-truth/checkpoint.pt --json runs/results-truth/load.json
	$(PY) -m bench image --model-store runs/results-truth/model_store --json runs/results-truth/image.json
