"""The MiniLLM policy-gradient loss (kd::policy_gradient) against the estimator written with PyTorch ops in this file
(rewards, valid-position returns, length normalizations, whitening, PPO ratio and clip, single-step KL, LM term), and
the on-policy helpers. Tolerance: float32 / 16-bit inputs run on kd's SIMD kernels (kd::dispatch) in float32 arithmetic, float64 inputs
on the double-precision reference backend: 1e-5 norm-relative for float32 arithmetic (~170 u of float32, as
test_formulas.py), 1e-12 for float64; a 16-bit gradient is additionally rounded once to its format (2^-8 for bf16)."""
import math

import pytest
import torch

import kd_torch
from conftest import norm_rel
from kd_torch.minillm import minillm_loss, pg_advantages, token_reverse_kl, token_rewards

B, L, V = 3, 6, 23


def _data(dtype=torch.float32, padded=True):
    s = torch.randn(B, L, V, dtype=torch.float64).to(dtype)
    t = torch.randn(B, L, V, dtype=torch.float64).to(dtype)
    y = torch.randint(0, V, (B, L))
    mask = torch.ones(B, L, dtype=torch.bool)
    if padded:
        mask[0, 4:] = False   # right padding
        mask[2, 0] = False    # a hole (left padding)
        y[0, 4:] = 10 ** 6    # tokens at padding are never read
    return s, t, y, mask


def _returns(r, valid, gamma, norm, include):
    """A_t per the definitions in kd/pg_options.hpp, over valid positions only (relative discounting)."""
    Lr = len(r)
    A = [0.0] * Lr
    idx = [i for i in range(Lr) if valid[i]]
    for k, i in enumerate(idx):
        summed = idx[k:] if include else idx[k + 1:]
        R = sum(gamma ** j * r[p] for j, p in enumerate(summed))
        if norm == "none":
            A[i] = R
        elif norm == "paper":
            A[i] = R / len(summed) if summed else 0.0
        elif norm == "reference":
            A[i] = R / (len(idx) - k)
        elif norm == "discounted":
            c = sum(gamma ** j for j in range(len(summed)))
            A[i] = R / c if summed else 0.0
    return A


def reference_loss(s, t, y, mask, T=1.0, gamma=1.0, norm="paper", include=False, single_step=True, whiten=False,
                   clip_range=0.0, old=None, lm_weight=0.0, lm_labels=None, reduction="mean"):
    lq = torch.log_softmax(s.double() / T, -1)
    lp = torch.log_softmax(t.double() / T, -1)
    yy = torch.where(mask, y, torch.zeros_like(y))
    lqy = lq.gather(-1, yy[..., None])[..., 0]
    lpy = lp.gather(-1, yy[..., None])[..., 0]
    r = (lpy - lqy).detach()
    A = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        A[b] = torch.tensor(_returns(r[b].tolist(), mask[b].tolist(), gamma, norm, include), dtype=torch.float64)
    if whiten:
        v = A[mask]
        A = torch.where(mask, (A - v.mean()) / torch.sqrt(v.var() + 1e-8), A)
    old_lp = lqy.detach() if old is None else old.double()
    rho = torch.exp(lqy - old_lp)
    surr = -A * rho
    if clip_range > 0:
        surr = torch.maximum(surr, -A * rho.clamp(1 - clip_range, 1 + clip_range))
    kl = (lq.exp() * (lq - lp)).sum(-1)
    per = surr + (kl if single_step else 0.0)
    per = torch.where(mask, per, torch.zeros_like(per))
    n = mask.sum()
    loss = per.sum() / n if reduction == "mean" else per.sum()
    if lm_weight:
        lab = lm_labels
        keep = lab != -100
        ce = -lq.gather(-1, torch.where(keep, lab, 0)[..., None])[..., 0]
        loss = loss + lm_weight * ce[keep].sum() / keep.sum()
    return loss, A, r


def _compare(kd_kw, ref_kw, dtype=torch.float32, padded=True, old=False):
    s, t, y, mask = _data(dtype, padded)
    old_lp = None
    if old:
        with torch.no_grad():
            old_lp = (torch.log_softmax(s.double() + 0.3 * torch.randn(B, L, V, dtype=torch.float64), -1)
                      .gather(-1, torch.where(mask, y, 0)[..., None])[..., 0]).float()
    sk = s.clone().requires_grad_()
    out = minillm_loss(sk, t, y, mask, old_log_probs=old_lp, return_outputs=True, **kd_kw)
    out.loss.backward()
    sr = s.double().clone().requires_grad_()
    ref, A, r = reference_loss(sr, t, y, mask, old=old_lp, **ref_kw)
    ref.backward()
    assert abs(out.loss.item() - ref.item()) <= 1e-5 * max(abs(ref.item()), 1.0), (out.loss.item(), ref.item())
    tol = 1e-5 if dtype != torch.bfloat16 else 2.0 ** -8 + 1e-5
    assert norm_rel(sk.grad, sr.grad) <= tol, norm_rel(sk.grad, sr.grad)
    assert norm_rel(out.advantages, torch.where(mask, A, 0.0)) <= 1e-5
    assert norm_rel(out.rewards, torch.where(mask, r, 0.0)) <= 1e-5
    assert bool((sk.grad[~mask] == 0).all())
    return out


