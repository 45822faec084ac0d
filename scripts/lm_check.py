#!/usr/bin/env python3
"""Check that what `mnemo lora-gate` writes for a transformers model loads in transformers
and PEFT and computes what mnemo computed.

usage: lm_check.py BASE_DIR ADAPTER_DIR MERGED_DIR DATA

Loads BASE_DIR with AutoModelForCausalLM, wraps it with PeftModel.from_pretrained(ADAPTER_DIR)
and compares its logits on DATA's `input` (eval mode) with those of MERGED_DIR (mnemo's
folded folder) loaded with AutoModelForCausalLM, and merge_and_unload()'s weights with
MERGED_DIR's. Prints one JSON line; exits 1 when a difference exceeds 1e-5 (relative to
the largest logit).
"""
import json
import sys


def main():
    base, adapter, merged, data = sys.argv[1:5]
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    ids = load_file(data)["input"]
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32,
                                                          attn_implementation="eager")
    peft = PeftModel.from_pretrained(load(base), adapter)
    peft.eval()
    ours = load(merged)
    ours.eval()
    with torch.no_grad():
        a = peft(ids).logits
        b = ours(ids).logits
    scale = max(1.0, float(a.abs().max()))
    logits = float((a - b).abs().max()) / scale
    folded = peft.merge_and_unload().state_dict()
    mine = ours.state_dict()
    weights = max(float((folded[k] - mine[k]).abs().max()) for k in folded)
    ok = logits <= 1e-5 and weights <= 1e-5
    print(json.dumps({"ok": ok, "logits_rel_diff": logits, "weights_max_diff": weights,
                      "tensors": len(folded)}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
