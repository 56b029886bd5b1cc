// kd_torch: kd's fused divergence and MiniLLM policy-gradient calls as PyTorch operators (torch.ops.kd_torch.*).
//
// Every operator reads the tensors' memory without a copy (a tensor whose last dimension is not unit-stride, or whose
// rows overlap, is made contiguous first) and writes the gradient kd computes in the same fused pass into a freshly
// allocated tensor that the Python autograd layer (kd_torch/_ops.py) saves and returns in backward: no recomputation.
//
// Backends, per device and dtype (one place: run_divergence_on_device and pg_backend):
//   CPU, student and teacher float32 / bfloat16 / float16 of the same dtype -> kd::dispatch_backend (SIMD, instruction set
//        chosen at run time, at::get_num_threads() threads)
//   CPU, float64                                                       -> kd::reference_backend (the double oracle)
//   The policy gradient follows the same rule (pg_backend).
//   CUDA                                                               -> kd has no CUDA backend yet: NotImplementedError
//                                                                         (the seam: KD_TORCH_WITH_CUDA)
// Errors: kd::status values become c10::ValueError (shapes, ranges, non-finite values: Python ValueError), dtypes
// c10::TypeError (TypeError), unsupported devices c10::NotImplementedError. The message is "<python argument>: <kd's
// message>", raised before any tensor is returned.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <kd/backend/dispatch.hpp>
#include <kd/divergence.hpp>
#include <kd/policy_gradient.hpp>
#include <kd/topk_teacher.hpp>
#include <kd/vocab_parallel.hpp>

#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------------------------------
// Instruction set: kd::simd_isa::best unless set_simd_isa() forced one (benchmarks, tests).
std::atomic<int> g_isa{static_cast<int>(kd::simd_isa::best)};

kd::simd_isa current_isa() { return static_cast<kd::simd_isa>(g_isa.load()); }

std::string simd_isa() {
  const kd::simd_isa i = current_isa();
  return kd::simd_isa_name(i == kd::simd_isa::best ? kd::best_simd_isa() : i);
}

void set_simd_isa(const std::string& name) {
  for (kd::simd_isa i : {kd::simd_isa::best, kd::simd_isa::sse2, kd::simd_isa::sse4_2, kd::simd_isa::avx2,
                         kd::simd_isa::avx512}) {
    if (name == kd::simd_isa_name(i)) {
      TORCH_CHECK_VALUE(kd::simd_isa_available(i), "isa: '", name, "' is not supported by this CPU");
      g_isa.store(static_cast<int>(i));
      return;
    }
  }
  TORCH_CHECK_VALUE(false, "isa: unknown instruction set '", name, "' (best, sse2, sse4.2, avx2, avx512)");
}

std::vector<std::string> available_simd_isas() {
  std::vector<std::string> out;
  for (kd::simd_isa i : {kd::simd_isa::sse2, kd::simd_isa::sse4_2, kd::simd_isa::avx2, kd::simd_isa::avx512})
    if (kd::simd_isa_available(i)) out.emplace_back(kd::simd_isa_name(i));
  return out;
}

kd::dispatch_backend dispatch() { return kd::dispatch_backend{current_isa(), at::get_num_threads()}; }

// The policy gradient's backend for element type S: kd::dispatch_backend (SIMD, run-time instruction set, torch's
// threads) for float32 / bfloat16 / float16, the double-precision reference for float64 (as the divergences).
template <class S>
auto pg_backend() {
  if constexpr (std::is_same_v<S, double>) return kd::reference_backend{};
  else return dispatch();
}

// ---------------------------------------------------------------------------------------------------------------------
// Gradient buffers. The N x V gradient is written once by kd; for large buffers the first-touch page faults of 4 KiB
// pages cost as much as the fused pass itself (measured: ~280 ms for 512 MiB on the 2-core machine, the pass ~100 ms).
// Buffers of 8 MiB or more are therefore 2 MiB-aligned and marked MADV_HUGEPAGE (transparent huge pages, where the
// kernel allows them: THP "madvise" or "always"); smaller ones, or KD_TORCH_HUGEPAGES=0, use torch's allocator.
bool hugepages_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("KD_TORCH_HUGEPAGES");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

Tensor empty_grad(const Tensor& like) {
  const std::int64_t bytes = like.numel() * static_cast<std::int64_t>(like.element_size());
  constexpr std::int64_t huge = 2 << 20;
  if (!hugepages_enabled() || bytes < 4 * huge || !like.device().is_cpu())
    return at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  const std::size_t size = static_cast<std::size_t>((bytes + huge - 1) / huge * huge);
  void* p = std::aligned_alloc(static_cast<std::size_t>(huge), size);
  TORCH_CHECK(p != nullptr, "kd_torch: cannot allocate ", size, " bytes for the gradient");
#ifdef MADV_HUGEPAGE
  (void)madvise(p, size, MADV_HUGEPAGE);
#endif
  return at::from_blob(p, like.sizes(), [](void* q) { std::free(q); }, like.options().device(at::kCPU));
}

// ---------------------------------------------------------------------------------------------------------------------
// Errors.

// kd names C++ arguments; the Python API names its own. `names` maps kd's to Python's for one call.
struct arg_names {
  const char* student = "student_logits";
  const char* teacher = "teacher_logits";
  const char* normalizer = "num_items_in_batch";
  const char* labels = "labels";
  const char* row_weights = "row_weights";
  const char* teacher_indices = "teacher_topk_ids";  // kd::topk_divergence_loss's teacher.indices / .log_probs / .mode
  const char* teacher_log_probs = "teacher_topk_log_probs";
  const char* teacher_mode = "mode";
};

