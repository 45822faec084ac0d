"""The PyTorch side of bench/online.sh: what a user writes for online learning with an EMA.

Per example of the stream (in file order): score it in eval mode (prequential), one SGD step
on it in train mode, then AveragedModel(get_ema_multi_avg_fn(decay)).update_parameters.
Prints the seconds the loop took (data loading and model construction outside the timer).
Usage: python bench/online.py DATA.safetensors MODEL.safetensors N
"""
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def main():
    data, weights, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    d = load_file(data)
    x = d["input"][:n].float() / 255
    y = d["target"][:n].long()
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    sd = load_file(weights)
    model.load_state_dict({k: v for k, v in sd.items()})
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    correct = 0
    t0 = time.perf_counter()
    for i in range(n):
        xi, yi = x[i:i + 1], y[i:i + 1]
        model.eval()
        with torch.no_grad():
            correct += int(model(xi).argmax(1) == yi)
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xi), yi).backward()
        opt.step()
        ema.update_parameters(model)
    print(f"{time.perf_counter() - t0:.4f} {correct / n:.4f}")


if __name__ == "__main__":
    main()
