"""MiniLLM policy-gradient loss (Gu et al., arXiv 2306.08543) and the per-token helpers of on-policy distillation.

    loss = kd_torch.minillm.minillm_loss(student_logits, teacher_logits, tokens, mask, preset="paper")
    loss.backward()      # the MiniLLM estimator of the gradient of the sequence-level KL(q || p), from one fused call

kd::policy_gradient (kd/policy_gradient.hpp, docs/policy_gradient.md) computes rewards r_t = log p(y_t) - log q(y_t),
returns, length normalization, the exact single-step term, teacher-mixed importance weights, PPO clipping, whitening and
an LM term over student logits [B, L, V], and writes the gradient of the surrogate it returns; backward returns that
gradient times grad_output. The options are kd::pg_options' fields, with the same names and defaults; ``preset``
starts from kd's presets ("paper", "reference_code", "exact") or "on_policy" (TRL's MiniLLM style: gamma = 0, the
advantage is the current reward, single-step term on, no clipping, no teacher mixing).

Helpers: token_rewards (the per-token log-ratio reward, k1 estimator of -KL(q || p)), token_reverse_kl (the exact
per-token KL(q_t || p_t), differentiable: the single-step term), pg_advantages (returns / normalization / whitening of
given rewards, as the fused call forms them).

Backend: kd::dispatch_backend (SIMD, run-time instruction set, torch's threads) for float32 / bfloat16 / float16,
kd's double-precision reference backend for float64 (kd_torch/csrc/kd_torch.cpp, pg_backend()).
"""

from collections import namedtuple

import torch

from . import _ops
from .functional import _check_choice, _check_number, _check_tensor, reverse_kl

LENGTH_NORMS = {"none": 0, "paper": 1, "reference": 2, "discounted": 3}
CURRENT_REWARD = {"by_variant": 0, "exclude": 1, "include": 2}
IW_FORMS = {"exact_product": 0, "per_token": 1}
_RED = {"sum": 1, "mean": 2, "normalizer": 3}

#: kd::pg_options' defaults (pg_options.hpp).
DEFAULTS = dict(temperature=1.0, gamma=1.0, length_norm="paper", current_reward="by_variant", single_step=True,
                whiten=False, reward_scale=1.0, reward_clip=0.0, alpha=0.0, iw_form="per_token", iw_clip=0.0,
                clip_range=0.0, lm_weight=0.0, ignore_index=-100)

#: kd's presets (pg_options::paper(), reference_code(), exact()) and TRL's on-policy style.
PRESETS = {
    "paper": dict(length_norm="paper", alpha=0.2, clip_range=0.2),
    "reference_code": dict(length_norm="reference", current_reward="include", gamma=0.95, whiten=True, alpha=0.2,
                           clip_range=0.2),
    "exact": dict(length_norm="none", iw_form="exact_product", reduction="sum"),
    "on_policy": dict(gamma=0.0, length_norm="discounted", single_step=True),
}

PGOutputs = namedtuple("PGOutputs", "loss rewards advantages importance_weights log_probs diagnostics")


def _options(preset, given):
    o = dict(DEFAULTS, reduction="mean")
    if preset is not None:
        o.update(PRESETS[_check_choice(preset, "preset", tuple(PRESETS))])
    o.update({k: v for k, v in given.items() if v is not None})
    return o


