// The registry of divergences: the one list every part of kd takes its divergences from.
//
// Each row names a kind (the enumerator of kd::divergence_kind) and its entry struct (kd/divergences/<name>.hpp: names,
// parameters with ranges, endpoint rules, the row functor). From this list come kd::divergence_kind, the names
// (divergence_name, find_divergence, the CLI's --loss values), argument validation, the endpoint rules, and the dispatch
// of every backend driver (kd::visit_divergence): a switch generated from the same list, so a kind without an entry
// cannot exist and an entry whose functor lacks a member a driver needs fails to compile there. Tests, `kd gradcheck`,
// `kd loss` and the fuzzers enumerate kd::divergence_registry().
//
// Adding a divergence: write kd/divergences/<name>.hpp (functor + entry; see docs/adding-a-divergence.md), include it
// below and add its row to KD_DIVERGENCES, add its literal test values to tests/divergence_values.hpp.
#pragma once

#include <cmath>
#include <cstring>

#include "alpha_beta.hpp"
#include "jsd.hpp"
#include "kl.hpp"
#include "skew_kl.hpp"
#include "tvd.hpp"

// X(kind, entry): registry order is the enumerators' order.
#define KD_DIVERGENCES(X)                        \
  X(forward_kl, divergences::forward_kl)         \
  X(reverse_kl, divergences::reverse_kl)         \
  X(jsd, divergences::jsd)                       \
  X(skew_kl, divergences::skew_kl)               \
  X(skew_reverse_kl, divergences::skew_reverse_kl) \
  X(tvd, divergences::tvd)                       \
  X(alpha_beta, divergences::alpha_beta)

// The value types below appear in kd::dispatch's signatures: ISA-free namespace (kd/version.hpp, docs/simd.md).
KD_BEGIN_ISA_FREE_NAMESPACE

#define KD_DIVERGENCE_ENUM_(kind, entry) kind,
enum class divergence_kind : int { KD_DIVERGENCES(KD_DIVERGENCE_ENUM_) };
#undef KD_DIVERGENCE_ENUM_

#define KD_DIVERGENCE_COUNT_(kind, entry) +1
inline constexpr int divergence_count = 0 KD_DIVERGENCES(KD_DIVERGENCE_COUNT_);
#undef KD_DIVERGENCE_COUNT_

// Which divergence to compute, as a value: backends take it as data. Parameters in the order of the entry's params[]
// (param: beta of jsd, alpha of the skew divergences; param2: a second parameter); unused ones are ignored.
struct divergence {
  divergence_kind kind = divergence_kind::forward_kl;
  double param = 0.0;
  double param2 = 0.0;

  static constexpr divergence forward_kl() noexcept { return {divergence_kind::forward_kl, 0.0, 0.0}; }
  static constexpr divergence reverse_kl() noexcept { return {divergence_kind::reverse_kl, 0.0, 0.0}; }
  static constexpr divergence jsd(double beta) noexcept { return {divergence_kind::jsd, beta, 0.0}; }
  static constexpr divergence skew_kl(double alpha) noexcept { return {divergence_kind::skew_kl, alpha, 0.0}; }
  static constexpr divergence skew_reverse_kl(double alpha) noexcept {
    return {divergence_kind::skew_reverse_kl, alpha, 0.0};
  }
  static constexpr divergence tvd() noexcept { return {divergence_kind::tvd, 0.0, 0.0}; }
  static constexpr divergence of(divergence_kind k, double p0 = 0.0, double p1 = 0.0) noexcept { return {k, p0, p1}; }
};

KD_END_ISA_FREE_NAMESPACE
KD_BEGIN_NAMESPACE

// Calls f(Entry{}) for d's kind and returns its result; `unknown` when the kind is not registered (validation rejects
// such values before any driver runs: the switch has no default).
template <class R, class F>
constexpr R visit_divergence(divergence_kind k, F&& f, R unknown) {
  switch (k) {
#define KD_DIVERGENCE_CASE_(kind, entry) \
  case divergence_kind::kind:            \
    return f(entry{});
    KD_DIVERGENCES(KD_DIVERGENCE_CASE_)
#undef KD_DIVERGENCE_CASE_
  }
  return unknown;
}

// What the registry says about one divergence, as plain data.
struct divergence_info {
  divergence_kind kind = divergence_kind::forward_kl;
  const char* name = nullptr;
  const char* cli_name = nullptr;
  const char* formula = nullptr;
  const char* citation = nullptr;
  int n_params = 0;
  param_spec params[2] = {};
  bool x_is_student = false;
};

namespace detail {
template <class E>
constexpr divergence_info info_of(divergence_kind k) noexcept {
  divergence_info i;
  i.kind = k;
  i.name = E::name;
  i.cli_name = E::cli_name;
  i.formula = E::formula;
  i.citation = E::citation;
  i.n_params = E::n_params;
  i.params[0] = E::params[0];
  i.params[1] = E::params[1];
  i.x_is_student = E::x_is_student;
  return i;
}
}  // namespace detail

// Every registered divergence, in registry order.
struct divergence_table {
  divergence_info items[divergence_count];
  constexpr const divergence_info* begin() const noexcept { return items; }
  constexpr const divergence_info* end() const noexcept { return items + divergence_count; }
  constexpr int size() const noexcept { return divergence_count; }
};

inline const divergence_table& divergence_registry() noexcept {
#define KD_DIVERGENCE_INFO_(kind, entry) detail::info_of<entry>(divergence_kind::kind),
  static constexpr divergence_table t = {{KD_DIVERGENCES(KD_DIVERGENCE_INFO_)}};
#undef KD_DIVERGENCE_INFO_
  return t;
}

inline bool is_registered(divergence_kind k) noexcept {
  const int i = static_cast<int>(k);
  return i >= 0 && i < divergence_count;
}

// nullptr for a kind that is not registered.
inline const divergence_info* find_divergence(divergence_kind k) noexcept {
  return is_registered(k) ? &divergence_registry().items[static_cast<int>(k)] : nullptr;
}
// By API name ("jsd") or CLI name ("srkl"); nullptr when unknown.
inline const divergence_info* find_divergence(const char* name) noexcept {
  if (!name) return nullptr;
  for (const auto& i : divergence_registry())
    if (std::strcmp(i.name, name) == 0 || std::strcmp(i.cli_name, name) == 0) return &i;
  return nullptr;
}

inline const char* divergence_name(divergence_kind k) noexcept {
  const divergence_info* i = find_divergence(k);
  return i ? i->name : "?";
}

// The endpoint rules: the divergence d is computed as (e.g. jsd(0) -> forward_kl); d itself when no rule applies.
inline divergence canonical_divergence(const divergence& d) noexcept {
  return visit_divergence<divergence>(
      d.kind,
      [&](auto e) {
        using E = decltype(e);
        for (const endpoint_rule& r : E::endpoints) {
          if (!r.target) continue;
          const bool m0 = std::isnan(r.p0) || d.param == r.p0, m1 = std::isnan(r.p1) || d.param2 == r.p1;
          if (m0 && m1) {
            const divergence_info* t = find_divergence(r.target);
            if (t) return divergence{t->kind, 0.0, 0.0};
          }
        }
        return d;
      },
      d);
}

KD_END_NAMESPACE
