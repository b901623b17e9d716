// Registers the "mpi" communicator (mpi_communicator.hpp).
#include "mpi_communicator.hpp"
#include "strata/plugin.hpp"
#include "strata/registry.hpp"

namespace strata::comm_mpi {
namespace {

void register_all(Registries& r) { r.communicators.add<MpiCommunicator>("mpi"); }

}  // namespace
}  // namespace strata::comm_mpi

STRATA_PLUGIN("comm_mpi", "1.0", strata::comm_mpi::register_all)
