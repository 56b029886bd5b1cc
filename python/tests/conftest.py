# Shared helpers of kd_torch's tests (run by `bash scripts/test.sh` through scripts/test-python.sh).
import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def norm_rel(a, b):
    """max |a - b| / max |b| in float64: the error relative to the largest reference entry (entries much smaller than
    the largest carry absolute error of the largest's size in any float sum, so elementwise relative error is not
    what a float format bounds)."""
    a, b = a.detach().double(), b.detach().double()
    den = b.abs().max().item() if b.numel() else 0.0
    num = (a - b).abs().max().item() if b.numel() else 0.0
    return num / den if den > 0 else num


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