std::string python_arg(const kd::status& st, const arg_names& n) {
  const char* a = st.argument ? st.argument : "";
  if (!std::strcmp(a, "student")) return n.student;
  if (!std::strcmp(a, "teacher")) return n.teacher;
  if (!std::strcmp(a, "normalizer")) return n.normalizer;
  if (!std::strcmp(a, "labels")) return n.labels;
  if (!std::strcmp(a, "row_weights")) return n.row_weights;
  if (!std::strcmp(a, "teacher.indices")) return n.teacher_indices;
  if (!std::strcmp(a, "teacher.log_probs")) return n.teacher_log_probs;
  if (!std::strcmp(a, "teacher.mode")) return n.teacher_mode;
  if (!std::strcmp(a, "grad_student") || !std::strcmp(a, "grad_teacher") || !std::strcmp(a, "grad")) return "gradient";
  return a;
}

void raise_if_error(const kd::status& st, const arg_names& n = {}) {
  if (st.ok()) return;
  const std::string msg = python_arg(st, n) + ": " + st.to_string();
  if (st.code == kd::errc::unsupported) TORCH_CHECK_NOT_IMPLEMENTED(false, msg);
  TORCH_CHECK_VALUE(false, msg);
}

// ---------------------------------------------------------------------------------------------------------------------
// Tensor helpers.

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

void check_device(const Tensor& x, const char* name) {
  if (x.device().is_cpu()) return;
#ifndef KD_TORCH_WITH_CUDA
  TORCH_CHECK_NOT_IMPLEMENTED(false, name, ": kd has no backend for ", x.device().str(),
                              " tensors yet (CPU only in this build); move the tensors to the CPU with .cpu()");
#else
  TORCH_CHECK_NOT_IMPLEMENTED(x.device().is_cuda(), name, ": unsupported device ", x.device().str());
#endif
}

void check_logits(const Tensor& x, const char* name) {
  check_device(x, name);
  TORCH_CHECK_TYPE(is_float_dtype(x.scalar_type()), name, ": dtype must be float32, bfloat16, float16 or float64, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, name, ": must have shape [..., V], got a 0-dimensional tensor");
  TORCH_CHECK_VALUE(x.size(-1) >= 1, name, ": the vocabulary (last) dimension must be >= 1, got shape ", x.sizes());
}

// A view of the rows of a [..., V] tensor: G groups of R rows, row r of group g at data + offsets[g] + r * stride.
// One group (offsets {0}) whenever the leading dimensions collapse to one row stride.
struct row_layout {
  std::vector<std::int64_t> offsets;
  std::int64_t rows_per_group = 0;
  std::int64_t stride = 0;
};

// Layout of x, or std::nullopt-like empty offsets when x must be copied (last dimension not unit-stride, or rows that
// overlap: stride < V, e.g. an expanded tensor).
bool leading_collapse(const Tensor& x, std::int64_t& stride) {
  const std::int64_t V = x.size(-1);
  std::int64_t expect = -1;  // stride the next-outer dimension must have
  stride = V;
  bool first = true;
  for (std::int64_t d = x.dim() - 2; d >= 0; --d) {
    if (x.size(d) == 1) continue;
    if (first) {
      stride = x.stride(d);
      expect = x.stride(d) * x.size(d);
      first = false;
    } else {
      if (x.stride(d) != expect) return false;
      expect = x.stride(d) * x.size(d);
    }
  }
  return true;
}

bool rows_usable(const Tensor& x) {
  const std::int64_t V = x.size(-1);
  if (V > 1 && x.stride(-1) != 1) return false;
  for (std::int64_t d = 0; d + 1 < x.dim(); ++d)
    if (x.size(d) > 1 && x.stride(d) < V) return false;
  return true;
}

row_layout layout_of(const Tensor& x, bool grouped) {
  row_layout l;
  const std::int64_t V = x.size(-1);
  const std::int64_t rows = V > 0 ? x.numel() / V : 0;
  if (!grouped) {
    std::int64_t s = V;
    leading_collapse(x, s);
    l.offsets = {0};
    l.rows_per_group = rows;
    l.stride = x.dim() >= 2 && rows > 1 ? s : V;
    if (l.stride < V) l.stride = V;
    return l;
  }
  // Groups over dims [0, dim - 2), rows along dim - 2.
  const std::int64_t k = x.dim() - 1;  // number of leading dims (>= 2 here)
  l.rows_per_group = x.size(k - 1);
  l.stride = std::max<std::int64_t>(x.stride(k - 1), V);
  std::int64_t groups = 1;
  for (std::int64_t d = 0; d < k - 1; ++d) groups *= x.size(d);
  l.offsets.resize(static_cast<std::size_t>(groups));
  std::vector<std::int64_t> idx(static_cast<std::size_t>(k - 1), 0);
  for (std::int64_t g = 0; g < groups; ++g) {
    std::int64_t off = 0;
    for (std::int64_t d = 0; d < k - 1; ++d) off += idx[d] * x.stride(d);
    l.offsets[g] = off;
    for (std::int64_t d = k - 2; d >= 0; --d) {
      if (++idx[d] < x.size(d)) break;
      idx[d] = 0;
    }
  }
  return l;
}

template <class T>
const T* cptr(const Tensor& x) {
  return reinterpret_cast<const T*>(x.const_data_ptr());
}
template <class T>
T* mptr(const Tensor& x) {
  return reinterpret_cast<T*>(x.mutable_data_ptr());
}

// Leading shape of a [..., V] tensor (the per-row output's shape).
std::vector<std::int64_t> leading_shape(const Tensor& x) {
  auto s = x.sizes().vec();
  s.pop_back();
  return s;
}

// Labels / weights / masks: one entry per row, as a contiguous CPU tensor of an accepted dtype.
Tensor per_row_tensor(const Tensor& t, std::int64_t rows, const std::vector<std::int64_t>& lead, const char* name,
                      std::initializer_list<at::ScalarType> dtypes, const char* dtype_text) {
  check_device(t, name);
  bool ok = false;
  for (auto d : dtypes) ok = ok || t.scalar_type() == d;
  TORCH_CHECK_TYPE(ok, name, ": dtype must be ", dtype_text, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() == rows && (t.sizes().vec() == lead || t.dim() == 1), name, ": shape must be ",
                    c10::IntArrayRef(lead), " (one entry per row of the logits), got ", t.sizes());
  return t.contiguous();
}

// ---------------------------------------------------------------------------------------------------------------------
// The divergence operator.

enum reduction_code : std::int64_t { red_none = 0, red_sum = 1, red_mean = 2, red_normalizer = 3 };

// The optional per-row labels (int64 / int32) and row weights (float32) of a call over `rows` rows.
void per_row_inputs(const c10::optional<Tensor>& labels_in, const c10::optional<Tensor>& weights_in, std::int64_t rows,
                    const std::vector<std::int64_t>& lead, Tensor& labels, Tensor& weights) {
  if (labels_in.has_value() && labels_in->defined())
    labels = per_row_tensor(*labels_in, rows, lead, "labels", {at::kLong, at::kInt}, "int64 or int32");
  if (weights_in.has_value() && weights_in->defined())
    weights = per_row_tensor(*weights_in, rows, lead, "row_weights", {at::kFloat}, "float32");
}

kd::distill_options make_options(double temperature, bool t2_scale, int64_t reduction, double normalizer,
                                 int64_t ignore_index) {
  kd::distill_options opt;
  opt.temperature = temperature;
  opt.t2_scale = t2_scale;
  opt.reduction = static_cast<kd::reduction>(reduction);
  opt.normalizer = normalizer;
  opt.ignore_index = ignore_index;
  return opt;
}

// Points opt at rows [r0, r0 + rows) of the per-row labels (int64 / int32) and weights, where given.
void set_per_row_options(kd::distill_options& opt, const Tensor& labels, const Tensor& weights, std::int64_t r0,
                         std::int64_t rows) {
  if (labels.defined()) {
    if (labels.scalar_type() == at::kLong) opt.labels = kd::label_view(labels.const_data_ptr<int64_t>() + r0, rows);
    else opt.labels = kd::label_view(labels.const_data_ptr<int32_t>() + r0, rows);
  }
  if (weights.defined()) opt.row_weights = weights.const_data_ptr<float>() + r0;
}

// The options of a call over `rows` contiguous rows with its per-row labels and weights (kept alive in labels /
// weights: opt points into them).
kd::distill_options row_options(const c10::optional<Tensor>& labels_in, const c10::optional<Tensor>& weights_in,
                                std::int64_t rows, const std::vector<std::int64_t>& lead, double temperature,
                                bool t2_scale, int64_t reduction, double normalizer, int64_t ignore_index,
                                Tensor& labels, Tensor& weights) {
  per_row_inputs(labels_in, weights_in, rows, lead, labels, weights);
  kd::distill_options opt = make_options(temperature, t2_scale, reduction, normalizer, ignore_index);
  set_per_row_options(opt, labels, weights, 0, rows);
  return opt;
}

template <class F>
void dispatch_dtype(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(kd::bfloat16{}); break;
    case at::kHalf: f(kd::half{}); break;
    case at::kDouble: f(double{}); break;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", t);
  }
}

