// Everything in kd (except kd/backend/dispatch.hpp, which needs the compiled kd::dispatch library).
// Prefer including the one header you use (e.g. <kd/reverse_kl.hpp>).
#pragma once

#include "counter_rng.hpp"
#include "divergence.hpp"
#include "forward_kl.hpp"
#include "jsd.hpp"
#include "lm_loss.hpp"
#include "padding.hpp"
#include "policy_gradient.hpp"
#include "reverse_kl.hpp"
#include "skew_kl.hpp"
#include "softmax.hpp"
#include "teacher_mixed.hpp"
#include "topk.hpp"
#include "topk_teacher.hpp"
#include "tvd.hpp"
