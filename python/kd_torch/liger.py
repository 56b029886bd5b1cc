"""Drop-ins for callers of Liger-Kernel's LigerJSD, LigerKLDIVLoss and LigerTVDLoss, computed by kd (CPU).

    from kd_torch.liger import LigerJSD, LigerKLDIVLoss, LigerTVDLoss

Same constructor arguments, same forward argument order, same reductions and input kinds as Liger's modules:
- LigerJSD(beta=0.5, ignore_index=-100)(log_q, log_p, shift_labels=None): student and teacher LOG-PROBS [BT, V];
  the mean over rows whose label is not ignore_index (all rows without labels); beta = 0 / 1 are forward / reverse KL.
- LigerKLDIVLoss(reduction="batchmean", log_target=False, eps=1e-10)(y_pred, y_true): nn.KLDivLoss's convention,
  y_pred = student log-probs, y_true = teacher probabilities (log-probs with log_target=True); "batchmean" divides by
  the number of rows, "sum", "mean" by rows * V (elementwise mean), "none" returns the elementwise [BT, V] terms.
- LigerTVDLoss(reduction="batchmean", ignore_index=-100)(p, q, shift_labels=None): PROBABILITIES; p (the first
  argument) receives the gradient; "batchmean" divides by the non-ignored rows, "mean" by those rows * V, "none" is
  elementwise.

Gradients (the ``gradient`` constructor argument of the JSD and KL modules):
- "log_softmax" (default, kd's): the gradient with respect to the log-prob tensor as produced by a log_softmax, i.e.
  kd's logit gradient; its rows sum to 0 and the log_softmax backward leaves it unchanged, so the gradient reaching
  the model's logits is the exact one.
- "free" (Liger's): the gradient with respect to the log-prob tensor taken as free variables (rows not renormalized),
  e.g. -p for the KL. Through a log_softmax both give the same logit gradient; they differ as tensors.
TVD takes probabilities and returns d loss / d p = sign(p - q) / 2 (with sign(0) = 0; Liger uses -1/2 at ties).

Where kd differs (docs/migration.md): inputs declared as log-probs must be normalized (|logsumexp| <= 0.05 at T = 1,
else ValueError "not normalized"); a teacher with a different vocabulary is refused (Liger's fused losses pad a smaller
student vocabulary with zero logits); no fused linear layer (kd takes logits). Liger mixes 0.5 x cross-entropy into its
fused distillation losses by default: with kd, add it yourself: ``loss = 0.5 * F.cross_entropy(...) + 0.5 * kd_loss``.
"""

import torch

from . import _ops
from .functional import _check_choice, _check_number, _check_tensor, divergence_info, divergence_loss

__all__ = ["LigerJSD", "LigerKLDIVLoss", "LigerTVDLoss", "liger_jsd", "liger_kl_div", "liger_tvd"]

_GRADIENTS = ("log_softmax", "free")
_SUM, _MEAN, _NORMALIZER = 1, 2, 3


def _valid_rows(x, labels, ignore_index):
    V = x.shape[-1]
    n = x.numel() // V if V else 0
    if labels is None:
        return torch.ones(n, dtype=torch.bool, device=x.device)
    return (labels.reshape(-1) != ignore_index)


class _FreeGradient(torch.autograd.Function):
    """kd's loss with Liger's free-variable gradient f = g + q * S (g: kd's logit gradient, q = exp(log_q), S the
    row's sum of f), formed in place in kd's gradient buffer, row block by row block."""

    @staticmethod
    def forward(ctx, log_q, log_p, labels, kind, param, ignore_index, reduction, normalizer, row_sum):
        loss, g, _, per_row, _ = _ops._ops.divergence(log_q, log_p, labels, None, kind, param, 0.0, 1.0, False,
                                                       reduction, normalizer, ignore_index, True, True, True,
                                                       False, True)
        V = log_q.shape[-1]
        S = row_sum(per_row.reshape(-1))  # per-row sum of the free gradient (unscaled), 0 on ignored rows
        if reduction == _MEAN:
            valid = int(_valid_rows(log_q, labels, ignore_index).sum())
            scale = 1.0 / valid if valid else 0.0
        elif reduction == _NORMALIZER:
            scale = 1.0 / normalizer
        else:
            scale = 1.0
        gv, lq = g.view(-1, V), log_q.reshape(-1, V)
        for i in range(0, gv.shape[0], 1024):
            j = min(i + 1024, gv.shape[0])
            gv[i:j].add_(lq[i:j].float().exp().mul_((S[i:j] * scale)[:, None]).to(gv.dtype))
        ctx.save_for_backward(g)
        return loss

    @staticmethod
    def backward(ctx, go):
        (g,) = ctx.saved_tensors
        return (_ops._scale_grad(g, go, False),) + (None,) * 8