def test_on_policy_preset_gamma0():
    out = _compare(dict(preset="on_policy"), dict(gamma=0.0, norm="discounted", include=True))
    assert out.diagnostics["valid_tokens"] == 18 - 3


@pytest.mark.parametrize("norm", ["none", "paper", "reference", "discounted"])
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_length_normalizations(norm, gamma):
    include = norm in ("reference", "discounted")
    _compare(dict(length_norm=norm, gamma=gamma, temperature=1.3),
             dict(norm=norm, gamma=gamma, include=include, T=1.3))


def test_reference_code_variant_without_teacher_mixing_with_old_log_probs():
    _compare(dict(preset="reference_code", alpha=0.0),
             dict(norm="reference", include=True, gamma=0.95, whiten=True, clip_range=0.2), old=True)


def test_exact_preset_sum_reduction():
    _compare(dict(preset="exact"), dict(norm="none", reduction="sum"))


def test_no_single_step_and_lm_term():
    s, t, y, mask = _data()
    lab = torch.randint(0, V, (B, L))
    lab[1, :2] = -100
    sk = s.clone().requires_grad_()
    loss = minillm_loss(sk, t, y, mask, lm_labels=lab, single_step=False, lm_weight=0.5, length_norm="none")
    loss.backward()
    sr = s.double().clone().requires_grad_()
    ref, _, _ = reference_loss(sr, t, y, mask, norm="none", single_step=False, lm_weight=0.5, lm_labels=lab)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())
    assert norm_rel(sk.grad, sr.grad) <= 1e-5


def test_bfloat16_logits():
    _compare(dict(preset="on_policy"), dict(gamma=0.0, norm="discounted", include=True), dtype=torch.bfloat16)


def test_module_and_num_items():
    s, t, y, mask = _data()
    crit = kd_torch.minillm.MiniLLMLoss(preset="on_policy")
    a = crit(s, t, y, mask, num_items_in_batch=30)
    b = minillm_loss(s, t, y, mask, preset="on_policy", reduction="sum")
    assert abs(a.item() - b.item() / 30) <= 1e-5 * abs(b.item())


def test_helpers():
    s, t, y, mask = _data()
    r, lq = token_rewards(s, t, y, mask, temperature=2.0)
    ls, lt = torch.log_softmax(s.double() / 2, -1), torch.log_softmax(t.double() / 2, -1)
    yy = torch.where(mask, y, 0)[..., None]
    want = torch.where(mask, (lt.gather(-1, yy) - ls.gather(-1, yy))[..., 0], 0.0)
    assert norm_rel(r, want) <= 1e-5
    assert norm_rel(lq[mask], ls.gather(-1, yy)[..., 0][mask]) <= 1e-5
    kl = token_reverse_kl(s, t, mask)
    l1, l2 = torch.log_softmax(s.double(), -1), torch.log_softmax(t.double(), -1)
    assert norm_rel(kl, torch.where(mask, (l1.exp() * (l1 - l2)).sum(-1), 0.0)) <= 1e-5
    # pg_advantages == the fused call's advantages for the same rewards and options.
    out = minillm_loss(s, t, y, mask, length_norm="reference", gamma=0.9, whiten=True, return_outputs=True)
    adv = pg_advantages(out.rewards, mask, gamma=0.9, length_norm="reference", whiten=True)
    assert norm_rel(adv, out.advantages) <= 1e-5
    assert torch.equal(pg_advantages(r, mask), torch.where(mask, r, 0.0))  # gamma = 0: A_t = r_t


def test_float64_precision():
    s, t, y, mask = _data(torch.float64)
    s.requires_grad_()
    # The rewards and advantages are constants of the surrogate (no gradient flows through them), so finite
    # differences of the surrogate value are not its gradient (gradcheck does not apply); float64 inputs keep float64
    # precision against the formula.
    out = minillm_loss(s, t, y, mask, preset="on_policy", return_outputs=True)
    out.loss.backward()
    sr = s.detach().clone().requires_grad_()
    ref, _, _ = reference_loss(sr, t, y, mask, gamma=0.0, norm="discounted", include=True)
    ref.backward()
    assert out.loss.dtype == torch.float64 and s.grad.dtype == torch.float64
    assert norm_rel(s.grad, sr.grad) <= 1e-12


def test_errors():
    s, t, y, mask = _data()
    y2 = y.clone()
    y2[1, 1] = V
    with pytest.raises(ValueError, match="tokens"):
        minillm_loss(s, t, y2, mask)
    with pytest.raises(ValueError, match="student_logits: must have shape"):
        minillm_loss(s[0], t[0], y[0])
    with pytest.raises(ValueError, match="gamma"):
        minillm_loss(s, t, y, mask, gamma=1.5)
    with pytest.raises(ValueError, match="length_norm"):
        minillm_loss(s, t, y, mask, length_norm="eq6")
    with pytest.raises(ValueError, match="mask"):
        minillm_loss(s, t, y, torch.full((B, L), float("nan")))
    with pytest.raises(TypeError, match="tokens: dtype"):
        minillm_loss(s, t, y.float(), mask)
    with pytest.raises(ValueError, match="preset"):
        minillm_loss(s, t, y, mask, preset="trl")
