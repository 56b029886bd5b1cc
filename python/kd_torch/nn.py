"""torch.nn.Module wrappers of kd's losses, one class per registered divergence (derived from the registry).

    crit = kd_torch.nn.JSDLoss(beta=0.5, temperature=2.0)          # or kd_torch.nn.DivergenceLoss("jsd", beta=0.5, ...)
    loss = crit(student_logits, teacher_logits, labels=labels)     # per call: labels, row_weights, num_items_in_batch

Construction takes the divergence's parameters and the options of kd_torch.divergence_loss (temperature, t2_scale,
ignore_index, reduction, input_kind, teacher_input_kind); forward takes the tensors and the per-batch arguments.
"""

import torch

from .functional import _REGISTRY, divergence_info, divergence_loss

_OPTIONS = ("temperature", "t2_scale", "ignore_index", "reduction", "input_kind", "teacher_input_kind")


class DivergenceLoss(torch.nn.Module):
    """Any registered divergence by name: DivergenceLoss("skew_kl", alpha=0.1, temperature=2.0)."""

    def __init__(self, divergence, *params, temperature=1.0, t2_scale=False, ignore_index=-100, reduction="mean",
                 input_kind="logits", teacher_input_kind=None, **named_params):
        super().__init__()
        self.info = divergence_info(divergence)
        self.params = params
        self.named_params = dict(named_params)
        self.temperature = temperature
        self.t2_scale = t2_scale
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.input_kind = input_kind
        self.teacher_input_kind = teacher_input_kind
        # Fail at construction, not at the first batch: a 1-row probe through kd's own argument checks.
        probe = torch.zeros(1, 2)
        divergence_loss(self.info.name, probe, probe, *params, temperature=temperature, t2_scale=t2_scale,
                        ignore_index=ignore_index, reduction=reduction, input_kind="logits", **named_params)
        if input_kind not in ("logits", "log_probs"):
            raise ValueError(f"input_kind: must be 'logits' or 'log_probs', got {input_kind!r}")

    def forward(self, student_logits, teacher_logits, labels=None, row_weights=None, num_items_in_batch=None,
                return_per_token=False):
        return divergence_loss(self.info.name, student_logits, teacher_logits, *self.params,
                               temperature=self.temperature, t2_scale=self.t2_scale, labels=labels,
                               ignore_index=self.ignore_index, row_weights=row_weights, reduction=self.reduction,
                               num_items_in_batch=num_items_in_batch, input_kind=self.input_kind,
                               teacher_input_kind=self.teacher_input_kind, return_per_token=return_per_token,
                               **self.named_params)

    def extra_repr(self):
        ps = [repr(p) for p in self.params] + [f"{k}={v!r}" for k, v in self.named_params.items()]
        return ", ".join([repr(self.info.name)] + ps + [f"{k}={getattr(self, k)!r}" for k in _OPTIONS])


def class_name(name):
    """Registry name -> class name: "reverse_kl" -> "ReverseKLLoss" (consonant-only parts are acronyms)."""
    parts = []
    for w in name.split("_"):
        parts.append(w.upper() if not any(c in "aeiou" for c in w) else w.capitalize())
    return "".join(parts) + "Loss"


def _make_class(info):
    def __init__(self, *params, **kwargs):
        DivergenceLoss.__init__(self, info.name, *params, **kwargs)

    doc = (f"kd's {info.name}: {info.formula} ({info.citation}); parameters: "
           f"{', '.join(p.name for p in info.params) or 'none'}. Options as kd_torch.nn.DivergenceLoss.")
    return type(class_name(info.name), (DivergenceLoss,), {"__init__": __init__, "__doc__": doc,
                                                           "__module__": __name__})


CLASSES = {d.name: _make_class(d) for d in _REGISTRY}
globals().update({c.__name__: c for c in CLASSES.values()})
__all__ = ["DivergenceLoss", "class_name"] + [c.__name__ for c in CLASSES.values()]
