// kd::dispatch kernels for avx2 (compiled with this instruction set's -m flags; see CMakeLists.txt).
#include "isa.hpp"

KD_BEGIN_NAMESPACE
namespace detail::dispatch_isa {
table table_avx2() noexcept { return make_table<xsimd::fma3<xsimd::avx2>>(); }
}  // namespace detail::dispatch_isa
KD_END_NAMESPACE
