// strata/files.hpp (issue 20, groups 4, 6, 7): an output never replaces an input or a non-regular
// file; the folder lock keeps two writers apart and its start-up cleanup deletes only Strata's own
// temporary files; a signal mid-save deletes the save's temporary file.
#define BOOST_TEST_MODULE files
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <csignal>
#include <fstream>
#include <random>

#include "strata/checkpoint.hpp"
#include "strata/files.hpp"
#include "strata/training/trainer.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using namespace strata;

namespace {

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// Creates `path` with plain POSIX calls (what a forked child may safely do).
void create_file(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  [[maybe_unused]] const ssize_t written = ::write(fd, "partial", 7);
  ::close(fd);
}

// Runs `child` in a forked process and returns its wait status.
template <class Child>
int in_child(Child&& child) {
  const pid_t pid = ::fork();
  BOOST_TEST_REQUIRE(pid >= 0);
  if (pid == 0) {
    child();
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(output_lock)

BOOST_AUTO_TEST_CASE(own_temporaries_are_recognized_by_name_and_pid_format) {
  const std::vector<std::string> names = {"model.h5", "summary.json"};
  std::mt19937 rng(std::random_device{}());
  const std::string pid = std::to_string(1 + rng() % 4000000);
  BOOST_TEST(is_own_temporary("model.h5.tmp-" + pid, names));
  BOOST_TEST(is_own_temporary("summary.json.tmp-" + pid, names));
  BOOST_TEST(!is_own_temporary("notes.tmp-" + pid, names));           // not our output name
  BOOST_TEST(!is_own_temporary("model.h5.tmp-abc", names));           // not a pid
  BOOST_TEST(!is_own_temporary("model.h5.tmp-", names));              // no pid
  BOOST_TEST(!is_own_temporary("model.h5.tmp-" + pid + "x", names));  // trailing text
  BOOST_TEST(!is_own_temporary("xmodel.h5.tmp-" + pid, names));
  BOOST_TEST(!is_own_temporary("model.h5", names));
  BOOST_TEST(temporary_suffix() == ".tmp-" + std::to_string(::getpid()));
}

BOOST_AUTO_TEST_CASE(start_up_cleanup_removes_only_strata_temporaries_of_its_names) {
  test::TempDir dir;
  const std::vector<std::string> ours = {"model.h5.tmp-123", "summary.json.tmp-98765"};
  const std::vector<std::string> foreign = {"notes.tmp-123", "model.h5.tmp-abc", "data.h5.tmp-7",
                                            "model.h5", "model.h5.tmp-12x"};
  for (const auto& name : ours) write_text(dir / name, "partial");
  for (const auto& name : foreign) write_text(dir / name, "keep");
  fs::create_directory(dir / "best.h5.tmp-5");  // our name, but a folder: not a file we wrote
  {
    OutputLock lock(dir.path(), {"model.h5", "best.h5", "summary.json"});
    for (const auto& name : ours) BOOST_TEST(!fs::exists(dir / name), name);
    for (const auto& name : foreign) BOOST_TEST(fs::exists(dir / name), name);
    BOOST_TEST(fs::is_directory(dir / "best.h5.tmp-5"));
    // A second holder (another open file description, as another process would have) is refused.
    STRATA_CHECK_CONTAINS(test::error_of([&] { OutputLock second(dir.path(), {}); }),
                          "another strata run is writing to this output folder");
  }
  OutputLock again(dir.path(), {});  // released with the first
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(output_file)

BOOST_AUTO_TEST_CASE(an_output_that_is_an_input_however_spelled_is_refused) {
  test::TempDir dir;
  const fs::path input = dir / "in.h5";
  write_text(input, "input");
  fs::create_hard_link(input, dir / "hard.h5");
  fs::create_symlink(input, dir / "soft.h5");
  fs::create_directory(dir / "data");
  write_text(dir / "data" / "train.idx", "pixels");
  const std::vector<CommandInput> inputs = {{"--input", input}, {"the dataset's", dir / "data"}};
  const std::string same = "is the same file as --input " + input.string();
  for (const fs::path& output : {input, dir / "hard.h5", dir / "soft.h5", dir / "." / "in.h5",
                                 dir / "data" / ".." / "in.h5"}) {
    STRATA_CHECK_CONTAINS(test::error_of([&] { check_output_file("--output", output, inputs); }),
                          "--output " + output.string() + " " + same);
  }
  // Relative spelling from the current folder.
  const fs::path previous = fs::current_path();
  fs::current_path(dir.path());
  STRATA_CHECK_CONTAINS(test::error_of([&] { check_output_file("--output", "./in.h5", inputs); }),
                        same);
  fs::current_path(previous);
  // A file inside a folder input.
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { check_output_file("--output", dir / "data" / "train.idx", inputs); }),
      "is the same file as " + (dir / "data" / "train.idx").string() +
          ", a file of the dataset's " + (dir / "data").string());
  // Inputs that do not exist yet: the same path is still the same file.
  STRATA_CHECK_CONTAINS(
      test::error_of([&] {
        check_output_file("--output", dir / "x" / ".." / "new.h5", {{"--weights", dir / "new.h5"}});
      }),
      "is the same file as --weights");
  // A new file, an unrelated existing file and a sibling of the dataset's files are fine.
  check_output_file("--output", dir / "out.h5", inputs);
  write_text(dir / "old.h5", "previous output");
  check_output_file("--output", dir / "old.h5", inputs);
}

BOOST_AUTO_TEST_CASE(an_existing_non_regular_output_is_refused) {
  test::TempDir dir;
  BOOST_TEST_REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);
  fs::create_directory(dir / "folder");
  fs::create_symlink(dir / "nowhere", dir / "dangling");
  write_text(dir / "target.h5", "t");
  fs::create_symlink(dir / "target.h5", dir / "link.h5");
  const std::pair<fs::path, std::string> cases[] = {{"/dev/null", "a character device"},
                                                    {dir / "fifo", "a FIFO"},
                                                    {dir / "folder", "a folder"},
                                                    {dir / "dangling", "a symbolic link"},
                                                    {dir / "link.h5", "a symbolic link"}};
  for (const auto& [output_path, kind] : cases) {
    const auto& output = output_path;  // clang 14 cannot capture a structured binding in a lambda
    STRATA_CHECK_CONTAINS(test::error_of([&] { check_output_file("--output", output, {}); }),
                          "--output " + output.string() + " exists and is " + kind +
                              ", not a regular file: the output would replace it");
  }
  struct stat device {};
  BOOST_TEST((::stat("/dev/null", &device) == 0 && S_ISCHR(device.st_mode)));
}

BOOST_AUTO_TEST_SUITE_END()

// write_file_atomically: the one writer of whole text files (summary.json, a search's journal).
BOOST_AUTO_TEST_SUITE(atomic_text_file)

BOOST_AUTO_TEST_CASE(replaces_the_file_whole_and_leaves_no_temporary) {
  test::TempDir dir;
  std::mt19937 draw(std::random_device{}());
  std::string first(1 + draw() % 5000, 'a'), second(1 + draw() % 5000, 'b');
  for (char& c : first) c = static_cast<char>(draw());  // any bytes, NUL included
  write_file_atomically(dir / "out.txt", first);
  BOOST_TEST((read_bytes(dir / "out.txt") == first));
  write_file_atomically(dir / "out.txt", second);
  BOOST_TEST((read_bytes(dir / "out.txt") == second));
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    BOOST_TEST(entry.path().filename() == "out.txt");
  }
}

