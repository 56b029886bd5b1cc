// Everything in kd. Prefer including the one header you use (e.g. <kd/reverse_kl.hpp>).
#pragma once

#include "divergence.hpp"
#include "forward_kl.hpp"
#include "jsd.hpp"
#include "reverse_kl.hpp"
#include "skew_kl.hpp"
#include "softmax.hpp"
#include "tvd.hpp"
#include "topk.hpp"
