"""Side-by-side benchmark: kd_torch against PyTorch eager and torch.compile of the same losses (CPU).

Same process, identical data (seeded), forward + backward to the student logits [N, V] (teacher fixed), token-mean
losses:
  fkl  eager: F.kl_div(log_softmax(s), log_softmax(t), "batchmean", log_target=True)      kd: kd_torch.forward_kl
  rkl  eager: (exp(lq) * (lq - lp)).sum() / N, lq / lp = log_softmax                       kd: kd_torch.reverse_kl
  jsd  eager: TRL's generalized_jsd_loss(s[None], t[None], beta=0.5, num_items_in_batch=N) (imported from TRL)
       kd:    kd_torch.trl.generalized_jsd_loss with the same arguments
  compile: torch.compile (inductor) of the eager function; its first call (compilation) is reported separately.
Time: median of --reps runs after one warm-up. Peak extra memory: in a separate subprocess per (method, loss, V,
dtype), the peak resident set (VmHWM, reset through /proc/self/clear_refs) of one forward + backward above the resident
set holding the inputs; the gradient itself is part of it for every method. Subprocesses run under an address-space
limit (--mem-budget-gb above their start), so a method that needs more fails with "out of memory" instead of
exhausting the machine.

    .venv/bin/python python/bench/bench_torch.py                           # N = 4096, V in {32000, 128256}, fp32 + bf16
    .venv/bin/python python/bench/bench_torch.py --n 256 --reps 2           # quick
    .venv/bin/python python/bench/bench_torch.py --markdown docs/performance-python.md   # writes the tables
"""

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _trl_gjsd():
    from trl.experimental.gkd.gkd_trainer import GKDTrainer
    return GKDTrainer.generalized_jsd_loss


def eager_fn(loss):
    if loss == "fkl":
        return lambda s, t: F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean",
                                     log_target=True)
    if loss == "rkl":
        def rkl(s, t):
            lq, lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
            return (lq.exp() * (lq - lp)).sum() / s.shape[0]
        return rkl
    g = _trl_gjsd()
    return lambda s, t: g(s[None], t[None], beta=0.5, num_items_in_batch=s.shape[0])


def kd_fn(loss):
    import kd_torch
    from kd_torch.trl import generalized_jsd_loss
    if loss == "fkl":
        return lambda s, t: kd_torch.forward_kl(s, t)
    if loss == "rkl":
        return lambda s, t: kd_torch.reverse_kl(s, t)
    return lambda s, t: generalized_jsd_loss(s[None], t[None], beta=0.5, num_items_in_batch=s.shape[0])


def make_fn(method, loss):
    if method == "kd":
        return kd_fn(loss)
    if method == "eager":
        return eager_fn(loss)
    return torch.compile(eager_fn(loss))


def make_inputs(n, v, dtype):
    g = torch.Generator().manual_seed(1234)
    s = (torch.randn(n, v, generator=g) * 2).to(dtype)
    t = (torch.randn(n, v, generator=g) * 2).to(dtype)
    return s, t


def step(fn, s, t):
    s.grad = None
    loss = fn(s, t)
    loss.backward()
    return loss


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _limit_memory(budget_gb):
    lim = _status("VmSize") + int(budget_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (lim, resource.getrlimit(resource.RLIMIT_AS)[1]))  # soft limit only


def child_memory(method, loss, n, v, dtype, budget_gb):
    """Peak extra resident memory of one forward + backward (run in its own process)."""
    torch.set_num_threads(int(os.environ.get("KD_BENCH_THREADS", "2")))
    fn = make_fn(method, loss)
    s, t = make_inputs(n, v, DTYPES[dtype])
    s.requires_grad_()
    try:
        _limit_memory(budget_gb)
        step(fn, s, t)       # warm-up (compilation for torch.compile)
        s.grad = None
        gc.collect()
        base = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")     # reset VmHWM (peak RSS) to the current RSS
        step(fn, s, t)
        peak = _status("VmHWM")
        return {"peak_extra": peak - base}
    except (RuntimeError, MemoryError) as e:
        if "memory" in str(e).lower() or isinstance(e, MemoryError):
            return {"error": f"out of memory (> {budget_gb:g} GiB)"}
        raise