def minillm_loss(student_logits, teacher_logits, tokens, mask=None, old_log_probs=None, lm_labels=None, *,
                 preset=None, temperature=None, gamma=None, length_norm=None, current_reward=None, single_step=None,
                 whiten=None, reward_scale=None, reward_clip=None, alpha=None, iw_form=None, iw_clip=None,
                 clip_range=None, lm_weight=None, ignore_index=None, reduction=None, num_items_in_batch=None,
                 return_outputs=False):
    """The MiniLLM surrogate loss over sampled responses, with its fused gradient.

    student_logits, teacher_logits  [B, L, V] float32 / bfloat16 / float16 / float64 (the logits that scored tokens)
    tokens          [B, L] int64 / int32: the sampled response tokens y_t (read only where mask is nonzero)
    mask            optional [B, L] bool / uint8 / int / float32: 1 = response token, 0 = padding
    old_log_probs   optional [B, L] float32: rollout-time log q_old(y_t) (PPO epochs > 1); absent: on-policy
    lm_labels       optional [B, L]: labels of the LM (cross-entropy) term, with lm_weight != 0
    preset          "paper" | "reference_code" | "exact" | "on_policy"; explicit options override it
    options         kd::pg_options' fields (see kd/pg_options.hpp): length_norm in none / paper / reference /
                    discounted, current_reward in by_variant / exclude / include, iw_form in exact_product / per_token
    reduction       "mean" (every term / valid positions), "sum" (per-sequence sums); num_items_in_batch: a global
                    normalizer instead
    return_outputs  also return PGOutputs(loss, rewards, advantages, importance_weights, log_probs, diagnostics dict)
    """
    _check_tensor(student_logits, "student_logits")
    _check_tensor(teacher_logits, "teacher_logits")
    _check_tensor(tokens, "tokens")
    o = _options(preset, dict(temperature=temperature, gamma=gamma, length_norm=length_norm,
                              current_reward=current_reward, single_step=single_step, whiten=whiten,
                              reward_scale=reward_scale, reward_clip=reward_clip, alpha=alpha, iw_form=iw_form,
                              iw_clip=iw_clip, clip_range=clip_range, lm_weight=lm_weight, ignore_index=ignore_index,
                              reduction=reduction))
    for name in ("temperature", "gamma", "reward_scale", "reward_clip", "alpha", "iw_clip", "clip_range", "lm_weight"):
        o[name] = _check_number(o[name], name)
    o["length_norm"] = LENGTH_NORMS[_check_choice(o["length_norm"], "length_norm", tuple(LENGTH_NORMS))]
    o["current_reward"] = CURRENT_REWARD[_check_choice(o["current_reward"], "current_reward", tuple(CURRENT_REWARD))]
    o["iw_form"] = IW_FORMS[_check_choice(o["iw_form"], "iw_form", tuple(IW_FORMS))]
    red = _check_choice(o.pop("reduction"), "reduction", ("mean", "sum"))
    o["normalizer"] = 0.0
    if num_items_in_batch is not None:
        o["normalizer"] = _check_number(num_items_in_batch, "num_items_in_batch")
        red = "normalizer"
    o["reduction"] = _RED[red]
    for name, t in (("mask", mask), ("old_log_probs", old_log_probs), ("lm_labels", lm_labels)):
        if t is not None:
            _check_tensor(t, name)
    out = _ops.policy_gradient(student_logits, teacher_logits, tokens, mask, old_log_probs, lm_labels, **o)
    loss = out[0]
    if not return_outputs:
        return loss
    diag = dict(zip(_ops.PG_DIAGNOSTICS, out[6].tolist()))
    for k in ("valid_tokens", "valid_sequences", "lm_tokens"):
        diag[k] = int(diag[k])
    return PGOutputs(loss, out[2], out[3], out[4], out[5], diag)


class MiniLLMLoss(torch.nn.Module):
    """minillm_loss as a module: MiniLLMLoss(preset="paper", temperature=1.0)(student, teacher, tokens, mask)."""

    def __init__(self, preset=None, **options):
        super().__init__()
        self.preset = preset
        self.options = options
        _options(preset, options)  # validates the preset name

    def forward(self, student_logits, teacher_logits, tokens, mask=None, old_log_probs=None, lm_labels=None,
                num_items_in_batch=None, return_outputs=False):
        return minillm_loss(student_logits, teacher_logits, tokens, mask, old_log_probs, lm_labels,
                            preset=self.preset, num_items_in_batch=num_items_in_batch, return_outputs=return_outputs,
                            **self.options)

    def extra_repr(self):
        return ", ".join([f"preset={self.preset!r}"] + [f"{k}={v!r}" for k, v in self.options.items()])


def token_rewards(student_logits, teacher_logits, tokens, mask=None, temperature=1.0):
    """Per-token rewards r_t = log p_t(y_t) - log q_t(y_t) at temperature T ([B, L] float32, 0 at padding, no
    gradient), and the student's log q_t(y_t): (rewards, log_probs). The sampled-token (k1) estimate of
    -KL(q_t || p_t) that on-policy distillation uses as its reward (TRL's MiniLLM trainer, gamma = 0)."""
    with torch.no_grad():
        out = minillm_loss(student_logits.detach(), teacher_logits.detach(), tokens, mask, temperature=temperature,
                           single_step=False, gamma=0.0, length_norm="none", return_outputs=True)
    return out.rewards, out.log_probs


def token_reverse_kl(student_logits, teacher_logits, mask=None, temperature=1.0):
    """The exact per-token reverse KL(q_t || p_t) over the vocabulary ([B, L] float32, 0 at padding), differentiable
    with respect to the student: the single-step term of MiniLLM, computed by kd's fused reverse-KL kernel."""
    w = None
    if mask is not None:
        _check_tensor(mask, "mask")
        w = mask.to(torch.float32)
    return reverse_kl(student_logits, teacher_logits, temperature=temperature, row_weights=w, reduction="none")


def pg_advantages(rewards, mask=None, gamma=0.0, length_norm="discounted", current_reward="by_variant",
                  whiten=False):
    """Advantages from given per-token rewards [B, L] (float32) exactly as kd's fused call forms them: discounted
    returns over valid positions, length normalization, whitening (kd::pg_advantages). The defaults are TRL's MiniLLM
    style (gamma = 0: the advantage is the current reward)."""
    _check_tensor(rewards, "rewards")
    return _ops.pg_advantages(rewards, mask, _check_number(gamma, "gamma"),
                              LENGTH_NORMS[_check_choice(length_norm, "length_norm", tuple(LENGTH_NORMS))],
                              CURRENT_REWARD[_check_choice(current_reward, "current_reward", tuple(CURRENT_REWARD))],
                              bool(whiten))
