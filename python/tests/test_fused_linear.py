# kd_torch.fused.fused_linear_divergence_loss against the unfused path (full logits by torch, kd_torch.divergence_loss,
# autograd through the matrix products and the transform): every registered divergence, chunk sizes that do and do not
# divide the rows, labels, reductions, bias, logit_scale, softcapping, teacher logits; errors name the argument.
# Tolerances: float64 - the same kd kernel on logits that differ only by the products' summation order (2^-40 relative
# to the largest entry); float32 - the products' rounding, gamma_H = H 2^-24 relative to sum |h w|, times 4 for the
# divergence's sensitivity (each probability and log-ratio moves by <= dz / T), relative to the largest entry.
import pytest
import torch

import kd_torch
from kd_torch.fused import fused_linear_divergence_loss

from conftest import norm_rel

N, H, Ht, V = 14, 16, 12, 50


def _data(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    hs, ws, bs = r(2, N // 2, H), r(V, H) * 0.5, r(V) * 0.3
    ht, wt, bt = r(2, N // 2, Ht), r(V, Ht) * 0.5, r(V) * 0.3
    return [t.to(dtype) for t in (hs, ws, bs, ht, wt, bt)]


def _unfused(name, hs, ws, bs, ht, wt, bt, params, scale=1.0, cap=None, t_scale=1.0, t_cap=None, **kw):
    def logits(h, w, b, s, c):
        z = (h @ w.t() + b) * s
        return c * torch.tanh(z / c) if c is not None else z
    zs = logits(hs, ws, bs, scale, cap)
    with torch.no_grad():
        zt = logits(ht, wt, bt, t_scale, t_cap)
    return kd_torch.divergence_loss(name, zs, zt, *params, **kw)


def _grads(loss, *ts):
    return torch.autograd.grad(loss, ts)


CASES = [(d.name, tuple(p.example for p in d.params)) for d in kd_torch.functional._REGISTRY]


@pytest.mark.parametrize("name,params", CASES)
@pytest.mark.parametrize("chunk", [1, 5, 14, 1000])
def test_matches_unfused_float64(name, params, chunk):
    hs, ws, bs, ht, wt, bt = _data(torch.float64)
    for t in (hs, ws, bs):
        t.requires_grad_(True)
    labels = torch.tensor([[1, -100, 2, 3, 4, 5, 6], [7, 8, -100, -100, 1, 2, 3]])
    kw = dict(labels=labels, temperature=1.7)
    # a capped, scaled student and an uncapped teacher with its own scale
    ref = _unfused(name, hs, ws, bs, ht, wt, bt, params, scale=1.2, cap=3.0, t_scale=0.9, **kw)
    got = fused_linear_divergence_loss(name, hs, ws, ht, wt, *params, student_bias=bs, teacher_bias=bt,
                                       logit_scale=1.2, final_logit_softcapping=3.0, teacher_logit_scale=0.9,
                                       chunk_size=chunk, **kw)
    assert abs(got.item() - ref.item()) <= 2**-40 * (1 + abs(ref.item()))
    for a, b in zip(_grads(got, hs, ws, bs), _grads(ref, hs, ws, bs)):
        assert norm_rel(a, b) <= 2**-40


@pytest.mark.parametrize("reduction,nib", [("sum", None), ("batchmean", None), ("mean", 9.0)])
def test_reductions_and_teacher_logits_float32(reduction, nib):
    hs, ws, bs, ht, wt, bt = _data(torch.float32, seed=3)
    hs.requires_grad_(True)
    ws.requires_grad_(True)
    with torch.no_grad():
        zt = ht @ wt.t() + bt
    zs = hs @ ws.t()
    ref = kd_torch.divergence_loss("jsd", zs, zt, 0.3, reduction=reduction, num_items_in_batch=nib)
    got = fused_linear_divergence_loss("jsd", hs, ws, teacher_logits=zt, beta=0.3, reduction=reduction,
                                       num_items_in_batch=nib, chunk_size=4)
    tol = 4 * H * 2**-24
    assert abs(got.item() - ref.item()) <= tol * (1 + abs(ref.item()))
    for a, b in zip(_grads(got, hs, ws), _grads(ref, hs, ws)):
        assert norm_rel(a, b) <= tol


def test_bfloat16_and_grad_output():
    # bf16 hidden states and weights, loss scaled by 3 (gradient accumulation style): against the float64 unfused path
    # on the same (bf16-rounded) values. bf16 logits carry 2^-8 relative rounding per product term, so the bound is
    # 4 H 2^-8 relative to the largest entry (the float32 argument with bf16's unit roundoff).
    hs, ws, bs, ht, wt, bt = _data(torch.bfloat16, seed=5)
    hs.requires_grad_(True)
    ws.requires_grad_(True)
    got = 3.0 * fused_linear_divergence_loss("reverse_kl", hs, ws, ht, wt, chunk_size=3)
    gh, gw = _grads(got, hs, ws)
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    h64, w64 = hs.detach().double().requires_grad_(True), ws.detach().double().requires_grad_(True)
    zs = h64 @ w64.t()
    zt = ht.double() @ wt.double().t()
    ref = 3.0 * kd_torch.divergence_loss("reverse_kl", zs, zt)
    rh, rw = _grads(ref, h64, w64)
    tol = 4 * H * 2**-8
    assert abs(got.item() - ref.item()) <= tol * (1 + abs(ref.item()))
    assert norm_rel(gh, rh) <= tol and norm_rel(gw, rw) <= tol


def test_errors_name_the_argument():
    hs, ws, bs, ht, wt, bt = _data(torch.float32)
    with pytest.raises(ValueError, match="student_weight"):
        fused_linear_divergence_loss("reverse_kl", hs, ws[:, :5], ht, wt)
    with pytest.raises(ValueError, match="teacher_weight"):
        fused_linear_divergence_loss("reverse_kl", hs, ws, ht, wt[:7])
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        fused_linear_divergence_loss("reverse_kl", hs, ws, ht, wt, final_logit_softcapping=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_divergence_loss("reverse_kl", hs, ws, ht, wt, chunk_size=0)
    with pytest.raises(ValueError, match="teacher_hidden"):
        fused_linear_divergence_loss("reverse_kl", hs, ws)
    with pytest.raises(ValueError, match="row_weights"):
        fused_linear_divergence_loss("reverse_kl", hs, ws, ht, wt, row_weights=torch.full((N,), float("nan")))
    with pytest.raises(ValueError, match="labels"):
        fused_linear_divergence_loss("reverse_kl", hs, ws, ht, wt, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher_logit_scale"):
        fused_linear_divergence_loss("reverse_kl", hs, ws, ht, wt, teacher_logit_scale=0.0)
    with pytest.raises(ValueError, match="temperature"):
        fused_linear_divergence_loss("reverse_kl", hs, ws, ht, wt, temperature=0.0)
