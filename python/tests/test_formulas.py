"""kd_torch's losses against the PyTorch formulas of refs.py: every registered divergence (the list comes from kd's C++
registry), masks, reductions, temperatures, T^2, input kinds and dtypes; values and gradients.

Tolerances, from the float formats:
- float64 inputs run on kd's double-precision reference backend: 1e-12 (a few hundred units of 2^-53 over sums of
  V <= 64 terms).
- float32 / bfloat16 / float16 inputs are read exactly and computed in float32 (u = 2^-24 ~ 6e-8; kd's row sums over
  V = 37 terms, its exp / log within a few ulp, and one division by the denominator): loss and float32 gradient within
  1e-5 of the largest reference entry (~170 u).
- 16-bit gradients are kd's float32 gradient rounded once to the input format: |error| <= 2^-p |g| per entry (the unit
  roundoff; p = significand bits with the implicit one: bfloat16 8, float16 11), plus the float32 error above; float16
  also has subnormals below 2^-14, whose spacing 2^-24 bounds the absolute error there. With reduction="none" a
  per-row upstream gradient multiplies the stored 16-bit gradient: a second rounding, so 2 * 2^-p.
- Per-token values ("none") are stored by kd as float32 (float64 inputs too): 2^-24 relative.
"""
import itertools

import pytest
import torch

import kd_torch
from conftest import norm_rel
from refs import FORMULAS, PARAMS, rows_loss

NAMES = [d.name for d in kd_torch.divergences()]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LOSS_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}
SIG_BITS = {torch.bfloat16: 8, torch.float16: 11}


def test_every_registered_divergence_has_a_formula_and_a_function():
    # The registry is the source of truth: a divergence added in C++ without a test formula fails here.
    assert set(NAMES) == set(FORMULAS), "refs.FORMULAS must cover kd's registry exactly"
    assert set(NAMES) == set(PARAMS)
    for d in kd_torch.divergences():
        assert callable(getattr(kd_torch, d.name))
        assert len(PARAMS[d.name][0]) == len(d.params)
        assert hasattr(kd_torch.nn, kd_torch.nn.class_name(d.name))


def assert_grad_close(got, ref, dtype, roundings=1):
    if dtype in SIG_BITS:
        u = roundings * 2.0 ** -SIG_BITS[dtype]  # unit roundoff: half an ulp relative to 2^e <= |g|
        scale = ref.abs().max().item()
        bound = u * ref.double().abs() + 1e-5 * scale + (2.0 ** -24 if dtype == torch.float16 else 0.0)
        err = (got.double() - ref.double()).abs()
        assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3e} (scale {scale:.3e})"
    else:
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        assert norm_rel(got, ref) <= tol, norm_rel(got, ref)


def make_inputs(dtype, shape=(3, 4, 37), masked_cols=False, masked_row=False, scale=2.0):
    s = (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)
    if masked_cols:  # the same columns masked on both sides in every row
        s[..., [3, 17]] = float("-inf")
        t[..., [3, 17]] = float("-inf")
    if masked_row:  # one row entirely masked on both sides: not counted
        s[1, 2] = float("-inf")
        t[1, 2] = float("-inf")
    return s, t


def run_both(name, params, s, t, teacher_grad=False, **opts):
    sk = s.clone().requires_grad_()
    tk = t.clone().requires_grad_(teacher_grad)
    out = getattr(kd_torch, name)(sk, tk, *params, **opts)
    weights = torch.rand(out.shape, dtype=torch.float64) if out.dim() else None  # 'none': a random upstream gradient
    (out.double() * weights).sum().backward() if weights is not None else out.backward()
    sr = s.double().clone().requires_grad_()
    tr = t.double().clone().requires_grad_(teacher_grad)
    ref_opts = {k: v for k, v in opts.items() if k not in ("input_kind", "teacher_input_kind")}
    ref = rows_loss(name, params, sr, tr, **ref_opts)
    (ref * weights).sum().backward() if weights is not None else ref.backward()
    return out, sk.grad, tk.grad, ref, sr.grad, tr.grad


CASES = [
    dict(),
    dict(temperature=2.0),
    dict(temperature=0.7, t2_scale=True),
    dict(reduction="sum"),
    dict(reduction="batchmean"),
    dict(reduction="none", temperature=1.5),
    dict(num_items_in_batch=7),
    dict(labels="labels", ignore_index=-1),
    dict(labels="labels", reduction="none"),
    dict(row_weights="weights", temperature=1.3),
    dict(row_weights="weights", reduction="sum", labels="labels", ignore_index=-1),
    dict(masked_cols=True, masked_row=True),
    dict(masked_cols=True, reduction="none"),
    dict(input_kind="log_probs"),
]


