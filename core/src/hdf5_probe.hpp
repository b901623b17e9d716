// Reading an HDF5 file Strata did not seal, without letting libhdf5 crash the process
// (docs/checkpoint-format.md, "Integrity").
//
// libhdf5 1.10 trusts a file's metadata: a flipped bit in an h5py-written file can make it follow a
// wild pointer (SIGSEGV in H5G__dense_iterate, H5HG_read) where no API call reports an error. A
// file with Strata's checksum header is verified before HDF5 sees it (file_seal.hpp); for any
// other file, probe() first reads everything Strata could read from it in a child process
// (fork()), and reports a crash, a non-zero exit or a hang there as a damaged file. Only when the
// child read the whole file without crashing does the caller open it in-process. The same bytes
// take the same paths through libhdf5, so what did not crash in the child does not crash in the
// parent.
//
// The child calls only libhdf5 (which runs no threads of its own in Debian's serial build), malloc
// (fork-safe in glibc), async-signal-safe system calls and _exit(): no Strata error, no exception,
// no lock another thread of the parent could hold. The caller holds the process-wide HDF5 lock, so
// no other thread is inside libhdf5 when the process forks.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <string>

namespace strata::hdf5_probe {

// A chunked dataset is refused when the bytes its shape claims exceed the bytes it stores times
// this ratio, plus kSlackBytes: deflate, the only compressing filter libhdf5 ships with, cannot
// exceed 1032:1, and a chunk never written (read as the fill value) stores nothing.
inline constexpr double kMaxCompressionRatio = 1100.0;
inline constexpr uint64_t kSlackBytes = uint64_t{1} << 20;

// Whether `dataset`'s storage plausibly holds `claimed` bytes (its element count times its file
// element size): a contiguous or compact dataset must store every byte, a chunked one at least
// (claimed - kSlackBytes) / kMaxCompressionRatio. Sets `stored` (bytes stored) and `chunked`.
// Throws nothing (the probe child calls it too); when HDF5 cannot answer, the answer is true and
// the read that follows reports the failure.
bool storage_plausible(hid_t dataset, long double claimed, uint64_t& stored, bool& chunked);

// "" when `path` (an unsealed HDF5 file) can be read, else what happened to the child that read
// it: "reading it crashed libhdf5 (signal 11, SIGSEGV)". Results are cached per path, device,
// inode, size, modification and change time. Must be called with the HDF5 lock held and HDF5's
// error printing off (checkpoint.cpp's QuietHdf5); `access` is the file access property list the
// caller opens the file with.
std::string probe(const std::filesystem::path& path, hid_t access);

}  // namespace strata::hdf5_probe
