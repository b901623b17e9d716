// datasets/image_folder: the `image_folder` dataset type, a folder of JPEG and PNG files.
//
// WHAT THIS OBJECT REPRESENTS
//   Images on disk, decoded one at a time on demand (read() is called from many loader threads
//   at once): JPEG through libjpeg-turbo's TurboJPEG API, PNG through libpng. A split is either
//   a folder in torchvision's ImageFolder layout or a list file of `path,label` lines.
//
// CONFIGURATION
//   train: a folder in torchvision ImageFolder layout, <train>/<class>/<file>: files are found
//        recursively under each class folder (directory symbolic links are followed; a link back
//        to a folder above it is an error), classes are sorted by name and a class's label is its
//        index in that order. Files of a class are in torchvision's order (by folder, then name).
//        Regular files directly in <train> are ignored, as torchvision does.
//        OR a list file (a regular file): one `path,label` per line, the path relative to the list
//        file's folder (or absolute), the label an integer >= 0; blank lines and lines starting
//        with '#' are ignored; the label is after the last comma, so a path may hold commas.
//        Required.
//   test: the same for the test split (required when the test split is opened). For folders the
//        class list comes from `train`: a test class folder that is not a train class is an
//        error naming it; a train class missing from test is fine (labels are by name).
//        train and test must both be folders or both be list files.
//   channels: 3 (default) or 1: every image converts to it. Grey to RGB replicates; RGB to grey
//        is ITU-R 601-2 luma as PIL's convert("L") computes it on 8-bit values
//        ((R*19595 + G*38470 + B*7471 + 0x8000) >> 16, i.e. R*299/1000 + G*587/1000 + B*114/1000
//        rounded); alpha (RGBA, grey + alpha) is dropped without compositing, as PIL's
//        convert("RGB"); palette PNGs expand to their RGB colours (transparency ignored); 16-bit
//        PNGs keep their 16 bits (value / 65535; luma computed in float); CMYK and YCCK JPEGs
//        convert to RGB as PIL does (PIL always assumes Adobe's inverted CMYK).
//   classes: list files only, optional: the number of classes (default 1 + the largest train
//        label). A label >= classes is an error naming the list file and line.
//   class_names: list files only, optional: one name per class. Folders name their classes.
//   extensions: the file name endings that are images in class folders, compared
//        case-insensitively; default [.jpg, .jpeg, .png]. Hidden files and folders (name starting
//        with '.') are skipped. Any other file in a class folder is an error at open() that names
//        it: remove the file, or add its extension here. Files named by a list file are not
//        checked by extension.
//   min_size: 0 (default) decodes JPEGs at full size. N > 0 lets libjpeg-turbo's DCT scaling
//        decode a JPEG at the smallest scale M/8 (M = 1..8) whose shorter side is still >= N
//        (full size when the image is smaller than that). Only a decoding speed-up for large
//        photos: the transforms (resize, crops) then give the images their size. PNGs are always
//        decoded at full size.
//
// ENSURES
//   - sample_shape() is [channels, 0, 0] (images vary in size); class_names() are the class
//     folder names (folders) or `class_names` (list files); num_classes() their count.
//   - Construction reads the train split's class folders (or its list file); open() lists the
//     split's files without decoding any (Errors naming the path: missing path, no class folders,
//     an empty class folder, a symbolic link loop, a file with another extension, a list line
//     that is malformed, names a missing file or has a label out of range).
//   - read(i) decodes file i into [channels, H, W] float32 in [0, 1] (value / 255, or / 65535
//     for 16-bit PNG). The format is found from the content, not the name (a PNG named .jpg
//     decodes). BadSample, naming the file and the sample index, for: an unreadable or empty
//     file, content that is neither JPEG nor PNG, a truncated or corrupt image (a libjpeg-turbo
//     warning such as "premature end of data" counts: no grey filler is ever returned), an image
//     of more than 2^28 pixels, a file of more than 1 GiB.
//   - EXIF orientation is not applied (neither does torchvision's PIL loader).
#include <fcntl.h>
#include <png.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <csetjmp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "strata/config.hpp"
#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/file_check.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"
#include "strata/tensor.hpp"