def _cases():
    for name in NAMES:
        for params in PARAMS[name]:
            for dtype in DTYPES:
                for i, case in enumerate(CASES):
                    # The full option grid for the registry's example parameters; endpoint parameters get the
                    # plain cases (values and masks), which is where endpoint rules could go wrong.
                    if params != PARAMS[name][0] and i not in (0, 1, 7, 11):
                        continue
                    yield pytest.param(name, params, dtype, case, id=f"{name}{params}-{str(dtype)[6:]}-c{i}")


@pytest.mark.parametrize("name,params,dtype,case", list(_cases()))
def test_matches_pytorch_formula(name, params, dtype, case):
    case = dict(case)
    s, t = make_inputs(dtype, masked_cols=case.pop("masked_cols", False), masked_row=case.pop("masked_row", False))
    lead = s.shape[:-1]
    if case.get("labels") == "labels":
        lab = torch.randint(0, 37, lead)
        lab[0, :2] = case.get("ignore_index", -100)
        lab[2, 3] = case.get("ignore_index", -100)
        case["labels"] = lab
    if case.get("row_weights") == "weights":
        w = torch.rand(lead) * 2
        w[1, 1] = 0.0
        case["row_weights"] = w
    if case.get("input_kind") == "log_probs":
        s = torch.log_softmax(s.double(), -1).to(dtype)
        t = torch.log_softmax(t.double(), -1).to(dtype)
        if dtype in SIG_BITS:  # 16-bit log-probs are only normalized to the format's precision: use them as stored
            pass
    out, gs, _, ref, gr, _ = run_both(name, params, s, t, **case)
    if ref.dim() == 0:
        assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert abs(out.item() - ref.item()) <= LOSS_TOL[dtype] * max(abs(ref.item()), 1e-30), (out.item(), ref.item())
    else:
        assert out.shape == ref.shape
        assert norm_rel(out, ref) <= max(LOSS_TOL[dtype], 2.0 ** -24), norm_rel(out, ref)
    assert gs.dtype == dtype and gs.shape == s.shape
    assert_grad_close(gs, gr, dtype, roundings=2 if ref.dim() else 1)
    if case.get("masked_cols") or torch.isneginf(s).any():
        assert bool((gs[torch.isneginf(s)] == 0).all()), "masked entries get an exact 0 gradient"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_teacher_gradient(name, dtype):
    params = PARAMS[name][0]
    s, t = make_inputs(dtype)
    out, gs, gt, ref, gr, gtr = run_both(name, params, s, t, teacher_grad=True, temperature=1.4)
    assert_grad_close(gs, gr, dtype)
    assert gt is not None and gt.dtype == dtype
    assert_grad_close(gt, gtr, dtype)


def test_return_per_token_and_valid_rows():
    s, t = make_inputs(torch.float32)
    lab = torch.randint(0, 37, s.shape[:-1])
    lab[0, 0] = -100
    loss, per = kd_torch.forward_kl(s, t, labels=lab, return_per_token=True)
    assert per.shape == s.shape[:-1] and per.dtype == torch.float32 and not per.requires_grad
    assert per[0, 0].item() == 0.0
    assert abs(loss.item() - per.sum().item() / 11) <= 1e-6 * loss.item()


def test_zero_valid_rows_give_zero_loss_and_gradient():
    s, t = make_inputs(torch.float32)
    s.requires_grad_()
    lab = torch.full(s.shape[:-1], -100)
    loss = kd_torch.reverse_kl(s, t, labels=lab)
    loss.backward()
    assert loss.item() == 0.0 and bool((s.grad == 0).all())


def test_canonical_endpoints_follow_registry():
    assert kd_torch.canonical_divergence("jsd", 0.0) == "forward_kl"
    assert kd_torch.canonical_divergence("jsd", beta=1.0) == "reverse_kl"
    assert kd_torch.canonical_divergence("jsd", 0.5) == "jsd"
    s, t = make_inputs(torch.float32)
    # Endpoint rules are exact: the same bits as the named divergence.
    assert kd_torch.jsd(s, t, 0.0).item() == kd_torch.forward_kl(s, t).item()
    assert kd_torch.jsd(s, t, 1.0).item() == kd_torch.reverse_kl(s, t).item()


def test_identical_inputs_give_exact_zero():
    s, _ = make_inputs(torch.float32)
    for d in kd_torch.divergences():
        assert kd_torch.divergence_loss(d.name, s, s.clone(), *PARAMS[d.name][0]).item() == 0.0, d.name


@pytest.mark.parametrize("isa", kd_torch.available_simd_isas())
def test_every_instruction_set_agrees(isa):
    s, t = make_inputs(torch.float32, shape=(5, 301))
    try:
        kd_torch.set_simd_isa(isa)
        assert kd_torch.simd_isa() == isa
        out, gs, _, ref, gr, _ = run_both("jsd", (0.3,), s, t, temperature=1.7)
    finally:
        kd_torch.set_simd_isa("best")
    assert abs(out.item() - ref.item()) <= 1e-5 * ref.item()
    assert norm_rel(gs, gr) <= 1e-5
