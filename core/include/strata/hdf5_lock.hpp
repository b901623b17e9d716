// strata/hdf5_lock.hpp: the one lock that serializes HDF5 calls in a process.
//
// Debian's libhdf5 is the serial build: two threads inside it at once corrupt its state. Every
// user of HDF5 in the process (checkpoints in the core, the `hdf5` dataset plugin, the decoded
// cache in training) holds this lock around its HDF5 calls, so that a checkpoint saved on the
// training thread never runs at the same time as a loader thread reading samples. Recursive: a
// function holding it may call another that takes it.
#pragma once

#include <mutex>

namespace strata {

std::recursive_mutex& hdf5_mutex();

}  // namespace strata