namespace {

namespace fs = std::filesystem;
using strata::BadSample;
using strata::Config;
using strata::fail;
using strata::Image;

constexpr uint64_t kMaxPixels = uint64_t{1} << 28;
constexpr uint64_t kMaxListFileBytes = uint64_t{1} << 30;
constexpr uint64_t kMaxImageFileBytes = uint64_t{1} << 30;  // no JPEG or PNG this large is a sample

std::string lowercase(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

bool hidden(const fs::path& path) { return path.filename().string().starts_with('.'); }

// ---------------------------------------------------------------------------------------------
// Pixel conversion: interleaved 8- or 16-bit samples to planar float [channels, H, W].

// PIL's rgb2l (Convert.c): ITU-R 601-2 luma on 8-bit values, rounded.
inline uint8_t luma8(uint32_t r, uint32_t g, uint32_t b) {
  return static_cast<uint8_t>((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
}

const std::array<float, 256>& byte_scale() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int v = 0; v < 256; ++v) t[v] = static_cast<float>(v) / 255.0f;
    return t;
  }();
  return table;
}

// `in` holds `in_channels` interleaved 8-bit samples per pixel: 1 grey, 2 grey+alpha, 3 RGB,
// 4 RGBA. Alpha is dropped.
void convert8(const uint8_t* in, int in_channels, int64_t height, int64_t width, int channels,
              Image& out) {
  out.resize(channels, height, width);
  const auto& scale = byte_scale();
  const int64_t n = height * width;
  const bool colour = in_channels >= 3;
  if (channels == 3) {
    float* r = out.plane(0);
    float* g = out.plane(1);
    float* b = out.plane(2);
    for (int64_t i = 0; i < n; ++i, in += in_channels) {
      if (colour) {
        r[i] = scale[in[0]];
        g[i] = scale[in[1]];
        b[i] = scale[in[2]];
      } else {
        r[i] = g[i] = b[i] = scale[in[0]];
      }
    }
  } else {
    float* l = out.plane(0);
    for (int64_t i = 0; i < n; ++i, in += in_channels) {
      l[i] = scale[colour ? luma8(in[0], in[1], in[2]) : in[0]];
    }
  }
}

// As convert8 for 16-bit samples (host order): value / 65535, luma in float with PIL's weights.
void convert16(const uint16_t* in, int in_channels, int64_t height, int64_t width, int channels,
               Image& out) {
  out.resize(channels, height, width);
  constexpr float kScale = 1.0f / 65535.0f;
  const int64_t n = height * width;
  const bool colour = in_channels >= 3;
  if (channels == 3) {
    float* r = out.plane(0);
    float* g = out.plane(1);
    float* b = out.plane(2);
    for (int64_t i = 0; i < n; ++i, in += in_channels) {
      if (colour) {
        r[i] = static_cast<float>(in[0]) * kScale;
        g[i] = static_cast<float>(in[1]) * kScale;
        b[i] = static_cast<float>(in[2]) * kScale;
      } else {
        r[i] = g[i] = b[i] = static_cast<float>(in[0]) * kScale;
      }
    }
  } else {
    float* l = out.plane(0);
    for (int64_t i = 0; i < n; ++i, in += in_channels) {
      if (colour) {
        const double luma = (in[0] * 19595.0 + in[1] * 38470.0 + in[2] * 7471.0) / 65536.0;
        l[i] = static_cast<float>(luma / 65535.0);
      } else {
        l[i] = static_cast<float>(in[0]) * kScale;
      }
    }
  }
}

// PIL's MULDIV255.
inline int muldiv255(int a, int b) {
  const int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

// Raw CMYK samples as libjpeg gives them (Adobe's inverted polarity, which PIL always assumes:
// rawmode "CMYK;I") to RGB in place of the first three bytes of each pixel, as PIL's cmyk2rgb.
void cmyk_to_rgb(uint8_t* pixels, int64_t count) {
  for (int64_t i = 0; i < count; ++i, pixels += 4) {
    const int nk = pixels[3];  // 255 - k, k = 255 - stored
    for (int c = 0; c < 3; ++c) {
      const int value = 255 - pixels[c];
      pixels[c] = static_cast<uint8_t>(std::clamp(nk - muldiv255(value, nk), 0, 255));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// JPEG through TurboJPEG: one decompressor per thread.

class TurboHandle {
 public:
  TurboHandle() = default;
  TurboHandle(const TurboHandle&) = delete;
  TurboHandle& operator=(const TurboHandle&) = delete;
  ~TurboHandle() { reset(); }
  tjhandle get() {
    if (handle_ == nullptr) handle_ = tjInitDecompress();
    if (handle_ == nullptr) {
      fail("dataset image_folder: tjInitDecompress failed: {}", tjGetErrorStr2(nullptr));
    }
    return handle_;
  }
  // After a failed decode: libjpeg-turbo 2.1 leaves a decompressor whose header read failed in a
  // state where every later file fails with the same message, so the next file gets a new one.
  void reset() {
    if (handle_ != nullptr) tjDestroy(handle_);
    handle_ = nullptr;
  }

 private:
  tjhandle handle_ = nullptr;
};

// One decompressor per thread: read() is called from many threads at once.
TurboHandle& thread_decompressor() {
  thread_local TurboHandle handle;
  return handle;
}

const std::vector<tjscalingfactor>& reducing_factors() {
  static const std::vector<tjscalingfactor> factors = [] {
    int count = 0;
    const tjscalingfactor* all = tjGetScalingFactors(&count);
    std::vector<tjscalingfactor> kept;
    for (int i = 0; i < count; ++i) {
      if (all[i].num <= all[i].denom) kept.push_back(all[i]);
    }
    // Smallest scale first.
    std::sort(kept.begin(), kept.end(), [](const tjscalingfactor& a, const tjscalingfactor& b) {
      return a.num * b.denom < b.num * a.denom;
    });
    return kept;
  }();
  return factors;
}

// The smallest scale whose shorter side is still >= min_size (1/1 when none is).
tjscalingfactor pick_scale(int width, int height, int min_size) {
  if (min_size > 0) {
    for (const tjscalingfactor& factor : reducing_factors()) {
      if (std::min(TJSCALED(width, factor), TJSCALED(height, factor)) >= min_size) return factor;
    }
  }
  return tjscalingfactor{1, 1};
}

// Thrown inside the decoders with the message's tail; read() adds the file and index.
struct DecodeProblem {
  std::string what;
};

void decode_jpeg(const std::vector<uint8_t>& bytes, int channels, int min_size, Image& out,
                 std::vector<uint8_t>& buffer) {
  TurboHandle& owner = thread_decompressor();
  tjhandle handle = owner.get();
  // Throws the decompressor's message, then drops the decompressor (see TurboHandle::reset).
  const auto problem = [&](std::string_view what) {
    DecodeProblem result{fmt::format("{}: {}", what, tjGetErrorStr2(handle))};
    owner.reset();
    throw result;
  };
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
  if (tjDecompressHeader3(handle, bytes.data(), static_cast<unsigned long>(bytes.size()), &width,
                          &height, &subsampling, &colorspace) != 0) {
    problem("corrupt JPEG header");
  }
  const tjscalingfactor factor = pick_scale(width, height, min_size);
  const int64_t w = TJSCALED(width, factor);
  const int64_t h = TJSCALED(height, factor);
  if (static_cast<uint64_t>(w) * static_cast<uint64_t>(h) > kMaxPixels) {
    throw DecodeProblem{
        fmt::format("JPEG of {}x{} pixels is larger than the 2^28 pixels allowed", width, height)};
  }
  int format = TJPF_RGB;
  int in_channels = 3;
  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) {
    format = TJPF_CMYK;
    in_channels = 4;
  } else if (colorspace == TJCS_GRAY) {
    format = TJPF_GRAY;
    in_channels = 1;
  }
  buffer.resize(static_cast<std::size_t>(w * h * in_channels));
  // Every warning (a truncated file's "premature end of data" included) is a failure: libjpeg
  // would otherwise fill the missing part with grey and report success.
  if (tjDecompress2(handle, bytes.data(), static_cast<unsigned long>(bytes.size()), buffer.data(),
                    static_cast<int>(w), 0, static_cast<int>(h), format,
                    TJFLAG_STOPONWARNING) != 0) {
    problem(tjGetErrorCode(handle) == TJERR_WARNING ? "truncated or corrupt JPEG data"
                                                    : "corrupt JPEG data");
  }
  if (format == TJPF_CMYK) {
    cmyk_to_rgb(buffer.data(), w * h);
  }
  convert8(buffer.data(), in_channels, h, w, channels, out);
}

// ---------------------------------------------------------------------------------------------
// PNG through libpng. libpng reports errors by longjmp; the frame that calls setjmp holds no
// object with a destructor, and every buffer it fills belongs to the caller.

struct PngSource {
  const uint8_t* data;
  std::size_t size;
  std::size_t offset;
};

struct PngState {
  char message[256];
  bool refused = false;  // set by the allocator: `message` is the whole reason, not libpng's
};

void png_read_memory(png_structp png, png_bytep out, png_size_t count) {
  auto* source = static_cast<PngSource*>(png_get_io_ptr(png));
  if (source->size - source->offset < count)
    png_error(png, "truncated file (premature end of data)");
  std::memcpy(out, source->data + source->offset, count);
  source->offset += count;
}

void png_on_error(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(state->message, sizeof state->message, "%s", message);
  png_longjmp(png, 1);
}

void png_on_warning(png_structp, png_const_charp) {}

struct PngInfo {
  png_uint_32 width = 0, height = 0;
  int channels = 0, bit_depth = 0;
  std::size_t row_bytes = 0;
};

// Reads the header (with the transforms set) into `info`, then, after `allocate(info)` returned a
// buffer of height * row_bytes bytes and sized `rows` to height, the pixels. Returns false with
// state.message on an error.
template <class Allocate>
bool png_decode(const std::vector<uint8_t>& bytes, PngState& state, PngInfo& info,
                Allocate& allocate, std::vector<png_bytep>& rows) {
  png_structp png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, png_on_error, png_on_warning);
  if (png == nullptr) {
    std::snprintf(state.message, sizeof state.message, "png_create_read_struct failed");
    return false;
  }
  png_infop header = png_create_info_struct(png);
  if (header == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    std::snprintf(state.message, sizeof state.message, "png_create_info_struct failed");
    return false;
  }
  PngSource source{bytes.data(), bytes.size(), 0};
  if (setjmp(png_jmpbuf(png)) != 0) {
    png_destroy_read_struct(&png, &header, nullptr);
    return false;
  }
  png_set_read_fn(png, &source, png_read_memory);
  png_set_user_limits(png, 1u << 24, 1u << 24);
  png_read_info(png, header);
  const int color_type = png_get_color_type(png, header);
  const int depth = png_get_bit_depth(png, header);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_swap(png);  // host (little-endian) order
  png_set_interlace_handling(png);
  png_read_update_info(png, header);
  info.width = png_get_image_width(png, header);
  info.height = png_get_image_height(png, header);
  info.channels = png_get_channels(png, header);
  info.bit_depth = png_get_bit_depth(png, header);
  info.row_bytes = png_get_rowbytes(png, header);
  png_bytep pixels = allocate(info);
  if (pixels == nullptr) {
    png_destroy_read_struct(&png, &header, nullptr);
    return false;
  }
  for (png_uint_32 y = 0; y < info.height; ++y) rows[y] = pixels + y * info.row_bytes;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &header, nullptr);
  return true;
}

void decode_png(const std::vector<uint8_t>& bytes, int channels, Image& out,
                std::vector<uint8_t>& buffer) {
  PngState state{};
  PngInfo info;
  std::vector<png_bytep> rows;
  // Never throws: an exception must not leave png_decode() between setjmp and its cleanup.
  auto allocate = [&](const PngInfo& header) noexcept -> png_bytep {
    state.refused = true;
    if (uint64_t{header.width} * header.height > kMaxPixels) {
      std::snprintf(state.message, sizeof state.message,
                    "PNG of %ux%u pixels is larger than the 2^28 pixels allowed",
                    static_cast<unsigned>(header.width), static_cast<unsigned>(header.height));
      return nullptr;
    }
    try {
      buffer.resize(header.row_bytes * header.height);
      rows.resize(header.height);
    } catch (const std::bad_alloc&) {
      std::snprintf(state.message, sizeof state.message,
                    "not enough memory for a PNG of %ux%u pixels",
                    static_cast<unsigned>(header.width), static_cast<unsigned>(header.height));
      return nullptr;
    }
    state.refused = false;
    return buffer.data();
  };
  if (!png_decode(bytes, state, info, allocate, rows)) {
    if (state.refused) throw DecodeProblem{state.message};
    throw DecodeProblem{fmt::format("truncated or corrupt PNG data: {}", state.message)};
  }
  if (info.bit_depth == 16) {
    std::vector<uint16_t> samples(buffer.size() / 2);
    std::memcpy(samples.data(), buffer.data(), samples.size() * 2);
    convert16(samples.data(), info.channels, info.height, info.width, channels, out);
  } else {
    convert8(buffer.data(), info.channels, info.height, info.width, channels, out);
  }
}

// ---------------------------------------------------------------------------------------------
// Files

// The whole file; DecodeProblem when it cannot be read.
void read_file(const std::string& path, std::vector<uint8_t>& bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw DecodeProblem{fmt::format("cannot open: {}", std::strerror(errno))};
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat status {};
  if (::fstat(fd, &status) != 0)
    throw DecodeProblem{fmt::format("cannot stat: {}", std::strerror(errno))};
  if (!S_ISREG(status.st_mode)) throw DecodeProblem{"is not a regular file"};
  if (static_cast<uint64_t>(status.st_size) > kMaxImageFileBytes) {
    throw DecodeProblem{fmt::format("is {} bytes, more than the 1 GiB an image file may hold",
                                    static_cast<uint64_t>(status.st_size))};
  }
  bytes.resize(static_cast<std::size_t>(status.st_size));
  std::size_t have = 0;
  while (have < bytes.size()) {
    const ssize_t got = ::read(fd, bytes.data() + have, bytes.size() - have);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw DecodeProblem{fmt::format("read error: {}", std::strerror(errno))};
    }
    if (got == 0) break;  // shrank while reading
    have += static_cast<std::size_t>(got);
  }
  bytes.resize(have);
}

std::string first_bytes(const std::vector<uint8_t>& bytes) {
  std::string hex;
  for (std::size_t i = 0; i < std::min<std::size_t>(bytes.size(), 8); ++i) {
    hex += fmt::format("{}{:02x}", i == 0 ? "" : " ", bytes[i]);
  }
  return hex;
}

bool is_jpeg(const std::vector<uint8_t>& b) {
  return b.size() >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff;
}

bool is_png(const std::vector<uint8_t>& b) {
  static constexpr uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  return b.size() >= 8 && std::memcmp(b.data(), kSignature, 8) == 0;
}

// ---------------------------------------------------------------------------------------------
// Listing

struct Sample {
  std::string path;
  int32_t label;
};

struct DecodeOptions {
  int channels = 3;
  int min_size = 0;
};

class ImageFolderSplit final : public strata::SplitReader {
 public:
  ImageFolderSplit(std::vector<Sample> samples, DecodeOptions options, std::string split)
      : samples_(std::move(samples)), options_(options), split_(std::move(split)) {
    labels_.reserve(samples_.size());
    for (const Sample& sample : samples_) labels_.push_back(sample.label);
  }
  int64_t size() const override { return static_cast<int64_t>(samples_.size()); }
  std::span<const int32_t> labels() const override { return labels_; }
  std::string describe(int64_t index) const override {
    if (index < 0 || index >= size()) return fmt::format("sample {}", index);
    return samples_[static_cast<std::size_t>(index)].path;
  }

