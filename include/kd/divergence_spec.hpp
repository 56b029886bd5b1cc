// Which divergence to compute: kd::divergence, a small value type (kind + up to two parameters), so one engine serves
// every loss and backends take it as data. The kinds, their names, parameters and endpoint rules come from the registry
// (kd/divergences/registry.hpp); each divergence's formula, gradient and paper are in its header there:
//   forward_kl          KL(p || q)                                         divergences/kl.hpp
//   reverse_kl          KL(q || p)                                         divergences/kl.hpp
//   jsd(beta)           beta KL(p || m) + (1 - beta) KL(q || m)            divergences/jsd.hpp (beta = 0 / 1: FKL / RKL)
//   skew_kl(alpha)      KL(p || alpha p + (1 - alpha) q)                   divergences/skew_kl.hpp
//   skew_reverse_kl(a)  KL(q || (1 - alpha) p + alpha q)                   divergences/skew_kl.hpp
//   tvd                 (1/2) sum_i |p_i - q_i|                            divergences/tvd.hpp
// p = teacher distribution, q = student distribution (softmax of the inputs at temperature T). Values in nats.
#pragma once

#include "divergences/registry.hpp"

