#!/usr/bin/env python3
"""The PyTorch side of bench/lm_train.sh: the same Llama folder and token data, the training
loop a transformers user writes (AdamW, causal-LM loss, eager attention, train mode), timed
after one warm-up step; prints seconds for STEPS steps and the last loss.

usage: lm_train.py MODEL_DIR DATA BATCH STEPS
"""
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    folder, data, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
    d = load_file(data)
    ids, labels = d["input"], d["target"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    n = ids.shape[0]

    def step(i):
        s = (i * batch) % n
        out = model(ids[s:s + batch], labels=labels[s:s + batch])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        return out.loss.item()

    step(0)
    t = time.perf_counter()
    for i in range(1, steps + 1):
        loss = step(i)
    print(f"{time.perf_counter() - t:.4f} {loss:.4f}")


if __name__ == "__main__":
    main()