template <class S, class... A>
kd::status run_divergence_on_device(A&&... a) {
  // Only the CPU is reachable here (check_device raised for anything else).
  if constexpr (std::is_same_v<S, double>)
    return kd::divergence_loss(std::forward<A>(a)..., kd::reference_backend{});
  else
    return kd::divergence_loss(std::forward<A>(a)..., dispatch());
}

// Returns (loss [] float32 / float64, grad_student (student's shape and dtype, or [0]), grad_teacher (or [0]),
// per_row (leading shape, float32; float64 for float64 inputs), valid_rows [] int64).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> divergence_op(
    const Tensor& student_in, const Tensor& teacher_in, const c10::optional<Tensor>& labels_in,
    const c10::optional<Tensor>& weights_in, int64_t kind, double param0, double param1, double temperature,
    bool t2_scale, int64_t reduction, double normalizer, int64_t ignore_index, bool student_log_probs,
    bool teacher_log_probs, bool want_grad_student, bool want_grad_teacher, bool want_per_row) {
  arg_names names;
  names.student = student_log_probs ? "student_log_probs" : "student_logits";
  names.teacher = teacher_log_probs ? "teacher_log_probs" : "teacher_logits";
  check_logits(student_in, names.student);
  check_logits(teacher_in, names.teacher);
  TORCH_CHECK_TYPE(student_in.scalar_type() == teacher_in.scalar_type(), names.teacher, ": dtype ",
                   teacher_in.scalar_type(), " differs from ", names.student, "'s ", student_in.scalar_type(),
                   " (kd reads both sides in one dtype; cast one of them)");
  TORCH_CHECK_VALUE(student_in.sizes() == teacher_in.sizes(), names.teacher, ": shape ", teacher_in.sizes(),
                    " differs from ", names.student, "'s ", student_in.sizes(),
                    student_in.dim() == teacher_in.dim() && student_in.size(-1) != teacher_in.size(-1)
                        ? " (different vocabularies: kd never pads one side with zero logits; slice both to the shared "
                          "vocabulary, e.g. logits[..., :V])"
                        : "");
  TORCH_CHECK_VALUE(reduction >= red_none && reduction <= red_normalizer, "reduction: unknown code ", reduction);
  if (!kd::is_registered(static_cast<kd::divergence_kind>(kind)))
    TORCH_CHECK_VALUE(false, "divergence: unknown kind ", kind, " (not in kd's registry)");

  const Tensor student = rows_usable(student_in) ? student_in : student_in.contiguous();
  const Tensor teacher = rows_usable(teacher_in) ? teacher_in : teacher_in.contiguous();
  const std::int64_t V = student.size(-1);
  const std::int64_t rows = student.numel() / V;
  const auto lead = leading_shape(student);

  Tensor labels, weights;
  per_row_inputs(labels_in, weights_in, rows, lead, labels, weights);

  std::int64_t s_stride = V, t_stride = V;
  const bool grouped = student.dim() >= 3 && rows > 0 &&
                       !(leading_collapse(student, s_stride) && leading_collapse(teacher, t_stride));
  const row_layout ls = layout_of(student, grouped), lt = layout_of(teacher, grouped);
  const std::int64_t R = ls.rows_per_group;
  const std::size_t groups = ls.offsets.size();

  kd::distill_options opt = make_options(temperature, t2_scale, reduction, normalizer, ignore_index);
  const kd::divergence d = kd::divergence::of(static_cast<kd::divergence_kind>(kind), param0, param1);

  const bool f64 = student.scalar_type() == at::kDouble;
  const auto f_opts = student.options().dtype(f64 ? at::kDouble : at::kFloat);
  Tensor grad_s = want_grad_student ? empty_grad(student) : at::empty({0}, student.options());
  Tensor grad_t = want_grad_teacher ? empty_grad(teacher) : at::empty({0}, teacher.options());
  Tensor per_row = at::empty(lead, student.options().dtype(at::kFloat));
  (void)want_per_row;  // per-row values are always written (rows floats: the grouped mean and 'none' need them)

  double total = 0.0, den_total = 0.0;
  std::int64_t valid_total = 0;
  std::vector<double> den_g(groups, 0.0);
  std::vector<std::int64_t> valid_g(groups, 0);
  dispatch_dtype(student.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    for (std::size_t g = 0; g < groups; ++g) {
      const std::int64_t r0 = static_cast<std::int64_t>(g) * R;
      kd::distill_options o = opt;
      set_per_row_options(o, labels, weights, r0, R);
      const S* sp = cptr<S>(student) + ls.offsets[g];
      const S* tp = cptr<S>(teacher) + lt.offsets[g];
      kd::student_input<S> si{kd::const_rows<S>(sp, R, V, ls.stride),
                              student_log_probs ? kd::input_kind::log_probs : kd::input_kind::logits};
      kd::teacher_input<S> ti{kd::const_rows<S>(tp, R, V, lt.stride),
                              teacher_log_probs ? kd::input_kind::log_probs : kd::input_kind::logits};
      kd::distill_outputs<S> out;
      if (want_grad_student) out.grad_student = kd::mut_rows<S>(mptr<S>(grad_s) + r0 * V, R, V, V);
      if (want_grad_teacher) out.grad_teacher = kd::mut_rows<S>(mptr<S>(grad_t) + r0 * V, R, V, V);
      out.per_row = per_row.mutable_data_ptr<float>() + r0;
      kd::loss_result res;
      raise_if_error(run_divergence_on_device<S>(d, si, ti, o, res, out), names);
      valid_g[g] = res.valid_rows;
      valid_total += res.valid_rows;
      if (reduction == red_mean) {
        den_g[g] = res.valid_rows > 0 ? res.denominator : 0.0;
        total += res.loss * den_g[g];
        den_total += den_g[g];
      } else {
        total += res.loss;
      }
    }
  });
  if (reduction == red_mean) {
    if (groups == 1) {
      total = den_total > 0.0 ? total / den_total : 0.0;
    } else {
      // Each group was a token mean over its own rows: rescale to the mean over all groups (one pass over the
      // gradient, only for layouts whose leading dimensions do not collapse to one row stride).
      total = den_total > 0.0 ? total / den_total : 0.0;
      for (std::size_t g = 0; g < groups; ++g) {
        if (valid_g[g] == 0 || den_g[g] == den_total) continue;
        const double f = den_g[g] / den_total;
        const std::int64_t r0 = static_cast<std::int64_t>(g) * R;
        if (want_grad_student) grad_s.view({rows, V}).narrow(0, r0, R).mul_(f);
        if (want_grad_teacher) grad_t.view({rows, V}).narrow(0, r0, R).mul_(f);
      }
    }
  }
  Tensor loss = at::scalar_tensor(total, f_opts);
  // kd stores per-row values as float32; float64 callers get them as float64 (float32 precision) so that gradients
  // flowing back through them are not rounded to float32.
  if (f64) per_row = per_row.to(at::kDouble);
  return {loss, grad_s, grad_t, per_row, at::scalar_tensor(valid_total, student.options().dtype(at::kLong))};
}

