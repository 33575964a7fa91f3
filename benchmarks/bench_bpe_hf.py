"""Encoding speed of bpe.py on pretrained models' kinds of tokenizer.json, against Hugging Face `tokenizers`.

    python benchmarks/bench_bpe_hf.py [--input=FILE] [--repeats=1]

Each kind of file (SmolLM2's digits split, Llama 3's regex, Llama 2's SentencePiece style with and
without merges across spaces, Metaspace) is trained small by tests/test_bpe_hf.py's build() on the
first 40 KB of tiny Shakespeare, then the whole input is encoded in one call by bpe.py (a fresh
tokenizer, so an empty cache) and by HF `tokenizers`. Figures are MB/s of UTF-8 input per second of
this process's CPU time (both encoders use one thread for one text; CPU time is steadier than the clock
on a shared machine), best of --repeats; the two id sequences must be equal or the script stops.
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import bpe  # noqa: E402
from test_bpe_hf import build, shakespeare_lines  # noqa: E402

KINDS = ["smollm2", "llama3", "llama2", "llama2_wide", "metaspace"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    text = Path(args.input).read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    corpus = shakespeare_lines((REPO / "tests" / "data" / "tinyshakespeare_excerpt.txt").read_text(encoding="utf-8"))
    print(f"{args.input}: {megabytes:.2f} MB; MB per CPU second, best of {args.repeats}")
    print("| tokenizer.json kind | bpe.py `encode` | HF `tokenizers` `encode` |")
    print("|---|---|---|")
    for kind in KINDS:
        hf, _ = build(kind, corpus)
        spec = hf.to_str()
        path = Path("/tmp") / f"bench_bpe_hf_{kind}.json"
        path.write_text(spec, encoding="utf-8")
        ours_best = hf_best = float("inf")
        for _ in range(args.repeats):
            ours = bpe.Tokenizer.from_hf_tokenizer_json(str(path))  # fresh: empty pre-token cache
            start = time.process_time()
            ours_ids = ours.encode(text)
            ours_best = min(ours_best, time.process_time() - start)
            start = time.process_time()
            hf_ids = hf.encode(text, add_special_tokens=False).ids
            hf_best = min(hf_best, time.process_time() - start)
        if ours_ids != hf_ids:
            sys.exit(f"error: bpe.py's ids differ from HF's for {kind}")
        print(f"| {kind} | {megabytes / ours_best:.2f} | {megabytes / hf_best:.2f} |", flush=True)


if __name__ == "__main__":
    main()
