# kd_torch.distributed.vocab_parallel_divergence_loss over torch.distributed (gloo, 2 and 3 processes on this machine):
# each process takes a vocabulary shard of unequal width (one boundary right before a confident row's top token); the
# loss must equal the unsharded kd_torch.divergence_loss on every process and the shard's gradient the matching columns
# of the unsharded gradient. Tolerance: the shards split each row's float32 sums (the SIMD kernels' careful form), so
# the bound of tests/test_simd_util.hpp: 8 2^-24 (max |z| / T + 1), relative to the largest entry.
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 3])
def test_gloo_matches_unsharded(world):
    import kd_torch
    cases = [(d.name, tuple(p.example for p in d.params)) for d in kd_torch.functional._REGISTRY]
    port = _free_port()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_run_all, args=(world, port, cases), nprocs=world, join=True)  # one process group, every divergence


def _run_all(rank, world, port, cases):
    import kd_torch
    from kd_torch.distributed import vocab_parallel_divergence_loss
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(7)
        V = 61
        zs = torch.randn(2, 3, V, generator=g) * 3
        zt = torch.randn(2, 3, V, generator=g) * 3
        zt[0, 1] = 0.1 * (torch.arange(V) % 7)
        zt[0, 1, 20] = 30.0
        labels = torch.tensor([[1, 2, -100], [4, 5, 6]])
        cuts = [0, 20] + [20 + (V - 20) * k // (world - 1) + k for k in range(1, world - 1)] + [V]
        c0, c1 = cuts[rank], cuts[rank + 1]
        eps = 8 * 2**-24 * (max(zs.abs().max().item(), zt.abs().max().item()) / 1.5 + 1)
        for name, params in cases:
            full = zs.clone().requires_grad_(True)
            ref = kd_torch.divergence_loss(name, full, zt, *params, labels=labels, temperature=1.5)
            (gref,) = torch.autograd.grad(ref, full)
            shard = zs[..., c0:c1].clone().requires_grad_(True)
            got = vocab_parallel_divergence_loss(name, shard, zt[..., c0:c1].contiguous(), *params, labels=labels,
                                                 temperature=1.5)
            (gs,) = torch.autograd.grad(got, shard)
            assert abs(got.item() - ref.item()) <= eps * (1 + abs(ref.item())), (name, got.item(), ref.item())
            assert (gs - gref[..., c0:c1]).abs().max().item() <= eps * gref.abs().max().item(), name
            same = got.detach().double().reshape(1).clone()
            dist.broadcast(same, 0)
            assert same.item() == got.item(), f"{name}: the loss differs between processes"
        # a value error on one shard is raised on every process
        bad = zs[..., c0:c1].clone()
        if rank == world - 1:
            bad[1, 2, 0] = float("nan")
        with pytest.raises(ValueError, match="student_logits"):
            vocab_parallel_divergence_loss("reverse_kl", bad, zt[..., c0:c1].contiguous())
    finally:
        dist.destroy_process_group()
