// kd loss: one fused divergence call on .npy inputs; prints one JSON object and optionally writes the student gradient.
#include <kd/kd.hpp>

#include <cctype>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "npy.hpp"

namespace kdtool {
namespace {

std::string loss_help() {
  std::string names, params, defs;
  for (const kd::divergence_info& i : kd::divergence_registry()) {
    names += names.empty() ? "" : ",";
    names += i.cli_name;
    defs += "  ";
    defs += i.cli_name;
    defs += std::string(6 - std::min<std::size_t>(5, std::strlen(i.cli_name)), ' ');
    defs += i.name;
    defs += ": ";
    defs += i.formula;
    for (int k = 0; k < i.n_params; ++k) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s --%s (%s, default %g)", k ? "," : ";", i.params[k].name,
                    i.params[k].range_text, i.params[k].example);
      defs += buf;
      if (params.find(std::string("--") + i.params[k].name + " ") == std::string::npos)
        params += std::string("[--") + i.params[k].name + " " + static_cast<char>(std::toupper(i.params[k].name[0])) + "] ";
    }
    defs += "\n";
  }
  return "usage: kd loss --loss {" + names +
         "} --student S.npy --teacher T.npy\n"
         "               [--student-kind logits|log_probs] [--teacher-kind logits|log_probs]\n"
         "               " + params + "[--temperature T] [--t2-scale]\n"
         "               [--labels L.npy --ignore-index I] [--reduction none|sum|mean|normalizer] [--normalizer N]\n"
         "               [--grad G.npy] [--backend default|reference]\n"
         "Inputs: float16/32/64 arrays of shape [N, V] or [B, T, V] (rows = N or B*T); labels int32/int64 of shape [rows] "
         "or [B, T].\n"
         "p = softmax(teacher / T), q = softmax(student / T); divergences (kd/divergences/registry.hpp):\n" + defs +
         "Prints JSON: loss (nats), per_row, valid_rows, denominator.\n"
         "--grad writes dloss/d(student input) as .npy of the student's shape: float64 for a float64 student, else float32.\n"
         "per_row (and loss) are printed with 17 significant digits, as float64 values when either input is float64. For\n"
         "full float64 precision use --backend reference (the default SIMD backend computes in float32).\n"
         "Exit codes: 0 ok, 1 value error in the data (NaN/inf inputs, infinite divergence), 2 bad arguments or files (one\n"
         "line naming the flag; also a repeated flag, a non-decimal number or an out-of-range --ignore-index).\n";
}

struct loaded {
  npy_array a;
  std::int64_t rows = 0, cols = 0;
};

loaded load_logits(const std::string& path, const char* name) {
  loaded l;
  try {
    l.a = load_npy(path);
  } catch (const npy_error& e) {
    throw usage_error(std::string("--") + name + ": " + e.what());
  }
  if (!l.a.is_float())
    throw usage_error(std::string("--") + name + ": " + path + ": dtype " + npy_dtype_name(l.a.dtype) +
                      " is not float16/float32/float64");
  if (l.a.shape.size() != 2 && l.a.shape.size() != 3)
    throw usage_error(std::string("--") + name + ": " + path + ": shape must be [N, V] or [B, T, V]");
  l.cols = l.a.shape.back();
  l.rows = l.a.size() / (l.cols ? l.cols : 1);
  if (l.cols < 1) throw usage_error(std::string("--") + name + ": " + path + ": vocabulary dimension is 0");
  return l;
}

template <class T>
std::vector<T> typed(const npy_array& a) {
  if constexpr (std::is_same_v<T, double>) return a.to_double();
  else if constexpr (std::is_same_v<T, float>) return a.to_float();
  else {
    std::vector<T> v(static_cast<std::size_t>(a.size()));
    for (std::int64_t i = 0; i < a.size(); ++i) v[i] = static_cast<T>(static_cast<float>(a.get_double(i)));
    return v;
  }
}

struct run_args {
  kd::divergence d;
  kd::distill_options opt;
  kd::input_kind skind, tkind;
  bool reference = false;
  std::string grad_path;
  std::vector<std::int64_t> grad_shape;
  const args* cli = nullptr;  // to name the flag of an argument error
};

