"""The extension's operators (torch.ops.kd_torch.*) with autograd and fake (meta) kernels.

On torch >= 2.4 the C++ operators get a fake kernel (torch.library.register_fake) and an autograd formula
(torch.library.register_autograd), so torch.compile traces them as single nodes without graph breaks. On older torch
(or with KD_TORCH_NO_CUSTOM_OP=1) the same operators are wrapped in plain torch.autograd.Function subclasses.

The backward returns the gradient kd wrote during the fused forward, times grad_output: no recomputation. In eager mode
it is scaled in place (no second N x V buffer) and returned as is when grad_output is 1; a second backward through the
same graph (retain_graph=True) after an in-place scaling raises PyTorch's "modified by an inplace operation" error.
"""

import os

import torch

from . import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)

_ops = torch.ops.kd_torch


def _torch_version():
    parts = []
    for p in torch.__version__.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


TORCH_VERSION = _torch_version()
#: True when the operators are registered as torch.library custom operators (torch >= 2.4): torch.compile traces them.
USES_CUSTOM_OPS = (TORCH_VERSION >= (2, 4) and hasattr(torch.library, "register_autograd")
                   and os.environ.get("KD_TORCH_NO_CUSTOM_OP", "") in ("", "0"))


def _tracing(t):
    """True while torch.compile / AOTAutograd traces (fake or functional tensors): no data-dependent branches then."""
    if type(t) is not torch.Tensor:
        return True
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def _scale_grad(grad, scale, per_row):
    """grad * scale (scale: [] for a scalar loss, the leading shape for per-row losses), in place when eager."""
    if scale is None:  # the loss output was not used: no gradient (grads are not materialized, see setup_context)
        return None
    # A 16-bit gradient is scaled by a float32 (or float64) factor and rounded once: bf16(g * s), not bf16(g) * bf16(s).
    s = scale if scale.dtype in (torch.float32, torch.float64) else scale.float()
    if grad.dtype == torch.float32 and s.dtype == torch.float64:
        s = s.float()
    if per_row:
        s = s.unsqueeze(-1)
    if _tracing(grad) or _tracing(s):
        return grad * s
    if s.dim() == 0 and s.item() == 1.0:
        return grad
    return grad.mul_(s)


# ---------------------------------------------------------------------------------------------------------------------
# divergence


def _div_fake(student, teacher, labels, row_weights, kind, param0, param1, temperature, t2_scale, reduction,
              normalizer, ignore_index, student_log_probs, teacher_log_probs, grad_student, grad_teacher, per_row):
    f = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss = student.new_empty((), dtype=f)
    gs = (torch.empty_like(student, memory_format=torch.contiguous_format) if grad_student
          else student.new_empty((0,)))
    gt = (torch.empty_like(teacher, memory_format=torch.contiguous_format) if grad_teacher
          else teacher.new_empty((0,)))
    pr = student.new_empty(student.shape[:-1], dtype=f)
    valid = student.new_empty((), dtype=torch.int64)
    return loss, gs, gt, pr, valid


_REDUCTION_NONE = 0


def _div_setup_context(ctx, inputs, output):
    student, teacher = inputs[0], inputs[1]
    reduction, want_s, want_t = inputs[9], inputs[14], inputs[15]
    _, gs, gt, _, _ = output
    ctx.per_row = reduction == _REDUCTION_NONE
    ctx.want_s, ctx.want_t = want_s, want_t
    ctx.save_for_backward(gs if want_s else None, gt if want_t else None)
    ctx.mark_non_differentiable(output[1], output[2], output[4])
    # Unused outputs must not get materialized zero gradients: one of them is the N x V gradient buffer itself, and a
    # zeros tensor of its size would cost a full allocation and pass in every backward.
    ctx.set_materialize_grads(False)


def _div_backward(ctx, g_loss, _g_gs, _g_gt, g_per_row, _g_valid):
    gs, gt = ctx.saved_tensors
    scale = g_per_row if ctx.per_row else g_loss
    ds = _scale_grad(gs, scale, ctx.per_row) if ctx.want_s else None
    dt = _scale_grad(gt, scale, ctx.per_row) if ctx.want_t else None
    return (ds, dt) + (None,) * 15


