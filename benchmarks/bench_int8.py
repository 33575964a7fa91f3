"""int8 weight-only quantization (quantize_int8) against float32 and bfloat16 on a Llama of SmolLM2-135M's shape.

    OMP_NUM_THREADS=2 python benchmarks/bench_int8.py                  # random weights, 3 rounds
    OMP_NUM_THREADS=2 python benchmarks/bench_int8.py --model_dir=path/to/SmolLM2-135M   # real weights

Variants: float32; bfloat16 (the model converted with .to(torch.bfloat16)); int8 (the float32 model
quantized: norms, attention and the residual stream stay float32, the int8 products take bfloat16
inputs, see Int8Linear.forward); int8 + bfloat16 (the bfloat16 model quantized). Each runs in a fresh
process, so that its resident memory is its own: the model is built (random weights from one seed, the
same in every process, or loaded from --model_dir), converted and quantized, and the process's resident
memory (and its peak) above what it held after its imports is read from /proc/self/status (Linux; with glibc's malloc
told to return every freed block of 64 kB or more, so that the float copies a conversion frees do not
count). Decoding is greedy at batch 1 from a 16-token prompt with the KV cache; tokens/s is timed from
the first new token to the last, so it is the per-token decode rate, prompt excluded.

Agreement with float32: the float32 process saves its greedy tokens and its next-token log-probabilities
over the prompt + its own continuation; every other variant reports where its greedy tokens first part
from float32's, the share of positions of that fixed sequence whose most likely token is float32's, and
the max and mean over positions of KL(float32 || variant).

Bandwidth: at batch 1 each weight matrix is read once per token, so bytes of weights per token x
tokens/s is the memory traffic decoding achieves; it is compared with this machine's read bandwidth,
measured here as the time to sum a 1 GB float32 tensor (and, for reference, to copy it).
Speed is timed apart from that, in one process holding all four models, which take turns in rounds
(float32, bfloat16, int8, int8 + bfloat16, then again), so that a slow moment of a shared machine
touches every variant; the table gives each variant's best round and the median.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import llama  # noqa: E402

VARIANTS = ["float32", "bfloat16", "int8", "int8 + bfloat16"]
SMOLLM2_135M = dict(block_size=2048, vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, n_embd=576, hidden_dim=1536,
                    tie_embeddings=True, rope_theta=100000.0)
PROMPT = 16


def resident_kb(key="VmRSS"):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def weight_bytes_per_token(model):
    """Bytes of the matrices a token's forward pass multiplies by (each read once), with int8's scales."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, llama.Int8Linear):
            total += module.weight.numel() + module.scale.numel() * module.scale.element_size()
    return total


def build(variant, model_dir):
    dtype = torch.bfloat16 if "bfloat16" in variant else torch.float32
    if model_dir:
        model = llama.Llama.from_pretrained(model_dir, dtype=dtype)
    else:
        torch.manual_seed(0)
        model = llama.Llama(llama.LlamaConfig(**SMOLLM2_135M)).to(dtype)
    model.eval()
    return llama.quantize_int8(model) if variant.startswith("int8") else model


def prompt_of(model):
    return torch.randint(0, model.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))


def decode_rate(model, new_tokens):
    """Greedy tokens/s from the first new token to the last (the prompt's forward pass excluded)."""
    times = []
    model.generate(prompt_of(model), new_tokens, temperature=0.0,
                   on_token=lambda token: times.append(time.perf_counter()))
    return (len(times) - 1) / (times[-1] - times[0])