  void read(int64_t index, Image& out) const override {
    if (index < 0 || index >= size()) {
      fail("dataset image_folder: {} sample {} requested, but the split has {}", split_, index,
           size());
    }
    const std::string& path = samples_[static_cast<std::size_t>(index)].path;
    thread_local std::vector<uint8_t> bytes;
    thread_local std::vector<uint8_t> pixels;
    try {
      read_file(path, bytes);
      if (bytes.empty()) throw DecodeProblem{"is empty (0 bytes)"};
      if (is_jpeg(bytes)) {
        decode_jpeg(bytes, options_.channels, options_.min_size, out, pixels);
      } else if (is_png(bytes)) {
        decode_png(bytes, options_.channels, out, pixels);
      } else {
        throw DecodeProblem{fmt::format("is not a JPEG or PNG image (it starts with bytes {})",
                                        first_bytes(bytes))};
      }
    } catch (const DecodeProblem& problem) {
      throw BadSample(fmt::format("dataset image_folder: {} sample {} ({}): {}", split_, index,
                                  path, problem.what));
    }
    // Large files leave large buffers behind; let them go.
    if (bytes.capacity() > (std::size_t{64} << 20)) std::vector<uint8_t>().swap(bytes);
    if (pixels.capacity() > (std::size_t{64} << 20)) std::vector<uint8_t>().swap(pixels);
  }

