"""Errors: kd's argument and value errors arrive as Python exceptions carrying kd's message and naming the Python
argument (ValueError for values and shapes, TypeError for dtypes and types), raised before any result or gradient
exists."""
import pytest
import torch

import kd_torch
from kd_torch.trl import generalized_jsd_loss

S = lambda *shape: torch.randn(*shape)  # noqa: E731


def _raises(exc, match, fn, *args, **kw):
    with pytest.raises(exc, match=match) as e:
        fn(*args, **kw)
    return str(e.value)


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature(T):
    msg = _raises(ValueError, "temperature", kd_torch.forward_kl, S(2, 5), S(2, 5), temperature=T)
    assert "kd: invalid argument 'temperature'" in msg


@pytest.mark.parametrize("name,params,arg", [("jsd", (1.5,), "beta"), ("jsd", (-0.1,), "beta"),
                                             ("skew_kl", (1.0,), "alpha"), ("skew_reverse_kl", (-0.5,), "alpha"),
                                             ("alpha_beta", (2.0, 0.5), "alpha"), ("alpha_beta", (0.5, 1e-40), "beta")])
def test_parameter_ranges_come_from_the_registry(name, params, arg):
    msg = _raises(ValueError, arg, kd_torch.divergence_loss, name, S(2, 5), S(2, 5), *params)
    assert f"kd: invalid argument '{arg}'" in msg


def test_shapes():
    _raises(ValueError, "teacher_logits: shape", kd_torch.reverse_kl, S(2, 3, 5), S(3, 2, 5))
    msg = _raises(ValueError, "never pads", kd_torch.reverse_kl, S(2, 3, 5), S(2, 3, 8))
    assert "vocabularies" in msg
    _raises(ValueError, "student_logits", kd_torch.reverse_kl, torch.tensor(1.0), torch.tensor(1.0))
    _raises(ValueError, "labels: shape", kd_torch.reverse_kl, S(2, 3, 5), S(2, 3, 5), labels=torch.zeros(5,
                                                                                                         dtype=torch.long))
    _raises(ValueError, "row_weights", kd_torch.reverse_kl, S(2, 5), S(2, 5), row_weights=torch.tensor([1.0, -1.0]))


def test_non_finite_and_unnormalized_values_name_the_row():
    s, t = S(4, 6), S(4, 6)
    s[2, 3] = float("nan")
    msg = _raises(ValueError, "student_logits", kd_torch.forward_kl, s, t)
    assert "non-finite input" in msg and "row 2" in msg
    t2 = S(4, 6)
    t2[1, 0] = float("inf")
    assert "row 1" in _raises(ValueError, "teacher_logits", kd_torch.forward_kl, S(4, 6), t2)
    msg = _raises(ValueError, "student_log_probs", kd_torch.forward_kl, S(4, 6) * 3, S(4, 6), input_kind="log_probs")
    assert "not normalized" in msg
    # Support mismatch: reverse KL where the teacher gives probability 0 to a token the student predicts.
    t3 = S(4, 6)
    t3[0, 1] = float("-inf")
    assert "support mismatch" in _raises(ValueError, "teacher_logits", kd_torch.reverse_kl, S(4, 6), t3)


def test_nan_in_an_ignored_row_is_not_read():
    s, t = S(3, 6), S(3, 6)
    s[1] = float("nan")
    lab = torch.tensor([0, -100, 2])
    assert torch.isfinite(kd_torch.forward_kl(s, t, labels=lab))


def test_no_gradient_after_an_error():
    s = S(4, 6)
    s[3, 0] = float("nan")
    s.requires_grad_()
    with pytest.raises(ValueError):
        kd_torch.jsd(s, S(4, 6), 0.5).backward()
    assert s.grad is None


@pytest.mark.parametrize("kw,arg", [(dict(reduction="avg"), "reduction"), (dict(input_kind="probs"), "input_kind"),
                                    (dict(num_items_in_batch=0), "num_items_in_batch"),
                                    (dict(num_items_in_batch=-3.0), "num_items_in_batch"),
                                    (dict(num_items_in_batch=4, reduction="sum"), "num_items_in_batch")])
def test_option_values(kw, arg):
    _raises(ValueError, arg, kd_torch.forward_kl, S(2, 5), S(2, 5), **kw)


def test_dtypes_and_types():
    _raises(TypeError, "student_logits: dtype", kd_torch.forward_kl, torch.ones(2, 5, dtype=torch.long), S(2, 5))
    msg = _raises(TypeError, "teacher_logits: dtype", kd_torch.forward_kl, S(2, 5), S(2, 5).double())
    assert "cast" in msg
    _raises(TypeError, "labels: dtype", kd_torch.forward_kl, S(2, 5), S(2, 5), labels=torch.zeros(2))
    _raises(TypeError, "row_weights: dtype", kd_torch.forward_kl, S(2, 5), S(2, 5), row_weights=torch.ones(2).double())
    _raises(TypeError, "temperature", kd_torch.forward_kl, S(2, 5), S(2, 5), temperature="2")
    _raises(TypeError, "student_logits", kd_torch.forward_kl, [[1.0, 2.0]], S(1, 2))
    _raises(TypeError, "ignore_index", kd_torch.forward_kl, S(2, 5), S(2, 5), ignore_index=1.5)
    _raises(TypeError, "missing parameter", kd_torch.jsd, S(2, 5), S(2, 5))
    _raises(TypeError, "unexpected argument", kd_torch.jsd, S(2, 5), S(2, 5), beta=0.5, alpha=0.1)
    _raises(ValueError, "unknown divergence", kd_torch.divergence_loss, "kl", S(2, 5), S(2, 5))


def test_trl_dropin_errors():
    _raises(ValueError, "temperature", generalized_jsd_loss, S(2, 3, 5), S(2, 3, 5), temperature=0)
    _raises(ValueError, "beta", generalized_jsd_loss, S(2, 3, 5), S(2, 3, 5), beta=2)
    _raises(TypeError, "labels", generalized_jsd_loss, S(2, 3, 5), S(2, 3, 5), labels=[1, 2])


def test_module_errors_at_construction():
    _raises(ValueError, "beta", kd_torch.nn.JSDLoss, beta=3.0)
    _raises(ValueError, "temperature", kd_torch.nn.ReverseKLLoss, temperature=-2.0)
    _raises(ValueError, "reduction", kd_torch.nn.ForwardKLLoss, reduction="elementwise")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_raise_until_kd_has_a_cuda_backend():
    s = S(2, 5).cuda()
    _raises(NotImplementedError, "no backend", kd_torch.forward_kl, s, s.clone())


def test_cuda_seam_is_reported():
    assert kd_torch.cuda_backend_available() is False
