"""Drop-in replacement for TRL's ``generalized_jsd_loss`` (GKD, Distillation and GOLD trainers), computed by kd.

    from kd_torch.trl import generalized_jsd_loss     # instead of GKDTrainer.generalized_jsd_loss

Same signature, same semantics as TRL's static method (read from TRL 1.x's source; the parity tests import TRL and
compare values and gradients):
- logits are divided by ``temperature`` and normalized with log_softmax; no T^2 factor;
- ``beta`` = 0 is KL(teacher || student), ``beta`` = 1 is KL(student || teacher), otherwise the generalized JSD with the
  mixture beta * teacher + (1 - beta) * student;
- rows whose label is -100 are dropped (TRL's constant, there is no ignore_index argument);
- ``num_items_in_batch`` (number or tensor) given: sum / num_items_in_batch, whatever ``reduction`` says;
- ``"batchmean"``: sum / max(number of labels != -100, 1) with labels, sum / max(student_logits.size(0), 1) without
  (the batch size B of a [B, T, V] input, not B * T);
- ``"sum"``; ``"mean"``: the elementwise mean, sum / (valid rows * V) (NaN when labels leave no valid row);
- ``"none"``: the elementwise [..., V] tensor (or [valid rows, V] with labels), computed with PyTorch ops since the
  result is N x V anyway (16-bit inputs in float32, rounded once);
- the result has the dtype of the (promoted) inputs.

Where kd differs, it raises instead of returning NaN / inf (ValueError naming the argument): temperature <= 0, beta
outside [0, 1], num_items_in_batch <= 0, an unknown reduction string (TRL treats any unknown string as "none"), mismatched
shapes. Inputs of two dtypes are promoted (the teacher is cast) before kd reads them. docs/migration.md lists these.
"""

import numbers

import torch

from . import _ops
from .functional import _check_number, _check_tensor, divergence_info

__all__ = ["generalized_jsd_loss"]

_JSD = divergence_info("jsd")
_SUM, _NORMALIZER = 1, 3


def _elementwise(student_logits, teacher_logits, labels, beta, temperature):
    """TRL's reduction="none": the per-entry terms whose sum over the vocabulary is the divergence (PyTorch ops).
    16-bit inputs are computed in float32 and the result rounded once (as kd's fused path does), not op by op."""
    dtype = student_logits.dtype
    if dtype in (torch.bfloat16, torch.float16):
        student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    ls = torch.log_softmax(student_logits / temperature, dim=-1)
    lt = torch.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        out = lt.exp() * (lt - ls)
    elif beta == 1:
        out = ls.exp() * (ls - lt)
    else:
        b = torch.tensor(beta, dtype=ls.dtype, device=ls.device)
        lm = torch.logaddexp(ls + torch.log1p(-b), lt + torch.log(b))
        out = b * lt.exp() * (lt - lm) + (1 - b) * ls.exp() * (ls - lm)
    if labels is not None:
        out = out[labels != -100]
    return out.to(dtype)


def generalized_jsd_loss(student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0,
                         reduction="batchmean", num_items_in_batch=None):
    """TRL's generalized JSD loss (GKD, arXiv 2306.13649, Eq. 1) with TRL's reductions, computed by kd's fused kernel.

    student_logits, teacher_logits: [..., V] (float32 / bfloat16 / float16 / float64); labels: optional [...] with -100
    for ignored positions; beta in [0, 1]; temperature > 0; reduction "batchmean" | "sum" | "mean" | "none";
    num_items_in_batch: optional global token count (number or tensor).
    """
    _check_tensor(student_logits, "student_logits")
    _check_tensor(teacher_logits, "teacher_logits")
    beta = _check_number(beta, "beta")
    temperature = _check_number(temperature, "temperature")
    if not isinstance(reduction, str) or reduction not in ("batchmean", "sum", "mean", "none"):
        raise ValueError(f"reduction: must be 'batchmean', 'sum', 'mean' or 'none', got {reduction!r}")
    if labels is not None:
        _check_tensor(labels, "labels")
    dtype = torch.promote_types(student_logits.dtype, teacher_logits.dtype)
    if student_logits.dtype != dtype:
        student_logits = student_logits.to(dtype)
    if teacher_logits.dtype != dtype:
        teacher_logits = teacher_logits.to(dtype)

    if num_items_in_batch is None and reduction == "none":
        # The result is N x V: PyTorch ops compute it. The arguments are checked as kd checks them.
        if not (temperature > 0 and temperature < float("inf")):
            raise ValueError(f"temperature: kd: invalid argument 'temperature': must be finite and > 0 (got {temperature})")
        if not (0.0 <= beta <= 1.0):
            raise ValueError(f"beta: kd: invalid argument 'beta': must be in [0, 1] (got {beta})")
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"teacher_logits: shape {tuple(teacher_logits.shape)} differs from student_logits' "
                             f"{tuple(student_logits.shape)}")
        return _elementwise(student_logits, teacher_logits, labels, beta, temperature)

    V = student_logits.shape[-1] if student_logits.dim() >= 1 else 1
    nan = False
    if num_items_in_batch is not None:
        normalizer = _check_number(num_items_in_batch, "num_items_in_batch")
        red = _NORMALIZER
    elif reduction == "sum":
        normalizer, red = 0.0, _SUM
    else:
        if labels is not None:
            valid = int((labels != -100).sum().item())
        else:
            valid = None
        if reduction == "batchmean":
            n = max(valid, 1) if valid is not None else max(student_logits.shape[0] if student_logits.dim() else 1, 1)
        else:  # "mean": elementwise
            n = valid * V if valid is not None else student_logits.numel()
            if n == 0:
                n, nan = 1, True  # mean of an empty selection: NaN, as torch's mean() (gradient 0)
        normalizer, red = float(n), _NORMALIZER
    loss, _, _ = _ops.divergence(student_logits, teacher_logits, labels, None, _JSD.kind, beta, 0.0, temperature,
                                 False, red, normalizer, -100, False, False)
    if nan:
        loss = loss + float("nan")
    return loss.to(dtype)
