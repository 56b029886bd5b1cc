"""How the autograd node behaves: grad_output scaling (in place), retain_graph, no_grad, the teacher side, both
registration paths (torch.library custom op and plain autograd.Function)."""
import os
import subprocess
import sys

import pytest
import torch

import kd_torch


def _base(s, t, **kw):
    s = s.detach().clone().requires_grad_()
    kd_torch.reverse_kl(s, t, temperature=1.5, **kw).backward()
    return s.grad


@pytest.mark.parametrize("factor", [0.5, 2.0, -1.0, 0.0])
def test_grad_output_scales_the_saved_gradient(factor):
    s, t = torch.randn(6, 50), torch.randn(6, 50)
    g = _base(s, t)
    sk = s.clone().requires_grad_()
    (factor * kd_torch.reverse_kl(sk, t, temperature=1.5)).backward()
    assert torch.equal(sk.grad, g * factor)


def test_loss_combined_with_other_terms():
    s, t = torch.randn(6, 50), torch.randn(6, 50)
    sk = s.clone().requires_grad_()
    ce = torch.nn.functional.cross_entropy(sk, torch.arange(6))
    (0.5 * ce + 0.5 * kd_torch.reverse_kl(sk, t, temperature=1.5)).backward()
    sr = s.clone().requires_grad_()
    (0.5 * torch.nn.functional.cross_entropy(sr, torch.arange(6))).backward()
    assert torch.allclose(sk.grad, sr.grad + 0.5 * _base(s, t), rtol=0, atol=1e-7)


def test_retain_graph_with_unit_grad_output_accumulates():
    s, t = torch.randn(6, 50).requires_grad_(), torch.randn(6, 50)
    loss = kd_torch.forward_kl(s, t)
    loss.backward(retain_graph=True)
    g1 = s.grad.clone()
    loss.backward()
    assert torch.allclose(s.grad, 2 * g1)


def test_second_backward_after_in_place_scaling_raises():
    s, t = torch.randn(6, 50).requires_grad_(), torch.randn(6, 50)
    loss = 3.0 * kd_torch.forward_kl(s, t)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace|in-place|modified"):
        loss.backward()


def test_no_grad_and_detached_inputs():
    s, t = torch.randn(6, 50).requires_grad_(), torch.randn(6, 50)
    with torch.no_grad():
        loss = kd_torch.jsd(s, t, 0.5)
    assert loss.grad_fn is None and not loss.requires_grad
    assert kd_torch.jsd(s.detach(), t, 0.5).grad_fn is None


def test_non_leaf_student_gets_the_gradient():
    x = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(8, 50)
    t = torch.randn(6, 50)
    kd_torch.forward_kl(x @ w, t).backward()
    xr = x.detach().clone().requires_grad_()
    s = xr @ w
    lq, lp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    (lp.exp() * (lp - lq)).sum(-1).mean().backward()
    assert torch.allclose(x.grad, xr.grad, rtol=1e-5, atol=1e-6)


def test_teacher_only_gradient():
    s, t = torch.randn(6, 50), torch.randn(6, 50).requires_grad_()
    kd_torch.forward_kl(s, t).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_per_token_backward_with_per_row_weights():
    s, t = torch.randn(2, 3, 20).requires_grad_(), torch.randn(2, 3, 20)
    per = kd_torch.reverse_kl(s, t, reduction="none")
    w = torch.rand(2, 3)
    (per * w).sum().backward()
    sr = s.detach().clone().requires_grad_()
    for i in range(2):
        for j in range(3):
            (w[i, j] * kd_torch.reverse_kl(sr[i, j:j + 1], t[i, j:j + 1], reduction="sum")).backward()
    assert torch.allclose(s.grad, sr.grad, rtol=1e-6, atol=1e-8)


def test_modules():
    s, t = torch.randn(2, 3, 20), torch.randn(2, 3, 20)
    crit = kd_torch.nn.JSDLoss(beta=0.3, temperature=2.0)
    assert "jsd" in repr(crit)
    assert crit(s, t).item() == kd_torch.jsd(s, t, 0.3, temperature=2.0).item()
    crit = kd_torch.nn.DivergenceLoss("alpha_beta", alpha=0.5, beta=0.4, reduction="sum")
    assert crit(s, t).item() == kd_torch.alpha_beta(s, t, 0.5, 0.4, reduction="sum").item()
    for d in kd_torch.divergences():
        cls = getattr(kd_torch.nn, kd_torch.nn.class_name(d.name))
        assert issubclass(cls, torch.nn.Module)


@pytest.mark.skipif(os.environ.get("KD_TORCH_NO_CUSTOM_OP") == "1", reason="already the Function path")
def test_autograd_function_path_in_a_subprocess():
    """The same formula and autograd tests with the plain autograd.Function registration (torch < 2.4's path)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, KD_TORCH_NO_CUSTOM_OP="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(here, "test_autograd.py"), os.path.join(here, "test_gradcheck.py"),
                        os.path.join(here, "test_formulas.py"), "-k", "not every_instruction_set and (c0 or c5 or "
                        "gradcheck or grad_output or retain or teacher or per_token)"],
                       env=env, cwd=here, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "passed" in r.stdout


def test_uses_custom_ops_on_new_torch():
    if kd_torch.TORCH_VERSION >= (2, 4) and os.environ.get("KD_TORCH_NO_CUSTOM_OP") != "1":
        assert kd_torch.USES_CUSTOM_OPS


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_the_gradient_reaching_the_leaf_is_kds_buffer(factor):
    """No copy between kd's fused pass and the student's .grad: kd allocates large gradient buffers 2 MiB-aligned
    (huge pages) and torch's allocator does not, so the alignment identifies the buffer; with grad_output != 1 it is
    scaled in place, not copied."""
    if os.environ.get("KD_TORCH_HUGEPAGES") == "0":
        pytest.skip("huge-page gradient buffers disabled")
    s = torch.randn(1024, 4096, requires_grad=True)  # 16 MiB
    (factor * kd_torch.forward_kl(s, torch.randn(1024, 4096))).backward()
    assert s.grad.data_ptr() % (2 << 20) == 0