def liger_jsd(log_q, log_p, shift_labels=None, beta=0.5, ignore_index=-100, gradient="log_softmax"):
    """LigerJSD's loss: generalized JSD(beta) of teacher log-probs log_p and student log-probs log_q, mean over the
    rows whose label is not ignore_index."""
    _check_tensor(log_q, "log_q")
    _check_tensor(log_p, "log_p")
    beta = _check_number(beta, "beta")
    _check_choice(gradient, "gradient", _GRADIENTS)
    dtype = log_q.dtype
    if gradient == "log_softmax" or not (torch.is_grad_enabled() and log_q.requires_grad):
        loss = divergence_loss("jsd", log_q, log_p, beta, labels=shift_labels, ignore_index=ignore_index,
                               input_kind="log_probs")
        return loss.to(dtype)
    info = divergence_info("jsd")
    valid = _valid_rows(log_q, shift_labels, ignore_index)

    if beta == 0.0:    # forward KL: f = -p, S = -1
        def row_sum(per_row):
            return -valid.to(torch.float32)
    elif beta == 1.0:  # reverse KL: f = q (log q - log p + 1), S = KL(q || p) + 1
        def row_sum(per_row):
            return torch.where(valid, per_row.float() + 1.0, torch.zeros_like(per_row, dtype=torch.float32))
    else:              # f = (1 - beta) q (log q - log m), S = (1 - beta) KL(q || m) = (1 - beta) skew_reverse_kl(1 - beta)
        def row_sum(per_row):
            with torch.no_grad():
                kqm = divergence_loss("skew_reverse_kl", log_q.detach(), log_p.detach(), 1.0 - beta,
                                      labels=shift_labels, ignore_index=ignore_index, input_kind="log_probs",
                                      reduction="none")
            return (1.0 - beta) * kqm.reshape(-1).float()
    loss = _FreeGradient.apply(log_q, log_p.detach(), shift_labels, info.kind, beta, ignore_index, _MEAN, 0.0,
                               row_sum)
    return loss.to(dtype)


class LigerJSD(torch.nn.Module):
    def __init__(self, beta=0.5, ignore_index=-100, gradient="log_softmax"):
        super().__init__()
        self.beta = _check_number(beta, "beta")
        self.ignore_index = ignore_index
        self.gradient = _check_choice(gradient, "gradient", _GRADIENTS)
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta: kd: invalid argument 'beta': must be in [0, 1] (got {beta})")

    def forward(self, log_q, log_p, shift_labels=None):
        return liger_jsd(log_q, log_p, shift_labels, self.beta, self.ignore_index, self.gradient)


_KL_REDUCTIONS = ("batchmean", "sum", "mean", "none")