def time_all(methods, losses, n, v, dtype, reps, budget_gb, log):
    s, t = make_inputs(n, v, DTYPES[dtype])
    s.requires_grad_()
    out = {}
    for loss in losses:
        ref_val = None
        for method in methods:
            key = f"{loss}/{method}"
            try:
                fn = make_fn(method, loss)
                t0 = time.perf_counter()
                val = step(fn, s, t).item()
                first = time.perf_counter() - t0
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    step(fn, s, t)
                    times.append(time.perf_counter() - t0)
                out[key] = {"time": statistics.median(times), "first": first, "value": val}
                if ref_val is None:
                    ref_val = val
                out[key]["rel_diff"] = abs(val - ref_val) / max(abs(ref_val), 1e-30)
                log(f"  {dtype:8s} V={v:6d} {key:14s} {out[key]['time'] * 1e3:9.1f} ms (first call "
                    f"{first:.2f} s), loss {val:.6g}")
            except (RuntimeError, MemoryError) as e:
                if "memory" not in str(e).lower() and not isinstance(e, MemoryError):
                    raise
                out[key] = {"error": "out of memory"}
                log(f"  {dtype:8s} V={v:6d} {key:14s} out of memory")
            s.grad = None
            gc.collect()
    return out


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import kd_torch
    return {"cpu": cpu, "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "kd_torch": kd_torch.__version__, "simd": kd_torch.simd_isa(), "python": platform.python_version(),
            "load_before": os.getloadavg()}