// ---------------------------------------------------------------------------------------------------------------------
// Top-k teacher (kd/topk_teacher.hpp): student [..., V] logits; the teacher's top-k token ids [..., k] (int64) and
// log-probs [..., k] (float32; float64 with a float64 student). mode: 0 tail_bucket, 1 renormalize,
// 2 unnormalized_forward_kl. Returns (loss, grad_student (the student's shape and dtype) or [0], per_row, valid_rows).
std::tuple<Tensor, Tensor, Tensor, Tensor> topk_divergence_op(
    const Tensor& student_in, const Tensor& ids_in, const Tensor& lp_in, const c10::optional<Tensor>& labels_in,
    const c10::optional<Tensor>& weights_in, int64_t kind, double param0, double param1, int64_t mode,
    double temperature, bool t2_scale, int64_t reduction, double normalizer, int64_t ignore_index,
    bool student_log_probs, bool want_grad) {
  arg_names names;
  names.student = student_log_probs ? "student_log_probs" : "student_logits";
  names.teacher = "teacher_topk_log_probs";
  check_logits(student_in, names.student);
  check_device(ids_in, "teacher_topk_ids");
  check_device(lp_in, "teacher_topk_log_probs");
  TORCH_CHECK_TYPE(ids_in.scalar_type() == at::kLong || ids_in.scalar_type() == at::kInt,
                   "teacher_topk_ids: dtype must be int64 or int32, got ", ids_in.scalar_type());
  TORCH_CHECK_TYPE(is_float_dtype(lp_in.scalar_type()), "teacher_topk_log_probs: dtype must be a floating type, got ",
                   lp_in.scalar_type());
  TORCH_CHECK_VALUE(ids_in.sizes() == lp_in.sizes(), "teacher_topk_log_probs: shape ", lp_in.sizes(),
                    " differs from teacher_topk_ids' ", ids_in.sizes());
  TORCH_CHECK_VALUE(ids_in.dim() == student_in.dim() && ids_in.dim() >= 1 &&
                        ids_in.sizes().slice(0, ids_in.dim() - 1) == student_in.sizes().slice(0, student_in.dim() - 1),
                    "teacher_topk_ids: shape ", ids_in.sizes(), " must be the student's leading shape plus k (student ",
                    student_in.sizes(), ")");
  TORCH_CHECK_VALUE(ids_in.size(-1) >= 1, "teacher_topk_ids: k (the last dimension) must be >= 1");
  TORCH_CHECK_VALUE(reduction >= red_none && reduction <= red_normalizer, "reduction: unknown code ", reduction);
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, "mode: unknown code ", mode);
  if (!kd::is_registered(static_cast<kd::divergence_kind>(kind)))
    TORCH_CHECK_VALUE(false, "divergence: unknown kind ", kind, " (not in kd's registry)");
  const std::int64_t V = student_in.size(-1), k = ids_in.size(-1);
  const Tensor student = student_in.reshape({-1, V}).contiguous();
  const std::int64_t rows = student.size(0);
  const bool f64 = student.scalar_type() == at::kDouble;
  const Tensor ids = ids_in.reshape({-1, k}).to(at::kLong).contiguous();
  const Tensor lp = lp_in.reshape({-1, k}).to(f64 ? at::kDouble : at::kFloat).contiguous();
  const auto lead = leading_shape(student_in);
  Tensor labels, weights;
  const kd::distill_options opt = row_options(labels_in, weights_in, rows, lead, temperature, t2_scale, reduction,
                                              normalizer, ignore_index, labels, weights);
  const kd::divergence d = kd::divergence::of(static_cast<kd::divergence_kind>(kind), param0, param1);
  Tensor grad_s = want_grad ? at::empty_like(student) : at::empty({0}, student.options());
  Tensor per_row = at::empty({rows}, student.options().dtype(at::kFloat));
  kd::loss_result res;
  dispatch_dtype(student.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    kd::distill_outputs<S> out;
    if (want_grad) out.grad_student = kd::mut_rows<S>(mptr<S>(grad_s), rows, V, V);
    out.per_row = per_row.mutable_data_ptr<float>();
    const kd::student_input<S> si{kd::const_rows<S>(cptr<S>(student), rows, V),
                                  student_log_probs ? kd::input_kind::log_probs : kd::input_kind::logits};
    const auto m = static_cast<kd::topk_mode>(mode);
    kd::status st;
    if constexpr (std::is_same_v<S, double>)
      st = kd::topk_divergence_loss(d, si, kd::teacher_topk(cptr<std::int64_t>(ids), cptr<double>(lp), rows, k, m),
                                    opt, res, out, kd::reference_backend{});
    else
      st = kd::topk_divergence_loss(d, si, kd::teacher_topk(cptr<std::int64_t>(ids), cptr<float>(lp), rows, k, m),
                                    opt, res, out, dispatch());
    raise_if_error(st, names);
  });
  if (want_grad) grad_s = grad_s.view(student_in.sizes());
  Tensor loss = at::scalar_tensor(res.loss, student.options().dtype(f64 ? at::kDouble : at::kFloat));
  return {loss, grad_s, f64 ? per_row.view(lead).to(at::kDouble) : per_row.view(lead),
          at::scalar_tensor(res.valid_rows, student.options().dtype(at::kLong))};
}

