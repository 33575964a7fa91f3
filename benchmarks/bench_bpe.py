"""Benchmark bpe.py against the Rust tokenizers, side by side on this machine.

    python benchmarks/bench_bpe.py [--input=FILE] [--gpt2_dir=DIR] [--repeats=3]

Training: bpe.py's train_bpe vs Hugging Face `tokenizers` (BpeTrainer with the
ByteLevel pre-tokenizer, i.e. the same GPT-2 regex and byte alphabet) to vocab
1024 and 4096. Encoding: MB/s of UTF-8 input with GPT-2's merges, single
process, for bpe.py, tiktoken and HF `tokenizers`, plus bpe.py's parallel
encode_file_to_bin. Each figure is the best of --repeats runs (the least
disturbed by other load on the machine). The id sequences are compared too, so
a fast but wrong result cannot go unnoticed.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import bpe  # noqa: E402

GPT2_VOCAB_BPE = "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"
GPT2_ENCODER_JSON = "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"


def best_time(function, repeats, setup=None):
    """(best seconds, result of the last call) over `repeats` calls. If given,
    setup() runs untimed before each call and its result is passed in."""
    best, result = float("inf"), None
    for _ in range(repeats):
        arguments = (setup(),) if setup else ()
        start = time.perf_counter()
        result = function(*arguments)
        best = min(best, time.perf_counter() - start)
    return best, result


def train_hf(path, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([path], trainer)
    return tokenizer


def hf_gpt2(encoder_json, vocab_bpe):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE.from_file(encoder_json, vocab_bpe))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=str(REPO.parent / "shared/data/tinyshakespeare/input.txt"))
    parser.add_argument("--gpt2_dir", default=os.environ.get(
        "TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared/data/tiktoken_cache")))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.path.isfile(args.input):
        sys.exit(f"error: input file {args.input!r} does not exist; pass --input=FILE")
    encoder_json = os.path.join(args.gpt2_dir, GPT2_ENCODER_JSON)
    vocab_bpe = os.path.join(args.gpt2_dir, GPT2_VOCAB_BPE)
    if not (os.path.isfile(encoder_json) and os.path.isfile(vocab_bpe)):
        sys.exit(f"error: GPT-2's encoder.json/vocab.bpe not found in {args.gpt2_dir}; pass --gpt2_dir")
    # tiktoken reads GPT-2's files from this cache directory, so it works offline.
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", args.gpt2_dir)
    import tiktoken

    size_mb = os.path.getsize(args.input) / 1e6
    cores = os.cpu_count()
    print(f"input: {args.input} ({size_mb:.2f} MB), {cores} CPU cores, best of {args.repeats}")

    print("\nTraining (seconds, lower is better)")
    print(f"{'vocab':>6} | {'bpe.py':>8} | {'HF tokenizers':>13} | ratio")
    for vocab_size in (1024, 4096):
        ours, _ = best_time(lambda: bpe.train_bpe(args.input, vocab_size), args.repeats)
        theirs, _ = best_time(lambda: train_hf(args.input, vocab_size), args.repeats)
        print(f"{vocab_size:>6} | {ours:>8.2f} | {theirs:>13.2f} | {ours / theirs:.1f}x")
    print("(HF tokenizers is Rust and multithreaded; bpe.py is Python, with"
          f" pre-tokenization spread over {cores} processes)")

    print("\nEncoding with GPT-2's merges (MB/s of UTF-8 input, higher is better)")
    with open(args.input, encoding="utf-8", newline="") as file:
        text = file.read()
    reference = tiktoken.get_encoding("gpt2").encode(text, allowed_special="all")

    gpt2_ours = bpe.Tokenizer.from_gpt2_files(encoder_json, vocab_bpe)
    meta = gpt2_ours.to_meta()
    rows = []
    # Cold: a fresh tokenizer per run (built untimed), so its pre-token cache
    # starts empty, as for a new corpus. Warm: the same text again, all cached.
    seconds, ids = best_time(lambda tok: tok.encode(text), args.repeats,
                             setup=lambda: bpe.Tokenizer.from_meta(meta))
    rows.append(("bpe.py encode, cold cache", seconds, ids == reference))
    gpt2_ours.encode(text)
    seconds, ids = best_time(lambda: gpt2_ours.encode(text), args.repeats)
    rows.append(("bpe.py encode, warm cache", seconds, ids == reference))
    encoding = tiktoken.get_encoding("gpt2")
    seconds, ids = best_time(lambda: encoding.encode(text, allowed_special="all"), args.repeats)
    rows.append(("tiktoken", seconds, ids == reference))
    hf = hf_gpt2(encoder_json, vocab_bpe)
    seconds, ids = best_time(lambda: hf.encode(text).ids, args.repeats)
    rows.append(("HF tokenizers (one string)", seconds, ids == reference))
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "out.bin")
        for processes in (1, cores):
            seconds, _ = best_time(
                lambda tok: bpe.encode_file_to_bin(tok, args.input, output, num_processes=processes),
                args.repeats, setup=lambda: bpe.Tokenizer.from_meta(meta),
            )
            ids = np.fromfile(output, dtype=np.uint16).tolist()
            rows.append((f"bpe.py encode_file_to_bin, {processes} proc", seconds, ids == reference))
    print(f"{'tokenizer':<36} | {'MB/s':>6} | same ids as tiktoken")
    for name, seconds, same in rows:
        print(f"{name:<36} | {size_mb / seconds:>6.2f} | {same}")
    print("(encode_file_to_bin starts with a cold cache and includes reading the file,"
          " starting worker processes and writing the .bin)")


if __name__ == "__main__":
    main()
