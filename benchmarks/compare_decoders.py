"""Benchmark: the decoders side by side — what did each change buy?

    python benchmarks/compare_decoders.py                          # 4 models x 1 seed, 2000 iterations
    python benchmarks/compare_decoders.py --seeds=1337,1338,1339   # three seeds, mean and range
    python benchmarks/compare_decoders.py --max_iters=500          # a quicker look
    python benchmarks/compare_decoders.py --generate               # also: olmo.py's cached generation vs HF

Trains gpt.py (learned positions, and sinusoidal ones), llama.py, olmo.py with RoPE and olmo.py with
ALiBi on their CPU presets (--models= picks a subset, e.g. --models="gpt (sinusoidal)"), which share
everything that is not the architecture: tiny Shakespeare at character level, 4 layers, 4 heads, 128
wide, context 64, batch 12, the same iterations, seed, schedule shape, float32 and no compile. (Each
preset keeps the learning rate measured best for its model: 3e-3 for gpt.py, 1e-3 for the others;
see the config files.) The runs happen one after another in a scratch directory. For each it reports
the parameter count, the median time per iteration of its run (start-up and evaluation left out), the
median time of a training step measured with the models taking turns in one process (fairer on a
shared machine: see step_times), and the val
loss at the training context (64) and at 2x and 4x that context, measured here on the same 65,536 val
tokens cut into non-overlapping sequences of each length (every token of each sequence counts, so a longer
context can only help a model that generalises to it). gpt.py's learned position table has 64 rows:
there is no embedding for position 64 and beyond, so its long-context columns are "n/a"; its
sinusoidal variant computes an encoding for any position, so it is evaluated there too. Llama and
OLMo have no table (RoPE and ALiBi are computed from positions), so only the block_size limit is
raised for the evaluation. Run it on an otherwise idle machine: with 2 cores any other load distorts
the times.

With --generate it also times olmo.py's KV-cached greedy generation of --new_tokens tokens against
Hugging Face's Olmo2ForCausalLM.generate() and Olmo3ForCausalLM.generate() (sliding windows) on the
same random weights (benchmarks/bench_generate.py's size: 6 layers, 384 wide, context 1024; best of two
alternating runs each), checking that both produce the same tokens. (Uncached generation, which bench_generate.py also times, is left
out: tests/test_olmo.py checks that it gives the same tokens, and on a busy 2-core machine it takes
minutes.) Needs transformers.
"""
import argparse
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHAKESPEARE = os.path.join(os.path.dirname(REPO), "shared", "data", "tinyshakespeare", "input.txt")

# name -> (script, preset, extra flags)
MODELS = {
    "gpt": ("gpt.py", "config/shakespeare_char_cpu.py", []),
    "gpt (sinusoidal)": ("gpt.py", "config/shakespeare_char_cpu.py", ["--pos_emb=sinusoidal"]),
    "llama": ("llama.py", "config/llama_shakespeare_char_cpu.py", []),
    "olmo (rope)": ("olmo.py", "config/olmo_shakespeare_char_cpu.py", ["--pos_emb=rope"]),
    "olmo (alibi)": ("olmo.py", "config/olmo_shakespeare_char_cpu.py", ["--pos_emb=alibi"]),
}
CONTEXT_MULTIPLES = (1, 2, 4)
EVAL_TOKENS = 65536  # the first 64K of tiny Shakespeare's 111K val tokens: every context sees the same ones


def train(name, seed, max_iters, work):
    """Train one model; return (checkpoint path, median ms per iteration)."""
    script, preset, extra = MODELS[name]
    out_dir = os.path.join(work, f"out-{name.replace(' ', '').replace('(', '-').replace(')', '')}-{seed}")
    command = [sys.executable, os.path.join(REPO, script), os.path.join(REPO, preset), *extra, f"--seed={seed}",
               f"--max_iters={max_iters}", f"--lr_decay_iters={max_iters}", f"--eval_interval={max_iters}",
               "--log_interval=1", "--always_save_checkpoint=True", f"--out_dir={out_dir}"]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    times = [float(t) for n, t in re.findall(r"iter (\d+): loss [0-9.]+, time ([0-9.]+)ms", result.stdout) if int(n) > 0]
    return os.path.join(out_dir, "ckpt.pt"), statistics.median(times)


