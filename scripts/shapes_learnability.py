#!/usr/bin/env python3
"""Is `mnemo data shapes` learnable, and not trivially? A small torch CNN on each task.

Usage (after writing tr_TASK.st / va_TASK.st with `mnemo data shapes`, e.g.
`mnemo data shapes -n 3000 --task cls --seed 1 -o tr_cls.st` and `-n 500 --seed 2` for va_):
    .venv/bin/python scripts/shapes_learnability.py cls|seg|det EPOCHS
Three conv blocks (16/32/64, batchnorm, ReLU, two max-pools), Adam 3e-3, batch 64; cls: a
linear head on the pooled features (5 classes), det: the same with 5 sigmoid outputs, seg: a
4x bilinear upsample and a conv to one channel. Prints validation accuracy, foreground IoU,
or mAP (sklearn, macro) per epoch.
"""
import sys, time, torch, torch.nn as nn, torch.nn.functional as F
from safetensors.torch import load_file
torch.manual_seed(0); torch.set_num_threads(2)
task = sys.argv[1]; epochs = int(sys.argv[2])
tr, va = load_file(f"tr_{task}.st"), load_file(f"va_{task}.st")
X = tr["input"].float() / 255; Y = tr["target"]; Xv = va["input"].float() / 255; Yv = va["target"]
def block(i, o): return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
trunk = nn.Sequential(block(3, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2), block(32, 64))
if task == "seg":
    head = nn.Sequential(nn.Upsample(scale_factor=4, mode="bilinear"), nn.Conv2d(64, 1, 3, padding=1))
else:
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5))
m = nn.Sequential(trunk, head); opt = torch.optim.Adam(m.parameters(), 3e-3)
def loss(z, y):
    if task == "cls": return F.cross_entropy(z, y)
    if task == "seg": return F.binary_cross_entropy_with_logits(z[:, 0], y.float())
    return F.binary_cross_entropy_with_logits(z, y.float())
for ep in range(epochs):
    t = time.time(); m.train(); p = torch.randperm(len(X))
    for i in range(0, len(X), 64):
        b = p[i:i+64]; opt.zero_grad(); l = loss(m(X[b]), Y[b]); l.backward(); opt.step()
    m.eval()
    with torch.no_grad(): z = torch.cat([m(Xv[i:i+100]) for i in range(0, len(Xv), 100)])
    if task == "cls": s = f"acc {(z.argmax(1) == Yv).float().mean():.3f}"
    elif task == "seg":
        pr, t_ = z[:, 0] > 0, Yv == 1; s = f"fg IoU {(pr & t_).sum() / (pr | t_).sum():.3f}"
    else:
        from sklearn.metrics import average_precision_score
        s = f"mAP {average_precision_score(Yv.numpy(), z.numpy(), average='macro'):.3f} exact-set {((z > 0) == (Yv == 1)).all(1).float().mean():.3f}"
    print(task, ep + 1, f"loss {l.item():.3f}", s, f"{time.time() - t:.1f}s", flush=True)
