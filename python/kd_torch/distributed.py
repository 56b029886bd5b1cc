"""Vocabulary-parallel divergences over torch.distributed: each process holds a contiguous shard of the vocabulary of
both models' logits (a tensor-parallel lm-head's output) and kd joins the shards with three all-reduces per call
(O(rows) float64 values each), never gathering the logits (C++: kd/vocab_parallel.hpp; docs/vocab_parallel.md).

    import torch.distributed as dist
    from kd_torch.distributed import vocab_parallel_divergence_loss
    loss = vocab_parallel_divergence_loss("reverse_kl", student_shard, teacher_shard, labels=labels)  # [.., V_local]
    loss.backward()      # the local shard's gradient; the loss is the same on every process

Every process passes the same rows, labels, options and divergence, and its own columns (any widths, any order of
shards). Options as kd_torch.divergence_loss (temperature, t2_scale, labels / ignore_index, row_weights, reduction
"mean" / "sum" / "batchmean" / "none", num_items_in_batch). Backends: gloo (CPU tensors) and NCCL (the reduced
buffers are copied to the current CUDA device and back); kd computes on the CPU (its CUDA backend is issue 12).
"""

import torch
import torch.distributed as dist

from . import _C
from .functional import _RED_CODE, _common_args, _reduction

__all__ = ["vocab_parallel_divergence_loss"]


def _all_reduce(group):
    device = None
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())

    def all_reduce(t, op):
        o = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
        if device is None:
            dist.all_reduce(t, op=o, group=group)
        else:
            x = t.to(device)
            dist.all_reduce(x, op=o, group=group)
            t.copy_(x.cpu())

    return all_reduce


class _VocabParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, labels, row_weights, kind, p0, p1, temperature, t2, red, normalizer,
                ignore_index, group):
        want = bool(ctx.needs_input_grad[0])
        loss, grad, per_row = _C.vocab_parallel(student, teacher, labels, row_weights, kind, p0, p1, temperature, t2,
                                                red, normalizer, ignore_index, want, _all_reduce(group))
        ctx.save_for_backward(grad)
        ctx.per_row_output = red == _RED_CODE["none"]
        if not ctx.per_row_output:
            ctx.mark_non_differentiable(per_row)
        return loss, per_row

    @staticmethod
    def backward(ctx, g_loss, g_per_row):
        (grad,) = ctx.saved_tensors
        if grad.numel() == 0:
            return (None,) * 13
        # 16-bit gradients are scaled in float32 and rounded once (as kd_torch's other losses, _ops._scale_grad)
        wide = torch.float64 if grad.dtype == torch.float64 else torch.float32
        if ctx.per_row_output:
            g = (grad.to(wide) * g_per_row.to(wide).unsqueeze(-1)).to(grad.dtype) if g_per_row is not None else None
        else:
            g = (grad.to(wide) * g_loss.to(wide)).to(grad.dtype)
        return (g,) + (None,) * 12


def vocab_parallel_divergence_loss(divergence, student_logits, teacher_logits, *params, group=None, temperature=1.0,
                                   t2_scale=False, labels=None, ignore_index=-100, row_weights=None, reduction="mean",
                                   num_items_in_batch=None, **named_params):
    """The divergence of the full-vocabulary rows whose local shards are student_logits / teacher_logits [..., V_local]
    (same shape on both sides; the same leading shape on every process of `group`). Returns the loss (0-dim, the
    same on every process), or the per-token losses [...] for reduction="none"; the gradient flows to the local
    student shard. Errors: ValueError / TypeError naming the argument, as kd_torch.divergence_loss (a value error
    found on any shard is raised on every process)."""
    info, values, temperature = _common_args(divergence, student_logits, teacher_logits, params, named_params,
                                             temperature, reduction)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("group: torch.distributed is not initialized (call dist.init_process_group first)")
    red, normalizer = _reduction(reduction, num_items_in_batch, student_logits.shape[0] if student_logits.dim() >= 1
                                 else 1)
    loss, per_row = _VocabParallel.apply(student_logits, teacher_logits, labels, row_weights, info.kind, values[0],
                                         values[1], temperature, bool(t2_scale), _RED_CODE[red], normalizer,
                                         int(ignore_index), group)
    return per_row if reduction == "none" else loss
