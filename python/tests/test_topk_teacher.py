# kd_torch.topk_divergence_loss (a teacher given as top-k ids and log-probs) against PyTorch formulas written from the
# definitions (refs.py, and the compressed rows built here with torch ops), with autograd for the gradients: every
# registered divergence, the three modes, temperatures, labels with padding ids, reductions; errors name the argument.
# Tolerances: float64 - kd's reference backend and torch's float64 ops differ in summation order and in how the tail
# is formed (log-sum-exp over the rest here and in kd): 2^-40 relative to the largest entry; float32 - the SIMD kernels'
# bound 8 2^-24 (max |z| / T + 1) relative to the largest entry (tests/test_simd_util.hpp).
import pytest
import torch

import kd_torch

from conftest import norm_rel
from refs import FORMULAS, PARAMS

B, L, V, K = 2, 5, 40, 6


def _data(dtype=torch.float64, seed=0, k=K):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2.0)
    zt = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2.0
    ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(B * L)]).view(B, L, k)
    lp = torch.log_softmax(zt, -1).gather(-1, ids)
    return zs.to(dtype), ids, lp.to(dtype if dtype == torch.float64 else torch.float32)


def _support_mask(ids):
    m = torch.zeros(ids.shape[:-1] + (V,), dtype=torch.bool)
    return m.scatter(-1, ids, True)


def _compressed(zs, ids, lp, mode, temperature):
    """(teacher log p', student log q') per row, torch ops only."""
    lq_full = torch.log_softmax(zs / temperature, -1)
    lq = lq_full.gather(-1, ids)
    if mode == "renormalize":
        return torch.log_softmax(lp, -1), torch.log_softmax(lq, -1)
    if mode == "unnormalized_forward_kl":
        return lp, lq
    rest = lq_full.masked_fill(_support_mask(ids), float("-inf"))
    lq_tail = torch.logsumexp(rest, -1, keepdim=True)
    lp_tail = torch.log(-torch.expm1(torch.logsumexp(lp, -1, keepdim=True)))
    return torch.cat([lp, lp_tail], -1), torch.cat([lq, lq_tail], -1)


def _oracle(name, params, zs, ids, lp, mode, temperature, labels=None, reduction="mean"):
    lpc, lqc = _compressed(zs, ids, lp, mode, temperature)
    if mode == "unnormalized_forward_kl":
        per = (lpc.exp() * (lpc - lqc)).sum(-1)
    else:
        per = FORMULAS[name](lpc, lqc, *params)
    valid = torch.ones_like(per, dtype=torch.bool) if labels is None else labels != -100
    per = torch.where(valid, per, torch.zeros_like(per))
    if reduction == "sum":
        return per.sum()
    if reduction == "none":
        return per
    return per.sum() / valid.sum()


CASES = [(name, p) for name, ps in PARAMS.items() for p in ps]


@pytest.mark.parametrize("mode", ["tail_bucket", "renormalize"])
@pytest.mark.parametrize("name,params", CASES)
def test_matches_formulas_float64(name, params, mode):
    zs, ids, lp = _data()
    labels = torch.tensor([[1, -100, 2, 3, 4], [5, 6, -100, 7, 8]])
    ids[0, 1] = -1  # an ignored row: padding ids are not read
    for temperature in (1.0, 2.0):
        a = zs.clone().requires_grad_(True)
        b = zs.clone().requires_grad_(True)
        got = kd_torch.topk_divergence_loss(name, a, ids, lp, *params, mode=mode, temperature=temperature,
                                            labels=labels)
        ref = _oracle(name, params, b, ids.clamp(min=0), lp, mode, temperature, labels=labels)
        assert abs(got.item() - ref.item()) <= 2**-40 * (1 + abs(ref.item()))
        (ga,) = torch.autograd.grad(got, a)
        (gb,) = torch.autograd.grad(ref, b)
        assert norm_rel(ga, gb) <= 2**-40