@torch.no_grad()
def evaluate(checkpoint_path, val_tokens):
    """(parameters, {context: mean val loss or None}) of a checkpoint, on the same val tokens at each context."""
    import sample  # its MODELS table maps a checkpoint's model_type to the script's classes

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    module_name, model_class, config_class = sample.MODELS[checkpoint["model_type"]]
    module = importlib.import_module(module_name)
    trained_context = checkpoint["model_args"]["block_size"]
    losses, params = {}, None
    for multiple in CONTEXT_MULTIPLES:
        context = trained_context * multiple
        if checkpoint["model_args"].get("pos_emb") == "learned" and multiple > 1:
            losses[context] = None  # no learned position embedding exists past the trained context
            continue
        model = getattr(module, model_class)(getattr(module, config_class)(**(checkpoint["model_args"] | {"block_size": context})))
        model.load_state_dict(checkpoint["model"])
        model.eval()
        params = params or model.num_params()
        usable = min(EVAL_TOKENS, len(val_tokens) - 1) // context * context
        inputs = torch.from_numpy(val_tokens[:usable].astype(np.int64)).view(-1, context)
        targets = torch.from_numpy(val_tokens[1: usable + 1].astype(np.int64)).view(-1, context)
        total = 0.0
        for start in range(0, len(inputs), 32):
            _, loss = model(inputs[start:start + 32], targets[start:start + 32])
            total += loss.item() * len(inputs[start:start + 32])
        losses[context] = total / len(inputs)
    return params, losses


def compare_training(args):
    work = tempfile.mkdtemp(prefix="compare_decoders_")
    text = os.path.join(work, "data", "shakespeare_char", "input.txt")
    os.makedirs(os.path.dirname(text))
    if os.path.exists(SHAKESPEARE):
        shutil.copy(SHAKESPEARE, text)  # offline copy; otherwise prepare_data downloads it
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.models.split(",") if args.models else list(MODELS)
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        sys.exit(f"error: unknown model {unknown[0]!r}; choose from: {', '.join(MODELS)}")
    results = {name: [] for name in names}
    val_tokens = None
    for seed in seeds:
        for name in names:
            start = time.perf_counter()
            checkpoint, ms = train(name, seed, args.max_iters, work)
            if val_tokens is None:  # prepared by the first run
                val_tokens = np.fromfile(os.path.join(work, "data", "shakespeare_char", "val.bin"), dtype=np.uint16)
            params, losses = evaluate(checkpoint, val_tokens)
            results[name].append((params, ms, losses))
            shown = ", ".join(f"{c}: {v:.4f}" if v is not None else f"{c}: n/a" for c, v in losses.items())
            print(f"seed {seed} {name:13} {ms:6.2f} ms/iter  val loss {shown}  ({time.perf_counter() - start:.0f}s)",
                  flush=True)
    shutil.rmtree(work, ignore_errors=True)

    def summary(values):
        if any(v is None for v in values):
            return "n/a"
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    interleaved = step_times()
    contexts = list(results[names[0]][0][2])
    print(f"\n{args.max_iters} iterations, CPU presets (4x4x128, block 64, batch 12), float32, no compile, "
          f"seeds {args.seeds}; val loss: mean (min-max) over seeds")
    header = ["model", "params", "ms/iter (run)", "ms/step (interleaved)"] + [f"val loss @{c}" + (" (trained)" if i == 0 else "")
                                               for i, c in enumerate(contexts)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, runs in results.items():
        cells = [name, f"{runs[0][0] / 1e6:.2f}M", f"{statistics.median(r[1] for r in runs):.1f}",
                 f"{interleaved[name]:.1f}"]
        cells += [summary([r[2][c] for r in runs]) for c in contexts]
        print("| " + " | ".join(cells) + " |")


def step_times(rounds=3, steps=20):
    """Median ms per training step of each model, measured in one process, the models taking turns.

    Sequential training runs on a shared machine see different background load; here every model
    gets the same slices of time. Each model is built from its preset (parse_config of its own
    script, so exactly the preset's shape) and takes forward, backward and AdamW steps on one fixed
    12 x 64 batch, as the training loop does (float32, no compile).
    """
    import dataclasses

    torch.manual_seed(0)
    batch = torch.randint(0, 65, (12, 64))
    built = {}
    for name, (script, preset, extra) in MODELS.items():
        module = importlib.import_module(script.removesuffix(".py"))
        cfg = module.parse_config([os.path.join(REPO, preset), *extra], {k: getattr(module, k) for k in module.config_keys})
        config_class = next(v for k, v in vars(module).items() if k.endswith("Config") and dataclasses.is_dataclass(v))
        model_class = next(v for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, torch.nn.Module)
                           and k.lower() == script.removesuffix(".py"))
        fields = {f.name for f in dataclasses.fields(config_class)}
        args = {k: v for k, v in cfg.items() if k in fields}
        model = model_class(config_class(**(args | {"vocab_size": 65})))
        optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]), "cpu")
        built[name] = (model, optimizer, [])
    for _ in range(rounds):
        for model, optimizer, times in built.values():
            for _ in range(steps):
                start = time.perf_counter()
                _, loss = model(batch, batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(times) for name, (_, _, times) in built.items()}


