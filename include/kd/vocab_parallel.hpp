// Vocabulary-parallel divergences: each process holds a contiguous shard of the vocabulary of both sides' logits (a
// tensor-parallel lm-head's output), and kd joins the shards through a communicator instead of gathering the logits.
//
//   kd::status kd::vocab_parallel_divergence(d, student_shard, teacher_shard, options, result, outputs, comm,
//                                            backend = {})
//
// student_shard, teacher_shard  [rows, V_local] views of this process's columns of the student / teacher logits (or
//              log-probs); every process passes the same rows, its own columns (shards of any widths >= 1, in any
//              order: the divergences are sums over the vocabulary), the same divergence, options and labels.
// outputs      gradients of the local shard ([rows, V_local]) and per-row values (the same on every process).
// result       the reduced loss (the same on every process): equal to the unsharded call on the concatenated shards to
//              float rounding (docs/numerics.md: the SIMD backend's sums of a row are split at other points).
// comm         a communicator: any copyable value with
//                void all_reduce_max(double* data, std::int64_t n) const;   // in place, element-wise, over all processes
//                void all_reduce_sum(double* data, std::int64_t n) const;
//              kd calls them in the same order on every process: MAX over 10 doubles per row, SUM over 4 per row, SUM
//              over (n_sums + 3) per row (one to three: the divergence's number of sums). Adapters:
//              kd::single_process (below: one process, nothing to join), kd::mpi_communicator (kd/comm/mpi.hpp, Open
//              MPI), kd::communicator_ref (kd/communicator.hpp: any of them behind function pointers, as
//              kd::dispatch_backend takes them), and torch.distributed in the Python package (docs/python.md).
//              An NCCL communicator maps the two calls to ncclAllReduce(ncclFloat64, ncclMax / ncclSum) on the
//              caller's stream (docs/vocab_parallel.md).
// Errors: argument errors as kd::divergence_loss (naming student / teacher, before any output is written; the
//         vocabulary sizes of the two shards must be equal). They are checked on each process alone, before any
//         collective: a process whose arguments fail returns while the others wait in the first all-reduce, so
//         check shapes and options identically on every process (a job that hangs here has a bad shard). Value
//         errors as well, with the row's first error found
//         on any shard (so every process returns the same status).
// The three steps of a sharded row (side statistics, the divergence's sums, finish and gradient) and the collectives
// between them: backend/shard_driver.hpp and detail/shard_stats.hpp; docs/vocab_parallel.md.
#pragma once

#include <cstdint>

#include "backend.hpp"
#include "backend/protocol.hpp"
#include "detail/validate.hpp"

KD_BEGIN_NAMESPACE

// The communicator of a single process (the shard is the whole vocabulary): nothing to join.
struct single_process {
  void all_reduce_max(double*, std::int64_t) const noexcept {}
  void all_reduce_sum(double*, std::int64_t) const noexcept {}
};

template <class S, class P, class G = float, class Comm = single_process, class Backend = default_backend>
status vocab_parallel_divergence(const divergence& d, const student_input<S>& student_shard,
                                 const teacher_input<P>& teacher_shard, const distill_options& options,
                                 loss_result& result, const distill_outputs<G>& outputs, const Comm& comm = {},
                                 const Backend& backend = {}) {
  static_assert(is_element_v<S>, "kd: student element type must be float, double, kd::bfloat16 or kd::half");
  static_assert(is_element_v<P>, "kd: teacher element type must be float, double, kd::bfloat16 or kd::half");
  static_assert(is_element_v<G>, "kd: gradient element type must be float, double, kd::bfloat16 or kd::half");
  KD_REQUIRE_BACKEND_OPERATION(vocab_parallel_divergence, vocab_parallel, Backend, divergence, student_input<S>,
                               teacher_input<P>, distill_options, loss_result, distill_outputs<G>, Comm);
  if (status s = detail::validate_divergence_call(d, student_shard, teacher_shard, options, outputs); !s) return s;
  if constexpr (detail::has_run_vocab_parallel<Backend, divergence, student_input<S>, teacher_input<P>,
                                               distill_options, loss_result, distill_outputs<G>, Comm>)
    return backend.run_vocab_parallel(d, student_shard, teacher_shard, options, result, outputs, comm);
  else
    return {};
}

KD_END_NAMESPACE
