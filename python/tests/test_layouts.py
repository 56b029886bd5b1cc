"""Non-contiguous inputs: strided in the leading dimensions (read in place, one kd call per group when the leading
dimensions do not collapse to one row stride), transposed, sliced vocabularies and expanded teachers (copied), against
the same call on contiguous copies."""
import pytest
import torch

import kd_torch
from conftest import norm_rel


def _grad(fn, s, t, **kw):
    s = s.detach().requires_grad_()
    out = fn(s, t, **kw)
    (out.sum() if out.dim() else out).backward()
    return out.detach(), s.grad


def _layouts():
    base_s = torch.randn(3, 6, 41)
    base_t = torch.randn(3, 6, 41)
    yield "shifted", base_s[:, :-1, :], base_t[:, 1:, :]                        # [B, T-1, V] of [B, T, V]
    yield "every-other-row", base_s[:, ::2, :], base_t[:, ::2, :]
    yield "transposed", base_s.transpose(0, 1), base_t.transpose(0, 1)
    yield "vocab-slice", base_s[..., :37], base_t[..., 2:39]                     # row stride 41, V = 37
    yield "last-dim-strided", base_s[..., ::2], base_t[..., ::2]                 # copied
    yield "expanded-teacher", base_s, base_t[:1].expand(3, 6, 41)                # copied
    big = torch.randn(2, 4, 5, 41)
    yield "4d-permuted", big.permute(1, 0, 2, 3), torch.randn(2, 4, 5, 41).permute(1, 0, 2, 3)


@pytest.mark.parametrize("case", list(_layouts()), ids=lambda c: c[0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_strided_equals_contiguous(case, reduction, with_labels):
    _, s, t = case
    lab = None
    if with_labels:
        lab = torch.randint(0, 5, s.shape[:-1])
        lab.view(-1)[::3] = -100
    kw = dict(labels=lab, reduction=reduction, temperature=1.3)
    a, ga = _grad(lambda s, t, **k: kd_torch.jsd(s, t, 0.4, **k), s, t, **kw)
    b, gb = _grad(lambda s, t, **k: kd_torch.jsd(s, t, 0.4, **k), s.contiguous(), t.contiguous(), **kw)
    # The same rows in the same order: identical except for the mean over several groups (one extra rescaling).
    assert norm_rel(a, b) <= 1e-6 and norm_rel(ga, gb) <= 1e-6
    assert ga.shape == s.shape


def test_trl_dropin_on_shifted_logits():
    from kd_torch.trl import generalized_jsd_loss
    s, t = torch.randn(2, 9, 33), torch.randn(2, 9, 33)
    lab = torch.randint(0, 33, (2, 9))
    a, ga = _grad(generalized_jsd_loss, s[:, :-1], t[:, :-1], labels=lab[:, 1:])
    b, gb = _grad(generalized_jsd_loss, s[:, :-1].contiguous(), t[:, :-1].contiguous(), labels=lab[:, 1:].contiguous())
    assert a.item() == b.item() and torch.equal(ga, gb)


def test_inputs_are_not_modified():
    s, t = torch.randn(4, 17), torch.randn(4, 17)
    s0, t0 = s.clone(), t.clone()
    sg = s.requires_grad_()
    kd_torch.reverse_kl(sg, t).backward()
    assert torch.equal(s.detach(), s0) and torch.equal(t, t0)