// Per-row values in double: kd::distill_outputs::per_row is float*, so for float64 inputs each row's value w_r l_r (x T^2)
// is the sum-reduced loss (a double) of a one-row call with that row's label. The main call has already checked every
// argument and value, so these calls cannot fail.
template <class S, class P>
std::vector<double> per_row_f64(const kd::student_input<S>& si, const kd::teacher_input<P>& ti, const run_args& ra) {
  std::vector<double> v(static_cast<std::size_t>(si.x.rows), 0.0);
  for (std::int64_t r = 0; r < si.x.rows; ++r) {
    kd::distill_options o = ra.opt;
    o.reduction = kd::reduction::sum;
    if (!o.labels.empty())
      o.labels = o.labels.i64 ? kd::label_view(o.labels.i64 + r, 1) : kd::label_view(o.labels.i32 + r, 1);
    if (o.row_weights) o.row_weights += r;
    const kd::student_input<S> s1{kd::const_rows<S>(si.x.row(r), 1, si.x.cols), si.kind};
    const kd::teacher_input<P> t1{kd::const_rows<P>(ti.x.row(r), 1, ti.x.cols), ti.kind};
    kd::loss_result res;
    const kd::status st = ra.reference
                              ? kd::divergence_loss(ra.d, s1, t1, o, res, kd::distill_outputs<double>{}, kd::reference_backend{})
                              : kd::divergence_loss(ra.d, s1, t1, o, res, kd::distill_outputs<double>{});
    v[static_cast<std::size_t>(r)] = st.ok() ? res.loss : std::numeric_limits<double>::quiet_NaN();
  }
  return v;
}

template <class S, class P>
int run_typed(const loaded& ls, const loaded& lt, const run_args& ra) {
  // Output precision follows the inputs: a float64 student gives a float64 gradient, a float64 side float64 per-row values;
  // otherwise float32 as before.
  using G = std::conditional_t<std::is_same_v<S, double>, double, float>;
  constexpr bool f64_rows = std::is_same_v<S, double> || std::is_same_v<P, double>;
  std::vector<S> s = typed<S>(ls.a);
  std::vector<P> t = typed<P>(lt.a);
  std::vector<float> per_row(static_cast<std::size_t>(ls.rows));
  std::vector<G> grad(ra.grad_path.empty() ? 0 : s.size());
  kd::student_input<S> si{kd::const_rows<S>(s.data(), ls.rows, ls.cols), ra.skind};
  kd::teacher_input<P> ti{kd::const_rows<P>(t.data(), lt.rows, lt.cols), ra.tkind};
  kd::distill_outputs<G> out;
  out.per_row = per_row.data();
  if (!grad.empty()) out.grad_student = kd::mut_rows<G>(grad.data(), ls.rows, ls.cols);
  kd::loss_result res;
  kd::status st = ra.reference ? kd::divergence_loss(ra.d, si, ti, ra.opt, res, out, kd::reference_backend{})
                               : kd::divergence_loss(ra.d, si, ti, ra.opt, res, out);
  if (st.code == kd::errc::invalid_argument) throw usage_error(ra.cli->name_flag(st.argument, st.to_string()));
  if (!st.ok()) {
    std::fprintf(stderr, "kd loss: %s\n", st.to_string().c_str());
    return 1;
  }
  std::string per_row_json;
  if constexpr (f64_rows) {
    const std::vector<double> v = per_row_f64(si, ti, ra);
    per_row_json = json_array(v.data(), v.size());
  } else {
    per_row_json = json_array(per_row.data(), per_row.size());
  }
  if (!grad.empty()) {
    try {
      save_npy(ra.grad_path, grad.data(), ra.grad_shape);
    } catch (const npy_error& e) {
      throw usage_error(std::string("--grad: ") + e.what());
    }
  }
  std::printf("{\"loss_name\": %s, \"param\": %s, \"param2\": %s, \"loss\": %s, \"valid_rows\": %lld, \"denominator\": %s, "
              "\"rows\": %lld, \"vocab\": %lld, \"temperature\": %s, \"reduction\": %s, \"per_row\": %s}\n",
              json_string(kd::divergence_name(ra.d.kind)).c_str(), json_number(ra.d.param).c_str(), json_number(ra.d.param2).c_str(),
              json_number(res.loss).c_str(), static_cast<long long>(res.valid_rows),
              json_number(res.denominator).c_str(), static_cast<long long>(ls.rows), static_cast<long long>(ls.cols),
              json_number(ra.opt.temperature).c_str(), json_string(kd::reduction_name(ra.opt.reduction)).c_str(),
              per_row_json.c_str());
  return 0;
}

template <class S>
int dispatch_teacher(const loaded& ls, const loaded& lt, const run_args& ra) {
  switch (lt.a.dtype) {
    case npy_dtype::f16: return run_typed<S, kd::half>(ls, lt, ra);
    case npy_dtype::f64: return run_typed<S, double>(ls, lt, ra);
    default: return run_typed<S, float>(ls, lt, ra);
  }
}