 private:
  std::vector<Sample> samples_;
  std::vector<int32_t> labels_;
  DecodeOptions options_;
  std::string split_;
};

// A folder's entries (hidden ones skipped), sorted by name; an Error naming it when it cannot be
// listed.
std::vector<fs::directory_entry> list_folder(const fs::path& folder) {
  std::vector<fs::directory_entry> entries;
  std::error_code ec;
  fs::directory_iterator it(folder, ec);
  if (ec) fail("dataset image_folder: cannot list folder {}: {}", folder.string(), ec.message());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (!hidden(it->path())) entries.push_back(*it);
  }
  if (ec) fail("dataset image_folder: cannot list folder {}: {}", folder.string(), ec.message());
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.path().filename() < b.path().filename(); });
  return entries;
}

fs::path canonical_or_fail(const fs::path& path) {
  std::error_code ec;
  fs::path result = fs::canonical(path, ec);
  if (ec) fail("dataset image_folder: cannot resolve {}: {}", path.string(), ec.message());
  return result;
}

bool is_folder(const fs::path& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);  // follows symbolic links
}

// "" when `path` (symbolic links followed) is a regular file, else what it is. Whether it can be
// read is left to read(): an unreadable file is a BadSample there, which on_bad_image can skip.
std::string not_a_file_problem(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return "";
  const std::string problem = strata::regular_file_problem(path);
  return problem.empty() ? "is not a regular file" : problem;
}

