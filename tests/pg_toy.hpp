// The enumerable MiniLLM toy shared by the policy-gradient proof tests: vocabulary 3, length 3, fixed student and teacher
// conditional tables. The student's conditional q(y_t | y_<t) = softmax(theta[prefix] / T) has its own logits row per prefix
// (1 + 3 + 9 = 13 prefixes), so the gradient of the sequence-level reverse KL KL(Q || P) with respect to theta is
// well-defined and can be computed exactly by enumerating the 27 sequences.
#pragma once

#include <kd/counter_rng.hpp>
#include <kd/policy_gradient.hpp>
#include <kd/teacher_mixed.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace pgtoy {

constexpr int V = 3, L = 3, NP = 13, NS = 27;

inline int prefix_id(const int* y, int t) {  // id of the prefix y_<t
  int id = 0;
  for (int i = 0; i < t; ++i) id = id * V + y[i];
  return (t == 0 ? 0 : t == 1 ? 1 : 4) + id;
}
inline std::array<int, L> seq_of(int s) { return {s / 9, (s / 3) % 3, s % 3}; }

struct toy {
  std::vector<double> theta, phi;  // [NP, V] student and teacher logits per prefix
  double T = 1.0;

  explicit toy(std::uint32_t seed, double temperature = 1.0, double scale = 1.5) : theta(NP * V), phi(NP * V), T(temperature) {
    std::mt19937 g(seed);
    std::normal_distribution<double> nd(0.0, scale);
    for (auto& v : theta) v = nd(g);
    for (auto& v : phi) v = nd(g);
  }

  static void log_softmax(const double* z, double T, double* out) {
    double m = -INFINITY;
    for (int j = 0; j < V; ++j) m = std::max(m, z[j] / T);
    double s = 0.0;
    for (int j = 0; j < V; ++j) s += std::exp(z[j] / T - m);
    for (int j = 0; j < V; ++j) out[j] = z[j] / T - m - std::log(s);
  }
  double lq(int k, int j) const { double o[V]; log_softmax(&theta[k * V], T, o); return o[j]; }
  double lp(int k, int j) const { double o[V]; log_softmax(&phi[k * V], T, o); return o[j]; }

  // log Q(y), log P(y)
  double logQ(const std::array<int, L>& y) const {
    double s = 0.0;
    for (int t = 0; t < L; ++t) s += lq(prefix_id(y.data(), t), y[t]);
    return s;
  }
  double logP(const std::array<int, L>& y) const {
    double s = 0.0;
    for (int t = 0; t < L; ++t) s += lp(prefix_id(y.data(), t), y[t]);
    return s;
  }
  // Sampling probability of y under s_t = alpha p + (1 - alpha) q.
  double logS(const std::array<int, L>& y, double alpha) const {
    double s = 0.0;
    for (int t = 0; t < L; ++t) {
      const int k = prefix_id(y.data(), t);
      s += std::log(alpha * std::exp(lp(k, y[t])) + (1.0 - alpha) * std::exp(lq(k, y[t])));
    }
    return s;
  }

  // KL(Q || P) over whole sequences.
  double seq_kl() const {
    double kl = 0.0;
    for (int s = 0; s < NS; ++s) {
      const auto y = seq_of(s);
      kl += std::exp(logQ(y)) * (logQ(y) - logP(y));
    }
    return kl;
  }

  // Exact gradient d KL(Q || P) / d theta [NP * V]: sum_y Q(y) log(Q/P)(y) d log Q(y) / d theta (the sum_y Q d log Q term
  // vanishes), d log Q(y) / d theta[k] = sum_t [prefix_t = k] (onehot(y_t) - q_k) / T.
  std::vector<double> exact_grad() const {
    std::vector<double> g(NP * V, 0.0);
    for (int s = 0; s < NS; ++s) {
      const auto y = seq_of(s);
      const double w = std::exp(logQ(y)) * (logQ(y) - logP(y));
      for (int t = 0; t < L; ++t) {
        const int k = prefix_id(y.data(), t);
        for (int j = 0; j < V; ++j) g[k * V + j] += w * ((j == y[t] ? 1.0 : 0.0) - std::exp(lq(k, j))) / T;
      }
    }
    return g;
  }

