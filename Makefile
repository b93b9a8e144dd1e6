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

.PHONY: setup demo test bench fmnist-bench clean

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

# The `stamps` surrogate set (objects of other subjects than Fashion-MNIST's) reads Debian's tuxpaint-stamps-default;
# elsewhere point ENCSTEAL_STAMPS_DIR at a folder of PNG images of objects on a transparent ground.
stamps:
	@if [ ! -d $(STAMPS_DIR) ] && command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tuxpaint-stamps-default; \
	fi

demo: setup
	$(BIN)/encsteal demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup  # the Speed table in docs/speed.md
	$(BIN)/python benchmarks/augmentation.py --batch 512
	$(BIN)/python benchmarks/throughput.py --precisions fp32,bf16 --repeats 3

clean:
	rm -rf runs .pytest_cache
