"""Generation speed on a real-size model at batch 1: llama.py against Hugging Face generate(), same dtype.

    python benchmarks/bench_generate_pretrained.py                      # SmolLM2-135M's shape, 200 tokens
    python benchmarks/bench_generate_pretrained.py --new_tokens=500 --dtypes=bfloat16

At batch 1 each new token reads every weight once, so a model's speed is bound by how fast its weights
stream through the memory system: 16-bit weights halve that traffic. A random Llama of SmolLM2-135M's
shape (134.5M parameters, 49152-token vocabulary) is saved in bfloat16, loaded by both libraries in
each dtype, and both generate greedily from the same 16-token prompt (timed after a warm-up). In
float32 the two must produce the same tokens (checked); in bfloat16 the two implementations round
differently, so their tokens may part ways after a while (reported, not required).

A shared or virtual machine's speed drifts by tens of percent over seconds, so one run of each
would compare two different machines. The two generations run as --repeats adjacent pairs (which
one goes first alternates); each pair gives a ratio under the same conditions, and the median of
those ratios is the figure to quote. The fastest run of each side is printed too.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new_tokens", type=int, default=200)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import transformers

    import llama

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                      max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=100000.0)
    prompt = torch.randint(0, 49152, (1, 16))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.new_tokens} new tokens, greedy, batch 1")
    print(f"{'dtype':9} {'llama.py':>10} {'HF generate':>12}  {'HF / ours, median of pairs (range)':34}  same tokens")
    with tempfile.TemporaryDirectory() as directory:
        transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            ours = llama.Llama.from_pretrained(directory, dtype=dtype).eval()
            hf = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=dtype).eval()
            generators = {
                "ours": lambda n: ours.generate(prompt, n, temperature=0.0),
                "hf": lambda n: hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0),
            }
            times, outputs = {"ours": [], "hf": []}, {}
            with torch.inference_mode():
                for generate in generators.values():
                    generate(4)  # warm-up
                for repeat in range(args.repeats):
                    for label in (("ours", "hf") if repeat % 2 == 0 else ("hf", "ours")):
                        start = time.perf_counter()
                        outputs[label] = generators[label](args.new_tokens)
                        times[label].append(time.perf_counter() - start)
            same = torch.equal(outputs["ours"], outputs["hf"])
            if name == "float32" and not same:
                sys.exit("error: float32 tokens differ between llama.py and HF; the timings compare different work")
            ratios = [hf_time / our_time for our_time, hf_time in zip(times["ours"], times["hf"])]
            print(f"{name:9} {min(times['ours']):9.2f}s {min(times['hf']):11.2f}s  {statistics.median(ratios):5.2f}x "
                  f"({min(ratios):.2f}x-{max(ratios):.2f}x){'':19}  {same}")
            del ours, hf


if __name__ == "__main__":
    main()