  // The B x L x V logits of a batch of sequences (row (b, t) = the prefix's logits).
  void batch_logits(const std::vector<std::array<int, L>>& ys, std::vector<double>& zs, std::vector<double>& zt,
                    std::vector<std::int64_t>& tok) const {
    const std::size_t B = ys.size();
    zs.assign(B * L * V, 0.0);
    zt.assign(B * L * V, 0.0);
    tok.assign(B * L, 0);
    for (std::size_t b = 0; b < B; ++b)
      for (int t = 0; t < L; ++t) {
        const int k = prefix_id(ys[b].data(), t);
        for (int j = 0; j < V; ++j) {
          zs[(b * L + t) * V + j] = theta[k * V + j];
          zt[(b * L + t) * V + j] = phi[k * V + j];
        }
        tok[b * L + t] = ys[b][t];
      }
  }

  // Scatter per-sequence gradient rows [B, L, V] into per-prefix parameters, each sequence weighted by wts[b].
  static std::vector<double> scatter(const std::vector<std::array<int, L>>& ys, const std::vector<double>& grad,
                                     const std::vector<double>& wts) {
    std::vector<double> g(NP * V, 0.0);
    for (std::size_t b = 0; b < ys.size(); ++b)
      for (int t = 0; t < L; ++t) {
        const int k = prefix_id(ys[b].data(), t);
        for (int j = 0; j < V; ++j) g[k * V + j] += wts[b] * grad[(b * L + t) * V + j];
      }
    return g;
  }
};

// The estimator's expectation, enumerated over all 27 samples weighted by their sampling probability under
// s = alpha p + (1 - alpha) q. G = gradient element type; Backend = kd::reference_backend or kd::pg_fast_backend.
template <class Z, class Backend>
std::vector<double> expected_estimate(const toy& m, kd::pg_options o, double alpha, Backend be, kd::status* st_out = nullptr,
                                      bool pass_old = false) {
  std::vector<std::array<int, L>> ys;
  std::vector<double> wts;
  for (int s = 0; s < NS; ++s) {
    ys.push_back(seq_of(s));
    wts.push_back(std::exp(m.logS(ys.back(), alpha)));
  }
  std::vector<double> zs, zt;
  std::vector<std::int64_t> tok;
  m.batch_logits(ys, zs, zt, tok);
  std::vector<Z> zs_z(zs.begin(), zs.end()), zt_z(zt.begin(), zt.end()), grad(zs.size());
  std::vector<float> old(NS * L);
  for (int b = 0; b < NS; ++b)
    for (int t = 0; t < L; ++t) old[b * L + t] = static_cast<float>(m.lq(prefix_id(ys[b].data(), t), ys[b][t]));
  o.alpha = alpha;
  o.temperature = m.T;
  kd::pg_sequences seq;
  seq.batch = NS;
  seq.time = L;
  seq.tokens = kd::label_view(tok.data(), NS * L);
  if (pass_old) seq.old_log_probs = old.data();
  kd::pg_outputs<Z> out;
  out.grad_student = kd::mut_rows<Z>(grad.data(), NS * L, V);
  kd::pg_diagnostics d;
  kd::status st = kd::policy_gradient(kd::student_logits(zs_z.data(), NS * L, V), kd::teacher_logits(zt_z.data(), NS * L, V),
                                      seq, o, out, d, be);
  if (st_out) *st_out = st;
  std::vector<double> gd(grad.begin(), grad.end());
  return toy::scatter(ys, gd, wts);
}

inline double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}
inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace pgtoy
