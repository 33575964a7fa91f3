"""Peak memory of fine-tuning a 135M-parameter Llama through llama.py's main(): full, LoRA, and with
activation checkpointing.

    python benchmarks/bench_finetune_memory.py                                # block_size 1024, 20 iterations
    python benchmarks/bench_finetune_memory.py --block_size=256 --iters=5     # quicker on a small CPU
    python benchmarks/bench_finetune_memory.py --variants=full,lora_qv        # some rows only

A random Llama of SmolLM2-135M's shape (30 layers, 576 wide, 9 query and 3 key/value heads, SwiGLU
1536, vocabulary 49152, tied embeddings) is saved once as a Hugging Face directory, with a small
byte-level BPE tokenizer.json trained here on tiny Shakespeare (its ids fit in the model's
vocabulary; the real SmolLM2 tokenizer cannot be downloaded on the machine this was written on), and
tiny Shakespeare is tokenized with it. Random weights cost the same memory and time as trained ones;
only the losses mean less (they start near log(49152) = 10.8, not near a trained model's).

Each variant then trains in a fresh process (llama.main with init_from=<that directory>, batch 1,
float32 on the CPU, no compile), which reports its peak resident memory (VmHWM, reset after the
imports) minus what it held after importing torch and the script (Linux only: it reads /proc/self),
so every row pays for its own weights, gradients, optimizer state and activations and nothing else.
Time per iteration is the median of the logged iterations after the first; the loss is the last
iteration's training loss.

Another row (e.g. FSDP over 2 processes) is one more entry in VARIANTS: its extra llama.py keys, and
`processes` > 1 to launch it under torchrun (then each process reports its own peak; the row shows
the largest, the memory one machine of that many needs per process).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048)

# name -> (llama.py keys beyond the common ones, processes)
VARIANTS = {
    "full": ([], 1),
    "lora_qv": (["--lora_rank=8", "--lora_targets=q,v"], 1),
    "lora_all": (["--lora_rank=8", "--lora_targets=all"], 1),
    "full_ckpt": (["--activation_checkpointing=True"], 1),
    "lora_all_ckpt": (["--lora_rank=8", "--lora_targets=all", "--activation_checkpointing=True"], 1),
}

MEASURE = r"""
import json, os, sys
sys.path.insert(0, {repo!r})
import torch
import llama

def status(key):  # resident memory figures of this process, in kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size: imports do not count
base = status("VmRSS")
llama.main(sys.argv[1:])
print("MEMORY " + json.dumps(dict(peak_kb=status("VmHWM") - base, rank=int(os.environ.get("RANK", 0)))))
"""


def prepare(root, text_path):
    """The HF directory (random weights, SmolLM2-135M's shape) and a dataset tokenized with its tokenizer."""
    import tokenizers
    import torch
    import transformers

    sys.path.insert(0, REPO)
    import prepare_data

    model_dir = os.path.join(root, "smollm2-shape")
    os.makedirs(model_dir, exist_ok=True)
    with open(text_path) as f:
        text = f.read()
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator([text], tokenizers.trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(os.path.join(model_dir, "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SHAPE, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    prepare_data.prepare("bench_ft", input_path=text_path, tokenizer=model_dir, data_root=os.path.join(root, "data"))
    return model_dir


def run(root, model_dir, name, args):
    extra, processes = VARIANTS[name]
    script = os.path.join(root, "measure.py")
    with open(script, "w") as f:
        f.write(MEASURE.format(repo=REPO))
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = launcher + [script, f"--init_from={model_dir}", "--dataset=bench_ft", "--device=cpu", "--dtype=float32",
                          "--compile=False", "--batch_size=1", "--gradient_accumulation_steps=1",
                          f"--block_size={args.block_size}", f"--max_iters={args.iters}", "--eval_interval=100000",
                          "--eval_iters=1", "--log_interval=1", "--learning_rate=1e-3", "--warmup_iters=0",
                          "--weight_decay=0.0", f"--out_dir=out-{name}", *extra]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    peaks = [json.loads(line[len("MEMORY "):])["peak_kb"] for line in out.stdout.splitlines() if line.startswith("MEMORY ")]
    iters = re.findall(r"iter (\d+): loss ([0-9.]+), time ([0-9.]+)ms", out.stdout)
    times = sorted(float(t) for i, _, t in iters if int(i) > 0)
    trainable = re.search(r"parameters: ([0-9.]+)M \(([0-9.]+)M trainable\)", out.stdout)
    return dict(variant=name, peak_mb=max(peaks) / 1024, ms_per_iter=times[len(times) // 2] if times else float("nan"),
                loss=float(iters[-1][1]), params_m=float(trainable.group(1)), trainable_m=float(trainable.group(2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each training process")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--text", default=None, help="the text to fine-tune on (default: tiny Shakespeare)")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    text = args.text
    if text is None:  # the shared copy the tests use, else prepare_data.py's own search (or download)
        sys.path.insert(0, REPO)
        import prepare_data

        text = os.path.join(os.path.dirname(REPO), "shared", "data", "tinyshakespeare", "input.txt")
        if not os.path.isfile(text):
            try:
                text = prepare_data.shakespeare_input("shakespeare_char", os.path.join(REPO, "data"))
            except prepare_data.DataError as e:
                sys.exit(f"error: {e}; pass --text=FILE")
    with tempfile.TemporaryDirectory() as root:
        model_dir = prepare(root, text)
        print(f"block_size {args.block_size}, batch 1, {args.iters} iterations, float32 on the CPU "
              f"({args.threads} threads)")
        print(f"| variant | parameters (trainable) | peak RSS over imports | time/iter | loss at iter {args.iters - 1} |")
        print("|---|---|---|---|---|")
        rows = []
        for name in names:
            r = run(root, model_dir, name, args)
            rows.append(r)
            ratio = f" ({r['peak_mb'] / rows[0]['peak_mb']:.2f}x {rows[0]['variant']})" if len(rows) > 1 else ""
            print(f"| {name} | {r['params_m']:.1f}M ({r['trainable_m']:.2f}M) | {r['peak_mb']:,.0f} MB{ratio} | "
                  f"{r['ms_per_iter'] / 1000:.2f} s | {r['loss']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
