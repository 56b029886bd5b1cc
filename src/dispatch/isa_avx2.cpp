// kd::dispatch kernels for avx2 (compiled with this instruction set's -m flags; see CMakeLists.txt).
#include "isa.hpp"

KD_BEGIN_ISA_FREE_NAMESPACE
namespace dispatch_abi {
table table_avx2() noexcept { return detail::dispatch_isa::make_table<xsimd::fma3<xsimd::avx2>>(); }
}  // namespace dispatch_abi
KD_END_ISA_FREE_NAMESPACE
