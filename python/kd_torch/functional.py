"""kd's losses as functions of PyTorch tensors, one per divergence of kd's C++ registry.

Conventions are kd's (docs/conventions.md, docs/python.md): p is the teacher, q the student, both softmax(x / T) of
their rows; forward_kl = KL(p || q), reverse_kl = KL(q || p); nats; no T^2 unless t2_scale=True; reduction "mean" is the
token mean over valid rows (not PyTorch's elementwise mean). The list of functions is derived from the registry
(kd_torch.divergences()), never written by hand.
"""

import inspect
import math
import numbers
from collections import namedtuple

import torch

from . import _C, _ops

#: One registered divergence: name, CLI name, formula, citation, kind (the C++ enumerator), parameters.
DivergenceInfo = namedtuple("DivergenceInfo", "name cli_name formula citation kind params x_is_student")
#: One parameter of a divergence: name, range [lo, hi] (open ends flagged), smallest nonzero magnitude, range text,
#: a typical value.
ParamInfo = namedtuple("ParamInfo", "name lo hi lo_open hi_open min_nonzero range_text example")

_REGISTRY = tuple(
    DivergenceInfo(name, cli, formula, citation, kind, tuple(ParamInfo(*p) for p in params), xs)
    for (name, cli, formula, citation, kind, params, xs) in _C.registry())
_BY_NAME = {}
for _d in _REGISTRY:
    _BY_NAME[_d.name] = _d
    _BY_NAME[_d.cli_name] = _d


def divergences():
    """Every divergence registered in kd's C++ registry (include/kd/divergences/registry.hpp), in registry order."""
    return _REGISTRY


