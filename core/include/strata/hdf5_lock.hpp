// strata/hdf5_lock.hpp: the one lock that serializes HDF5 calls in a process, and the HDF5 error
// text every user of HDF5 reports.
//
// Debian's libhdf5 is the serial build: two threads inside it at once corrupt its state. Every
// user of HDF5 in the process (checkpoints in the core, the `hdf5` dataset plugin, the decoded
// cache in training) holds an Hdf5Lock around its HDF5 calls, so that a checkpoint saved on the
// training thread never runs at the same time as a loader thread reading samples. The lock is
// recursive: a function holding it may call another that takes it.
//
// Include it only where HDF5 is used: it includes <hdf5.h>.
#pragma once

#include <hdf5.h>

#include <mutex>
#include <string>
#include <utility>

namespace strata {

std::recursive_mutex& hdf5_mutex();

// Holds hdf5_mutex() and switches HDF5's automatic error printing off while alive: errors are
// read from the error stack (hdf5_error_reason) and reported as strata::Error.
class Hdf5Lock {
 public:
  Hdf5Lock() : lock_(hdf5_mutex()) {
    saved_ = H5Eget_auto2(H5E_DEFAULT, &function_, &data_) >= 0;
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~Hdf5Lock() {
    if (saved_) H5Eset_auto2(H5E_DEFAULT, function_, data_);
  }
  Hdf5Lock(const Hdf5Lock&) = delete;
  Hdf5Lock& operator=(const Hdf5Lock&) = delete;

 private:
  std::lock_guard<std::recursive_mutex> lock_;
  H5E_auto2_t function_ = nullptr;
  void* data_ = nullptr;
  bool saved_ = false;
};

// Owns one HDF5 identifier and closes it with the matching H5?close function. Close (destroy) it
// with the lock held.
class Hdf5Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Hdf5Handle() = default;
  Hdf5Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Hdf5Handle(Hdf5Handle&& other) noexcept
      : id_(std::exchange(other.id_, H5I_INVALID_HID)), closer_(other.closer_) {}
  Hdf5Handle& operator=(Hdf5Handle&& other) noexcept {
    if (this != &other) {
      close();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
      closer_ = other.closer_;
    }
    return *this;
  }
  Hdf5Handle(const Hdf5Handle&) = delete;
  Hdf5Handle& operator=(const Hdf5Handle&) = delete;
  ~Hdf5Handle() { close(); }

  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }  // NOLINT: handles pass straight into the C API

  // Closes now; false when closing failed (for a file, closing is when the data gets flushed).
  bool close() {
    const hid_t id = std::exchange(id_, H5I_INVALID_HID);
    return id < 0 || closer_(id) >= 0;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// " (HDF5: <innermost description>)" from the current error stack, which it then clears; "" when
// the stack is empty. A system call's failure keeps its summary and the system's message.
std::string hdf5_error_reason();

}  // namespace strata