class Lister {
 public:
  explicit Lister(const std::vector<std::string>& extensions) : extensions_(extensions) {}

  // Every image file under `folder` as (folder path, file name), recursively.
  void walk(const fs::path& folder, std::vector<std::pair<std::string, std::string>>& files) {
    const fs::path canonical = canonical_or_fail(folder);
    if (ancestors_.count(canonical.string()) != 0) {
      fail(
          "dataset image_folder: symbolic link loop: {} leads back to {}, a folder above it; "
          "remove the link",
          folder.string(), canonical.string());
    }
    ancestors_.insert(canonical.string());
    for (const fs::directory_entry& entry : list_folder(folder)) {
      const fs::path& path = entry.path();
      std::error_code ec;  // the entry's cached type, symbolic links followed: no stat for most
      if (entry.is_directory(ec)) {
        walk(path, files);
        continue;
      }
      if (!entry.is_regular_file(ec)) {
        if (const std::string problem = not_a_file_problem(path); !problem.empty()) {
          fail("dataset image_folder: {} {}", path.string(), problem);
        }
      }
      const std::string name = lowercase(path.filename().string());
      if (std::none_of(extensions_.begin(), extensions_.end(),
                       [&](const std::string& ending) { return name.ends_with(ending); })) {
        fail(
            "dataset image_folder: {} is not an image file (its extension '{}' is not one of "
            "extensions: {}); remove it, or add its extension to the dataset's `extensions`",
            path.string(), path.extension().string(), fmt::join(extensions_, ", "));
      }
      files.emplace_back(folder.string(), path.filename().string());
    }
    ancestors_.erase(canonical.string());
  }

