// Counter-based random numbers: a stateless, deterministic uniform generator for reproducible sampling.
//
//   double kd::counter_uniform(std::uint64_t seed, std::uint64_t counter)   -> u in [0, 1), 53 random bits
//   void   kd::counter_uniforms(seed, first_counter, n, double* out)          out[i] = counter_uniform(seed, first_counter + i)
//
// u depends only on (seed, counter): no state, so any thread, chunk or device can draw the number for element i without
// coordination, and a rerun (or a chunked run) reproduces it bit for bit. Use counter = b * L + t for the uniform of
// position t of sequence b, and a new seed per rollout step.
// Method: two rounds of the SplitMix64 finalizer (Steele, Lea, Flood, "Fast splittable pseudorandom number generators",
// OOPSLA 2014) over seed and counter; the top 53 bits become the double. Statistical quality is that of SplitMix64 (passes
// BigCrush as a stream); it is not a cryptographic generator.
#pragma once

#include <cstdint>

#include "version.hpp"

KD_BEGIN_NAMESPACE

namespace detail {
inline constexpr std::uint64_t splitmix64_mix(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace detail

// 64 random bits for (seed, counter).
inline constexpr std::uint64_t counter_bits(std::uint64_t seed, std::uint64_t counter) noexcept {
  const std::uint64_t k = detail::splitmix64_mix(seed + 0x9e3779b97f4a7c15ULL);
  return detail::splitmix64_mix(k ^ (counter * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL));
}

// Uniform double in [0, 1) for (seed, counter).
inline constexpr double counter_uniform(std::uint64_t seed, std::uint64_t counter) noexcept {
  return static_cast<double>(counter_bits(seed, counter) >> 11) * 0x1.0p-53;
}

inline void counter_uniforms(std::uint64_t seed, std::uint64_t first_counter, std::int64_t n, double* out) noexcept {
  for (std::int64_t i = 0; i < n; ++i) out[i] = counter_uniform(seed, first_counter + static_cast<std::uint64_t>(i));
}

KD_END_NAMESPACE
