"""Fused linear + divergence for PyTorch: the divergence between the student's and the teacher's distributions computed
from hidden states and lm-head weights, chunk of rows by chunk of rows, so that only chunk_size x V logits exist at a
time (the peers' most requested feature: at N = 8192, V = 128256 the float32 logits are 4.2 GB per model).

    from kd_torch.fused import fused_linear_divergence_loss
    loss = fused_linear_divergence_loss("jsd", student_hidden, lm_head.weight, teacher_hidden, teacher_lm_head.weight,
                                        beta=0.5, labels=labels, temperature=1.0)
    loss.backward()      # gradients of student_hidden, the student weight (and bias), computed in the forward

Per chunk: logits by torch matrix products (any BLAS torch uses), the logit transform (logit_scale, Gemma-2
final_logit_softcapping z = c tanh(z / c)), kd's fused divergence kernel (loss and dL/dlogits in one pass), the chain
rule through the transform, and the backward products grad_hidden = dz W, grad_weight += dz^T h, grad_bias += sum dz.
The backward returns those gradients times grad_output (no recomputation). The C++ library's
kd::fused_linear_divergence (kd/fused_linear.hpp) does the same with Eigen products and also tiles the vocabulary.

Reductions as kd_torch.divergence_loss: "mean" (token mean over rows whose label is not ignore_index), "sum",
"batchmean" (sum / hidden.size(0)), num_items_in_batch (sum / that number: gradient accumulation). "none" is refused
(it needs no fusion: compute the logits).
"""

import torch

from . import _ops
from .functional import _RED_CODE, _check_choice, _check_number, _check_tensor, _collect_params, _reduction
from .functional import divergence_info

__all__ = ["fused_linear_divergence_loss"]


def _logits(h, w, b, scale, cap):
    z = h @ w.t()
    if b is not None:
        z = z + b
    if scale != 1.0:
        z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    return z


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, zt_all, labels, row_weights, kind, p0, p1, temperature, t2, red,
                normalizer, ignore_index, scale, cap, t_scale, t_cap, chunk):
        H, V = hs.shape[-1], ws.shape[0]
        lead = hs.shape[:-1]
        h2 = hs.reshape(-1, H)
        N = h2.shape[0]
        lab = labels.reshape(-1) if labels is not None else None
        rw = row_weights.reshape(-1) if row_weights is not None else None
        t2h = ht.reshape(-1, ht.shape[-1]) if ht is not None else None
        z2t = zt_all.reshape(-1, V) if zt_all is not None else None
        # The denominator of the whole call first, so that each chunk's gradient is final when it is formed.
        if red == _RED_CODE["mean"]:
            w = torch.ones(N, dtype=torch.float64) if rw is None else rw.double()
            if lab is not None:
                w = w * (lab != ignore_index)
            if z2t is not None:
                w = w * ~torch.isneginf(z2t).all(-1)
            den = float(w.sum())
        else:
            den = normalizer
        want = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        acc = torch.float32 if hs.dtype in (torch.bfloat16, torch.float16) else hs.dtype
        gh = torch.zeros(N, H, dtype=acc) if want else None
        gw = torch.zeros(V, H, dtype=acc) if want else None
        gb = torch.zeros(V, dtype=acc) if want and bs is not None else None
        total = torch.zeros((), dtype=torch.float64)
        empty = red == _RED_CODE["mean"] and not den > 0.0
        for r0 in range(0, N, chunk):
            r1 = min(N, r0 + chunk)
            hc = h2[r0:r1]
            with torch.no_grad():
                zs = _logits(hc, ws, bs, scale, cap)
                zt = z2t[r0:r1] if z2t is not None else _logits(t2h[r0:r1], wt, bt, t_scale, t_cap)
                if zt.dtype != zs.dtype:
                    zt = zt.to(zs.dtype)
            if empty:
                continue
            loss, g, _, _, _ = _ops._ops.divergence(
                zs, zt, lab[r0:r1] if lab is not None else None, rw[r0:r1] if rw is not None else None, kind, p0, p1,
                temperature, t2, _RED_CODE["normalizer"] if red == _RED_CODE["mean"] else red,
                den if red in (_RED_CODE["mean"], _RED_CODE["normalizer"]) else 0.0, ignore_index, False, False,
                bool(want), False, True)
            total += loss.double()
            if not want:
                continue
            g = g.to(acc)  # the chain factor and the products in float32 for 16-bit inputs (rounded once at the end)
            if cap is not None:
                g = g * (scale * (1 - (zs.to(acc) / cap) ** 2))
            elif scale != 1.0:
                g = g * scale
            gh[r0:r1] = g @ ws.to(acc)
            gw += g.t() @ hc.to(acc)
            if gb is not None:
                gb += g.sum(0)
        # kept in float32 for 16-bit inputs: backward scales by grad_output and rounds once
        ctx.save_for_backward(gh.reshape(*lead, H) if want else None, gw if want else None, gb)
        ctx.dtypes = (hs.dtype, ws.dtype, bs.dtype if bs is not None else None)
        return total.to(acc if acc != torch.float64 else torch.float64)

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        out = []
        for i, (t, dt) in enumerate(zip(saved, ctx.dtypes)):
            out.append((t * g.to(t.dtype)).to(dt) if t is not None and ctx.needs_input_grad[i] else None)
        return tuple(out) + (None,) * 19