BOOST_AUTO_TEST_CASE(a_failure_names_the_file_and_the_reason_and_keeps_the_old_one) {
  test::TempDir dir;
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { write_file_atomically(dir / "no/such/x.json", "{}"); }),
      "no/such/x.json: cannot write: No such file or directory");
  // A folder in the way of the rename: the old content stays, no temporary is left.
  fs::create_directory(dir / "taken");
  std::ofstream(dir / "taken" / "inside") << "keep";
  STRATA_CHECK_CONTAINS(test::error_of([&] { write_file_atomically(dir / "taken", "new"); }),
                        "taken: cannot replace: ");
  BOOST_TEST(fs::is_directory(dir / "taken"));
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    BOOST_TEST(entry.path().filename().string().find(".tmp-") == std::string::npos);
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(signals)

BOOST_AUTO_TEST_CASE(a_signal_removes_the_registered_temporary_file_and_ends_the_process) {
  test::TempDir dir;
  for (const int signal_number : {SIGTERM, SIGINT, SIGHUP}) {
    const fs::path temporary = dir / ("out.h5" + temporary_suffix());
    const fs::path kept = dir / "unregistered.h5.tmp-1";
    const int status = in_child([&] {
      std::signal(signal_number, SIG_DFL);
      remove_temporary_files_on_signal();
      { const TemporaryFile done(kept); }  // registered, then released: not deleted
      create_file(kept);
      const TemporaryFile registered(temporary);
      create_file(temporary);
      ::raise(signal_number);
      ::_exit(3);  // not reached: the signal ends the process
    });
    BOOST_TEST(WIFSIGNALED(status));
    BOOST_TEST((WIFSIGNALED(status) && WTERMSIG(status) == signal_number));
    BOOST_TEST(!fs::exists(temporary));
    BOOST_TEST(fs::exists(kept));
    fs::remove(kept);
  }
}

