# Two commands do everything on a fresh machine: `make demo` and `make test`.
# `make setup` (run by both) creates .venv and installs what is missing; it does nothing when all is in place.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMPS_DIR := /usr/share/tuxpaint/stamps
# torch/torchvision are pinned only here, to releases that install from a local mirror on the reference
# machine; the package itself accepts any recent torch (see pyproject.toml).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test bench fmnist-bench clean test-services

setup: $(STAMP) fashion-mnist stamps

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist where apt is available; elsewhere point
# ENCSTEAL_DATA at a folder holding torchvision's FashionMNIST layout.
fashion-mnist:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

# What the service tests start for real, from Debian where apt is available (elsewhere those tests are
# skipped, saying why): a throwaway PostgreSQL server, and a headless Chromium with its WebDriver.
test-services:
	@if { ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } \
		&& command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium chromium-driver; \
	fi

# The `stamps` surrogate set (objects of other subjects than Fashion-MNIST's) reads Debian's tuxpaint-stamps-default;
# elsewhere point ENCSTEAL_STAMPS_DIR at a folder of PNG images of objects on a transparent ground.
stamps:
	@if [ ! -d $(STAMPS_DIR) ] && command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tuxpaint-stamps-default; \
	fi

demo: setup
	$(BIN)/encsteal demo

test: setup test-services
	$(BIN)/python -m pytest -q

bench: setup  # the Speed table in docs/speed.md
	$(BIN)/python benchmarks/augmentation.py --batch 512
	$(BIN)/python benchmarks/throughput.py --precisions fp32,bf16 --repeats 3

clean:
	rm -rf runs .pytest_cache