 private:
  const std::vector<std::string>& extensions_;
  std::set<std::string> ancestors_;
};

// The class folders directly in `root` (hidden ones skipped), sorted by name.
std::vector<std::string> class_folders(const fs::path& root) {
  std::vector<std::string> names;
  std::size_t files = 0;
  for (const fs::directory_entry& entry : list_folder(root)) {
    std::error_code ec;
    if (entry.is_directory(ec)) {
      names.push_back(entry.path().filename().string());
    } else {
      ++files;
    }
  }
  if (names.empty()) {
    fail(
        "dataset image_folder: {} holds no class folders ({} files at its top level); images must "
        "be in <folder>/<class>/<file>",
        root.string(), files);
  }
  return names;
}

// One parsed list file.
struct ListFile {
  std::vector<Sample> samples;
  std::vector<int> lines;  // the line of each sample, for messages
  int32_t max_label = -1;
};

std::string trim(std::string_view text) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  while (!text.empty() && space(text.front())) text.remove_prefix(1);
  while (!text.empty() && space(text.back())) text.remove_suffix(1);
  return std::string(text);
}

ListFile parse_list(const fs::path& list) {
  const std::string text =
      strata::read_regular_file(list, kMaxListFileBytes, "dataset image_folder list file");
  const fs::path base = list.parent_path();
  ListFile result;
  std::size_t start = 0;
  for (int line_number = 1; start < text.size(); ++line_number) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = trim(std::string_view(text).substr(start, end - start));
    start = end + 1;
    if (line.empty() || line.starts_with('#')) continue;
    const std::size_t comma = line.rfind(',');
    if (comma == std::string::npos) {
      fail("dataset image_folder: {}:{}: expected `path,label`, found '{}' (no comma)",
           list.string(), line_number, line);
    }
    const std::string name = trim(std::string_view(line).substr(0, comma));
    const std::string label_text = trim(std::string_view(line).substr(comma + 1));
    if (name.empty()) {
      fail("dataset image_folder: {}:{}: expected `path,label`, found an empty path in '{}'",
           list.string(), line_number, line);
    }
    int32_t label = -1;
    const auto [end_ptr, error] =
        std::from_chars(label_text.data(), label_text.data() + label_text.size(), label);
    if (error != std::errc() || end_ptr != label_text.data() + label_text.size() || label < 0) {
      fail(
          "dataset image_folder: {}:{}: expected `path,label` with an integer label >= 0, found "
          "label '{}'",
          list.string(), line_number, label_text);
    }
    fs::path path = name;
    if (path.is_relative()) path = base / path;
    if (const std::string problem = not_a_file_problem(path); !problem.empty()) {
      fail("dataset image_folder: {}:{}: image {} {}", list.string(), line_number, path.string(),
           problem);
    }
    result.samples.push_back({path.string(), label});
    result.max_label = std::max(result.max_label, label);
    result.lines.push_back(line_number);
  }
  return result;
}

