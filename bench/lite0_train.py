#!/usr/bin/env python3
"""PyTorch side of bench/lite0_train.sh: STEPS training steps of the Lite0 multi-task model's
seg path (efficientnet-lite-pytorch trunk at 64 px, the seg decoder as mnemo's
effnet_multitask, dice + BCE, Adam 1e-3, batch 32) on the same normalized data file; prints
seconds for the steps after one warm-up step. Threads: 2, as mnemo's."""
import sys, time, torch, torch.nn as nn, torch.nn.functional as F
from safetensors.torch import load_file
from efficientnet_lite_pytorch import EfficientNet

torch.set_num_threads(2); torch.manual_seed(0)
data, steps, channels_last = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
d = load_file(data); x, y = d["input"], d["target"].float()
trunk = EfficientNet.from_name("efficientnet-lite0", image_size=64, drop_connect_rate=0.0)
cbr = lambda i, o, k: [nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
up = lambda: nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), *cbr(64, 64, 3))
seg = nn.Sequential(*cbr(1280, 64, 1), up(), up(), up(), nn.Conv2d(64, 1, 1),
                    nn.Upsample(scale_factor=4, mode="bilinear"))
model = nn.Sequential(); model.trunk, model.seg = trunk, seg
if channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
opt = torch.optim.Adam(model.parameters(), 1e-3); model.train()
def step(i):
    b = slice((i * 32) % (len(x) - 32), (i * 32) % (len(x) - 32) + 32)
    z = seg(trunk.extract_features(x[b]))[:, 0]; t = y[b]; p = torch.sigmoid(z)
    dice = (1 - (2 * (p * t).flatten(1).sum(1) + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)).mean()
    loss = dice + F.binary_cross_entropy_with_logits(z, t)
    opt.zero_grad(); loss.backward(); opt.step()
step(0); t0 = time.perf_counter()
for i in range(1, steps + 1): step(i)
print(f"{time.perf_counter() - t0:.3f}")