def worker(variant, new_tokens, model_dir, reference_path, result_path):
    """Memory and agreement of one variant, in this (fresh) process; writes them as JSON to result_path."""
    base = resident_kb()
    model = build(variant, model_dir)
    resident = resident_kb() - base
    peak = resident_kb("VmHWM") - base
    out = model.generate(prompt_of(model), new_tokens, temperature=0.0)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(out[:, :-1])[0][0].float(), dim=-1)  # (T, vocab)
    result = dict(variant=variant, resident_mb=resident / 1024, peak_mb=peak / 1024,
                  weight_bytes=weight_bytes_per_token(model))
    if variant == "float32":
        torch.save({"tokens": out, "log_probs": log_probs}, reference_path)
    else:
        reference = torch.load(reference_path)
        same = (out[0, PROMPT:] == reference["tokens"][0, PROMPT:]).tolist()
        result["first_difference"] = same.index(False) if False in same else len(same)
        # Teacher-forced on float32's own continuation: the same contexts for both.
        with torch.no_grad():
            ours = torch.log_softmax(model(reference["tokens"][:, :-1])[0][0].float(), dim=-1)
        p_log = reference["log_probs"]
        kl = (p_log.exp() * (p_log - ours)).sum(dim=-1)
        result |= dict(kl_max=kl.max().item(), kl_mean=kl.mean().item(),
                       same_argmax=(ours.argmax(-1) == p_log.argmax(-1)).float().mean().item())
    with open(result_path, "w") as f:
        json.dump(result, f)


def measure_bandwidth(gigabytes=1.0, repeats=5):
    """(read GB/s from summing a large float32 tensor, copy GB/s counting its read and its write)."""
    x = torch.ones(int(gigabytes * 1e9 / 4))
    y = torch.empty_like(x)
    x.sum(), y.copy_(x)  # touch every page first
    read = copy = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        read = min(read, time.perf_counter() - start)
        start = time.perf_counter()
        y.copy_(x)
        copy = min(copy, time.perf_counter() - start)
    return x.numel() * 4 / read / 1e9, 2 * x.numel() * 4 / copy / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model_dir", default="", help="a Hugging Face Llama directory instead of random weights")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # variant, reference file, result file
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.new_tokens, args.model_dir, args.worker[1], args.worker[2])

    read_gbs, copy_gbs = measure_bandwidth()
    print(f"memory bandwidth: {read_gbs:.1f} GB/s read (sum of 1 GB), {copy_gbs:.1f} GB/s copy (read + write); "
          f"{torch.get_num_threads()} threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        reference, result_path = os.path.join(tmp, "reference.pt"), os.path.join(tmp, "result.json")
        for variant in VARIANTS:
            command = [sys.executable, os.path.abspath(__file__), "--worker", variant, reference, result_path,
                       f"--new_tokens={args.new_tokens}", f"--model_dir={args.model_dir}"]
            # glibc returns a freed allocation to the system only if it was mmap-ed, and after the
            # first large free it raises that threshold (up to 32 MB), so the float copies freed by
            # .to() and quantize_int8 would stay resident; a fixed threshold measures what is live.
            subprocess.run(command, check=True, env=os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"})
            with open(result_path) as f:
                results[variant] = json.load(f)
            print(f"{variant}: {results[variant]['resident_mb']:.0f} MB resident", flush=True)
    # Speed: all four models in this process, taking turns, so that a busy moment of the machine
    # slows every variant alike.
    models = {variant: build(variant, args.model_dir) for variant in VARIANTS}
    rates = {variant: [] for variant in VARIANTS}
    for model in models.values():
        decode_rate(model, 8)  # warm-up
    for round_ in range(args.rounds):
        for variant, model in models.items():
            rates[variant].append(decode_rate(model, args.new_tokens))
        print(f"round {round_ + 1}: " + ", ".join(f"{v} {r[-1]:.2f}" for v, r in rates.items()) + " tokens/s; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)

    print(f"\n| variant | weights read per token | resident memory (peak) | tokens/s, best (median) | GB/s, best "
          f"| of {read_gbs:.1f} GB/s | greedy tokens equal to float32's | same argmax | KL max | KL mean |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant, first in results.items():
        best, median = max(rates[variant]), statistics.median(rates[variant])
        gbs = first["weight_bytes"] * best / 1e9
        resident, peak = first["resident_mb"], first["peak_mb"]
        if variant == "float32":
            agreement = "(reference) | | | "
        else:
            agreement = (f"first {first['first_difference']} of {args.new_tokens} | {first['same_argmax']:.1%} | "
                         f"{first['kl_max']:.2e} | {first['kl_mean']:.2e}")
        print(f"| {variant} | {first['weight_bytes'] / 1e6:.0f} MB | {resident:.0f} MB ({peak:.0f} MB) | {best:.2f} "
              f"({median:.2f}) | {gbs:.1f} | {gbs / read_gbs:.0%} | {agreement} |")


if __name__ == "__main__":
    main()
