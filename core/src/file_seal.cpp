// The checksum header of Strata's HDF5 files: file_seal.hpp.
#include "file_seal.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string_view>
#include <tuple>
#include <vector>

#include "file_descriptor.hpp"
#include "strata/error.hpp"

namespace strata::file_seal {
namespace {

constexpr std::string_view kMagic = "strata-checksum v1\n";
constexpr std::string_view kEditHint =
    " (or edited without resealing: docs/checkpoint-format.md, \"Integrity\")";

uint32_t crc_of(uint32_t crc, const char* data, std::size_t size) {
  while (size > 0) {
    const auto chunk = static_cast<uInt>(std::min<std::size_t>(size, 1u << 30));
    crc = static_cast<uint32_t>(::crc32(crc, reinterpret_cast<const Bytef*>(data), chunk));
    data += chunk;
    size -= chunk;
  }
  return crc;
}

std::string header_text(uint32_t crc, std::size_t length) {
  return fmt::format("{}crc32 {:08x}\nlength {}\n", kMagic, crc, length);
}

// Reads `size` bytes at `offset`; false at end of file.
bool read_fully(int fd, char* buffer, std::size_t size, off_t offset) {
  while (size > 0) {
    const ssize_t n = ::pread(fd, buffer, size, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("{}", std::strerror(errno));
    if (n == 0) return false;
    buffer += n;
    size -= static_cast<std::size_t>(n);
    offset += n;
  }
  return true;
}

// A block whose first bytes differ from the magic in at most this many bits is a seal whose magic
// was damaged, not an unsealed file: otherwise one flipped bit would turn a sealed file into an
// unsealed one and hand it to HDF5 unchecked. (HDF5's own signature at offset 0 of an unsealed
// file, "\211HDF\r\n\032\n", and a zero user block are dozens of bits away.)
constexpr int kMaxMagicBitErrors = 8;

int bit_distance(std::string_view a, std::string_view b) {
  int bits = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    bits += __builtin_popcount(static_cast<unsigned char>(a[i] ^ b[i]));
  }
  return bits;
}

struct Header {
  bool present = false;
  bool damaged_magic = false;
  uint32_t crc = 0;
  unsigned long long length = 0;
  bool parsed = false;
};

Header read_header(int fd) {
  char block[kUserBlock];
  Header header;
  if (!read_fully(fd, block, kUserBlock, 0)) return header;
  if (std::string_view(block, kMagic.size()) != kMagic) {
    header.damaged_magic =
        bit_distance(std::string_view(block, kMagic.size()), kMagic) <= kMaxMagicBitErrors;
    header.present = header.damaged_magic;
    return header;
  }
  header.present = true;
  const std::string text(block + kMagic.size(), strnlen(block + kMagic.size(), kUserBlock - kMagic.size()));
  unsigned crc = 0;
  char end = 0;
  header.parsed = std::sscanf(text.c_str(), "crc32 %8x\nlength %llu%c", &crc, &header.length, &end) == 3 &&
                  end == '\n';
  header.crc = crc;
  return header;
}

uint32_t crc_of_file(int fd, std::size_t length) {
  std::vector<char> buffer(std::size_t{1} << 20);
  uint32_t crc = static_cast<uint32_t>(::crc32(0, nullptr, 0));
  off_t offset = kUserBlock;
  while (length > 0) {
    const std::size_t chunk = std::min(length, buffer.size());
    if (!read_fully(fd, buffer.data(), chunk, offset)) fail("the file ended early");
    crc = crc_of(crc, buffer.data(), chunk);
    offset += static_cast<off_t>(chunk);
    length -= chunk;
  }
  return crc;
}

}  // namespace

std::string header_for(const char* data, std::size_t size) {
  const uint32_t crc = crc_of(static_cast<uint32_t>(::crc32(0, nullptr, 0)), data, size);
  std::string header = header_text(crc, size);
  header.resize(kUserBlock, '\0');
  return header;
}

std::string verify(const std::filesystem::path& path, bool* sealed) {
  if (sealed != nullptr) *sealed = false;
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return "";  // the HDF5 open that follows reports it
  struct stat status {};
  if (::fstat(fd.get(), &status) != 0) return "";
  using Key = std::tuple<std::string, off_t, ino_t, long, long>;
  static std::mutex mutex;
  static std::map<Key, bool> verified;
  const Key key{path.string(), status.st_size, status.st_ino, status.st_mtim.tv_sec,
                status.st_mtim.tv_nsec};
  {
    std::lock_guard lock(mutex);
    if (verified.count(key) != 0) {
      if (sealed != nullptr) *sealed = true;
      return "";
    }
  }
  try {
    const Header header = read_header(fd.get());
    if (!header.present) return "";
    if (sealed != nullptr) *sealed = true;
    if (header.damaged_magic) {
      return "its checksum header (the first 512 bytes) is damaged: it starts with a corrupted "
             "form of \"strata-checksum v1\"";
    }
    if (!header.parsed) return "its checksum header (the first 512 bytes) is damaged";
    const auto actual = static_cast<unsigned long long>(status.st_size) - kUserBlock;
    if (static_cast<unsigned long long>(status.st_size) < kUserBlock || actual != header.length) {
      return fmt::format("it holds {} bytes after its checksum header, but was saved with {}: the "
                         "file was truncated or extended{}",
                         actual, header.length, kEditHint);
    }
    if (crc_of_file(fd.get(), header.length) != header.crc) {
      return fmt::format("its contents do not match the CRC-32 checksum it was saved with: the file "
                         "was damaged{}",
                         kEditHint);
    }
  } catch (const Error& error) {
    return fmt::format("cannot check its checksum: {}", error.what());
  }
  std::lock_guard lock(mutex);
  verified.emplace(key, true);
  return "";
}

void reseal(const std::filesystem::path& path) {
  FileDescriptor fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (fd.get() < 0) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  struct stat status {};
  if (::fstat(fd.get(), &status) != 0) fail("{}: {}", path.string(), std::strerror(errno));
  if (const Header header = read_header(fd.get()); !header.present || header.damaged_magic) {
    fail("{}: has no Strata checksum header to reseal (only files written by Strata have one)",
         path.string());
  }
  const std::size_t length = static_cast<std::size_t>(status.st_size) - kUserBlock;
  const std::string header = header_text(crc_of_file(fd.get(), length), length);
  std::vector<char> block(kUserBlock, 0);
  std::memcpy(block.data(), header.data(), header.size());
  if (::pwrite(fd.get(), block.data(), kUserBlock, 0) != static_cast<ssize_t>(kUserBlock) ||
      ::fsync(fd.get()) != 0) {
    fail("{}: cannot write its checksum header: {}", path.string(), std::strerror(errno));
  }
}

}  // namespace strata::file_seal