BOOST_AUTO_TEST_CASE(an_inherited_ignored_sigint_stays_ignored) {
  test::TempDir dir;
  const fs::path temporary = dir / "out.h5.tmp-1";
  const int status = in_child([&] {
    std::signal(SIGINT, SIG_IGN);
    remove_temporary_files_on_signal();
    const TemporaryFile registered(temporary);
    create_file(temporary);
    ::raise(SIGINT);
    ::_exit(7);
  });
  BOOST_TEST((WIFEXITED(status) && WEXITSTATUS(status) == 7));
  BOOST_TEST(fs::exists(temporary));
}

BOOST_AUTO_TEST_SUITE_END()

// Last: training starts worker threads, and the signal tests above fork.
BOOST_AUTO_TEST_SUITE(fresh_run)

// Issue 20, group 5: a new run never silently replaces the run a folder holds.
BOOST_AUTO_TEST_CASE(a_new_run_refuses_a_folder_holding_a_run_unless_overwrite) {
  test::TempDir dir;
  std::mt19937 rng(std::random_device{}());
  const auto train = [&](int epochs, bool resume, bool overwrite) {
    Config experiment = Config::parse_string(fmt::format(R"(
seed: {}
backend: reference
threads: 1
data: {{type: synthetic, classes: 3, shape: [1, 4, 4], train_size: 60, test_size: 12,
       validation: 12}}
model:
  input: [1, 4, 4]
  layers: [{{name: fc1, type: linear, out_features: 3}}]
optimizer: {{type: sgd, lr: 0.05}}
train: {{epochs: {}, batch_size: 12}}
)",
                                                         1 + rng() % 1000, epochs),
                                             "fresh.yaml");
    if (resume)
      experiment = Config::parse_string(load_checkpoint_experiment(dir / "model.h5"), "x");
    if (resume) experiment.set("train.epochs", std::to_string(epochs));
    TrainOptions options;
    options.out_dir = dir.path();
    options.quiet = true;
    options.resume = resume;
    options.overwrite = overwrite;
    return train_experiment(experiment, test::registries(), options);
  };
  train(2, false, false);
  BOOST_TEST_REQUIRE(fs::exists(dir / "best.h5"));
  const std::string run = read_bytes(dir / "model.h5");
  STRATA_CHECK_CONTAINS(
      test::error_of([&] { train(1, false, false); }),
      dir.path().string() +
          ": already holds a run (model.h5, best.h5, "
          "summary.json); continue it with --resume, start it over with --overwrite");
  BOOST_TEST((read_bytes(dir / "model.h5") == run));  // untouched
  train(3, true, false);                              // --resume continues it
  BOOST_TEST(load_checkpoint_training_state(dir / "model.h5")->epoch == 3);
  // best.h5 alone (or summary.json alone) is a run too.
  fs::remove(dir / "model.h5");
  fs::remove(dir / "summary.json");
  STRATA_CHECK_CONTAINS(test::error_of([&] { train(1, false, false); }), "(best.h5)");
  // --overwrite starts over: the old files go, the new run's are epoch 1.
  write_text(dir / "notes.txt", "mine");
  train(1, false, true);
  BOOST_TEST(load_checkpoint_training_state(dir / "model.h5")->epoch == 1);
  BOOST_TEST(fs::exists(dir / "notes.txt"));
}

BOOST_AUTO_TEST_SUITE_END()
