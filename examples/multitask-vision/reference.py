#!/usr/bin/env python3
"""The three-stage multi-task run in plain PyTorch, written from the protocol (nothing shared
with mnemo but the data files): segmentation -> detection (multi-label presence) ->
classification on one EfficientNet-Lite0 trunk, fine-tuning and EWC.

    python reference.py --data OUT/data --pretrained efficientnet-lite0-57934424.pth \
        --methods finetune ewc -o OUT/reference.jsonl

Protocol (the same as run.sh with PRETRAINED): inputs U8 / 255, then ImageNet mean/std;
the trunk is PyPI's efficientnet-lite-pytorch `EfficientNet.from_name('efficientnet-lite0',
image_size=SIZE, drop_connect_rate=0)` with the ImageNet state dict, batchnorm momentum
--bn-momentum (torch convention) everywhere; heads as mnemo's effnet_multitask: seg = 1x1 conv
to D channels + BN + ReLU, three (bilinear x2, 3x3 conv, BN, ReLU), a 1x1 conv with bias to one
channel, bilinear x4; det and cls = global average pool, dropout 0.2, linear. Losses: seg soft
dice (per example, smooth 1) + BCE, det BCE (mean over every element), cls cross-entropy.
Adam (torch defaults) at --lr, batch --batch, --epochs per stage, a fresh optimizer per stage,
the order of each epoch from torch.randperm under --seed. EWC: after each stage the empirical
Fisher (squared per-example gradients of that task's loss through its head, eval mode, the
first --fisher-n training examples) and the snapshot; later stages add
lambda * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2 (no 1/2). Metrics on the test sets: seg
foreground IoU (logit > 0, counts summed over the set), det mAP (sklearn's
average_precision_score per label, labels with positives), cls accuracy; each a JSON line
{"method", "stage", "task", "seed", metric} as `mnemo eval --stage --task` writes them (fractions).
"""
import argparse, json, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from efficientnet_lite_pytorch import EfficientNet

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TASKS = ["seg", "det", "cls"]
METRIC = {"seg": "miou", "det": "map", "cls": "accuracy"}


def load(path):
    d = load_file(path)
    x = (d["input"].float() / 255 - MEAN) / STD
    return x.contiguous(memory_format=torch.channels_last), d["target"]


def cbr(i, o, k):
    return [nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU()]


class Multitask(nn.Module):
    def __init__(self, size, labels, classes, decoder, dropout, pth):
        super().__init__()
        self.trunk = EfficientNet.from_name(
            "efficientnet-lite0", image_size=size, drop_connect_rate=0.0
        )
        if pth:
            self.trunk.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
        c = 1280
        up = lambda: nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *cbr(decoder, decoder, 3)
        )
        self.seg = nn.Sequential(
            *cbr(c, decoder, 1), up(), up(), up(), nn.Conv2d(decoder, 1, 1),
            nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False),
        )
        pool = lambda n: nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, n)
        )
        self.det, self.cls = pool(labels), pool(classes)
        # torch's init of the heads' linear layers as torchvision's EfficientNet classifier.
        for head in (self.det, self.cls):
            r = 1.0 / head[3].out_features ** 0.5
            nn.init.uniform_(head[3].weight, -r, r)
            nn.init.zeros_(head[3].bias)

    def forward(self, x, task):
        f = self.trunk.extract_features(x)
        return getattr(self, task)(f)


def task_loss(task, z, y):
    if task == "cls":
        return F.cross_entropy(z, y)
    if task == "det":
        return F.binary_cross_entropy_with_logits(z, y.float())
    t = y.float()
    p = torch.sigmoid(z[:, 0])
    inter = (p * t).flatten(1).sum(1)
    den = p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1.0
    dice = (1 - (2 * inter + 1.0) / den).mean()
    return dice + F.binary_cross_entropy_with_logits(z[:, 0], t)


