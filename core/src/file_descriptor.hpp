// An owned POSIX file descriptor, closed when it goes out of scope (checkpoint.cpp, file_seal.cpp).
#pragma once

#include <unistd.h>

#include <utility>

namespace strata {

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  // Closes now and returns ::close's result (network file systems report write errors here).
  int close() { return ::close(std::exchange(fd_, -1)); }

 private:
  int fd_;
};

}  // namespace strata
