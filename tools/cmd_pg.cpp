// kd pg: one fused MiniLLM policy-gradient step (kd::policy_gradient) on .npy inputs; prints one JSON object with the
// per-position rewards, advantages and importance weights [B, L] and the diagnostics, and optionally writes the total
// gradient with respect to the student logits as float32 .npy [B, L, V].
#include <kd/policy_gradient.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "npy.hpp"

namespace kdtool {
namespace {

const char* kPgHelp =
    "usage: kd pg --student S.npy --teacher T.npy --tokens Y.npy [--mask M.npy] [--old-logprobs O.npy] [options]\n"
    "MiniLLM policy gradient of the sequence-level reverse KL KL(student || teacher) (Gu et al. arXiv 2306.08543).\n"
    "Inputs: student and teacher logits float16/32/64 [B, L, V]; sampled tokens int32/int64 [B, L]; mask [B, L] (bool,\n"
    "uint8, int or float; nonzero = response token, 0 = padding, NaN = error; without --mask, positions whose student\n"
    "logits are all -inf are padding); optional rollout-time student log-probs of the tokens float [B, L].\n"
    "Options (one flag per field of kd::pg_options; defaults are those of --preset, itself default kd::pg_options{}):\n"
    "  --preset default|paper|reference-code|exact  start from kd::pg_options{} / ::paper() / ::reference_code() / ::exact()\n"
    "  --temperature T      softmax temperature of both models, T > 0 (default 1)\n"
    "  --gamma G            discount in [0, 1] over valid positions (default 1)\n"
    "  --length-norm none|paper|reference|discounted  advantage normalization (default paper): paper = Eq. 6, mean of the\n"
    "                       summed rewards; reference = / n_t (LMOps); discounted = / sum_k gamma^k (TRL)\n"
    "  --current-reward by-variant|exclude|include  whether A_t includes r_t (by-variant: include for reference and\n"
    "                       discounted, exclude otherwise). TRL's default MiniLLM advantage A_t = r_t:\n"
    "                       --gamma 0 --current-reward include --length-norm discounted (or none)\n"
    "  --single-step on|off exact single-step KL term (default on)\n"
    "  --whiten on|off      whiten advantages over the valid positions (default off)\n"
    "  --reward-scale S     rewards are divided by S > 0 (default 1)\n"
    "  --reward-clip R      clip scaled rewards to [-R, R]; 0 = off (default 0)\n"
    "  --alpha A            teacher-mix coefficient in [0, 1] of the sampling distribution (default 0)\n"
    "  --iw per-token|exact importance-weight form (default per-token)\n"
    "  --iw-clip W          clip importance weights at W; 0 = off (default 0; a hard cap of 1e10 always applies)\n"
    "  --clip C             PPO clip range in [0, 1); 0 = off (default 0)\n"
    "  --lm-weight W        weight of the LM cross-entropy term on --lm-labels (default 0 = off)\n"
    "  --lm-labels L.npy    int32/int64 [B, L] labels of the LM term (needed when --lm-weight != 0)\n"
    "  --ignore-index I     LM labels equal to I are not counted (default -100)\n"
    "  --reduction mean|sum|normalizer  token mean (default), per-sequence sums, or / --normalizer\n"
    "  --normalizer N       N > 0, the global valid-token count (implies --reduction normalizer)\n"
    "  --grad G.npy         write d(loss)/d(student logits) [B, L, V] (float32; float64 when an input is float64)\n"
    "  --backend default|reference\n"
    "Prints JSON: the options, rewards, advantages, importance_weights, log_probs ([B, L]; 0 at padding) and the\n"
    "diagnostics (loss, pg_loss, single_step_loss, lm_loss, mean_reward, k3, token_reverse_kl, sequence_reward,\n"
    "iw_mean/min/max, iw_clip_fraction, ratio_mean, clip_fraction, advantage_mean/std, valid_tokens, valid_sequences,\n"
    "lm_tokens). Exit codes: 0 ok, 1 value error in the data (NaN/inf logits, probability 0 at a sampled token),\n"
    "2 bad arguments, files or shapes.\n";

npy_array load(const std::string& path, const char* name) {
  try {
    return load_npy(path);
  } catch (const npy_error& e) {
    throw usage_error(std::string("--") + name + ": " + e.what());
  }
}

bool on_off(const args& a, const std::string& k, bool def) {
  return a.choice(k, {"on", "off"}, def ? "on" : "off") == "on";
}

struct inputs {
  npy_array s, t;
  std::int64_t B = 0, L = 0, V = 0;
  std::vector<std::int64_t> tokens;
  std::vector<std::uint8_t> mask;
  std::vector<float> old;
  std::vector<std::int64_t> lm_labels;
  bool has_old = false;
};

template <class Z>
int run_typed(const inputs& in, const kd::pg_options& o, bool reference, const std::string& grad_path, const args& a) {
  const std::int64_t R = in.B * in.L;
  std::vector<Z> s, t;
  if constexpr (std::is_same_v<Z, double>) {
    s = in.s.to_double();
    t = in.t.to_double();
  } else {
    s = in.s.to_float();
    t = in.t.to_float();
  }
  std::vector<Z> grad(grad_path.empty() ? 0 : static_cast<std::size_t>(R * in.V));  // float64 inputs: float64 gradient
  std::vector<float> rewards(R), adv(R), iw(R), lq(R);
  kd::pg_sequences seq;
  seq.batch = in.B;
  seq.time = in.L;
  seq.tokens = kd::label_view(in.tokens.data(), R);
  if (!in.mask.empty()) seq.mask = kd::mask_view(in.mask.data(), R);  // no --mask: rows of all -inf are padding
  if (in.has_old) seq.old_log_probs = in.old.data();
  if (!in.lm_labels.empty()) seq.lm_labels = kd::label_view(in.lm_labels.data(), R);
  kd::pg_outputs<Z> out;
  if (!grad.empty()) out.grad_student = kd::mut_rows<Z>(grad.data(), R, in.V);
  out.rewards = rewards.data();
  out.advantages = adv.data();
  out.importance_weights = iw.data();
  out.log_probs = lq.data();
  kd::pg_diagnostics d;
  const auto si = kd::student_logits(s.data(), R, in.V);
  const auto ti = kd::teacher_logits(t.data(), R, in.V);
  kd::status st = reference ? kd::policy_gradient(si, ti, seq, o, out, d, kd::reference_backend{})
                            : kd::policy_gradient(si, ti, seq, o, out, d);
  if (st.code == kd::errc::invalid_argument)
    throw usage_error(a.name_flag(st.argument, st.to_string(),
                                  {{"old_log_probs", "old-logprobs"}, {"clip_range", "clip"}, {"iw_form", "iw"}}));
  if (!st.ok()) {
    std::fprintf(stderr, "kd pg: %s\n", st.to_string().c_str());
    return 1;
  }
  std::string j = "{";
  auto num = [&](const char* k, double v) { j += std::string("\"") + k + "\": " + json_number(v) + ", "; };
  auto str = [&](const char* k, const std::string& v) { j += std::string("\"") + k + "\": " + json_string(v) + ", "; };
  num("batch", double(in.B));
  num("time", double(in.L));
  num("vocab", double(in.V));
  str("length_norm", kd::length_norm_name(o.length_norm));
  str("current_reward", o.current_reward == kd::current_reward::include   ? "include"
                        : o.current_reward == kd::current_reward::exclude ? "exclude"
                                                                          : "by-variant");
  num("includes_current_reward", o.includes_current_reward() ? 1 : 0);
  num("alpha", o.alpha);
  num("gamma", o.gamma);
  num("clip", o.clip_range);
  num("temperature", o.temperature);
  num("single_step", o.single_step ? 1 : 0);
  num("whiten", o.whiten ? 1 : 0);
  str("importance_weight", o.iw_form == kd::importance_weight_form::exact_product ? "exact" : "per-token");
  num("iw_clip", o.iw_clip);
  num("reward_scale", o.reward_scale);
  num("reward_clip", o.reward_clip);
  num("lm_weight", o.lm_weight);
  num("ignore_index", double(o.ignore_index));
  str("reduction", kd::reduction_name(o.reduction));
  num("normalizer", o.normalizer);
  str("backend", reference ? "reference" : "default");
  num("loss", d.loss);
  num("pg_loss", d.pg_loss);
  num("single_step_loss", d.single_step_loss);
  num("lm_loss", d.lm_loss);
  num("mean_reward", d.mean_reward);
  num("k3", d.k3);
  num("token_reverse_kl", d.token_reverse_kl);
  num("sequence_reward", d.sequence_reward);
  num("iw_mean", d.iw_mean);
  num("iw_min", d.iw_min);
  num("iw_max", d.iw_max);
  num("iw_clip_fraction", d.iw_clip_fraction);
  num("ratio_mean", d.ratio_mean);
  num("clip_fraction", d.clip_fraction);
  num("advantage_mean", d.advantage_mean);
  num("advantage_std", d.advantage_std);
  num("valid_tokens", double(d.valid_tokens));
  num("valid_sequences", double(d.valid_sequences));
  num("lm_tokens", double(d.lm_tokens));
  j += "\"rewards\": " + json_matrix(rewards.data(), in.B, in.L) + ", ";
  j += "\"advantages\": " + json_matrix(adv.data(), in.B, in.L) + ", ";
  j += "\"importance_weights\": " + json_matrix(iw.data(), in.B, in.L) + ", ";
  j += "\"log_probs\": " + json_matrix(lq.data(), in.B, in.L) + "}";
  std::printf("%s\n", j.c_str());
  if (!grad.empty()) {
    try {
      save_npy(grad_path, grad.data(), {in.B, in.L, in.V});
    } catch (const npy_error& e) {
      throw usage_error(std::string("--grad: ") + e.what());
    }
  }
  return 0;
}

int pg_main(int argc, char** argv) {
  args a(argc, argv,
         {"student", "teacher", "tokens", "mask", "old-logprobs", "preset", "alpha", "gamma", "length-norm",
          "current-reward", "clip", "temperature", "single-step", "whiten", "grad", "iw", "iw-clip", "reward-scale",
          "reward-clip", "lm-weight", "lm-labels", "ignore-index", "reduction", "normalizer", "backend"},
         {});
  if (a.help()) {
    std::fputs(kPgHelp, stdout);
    return 0;
  }
  // Every field of kd::pg_options has a flag; unset flags keep the preset's value.
  const std::string preset = a.choice("preset", {"default", "paper", "reference-code", "exact"}, "default");
  kd::pg_options o = preset == "paper"            ? kd::pg_options::paper()
                     : preset == "reference-code" ? kd::pg_options::reference_code()
                     : preset == "exact"          ? kd::pg_options::exact()
                                                  : kd::pg_options{};
  o.temperature = a.num("temperature", o.temperature);
  o.gamma = a.num("gamma", o.gamma);
  const std::string ln =
      a.choice("length-norm", {"none", "paper", "reference", "discounted"}, kd::length_norm_name(o.length_norm));
  o.length_norm = ln == "paper"       ? kd::length_norm::paper
                  : ln == "reference" ? kd::length_norm::reference
                  : ln == "discounted" ? kd::length_norm::discounted
                                       : kd::length_norm::none;
  const std::string cr = a.choice("current-reward", {"by-variant", "exclude", "include"},
                                  o.current_reward == kd::current_reward::include   ? "include"
                                  : o.current_reward == kd::current_reward::exclude ? "exclude"
                                                                                    : "by-variant");
  o.current_reward = cr == "include"   ? kd::current_reward::include
                     : cr == "exclude" ? kd::current_reward::exclude
                                       : kd::current_reward::by_variant;
  o.single_step = on_off(a, "single-step", o.single_step);
  o.whiten = on_off(a, "whiten", o.whiten);
  o.reward_scale = a.num("reward-scale", o.reward_scale);
  o.reward_clip = a.num("reward-clip", o.reward_clip);
  o.alpha = a.num("alpha", o.alpha);
  o.iw_form = a.choice("iw", {"per-token", "exact"},
                       o.iw_form == kd::importance_weight_form::exact_product ? "exact" : "per-token") == "exact"
                  ? kd::importance_weight_form::exact_product
                  : kd::importance_weight_form::per_token;
  o.iw_clip = a.num("iw-clip", o.iw_clip);
  o.clip_range = a.num("clip", o.clip_range);
  o.lm_weight = a.num("lm-weight", o.lm_weight);
  o.ignore_index = a.integer("ignore-index", o.ignore_index);
  const std::string red = a.choice("reduction", {"mean", "sum", "normalizer"},
                                   a.has("normalizer") ? "normalizer"
                                   : o.reduction == kd::reduction::mean ? "mean"
                                   : o.reduction == kd::reduction::normalizer ? "normalizer"
                                                                              : "sum");
  o.reduction = red == "mean" ? kd::reduction::mean : red == "sum" ? kd::reduction::sum : kd::reduction::normalizer;
  if (a.has("normalizer") && o.reduction != kd::reduction::normalizer)
    throw usage_error("--normalizer needs --reduction normalizer (or no --reduction)");
  o.normalizer = a.num("normalizer", o.normalizer);
  if (o.reduction == kd::reduction::normalizer && !a.has("normalizer"))
    throw usage_error("--reduction normalizer needs --normalizer N");
  if (a.has("lm-labels") && o.lm_weight == 0.0) throw usage_error("--lm-labels needs --lm-weight W (W != 0)");
  if (o.lm_weight != 0.0 && !a.has("lm-labels")) throw usage_error("--lm-weight needs --lm-labels L.npy");
  if (a.has("ignore-index") && !a.has("lm-labels")) throw usage_error("--ignore-index needs --lm-labels");
  const bool reference = a.choice("backend", {"default", "reference"}, "default") == "reference";
  if (kd::status st = kd::validate_pg_options(o); !st)
    throw usage_error(a.name_flag(st.argument, st.to_string(), {{"clip_range", "clip"}, {"iw_form", "iw"}}));

  inputs in;
  in.s = load(a.required("student"), "student");
  in.t = load(a.required("teacher"), "teacher");
  const npy_array tok = load(a.required("tokens"), "tokens");
  npy_array mask;
  if (a.has("mask")) mask = load(a.str("mask"), "mask");
  for (const auto* x : {&in.s, &in.t}) {
    const char* name = x == &in.s ? "--student" : "--teacher";
    if (!x->is_float()) throw usage_error(std::string(name) + ": dtype must be float16, float32 or float64");
    if (x->shape.size() != 3) throw usage_error(std::string(name) + ": shape must be [B, L, V]");
  }
  if (in.t.shape != in.s.shape) throw usage_error("--teacher: shape differs from --student's");
  in.B = in.s.shape[0];
  in.L = in.s.shape[1];
  in.V = in.s.shape[2];
  if (in.V < 1) throw usage_error("--student: vocabulary dimension is 0");
  const std::vector<std::int64_t> bl = {in.B, in.L};
  if (!tok.is_int()) throw usage_error("--tokens: dtype must be int32 or int64");
  if (tok.shape != bl) throw usage_error("--tokens: shape must be [B, L] of the logits");
  in.tokens = tok.to_int64();
  if (a.has("mask")) {
    if (mask.shape != bl) throw usage_error("--mask: shape must be [B, L] of the logits");
    in.mask.resize(static_cast<std::size_t>(in.B * in.L));
    for (std::int64_t i = 0; i < in.B * in.L; ++i) {
      const double m = mask.get_double(i);
      if (std::isnan(m))  // NaN != 0 would have made it a valid position
        throw usage_error("--mask: NaN at [" + std::to_string(i / in.L) + ", " + std::to_string(i % in.L) +
                          "] (use 0 for padding, nonzero for a response token)");
      in.mask[i] = m != 0.0 ? 1 : 0;
    }
  }
  if (a.has("old-logprobs")) {
    const npy_array old = load(a.str("old-logprobs"), "old-logprobs");
    if (!old.is_float()) throw usage_error("--old-logprobs: dtype must be float16, float32 or float64");
    if (old.shape != bl) throw usage_error("--old-logprobs: shape must be [B, L] of the logits");
    in.old = old.to_float();
    in.has_old = true;
  }
  if (a.has("lm-labels")) {
    const npy_array lm = load(a.str("lm-labels"), "lm-labels");
    if (!lm.is_int()) throw usage_error("--lm-labels: dtype must be int32 or int64");
    if (lm.shape != bl) throw usage_error("--lm-labels: shape must be [B, L] of the logits");
    in.lm_labels = lm.to_int64();
  }
  const bool f64 = in.s.dtype == npy_dtype::f64 || in.t.dtype == npy_dtype::f64;
  return f64 ? run_typed<double>(in, o, reference, a.str("grad"), a)
             : run_typed<float>(in, o, reference, a.str("grad"), a);
}

}  // namespace

int cmd_pg(int argc, char** argv) {
  try {
    return pg_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kd pg: %s\n", e.what());
    return 2;
  }
}

}  // namespace kdtool
