"""Benchmark: KV-cached generation against recomputing the context, and against HF transformers.

    python benchmarks/bench_generate.py                 # gpt and llama, 1000 new tokens
    python benchmarks/bench_generate.py --model=gpt --new_tokens=200

For each model it builds a random Hugging Face model at the GPU-config size (6 layers, 6 heads,
384 wide; context 1024 so that 1000 new tokens fit), saves it, loads the same weights with our
from_pretrained, and times greedy generation of --new_tokens tokens from a one-token prompt three
ways: ours with the cache, ours without it (the whole context rerun each step), and HF's
generate(). Greedy decoding makes the three produce the same tokens, which is checked, so the
timings compare equal work. Needs transformers (pip install -r requirements-dev.txt).
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hf_gpt2(vocab_size):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_positions=1024, n_embd=384, n_layer=6, n_head=6, vocab_size=vocab_size,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def hf_llama(vocab_size):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                         num_key_value_heads=6, max_position_embeddings=1024, vocab_size=vocab_size,
                         bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(config)


def ours(model_name, directory):
    if model_name == "gpt":
        import gpt

        return gpt.GPT.from_pretrained(directory)
    import llama

    return llama.Llama.from_pretrained(directory)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["gpt", "llama", "all"], default="all")
    parser.add_argument("--new_tokens", type=int, default=1000)
    parser.add_argument("--vocab_size", type=int, default=65, help="65: the character-level Shakespeare vocabulary")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 on CPU, "
          f"{args.new_tokens} new tokens, greedy")
    print(f"{'model':6} {'cached':>9} {'uncached':>9} {'HF generate':>12} {'uncached/cached':>16} {'HF/cached':>10}")
    for model_name in (["gpt", "llama"] if args.model == "all" else [args.model]):
        hf = (hf_gpt2 if model_name == "gpt" else hf_llama)(args.vocab_size).eval()
        with tempfile.TemporaryDirectory() as directory:
            hf.save_pretrained(directory)
            model = ours(model_name, directory).eval()
        prompt = torch.zeros((1, 1), dtype=torch.long)
        with torch.inference_mode():
            model.generate(prompt, 8, temperature=0.0)  # warm-up: first-call allocations
            cached, t_cached = timed(lambda: model.generate(prompt, args.new_tokens, temperature=0.0))
            uncached, t_uncached = timed(lambda: model.generate(prompt, args.new_tokens, temperature=0.0,
                                                                use_cache=False))
            reference, t_hf = timed(lambda: hf.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False,
                                                        min_new_tokens=args.new_tokens, pad_token_id=0))
        if not (torch.equal(cached, uncached) and torch.equal(cached, reference)):
            sys.exit(f"error: {model_name}: the three paths generated different tokens; timings not comparable")
        print(f"{model_name:6} {t_cached:8.2f}s {t_uncached:8.2f}s {t_hf:11.2f}s {t_uncached / t_cached:15.1f}x "
              f"{t_hf / t_cached:9.2f}x")


if __name__ == "__main__":
    main()
