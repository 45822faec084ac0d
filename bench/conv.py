#!/usr/bin/env python3
"""mnemo's host conv2d vs candle's conv2d vs PyTorch, one run, same tensors and weights.

Run through bench/conv.sh (it builds the release binary, the conv_bench example and, for the
"before" columns, the binary of a given git revision). Prints Markdown tables:

(a) per layer, forward + backward (loss sum(y * g); gradients for input and weight) at
    EfficientNet-B0 shapes for 64 px inputs, batch 32 (and resnet18's 3x3 and downsampling
    convs): the fastest of --reps runs in milliseconds (on a shared machine the minimum is
    the stable statistic; torch's medians jumped by 100 ms when other work took a core), and the largest relative difference of mnemo's y, dx, dw from
    torch's;
(b) end to end: training steps/s of efficientnet_b0:num_classes=10 (Adam, batch 32, random
    3x64x64 data) with `mnemo train-ewc`, before and after, against torchvision's
    efficientnet_b0 loaded with the same weights;
(c) the CNN fixture of bench/vs_torch.sh, before and after, against torch.
Ratios are speeds: > 1 means mnemo is faster.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
import vs_torch  # noqa: E402  (its mnemo runner, data maker and torch training loop)

# name: (cin, cout, size, kernel, stride, groups) at batch 32; padding kernel // 2.
LAYERS = [
    ("stem 3x3 s2, 3->32 @64", (3, 32, 64, 3, 2, 1)),
    ("dw 3x3 s1, 32 @32", (32, 32, 32, 3, 1, 32)),
    ("1x1 32->16 @32", (32, 16, 32, 1, 1, 1)),
    ("1x1 16->96 @32", (16, 96, 32, 1, 1, 1)),
    ("dw 3x3 s2, 96 @32", (96, 96, 32, 3, 2, 96)),
    ("dw 5x5 s2, 144 @16", (144, 144, 16, 5, 2, 144)),
    ("dw 5x5 s1, 240 @8", (240, 240, 8, 5, 1, 240)),
    ("dw 3x3 s1, 480 @4", (480, 480, 4, 3, 1, 480)),
    ("1x1 80->480 @4", (80, 480, 4, 1, 1, 1)),
    ("1x1 320->1280 @2", (320, 1280, 2, 1, 1, 1)),
    ("1x1 s2 64->128 @16 (resnet downsample)", (64, 128, 16, 1, 2, 1)),
    ("resnet 3x3 s1, 64 @16", (64, 64, 16, 3, 1, 1)),
    ("resnet 3x3 s2, 64->128 @16", (64, 128, 16, 3, 2, 1)),
]
BATCH = 32


def layer_key(i):
    return f"l{i}"


def torch_step(x, w, g, s, p, groups):
    x = x.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    y = F.conv2d(x, w, None, s, p, 1, groups)
    (y * g).sum().backward()
    return y.detach(), x.grad, w.grad


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def microbench(a, p):
    g = torch.Generator().manual_seed(0)
    tensors, specs, shapes = {}, [], []
    for i, (_, (cin, cout, size, k, s, groups)) in enumerate(LAYERS):
        x = torch.randn(BATCH, cin, size, size, generator=g)
        w = torch.randn(cout, cin // groups, k, k, generator=g) / (cin // groups * k * k) ** 0.5
        ho = (size + 2 * (k // 2) - k) // s + 1
        gr = torch.randn(BATCH, cout, ho, ho, generator=g)
        tensors.update({f"{layer_key(i)}.x": x, f"{layer_key(i)}.w": w, f"{layer_key(i)}.g": gr})
        specs.append(f"{layer_key(i)}:{s}:{k // 2}:{groups}")
    save_file(tensors, p("conv_layers.st"))
    r = subprocess.run([a.conv_bench, p("conv_layers.st"), p("conv_out.st"), str(a.reps), *specs],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"conv_bench failed:\n{r.stderr}")
    times = {(d["layer"], d["impl"]): d["seconds"] for d in map(json.loads, r.stdout.splitlines())}
    ours = load_file(p("conv_out.st"))
    rows = []
    for i, (name, (_, _, _, k, s, groups)) in enumerate(LAYERS):
        key = layer_key(i)
        x, w, gr = tensors[f"{key}.x"], tensors[f"{key}.w"], tensors[f"{key}.g"]
        y, dx, dw = torch_step(x, w, gr, s, k // 2, groups)
        err = max(rel(ours[f"{key}.y"], y), rel(ours[f"{key}.dx"], dx), rel(ours[f"{key}.dw"], dw))
        torch_step(x, w, gr, s, k // 2, groups)  # warm-up
        ts = []
        for _ in range(a.reps):
            t = time.perf_counter()
            torch_step(x, w, gr, s, k // 2, groups)
            ts.append(time.perf_counter() - t)
        tt = min(ts)
        rows.append((name, times[(key, "candle")], times[(key, "mnemo")], tt, err,
                     times[(key, "harness")]))
    return rows


def mnemo_train(binary, model, data, bs, epochs, out):
    lines = vs_torch.mnemo(binary, "train-ewc", model, "--data", data, "--optimizer", "adam",
                           "--epochs", str(epochs), "--batch-size", str(bs), "--no-shuffle",
                           "-o", out)
    ep = [l for l in lines if l["event"] == "epoch"]
    secs = sorted(e["seconds"] for e in ep[1:])[len(ep[1:]) // 2]
    return ep[0]["steps"] / secs


def torch_effnet(model_path, data_path, bs, epochs):
    model = torchvision.models.efficientnet_b0(num_classes=10)
    model.load_state_dict(load_file(model_path), strict=True)
    model.train()
    d = load_file(data_path)
    x, y = vs_torch.as_input(d["input"]), d["target"].long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for s in range(0, x.shape[0], bs):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[s:s + bs]), y[s:s + bs]).backward()
            opt.step()
        times.append(time.perf_counter() - t)
    steps = (x.shape[0] + bs - 1) // bs
    return steps / sorted(times[1:])[len(times[1:]) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnemo", required=True)
    ap.add_argument("--before", help="a mnemo binary with candle's conv2d, for the before columns")
    ap.add_argument("--conv-bench", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=12, help="efficientnet steps per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    p = lambda name: os.path.join(a.out, name)  # noqa: E731
    skip = set(a.skip.split(","))
    print(f"torch {torch.__version__}, {threads} threads; mnemo {a.mnemo}; "
          f"load average {os.getloadavg()[0]:.2f}\n")

    if "a" not in skip:
        print(f"(a) conv2d forward + backward, batch {BATCH}, fastest of {a.reps} (ms)\n")
        print("| layer | candle | mnemo | torch | mnemo / candle | mnemo / torch "
              "| candle / torch | loss in candle (in both) | max rel diff vs torch |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        tot = [0.0, 0.0, 0.0, 0.0]
        for name, c, m, t, err, h in microbench(a, p):
            tot = [tot[0] + c, tot[1] + m, tot[2] + t, tot[3] + h]
            print(f"| {name} | {c * 1e3:.2f} | {m * 1e3:.2f} | {t * 1e3:.2f} | **{c / m:.2f}x** "
                  f"| **{t / m:.2f}x** | {t / c:.2f}x | {h * 1e3:.2f} | {err:.1e} |")
        c, m, t, h = tot
        print(f"| all layers above | {c * 1e3:.1f} | {m * 1e3:.1f} | {t * 1e3:.1f} | "
              f"**{c / m:.2f}x** | **{t / m:.2f}x** | {t / c:.2f}x | {h * 1e3:.1f} | |\n")

    rows = []
    if "b" not in skip:
        arch = "efficientnet_b0:num_classes=10"
        vs_torch.mnemo(a.mnemo, "init", "--arch", arch, "--seed", "1", "-o", p("effnet.st"))
        vs_torch.make_data(p("effnet_data.st"), 32 * a.steps, (3, 64, 64), 10, 3)
        after = mnemo_train(a.mnemo, p("effnet.st"), p("effnet_data.st"), 32, a.epochs,
                            p("trained.st"))
        before = (mnemo_train(a.before, p("effnet.st"), p("effnet_data.st"), 32, a.epochs,
                              p("trained.st")) if a.before else None)
        ts = torch_effnet(p("effnet.st"), p("effnet_data.st"), 32, a.epochs)
        rows.append((f"train {arch}, 3x64x64, batch 32, Adam", before, after, ts))
    if "c" not in skip:
        cnn_arch = os.path.join(HERE, "..", "fixtures", "cnn.arch.json")
        vs_torch.make_data(p("cnn_data.st"), 128 * 16, (1, 28, 28), 10, 2)
        vs_torch.mnemo(a.mnemo, "init", "--arch", cnn_arch, "--seed", "1", "-o", p("cnn.st"))
        after = mnemo_train(a.mnemo, p("cnn.st"), p("cnn_data.st"), 128, 4, p("trained.st"))
        before = (mnemo_train(a.before, p("cnn.st"), p("cnn_data.st"), 128, 4, p("trained.st"))
                  if a.before else None)
        ts = 16 / vs_torch.torch_train(p("cnn.st"), cnn_arch, p("cnn_data.st"), "adam", 128, 4)
        rows.append(("train CNN fixture (conv-bn-pool x2), 1x28x28, batch 128, Adam", before,
                     after, ts))
    if rows:
        print("(b, c) training steps/s, median of epochs 2.. (mnemo's own epoch `seconds`)\n")
        print("| workload | mnemo before | mnemo after | PyTorch | after / before "
              "| before / PyTorch | after / PyTorch |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for w, b, m, t in rows:
            bs = f"{b:.2f}" if b else "–"
            ab = f"**{m / b:.2f}x**" if b else "–"
            bt = f"{b / t:.2f}x" if b else "–"
            print(f"| {w} | {bs} | {m:.2f} | {t:.2f} | {ab} | {bt} | **{m / t:.2f}x** |")


if __name__ == "__main__":
    main()