// ---------------------------------------------------------------------------------------------------------------------
// MiniLLM policy gradient.

// Diagnostics in this order (kd_torch/minillm.py names them).
constexpr const char* pg_diag_names[] = {
    "loss",       "pg_loss",   "single_step_loss", "lm_loss",          "mean_reward",    "k3",
    "token_reverse_kl", "sequence_reward", "iw_mean", "iw_min",        "iw_max",         "iw_clip_fraction",
    "ratio_mean", "clip_fraction", "advantage_mean", "advantage_std", "valid_tokens",   "valid_sequences",
    "lm_tokens"};

std::vector<std::string> pg_diagnostic_names() { return {std::begin(pg_diag_names), std::end(pg_diag_names)}; }

Tensor diag_tensor(const kd::pg_diagnostics& g) {
  const double v[] = {g.loss,           g.pg_loss,        g.single_step_loss,  g.lm_loss,        g.mean_reward,
                      g.k3,             g.token_reverse_kl, g.sequence_reward, g.iw_mean,        g.iw_min,
                      g.iw_max,         g.iw_clip_fraction, g.ratio_mean,      g.clip_fraction,  g.advantage_mean,
                      g.advantage_std,  double(g.valid_tokens), double(g.valid_sequences), double(g.lm_tokens)};
  static_assert(sizeof(v) / sizeof(v[0]) == sizeof(pg_diag_names) / sizeof(pg_diag_names[0]));
  Tensor t = at::empty({static_cast<std::int64_t>(sizeof(v) / sizeof(v[0]))}, at::dtype(at::kDouble));
  std::memcpy(t.mutable_data_ptr<double>(), v, sizeof(v));
  return t;
}

kd::mask_view mask_of(const Tensor& m) {
  switch (m.scalar_type()) {
    case at::kBool: return kd::mask_view(m.const_data_ptr<bool>(), m.numel());
    case at::kByte: return kd::mask_view(m.const_data_ptr<uint8_t>(), m.numel());
    case at::kInt: return kd::mask_view(m.const_data_ptr<int32_t>(), m.numel());
    case at::kLong: return kd::mask_view(m.const_data_ptr<int64_t>(), m.numel());
    default: return kd::mask_view(m.const_data_ptr<float>(), m.numel());
  }
}

