"""torch.compile traces kd's operators as single nodes (torch.library custom ops: fake kernels + autograd formulas):
fullgraph=True fails on any graph break. Forward and backward equal eager."""
import pytest
import torch

import kd_torch

pytestmark = pytest.mark.skipif(not kd_torch.USES_CUSTOM_OPS, reason="custom ops need torch >= 2.4")


def step(x, w, t, labels):
    logits = x @ w                                              # a student head
    kd = kd_torch.jsd(logits, t, 0.5, labels=labels, temperature=2.0)
    rkl = kd_torch.reverse_kl(logits, t, reduction="none").mean()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    return kd + 0.1 * rkl + 0.5 * ce


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fullgraph_forward_backward_matches_eager(backend):
    torch._dynamo.reset()
    x = torch.randn(2, 5, 16)
    w = torch.randn(16, 64)
    t = torch.randn(2, 5, 64)
    labels = torch.randint(0, 64, (2, 5))
    labels[0, 0] = -100
    we = w.clone().requires_grad_()
    ref = step(x, we, t, labels)
    ref.backward()
    wc = w.clone().requires_grad_()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    out = compiled(x, wc, t, labels)
    out.backward()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(wc.grad, we.grad, rtol=1e-4, atol=1e-6)


def test_no_graph_breaks_reported():
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    f = torch.compile(lambda s, t: kd_torch.forward_kl(s, t, temperature=1.5), backend="aot_eager")
    s = torch.randn(4, 32, requires_grad=True)
    f(s, torch.randn(4, 32)).backward()
    assert sum(counters["graph_break"].values()) == 0
    assert s.grad is not None