def average_precision(y, s):
    """sklearn's average_precision_score for one label: sum_n (R_n - R_{n-1}) P_n over distinct
    scores in decreasing order, no interpolation."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@torch.no_grad()
def evaluate(model, task, x, y):
    model.eval()
    z = torch.cat([model(x[i : i + 100], task) for i in range(0, len(x), 100)])
    if task == "cls":
        return (z.argmax(1) == y).float().mean().item()
    if task == "seg":
        pred, t = z[:, 0] > 0, y == 1
        return ((pred & t).sum() / (pred | t).sum()).item()
    yn, zn = y.numpy().astype(np.float64), z.numpy().astype(np.float64)
    aps = [average_precision(yn[:, k], zn[:, k]) for k in range(yn.shape[1]) if yn[:, k].sum() > 0]
    return float(np.mean(aps))


def trunk_params(model):
    return {n: p for n, p in model.named_parameters()}


def fisher(model, task, x, y):
    """Empirical Fisher: the mean of squared per-example gradients, eval mode."""
    model.eval()
    params = trunk_params(model)
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        task_loss(task, model(x[i : i + 1], task), y[i : i + 1]).backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n] += p.grad.detach() ** 2
    return {n: a / len(x) for n, a in acc.items()}


def run(args, method, data, emit):
    torch.manual_seed(args.seed)
    model = Multitask(args.size, args.labels, args.classes, args.decoder_channels, 0.2, args.pretrained)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = args.bn_momentum
    model = model.to(memory_format=torch.channels_last)
    penalties = []

    def record(stage):
        for j, t in enumerate(TASKS):
            x, y = data[t]["test"]
            emit({"method": method, "stage": stage, "task": j + 1, METRIC[t]: evaluate(model, t, x, y)})

    record(0)
    for i, t in enumerate(TASKS):
        x, y = data[t]["train"]
        # A parameter that gets no gradient (another head) is skipped by Adam, as torch does.
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        g = torch.Generator().manual_seed(args.seed * 1000 + i)
        t0 = time.time()
        for epoch in range(args.epochs):
            model.train()
            order = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), args.batch):
                b = order[s : s + args.batch]
                opt.zero_grad(set_to_none=True)
                loss = task_loss(t, model(x[b], t), y[b])
                if method == "ewc":
                    params = trunk_params(model)
                    for f, anchor in penalties:
                        for n, p in params.items():
                            loss = loss + args.lam * (f[n] * (p - anchor[n]) ** 2).sum()
                loss.backward()
                opt.step()
            xv, yv = data[t]["val"]
            print(f"reference: {method} stage {i + 1} ({t}) epoch {epoch + 1}: loss {loss.item():.4f}, "
                  f"val {METRIC[t]} {evaluate(model, t, xv, yv):.2f} ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
        record(i + 1)
        if method == "ewc":
            n = min(args.fisher_n, len(x))
            f = fisher(model, t, x[:n], y[:n])
            penalties.append((f, {k: p.detach().clone() for k, p in trunk_params(model).items()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of {seg,det,cls}-{train,val,test}.safetensors")
    ap.add_argument("--pretrained", help="the Lite0 ImageNet .pth (random trunk without it)")
    ap.add_argument("--methods", nargs="+", default=["finetune", "ewc"], choices=["finetune", "ewc"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--labels", type=int, default=80)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--decoder-channels", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lambda", dest="lam", type=float, default=1000.0)
    ap.add_argument("--fisher-n", type=int, default=256)
    ap.add_argument("--bn-momentum", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", default="-")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = {t: {p: load(f"{args.data}/{t}-{p}.safetensors") for p in ("train", "val", "test")} for t in TASKS}
    out = sys.stdout if args.output == "-" else open(args.output, "w")

    def emit(rec):
        rec["seed"] = args.seed
        out.write(json.dumps(rec) + "\n")
        out.flush()

    for method in args.methods:
        run(args, method, data, emit)


if __name__ == "__main__":
    main()