def _autograd_function(op, setup_context, backward):
    """An operator as a plain autograd.Function (torch < 2.4, or KD_TORCH_NO_CUSTOM_OP=1), with the custom-op path's
    setup_context and backward."""

    class _Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            out = op(*args)
            setup_context(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    return _Function


_DivergenceFunction = _autograd_function(_ops.divergence, _div_setup_context, _div_backward)


def divergence(student, teacher, labels, row_weights, kind, param0, param1, temperature, t2_scale, reduction,
               normalizer, ignore_index, student_log_probs, teacher_log_probs):
    """Runs kd's fused divergence; returns (loss, per_row, valid_rows) with autograd to student (and teacher)."""
    grad_on = torch.is_grad_enabled()
    want_s = bool(grad_on and student.requires_grad)
    want_t = bool(grad_on and teacher.requires_grad)
    args = (student, teacher, labels, row_weights, int(kind), float(param0), float(param1), float(temperature),
            bool(t2_scale), int(reduction), float(normalizer), int(ignore_index), bool(student_log_probs),
            bool(teacher_log_probs), want_s, want_t, True)
    if USES_CUSTOM_OPS or not (want_s or want_t):
        out = _ops.divergence(*args)
    else:
        out = _DivergenceFunction.apply(*args)
    loss, _, _, per_row, valid = out
    return loss, per_row, valid


# ---------------------------------------------------------------------------------------------------------------------
# topk_divergence (a teacher given as its top-k ids and log-probs)


def _topk_fake(student, teacher_ids, teacher_log_probs, labels, row_weights, kind, param0, param1, mode, temperature,
               t2_scale, reduction, normalizer, ignore_index, student_log_probs, grad):
    f = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss = student.new_empty((), dtype=f)
    gs = torch.empty_like(student, memory_format=torch.contiguous_format) if grad else student.new_empty((0,))
    pr = student.new_empty(student.shape[:-1], dtype=f)
    valid = student.new_empty((), dtype=torch.int64)
    return loss, gs, pr, valid


def _topk_setup_context(ctx, inputs, output):
    reduction, want = inputs[11], inputs[15]
    ctx.per_row = reduction == _REDUCTION_NONE
    ctx.want = want
    ctx.save_for_backward(output[1] if want else None)
    ctx.mark_non_differentiable(output[1], output[3])
    ctx.set_materialize_grads(False)


def _topk_backward(ctx, g_loss, _g_gs, g_per_row, _g_valid):
    (gs,) = ctx.saved_tensors
    scale = g_per_row if ctx.per_row else g_loss
    ds = _scale_grad(gs, scale, ctx.per_row) if ctx.want else None
    return (ds,) + (None,) * 15


_TopkDivergenceFunction = _autograd_function(_ops.topk_divergence, _topk_setup_context, _topk_backward)


def topk_divergence(student, teacher_ids, teacher_log_probs, labels, row_weights, kind, param0, param1, mode,
                    temperature, t2_scale, reduction, normalizer, ignore_index, student_log_probs):
    """Runs kd::topk_divergence_loss; returns (loss, per_row, valid_rows) with autograd to the student."""
    want = bool(torch.is_grad_enabled() and student.requires_grad)
    args = (student, teacher_ids, teacher_log_probs, labels, row_weights, int(kind), float(param0), float(param1),
            int(mode), float(temperature), bool(t2_scale), int(reduction), float(normalizer), int(ignore_index),
            bool(student_log_probs), want)
    if USES_CUSTOM_OPS or not want:
        out = _ops.topk_divergence(*args)
    else:
        out = _TopkDivergenceFunction.apply(*args)
    loss, _, per_row, valid = out
    return loss, per_row, valid


# ---------------------------------------------------------------------------------------------------------------------
# policy_gradient


def _pg_fake(student, teacher, tokens, mask, old_log_probs, lm_labels, temperature, gamma, length_norm,
             current_reward, single_step, whiten, reward_scale, reward_clip, alpha, iw_form, iw_clip, clip_range,
             lm_weight, ignore_index, reduction, normalizer, grad):
    f = torch.float64 if student.dtype == torch.float64 else torch.float32
    B, L = student.shape[0], student.shape[1]
    loss = student.new_empty((), dtype=f)
    g = torch.empty_like(student, memory_format=torch.contiguous_format) if grad else student.new_empty((0,))
    per = [student.new_empty((B, L), dtype=torch.float32) for _ in range(4)]
    diag = student.new_empty((len(PG_DIAGNOSTICS),), dtype=torch.float64)
    return (loss, g, *per, diag)


def _pg_setup_context(ctx, inputs, output):
    want = inputs[22]
    ctx.want = want
    ctx.save_for_backward(output[1] if want else None)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _pg_backward(ctx, g_loss, *_):
    (g,) = ctx.saved_tensors
    d = _scale_grad(g, g_loss, False) if ctx.want else None
    return (d,) + (None,) * 22


_PolicyGradientFunction = _autograd_function(_ops.policy_gradient, _pg_setup_context, _pg_backward)


PG_DIAGNOSTICS = tuple(_C.pg_diagnostic_names())


def policy_gradient(student, teacher, tokens, mask, old_log_probs, lm_labels, **o):
    want = bool(torch.is_grad_enabled() and student.requires_grad)
    args = (student, teacher, tokens, mask, old_log_probs, lm_labels, float(o["temperature"]), float(o["gamma"]),
            int(o["length_norm"]), int(o["current_reward"]), bool(o["single_step"]), bool(o["whiten"]),
            float(o["reward_scale"]), float(o["reward_clip"]), float(o["alpha"]), int(o["iw_form"]),
            float(o["iw_clip"]), float(o["clip_range"]), float(o["lm_weight"]), int(o["ignore_index"]),
            int(o["reduction"]), float(o["normalizer"]), want)
    if USES_CUSTOM_OPS or not want:
        return _ops.policy_gradient(*args)
    return _PolicyGradientFunction.apply(*args)


def pg_advantages(rewards, mask, gamma, length_norm, current_reward, whiten):
    return _ops.pg_advantages(rewards, mask, float(gamma), int(length_norm), int(current_reward), bool(whiten))


def _pga_fake(rewards, mask, gamma, length_norm, current_reward, whiten):
    return torch.empty_like(rewards, memory_format=torch.contiguous_format)


# Fake (meta) kernels wherever the API exists; autograd formulas only on the custom-op path.
_register_fake = getattr(torch.library, "register_fake", None) or getattr(torch.library, "impl_abstract", None)
if _register_fake is not None:
    try:
        _register_fake("kd_torch::divergence")(_div_fake)
        _register_fake("kd_torch::policy_gradient")(_pg_fake)
        _register_fake("kd_torch::pg_advantages")(_pga_fake)
        _register_fake("kd_torch::topk_divergence")(_topk_fake)
    except Exception:  # pragma: no cover - best effort on old versions (then only eager mode is supported)
        if USES_CUSTOM_OPS:
            raise
if USES_CUSTOM_OPS:
    torch.library.register_autograd("kd_torch::divergence", _div_backward, setup_context=_div_setup_context)
    torch.library.register_autograd("kd_torch::policy_gradient", _pg_backward, setup_context=_pg_setup_context)
    torch.library.register_autograd("kd_torch::topk_divergence", _topk_backward, setup_context=_topk_setup_context)
