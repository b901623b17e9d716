// The image_folder dataset reader (datasets/image_folder).
//
// tests/scripts/make_images.py writes one image per colour type (random size and content) with
// what PIL decodes from it, a 500x375 JPEG with PIL's reduced (Image.draft) decodes, and bad
// files; every test builds its folders and list files from those in a TempDir. Pixels are
// compared with PIL's: PNG to float rounding (1e-6), JPEG within 1/255 (both use libjpeg-turbo);
// the largest difference seen is printed with --log_level=message.
#define BOOST_TEST_MODULE image_folder
#include <oneapi/tbb/parallel_for.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "strata/dataset.hpp"
#include "strata/error.hpp"
#include "strata/registry.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using strata::Image;
using strata::test::error_of;
using strata::test::registries;
using strata::test::TempDir;
using strata::test::yaml;

namespace {

// One generated image and what PIL decodes from it.
struct Reference {
  std::string name;
  int64_t width = 0, height = 0;
  double tolerance = 0;
  std::vector<float> rgb, grey;  // [3, H, W] and [1, H, W]
};

std::vector<float> read_floats(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  BOOST_REQUIRE_MESSAGE(in.good(), "cannot read " << path);
  std::vector<float> values(fs::file_size(path) / sizeof(float));
  in.read(reinterpret_cast<char*>(values.data()),
          static_cast<std::streamsize>(values.size() * sizeof(float)));
  return values;
}

// The images make_images.py writes, made once per process.
struct Generated {
  TempDir dir;
  std::vector<Reference> good;
  struct Draft {
    int scale;
    int64_t width, height;
    std::vector<float> rgb;
  };
  std::vector<Draft> drafts;