def compare_generation(args):
    import olmo
    from transformers import Olmo2Config, Olmo2ForCausalLM, Olmo3Config, Olmo3ForCausalLM

    common = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                  num_key_value_heads=6, max_position_embeddings=1024, vocab_size=65, bos_token_id=None,
                  eos_token_id=None, pad_token_id=None)  # no end token: both generate all new_tokens
    cases = [("olmo2", Olmo2ForCausalLM(Olmo2Config(**common))),
             ("olmo3 (window 128)", Olmo3ForCausalLM(Olmo3Config(**common, sliding_window=128)))]
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, float32 on CPU, "
          f"{args.new_tokens} new tokens, greedy")
    print(f"{'model':20} {'cached':>9} {'HF generate':>12} {'HF/cached':>10}")
    for name, hf in cases:
        hf.eval()
        with tempfile.TemporaryDirectory() as directory:
            hf.save_pretrained(directory)
            model = olmo.OLMo.from_pretrained(directory).eval()
        prompt = torch.ones((1, 1), dtype=torch.long)

        def timed(fn):
            start = time.perf_counter()
            result = fn()
            return result, time.perf_counter() - start

        with torch.inference_mode():
            model.generate(prompt, 8, temperature=0.0)  # warm-up
            t_cached = t_hf = float("inf")
            for _ in range(2):  # alternating, best of two: less at the mercy of other load on the machine
                cached, t = timed(lambda: model.generate(prompt, args.new_tokens, temperature=0.0))
                t_cached = min(t_cached, t)
                reference, t = timed(lambda: hf.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False))
                t_hf = min(t_hf, t)
        if not torch.equal(cached, reference):
            sys.exit(f"error: {name}: ours and HF generated different tokens; timings not comparable")
        print(f"{name:20} {t_cached:8.2f}s {t_hf:11.2f}s {t_hf / t_cached:9.2f}x", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_iters", type=int, default=2000)
    parser.add_argument("--seeds", default="1337", help="comma-separated training seeds")
    parser.add_argument("--generate", action="store_true", help="also time cached generation against HF")
    parser.add_argument("--skip_training", action="store_true", help="only the --generate part and/or --step_timing")
    parser.add_argument("--step_timing", action="store_true", help="with --skip_training: only the interleaved step times")
    parser.add_argument("--new_tokens", type=int, default=1000)
    parser.add_argument("--models", default="", help=f"comma-separated subset of: {', '.join(MODELS)} (default all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if not args.skip_training:
        compare_training(args)
    elif args.step_timing:
        print("median ms per training step, models taking turns in one process:")
        for name, ms in step_times().items():
            print(f"  {name:13} {ms:6.1f}")
    if args.generate:
        compare_generation(args)


if __name__ == "__main__":
    main()
