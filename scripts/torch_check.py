#!/usr/bin/env python3
"""Check that a checkpoint written by mnemo loads into the equivalent torch module.

usage: torch_check.py CHECKPOINT ARCH [--data D] [--head H]

CHECKPOINT  a .safetensors file or an HF-style *.safetensors.index.json
ARCH        shorthand (mlp:784-400-10) or path to an .arch.json
            (relative to the cwd, else to fixtures/)

Loads with load_state_dict(strict=True) (names and shapes must match exactly)
and prints one JSON line {"loaded": true, "tensors": N}. With --data it prints
a second JSON line, torch's eval-mode result {"loss", "accuracy", "top5", "n"}
in the format of `mnemo eval`. Exits nonzero on any failure.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")
sys.path.insert(0, FIXTURES)
sys.dont_write_bytecode = True  # keep fixtures/ free of __pycache__


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("checkpoint")
    ap.add_argument("arch")
    ap.add_argument("--data", help="safetensors dataset with `input` and `target`")
    ap.add_argument("--head", help="head name for a multi-head arch")
    args = ap.parse_args()

    try:
        import torch
        from safetensors.torch import load_file

        import gen

        torch.set_num_threads(1)
        model, sd = gen.load_model(args.checkpoint, args.arch, FIXTURES)
        print(json.dumps({"loaded": True, "tensors": len(sd)}), flush=True)
        if args.data:
            data = load_file(args.data)
            for key in ("input", "target"):
                if key not in data:
                    raise ValueError(f"{args.data}: no tensor named {key!r}")
            res = gen.evaluate(model, data, args.head, logits_rows=0)
            print(json.dumps(res), flush=True)
        elif args.head is not None:
            raise ValueError("--head needs --data")
    except Exception as e:  # noqa: BLE001 - report anything as a failed check
        print(f"torch_check: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
