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

# The settings of the shipped model (weights/MODEL_CARD.md): plain phantoms, no calibration;
# about 40 minutes on the 2-core Xeon it was made on. The domain-randomised, calibrated recipe
# (--randomise --calibrate, the defaults of make_demo_weights) was measured in
# docs/ablation.md and not shipped. --cpu-bf16 auto: pinning bfloat16 on a CPU without
# bfloat16 units (AVX2 only) runs at 2 images/s.
weights: venv
	$(PY) -m train.make_demo_weights --out weights --data-dir data/demo_train --work-dir runs/demo \
		--train-studies 500 --train-positive-studies 0.6 --val-studies 100 --test-studies 100 \
		--epochs 15 --steps-per-epoch 280 --lstm-epochs 30 --gen-size 256 --test-gen-size 256 \
		--threads 2 --cpu-bf16 auto --no-randomise --no-calibrate

bench: venv
	$(PY) -m bench.run_all

# The shipped model on studies from bench/foreign_phantom.py, a generator it never saw.
generalization: venv
	$(PY) -m bench.generalization

clean:
	rm -rf $(VENV) data/demo .pytest_cache
