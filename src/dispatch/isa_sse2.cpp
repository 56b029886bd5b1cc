// kd::dispatch kernels for sse2 (compiled with this instruction set's -m flags; see CMakeLists.txt).
#include "isa.hpp"

KD_BEGIN_NAMESPACE
namespace detail::dispatch_isa {
table table_sse2() noexcept { return make_table<xsimd::sse2>(); }
}  // namespace detail::dispatch_isa
KD_END_NAMESPACE
