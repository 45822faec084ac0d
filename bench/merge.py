#!/usr/bin/env python3
"""Linear merge of three bf16 checkpoints: mnemo vs PyTorch vs mergekit vs the I/O limit.

Run through bench/merge.sh. Each contender runs as its own process under
/usr/bin/time (wall seconds and peak RSS); all read the same files from the page
cache (written just before, so warm for everyone) and write a bf16 output.
  mnemo:    mnemo merge linear A B C --weights 0.5,0.3,0.2
  PyTorch:  safetensors.torch.load_file x3, Σ wᵢθᵢ in f32 per tensor, save_file
  mergekit: the same load/save around mergekit.merge_methods.api.merge_state_dicts
            ("linear", normalize false, dtype float32, out_dtype bfloat16) — its
            in-memory API; mergekit-yaml needs an HF architecture config
  I/O limit: cat the three inputs to /dev/null, then write the output's size with
            dd ... conv=fsync (mnemo fsyncs its output too)
"""
import argparse, os, subprocess, sys, time

def timed(cmd, env=None):
    r = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{r.stderr[-2000:]}")
    secs, kb = r.stderr.strip().splitlines()[-1].split()
    return float(secs), int(kb) / 1024

TORCH = r'''
import sys, torch
from safetensors.torch import load_file, save_file
ins, out = sys.argv[1:4], sys.argv[4]
w = [0.5, 0.3, 0.2]
sds = [load_file(p) for p in ins]
save_file({k: sum(wi * sd[k].float() for wi, sd in zip(w, sds)).to(torch.bfloat16) for k in sds[0]}, out)
'''

MERGEKIT = r'''
import sys, torch
from safetensors.torch import load_file, save_file
from mergekit.merge_methods.api import merge_state_dicts
ins, out = sys.argv[1:4], sys.argv[4]
sds = {f"m{i}": load_file(p) for i, p in enumerate(ins)}
res = merge_state_dicts(sds, "linear", parameters={"weight": {"m0": 0.5, "m1": 0.3, "m2": 0.2}, "normalize": False},
                        dtype=torch.float32, out_dtype=torch.bfloat16)
save_file({k: v.contiguous() for k, v in res.items()}, out)
'''

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnemo", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--gib", type=float, default=1.0, help="size of each input")
    ap.add_argument("--skip-mergekit", action="store_true")
    a = ap.parse_args()
    import torch
    from safetensors.torch import save_file
    os.makedirs(a.out, exist_ok=True)
    p = lambda n: os.path.join(a.out, n)  # noqa: E731
    n_tensors = 16
    per = int(a.gib * 2**30 / 2 / n_tensors)  # bf16 elements per tensor
    rows = 4096
    cols = per // rows
    ins = [p(f"in{i}_{a.gib:g}gib.safetensors") for i in range(3)]
    g = torch.Generator().manual_seed(0)
    for path in ins:
        if not os.path.exists(path):
            save_file({f"layers.{j}.weight": torch.randn(rows, cols, generator=g).to(torch.bfloat16)
                       for j in range(n_tensors)}, path)
    size = sum(os.path.getsize(x) for x in ins)
    out_size = os.path.getsize(ins[0])
    subprocess.run(["cat", *ins], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    py = sys.executable
    results = []
    s, m = timed([a.mnemo, "merge", "linear", *ins, "--weights", "0.5,0.3,0.2", "-q", "-o", p("mnemo.st")])
    results.append(("mnemo merge linear", s, m))
    s, m = timed([py, "-c", TORCH, *ins, p("torch.st")])
    results.append(("PyTorch (safetensors load/save)", s, m))
    if not a.skip_mergekit:
        s, m = timed([py, "-c", MERGEKIT, *ins, p("mergekit.st")])
        results.append(("mergekit 0.1.5 merge_state_dicts", s, m))
    t0 = time.perf_counter()
    s1, m1 = timed(["cat", *ins], env=None)
    s2, m2 = timed(["dd", "if=/dev/zero", f"of={p('io.st')}", "bs=16M", f"count={out_size // 2**24 + 1}",
                    "conv=fsync", "status=none"])
    results.append(("I/O limit (cat inputs + dd output, fsync)", s1 + s2, max(m1, m2)))
    for f in ["io.st"]:
        os.remove(p(f))
    io = results[-1][1]
    print(f"3 inputs x {out_size / 2**30:.2f} GiB bf16 ({n_tensors} tensors of {rows}x{cols}), "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    print("| contender | seconds | input GB/s | peak RSS (MiB) | time / mnemo's | time / I/O limit |")
    print("|---|---:|---:|---:|---:|---:|")
    mn = results[0][1]
    for name, s, m in results:
        print(f"| {name} | {s:.2f} | {size / s / 1e9:.2f} | {m:.0f} | {s / mn:.2f}x | {s / io:.2f}x |")
    # The outputs agree (mnemo vs torch) to bf16 rounding.
    check = subprocess.run([a.mnemo, "diff", p("mnemo.st"), p("torch.st"), "--tol", "0.02", "-q"],
                           capture_output=True, text=True)
    print(f"\nmnemo vs PyTorch output: `mnemo diff --tol 0.02` exit {check.returncode}")

if __name__ == "__main__":
    main()