def liger_kl_div(y_pred, y_true, reduction="batchmean", log_target=False, eps=1e-10, gradient="log_softmax"):
    """nn.KLDivLoss / LigerKLDIVLoss: KL(y_true || exp(y_pred)) per row, reduced as PyTorch does."""
    _check_tensor(y_pred, "y_pred")
    _check_tensor(y_true, "y_true")
    _check_choice(reduction, "reduction", _KL_REDUCTIONS)
    _check_choice(gradient, "gradient", _GRADIENTS)
    if reduction == "none":  # elementwise: the N x V result is computed with PyTorch ops
        if log_target:
            return y_true.exp() * (y_true - y_pred)
        return y_true * (torch.log(torch.clamp(y_true, min=eps)) - y_pred)
    log_p = y_true if log_target else torch.log(y_true.detach())  # 0 -> -inf: a mask (probability 0, term 0)
    if log_p.dtype != y_pred.dtype:
        log_p = log_p.to(y_pred.dtype)
    rows0 = y_pred.shape[0] if y_pred.dim() else 1
    red, norm = {"batchmean": ("normalizer", float(max(rows0, 1))), "sum": ("sum", None),
                 "mean": ("normalizer", float(max(y_pred.numel(), 1)))}[reduction]
    if gradient == "log_softmax" or not (torch.is_grad_enabled() and y_pred.requires_grad):
        loss = divergence_loss("forward_kl", y_pred, log_p.detach(), reduction="mean" if norm else "sum",
                               num_items_in_batch=norm, input_kind="log_probs")
        return loss.to(y_pred.dtype)
    info = divergence_info("forward_kl")
    n = y_pred.numel() // y_pred.shape[-1]
    loss = _FreeGradient.apply(y_pred, log_p.detach(), None, info.kind, 0.0, -100,
                               _NORMALIZER if norm else _SUM, norm or 0.0,
                               lambda per_row: -torch.ones(n, dtype=torch.float32))
    return loss.to(y_pred.dtype)


class LigerKLDIVLoss(torch.nn.Module):
    def __init__(self, reduction="batchmean", log_target=False, eps=1e-10, gradient="log_softmax"):
        super().__init__()
        self.reduction = _check_choice(reduction, "reduction", _KL_REDUCTIONS)
        self.log_target = bool(log_target)
        self.eps = eps
        self.gradient = _check_choice(gradient, "gradient", _GRADIENTS)

    def forward(self, y_pred, y_true):
        return liger_kl_div(y_pred, y_true, self.reduction, self.log_target, self.eps, self.gradient)


class _TVDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, q, labels, ignore_index, red, norm):
        loss, _, _ = _ops.divergence(torch.log(p), torch.log(q), labels, None, divergence_info("tvd").kind, 0.0, 0.0,
                                     1.0, False, red, norm, ignore_index, True, True)
        ctx.save_for_backward(p, q, labels)
        ctx.ignore_index, ctx.scale = ignore_index, (1.0 / norm if red == _NORMALIZER else 1.0)
        return loss

    @staticmethod
    def backward(ctx, go):
        p, q, labels = ctx.saved_tensors
        g = torch.sign(p - q).mul_(0.5 * ctx.scale)
        if labels is not None:
            g.view(-1, g.shape[-1])[labels.reshape(-1) == ctx.ignore_index] = 0
        return (_ops._scale_grad(g, go, False),) + (None,) * 5


def liger_tvd(p, q, shift_labels=None, reduction="batchmean", ignore_index=-100):
    """LigerTVDLoss: 0.5 sum |p - q| per row of probabilities; p gets the gradient sign(p - q) / 2."""
    _check_tensor(p, "p")
    _check_tensor(q, "q")
    _check_choice(reduction, "reduction", _KL_REDUCTIONS)
    valid = int(_valid_rows(p, shift_labels, ignore_index).sum())
    if reduction == "none":
        out = 0.5 * (p - q).abs()
        if shift_labels is not None:
            out = out * (shift_labels != ignore_index).unsqueeze(-1).to(out.dtype)
        return out
    if reduction == "sum":
        red, norm = _SUM, 0.0
    else:
        n = valid if reduction == "batchmean" else valid * p.shape[-1]
        red, norm = _NORMALIZER, float(max(n, 1))
    if q.dtype != p.dtype:
        q = q.to(p.dtype)
    return _TVDFunction.apply(p, q.detach(), shift_labels, ignore_index, red, norm).to(p.dtype)


class LigerTVDLoss(torch.nn.Module):
    def __init__(self, reduction="batchmean", ignore_index=-100):
        super().__init__()
        self.reduction = _check_choice(reduction, "reduction", _KL_REDUCTIONS)
        self.ignore_index = ignore_index

    def forward(self, p, q, shift_labels=None):
        return liger_tvd(p, q, shift_labels, self.reduction, self.ignore_index)
