// kd::dispatch kernels for sse4_2 (compiled with this instruction set's -m flags; see CMakeLists.txt).
#include "isa.hpp"

KD_BEGIN_ISA_FREE_NAMESPACE
namespace dispatch_abi {
table table_sse4_2() noexcept { return detail::dispatch_isa::make_table<xsimd::sse4_2>(); }
}  // namespace dispatch_abi
KD_END_ISA_FREE_NAMESPACE