  Generated() {
    const char* python = std::getenv("PYTHON");
    const std::string command = fmt::format(
        "{} {}/tests/scripts/make_images.py {} {}", python ? python : "/usr/bin/python3",
        STRATA_SOURCE_DIR, (dir / "images").string(), std::random_device{}() % 100000);
    BOOST_TEST_MESSAGE("running " << command);
    BOOST_REQUIRE_MESSAGE(std::system(command.c_str()) == 0, "failed: " << command);
    std::ifstream manifest(root() / "good.txt");
    Reference ref;
    while (manifest >> ref.name >> ref.width >> ref.height >> ref.tolerance) {
      const fs::path base = root() / "good" / ref.name;
      ref.rgb = read_floats(base.string() + ".c3.f32");
      ref.grey = read_floats(base.string() + ".c1.f32");
      BOOST_REQUIRE_EQUAL(ref.rgb.size(), static_cast<std::size_t>(3 * ref.width * ref.height));
      good.push_back(ref);
    }
    BOOST_REQUIRE_GE(good.size(), 16u);
    std::ifstream draft_manifest(root() / "draft.txt");
    Draft draft;
    while (draft_manifest >> draft.scale >> draft.width >> draft.height) {
      draft.rgb = read_floats(root() / "draft" / fmt::format("s{}.f32", draft.scale));
      drafts.push_back(draft);
    }
    BOOST_REQUIRE_EQUAL(drafts.size(), 3u);
  }
  fs::path root() const { return dir / "images"; }
  fs::path good_file(const std::string& name) const { return root() / "good" / name; }
  fs::path bad_file(const std::string& name) const { return root() / "bad" / name; }
  const Reference& find(const std::string& name) const {
    for (const auto& ref : good) {
      if (ref.name == name) return ref;
    }
    BOOST_FAIL("no generated image " << name);
    return good.front();
  }
};

const Generated& generated() {
  static Generated images;
  return images;
}

std::shared_ptr<strata::Dataset> dataset(const std::string& config) {
  return registries().datasets.create(yaml("type: image_folder\n" + config));
}

void copy_image(const fs::path& from, const fs::path& to) {
  fs::create_directories(to.parent_path());
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// Largest |a - b|, failing when the sizes differ.
double max_diff(std::span<const float> a, std::span<const float> b) {
  BOOST_REQUIRE_EQUAL(a.size(), b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
  return worst;
}

Image read(const strata::SplitReader& split, int64_t index) {
  Image image;
  split.read(index, image);
  return image;
}

// The message of the BadSample that reading sample `index` throws.
std::string bad_sample_of(const strata::SplitReader& split, int64_t index) {
  Image image;
  try {
    split.read(index, image);
  } catch (const strata::BadSample& error) {
    BOOST_TEST_MESSAGE("expected BadSample: " << error.what());
    return error.what();
  } catch (const strata::Error& error) {
    BOOST_ERROR("expected a BadSample, got another Error: " << error.what());
    return "";
  }
  BOOST_ERROR("expected a BadSample, but reading sample " << index << " succeeded");
  return "";
}

std::string random_name(std::mt19937& rng) {
  static const std::string letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-";
  std::string name;
  const int length = std::uniform_int_distribution<int>(1, 8)(rng);
  for (int i = 0; i < length; ++i) {
    name += letters[std::uniform_int_distribution<std::size_t>(0, letters.size() - 1)(rng)];
  }
  return name;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Layouts

BOOST_AUTO_TEST_CASE(folder_layout_sizes_labels_and_class_order) {
  const Generated& images = generated();
  std::mt19937 rng(std::random_device{}());
  TempDir dir;
  // Random class names (never a hidden one); sorted by name they give the labels.
  std::set<std::string> names;
  while (names.size() < 4) names.insert(random_name(rng));
  const std::vector<std::string> classes(names.begin(), names.end());
  // Per class, files (some in a nested folder) -> the reference image each is a copy of.
  std::vector<std::pair<std::string, const Reference*>> expected_train;  // in torchvision order
  std::map<std::string, std::vector<std::pair<std::string, const Reference*>>> by_class;
  for (const std::string& name : classes) {
    const int count = std::uniform_int_distribution<int>(1, 5)(rng);
    std::vector<std::pair<std::string, const Reference*>> files;  // (folder, file name)
    for (int i = 0; i < count; ++i) {
      const Reference& ref =
          images.good[std::uniform_int_distribution<std::size_t>(0, images.good.size() - 1)(rng)];
      const std::string extension = fs::path(ref.name).extension().string();
      const bool nested = i % 2 == 1;
      const fs::path folder = dir / "train" / name / (nested ? "sub" : "");
      const std::string file = fmt::format("{}{}", random_name(rng), i) + extension;
      copy_image(images.good_file(ref.name), folder / file);
      files.emplace_back(
          (nested ? (dir / "train" / name / "sub") : (dir / "train" / name)).string() + "/" + file,
          &ref);
    }
    // torchvision: sorted(os.walk()) by folder, then file names; the class folder sorts before
    // its sub folder because its path is a prefix.
    std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) {
      const fs::path pa(a.first), pb(b.first);
      return std::pair(pa.parent_path().string(), pa.filename().string()) <
             std::pair(pb.parent_path().string(), pb.filename().string());
    });
    by_class[name] = files;
    for (const auto& file : files) expected_train.push_back(file);
  }
  // Hidden files and a file directly in the root are skipped.
  write_text(dir / "train" / classes[0] / ".DS_Store", "junk");
  write_text(dir / "train" / "README.txt", "not a class");
  // The test split holds classes 1 and 3 only: their labels stay 1 and 3.
  copy_image(images.good_file("rgb.png"), dir / "test" / classes[3] / "a.png");
  copy_image(images.good_file("grey.jpg"), dir / "test" / classes[1] / "b.jpg");

  auto data = dataset(
      fmt::format("train: {}\ntest: {}\n", (dir / "train").string(), (dir / "test").string()));
  BOOST_TEST(data->class_names() == classes);
  BOOST_TEST(data->num_classes() == 4);
  BOOST_TEST(data->sample_shape().str() == strata::Shape({3, 0, 0}).str());
  auto train = data->open("train");
  BOOST_REQUIRE_EQUAL(train->size(), static_cast<int64_t>(expected_train.size()));
  int64_t index = 0;
  for (std::size_t label = 0; label < classes.size(); ++label) {
    for (const auto& [path, ref] : by_class[classes[label]]) {
      BOOST_TEST(train->labels()[index] == static_cast<int32_t>(label));
      BOOST_TEST(train->describe(index) == path);
      const Image image = read(*train, index);
      BOOST_TEST(image.channels == 3);
      BOOST_TEST(image.height == ref->height);
      BOOST_TEST(image.width == ref->width);
      BOOST_TEST(max_diff(image.pixels, ref->rgb) <= ref->tolerance);
      ++index;
    }
  }
  auto test = data->open("test");
  BOOST_REQUIRE_EQUAL(test->size(), 2);
  BOOST_TEST(test->labels()[0] == 1);
  BOOST_TEST(test->labels()[1] == 3);
  BOOST_TEST(read(*test, 1).width == images.find("rgb.png").width);
}

BOOST_AUTO_TEST_CASE(list_file_layout) {
  const Generated& images = generated();
  std::mt19937 rng(std::random_device{}());
  TempDir dir;
  copy_image(images.good_file("rgb420.jpg"), dir / "pics" / "one.jpg");
  copy_image(images.good_file("palette.png"), dir / "pics" / "two, with comma.png");
  copy_image(images.good_file("grey16.png"), dir / "elsewhere" / "three.png");
  const int label_a = std::uniform_int_distribution<int>(0, 6)(rng);
  const int label_b = std::uniform_int_distribution<int>(0, 6)(rng);
  write_text(
      dir / "lists" / "train.txt",
      fmt::format("# path,label\n\n../pics/one.jpg,{}\n  ../pics/two, with comma.png , {}\r\n"
                  "{},7\n",
                  label_a, label_b, (dir / "elsewhere" / "three.png").string()));
  write_text(dir / "lists" / "test.txt", fmt::format("../pics/one.jpg,{}\n", label_b));
  auto data = dataset(fmt::format("train: {}\ntest: {}\nchannels: 1\n",
                                  (dir / "lists" / "train.txt").string(),
                                  (dir / "lists" / "test.txt").string()));
  BOOST_TEST(data->num_classes() == 8);  // 1 + the largest label
  BOOST_TEST(data->class_names().empty());
  BOOST_TEST(data->sample_shape().str() == strata::Shape({1, 0, 0}).str());
  auto train = data->open("train");
  BOOST_REQUIRE_EQUAL(train->size(), 3);
  const std::vector<int32_t> labels(train->labels().begin(), train->labels().end());
  BOOST_TEST(labels == (std::vector<int32_t>{label_a, label_b, 7}));
  const char* names[] = {"rgb420.jpg", "palette.png", "grey16.png"};
  for (int i = 0; i < 3; ++i) {
    const Image image = read(*train, i);
    const Reference& ref = images.find(names[i]);
    BOOST_TEST(image.channels == 1);
    BOOST_TEST(max_diff(image.pixels, ref.grey) <= ref.tolerance);
  }
  BOOST_TEST(data->open("test")->labels()[0] == label_b);

  // classes and class_names.
  auto named =
      dataset(fmt::format("train: {}\nclasses: 9\nclass_names: [a, b, c, d, e, f, g, h, i]\n",
                          (dir / "lists" / "train.txt").string()));
  BOOST_TEST(named->num_classes() == 9);
  BOOST_TEST(named->class_names()[8] == "i");
  STRATA_CHECK_CONTAINS(
      error_of([&] {
        dataset(fmt::format("train: {}\nclasses: 7\n", (dir / "lists" / "train.txt").string()));
      }),
      "train.txt:5: label 7 is out of range for 7 classes");
  STRATA_CHECK_CONTAINS(error_of([&] {
                          dataset(fmt::format("train: {}\nclass_names: [a, b]\n",
                                              (dir / "lists" / "train.txt").string()));
                        }),
                        "gives 2 names for 8 classes");
}

// ---------------------------------------------------------------------------------------------
// Colour types: every generated image to 3 and to 1 channels, against PIL.

BOOST_AUTO_TEST_CASE(colour_types_convert_as_pil_does) {
  const Generated& images = generated();
  TempDir dir;
  std::string list;
  for (const Reference& ref : images.good) list += images.good_file(ref.name).string() + ",0\n";
  write_text(dir / "list.txt", list);
  double worst_jpeg = 0, worst_png = 0;
  for (int channels : {3, 1}) {
    auto data =
        dataset(fmt::format("train: {}\nchannels: {}\n", (dir / "list.txt").string(), channels));
    auto split = data->open("train");
    BOOST_REQUIRE_EQUAL(split->size(), static_cast<int64_t>(images.good.size()));
    for (std::size_t i = 0; i < images.good.size(); ++i) {
      const Reference& ref = images.good[i];
      const Image image = read(*split, static_cast<int64_t>(i));
      BOOST_TEST_CONTEXT(ref.name << " to " << channels << " channels") {
        BOOST_TEST(image.channels == channels);
        BOOST_TEST(image.height == ref.height);
        BOOST_TEST(image.width == ref.width);
        const double diff = max_diff(image.pixels, channels == 3 ? ref.rgb : ref.grey);
        BOOST_TEST(diff <= ref.tolerance);
        double& worst = ref.tolerance > 1e-5 ? worst_jpeg : worst_png;
        worst = std::max(worst, diff);
      }
    }
  }
  BOOST_TEST_MESSAGE("largest difference from PIL: JPEG " << worst_jpeg * 255 << "/255, PNG "
                                                          << worst_png);
}

// ---------------------------------------------------------------------------------------------
// min_size: libjpeg-turbo's DCT scaling.

BOOST_AUTO_TEST_CASE(min_size_picks_the_dct_scale) {
  const Generated& images = generated();
  const fs::path photo = images.root() / "draft" / "photo.jpg";  // 500x375
  TempDir dir;
  write_text(dir / "list.txt",
             photo.string() + ",0\n" + images.good_file("rgb.png").string() + ",0\n");
  // min_size -> the smallest M/8 whose shorter side ceil(375 M / 8) is still >= min_size.
  const std::vector<std::tuple<int, int64_t, int64_t>> cases = {
      {0, 500, 375},   {1, 63, 47},     {47, 63, 47},    {48, 125, 94},   {94, 125, 94},
      {95, 188, 141},  {100, 188, 141}, {188, 250, 188}, {189, 313, 235}, {282, 375, 282},
      {300, 438, 329}, {329, 438, 329}, {330, 500, 375}, {375, 500, 375}, {1000, 500, 375}};
  for (const auto& [min_size, width, height] : cases) {
    auto split =
        dataset(fmt::format("train: {}\nmin_size: {}\n", (dir / "list.txt").string(), min_size))
            ->open("train");
    const Image image = read(*split, 0);
    BOOST_TEST_CONTEXT("min_size " << min_size) {
      BOOST_TEST(image.width == width);
      BOOST_TEST(image.height == height);
      // PNGs are always decoded at full size.
      BOOST_TEST(read(*split, 1).width == images.find("rgb.png").width);
    }
  }
  // The 1/2, 1/4 and 1/8 decodes against PIL's Image.draft() (the same libjpeg DCT scaling).
  for (const auto& draft : images.drafts) {
    const int min_size = static_cast<int>(draft.height);
    auto split =
        dataset(fmt::format("train: {}\nmin_size: {}\n", (dir / "list.txt").string(), min_size))
            ->open("train");
    const Image image = read(*split, 0);
    BOOST_TEST_CONTEXT("1/" << draft.scale) {
      BOOST_TEST(image.width == draft.width);
      BOOST_TEST(image.height == draft.height);
      const double diff = max_diff(image.pixels, draft.rgb);
      BOOST_TEST_MESSAGE("1/" << draft.scale << ": largest difference from PIL's draft "
                              << diff * 255 << "/255");
      BOOST_TEST(diff <= 1.0 / 255 + 1e-6);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Bad input found by open()

BOOST_AUTO_TEST_CASE(open_errors_name_the_path) {
  const Generated& images = generated();
  TempDir dir;
  const std::string jpg = images.good_file("rgb420.jpg").string();
  // Missing train and test paths.
  STRATA_CHECK_CONTAINS(
      error_of([&] { dataset(fmt::format("train: {}\n", (dir / "nope").string())); }),
      (dir / "nope").string() + " does not exist");
  copy_image(jpg, dir / "train" / "cat" / "a.jpg");
  auto missing_test = dataset(
      fmt::format("train: {}\ntest: {}\n", (dir / "train").string(), (dir / "gone").string()));
  STRATA_CHECK_CONTAINS(error_of([&] { missing_test->open("test"); }),
                        (dir / "gone").string() + " does not exist");
  // No class folders at all.
  write_text(dir / "flat" / "a.jpg", "x");
  STRATA_CHECK_CONTAINS(
      error_of([&] { dataset(fmt::format("train: {}\n", (dir / "flat").string())); }),
      (dir / "flat").string() + " holds no class folders (1 files");
  // An empty class folder (a hidden file does not count).
  fs::create_directories(dir / "train" / "dog");
  write_text(dir / "train" / "dog" / ".hidden.jpg", "x");
  auto empty = dataset(fmt::format("train: {}\n", (dir / "train").string()));
  STRATA_CHECK_CONTAINS(error_of([&] { empty->open("train"); }),
                        "class folder " + (dir / "train" / "dog").string() + " holds no images");
  copy_image(jpg, dir / "train" / "dog" / "b.JPEG");  // extensions compare case-insensitively
  BOOST_TEST(dataset(fmt::format("train: {}\n", (dir / "train").string()))->open("train")->size() ==
             2);
  // A file whose extension is not an image's.
  write_text(dir / "train" / "dog" / "notes.txt", "x");
  const std::string extension_error = error_of(
      [&] { dataset(fmt::format("train: {}\n", (dir / "train").string()))->open("train"); });
  STRATA_CHECK_CONTAINS(extension_error, (dir / "train" / "dog" / "notes.txt").string());
  STRATA_CHECK_CONTAINS(extension_error, "remove it, or add its extension");
  BOOST_TEST(
      dataset(fmt::format("train: {}\nextensions: [.jpg, .JPEG, .txt]\n", (dir / "train").string()))
          ->open("train")
          ->size() == 3);
  fs::remove(dir / "train" / "dog" / "notes.txt");
  // An ending with two dots.
  write_text(dir / "train" / "dog" / "d.Photo.Dat", "x");
  BOOST_TEST(dataset(fmt::format("train: {}\nextensions: [.jpg, .jpeg, .photo.dat]\n",
                                 (dir / "train").string()))
                 ->open("train")
                 ->size() == 3);
  fs::remove(dir / "train" / "dog" / "d.Photo.Dat");
  // A symbolic link loop; a link to a folder elsewhere is followed.
  copy_image(jpg, dir / "other" / "c.jpg");
  fs::create_directory_symlink(dir / "other", dir / "train" / "dog" / "linked");
  BOOST_TEST(dataset(fmt::format("train: {}\n", (dir / "train").string()))->open("train")->size() ==
             3);
  fs::create_directory_symlink(dir / "train" / "dog", dir / "train" / "dog" / "sub_loop");
  const std::string loop = error_of(
      [&] { dataset(fmt::format("train: {}\n", (dir / "train").string()))->open("train"); });
  STRATA_CHECK_CONTAINS(loop, "symbolic link loop");
  STRATA_CHECK_CONTAINS(loop, (dir / "train" / "dog" / "sub_loop").string());
  fs::remove(dir / "train" / "dog" / "sub_loop");
  // A broken symbolic link.
  fs::create_symlink(dir / "vanished.jpg", dir / "train" / "dog" / "broken.jpg");
  STRATA_CHECK_CONTAINS(
      error_of(
          [&] { dataset(fmt::format("train: {}\n", (dir / "train").string()))->open("train"); }),
      (dir / "train" / "dog" / "broken.jpg").string());
  fs::remove(dir / "train" / "dog" / "broken.jpg");
  // A test class that train does not have.
  copy_image(jpg, dir / "test" / "cow" / "a.jpg");
  auto unknown = dataset(
      fmt::format("train: {}\ntest: {}\n", (dir / "train").string(), (dir / "test").string()));
  STRATA_CHECK_CONTAINS(
      error_of([&] { unknown->open("test"); }),
      (dir / "test" / "cow").string() + " is a class folder, but the train folder");

  // List files: a missing file, malformed lines, a label out of range.
  const auto list_error = [&](const std::string& text) {
    write_text(dir / "list.txt", text);
    return error_of([&] { dataset(fmt::format("train: {}\n", (dir / "list.txt").string())); });
  };
  STRATA_CHECK_CONTAINS(list_error(jpg + ",0\n# c\nmissing.jpg,1\n"),
                        (dir / "list.txt").string() + ":3: image " +
                            (dir / "missing.jpg").string() + " does not exist");
  STRATA_CHECK_CONTAINS(
      list_error(jpg + ",0\n" + jpg + "\n"),
      (dir / "list.txt").string() + ":2: expected `path,label`, found '" + jpg + "' (no comma)");
  STRATA_CHECK_CONTAINS(list_error(jpg + ",cat\n"), (dir / "list.txt").string() +
                                                        ":1: expected `path,label` with an integer "
                                                        "label >= 0, found label 'cat'");
  STRATA_CHECK_CONTAINS(list_error(jpg + ",-1\n"), "found label '-1'");
  write_text(dir / "train_list.txt", jpg + ",0\n" + jpg + ",1\n");
  write_text(dir / "test_list.txt", "\n" + jpg + ",2\n");
  auto out_of_range =
      dataset(fmt::format("train: {}\ntest: {}\n", (dir / "train_list.txt").string(),
                          (dir / "test_list.txt").string()));
  STRATA_CHECK_CONTAINS(
      error_of([&] { out_of_range->open("test"); }),
      (dir / "test_list.txt").string() + ":2: label 2 is out of range for 2 classes");
  // Mixed layouts and bad options.
  auto mixed = dataset(fmt::format("train: {}\ntest: {}\n", (dir / "train_list.txt").string(),
                                   (dir / "test").string()));
  STRATA_CHECK_CONTAINS(error_of([&] { mixed->open("test"); }), "both as list files");
  STRATA_CHECK_CONTAINS(error_of([&] { dataset(fmt::format("train: {}\nchannels: 4\n", jpg)); }),
                        "must be 1 or 3, got 4");
  STRATA_CHECK_CONTAINS(
      error_of([&] { dataset(fmt::format("train: {}\nclasses: 3\n", (dir / "train").string())); }),
      "is for list files");
}

// ---------------------------------------------------------------------------------------------
// Bad samples found by read(): BadSample naming the file and the index.

BOOST_AUTO_TEST_CASE(read_errors_are_bad_samples) {
  const Generated& images = generated();
  TempDir dir;
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"zero.jpg", "is empty (0 bytes)"},
      {"truncated.jpg", "truncated or corrupt JPEG data"},
      {"truncated_header.jpg", "Premature end of JPEG file"},
      {"truncated.png", "truncated or corrupt PNG data"},
      {"corrupt.png", "truncated or corrupt PNG data"},
      {"corrupt.jpg", "JPEG"},
      {"text.jpg", "is not a JPEG or PNG image (it starts with bytes 47 49 46 38 39 61 20 69)"}};
  std::string list = images.good_file("rgb.png").string() + ",0\n";
  for (const auto& [name, _] : bad) list += images.bad_file(name).string() + ",0\n";
  copy_image(images.good_file("rgb420.jpg"), dir / "doomed.jpg");
  list += (dir / "doomed.jpg").string() + ",0\n";
  write_text(dir / "list.txt", list);
  auto split = dataset(fmt::format("train: {}\n", (dir / "list.txt").string()))->open("train");
  BOOST_TEST(read(*split, 0).width == images.find("rgb.png").width);
  for (std::size_t i = 0; i < bad.size(); ++i) {
    const int64_t index = static_cast<int64_t>(i) + 1;
    const std::string message = bad_sample_of(*split, index);
    STRATA_CHECK_CONTAINS(message, fmt::format("train sample {} ({})", index,
                                               images.bad_file(bad[i].first).string()));
    STRATA_CHECK_CONTAINS(message, bad[i].second);
  }
  // The truncated JPEG is refused even though libjpeg-turbo would fill it with grey: its message
  // carries libjpeg's warning.
  STRATA_CHECK_CONTAINS(bad_sample_of(*split, 2), "Premature end of JPEG file");
  // A file that vanished after open(): an I/O error, also a BadSample.
  const int64_t doomed = static_cast<int64_t>(bad.size()) + 1;
  BOOST_TEST(read(*split, doomed).channels == 3);
  fs::remove(dir / "doomed.jpg");
  STRATA_CHECK_CONTAINS(bad_sample_of(*split, doomed), "cannot open: No such file or directory");
  // Swapped for a named pipe after open(): refused without blocking.
  BOOST_REQUIRE_EQUAL(::mkfifo((dir / "doomed.jpg").c_str(), 0600), 0);
  STRATA_CHECK_CONTAINS(bad_sample_of(*split, doomed), "is not a regular file");
  fs::remove(dir / "doomed.jpg");
  // A (sparse) file of more than 1 GiB is refused before it is read.
  { std::ofstream(dir / "doomed.jpg", std::ios::binary) << "\xff\xd8\xff"; }
  fs::resize_file(dir / "doomed.jpg", (std::uintmax_t{1} << 30) + 1);
  STRATA_CHECK_CONTAINS(bad_sample_of(*split, doomed),
                        "is 1073741825 bytes, more than the 1 GiB an image file may hold");
  fs::remove(dir / "doomed.jpg");
  // An unreadable file (only when not root: root reads anything).
  if (::geteuid() != 0) {
    copy_image(images.good_file("rgb420.jpg"), dir / "doomed.jpg");
    fs::permissions(dir / "doomed.jpg", fs::perms::none);
    STRATA_CHECK_CONTAINS(bad_sample_of(*split, doomed), "cannot open: Permission denied");
    // In a class folder too: open() lists it, read() refuses it (on_bad_image can skip it).
    copy_image(images.good_file("rgb420.jpg"), dir / "locked" / "cat" / "a.jpg");
    fs::permissions(dir / "locked" / "cat" / "a.jpg", fs::perms::none);
    auto locked = dataset(fmt::format("train: {}\n", (dir / "locked").string()))->open("train");
    STRATA_CHECK_CONTAINS(bad_sample_of(*locked, 0), "cannot open: Permission denied");
  } else {
    BOOST_TEST_MESSAGE("running as root: the unreadable-file checks are skipped");
  }
  // The sample after a bad one still decodes on this thread.
  BOOST_TEST(read(*split, 0).height == images.find("rgb.png").height);
}

// Random damage (bytes overwritten, the file cut anywhere) to JPEG and PNG files: each read either
// decodes an image of the right size or throws BadSample naming the file; never anything else
// (under the sanitizers: no invalid access either).
BOOST_AUTO_TEST_CASE(randomly_damaged_files_decode_or_are_bad_samples) {
  const Generated& images = generated();
  std::mt19937 rng(std::random_device{}());
  TempDir dir;
  std::string list;
  std::vector<const Reference*> sources;
  int count = 0;
  for (const std::string name :
       {"rgb420.jpg", "rgb444p.jpeg", "cmyk.jpg", "palette.png", "rgb16.png", "interlaced.png"}) {
    const Reference& ref = images.find(name);
    std::ifstream in(images.good_file(name), std::ios::binary);
    const std::string original((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
    for (int i = 0; i < 40; ++i) {
      std::string damaged = original;
      if (i % 2 == 0) {
        damaged.resize(std::uniform_int_distribution<std::size_t>(1, damaged.size() - 1)(rng));
      } else {
        const int flips = std::uniform_int_distribution<int>(1, 4)(rng);
        for (int f = 0; f < flips; ++f) {
          // Past the signature, so that the decoder (not the format check) meets the damage.
          damaged[std::uniform_int_distribution<std::size_t>(8, damaged.size() - 1)(rng)] =
              static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
        }
      }
      const fs::path path = dir / fmt::format("{}{}", count++, fs::path(name).extension().string());
      std::ofstream(path, std::ios::binary) << damaged;
      list += path.string() + ",0\n";
      sources.push_back(&ref);
    }
  }
  write_text(dir / "list.txt", list);
  auto split = dataset(fmt::format("train: {}\n", (dir / "list.txt").string()))->open("train");
  int decoded = 0, bad = 0;
  for (int64_t i = 0; i < split->size(); ++i) {
    Image image;
    try {
      split->read(i, image);
      ++decoded;
      // A flipped byte may change what a header says, never the shape contract.
      BOOST_TEST(image.channels == 3);
      BOOST_TEST(image.pixels.size() == static_cast<std::size_t>(3 * image.height * image.width));
      for (float v : image.pixels) {
        if (!(v >= 0.0f && v <= 1.0f)) {
          BOOST_ERROR(split->describe(i) << ": value " << v << " outside [0, 1]");
          break;
        }
      }
    } catch (const strata::BadSample& error) {
      ++bad;
      STRATA_CHECK_CONTAINS(std::string(error.what()), split->describe(i));
    }
  }
  BOOST_TEST_MESSAGE(decoded << " damaged files decoded, " << bad << " refused");
  BOOST_TEST(bad > 0);
}

// ---------------------------------------------------------------------------------------------
// Threads

BOOST_AUTO_TEST_CASE(reads_from_many_threads_give_the_same_pixels) {
  const Generated& images = generated();
  TempDir dir;
  std::string list;
  for (const Reference& ref : images.good) list += images.good_file(ref.name).string() + ",0\n";
  list += (images.root() / "draft" / "photo.jpg").string() + ",0\n";
  write_text(dir / "list.txt", list);
  for (const std::string options : {"", "min_size: 60\nchannels: 1\n"}) {
    auto split =
        dataset(fmt::format("train: {}\n{}", (dir / "list.txt").string(), options))->open("train");
    std::vector<Image> single(static_cast<std::size_t>(split->size()));
    for (int64_t i = 0; i < split->size(); ++i) split->read(i, single[static_cast<std::size_t>(i)]);
    constexpr int kRepeats = 12;
    const int64_t total = split->size() * kRepeats;
    std::vector<Image> parallel(static_cast<std::size_t>(total));
    tbb::parallel_for(int64_t{0}, total, [&](int64_t i) {
      split->read(i % split->size(), parallel[static_cast<std::size_t>(i)]);
    });
    std::size_t mismatches = 0;
    for (int64_t i = 0; i < total; ++i) {
      const Image& a = parallel[static_cast<std::size_t>(i)];
      const Image& b = single[static_cast<std::size_t>(i % split->size())];
      if (a.shape().str() != b.shape().str() || a.pixels != b.pixels) ++mismatches;
    }
    BOOST_TEST(mismatches == 0u);
  }
}
