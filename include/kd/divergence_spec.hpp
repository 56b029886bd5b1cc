// Which divergence to compute: kd::divergence, a small value type (kind + up to two parameters), so one engine serves
// every loss and backends take it as data. The kinds, their names, parameters and endpoint rules come from the registry
// (kd/divergences/registry.hpp); each divergence's formula, gradient and paper are in its header there:
// (kd loss --help prints the list with formulas and parameter ranges; kd::divergence_registry() enumerates it).
// p = teacher distribution, q = student distribution (softmax of the inputs at temperature T). Values in nats.
#pragma once

#include "divergences/registry.hpp"

