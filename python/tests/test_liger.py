"""The Liger-style drop-ins (kd_torch.liger) against their definitions written with PyTorch ops (Liger-Kernel needs a
GPU and Triton, so it is not imported): values for every reduction, kd's log-softmax gradient and Liger's free-variable
gradient, and that both give the same gradient at the logits. float32: 1e-5 norm-relative (see test_formulas.py)."""
import pytest
import torch
import torch.nn.functional as F

from conftest import norm_rel
from kd_torch.liger import LigerJSD, LigerKLDIVLoss, LigerTVDLoss

N, V = 12, 40
pytestmark = pytest.mark.filterwarnings("ignore:reduction. .mean. divides")


def liger_jsd_formula(lq, lp, beta):
    """Per-row generalized JSD with q = exp(lq), p = exp(lp) as given (not renormalized): Liger's definition."""
    q, p = lq.exp(), lp.exp()
    if beta == 0:
        return (p * (lp - lq)).sum(-1)
    if beta == 1:
        return (q * (lq - lp)).sum(-1)
    lm = torch.log(beta * p + (1 - beta) * q)
    return (beta * p * (lp - lm) + (1 - beta) * q * (lq - lm)).sum(-1)


def _logprobs():
    zs = torch.randn(N, V, dtype=torch.float64) * 2
    zt = torch.randn(N, V, dtype=torch.float64) * 2
    return zs, torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("gradient", ["log_softmax", "free"])
def test_jsd(beta, with_labels, gradient):
    zs, lq, lp = _logprobs()
    labels = None
    valid = torch.ones(N, dtype=torch.bool)
    if with_labels:
        labels = torch.randint(0, V, (N,))
        labels[[0, 5, 6]] = -100
        valid = labels != -100
    x = lq.float().requires_grad_()
    loss = LigerJSD(beta=beta, gradient=gradient)(x, lp.float(), labels)
    loss.backward()
    # Reference: free variables (Liger) or through the log-softmax (kd).
    xr = lq.clone().requires_grad_()
    arg = xr if gradient == "free" else torch.log_softmax(xr, -1)
    ref = liger_jsd_formula(arg, lp, beta)[valid].sum() / valid.sum()
    ref.backward()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) <= 1e-5 * ref.item()
    assert norm_rel(x.grad, xr.grad) <= 1e-5, norm_rel(x.grad, xr.grad)
    if gradient == "free" and beta == 0:
        assert norm_rel(x.grad, -lp.exp() * valid[:, None] / valid.sum()) <= 1e-5  # -p / n


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_both_gradients_agree_at_the_logits(beta):
    zs, _, lp = _logprobs()
    grads = []
    for gradient in ("log_softmax", "free"):
        z = zs.float().requires_grad_()
        LigerJSD(beta=beta, gradient=gradient)(torch.log_softmax(z, -1), lp.float()).backward()
        grads.append(z.grad)
    assert norm_rel(grads[1], grads[0]) <= 1e-5


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("gradient", ["log_softmax", "free"])
def test_kl_div_matches_nn_kldivloss(reduction, log_target, gradient):
    _, lq, lp = _logprobs()
    target = lp.float() if log_target else lp.exp().float()
    x = lq.float().requires_grad_()
    out = LigerKLDIVLoss(reduction=reduction, log_target=log_target, gradient=gradient)(x, target)
    xr = lq.float().clone().requires_grad_()
    ref = torch.nn.KLDivLoss(reduction=reduction, log_target=log_target)(xr, target)
    assert out.shape == ref.shape
    assert norm_rel(out, ref) <= 1e-5
    (out.sum() if out.dim() else out).backward()
    (ref.sum() if ref.dim() else ref).backward()
    if gradient == "free" or reduction == "none":
        assert norm_rel(x.grad, xr.grad) <= 1e-5      # nn.KLDivLoss's gradient is the free-variable one: -p / n
    else:
        # kd's: through the log-softmax, (q - p) / n; the same once propagated to logits.
        xs = lq.float().clone().requires_grad_()
        F.kl_div(torch.log_softmax(xs, -1), target, reduction=reduction, log_target=log_target).backward()
        assert norm_rel(x.grad, xs.grad) <= 1e-5


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_tvd(reduction, with_labels):
    _, lq, lp = _logprobs()
    p, q = lq.exp().float(), lp.exp().float()
    labels, valid = None, torch.ones(N, dtype=torch.bool)
    if with_labels:
        labels = torch.randint(0, V, (N,))
        labels[[1, 2]] = -100
        valid = labels != -100
    x = p.clone().requires_grad_()
    out = LigerTVDLoss(reduction=reduction)(x, q, labels)
    per = 0.5 * (p.double() - q.double()).abs() * valid[:, None]
    n = valid.sum().item()
    ref = {"batchmean": per.sum() / n, "sum": per.sum(), "mean": per.sum() / (n * V), "none": per}[reduction]
    assert norm_rel(out, ref) <= 1e-5
    (out.sum() if out.dim() else out).backward()
    scale = {"batchmean": 1 / n, "sum": 1.0, "mean": 1 / (n * V), "none": 1.0}[reduction]
    want = 0.5 * torch.sign(p - q) * valid[:, None] * scale
    assert norm_rel(x.grad, want) <= 1e-6


def test_tvd_gradient_at_ties_is_zero():
    p = torch.tensor([[0.5, 0.25, 0.25]], requires_grad=True)
    q = torch.tensor([[0.5, 0.5, 0.0]])
    LigerTVDLoss()(p, q).backward()
    assert p.grad[0, 0].item() == 0.0  # Liger returns -1/2 there


def test_errors():
    _, lq, lp = _logprobs()
    with pytest.raises(ValueError, match="not normalized"):
        LigerJSD()(lq.float() + 1.0, lp.float())
    with pytest.raises(ValueError, match="never pads"):
        LigerJSD()(lq.float(), lp.float()[:, :30])
    with pytest.raises(ValueError, match="beta"):
        LigerJSD(beta=1.5)
    with pytest.raises(ValueError, match="reduction"):
        LigerKLDIVLoss(reduction="elementwise")
    with pytest.raises(ValueError, match="gradient"):
        LigerJSD(gradient="liger")
