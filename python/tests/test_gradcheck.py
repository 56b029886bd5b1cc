"""torch.autograd.gradcheck (float64: kd's double-precision reference backend) for every registered divergence and
parameter set, with temperature, labels + ignore_index, row weights, scalar reductions and num_items_in_batch, through
both the student and the teacher. Per-token ("none") values are float32-accurate, so they are checked against the
formulas in test_formulas.py instead of by finite differences."""
import pytest
import torch

import kd_torch
from refs import PARAMS

NAMES = [d.name for d in kd_torch.divergences()]


def _cases():
    for name in NAMES:
        for params in PARAMS[name]:
            yield pytest.param(name, params, id=f"{name}{params}")


@pytest.mark.parametrize("name,params", list(_cases()))
@pytest.mark.parametrize("opts", [dict(), dict(temperature=1.7, reduction="sum"), dict(reduction="batchmean"),
                                  dict(num_items_in_batch=5, t2_scale=True, temperature=0.8)],
                         ids=["mean", "sum-T", "batchmean", "items-T2"])
def test_gradcheck(name, params, opts):
    s = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor([[1, -100, 2], [0, 3, -100]])
    w = torch.tensor([[1.0, 0.5, 2.0], [0.0, 1.5, 1.0]])

    def f(s, t):
        return kd_torch.divergence_loss(name, s, t, *params, labels=lab, row_weights=w, **opts)

    assert torch.autograd.gradcheck(f, (s, t), eps=1e-6, atol=1e-8, rtol=1e-6)