def markdown(res, args):
    m = res["machine"]
    lines = [
        "| | |", "|---|---|",
        f"| command | `{res['command']}` |",
        f"| date | {res['date']} |",
        f"| CPU | {m['cpu']}, {m['cpus']} CPUs, torch threads {m['threads']} |",
        f"| software | torch {m['torch']}, kd_torch {m['kd_torch']} (kd::dispatch: {m['simd']}), Python {m['python']} |",
        f"| load average (1, 5, 15 min) | before {' '.join(f'{x:.2f}' for x in m['load_before'])}; after "
        f"{' '.join(f'{x:.2f}' for x in res['load_after'])} (2 CPUs shared with other work: above ~0.5 the times are "
        "pessimistic) |",
        "",
        f"Forward + backward, N = {args.n} rows, median of {args.reps} runs after a warm-up; memory: peak extra resident "
        "set of one forward + backward in its own process (the N x V gradient included). Speed-up and memory ratio: "
        "the other method over kd.",
        "",
        "| loss | dtype | V | kd (ms) | eager (ms) | compile (ms) | vs eager | vs compile | kd mem (MiB) | eager mem "
        "(MiB) | compile mem (MiB) | eager / kd mem | compile / kd mem |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt_t(r):
        return f"{r['time'] * 1e3:.0f}" if "time" in r else r.get("error", "-")

    def fmt_m(r):
        return f"{r['peak_extra'] / 2 ** 20:.0f}" if "peak_extra" in r else r.get("error", "-")

    for cfg in res["configs"]:
        T, M = cfg["time"], cfg["memory"]
        for loss in args.losses:
            k, e, c = (T.get(f"{loss}/{x}", {}) for x in ("kd", "eager", "compile"))
            mk, me, mc = (M.get(f"{loss}/{x}", {}) for x in ("kd", "eager", "compile"))
            sp = lambda o: f"{o['time'] / k['time']:.1f}x" if "time" in o and "time" in k else "-"  # noqa: E731
            mr = lambda o: (f"{o['peak_extra'] / mk['peak_extra']:.1f}x"  # noqa: E731
                            if "peak_extra" in o and mk.get("peak_extra") else "-")
            lines.append(f"| {loss} | {cfg['dtype']} | {cfg['v']} | {fmt_t(k)} | {fmt_t(e)} | {fmt_t(c)} | {sp(e)} | "
                         f"{sp(c)} | {fmt_m(mk)} | {fmt_m(me)} | {fmt_m(mc)} | {mr(me)} | {mr(mc)} |")
    lines.append("")
    lines.append("torch.compile's first call (compilation + one step), seconds: " + "; ".join(
        f"{cfg['dtype']} V={cfg['v']} {loss} {cfg['time'][f'{loss}/compile']['first']:.0f}"
        for cfg in res["configs"] for loss in args.losses if "first" in cfg["time"].get(f"{loss}/compile", {})) + ".")
    lines.append("")
    lines.append("Loss values agree across methods to the relative differences: " + "; ".join(
        f"{cfg['dtype']} V={cfg['v']} {k}: {r['rel_diff']:.1e}" for cfg in res["configs"]
        for k, r in cfg["time"].items() if "rel_diff" in r and not k.endswith("/kd")) + ".")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    ap.add_argument("--losses", nargs="+", default=["fkl", "rkl", "jsd"], choices=["fkl", "rkl", "jsd"])
    ap.add_argument("--methods", nargs="+", default=["kd", "eager", "compile"], choices=["kd", "eager", "compile"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mem-budget-gb", type=float, default=12.0)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--markdown", default=None, help="write the markdown tables here")
    ap.add_argument("--update-doc", default=None, metavar="MD",
                    help="replace (or append) the kd_torch section of this file, e.g. docs/performance.md")
    ap.add_argument("--from-json", default=None, help="regenerate the markdown from a --json file (no run)")
    ap.add_argument("--_child", nargs=5, metavar=("METHOD", "LOSS", "N", "V", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["KD_BENCH_THREADS"] = str(args.threads)
    if args.from_json:
        with open(args.from_json) as f:
            res = json.load(f)
        emit(res, args)
        return
    if args._child:
        method, loss, n, v, dtype = args._child
        print(json.dumps(child_memory(method, loss, int(n), int(v), dtype, args.mem_budget_gb)))
        return
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    res = {"command": "python python/bench/bench_torch.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), "configs": [],
           "args": {"n": args.n, "reps": args.reps, "losses": args.losses}}
    for dtype in args.dtypes:
        for v in args.vocab:
            cfg = {"dtype": dtype, "v": v, "time": {}, "memory": {}}
            try:
                _limit_memory(args.mem_budget_gb + 2 * 2 * args.n * v * DTYPES[dtype].itemsize / 2 ** 30)
            except ValueError:
                pass
            cfg["time"] = time_all(args.methods, args.losses, args.n, v, dtype, args.reps, args.mem_budget_gb, log)
            resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[1],) * 2)
            if not args.no_memory:
                for loss in args.losses:
                    for method in args.methods:
                        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", method, loss,
                                            str(args.n), str(v), dtype, "--mem-budget-gb", str(args.mem_budget_gb),
                                            "--threads", str(args.threads)], capture_output=True, text=True)
                        try:
                            cfg["memory"][f"{loss}/{method}"] = json.loads(r.stdout.strip().splitlines()[-1])
                        except (IndexError, ValueError):
                            cfg["memory"][f"{loss}/{method}"] = {"error": f"failed (exit {r.returncode})"}
                        log(f"  {dtype:8s} V={v:6d} {loss}/{method:8s} memory {cfg['memory'][f'{loss}/{method}']}")
            res["configs"].append(cfg)
    res["load_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    emit(res, args)


SECTION_BEGIN = "<!-- kd_torch benchmark: generated by python/bench/bench_torch.py --update-doc; do not edit by hand -->"
SECTION_END = "<!-- end of the kd_torch benchmark -->"


def targets(res, args):
    """The issue's targets on the 2-core machine: >= 5x faster than eager, >= 2x faster than torch.compile, >= 3x less
    peak extra memory than eager."""
    out = []
    for cfg in res["configs"]:
        T, M = cfg["time"], cfg["memory"]
        for loss in args.losses:
            k, e, c = (T.get(f"{loss}/{x}", {}) for x in ("kd", "eager", "compile"))
            mk, me = M.get(f"{loss}/kd", {}), M.get(f"{loss}/eager", {})
            parts = []
            for name, o, goal in (("eager", e, 5.0), ("torch.compile", c, 2.0)):
                if "time" in o and "time" in k:
                    r = o["time"] / k["time"]
                    parts.append(f"{r:.1f}x faster than {name} ({'meets' if r >= goal else 'does NOT meet'} {goal:g}x)")
                else:
                    parts.append(f"{name}: {o.get('error', 'not run')}")
            if mk.get("peak_extra") and me.get("peak_extra"):
                r = me["peak_extra"] / mk["peak_extra"]
                parts.append(f"{r:.1f}x less memory than eager ({'meets' if r >= 3 else 'does NOT meet'} 3x)")
            elif me.get("error"):
                parts.append(f"eager memory: {me['error']}")
            out.append(f"- {loss} {cfg['dtype']} V={cfg['v']}: " + "; ".join(parts) + ".")
    return "\n".join(out) + "\n"


def emit(res, args):
    if "args" in res:  # the run's own settings (also when regenerating from --from-json)
        args = argparse.Namespace(**{**vars(args), **res["args"]})
    md = markdown(res, args)
    section = (f"{SECTION_BEGIN}\n## kd_torch against PyTorch eager and torch.compile (Python, same process)\n\n"
               "`python/bench/bench_torch.py` (docs/python.md): kd_torch's losses against the same losses written with "
               "PyTorch ops (eager) and their `torch.compile` (inductor), forward + backward to the student logits, "
               "identical seeded data in one process; peak extra memory per method in its own subprocess. Eager JSD is "
               "TRL's own `generalized_jsd_loss` (imported), kd's is the drop-in `kd_torch.trl.generalized_jsd_loss` with "
               "the same arguments.\n\n" + md + "\nTargets (2-core machine): >= 5x faster than eager, >= 2x faster "
               "than torch.compile, >= 3x less peak memory than eager.\n\n" + targets(res, args) + f"{SECTION_END}\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(section)
    if args.update_doc:
        try:
            with open(args.update_doc) as f:
                doc = f.read()
        except OSError:
            doc = ""
        b, e = doc.find(SECTION_BEGIN), doc.find(SECTION_END)
        if b >= 0 and e > b:
            doc = doc[:b] + section + doc[e + len(SECTION_END) + 1:]
        else:
            doc = doc.rstrip("\n") + "\n\n" + section
        with open(args.update_doc, "w") as f:
            f.write(doc)
    print(section)


if __name__ == "__main__":
    main()
