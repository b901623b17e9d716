# Strata: the two commands of the quick start.
#   make run    install missing packages, build (Release, in build/), train the default experiment
#   make test   install missing packages, build, run the whole test suite through ctest
#
# Everything a fresh Debian 12 machine needs is listed here; `deps` installs only what is missing
# and says nothing when nothing is.

BUILD_DIR  ?= build
EXPERIMENT ?= experiments/lenet5_fashion.yaml
RUN_DIR    ?= runs/lenet5_fashion
JOBS       ?= $(shell nproc)

BUILD_PACKAGES := build-essential cmake ninja-build pkg-config git \
                  libboost-dev libboost-test-dev libboost-program-options-dev nlohmann-json3-dev libtbb-dev libhdf5-dev libyaml-cpp-dev libfmt-dev \
                  zlib1g-dev libopenblas-dev dataset-fashion-mnist
# The test suite cross-checks checkpoints with h5py and layers with PyTorch.
TEST_PACKAGES  := python3 python3-numpy python3-h5py python3-torch

.PHONY: run test build configure deps deps-test bench clean

run: deps build
	$(BUILD_DIR)/bin/strata train $(EXPERIMENT) --out $(RUN_DIR)

test: deps deps-test build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

bench: deps deps-test build
	/usr/bin/python3 bench/lenet5_vs_pytorch.py --strata $(BUILD_DIR)/bin/strata

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

configure:
	@[ -f $(BUILD_DIR)/build.ninja ] || cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release

deps:
	@sh cmake/install-packages.sh $(BUILD_PACKAGES)

deps-test:
	@sh cmake/install-packages.sh $(TEST_PACKAGES)

clean:
	rm -rf $(BUILD_DIR)