class ImageFolderDataset final : public strata::Dataset {
 public:
  explicit ImageFolderDataset(const Config& config) {
    options_.channels = config.get<int>("channels", 3);
    if (options_.channels != 1 && options_.channels != 3) {
      config.fail_key("channels", fmt::format("must be 1 or 3, got {}", options_.channels));
    }
    options_.min_size = config.get<int>("min_size", 0);
    if (options_.min_size < 0) {
      config.fail_key("min_size", fmt::format("must be 0 (full size) or a positive number of "
                                              "pixels, got {}",
                                              options_.min_size));
    }
    extensions_ = config.get<std::vector<std::string>>("extensions", {".jpg", ".jpeg", ".png"});
    for (std::string& extension : extensions_) {
      if (extension.size() < 2 || extension[0] != '.') {
        config.fail_key("extensions", fmt::format("expected endings such as '.jpg' (with the dot), "
                                                  "found '{}'",
                                                  extension));
      }
      extension = lowercase(extension);
    }
    train_node_ = config.at("train");
    train_ = train_node_->as<std::string>();
    if (auto node = config.find("test")) {
      test_node_ = node;
      test_ = node->as<std::string>();
    }
    std::optional<Config> classes_node = config.find("classes");
    std::optional<Config> names_node = config.find("class_names");

    const std::string problem = path_problem(train_);
    if (!problem.empty())
      train_node_->fail(fmt::format("dataset image_folder: train {} {}", train_.string(), problem));
    folders_ = is_folder(train_);
    if (folders_) {
      for (const auto& [node, key] :
           {std::pair{classes_node, "classes"}, {names_node, "class_names"}}) {
        if (node) {
          config.fail_key(key, fmt::format("is for list files; the folder {} names its classes "
                                           "by its class folders",
                                           train_.string()));
        }
      }
      class_names_ = class_folders(train_);
      return;
    }
    train_list_ = parse_list(train_);
    int classes = train_list_->max_label + 1;
    if (classes_node) {
      classes = classes_node->as<int>();
      if (classes < 1) classes_node->fail(fmt::format("must be at least 1, got {}", classes));
    }
    if (classes < 1) {
      train_node_->fail(
          fmt::format("dataset image_folder: list file {} names no images", train_.string()));
    }
    classes_ = classes;
    if (names_node) {
      class_names_ = names_node->as<std::vector<std::string>>();
      if (static_cast<int>(class_names_.size()) != classes_) {
        names_node->fail(
            fmt::format("gives {} names for {} classes", class_names_.size(), classes_));
      }
    }
    check_labels(*train_list_, train_);
  }

