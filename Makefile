# One entry point for people, CI and pre-commit alike.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OHIF_VERSION := 3.11.1
OHIF := .cache/ohif/package/dist/index.html

.PHONY: install run demo test lint format bench train clean ohif audit lock gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU wheel; an open range pulls a multi-gigabyte CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install  ## the whole pipeline on this machine (OHIF too where npm is): http://127.0.0.1:8000
	@$(MAKE) --no-print-directory ohif 2>/dev/null \
		|| echo "OHIF viewer not fetched (it needs npm); the portal's own viewer works without it"
	if [ -f $(OHIF) ]; then export RADPIPE_OHIF_DIR=$(CURDIR)/$(dir $(OHIF)); fi; \
		$(BIN)/radpipe up

demo: install  ## push a high-risk and a clean phantom into a running `make run`
	$(BIN)/radpipe demo

ohif: $(OHIF)  ## the prebuilt OHIF viewer from npm, for the viewer test

$(OHIF):
	mkdir -p .cache/ohif
	cd .cache/ohif && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null \
		&& tar xzf ohif-app-$(OHIF_VERSION).tgz && rm ohif-app-$(OHIF_VERSION).tgz

test: install lint ohif  ## start Redis and S3 test servers (pytest fixtures) and run every tier
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check services tests bench scripts
	$(BIN)/ruff format --check services tests bench scripts
	@# mypy cannot follow the editable install's import hook: it checks `radpipe` through a link.
	mkdir -p .cache/mypy && ln -sfn ../../services .cache/mypy/radpipe
	$(BIN)/mypy

audit: install  ## bandit over services/, pip-audit over requirements.lock (scripts/audit.sh)
	BIN=$(BIN) scripts/audit.sh

lock: install  ## re-pin requirements.lock from the virtual environment (the image's constraints)
	@{ sed -n '/^#/p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable \
		| grep -v -E '^(radpipe|torch)=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

format: install
	$(BIN)/ruff check --fix services tests bench scripts
	$(BIN)/ruff format services tests bench scripts

bench: install  ## every benchmark, each against its anchor in the same run
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/capacity.py
	$(BIN)/python bench/deid.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/notify.py
	$(BIN)/python bench/portal.py
	$(BIN)/python bench/tat.py
	$(BIN)/python bench/froc.py
	$(BIN)/python bench/gpu.py

# The packages Radpipe runs with beyond torch, numpy and pytest, as CPython 3.12 wheels at
# requirements.lock's pins, for a CUDA machine that reaches no package index
# (scripts/gpu_check.sh; the project's device machine: carry .cache/gpu-wheels).
gpu-wheels: install  ## wheels for scripts/gpu_check.sh on an offline CUDA machine
	$(BIN)/python scripts/gpu_wheels.py .cache/gpu-wheels

train: install  ## retrain the demo bundle (seeded, minutes on CPU)
	$(BIN)/python scripts/train_demo_bundle.py

clean:
	rm -rf $(VENV) .radpipe .cache .pytest_cache .mypy_cache .ruff_cache
