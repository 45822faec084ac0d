#!/usr/bin/env python3
"""Check that a LoRA adapter written by `mnemo lora-gate` loads into PEFT and computes what
mnemo's merged checkpoint computes.

usage: peft_check.py BASE ARCH ADAPTER_DIR MERGED DATA

Loads BASE into the torch module of ARCH, wraps it with PeftModel.from_pretrained(ADAPTER_DIR)
(strict: every adapter key must be consumed), evaluates it in eval mode on DATA, and compares
the logits with those of MERGED (mnemo's W + scale·B·A) loaded into a plain torch module, and
the adapter's merge_and_unload() weights with MERGED's. Prints one JSON line; exits 1 when a
difference exceeds 1e-5.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")
sys.path.insert(0, FIXTURES)
sys.dont_write_bytecode = True


def main():
    base, arch, adapter, merged, data = sys.argv[1:6]
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    import gen

    torch.set_num_threads(1)
    d = load_file(data)
    x = d["input"].float() / 255.0 if d["input"].dtype == torch.uint8 else d["input"]
    model, _ = gen.load_model(base, arch, FIXTURES)
    peft = PeftModel.from_pretrained(model, adapter)
    peft.eval()
    ours, _ = gen.load_model(merged, arch, FIXTURES)
    ours.eval()
    with torch.no_grad():
        lp, lo = peft(x), ours(x)
    logit_err = (lp - lo).abs().max().item()
    folded = peft.merge_and_unload().state_dict()
    mine = ours.state_dict()
    weight_err = max((folded[k] - mine[k]).abs().max().item() for k in mine)
    ok = logit_err <= 1e-5 and weight_err <= 1e-5
    print(json.dumps({"peft_loaded": True, "max_logit_diff": logit_err,
                      "max_weight_diff": weight_err, "ok": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
