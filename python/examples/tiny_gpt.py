"""A small PyTorch distillation run with kd's losses: a character-level GPT teacher is trained on text, then a smaller
student is distilled from it four ways, each with a kd_torch loss:

  fkl      word-level KD: forward KL(p_teacher || q_student) on the training text (kd_torch.forward_kl, T = 2, T^2)
  rkl      reverse KL on the training text (kd_torch.reverse_kl)
  gkd      TRL's generalized JSD(0.5) through the drop-in (kd_torch.trl.generalized_jsd_loss) on student samples
  minillm  MiniLLM's policy gradient on student samples (kd_torch.minillm.minillm_loss, preset "on_policy", with the
           LM term on the training text)

Each student is evaluated by the token-mean forward KL to the teacher on held-out text (lower is better).

    .venv/bin/python python/examples/tiny_gpt.py            # about two minutes on 2 cores
    .venv/bin/python python/examples/tiny_gpt.py --smoke    # seconds: a wiring check (the test suite runs it)

The corpus is the repository's own documentation (docs/*.md, README.md): no download.
"""

import argparse
import glob
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import kd_torch
from kd_torch.minillm import minillm_loss
from kd_torch.trl import generalized_jsd_loss


def corpus():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    files = sorted(glob.glob(os.path.join(root, "docs", "*.md"))) + [os.path.join(root, "README.md")]
    text = "".join(open(f, encoding="utf-8", errors="replace").read() for f in files if os.path.isfile(f))
    text = "".join(c if 32 <= ord(c) < 127 or c == "\n" else " " for c in text)
    return text if len(text) > 10000 else ("the teacher knows the student learns " * 2000)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab, d, layers, heads, ctx):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)
        self.ctx = ctx

    def forward(self, idx):
        T = idx.shape[1]
        mask = torch.triu(torch.full((T, T), float("-inf")), 1)
        x = self.tok(idx) + self.pos(torch.arange(T))
        for b in self.blocks:
            x = b(x, mask)
        return self.head(self.ln(x))

    @torch.no_grad()
    def sample(self, prompt, n, temperature=1.0):
        idx = prompt
        for _ in range(n):
            logits = self(idx[:, -self.ctx:])[:, -1] / temperature
            idx = torch.cat([idx, torch.multinomial(torch.softmax(logits, -1), 1)], 1)
        return idx


def batches(data, B, T, gen):
    i = torch.randint(0, len(data) - T - 1, (B,), generator=gen)
    x = torch.stack([data[j:j + T] for j in i])
    y = torch.stack([data[j + 1:j + T + 1] for j in i])
    return x, y


def train_teacher(model, data, steps, B, T, gen, log):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for s in range(steps):
        x, y = batches(data, B, T, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s % max(1, steps // 5) == 0 or s == steps - 1:
            log(f"  teacher step {s:4d}  cross-entropy {loss.item():.3f}")
    return model


@torch.no_grad()
def evaluate(student, teacher, data, B, T, gen):
    x, _ = batches(data, B, T, gen)
    return kd_torch.forward_kl(student(x), teacher(x)).item()


def distill(method, student, teacher, data, steps, B, T, gen, log):
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    teacher.eval()
    history = []
    for s in range(steps):
        x, y = batches(data, B, T, gen)
        if method in ("fkl", "rkl"):
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            if method == "fkl":
                loss = kd_torch.forward_kl(s_logits, t_logits, temperature=2.0, t2_scale=True)
            else:
                loss = kd_torch.reverse_kl(s_logits, t_logits)
        else:
            # On-policy: the student continues a prompt; both models score its continuation.
            prompt = x[:, : T // 2]
            seq = student.sample(prompt, T // 2)
            inp = seq[:, :-1]
            with torch.no_grad():
                t_logits = teacher(inp)
            s_logits = student(inp)
            P = prompt.shape[1]
            resp_logits, resp_teacher = s_logits[:, P - 1:], t_logits[:, P - 1:]   # strided views: no copies
            tokens = seq[:, P:]
            if method == "gkd":
                labels = torch.full(inp.shape, -100)
                labels[:, P - 1:] = tokens
                loss = generalized_jsd_loss(s_logits, t_logits, labels=labels, beta=0.5)
            else:
                lm = student(x)
                loss = minillm_loss(resp_logits, resp_teacher, tokens, preset="on_policy") + \
                    F.cross_entropy(lm.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
        if not math.isfinite(history[-1]):
            raise RuntimeError(f"{method}: non-finite loss at step {s}")
        if s % max(1, steps // 4) == 0 or s == steps - 1:
            log(f"  {method:8s} step {s:4d}  loss {loss.item():.4f}")
    return history


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few steps of each stage (wiring check)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    log = lambda s: print(s, flush=True)  # noqa: E731
    text = corpus()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train, held = data[:split], data[split:]
    V, T, B = len(chars), 32, 16
    t_steps, s_steps = (30, 8) if args.smoke else (600, 150)
    log(f"kd_torch {kd_torch.__version__} ({kd_torch.simd_isa()}), torch {torch.__version__}; corpus {len(text)} chars, "
        f"vocabulary {V}")
    t0 = time.time()
    teacher = train_teacher(GPT(V, 96, 2, 4, T), train, t_steps, B, T, gen, log)
    results = {}
    for method in ("fkl", "rkl", "gkd", "minillm"):
        torch.manual_seed(args.seed + 1)  # the same student initialization for every method
        student = GPT(V, 32, 1, 2, T)
        before = evaluate(student, teacher, held, 64, T, torch.Generator().manual_seed(99))
        hist = distill(method, student, teacher, train, s_steps, B, T, gen, log)
        after = evaluate(student, teacher, held, 64, T, torch.Generator().manual_seed(99))
        results[method] = (before, after, hist)
    log("\nmethod    held-out KL(teacher || student): before -> after")
    for m, (b, a, _) in results.items():
        log(f"{m:8s}  {b:.4f} -> {a:.4f}")
    log(f"total {time.time() - t0:.1f} s")
    return results


if __name__ == "__main__":
    res = main()
    sys.exit(0 if all(math.isfinite(a) for _, a, _ in res.values()) else 1)