def fused_linear_divergence_loss(divergence, student_hidden, student_weight, teacher_hidden=None, teacher_weight=None,
                                 *params, teacher_logits=None, labels=None, ignore_index=-100, row_weights=None,
                                 temperature=1.0, t2_scale=False, reduction="mean", num_items_in_batch=None,
                                 student_bias=None, teacher_bias=None, logit_scale=1.0, teacher_logit_scale=1.0,
                                 final_logit_softcapping=None, teacher_final_logit_softcapping=None, chunk_size=1024,
                                 **named_params):
    """kd's divergence (a registered name, with its parameters: jsd's beta, ...) between softmax(z_s / T) and
    softmax(z_t / T), z_s = transform(student_hidden @ student_weight.T + student_bias), z_t from the teacher's hidden
    states and weight (or teacher_logits [..., V]), without materialising more than chunk_size x V logits.

    student_hidden [..., H], student_weight [V, H] (nn.Linear's weight), student_bias [V] or None; teacher likewise
    (its own H). logit_scale multiplies the logits (Cohere); final_logit_softcapping c caps them, z = c tanh(z / c)
    (Gemma-2; None: no cap); the teacher's teacher_logit_scale / teacher_final_logit_softcapping are independent
    (defaults 1.0 / None: give both sides' values for a Gemma-2 teacher). Returns a 0-dim tensor; gradients reach student_hidden,
    student_weight and student_bias (the teacher is treated as constant)."""
    info = divergence_info(divergence)
    for t, n in ((student_hidden, "student_hidden"), (student_weight, "student_weight")):
        _check_tensor(t, n)
    values = _collect_params(info, params, named_params)
    temperature = _check_number(temperature, "temperature")
    _check_choice(reduction, "reduction", ("mean", "sum", "batchmean"))
    if student_weight.dim() != 2 or student_weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError(f"student_weight: expected [V, {student_hidden.shape[-1]}] (nn.Linear's weight for hidden "
                         f"size {student_hidden.shape[-1]}), got {list(student_weight.shape)}")
    V = student_weight.shape[0]
    if (teacher_logits is None) == (teacher_hidden is None or teacher_weight is None):
        raise ValueError("teacher_hidden: give the teacher's hidden states and weight, or teacher_logits (not both)")
    if teacher_logits is not None:
        _check_tensor(teacher_logits, "teacher_logits")
        if tuple(teacher_logits.shape) != tuple(student_hidden.shape[:-1]) + (V,):
            raise ValueError(f"teacher_logits: expected {list(student_hidden.shape[:-1]) + [V]}, "
                             f"got {list(teacher_logits.shape)}")
    else:
        _check_tensor(teacher_hidden, "teacher_hidden")
        _check_tensor(teacher_weight, "teacher_weight")
        if tuple(teacher_hidden.shape[:-1]) != tuple(student_hidden.shape[:-1]):
            raise ValueError(f"teacher_hidden: leading shape {list(teacher_hidden.shape[:-1])} differs from "
                             f"student_hidden's {list(student_hidden.shape[:-1])}")
        if teacher_weight.dim() != 2 or tuple(teacher_weight.shape) != (V, teacher_hidden.shape[-1]):
            raise ValueError(f"teacher_weight: expected [{V}, {teacher_hidden.shape[-1]}], "
                             f"got {list(teacher_weight.shape)}")
    scale = _check_number(logit_scale, "logit_scale")
    if scale == 0.0:
        raise ValueError("logit_scale: must be != 0")
    t_scale = _check_number(teacher_logit_scale, "teacher_logit_scale")
    if t_scale == 0.0:
        raise ValueError("teacher_logit_scale: must be != 0")
    cap = None if final_logit_softcapping is None else _check_number(final_logit_softcapping,
                                                                      "final_logit_softcapping")
    t_cap = None if teacher_final_logit_softcapping is None else _check_number(teacher_final_logit_softcapping,
                                                                                 "teacher_final_logit_softcapping")
    for c, n in ((cap, "final_logit_softcapping"), (t_cap, "teacher_final_logit_softcapping")):
        if c is not None and not c > 0.0:
            raise ValueError(f"{n}: must be > 0 (None: no softcapping), got {c}")
    rows = student_hidden.numel() // student_hidden.shape[-1] if student_hidden.shape[-1] else 0
    if labels is not None:
        _check_tensor(labels, "labels")
        if labels.numel() != rows or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels: expected {rows} int64 / int32 values (one per row), got {labels.numel()} "
                             f"{labels.dtype}")
    if row_weights is not None:
        _check_tensor(row_weights, "row_weights")
        if row_weights.numel() != rows or row_weights.dtype != torch.float32:
            raise ValueError(f"row_weights: expected {rows} float32 values (one per row), got {row_weights.numel()} "
                             f"{row_weights.dtype}")
        if not bool(torch.isfinite(row_weights).all()) or bool((row_weights < 0).any()):
            raise ValueError("row_weights: must be finite and >= 0")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: must be an int >= 1, got {chunk_size!r}")
    red, normalizer = _reduction(reduction, num_items_in_batch, student_hidden.shape[0] if student_hidden.dim() >= 2
                                 else 1)
    return _Fused.apply(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias,
                        teacher_logits, labels, row_weights, info.kind, values[0], values[1], temperature,
                        bool(t2_scale), _RED_CODE[red], normalizer, int(ignore_index), scale, cap, t_scale, t_cap,
                        chunk_size)