int loss_main(int argc, char** argv) {
  // Divergence names and parameter flags come from the registry (kd/divergences/registry.hpp).
  std::set<std::string> valued = {"loss",   "student",   "teacher",    "student-kind", "teacher-kind", "temperature",
                                  "labels", "ignore-index", "reduction", "normalizer",   "grad",         "backend"};
  std::vector<std::string> names;
  for (const kd::divergence_info& i : kd::divergence_registry()) {
    names.push_back(i.cli_name);
    for (int k = 0; k < i.n_params; ++k) valued.insert(i.params[k].name);
  }
  args a(argc, argv, valued, {"t2-scale"});
  if (a.help()) {
    std::fputs(loss_help().c_str(), stdout);
    return 0;
  }
  const std::string name = a.choice("loss", names, a.required("loss"));
  const kd::divergence_info& info = *kd::find_divergence(name.c_str());
  double p[2] = {0.0, 0.0};
  for (int k = 0; k < info.n_params; ++k) p[k] = a.num(info.params[k].name, info.params[k].example);
  for (const kd::divergence_info& i : kd::divergence_registry())
    for (int k = 0; k < i.n_params; ++k) {
      const std::string flag = i.params[k].name;
      bool mine = false;
      for (int m = 0; m < info.n_params; ++m) mine |= flag == info.params[m].name;
      if (a.has(flag) && !mine) throw usage_error("--" + flag + " is not a parameter of --loss " + name);
    }
  run_args ra;
  ra.cli = &a;
  ra.d = kd::divergence::of(info.kind, p[0], p[1]);
  ra.skind = a.choice("student-kind", {"logits", "log_probs"}, "logits") == "logits" ? kd::input_kind::logits
                                                                                      : kd::input_kind::log_probs;
  ra.tkind = a.choice("teacher-kind", {"logits", "log_probs"}, "logits") == "logits" ? kd::input_kind::logits
                                                                                      : kd::input_kind::log_probs;
  ra.opt.temperature = a.num("temperature", 1.0);
  ra.opt.t2_scale = a.has("t2-scale");
  const std::string red =
      a.choice("reduction", {"none", "sum", "mean", "normalizer"}, a.has("normalizer") ? "normalizer" : "mean");
  ra.opt.reduction = red == "none"  ? kd::reduction::none
                     : red == "sum" ? kd::reduction::sum
                     : red == "mean" ? kd::reduction::mean
                                     : kd::reduction::normalizer;
  if (a.has("normalizer") && ra.opt.reduction != kd::reduction::normalizer)
    throw usage_error("--normalizer needs --reduction normalizer (or no --reduction)");
  ra.opt.normalizer = a.num("normalizer", 0.0);
  ra.reference = a.choice("backend", {"default", "reference"}, "default") == "reference";

  loaded ls = load_logits(a.required("student"), "student");
  loaded lt = load_logits(a.required("teacher"), "teacher");
  if (ls.a.shape != lt.a.shape) throw usage_error("--teacher: shape differs from --student's");

  npy_array labels;
  std::vector<std::int64_t> label_values;
  if (a.has("labels")) {
    try {
      labels = load_npy(a.str("labels"));
    } catch (const npy_error& e) {
      throw usage_error(std::string("--labels: ") + e.what());
    }
    if (!labels.is_int()) throw usage_error("--labels: dtype must be int32 or int64");
    if (labels.size() != ls.rows) throw usage_error("--labels: must have one entry per row (shape [N] or [B, T])");
    label_values = labels.to_int64();
    ra.opt.labels = kd::label_view(label_values.data(), static_cast<std::int64_t>(label_values.size()));
    ra.opt.ignore_index = a.integer("ignore-index", -100);
  } else if (a.has("ignore-index")) {
    throw usage_error("--ignore-index needs --labels");
  }
  ra.grad_path = a.str("grad");
  ra.grad_shape = ls.a.shape;

  switch (ls.a.dtype) {
    case npy_dtype::f16: return dispatch_teacher<kd::half>(ls, lt, ra);
    case npy_dtype::f64: return dispatch_teacher<double>(ls, lt, ra);
    default: return dispatch_teacher<float>(ls, lt, ra);
  }
}

}  // namespace

int cmd_loss(int argc, char** argv) {
  try {
    return loss_main(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "kd loss: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kd loss: %s\n", e.what());
    return 2;
  }
}

}  // namespace kdtool
