# Strata: the two commands of the quick start.
#   make run    install missing packages, build (Release, in build/), train the default experiment
#               (anew each time: --overwrite replaces the previous run in RUN_DIR)
#   make test   install missing packages, build, run the whole test suite through ctest
#   make install  build, then install the tool, plugins, libstrata_core, headers, CMake package
#               and strata-plot into PREFIX (default $(HOME)/.local; PREFIX=/usr/local works too)
#
# Everything a fresh Debian 12 machine needs is listed here; `deps` installs only what is missing
# and says nothing when nothing is.

SHELL      := /bin/bash
BUILD_DIR  ?= build
EXPERIMENT ?= experiments/lenet5_fashion.yaml
RUN_DIR    ?= runs/lenet5_fashion
JOBS       ?= $(shell nproc)
PREFIX     ?= $(HOME)/.local

BUILD_PACKAGES := build-essential cmake ninja-build pkg-config git \
                  libboost-dev libboost-test-dev libboost-program-options-dev nlohmann-json3-dev libtbb-dev libhdf5-dev libyaml-cpp-dev libfmt-dev \
                  zlib1g-dev libopenblas-dev libstb-dev dataset-fashion-mnist
BUILD_PACKAGES += libturbojpeg0-dev libpng-dev  # the image_folder reader: JPEG and PNG
BUILD_PACKAGES += openmpi-bin libopenmpi-dev  # plugins/comm_mpi: training and search on MPI
BUILD_PACKAGES += libonnx-dev libprotobuf-dev  # interop/: strata export (and import) of ONNX models
# The test suite cross-checks checkpoints with h5py and layers with PyTorch, and draws the
# strata-plot pictures with matplotlib; make bench measures peak memory with /usr/bin/time.
TEST_PACKAGES  := python3 python3-numpy python3-h5py python3-torch python3-torchvision python3-matplotlib time
TEST_PACKAGES  += python3-pil  # test_image_folder writes its images and PIL's decodes of them
TEST_PACKAGES  += python3-onnx python3-opencv python3-yaml  # exported ONNX models: onnx checker, OpenCV DNN
# The fuzz targets and sanitizer builds need clang's libFuzzer and sanitizer runtimes; test-tsan
# also fetches oneTBB's source from Debian's archive (cmake/build-tsan-tbb.sh).
FUZZ_PACKAGES  := clang-14 libclang-rt-14-dev
TSAN_PACKAGES  := curl xz-utils
FUZZ_SECONDS   ?= 60
# intercept_tls_get_addr=0: clang 14's runtime takes a dynamic TLS block (a dlopened plugin's
# thread_local) whose address is 16 past a page boundary for a glibc 2.19 header, reads a bogus
# range from it, and LeakSanitizer's tracer dies with SIGSEGV at exit (fixed in LLVM 17). The
# blocks stay reachable through each thread's DTV, which LeakSanitizer scans with the static TLS.
SANITIZER_ENV  := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1:intercept_tls_get_addr=0 \
                  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitizers/lsan.supp \
                  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
                  TSAN_OPTIONS=halt_on_error=1:suppressions=$(CURDIR)/tests/sanitizers/tsan.supp

.PHONY: run test build install configure deps deps-test bench clean test-asan test-tsan test-long fuzz asan-build

run: deps build
	$(BUILD_DIR)/bin/strata train $(EXPERIMENT) --out $(RUN_DIR) --overwrite

test: deps deps-test build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

# The kill test with 50 SIGKILLs instead of 10.
test-long: deps deps-test build
	cd $(BUILD_DIR) && KILLS=50 ctest --output-on-failure -R kill_resume

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer (leaks included), less the
# slow whole-network script tests labelled release_only and the mpirun tests labelled mpi
# (tests/CMakeLists.txt; their code runs here in-process, docs/testing.md "MPI"). It runs in
# build-asan/, a clang build that also holds the libFuzzer targets, so its suite includes a brief
# run of each (STRATA_FUZZ_RUNS mutations) and `make fuzz` reuses the build. docs/testing.md.
test-asan: asan-build
	cd build-asan && $(SANITIZER_ENV) ctest --output-on-failure -j $(JOBS) -LE 'release_only|mpi'

# The tbb backend and everything concurrent (kernels, layers, the training loop with its prefetching
# loader, search trials in parallel, the reliability cases) under ThreadSanitizer, in build-tsan/.
TSAN_TESTS := test_kernels|test_layers|test_blocks|test_training|test_thread_communicator|test_reliability|test_search|test_datasets|test_toolbox|test_transforms|test_image_folder|test_hdf5_dataset
test-tsan: deps deps-test
	@sh cmake/install-packages.sh $(FUZZ_PACKAGES) $(TSAN_PACKAGES)
	sh cmake/build-tsan-tbb.sh $(CURDIR)/build-tsan-tbb
	@[ -f build-tsan/build.ninja ] || CC=clang-14 CXX=clang++-14 cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_SANITIZE=thread -DTBB_DIR=$(CURDIR)/build-tsan-tbb/lib/cmake/TBB
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && $(SANITIZER_ENV) ctest --output-on-failure -j $(JOBS) -R "$(TSAN_TESTS)"

# Each libFuzzer target for FUZZ_SECONDS seconds, in build-asan/. New inputs go to
# build-asan/corpus/<target>; crashes to build-asan/crash-*.
fuzz: asan-build
	@set -o pipefail; for t in experiment checkpoint forward_input idx cifar; do \
	  mkdir -p build-asan/corpus/$$t; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s, log in build-asan/fuzz_$$t.log"; \
	  (cd build-asan && $(SANITIZER_ENV) bin/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	     -timeout=20 -print_final_stats=1 -artifact_prefix=$(CURDIR)/build-asan/ corpus/$$t \
	     $(CURDIR)/tests/fuzz/corpus/$$t) >build-asan/fuzz_$$t.log 2>&1 \
	    || { tail -40 build-asan/fuzz_$$t.log; exit 1; }; \
	  grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^Done" build-asan/fuzz_$$t.log; \
	done

asan-build: deps deps-test
	@sh cmake/install-packages.sh $(FUZZ_PACKAGES)
	@[ -f build-asan/build.ninja ] || CC=clang-14 CXX=clang++-14 cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_SANITIZE=address,undefined -DSTRATA_FUZZ=ON
	cmake --build build-asan -j $(JOBS)

bench: deps deps-test build
	/usr/bin/python3 bench/compare_pytorch.py --build $(BUILD_DIR)
	/usr/bin/python3 bench/data_loader_vs_pytorch.py --build $(BUILD_DIR)

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