def divergence_info(name):
    """The registry entry of a divergence by API name ("jsd") or CLI name ("rkl")."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"divergence: unknown divergence {name!r}; registered: "
                         f"{', '.join(d.name for d in _REGISTRY)}") from None


REDUCTIONS = ("mean", "sum", "batchmean", "none")
INPUT_KINDS = ("logits", "log_probs")
_RED_CODE = {"none": 0, "sum": 1, "mean": 2, "normalizer": 3}


def _check_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")


def _check_number(v, name):
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name}: expected a number or a one-element tensor, got shape {tuple(v.shape)}")
        return float(v.item())
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    return float(v)


def _check_choice(v, name, choices):
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(repr(c) for c in choices)}, got {v!r}")
    return v


def _common_args(divergence, student_logits, teacher_logits, params, named_params, temperature, reduction):
    """The checks every loss over student / teacher rows starts with: (registry entry, parameter values, T)."""
    info = divergence_info(divergence)
    _check_tensor(student_logits, "student_logits")
    _check_tensor(teacher_logits, "teacher_logits")
    values = _collect_params(info, params, named_params)
    temperature = _check_number(temperature, "temperature")
    _check_choice(reduction, "reduction", REDUCTIONS)
    return info, values, temperature


def _reduction(reduction, num_items_in_batch, batch_size):
    """(kd's reduction name, normalizer) for a reduction string and num_items_in_batch; batch_size: input.size(0).
    PyTorch's batchmean (F.kl_div, TRL without labels) is sum / input.size(0), the batch size of a [B, T, V] input."""
    if num_items_in_batch is not None:
        if reduction in ("sum", "none"):
            raise ValueError(f"num_items_in_batch: replaces the denominator of 'mean' / 'batchmean'; "
                             f"it cannot be combined with reduction={reduction!r}")
        return "normalizer", _check_number(num_items_in_batch, "num_items_in_batch")
    if reduction == "batchmean":
        return "normalizer", float(max(batch_size, 1))
    return reduction, 0.0


def _row_args(labels, row_weights, ignore_index, reduction, num_items_in_batch, student_logits):
    """Checks the per-row arguments; returns (kd's reduction name, normalizer)."""
    if labels is not None:
        _check_tensor(labels, "labels")
    if row_weights is not None:
        _check_tensor(row_weights, "row_weights")
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    return _reduction(reduction, num_items_in_batch, student_logits.shape[0] if student_logits.dim() >= 1 else 1)


def _rows(x):
    return x.numel() // x.shape[-1] if x.dim() >= 1 and x.shape[-1] > 0 else 0


def divergence_loss(divergence, student_logits, teacher_logits, *params, temperature=1.0, t2_scale=False,
                    labels=None, ignore_index=-100, row_weights=None, reduction="mean", num_items_in_batch=None,
                    input_kind="logits", teacher_input_kind=None, return_per_token=False, **named_params):
    """kd's fused divergence loss between student and teacher rows [..., V], with autograd.

    divergence          a registered name (kd_torch.divergences()): "forward_kl", "reverse_kl", "jsd", ...
    params              the divergence's parameters, positionally or by name (jsd: beta; skew_kl: alpha; ...)
    temperature         T > 0 for both sides: q = softmax(student / T), p = softmax(teacher / T)
    t2_scale            multiply loss and gradient by T^2 (Hinton et al.); off by default, as in TRL and Liger
    labels              optional [...] int64/int32: rows whose label == ignore_index count for nothing
    row_weights         optional [...] float32 >= 0: weighted rows (weight 0 ignores the row)
    reduction           "mean": sum_r w_r l_r / sum_r w_r over valid rows (the token mean; 0 valid rows give 0);
                        "sum"; "batchmean": sum / student_logits.size(0) (PyTorch's: B for [B, T, V]); "none": per-token losses [...]
    num_items_in_batch  a global normalizer N: the loss is sum_r w_r l_r / N (gradient accumulation); replaces the
                        denominator of "mean" / "batchmean" (with "sum" or "none" it is an error)
    input_kind          "logits" or "log_probs" (a normalized log-distribution, e.g. log_softmax output; checked at T=1)
    teacher_input_kind  the teacher's kind when it differs from the student's
    return_per_token    also return the per-token losses [...] (float32, no gradient): (loss, per_token)

    Returns the loss: a 0-dim float32 tensor (float64 for float64 inputs), or the per-token float32 tensor for "none".
    Gradients flow to the student (and to the teacher when it requires grad), computed in the same fused pass.
    Errors: ValueError (values, shapes), TypeError (dtypes, types), NotImplementedError (devices other than the CPU),
    each naming the argument, raised before any result is returned.
    """
    info, values, temperature = _common_args(divergence, student_logits, teacher_logits, params, named_params,
                                             temperature, reduction)
    _check_choice(input_kind, "input_kind", INPUT_KINDS)
    t_kind = input_kind if teacher_input_kind is None else _check_choice(teacher_input_kind, "teacher_input_kind",
                                                                          INPUT_KINDS)
    red, normalizer = _row_args(labels, row_weights, ignore_index, reduction, num_items_in_batch, student_logits)
    loss, per_row, _ = _ops.divergence(
        student_logits, teacher_logits, labels, row_weights, info.kind, values[0], values[1], temperature,
        bool(t2_scale), _RED_CODE[red], normalizer, int(ignore_index), input_kind == "log_probs",
        t_kind == "log_probs")
    if reduction == "none":
        return (per_row, per_row.detach()) if return_per_token else per_row
    return (loss, per_row.detach()) if return_per_token else loss


TOPK_MODES = ("tail_bucket", "renormalize", "unnormalized_forward_kl")


def topk_divergence_loss(divergence, student_logits, teacher_topk_ids, teacher_topk_log_probs, *params,
                         mode="tail_bucket", temperature=1.0, t2_scale=False, labels=None, ignore_index=-100,
                         row_weights=None, reduction="mean", num_items_in_batch=None, input_kind="logits",
                         return_per_token=False, **named_params):
    """kd's fused divergence against a sparse teacher given as its top-k: token ids and log-probs per position.

    student_logits          [..., V] float32 / bfloat16 / float16 / float64
    teacher_topk_ids        [..., k] int64 / int32, distinct within a row, each in [0, V) (rows that do not count:
                            ignored labels or weight 0, may hold padding)
    teacher_topk_log_probs  [..., k] the teacher's log-probabilities of those tokens, normalized over the full
                            vocabulary at the distillation temperature (used as given: `temperature` applies to the
                            student only); computed in float32 (float64 with a float64 student)
    mode                    "tail_bucket": both sides as k + 1 entries, the support plus one bucket with the rest of
                            the mass (q's from a log-sum-exp over the rest, p's as log(1 - sum p)); "renormalize": both
                            sides renormalized over the support (the teacher's values may be any scores);
                            "unnormalized_forward_kl": sum over the support of p (log p - log q), q over the full
                            vocabulary (forward_kl only; it can be negative)
    Other arguments as kd_torch.divergence_loss. Gradients flow to the student only (kd/topk_teacher.hpp).
    """
    _check_tensor(teacher_topk_ids, "teacher_topk_ids")
    _check_tensor(teacher_topk_log_probs, "teacher_topk_log_probs")
    info, values, temperature = _common_args(divergence, student_logits, teacher_topk_log_probs, params, named_params,
                                             temperature, reduction)
    _check_choice(mode, "mode", TOPK_MODES)
    _check_choice(input_kind, "input_kind", INPUT_KINDS)
    if mode == "unnormalized_forward_kl" and _C.canonical_name(info.kind, values[0], values[1]) != "forward_kl":
        raise ValueError(f"mode: 'unnormalized_forward_kl' is defined for forward_kl only, got {info.name!r} "
                         f"(use 'tail_bucket' or 'renormalize')")
    red, normalizer = _row_args(labels, row_weights, ignore_index, reduction, num_items_in_batch, student_logits)
    loss, per_row, _ = _ops.topk_divergence(
        student_logits, teacher_topk_ids, teacher_topk_log_probs, labels, row_weights, info.kind, values[0],
        values[1], TOPK_MODES.index(mode), temperature, bool(t2_scale), _RED_CODE[red], normalizer,
        int(ignore_index), input_kind == "log_probs")
    if reduction == "none":
        return (per_row, per_row.detach()) if return_per_token else per_row
    return (loss, per_row.detach()) if return_per_token else loss


def _collect_params(info, params, named):
    names = [p.name for p in info.params]
    if len(params) > len(names):
        raise TypeError(f"{info.name}: takes {len(names)} parameter(s) ({', '.join(names) or 'none'}), "
                        f"got {len(params)} positional")
    values = dict(zip(names, params))
    for k, v in named.items():
        if k not in names:
            raise TypeError(f"{info.name}: unexpected argument {k!r} (parameters: {', '.join(names) or 'none'})")
        if k in values:
            raise TypeError(f"{info.name}: parameter {k!r} given twice")
        values[k] = v
    missing = [n for n in names if n not in values]
    if missing:
        raise TypeError(f"{info.name}: missing parameter(s) {', '.join(missing)} "
                        f"(e.g. {', '.join(f'{p.name}={p.example:g}' for p in info.params)})")
    out = [0.0, 0.0]
    for i, n in enumerate(names):
        out[i] = _check_number(values[n], n)
        if math.isnan(out[i]):
            raise ValueError(f"{n}: must not be NaN")
    return out


def canonical_divergence(divergence, *params, **named):
    """The divergence kd actually computes after its endpoint rules, e.g. jsd(beta=0) -> "forward_kl"."""
    info = divergence_info(divergence)
    v = _collect_params(info, params, named)
    return _C.canonical_name(info.kind, v[0], v[1])


def _make_function(info):
    pnames = [p.name for p in info.params]

    def fn(student_logits, teacher_logits, *params, **kwargs):
        return divergence_loss(info.name, student_logits, teacher_logits, *params, **kwargs)

    P = inspect.Parameter
    sig = [P("student_logits", P.POSITIONAL_OR_KEYWORD), P("teacher_logits", P.POSITIONAL_OR_KEYWORD)]
    sig += [P(n, P.POSITIONAL_OR_KEYWORD) for n in pnames]
    for name, default in (("temperature", 1.0), ("t2_scale", False), ("labels", None), ("ignore_index", -100),
                          ("row_weights", None), ("reduction", "mean"), ("num_items_in_batch", None),
                          ("input_kind", "logits"), ("teacher_input_kind", None), ("return_per_token", False)):
        sig.append(P(name, P.KEYWORD_ONLY, default=default))
    fn.__signature__ = inspect.Signature(sig)
    fn.__name__ = fn.__qualname__ = info.name
    ranges = "".join(f"\n    {p.name}: {p.range_text} (e.g. {p.example:g})" for p in info.params)
    fn.__doc__ = (f"kd's {info.name}: {info.formula} ({info.citation}); p = teacher, q = student, nats.{ranges}\n\n"
                  f"Options as kd_torch.divergence_loss.")
    return fn


FUNCTIONS = {d.name: _make_function(d) for d in _REGISTRY}
globals().update(FUNCTIONS)
__all__ = ["divergence_loss", "topk_divergence_loss", "divergences", "divergence_info", "canonical_divergence"] + list(FUNCTIONS)
