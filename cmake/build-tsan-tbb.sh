#!/bin/sh
# oneTBB built with ThreadSanitizer, for `make test-tsan` (docs/testing.md).
#
# Debian's libtbb.so is not instrumented: TSan then sees the atomic that finishes a task (header
# code, compiled into Strata) but not the wait that reads it (inside libtbb.so), and reports TBB's
# own hand-offs, and everything a task reads, as races. So the TSan build links a oneTBB compiled
# with -fsanitize=thread from the same upstream source as Debian's libtbb-dev (2021.8.0), fetched
# from Debian's archive and checked against the SHA-256 in Debian's .dsc.
#   usage: build-tsan-tbb.sh PREFIX   (installs PREFIX/lib/cmake/TBB; does nothing if present)
set -eu
prefix=$1
[ -f "$prefix/lib/cmake/TBB/TBBConfig.cmake" ] && exit 0
version=2021.8.0
sha256=7e9111b8bb59c8800bf6d0b06afe7b0891937443d2dae1ee1101c8e2ede6a7ef
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url=http://deb.debian.org/debian/pool/main/o/onetbb/onetbb_$version.orig.tar.xz
echo "oneTBB $version for ThreadSanitizer: $url"
curl -fsS -m 300 -o "$work/tbb.tar.xz" "$url"
echo "$sha256  $work/tbb.tar.xz" | sha256sum -c --quiet
tar -xf "$work/tbb.tar.xz" -C "$work"
CC=clang-14 CXX=clang++-14 cmake -S "$work/oneTBB-$version" -B "$work/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTBB_SANITIZE=thread -DTBB_TEST=OFF -DTBB_STRICT=OFF \
  -DTBBMALLOC_BUILD=OFF -DCMAKE_INSTALL_PREFIX="$prefix" >"$work/configure.log" \
  || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" -j "$(nproc)" >"$work/build.log" || { tail -40 "$work/build.log"; exit 1; }
cmake --install "$work/build" >/dev/null
echo "oneTBB with ThreadSanitizer installed in $prefix"
