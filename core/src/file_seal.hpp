// The checksum header of the HDF5 files Strata writes (docs/checkpoint-format.md, "Integrity").
//
// HDF5 checks none of a file's raw data and little of its metadata, and libhdf5 1.10 itself can
// crash on some corrupt files (a damaged global heap makes H5HG_read follow a wild pointer). So
// every file Strata writes reserves HDF5's 512-byte user block, which HDF5 skips, and puts there
//
//   strata-checksum v1\ncrc32 <8 hex digits>\nlength <bytes after the user block>\n
//
// followed by zeros. Before HDF5 sees a file that starts with this header, its length and CRC-32
// are verified, so a damaged or truncated file is refused with a clear error instead of being
// parsed. Files without the header (written by h5py or older Strata) are read as before.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>

namespace strata::file_seal {

inline constexpr std::size_t kUserBlock = 512;

// The kUserBlock bytes that go in front of HDF5's file image `data` (which starts at the
// superblock: HDF5 finds it at offset 512 and reads every address relative to it).
std::string header_for(const char* data, std::size_t size);

// Checks a file that carries the header; returns "" when it is intact or has no header, else what
// is wrong ("its contents do not match ..."). A first block that is within a few bit flips of the
// header's magic counts as a damaged header, not as no header. `sealed` (when given) is set to
// whether the file carries a header, damaged or not. Results are cached by path, size, inode and
// mtime, so the several reads of one load verify the file once.
std::string verify(const std::filesystem::path& path, bool* sealed = nullptr);

// Rewrites the header of a file that has one, after an intentional edit; an Error for a file
// without it.
void reseal(const std::filesystem::path& path);

}  // namespace strata::file_seal
