// strata/files.hpp: how Strata treats the files and folders it writes.
//
// - OutputLock: the exclusive lock `strata train` and `strata search` hold on their output folder
//   (two runs, or a run and a search, cannot write to one folder at once). Taking it also removes
//   the temporary files that Strata's own atomic saves left behind for the folder's own output
//   names ("model.h5.tmp-<pid>"), and nothing else.
// - check_output_file: an output option (`--output`) never replaces one of the command's inputs
//   (compared by device and inode, so hard links, symbolic links and other spellings of the same
//   file are caught) nor anything but a regular file (a device, a FIFO, a folder, a symbolic link).
// - TemporaryFile and remove_temporary_files_on_signal: the temporary file of an atomic save is
//   deleted when SIGINT or SIGTERM ends the process mid-save.
// - write_file_atomically: the one writer of whole text files (summary.json, a search's journal,
//   search.json and best.yaml); checkpoints have their own in checkpoint.cpp (an HDF5 image).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace strata {

class OutputLock {
 public:
  // Creates `dir` if needed and takes an exclusive flock() on `dir`/.lock, without waiting (the
  // kernel drops it when the process dies). A folder another process holds is an Error naming
  // it. Then removes every "<name>.tmp-<digits>" in `dir` for each `name` of `own_outputs` (the
  // names the holder writes atomically): with the lock held, no other Strata process writes them.
  OutputLock(const std::filesystem::path& dir, const std::vector<std::string>& own_outputs);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

 private:
  int fd_ = -1;
};

// The suffix an atomic save gives its temporary file: "<final name>.tmp-<pid>".
std::string temporary_suffix();
// Whether `filename` is "<one of names>.tmp-<digits>", a temporary file of Strata's own naming.
bool is_own_temporary(const std::string& filename, const std::vector<std::string>& names);

// One input of a command, for check_output_file: its option ("--input") and path. A folder counts
// every file directly inside it (a dataset folder).
struct CommandInput {
  std::string option;
  std::filesystem::path path;
};

// Refuses (an Error naming `option` and the file) to write `output` when it exists and is not a
// regular file, or when it is the same file as one of `inputs` (same device and inode; for inputs
// that do not exist yet, the same normalized path).
void check_output_file(const std::string& option, const std::filesystem::path& output,
                       const std::vector<CommandInput>& inputs);

// While alive, registers `path` as a temporary file of this process: the signal handlers that
// remove_temporary_files_on_signal() installs delete it. Up to 16 at once (concurrent saves);
// more, or a path longer than 4095 bytes, are not registered. Cheap; safe from any thread.
class TemporaryFile {
 public:
  explicit TemporaryFile(const std::filesystem::path& path);
  ~TemporaryFile();
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;

 private:
  int slot_ = -1;
};

// Replaces `path` with `text` atomically and durably: writes "<path>.tmp-<pid>" (registered as a
// TemporaryFile) with POSIX calls, fsyncs it, renames it over `path` and fsyncs the folder. A reader
// sees the old file or the new one, never a part; after a crash, the new one is on disk once this
// returned. On failure the temporary file is removed, `path` is untouched and the Error names
// `path` with the system's reason ("<path>: cannot write: No space left on device").
void write_file_atomically(const std::filesystem::path& path, std::string_view text);

// Installs handlers for SIGINT, SIGTERM and SIGHUP that delete the registered temporary files and
// then end the process by the same signal (exit status 128 + signal: 130, 143, 129), as if no
// handler had been there. A signal the process inherited as ignored stays ignored. For commands
// with nothing else to do on a signal (eval, forward).
void remove_temporary_files_on_signal();

}  // namespace strata
