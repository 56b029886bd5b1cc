"""Straightforward PyTorch formulas of every kd divergence (float64, autograd through log_softmax): the oracle of
test_formulas.py and test_gradcheck.py. Written from the definitions in docs/conventions.md and the registry's formulas,
not from kd's code. p = teacher, q = student."""
import torch


def _xlogy_diff(a, la, lb):
    """sum a (la - lb)."""
    return (a * (la - lb)).sum(-1)


def kl(lx, ly):
    """KL(x || y) from log-probabilities."""
    return _xlogy_diff(lx.exp(), lx, ly)


def _log_mix(la, lb, wa):
    """log(wa a + (1 - wa) b)."""
    wa = torch.as_tensor(wa, dtype=la.dtype)
    parts = []
    if wa > 0:
        parts.append(la + torch.log(wa))
    if wa < 1:
        parts.append(lb + torch.log1p(-wa))
    return torch.logsumexp(torch.stack(parts), dim=0)


def forward_kl(lp, lq):
    return kl(lp, lq)


def reverse_kl(lp, lq):
    return kl(lq, lp)


def jsd(lp, lq, beta):
    if beta == 0:
        return kl(lp, lq)
    if beta == 1:
        return kl(lq, lp)
    lm = _log_mix(lp, lq, beta)
    return beta * kl(lp, lm) + (1 - beta) * kl(lq, lm)


def skew_kl(lp, lq, alpha):
    return kl(lp, _log_mix(lp, lq, alpha))


def skew_reverse_kl(lp, lq, alpha):
    return kl(lq, _log_mix(lp, lq, 1 - alpha))


def tvd(lp, lq):
    return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)


def alpha_beta(lp, lq, alpha, beta):
    """Cichocki-Cruces-Amari AB-divergence (ABKD, Entropy 2011 Eq. 4 and the limits of Eq. 5)."""
    a, b = alpha, beta
    if a == 0 and b == 0:
        return (0.5 * (lp - lq) ** 2).sum(-1)
    if b == 0:  # 1/a^2 sum (p^a log(p^a / q^a) - p^a + q^a)
        pa, qa = (a * lp).exp(), (a * lq).exp()
        return (pa * a * (lp - lq) - pa + qa).sum(-1) / a ** 2
    if a == 0:  # 1/b^2 sum (q^b log(q^b / p^b) - q^b + p^b)
        qb, pb = (b * lq).exp(), (b * lp).exp()
        return (qb * b * (lq - lp) - qb + pb).sum(-1) / b ** 2
    s = a + b
    return -((a * lp + b * lq).exp() - a / s * (s * lp).exp() - b / s * (s * lq).exp()).sum(-1) / (a * b)


FORMULAS = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
    "alpha_beta": alpha_beta,
}

# Parameter values tested per divergence: the registry's example and the endpoints / limits.
PARAMS = {
    "forward_kl": [()],
    "reverse_kl": [()],
    "jsd": [(0.5,), (0.0,), (1.0,), (0.1,), (0.9,)],
    "skew_kl": [(0.1,), (0.0,), (0.5,)],
    "skew_reverse_kl": [(0.1,), (0.0,), (0.5,)],
    "tvd": [()],
    "alpha_beta": [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (0.2, 0.7), (0.6, 0.0), (0.0, 0.4), (0.0, 0.0)],
}


def rows_loss(name, params, student, teacher, temperature=1.0, t2_scale=False, labels=None, ignore_index=-100,
              row_weights=None, reduction="mean", num_items_in_batch=None, input_kind="logits"):
    """The reference loss (float64 autograd graph from `student` / `teacher`), with kd's masks and reductions.

    Masks: -inf entries must sit in the same columns of every valid row on both sides (how the tests build them); the
    reference drops those columns (probability 0 on both sides adds 0 to every divergence here, and softmax over the rest
    is unchanged). Rows that are all -inf on both sides, ignored labels and weight 0 are invalid rows."""
    V = student.shape[-1]
    s = student.reshape(-1, V)
    t = teacher.reshape(-1, V)
    n = s.shape[0]
    valid = torch.ones(n, dtype=torch.bool)
    if labels is not None:
        valid &= labels.reshape(-1) != ignore_index
    w = torch.ones(n, dtype=torch.float64) if row_weights is None else row_weights.reshape(-1).double()
    valid &= w > 0
    valid &= ~torch.isneginf(s).all(-1) & ~torch.isneginf(t).all(-1)
    keep = ~(torch.isneginf(s[valid]) | torch.isneginf(t[valid])).any(0)
    s = torch.where(valid[:, None], s, torch.zeros_like(s))[:, keep]
    t = torch.where(valid[:, None], t, torch.zeros_like(t))[:, keep]
    lq = torch.log_softmax(s / temperature, -1)
    lp = torch.log_softmax(t / temperature, -1)
    per = FORMULAS[name](lp, lq, *params)
    per = torch.where(valid, w * per, torch.zeros_like(per))
    if t2_scale:
        per = per * temperature ** 2
    if reduction == "none":
        return per.reshape(student.shape[:-1])
    total = per.sum()
    if num_items_in_batch is not None:
        return total / num_items_in_batch
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / max(student.shape[0], 1)
    den = torch.where(valid, w, torch.zeros_like(w)).sum()
    return total / den if den > 0 else total * 0