  strata::Shape sample_shape() const override { return strata::Shape{options_.channels, 0, 0}; }
  int num_classes() const override {
    return folders_ ? static_cast<int>(class_names_.size()) : classes_;
  }
  std::vector<std::string> class_names() const override { return class_names_; }

  std::shared_ptr<const strata::SplitReader> open(std::string_view split) override {
    if (split == "train") {
      return std::make_shared<ImageFolderSplit>(samples_of(train_, *train_node_), options_,
                                                "train");
    }
    if (split == "test") {
      if (!test_node_) {
        fail(
            "dataset image_folder: the test split was opened, but the dataset has no `test` key "
            "(a folder or list file like `train`)");
      }
      const std::string problem = path_problem(test_);
      if (!problem.empty())
        test_node_->fail(fmt::format("dataset image_folder: test {} {}", test_.string(), problem));
      if (is_folder(test_) != folders_) {
        test_node_->fail(fmt::format(
            "dataset image_folder: test {} is a {} but train {} is a {}; give both as folders or "
            "both as list files",
            test_.string(), folders_ ? "file" : "folder", train_.string(),
            folders_ ? "folder" : "list file"));
      }
      return std::make_shared<ImageFolderSplit>(samples_of(test_, *test_node_), options_, "test");
    }
    fail("dataset image_folder: unknown split '{}'; the splits are 'train' and 'test'", split);
  }

 private:
  // "" when `path` is a folder or a readable regular file.
  static std::string path_problem(const fs::path& path) {
    if (is_folder(path)) return "";
    return strata::regular_file_problem(path);
  }

  void check_labels(const ListFile& list, const fs::path& path) const {
    for (std::size_t i = 0; i < list.samples.size(); ++i) {
      if (list.samples[i].label >= classes_) {
        fail(
            "dataset image_folder: {}:{}: label {} is out of range for {} classes (labels are "
            "0 to {})",
            path.string(), list.lines[i], list.samples[i].label, classes_, classes_ - 1);
      }
    }
  }

  std::vector<Sample> samples_of(const fs::path& path, const Config& node) const {
    if (const std::string problem = path_problem(path); !problem.empty()) {
      node.fail(fmt::format("dataset image_folder: {} {}", path.string(), problem));
    }
    if (!folders_) {
      if (path == train_ && train_list_) return train_list_->samples;
      ListFile list = parse_list(path);
      check_labels(list, path);
      return std::move(list.samples);
    }
    std::vector<std::string> classes = class_folders(path);
    std::vector<Sample> samples;
    Lister lister(extensions_);
    for (const std::string& name : classes) {
      const auto found = std::lower_bound(class_names_.begin(), class_names_.end(), name);
      if (found == class_names_.end() || *found != name) {
        fail(
            "dataset image_folder: {} is a class folder, but the train folder {} has no class "
            "'{}' (its classes: {})",
            (path / name).string(), train_.string(), name, fmt::join(class_names_, ", "));
      }
      const int32_t label = static_cast<int32_t>(found - class_names_.begin());
      std::vector<std::pair<std::string, std::string>> files;
      lister.walk(path / name, files);
      if (files.empty()) {
        fail("dataset image_folder: class folder {} holds no images (extensions: {})",
             (path / name).string(), fmt::join(extensions_, ", "));
      }
      // torchvision's order: sorted(os.walk(...)) by folder, then sorted file names.
      std::sort(files.begin(), files.end());
      for (const auto& [folder, file] : files) {
        samples.push_back({(fs::path(folder) / file).string(), label});
      }
    }
    return samples;
  }

  DecodeOptions options_;
  std::vector<std::string> extensions_;
  fs::path train_, test_;
  std::optional<Config> train_node_, test_node_;
  bool folders_ = true;
  std::optional<ListFile> train_list_;
  int classes_ = 0;
  std::vector<std::string> class_names_;
};

void register_all(strata::Registries& registries) {
  registries.datasets.add<ImageFolderDataset>("image_folder");
}

}  // namespace

STRATA_PLUGIN("image_folder", "1.0", register_all)
