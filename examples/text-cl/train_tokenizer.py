#!/usr/bin/env python3
"""The example's tokenizer: a GPT-2-style byte-level BPE of 2,048 tokens (`<|endoftext|>`
first) trained with Hugging Face `tokenizers` on both domains, as a user fixes one before
training. Its output, tokenizer.json, is committed; rerun only to change it.

usage: train_tokenizer.py DATA_DIR OUT.json   (DATA_DIR from fetch.sh)
"""
import glob
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def main():
    data, out = sys.argv[1], sys.argv[2]
    files = sorted(glob.glob(os.path.join(data, "fortunes", "*.txt")))
    files += sorted(glob.glob(os.path.join(data, "pydocs", "*.txt")))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train(files, trainer)
    tok.save(out)


if __name__ == "__main__":
    main()
