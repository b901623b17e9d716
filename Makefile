# Strata: the two commands of the quick start.
#   make run    install missing packages, build (Release, in build/), train the default experiment
#   make test   install missing packages, build, run the whole test suite through ctest
#   make install  build, then install the tool, plugins, libstrata_core, headers, CMake package
#               and strata-plot into PREFIX (default $(HOME)/.local; PREFIX=/usr/local works too)
#
# Everything a fresh Debian 12 machine needs is listed here; `deps` installs only what is missing
# and says nothing when nothing is.

BUILD_DIR  ?= build
EXPERIMENT ?= experiments/lenet5_fashion.yaml
RUN_DIR    ?= runs/lenet5_fashion
JOBS       ?= $(shell nproc)
PREFIX     ?= $(HOME)/.local

BUILD_PACKAGES := build-essential cmake ninja-build pkg-config git \
                  libboost-dev libboost-test-dev libboost-program-options-dev nlohmann-json3-dev libtbb-dev libhdf5-dev libyaml-cpp-dev libfmt-dev \
                  zlib1g-dev libopenblas-dev dataset-fashion-mnist
# The test suite cross-checks checkpoints with h5py and layers with PyTorch, and draws the
# strata-plot pictures with matplotlib; make bench measures peak memory with /usr/bin/time.
TEST_PACKAGES  := python3 python3-numpy python3-h5py python3-torch python3-torchvision python3-matplotlib time
# The fuzz targets need clang's libFuzzer and sanitizer runtimes.
FUZZ_PACKAGES  := clang-14 libclang-rt-14-dev
FUZZ_SECONDS   ?= 60
SANITIZER_ENV  := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
                  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitizers/lsan.supp \
                  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
                  TSAN_OPTIONS=halt_on_error=1:suppressions=$(CURDIR)/tests/sanitizers/tsan.supp

.PHONY: run test build install configure deps deps-test bench clean test-asan test-tsan test-long fuzz

run: deps build
	$(BUILD_DIR)/bin/strata train $(EXPERIMENT) --out $(RUN_DIR)

test: deps deps-test build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

# The kill test with 50 SIGKILLs instead of 10.
test-long: deps deps-test build
	cd $(BUILD_DIR) && KILLS=50 ctest --output-on-failure -R kill_resume

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer (leaks included), in
# build-asan/, and under ThreadSanitizer in build-tsan/.
test-asan: deps deps-test
	@[ -f build-asan/build.ninja ] || cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_SANITIZE=address,undefined
	cmake --build build-asan -j $(JOBS)
	cd build-asan && $(SANITIZER_ENV) ctest --output-on-failure -j $(JOBS)

test-tsan: deps deps-test
	@[ -f build-tsan/build.ninja ] || cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_SANITIZE=thread
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && $(SANITIZER_ENV) ctest --output-on-failure -j $(JOBS) -R "test_kernels|test_layers|test_training|test_reliability"

# Each libFuzzer target for FUZZ_SECONDS seconds (clang, ASan + UBSan), in build-fuzz/. New
# inputs go to build-fuzz/corpus/<target>; crashes to build-fuzz/crash-*.
fuzz: deps deps-test
	@sh cmake/install-packages.sh $(FUZZ_PACKAGES)
	@[ -f build-fuzz/build.ninja ] || CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_SANITIZE=address,undefined -DSTRATA_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS)
	@for t in experiment checkpoint forward_input idx cifar; do \
	  mkdir -p build-fuzz/corpus/$$t; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  (cd build-fuzz && $(SANITIZER_ENV) bin/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=20 \
	     -artifact_prefix=$(CURDIR)/build-fuzz/ corpus/$$t $(CURDIR)/tests/fuzz/corpus/$$t 2>&1 | tail -3) || exit 1; \
	done

bench: deps deps-test build
	/usr/bin/python3 bench/compare_pytorch.py --build $(BUILD_DIR)

install: deps build
	cmake --install $(BUILD_DIR) --prefix $(PREFIX)

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
