// kd::dispatch kernels for avx512 (compiled with this instruction set's -m flags; see CMakeLists.txt).
#include "isa.hpp"

KD_BEGIN_NAMESPACE
namespace detail::dispatch_isa {
table table_avx512() noexcept { return make_table<xsimd::avx512bw>(); }
}  // namespace detail::dispatch_isa
KD_END_NAMESPACE
