#!/usr/bin/env python3
"""Permuted MNIST in plain PyTorch, written from van de Ven & Tolias's description and code
(continual-learning, 2019): the independent reference beside examples/permuted-mnist/run.sh.

It answers one question: on the same protocol, does PyTorch reproduce the published
numbers where mnemo does not? Knobs for the protocol details that differ between the
paper's code and mnemo's pipeline:

  --pad 2               zero-pad 28x28 to 32x32 before permuting (their code: 1024 inputs)
  --first-unpermuted    task 1 is plain MNIST (their code); else every task is permuted
  --fisher empirical|predicted   EWC's label: the true one, or the argmax (their default)

Model: MLP IN-1000-1000-10 (ReLU), torch's default init; Adam lr 1e-4, betas (0.9, 0.999),
one optimizer for all tasks (moments carried, as their code does); batch 128 from reshuffled
epochs (drop_last), ITERS updates per task. EWC: penalty (lambda/2)·Σ F (θ − θ*)² per task
(online: one Fisher, F = γ·F_prev + F_new), Fisher over the whole training set, batch of one.
Prints one JSON line per (stage, task) like `mnemo eval --stage`, then the average.

    .venv/bin/python examples/permuted-mnist/reference.py --method none --pad 2 --first-unpermuted
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def idx(path):
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/mnist/package/data")
    ap.add_argument("--method", default="none", choices=["none", "ewc", "online-ewc"])
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--iters", type=int, default=5000)
    ap.add_argument("--hidden", type=int, default=1000)
    ap.add_argument("--lam", type=float, default=None, help="their lambda (on ½ΣF): EWC 500, online 1000")
    ap.add_argument("--gamma", type=float, default=0.9)
    ap.add_argument("--pad", type=int, default=0)
    ap.add_argument("--first-unpermuted", action="store_true")
    ap.add_argument("--fisher", default="predicted", choices=["empirical", "predicted"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.RandomState(a.seed)
    lam = a.lam if a.lam is not None else (500.0 if a.method == "ewc" else 1000.0)

    def load(split):
        x = idx(os.path.join(a.data, f"{split}-images-idx3-ubyte")).astype(np.float32) / 255
        y = idx(os.path.join(a.data, f"{split}-labels-idx1-ubyte")).astype(np.int64)
        if a.pad:
            x = np.pad(x, ((0, 0), (a.pad, a.pad), (a.pad, a.pad)))
        return torch.from_numpy(x.reshape(len(x), -1).copy()), torch.from_numpy(y.copy())

    xtr, ytr = load("train")
    xte, yte = load("t10k")
    d = xtr.shape[1]
    perms = [None if (k == 0 and a.first_unpermuted) else torch.from_numpy(rng.permutation(d))
             for k in range(a.tasks)]
    task = lambda x, k: x if perms[k] is None else x[:, perms[k]]  # noqa: E731

    model = nn.Sequential(nn.Linear(d, a.hidden), nn.ReLU(), nn.Linear(a.hidden, a.hidden),
                          nn.ReLU(), nn.Linear(a.hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999))
    fishers = []  # (F, θ*) per task; online: one entry

    def accuracy(k):
        model.eval()
        with torch.no_grad():
            x = task(xte, k)
            pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
        model.train()
        return float((pred == yte).float().mean())

    # A string field, so `mnemo report` tells the data protocols apart as runs.
    protocol = f"{28 + 2 * a.pad}x{28 + 2 * a.pad}-" + (
        "first-unpermuted" if a.first_unpermuted else "all-permuted")
    results = []
    t0 = time.time()
    for k in range(a.tasks):
        xk = task(xtr, k)
        order, pos = torch.randperm(len(xk)), 0
        for _ in range(a.iters):
            if pos + 128 > len(xk):
                order, pos = torch.randperm(len(xk)), 0
            b = order[pos:pos + 128]
            pos += 128
            loss = F.cross_entropy(model(xk[b]), ytr[b])
            if fishers and a.method != "none":
                pen = sum((f * (p - s) ** 2).sum() for fi, st in fishers
                          for f, p, s in zip(fi, model.parameters(), st))
                loss = loss + lam / 2 * pen
            opt.zero_grad()
            loss.backward()
            opt.step()
        if a.method != "none":
            # Diagonal Fisher over the whole training set, one example at a time.
            model.eval()
            fi = [torch.zeros_like(p) for p in model.parameters()]
            for i in range(len(xk)):
                out = model(xk[i:i + 1])
                y = out.argmax(1) if a.fisher == "predicted" else ytr[i:i + 1]
                model.zero_grad()
                F.nll_loss(F.log_softmax(out, 1), y).backward()
                for f, p in zip(fi, model.parameters()):
                    f += p.grad.detach() ** 2
            fi = [f / len(xk) for f in fi]
            model.train()
            st = [p.detach().clone() for p in model.parameters()]
            if a.method == "online-ewc" and fishers:
                fi = [a.gamma * f0 + f for f0, f in zip(fishers[0][0], fi)]
                fishers = [(fi, st)]
            else:
                fishers.append((fi, st))
        for j in range(a.tasks):
            r = {"stage": k + 1, "task": j + 1, "accuracy": accuracy(j), "method": a.method,
                 "protocol": protocol,
                 "pad": a.pad, "first_unpermuted": a.first_unpermuted, "fisher": a.fisher,
                 "seed": a.seed, "tool": "torch"}
            results.append(r)
            print(json.dumps(r), flush=True)
        print(f"task {k + 1} done, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    final = [r["accuracy"] for r in results if r["stage"] == a.tasks]
    print(json.dumps({"average": sum(final) / len(final), "method": a.method, "pad": a.pad,
                      "first_unpermuted": a.first_unpermuted, "seed": a.seed, "tool": "torch",
                      "seconds": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