kd::label_view labels_of(const Tensor& t) {
  if (t.scalar_type() == at::kLong) return kd::label_view(t.const_data_ptr<int64_t>(), t.numel());
  return kd::label_view(t.const_data_ptr<int32_t>(), t.numel());
}

// Returns (loss [] float32/64, grad (student's shape and dtype, or [0]), rewards, advantages, importance_weights,
// log_probs ([B, L] float32 each), diagnostics [19] float64).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> policy_gradient_op(
    const Tensor& student_in, const Tensor& teacher_in, const Tensor& tokens_in, const c10::optional<Tensor>& mask_in,
    const c10::optional<Tensor>& old_log_probs_in, const c10::optional<Tensor>& lm_labels_in, double temperature,
    double gamma, int64_t length_norm, int64_t current_reward, bool single_step, bool whiten, double reward_scale,
    double reward_clip, double alpha, int64_t iw_form, double iw_clip, double clip_range, double lm_weight,
    int64_t ignore_index, int64_t reduction, double normalizer, bool want_grad) {
  arg_names names;
  names.labels = "lm_labels";
  check_logits(student_in, "student_logits");
  check_logits(teacher_in, "teacher_logits");
  TORCH_CHECK_VALUE(student_in.dim() == 3, "student_logits: must have shape [B, L, V], got ", student_in.sizes());
  TORCH_CHECK_TYPE(student_in.scalar_type() == teacher_in.scalar_type(), "teacher_logits: dtype ",
                   teacher_in.scalar_type(), " differs from student_logits' ", student_in.scalar_type());
  TORCH_CHECK_VALUE(student_in.sizes() == teacher_in.sizes(), "teacher_logits: shape ", teacher_in.sizes(),
                    " differs from student_logits' ", student_in.sizes(),
                    student_in.size(-1) != teacher_in.size(-1)
                        ? " (different vocabularies: slice both to the shared vocabulary; kd never pads with zero logits)"
                        : "");
  TORCH_CHECK_VALUE(reduction >= red_none && reduction <= red_normalizer, "reduction: unknown code ", reduction);
  const std::int64_t B = student_in.size(0), L = student_in.size(1), V = student_in.size(2);
  const std::int64_t rows = B * L;
  std::int64_t st_s = V, st_t = V;
  const Tensor student = rows_usable(student_in) && leading_collapse(student_in, st_s) ? student_in : student_in.contiguous();
  const Tensor teacher = rows_usable(teacher_in) && leading_collapse(teacher_in, st_t) ? teacher_in : teacher_in.contiguous();
  if (!student.is_same(student_in)) st_s = V, leading_collapse(student, st_s);
  if (!teacher.is_same(teacher_in)) st_t = V, leading_collapse(teacher, st_t);
  st_s = rows > 1 ? std::max(st_s, V) : V;
  st_t = rows > 1 ? std::max(st_t, V) : V;
  const std::vector<std::int64_t> lead = {B, L};
  const Tensor tokens = per_row_tensor(tokens_in, rows, lead, "tokens", {at::kLong, at::kInt}, "int64 or int32");
  Tensor mask, old_lp, lm_labels;
  if (mask_in.has_value() && mask_in->defined())
    mask = per_row_tensor(*mask_in, rows, lead, "mask", {at::kBool, at::kByte, at::kInt, at::kLong, at::kFloat},
                          "bool, uint8, int32, int64 or float32");
  if (old_log_probs_in.has_value() && old_log_probs_in->defined())
    old_lp = per_row_tensor(*old_log_probs_in, rows, lead, "old_log_probs", {at::kFloat}, "float32");
  if (lm_labels_in.has_value() && lm_labels_in->defined())
    lm_labels = per_row_tensor(*lm_labels_in, rows, lead, "lm_labels", {at::kLong, at::kInt}, "int64 or int32");

  kd::pg_options o;
  o.temperature = temperature;
  o.gamma = gamma;
  o.length_norm = static_cast<kd::length_norm>(length_norm);
  o.current_reward = static_cast<kd::current_reward>(current_reward);
  o.single_step = single_step;
  o.whiten = whiten;
  o.reward_scale = reward_scale;
  o.reward_clip = reward_clip;
  o.alpha = alpha;
  o.iw_form = static_cast<kd::importance_weight_form>(iw_form);
  o.iw_clip = iw_clip;
  o.clip_range = clip_range;
  o.lm_weight = lm_weight;
  o.ignore_index = ignore_index;
  o.reduction = reduction == red_none ? kd::reduction::sum : static_cast<kd::reduction>(reduction);
  o.normalizer = normalizer;

  kd::pg_sequences seq;
  seq.batch = B;
  seq.time = L;
  seq.tokens = labels_of(tokens);
  if (mask.defined()) seq.mask = mask_of(mask);
  if (old_lp.defined()) seq.old_log_probs = old_lp.const_data_ptr<float>();
  if (lm_labels.defined()) seq.lm_labels = labels_of(lm_labels);

  const auto fo = at::dtype(at::kFloat);
  Tensor grad = want_grad ? empty_grad(student) : at::empty({0}, student.options());
  Tensor rewards = at::empty(lead, fo), adv = at::empty(lead, fo), iw = at::empty(lead, fo), lp = at::empty(lead, fo);
  kd::pg_diagnostics diag;
  dispatch_dtype(student.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    kd::pg_outputs<S> out;
    if (want_grad) out.grad_student = kd::mut_rows<S>(mptr<S>(grad), rows, V, V);
    out.rewards = rewards.mutable_data_ptr<float>();
    out.advantages = adv.mutable_data_ptr<float>();
    out.importance_weights = iw.mutable_data_ptr<float>();
    out.log_probs = lp.mutable_data_ptr<float>();
    raise_if_error(kd::policy_gradient(kd::student_logits(cptr<S>(student), rows, V, st_s),
                                       kd::teacher_logits(cptr<S>(teacher), rows, V, st_t), seq, o, out, diag,
                                       pg_backend<S>()),
                   names);
  });
  const bool f64 = student.scalar_type() == at::kDouble;
  return {at::scalar_tensor(diag.loss, at::dtype(f64 ? at::kDouble : at::kFloat)), grad, rewards, adv, iw, lp,
          diag_tensor(diag)};
}

