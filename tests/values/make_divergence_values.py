#!/usr/bin/env python3
"""Literal test values for every registered divergence, computed outside kd with mpmath (60 significant digits).

Each divergence is evaluated from its textbook definition (not kd's row formulas) on softmax(z / T) of fixed logits, and
its gradient with respect to the student logits by mpmath's numerical differentiation (mp.diff) of that definition.
Writes tests/divergence_values.hpp. Run: python3 tests/values/make_divergence_values.py (needs mpmath).
"""
import mpmath as mp
import os

mp.mp.dps = 60

def softmax(z, T):
    z = [mp.mpf(v) / T for v in z]
    m = max(z)
    e = [mp.e ** (v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]

def kl(a, b):
    return sum(x * mp.log(x / y) for x, y in zip(a, b) if x > 0)

def jsd(beta):
    def f(p, q):
        m = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    return f

def skew_kl(alpha):
    return lambda p, q: kl(p, [alpha * x + (1 - alpha) * y for x, y in zip(p, q)])

def skew_reverse_kl(alpha):
    return lambda p, q: kl(q, [(1 - alpha) * x + alpha * y for x, y in zip(p, q)])

def tvd(p, q):
    return sum(abs(x - y) for x, y in zip(p, q)) / 2

def alpha_beta(a, b):
    a, b = mp.mpf(a), mp.mpf(b)
    s = a + b
    def f(p, q):  # Cichocki, Cruces, Amari 2011, Eq. 4 and the limits of Eq. 5
        if a != 0 and b != 0 and s != 0:
            return -sum(x**a * y**b - a / s * x**s - b / s * y**s for x, y in zip(p, q)) / (a * b)
        if a != 0 and b == 0:
            return sum(x**a * mp.log(x**a / y**a) - x**a + y**a for x, y in zip(p, q)) / a**2
        if a == 0 and b != 0:
            return sum(y**b * mp.log(y**b / x**b) - y**b + x**b for x, y in zip(p, q)) / b**2
        return sum((mp.log(x) - mp.log(y)) ** 2 for x, y in zip(p, q)) / 2
    return f

# (C++ divergence expression, definition D(p, q) with p = teacher, q = student)
CASES = [
    ("kd::divergence::forward_kl()", lambda p, q: kl(p, q)),
    ("kd::divergence::reverse_kl()", lambda p, q: kl(q, p)),
    ("kd::divergence::jsd(0.5)", jsd(mp.mpf("0.5"))),
    ("kd::divergence::jsd(0.1)", jsd(mp.mpf("0.1"))),
    ("kd::divergence::skew_kl(0.1)", skew_kl(mp.mpf("0.1"))),
    ("kd::divergence::skew_reverse_kl(0.1)", skew_reverse_kl(mp.mpf("0.1"))),
    ("kd::divergence::tvd()", tvd),
    ("kd::divergence::of(kd::divergence_kind::alpha_beta, 0.5, 0.5)", alpha_beta("0.5", "0.5")),
    ("kd::divergence::of(kd::divergence_kind::alpha_beta, 0.2, 0.7)", alpha_beta("0.2", "0.7")),
    ("kd::divergence::of(kd::divergence_kind::alpha_beta, 0.8, 0.0)", alpha_beta("0.8", "0")),
    ("kd::divergence::of(kd::divergence_kind::alpha_beta, 0.0, 0.8)", alpha_beta("0", "0.8")),
    ("kd::divergence::of(kd::divergence_kind::alpha_beta, 0.0, 0.0)", alpha_beta("0", "0")),
]

ZS = [1.0, 2.0, 3.0, 4.0, -1.5]
ZT = [4.0, 3.0, 2.0, 1.0, 0.5]

def row(expr, f, T):
    p = softmax(ZT, T)
    loss = f(p, softmax(ZS, T))
    grad = []
    for j in range(len(ZS)):
        def g(t, j=j):
            z = list(ZS)
            z = [mp.mpf(v) for v in z]
            z[j] = t
            return f(p, softmax(z, T))
        grad.append(mp.diff(g, mp.mpf(ZS[j])))
    fmt = lambda v: mp.nstr(v, 20, min_fixed=-3, max_fixed=3)
    return "    {%s, %s, %s, {%s}}," % (expr, fmt(mp.mpf(T)), fmt(loss), ", ".join(fmt(v) for v in grad))

def main():
    lines = [row(e, f, T) for e, f in CASES for T in (1.0, 2.0)]
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "divergence_values.hpp")
    with open(path, "w") as fh:
        fh.write("""// Literal values of every registered divergence, computed OUTSIDE kd by tests/values/make_divergence_values.py
// (mpmath, 60 digits, each divergence from its textbook definition; gradients by mpmath's numerical differentiation).
// Inputs: student logits {1, 2, 3, 4, -1.5}, teacher logits {4, 3, 2, 1, 0.5}, temperature T, no T^2.
// One row per (divergence, parameters, T): a new divergence adds its rows here (regenerate with the script).
// tests/test_registry.cpp checks that every registered kind has a row and that the reference backend matches them.
#pragma once

#include <kd/divergence.hpp>

namespace kdtest {

struct divergence_value {
  kd::divergence d;
  double temperature;
  double loss;            // nats
  double grad_student[5];  // d loss / d student logits
};

inline constexpr double value_student_logits[5] = {1.0, 2.0, 3.0, 4.0, -1.5};
inline constexpr double value_teacher_logits[5] = {4.0, 3.0, 2.0, 1.0, 0.5};

inline const divergence_value divergence_values[] = {
""")
        fh.write("\n".join(lines) + "\n};\n\n}  // namespace kdtest\n")

main()
