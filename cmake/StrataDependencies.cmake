# Every third-party dependency, found through CMake packages or pkg-config (Debian 12 packages;
# the Makefile installs them).
find_package(PkgConfig REQUIRED)
find_package(Boost 1.74 REQUIRED COMPONENTS unit_test_framework program_options)
find_package(TBB REQUIRED)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(yaml-cpp REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3 REQUIRED)  # JSON output (summary.json, --json)
find_package(ZLIB REQUIRED)
find_package(Threads REQUIRED)
# ONNX (libonnx-dev, libprotobuf-dev): interop/ only, for `strata import` and `strata export`.
find_package(Protobuf REQUIRED)
find_package(ONNX CONFIG REQUIRED)
# OpenBLAS: backend_tbb loads libopenblas.so.0 at run time (plugins/backend_tbb/openblas.hpp).
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)

# Warnings are errors for our own code.
add_library(strata_warnings INTERFACE)
target_compile_options(strata_warnings INTERFACE -Wall -Wextra -Wpedantic -Werror -Wno-unused-parameter)
