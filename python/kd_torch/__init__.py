"""kd_torch: kd's fused knowledge-distillation losses for PyTorch (docs/python.md).

    import kd_torch
    loss = kd_torch.reverse_kl(student_logits, teacher_logits, temperature=2.0, labels=labels)   # token mean, nats
    loss.backward()    # the gradient kd computed in the same fused pass

Every divergence of kd's C++ registry is a function here (kd_torch.divergences() lists them), with nn.Module
wrappers in kd_torch.nn; kd_torch.trl.generalized_jsd_loss is TRL's loss as a drop-in; kd_torch.liger holds drop-ins
for Liger-Kernel's JSD / KL / TVD modules; kd_torch.topk_divergence_loss takes a teacher cached as top-k ids and
log-probs; kd_torch.minillm the MiniLLM policy-gradient loss and on-policy helpers.
"""

import torch  # noqa: F401  (first: loads the torch libraries _C links against, not a system libtorch)

from . import _C  # noqa: E402
from ._ops import TORCH_VERSION, USES_CUSTOM_OPS
from .functional import *  # noqa: F401,F403
from .functional import FUNCTIONS, canonical_divergence, divergence_info, divergence_loss, divergences, topk_divergence_loss

__version__ = _C.version


def simd_isa():
    """The instruction set kd's CPU kernels run with: "avx512", "avx2", "sse4.2" or "sse2" (chosen at run time)."""
    return _C.simd_isa()


def set_simd_isa(name):
    """Force an instruction set ("best" restores the automatic choice); ValueError when the CPU lacks it."""
    _C.set_simd_isa(name)


def available_simd_isas():
    """The instruction sets this CPU and build support."""
    return list(_C.available_simd_isas())


def cuda_backend_available():
    """True when the extension was built with kd's CUDA backend (none exists yet: CUDA tensors raise)."""
    return bool(_C.with_cuda)


from . import distributed, fused, liger, minillm, nn, trl  # noqa: E402,F401
