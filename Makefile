# Every target that needs Python creates .venv first, so a fresh clone needs only
# `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
STAMP_BENCH := $(VENV)/.installed-bench

.PHONY: demo test test-soak lint clean screenshots bench bench-quick bench-tls bench-scale bench-observer bench-flood \
	image-wheels image-base image image-test image-clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(STAMP_RUN)

$(STAMP_BENCH): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(BIN)/wsproxy demo

lint: $(STAMP_DEV)
	$(BIN)/ruff check wsproxy tests bench
	$(BIN)/ruff format --check wsproxy tests bench
	$(BIN)/mypy wsproxy

test: lint
	$(BIN)/pytest -q

# 1,000 WebSockets and plain HTTP through a wsproxy process reloaded every
# 10 s, every byte checked (SOAK_SECONDS, default 60); not in `make test`.
SOAK_SECONDS ?= 60
test-soak: $(STAMP_DEV)
	$(BIN)/python -m tests.soak.soak --seconds $(SOAK_SECONDS)

# docs/status-page.png and docs/demo-page.png, shown in README, taken in
# headless Chromium (Debian's chromium and chromium-driver).
screenshots: $(STAMP_DEV)
	$(BIN)/python -m tests.browser.screenshots --out docs

# Side by side with nginx, HAProxy, Caddy and a direct connection (about 10
# minutes); then docs/performance.md's table and chart are regenerated.
bench: $(STAMP_BENCH)
	bench/install.sh
	cd bench && ../$(BIN)/python run.py
	$(BIN)/python bench/report.py

# The same harness for a few seconds: checks that every part starts and runs.
bench-quick: $(STAMP_BENCH)
	bench/install.sh
	cd bench && ../$(BIN)/python run.py --quick --out /tmp/wsproxy-bench-quick

# TLS termination side by side with nginx, HAProxy and Caddy (bench/tls.py).
bench-tls: $(STAMP_BENCH)
	bench/install.sh
	cd bench && ../$(BIN)/python tls.py

# 1,000, 9,900 and 30,000 idle WebSockets through nginx, HAProxy and wsproxy
# (bench/scale.py, about 20 minutes); then docs/performance.md's scale table
# and docs/scale.png are regenerated.  SCALE_ARGS: e.g. --sizes 1000.
SCALE_ARGS ?=
bench-scale: $(STAMP_BENCH)
	bench/install.sh
	cd bench && ../$(BIN)/python scale.py $(SCALE_ARGS)

# Tunnel throughput and proxy CPU per message, frame observer on versus off.
bench-observer: $(STAMP_RUN)
	$(BIN)/python bench/observer.py

# A victim session's round trip while another session floods tiny frames,
# frame observer on and off, and straight to the backend (about 2 minutes).
bench-flood: $(STAMP_RUN)
	$(BIN)/python bench/flood.py

# The container image (deploy/Dockerfile).  Its Python packages are wheels
# built here first, so the image build needs no network: `make image-wheels`,
# then `docker build -f deploy/Dockerfile .` with any engine.  `make image-test`
# builds it without a Docker engine or a registry (buildah, on a Debian base
# made by debootstrap and kept for the next run; as root) and smoke-tests it in
# front of a backend on loopback.
IMAGE := localhost/wsproxy:test
IMAGE_BASE := localhost/wsproxy-base:bookworm
IMAGE_STORAGE := vfs

image-wheels: $(STAMP_RUN)
	deploy/image/wheels.sh $(BIN)/pip deploy/image/wheels

image-base:
	STORAGE_DRIVER=$(IMAGE_STORAGE) deploy/image/base.sh $(IMAGE_BASE)

image: image-wheels image-base
	STORAGE_DRIVER=$(IMAGE_STORAGE) deploy/image/build.sh $(IMAGE) $(IMAGE_BASE)

image-test: image $(STAMP_DEV)
	STORAGE_DRIVER=$(IMAGE_STORAGE) $(BIN)/python -m tests.image.smoke --image $(IMAGE)

# Forget the wheels, the image and the base image (the next build debootstraps again).
image-clean:
	rm -rf deploy/image/wheels
	-buildah --storage-driver $(IMAGE_STORAGE) rmi $(IMAGE) $(IMAGE_BASE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