def test_unnormalized_forward_kl_float64():
    zs, ids, lp = _data(seed=3)
    for temperature in (0.5, 1.0, 3.0):
        for reduction in ("mean", "sum", "none"):
            a = zs.clone().requires_grad_(True)
            b = zs.clone().requires_grad_(True)
            got = kd_torch.topk_divergence_loss("forward_kl", a, ids, lp, mode="unnormalized_forward_kl",
                                                temperature=temperature, reduction=reduction)
            ref = _oracle("forward_kl", (), b, ids, lp, "unnormalized_forward_kl", temperature, reduction=reduction)
            # per-token values are stored in float32 by kd (docs/python.md): 2^-24 relative for "none"
            assert norm_rel(got, ref) <= (2**-24 if reduction == "none" else 2**-40)
            w = torch.linspace(0.5, 1.5, got.numel(), dtype=torch.float64).view_as(got)
            (ga,) = torch.autograd.grad((got * w).sum(), a)
            (gb,) = torch.autograd.grad((ref * w).sum(), b)
            assert norm_rel(ga, gb) <= 2**-40


@pytest.mark.parametrize("mode", ["tail_bucket", "renormalize", "unnormalized_forward_kl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_simd_matches_float64(mode, dtype):
    zs, ids, lp = _data(seed=5)
    zs_low = zs.to(dtype)
    lp32 = lp.float()
    names = ["forward_kl"] if mode == "unnormalized_forward_kl" else ["forward_kl", "reverse_kl", "jsd", "tvd"]
    for name in names:
        params = (0.5,) if name == "jsd" else ()
        a = zs_low.clone().requires_grad_(True)
        b = zs_low.double().requires_grad_(True)
        got = kd_torch.topk_divergence_loss(name, a, ids, lp32, *params, mode=mode, temperature=2.0)
        ref = kd_torch.topk_divergence_loss(name, b, ids, lp32.double(), *params, mode=mode, temperature=2.0)
        eps = 8 * 2**-24 * (zs_low.double().abs().max().item() / 2.0 + 1)
        assert abs(got.item() - ref.item()) <= eps * (1 + abs(ref.item()))
        (ga,) = torch.autograd.grad(got, a)
        (gb,) = torch.autograd.grad(ref, b)
        # bf16 gradients carry their own rounding (2^-9 relative) on top
        assert norm_rel(ga.double(), gb) <= eps + (2**-8 if dtype == torch.bfloat16 else 0.0)


@pytest.mark.parametrize("mode", ["tail_bucket", "renormalize", "unnormalized_forward_kl"])
def test_gradcheck(mode):
    g = torch.Generator().manual_seed(7)
    zs = torch.randn(3, 9, generator=g, dtype=torch.float64).requires_grad_(True)
    ids = torch.stack([torch.randperm(9, generator=g)[:3] for _ in range(3)])
    lp = torch.log_softmax(torch.randn(3, 9, generator=g, dtype=torch.float64), -1).gather(-1, ids)
    names = [("forward_kl", ())] if mode == "unnormalized_forward_kl" else CASES
    for name, params in names:
        assert torch.autograd.gradcheck(
            lambda z: kd_torch.topk_divergence_loss(name, z, ids, lp, *params, mode=mode, temperature=1.3),
            (zs,), eps=1e-6, atol=1e-8)


def test_errors_name_the_argument():
    zs, ids, lp = _data(torch.float32)
    dup = ids.clone()
    dup[1, 2, 1] = dup[1, 2, 0]
    with pytest.raises(ValueError, match="teacher_topk_ids"):
        kd_torch.topk_divergence_loss("forward_kl", zs, dup, lp)
    big = ids.clone()
    big[0, 0, 0] = V
    with pytest.raises(ValueError, match="teacher_topk_ids"):
        kd_torch.topk_divergence_loss("forward_kl", zs, big, lp)
    with pytest.raises(ValueError, match="teacher_topk_log_probs"):
        kd_torch.topk_divergence_loss("forward_kl", zs, ids, lp[..., :-1])
    with pytest.raises(ValueError, match="mode"):
        kd_torch.topk_divergence_loss("reverse_kl", zs, ids, lp, mode="unnormalized_forward_kl")
    with pytest.raises(ValueError, match="mode"):
        kd_torch.topk_divergence_loss("forward_kl", zs, ids, lp, mode="topk")
    bad = lp.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="teacher_topk_log_probs"):
        kd_torch.topk_divergence_loss("forward_kl", zs, ids, bad)
    with pytest.raises(TypeError, match="teacher_topk_ids"):
        kd_torch.topk_divergence_loss("forward_kl", zs, ids.float(), lp)
    with pytest.raises(ValueError, match="teacher_topk_ids"):
        kd_torch.topk_divergence_loss("forward_kl", zs, ids[0], lp[0])
