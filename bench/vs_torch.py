#!/usr/bin/env python3
"""mnemo vs PyTorch on the same data, same weights, same batches, one run.

Run through bench/vs_torch.sh (it builds the release binary and the venv).
Prints a Markdown table: throughput of each side and the ratio mnemo/torch
(> 1 means mnemo is faster). Timings exclude process start and file loading on
both sides: mnemo's come from its own JSON Lines (`seconds` of the epoch or of
the Fisher), torch's from perf_counter around the same loop.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))
sys.dont_write_bytecode = True
import gen  # noqa: E402  (the arch-spec -> torch builder used for the fixtures)


def mnemo(binary, *args):
    r = subprocess.run([binary, *args, "-q"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"mnemo {' '.join(args)} failed:\n{r.stderr}")
    return [json.loads(l) for l in r.stdout.splitlines()]


def make_data(path, n, shape, classes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n,), generator=g)
    save_file({"input": x, "target": y}, path)


def torch_model(path, arch):
    model, _ = gen.load_model(path, arch, HERE)
    return model


def as_input(x):
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def torch_train(model_path, arch, data_path, opt_name, bs, epochs, penalty=None, lam=0.0):
    """Seconds per epoch (median of the epochs after the first, which warms up)."""
    model = torch_model(model_path, arch).train()
    d = load_file(data_path)
    x, y = as_input(d["input"]), d["target"].long()
    params = [p for p in model.parameters() if p.requires_grad]
    if opt_name == "adamw":
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    else:
        opt = torch.optim.Adam(params, lr=1e-3)
    pen = None
    if penalty:
        fi, an = load_file(penalty[0]), load_file(penalty[1])
        pen = [(p, fi[k], an[k]) for k, p in model.named_parameters() if p.requires_grad]
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for s in range(0, x.shape[0], bs):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[s:s + bs]), y[s:s + bs])
            if pen:
                loss = loss + lam * sum((f * (p - a) ** 2).sum() for p, f, a in pen)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def torch_fisher_loop(model_path, arch, data_path, n):
    """The per-example loop a PyTorch user writes for an exact empirical Fisher."""
    model = torch_model(model_path, arch).eval()
    d = load_file(data_path)
    x, y = as_input(d["input"][:n]), d["target"][:n].long()
    params = [p for p in model.parameters() if p.requires_grad]
    acc = [torch.zeros_like(p) for p in params]
    t = time.perf_counter()
    for i in range(n):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        for a, g in zip(acc, torch.autograd.grad(loss, params)):
            a += g * g
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnemo", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    p = lambda name: os.path.join(a.out, name)  # noqa: E731
    threads = torch.get_num_threads()
    rows = []

    mlp_arch = "mlp:784-400-400-10"
    cnn_arch = os.path.join(HERE, "..", "fixtures", "cnn.arch.json")
    make_data(p("mlp_data.st"), 128 * 40, (784,), 10, 1)
    make_data(p("cnn_data.st"), 128 * 16, (1, 28, 28), 10, 2)
    mnemo(a.mnemo, "init", "--arch", mlp_arch, "--seed", "1", "-o", p("mlp.st"))
    mnemo(a.mnemo, "init", "--arch", cnn_arch, "--seed", "1", "-o", p("cnn.st"))
    # A Fisher and an anchor for the EWC rows (the anchor: the starting weights).
    mnemo(a.mnemo, "fisher", p("mlp.st"), "--data", p("mlp_data.st"), "--samples", "512",
          "-o", p("mlp_fisher.st"))

    def mnemo_train(model, data, opt, extra=()):
        lines = mnemo(a.mnemo, "train-ewc", model, "--data", data, "--optimizer", opt,
                      "--weight-decay", "0.01" if opt == "adamw" else "0", "--decay-all",
                      "--epochs", str(a.epochs), "--batch-size", "128", "--no-shuffle",
                      "-o", p("trained.st"), *extra)
        ep = [l for l in lines if l["event"] == "epoch"]
        secs = sorted(e["seconds"] for e in ep[1:])[len(ep[1:]) // 2]
        return ep[0]["steps"], secs

    # 1. MLP training step, AdamW.
    steps, ms = mnemo_train(p("mlp.st"), p("mlp_data.st"), "adamw")
    ts = torch_train(p("mlp.st"), mlp_arch, p("mlp_data.st"), "adamw", 128, a.epochs)
    rows.append(("train mlp:784-400-400-10, AdamW, batch 128", "steps/s", steps / ms, steps / ts))
    # 2. The same with an EWC penalty (the toolkit's main job).
    pen = (p("mlp_fisher.st"), p("mlp.st"))
    steps, ms = mnemo_train(p("mlp.st"), p("mlp_data.st"), "adamw",
                            ("--penalty", f"{pen[0]}:{pen[1]}", "--lambda", "100"))
    ts = torch_train(p("mlp.st"), mlp_arch, p("mlp_data.st"), "adamw", 128, a.epochs, pen, 100.0)
    rows.append(("train-ewc same MLP, 1 penalty", "steps/s", steps / ms, steps / ts))
    # 3. The CNN fixture's architecture on 1x28x28 inputs, Adam.
    steps, ms = mnemo_train(p("cnn.st"), p("cnn_data.st"), "adam")
    ts = torch_train(p("cnn.st"), cnn_arch, p("cnn_data.st"), "adam", 128, a.epochs)
    rows.append(("train CNN fixture (conv-bn-pool x2), 1x28x28, Adam", "steps/s",
                 steps / ms, steps / ts))
    # 4. Exact empirical Fisher vs the per-example torch loop, and vs one training epoch.
    n = 2048
    for name, model, arch, data, loop_n in [
        ("MLP", p("mlp.st"), mlp_arch, p("mlp_data.st"), 512),
        ("CNN", p("cnn.st"), cnn_arch, p("cnn_data.st"), 512),
    ]:
        fl = mnemo(a.mnemo, "fisher", model, "--data", data, "--samples", str(n),
                   "--batch-size", "128", "-o", p("f.st"))
        fs = fl[-1]["seconds"]
        tl = torch_fisher_loop(model, arch, data, loop_n) * n / loop_n
        rows.append((f"exact empirical Fisher, {name}, {n} examples", "examples/s", n / fs, n / tl))
        steps, es = mnemo_train(model, data, "adam")
        epoch_n = steps * 128
        rows.append((f"  Fisher time / one mnemo training epoch over the same N ({name})", "ratio",
                     fs / (es * n / epoch_n), None))

    print(f"torch {torch.__version__}, {threads} threads; mnemo {a.mnemo}\n")
    print("| workload | unit | mnemo | PyTorch | mnemo / PyTorch |")
    print("|---|---|---:|---:|---:|")
    for w, unit, m, t in rows:
        if t is None:
            print(f"| {w} | {unit} | {m:.2f} | | |")
        else:
            print(f"| {w} | {unit} | {m:.1f} | {t:.1f} | **{m / t:.2f}x** |")


if __name__ == "__main__":
    main()
