# Two commands do everything on a fresh machine: `make app` and `make test`.
# Both create or repair .venv from the pins in pyproject.toml, and do nothing slow
# when nothing changed.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hohoho-installed
DEMO_DIR ?= data/demo
DEMO_STUDIES ?= 8
DEMO_SEED ?= 2019
PORT ?= 8501

.PHONY: venv app test lint browser pacs demo weights bench generalization clean

# Reinstall when pyproject.toml changed, or when the environment no longer imports.
$(STAMP): pyproject.toml
	@if ! $(PY) -c 'import sys' >/dev/null 2>&1; then \
		echo "creating $(VENV)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)
	@$(PY) -c 'import torch, torchvision, pydicom, streamlit, captum, hohoho_core' >/dev/null 2>&1 \
		|| { echo "repairing $(VENV)"; rm -f $(STAMP); $(MAKE) --no-print-directory $(STAMP); }

# Headless Chromium for the browser tests, from Debian's packages (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian chromium"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

# Orthanc and its DICOMweb plugin for the PACS tests (tests/pacs_fixture.py starts its own
# on a free loopback port), from Debian's packages like Chromium.
pacs:
	@{ command -v Orthanc >/dev/null 2>&1 || test -x /usr/sbin/Orthanc; } \
		&& test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || { \
		echo "installing Debian orthanc and orthanc-dicomweb"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc orthanc-dicomweb; }

$(DEMO_DIR)/stage_2_train.csv: | venv
	$(PY) -m hohoho_core.synthetic --out $(DEMO_DIR) --studies $(DEMO_STUDIES) --seed $(DEMO_SEED)

demo: venv $(DEMO_DIR)/stage_2_train.csv

app: venv demo
	HOHOHO_DEMO_DIR=$(DEMO_DIR) $(PY) -m streamlit run app.py \
		--server.address 127.0.0.1 --server.port $(PORT) --server.headless true \
		--browser.gatherUsageStats false

lint: venv
	$(PY) -m ruff check .

test: venv browser pacs lint
	$(PY) -m pytest

# The shipped model (weights/MODEL_CARD.md): one slice in three windows at 160 px, half of the
# studies of each split domain-randomised, 30 epochs x 280 steps of 32 (docs/ablation.md,
# "Full budget on a GPU"). Stage 1 is nearly all the arithmetic: on one H200 (16 cores) the
# data took about 2 min to generate and cache and stage 1 about 4 min; the later stages took
# about 25 min on the 2-core AMD EPYC. With no GPU, stage 1 alone trains at about 9 images/s
# at 160 px on that CPU: about 9 hours, far over the 90 minutes a CPU-only run should take.
# On a 2-core Zen 5 EPYC (avx512_bf16) the recipe's speed test picks bfloat16 autocast:
# 58 images/s for the model alone (34.5 in fp32; 2026-12-02); with the cache and the
# augmentation, a fine-tune ran at 84-90 images/s: about an hour for this stage 1
# (docs/ablation.md, sixteenth session).
# --device auto uses a GPU when one is visible; on a GPU machine without the rest of the
# toolchain, add --stop-after cnn there and finish here with --cnn-run (train/README.md).
# The shipped CNN + LSTM thresholds were then set by train.shift_thresholds --rules calibrated
# --decide-on ... (train/README.md; docs/ablation.md, fourteenth session), not run here.
weights: venv
	$(PY) -m train.make_demo_weights --out weights --data-dir data/mixed_train --work-dir runs/demo \
		--train-studies 500 --train-positive-studies 0.6 --val-studies 100 --test-studies 100 \
		--epochs 30 --steps-per-epoch 280 --lstm-epochs 30 --gen-size 256 --test-gen-size 256 \
		--mode windows --size 160 --randomise --randomise-fraction 0.5 \
		--device auto --loader-workers 4 --threads 2 --cpu-bf16 auto

bench: venv
	$(PY) -m bench.run_all

# The shipped model on studies from bench/foreign_phantom.py, a generator it never saw.
generalization: venv
	$(PY) -m bench.generalization

clean:
	rm -rf $(VENV) data/demo .pytest_cache