// Advantages from given rewards (kd::pg_advantages): [B, L] float32 in, [B, L] float32 out.
Tensor pg_advantages_op(const Tensor& rewards_in, const c10::optional<Tensor>& mask_in, double gamma,
                        int64_t length_norm, int64_t current_reward, bool whiten) {
  check_device(rewards_in, "rewards");
  TORCH_CHECK_TYPE(rewards_in.scalar_type() == at::kFloat, "rewards: dtype must be float32, got ",
                   rewards_in.scalar_type());
  TORCH_CHECK_VALUE(rewards_in.dim() == 2, "rewards: must have shape [B, L], got ", rewards_in.sizes());
  const std::int64_t B = rewards_in.size(0), L = rewards_in.size(1);
  const Tensor rewards = rewards_in.contiguous();
  Tensor mask;
  if (mask_in.has_value() && mask_in->defined())
    mask = per_row_tensor(*mask_in, B * L, {B, L}, "mask", {at::kBool, at::kByte, at::kInt, at::kLong, at::kFloat},
                          "bool, uint8, int32, int64 or float32");
  kd::pg_options o;
  o.gamma = gamma;
  o.length_norm = static_cast<kd::length_norm>(length_norm);
  o.current_reward = static_cast<kd::current_reward>(current_reward);
  o.whiten = whiten;
  Tensor adv = at::empty({B, L}, at::dtype(at::kFloat));
  raise_if_error(kd::pg_advantages(rewards.const_data_ptr<float>(), mask.defined() ? mask_of(mask) : kd::mask_view{},
                                   B, L, o, adv.mutable_data_ptr<float>()));
  return adv;
}

// ---------------------------------------------------------------------------------------------------------------------
// The registry, as plain data for Python (kd_torch derives its functions and modules from it).
std::vector<std::tuple<std::string, std::string, std::string, std::string, int64_t,
                       std::vector<std::tuple<std::string, double, double, bool, bool, double, std::string, double>>,
                       bool>>
registry() {
  std::vector<std::tuple<std::string, std::string, std::string, std::string, int64_t,
                         std::vector<std::tuple<std::string, double, double, bool, bool, double, std::string, double>>,
                         bool>>
      out;
  for (const kd::divergence_info& i : kd::divergence_registry()) {
    std::vector<std::tuple<std::string, double, double, bool, bool, double, std::string, double>> ps;
    for (int k = 0; k < i.n_params; ++k) {
      const kd::param_spec& p = i.params[k];
      ps.emplace_back(p.name, p.lo, p.hi, p.lo_open, p.hi_open, p.min_nonzero, p.range_text, p.example);
    }
    out.emplace_back(i.name, i.cli_name, i.formula, i.citation, static_cast<int64_t>(i.kind), ps, i.x_is_student);
  }
  return out;
}

// The divergence actually computed for (kind, p0, p1) after kd's endpoint rules (jsd(0) is forward_kl, ...).
std::string canonical_name(int64_t kind, double p0, double p1) {
  return kd::divergence_name(
      kd::canonical_divergence(kd::divergence::of(static_cast<kd::divergence_kind>(kind), p0, p1)).kind);
}

// ---------------------------------------------------------------------------------------------------------------------
// Vocabulary-parallel divergence (kd/vocab_parallel.hpp): this process's vocabulary shard of [rows, V_local] student and
// teacher rows; kd's collectives go through `all_reduce(tensor, op)` (op "max" or "sum"; a float64 CPU tensor viewing
// kd's buffer, reduced in place), which kd_torch.distributed binds to torch.distributed.all_reduce.
// Returns (loss, grad_student or an empty tensor, per_row float32).
struct python_communicator {
  const pybind11::function* fn;
  void call(double* x, std::int64_t n, const char* op) const {
    Tensor t = torch::from_blob(x, {n}, torch::TensorOptions().dtype(at::kDouble));
    (*fn)(t, op);
  }
  void all_reduce_max(double* x, std::int64_t n) const { call(x, n, "max"); }
  void all_reduce_sum(double* x, std::int64_t n) const { call(x, n, "sum"); }
};

