"""Peak memory of loading a pretrained Llama: llama.py's from_pretrained against Hugging Face's.

    python benchmarks/bench_load_memory.py                 # a random Llama of Llama 3.2 1B's shape (1.24B)
    python benchmarks/bench_load_memory.py --shape=135m    # SmolLM2-135M's shape, quicker

The checkpoint is saved once in bfloat16 (as real ones are) into a temporary directory. Each loader
then runs in a fresh process, which loads the model and runs one forward pass over 16 tokens (so that
every weight has really been read: a memory-mapped load that touched nothing would look free), and
reports its peak resident memory (VmHWM, reset after the imports) minus what the process held after
importing torch and transformers (Linux only: it reads /proc/self). The figures are compared with the weights' own size in memory.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
}

MEASURE = r"""
import json, sys
sys.path.insert(0, {repo!r})
import torch, transformers
import llama
torch.set_num_threads(2)

def status(key):  # resident memory figures of this process, in kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size: imports do not count
base = status("VmRSS")
loader, directory = sys.argv[1], sys.argv[2]
if loader == "ours-bfloat16":
    model = llama.Llama.from_pretrained(directory, dtype=torch.bfloat16)
elif loader == "ours-float32":
    model = llama.Llama.from_pretrained(directory)
elif loader == "hf-bfloat16":
    model = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
else:
    model = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
after_load = status("VmHWM")
with torch.no_grad():
    model(torch.arange(16)[None])
peak = status("VmHWM")
params = sum(p.numel() for p in model.parameters())
print(json.dumps(dict(load_kb=after_load - base, peak_kb=peak - base, params=params)))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="1b")
    args = parser.parse_args()
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        config = transformers.LlamaConfig(max_position_embeddings=2048, **SHAPES[args.shape])
        with torch.device("meta"):  # only to count; the real model is built in bfloat16 below
            n_params = sum(p.numel() for p in transformers.LlamaForCausalLM(config).parameters())
        print(f"building a random {n_params / 1e9:.2f}B-parameter Llama ({args.shape} shape) in bfloat16 ...")
        torch.set_default_dtype(torch.bfloat16)
        transformers.LlamaForCausalLM(config).save_pretrained(directory)
        torch.set_default_dtype(torch.float32)
        size_gb = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)) / 1e9
        print(f"saved {size_gb:.2f} GB")
        print(f"{'loader':16} {'weights':>9} {'peak after load':>16} {'peak after a forward':>21} {'ratio':>6}")
        for loader in ("ours-bfloat16", "hf-bfloat16", "ours-float32", "hf-float32"):
            result = subprocess.run([sys.executable, "-c", MEASURE.format(repo=REPO), loader, directory],
                                    capture_output=True, text=True, check=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            weights_gb = figures["params"] * (2 if "bfloat16" in loader else 4) / 1e9
            load_gb, peak_gb = figures["load_kb"] * 1024 / 1e9, figures["peak_kb"] * 1024 / 1e9
            print(f"{loader:16} {weights_gb:8.2f}G {load_gb:15.2f}G {peak_gb:20.2f}G {peak_gb / weights_gb:5.2f}x")


if __name__ == "__main__":
    main()