std::tuple<Tensor, Tensor, Tensor> vocab_parallel_op(const Tensor& student_in, const Tensor& teacher_in,
                                                     const c10::optional<Tensor>& labels_in,
                                                     const c10::optional<Tensor>& weights_in, int64_t kind,
                                                     double param0, double param1, double temperature, bool t2_scale,
                                                     int64_t reduction, double normalizer, int64_t ignore_index,
                                                     bool want_grad, const pybind11::function& all_reduce) {
  arg_names names;
  names.student = "student_logits";
  names.teacher = "teacher_logits";
  check_logits(student_in, names.student);
  check_logits(teacher_in, names.teacher);
  TORCH_CHECK_TYPE(student_in.scalar_type() == teacher_in.scalar_type(), names.teacher, ": dtype ",
                   teacher_in.scalar_type(), " differs from ", names.student, "'s ", student_in.scalar_type());
  TORCH_CHECK_VALUE(student_in.sizes() == teacher_in.sizes(), names.teacher, ": shape ", teacher_in.sizes(),
                    " differs from ", names.student, "'s ", student_in.sizes(),
                    " (each process passes the same shard of both models' vocabularies)");
  TORCH_CHECK_VALUE(reduction >= red_none && reduction <= red_normalizer, "reduction: unknown code ", reduction);
  if (!kd::is_registered(static_cast<kd::divergence_kind>(kind)))
    TORCH_CHECK_VALUE(false, "divergence: unknown kind ", kind, " (not in kd's registry)");
  const std::int64_t V = student_in.size(-1);
  const Tensor student = student_in.reshape({-1, V}).contiguous(), teacher = teacher_in.reshape({-1, V}).contiguous();
  const std::int64_t rows = student.size(0);
  const auto lead = leading_shape(student_in);
  Tensor labels, weights;
  const kd::distill_options opt = row_options(labels_in, weights_in, rows, lead, temperature, t2_scale, reduction,
                                              normalizer, ignore_index, labels, weights);
  const kd::divergence d = kd::divergence::of(static_cast<kd::divergence_kind>(kind), param0, param1);
  const bool f64 = student.scalar_type() == at::kDouble;
  Tensor grad_s = want_grad ? at::empty_like(student) : at::empty({0}, student.options());
  Tensor per_row = at::empty({rows}, student.options().dtype(at::kFloat));
  const python_communicator comm{&all_reduce};
  kd::loss_result res;
  dispatch_dtype(student.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    kd::distill_outputs<S> out;
    if (want_grad) out.grad_student = kd::mut_rows<S>(mptr<S>(grad_s), rows, V, V);
    out.per_row = per_row.mutable_data_ptr<float>();
    const auto si = kd::student_logits(cptr<S>(student), rows, V);
    const auto ti = kd::teacher_logits(cptr<S>(teacher), rows, V);
    kd::status st;
    if constexpr (std::is_same_v<S, double>)
      st = kd::vocab_parallel_divergence(d, si, ti, opt, res, out, comm, kd::reference_backend{});
    else
      st = kd::vocab_parallel_divergence(d, si, ti, opt, res, out, comm, dispatch());
    raise_if_error(st, names);
  });
  if (want_grad) grad_s = grad_s.view(student_in.sizes());
  Tensor loss = at::scalar_tensor(res.loss, student.options().dtype(f64 ? at::kDouble : at::kFloat));
  // float64 callers get per-row values as float64 (float32 precision), as divergence_op does.
  return {loss, grad_s, f64 ? per_row.view(lead).to(at::kDouble) : per_row.view(lead)};
}

}  // namespace

TORCH_LIBRARY(kd_torch, m) {
  m.def(
      "divergence(Tensor student, Tensor teacher, Tensor? labels, Tensor? row_weights, int kind, float param0, "
      "float param1, float temperature, bool t2_scale, int reduction, float normalizer, int ignore_index, "
      "bool student_log_probs, bool teacher_log_probs, bool grad_student, bool grad_teacher, bool per_row) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "policy_gradient(Tensor student, Tensor teacher, Tensor tokens, Tensor? mask, Tensor? old_log_probs, "
      "Tensor? lm_labels, float temperature, float gamma, int length_norm, int current_reward, bool single_step, "
      "bool whiten, float reward_scale, float reward_clip, float alpha, int iw_form, float iw_clip, float clip_range, "
      "float lm_weight, int ignore_index, int reduction, float normalizer, bool grad) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "topk_divergence(Tensor student, Tensor teacher_ids, Tensor teacher_log_probs, Tensor? labels, "
      "Tensor? row_weights, int kind, float param0, float param1, int mode, float temperature, bool t2_scale, "
      "int reduction, float normalizer, int ignore_index, bool student_log_probs, bool grad) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "pg_advantages(Tensor rewards, Tensor? mask, float gamma, int length_norm, int current_reward, bool whiten) -> "
      "Tensor");
}

// The same kernels serve every device key: they check the device themselves (CPU runs, CUDA raises until kd has a CUDA
// backend), so a CUDA tensor gets kd's message instead of the dispatcher's "could not run ... with the CUDA backend".
TORCH_LIBRARY_IMPL(kd_torch, CPU, m) {
  m.impl("divergence", &divergence_op);
  m.impl("policy_gradient", &policy_gradient_op);
  m.impl("pg_advantages", &pg_advantages_op);
  m.impl("topk_divergence", &topk_divergence_op);
}
TORCH_LIBRARY_IMPL(kd_torch, CUDA, m) {
  m.impl("divergence", &divergence_op);
  m.impl("policy_gradient", &policy_gradient_op);
  m.impl("pg_advantages", &pg_advantages_op);
  m.impl("topk_divergence", &topk_divergence_op);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kd's fused distillation losses as PyTorch operators (torch.ops.kd_torch.*)";
  m.def("simd_isa", &simd_isa, "The instruction set kd's CPU kernels use (kd::dispatch_backend's choice or the forced one)");
  m.def("set_simd_isa", &set_simd_isa, "Force an instruction set ('best', 'sse2', 'sse4.2', 'avx2', 'avx512')");
  m.def("available_simd_isas", &available_simd_isas, "Instruction sets this CPU and build support");
  m.def("registry", &registry, "kd's divergence registry (kd/divergences/registry.hpp)");
  m.def("canonical_name", &canonical_name, "The divergence computed for (kind, param0, param1) after endpoint rules");
  m.def("vocab_parallel", &vocab_parallel_op,
        "kd::vocab_parallel_divergence on this process's vocabulary shard; collectives through all_reduce(tensor, op)");
  m.def("pg_diagnostic_names", &pg_diagnostic_names, "Names of the diagnostics tensor of policy_gradient");
  m.attr("version") = std::to_string(KD_VERSION_MAJOR) + "." + std::to_string(KD_VERSION_MINOR) + "." +
                      std::to_string(KD_VERSION_PATCH);
  m.attr("with_cuda") =
#ifdef KD_TORCH_WITH_CUDA
      true;
#else
      false;
#endif
}
