"""Encoder-decoder (t5.py) against decoder-only (gpt.py) on the numbers task, at about the same
parameter count and the same wall-clock training time.

    python benchmarks/compare_numbers.py                 # 300 s of training each, then exact match
    python benchmarks/compare_numbers.py --seconds=600

Both read the same prepared dataset (python prepare_data.py numbers: 200,000 training pairs, 2,000
held-out numbers). t5.py trains on (input, target) pairs with the loss on the target only. gpt.py
trains on the dataset as one stream of lines "4,321<TAB>four thousand ...<NEWLINE>" in windows of 32
tokens, with its usual loss on every next token: the inputs and the line breaks too (the loss is on
everything, not on the answer only). Each runs as its own process with a constant learning rate
after warmup (the same for both: a cosine schedule needs a known end, and a time budget has none),
checkpoints every 50 iterations and is stopped when its time is up; its last checkpoint is then
decoded greedily on all held-out numbers: T5 from the input, GPT from the prompt "4,321<TAB>" up to
the newline. Prints a table: parameters, iterations reached, exact match.
"""
import argparse
import os
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import gpt  # noqa: E402
import prepare_data  # noqa: E402
import t5  # noqa: E402

COMMON = ["--dataset=numbers", "--device=cpu", "--compile=False", "--dtype=float32", "--dropout=0.0",
          "--gradient_accumulation_steps=1", "--beta2=0.99", "--learning_rate=1e-3", "--decay_lr=True", "--warmup_iters=50", "--lr_decay_iters=1000000",
          "--min_lr=1e-3", "--eval_interval=50", "--eval_iters=2", "--log_interval=50",
          "--always_save_checkpoint=True", "--max_iters=1000000"]
T5_ARGS = ["--n_layer=2", "--n_decoder_layer=2", "--n_head=4", "--n_embd=128", "--head_dim=32", "--n_ff=512",
           "--batch_size=32", "--block_size=16", "--target_block_size=16", "--eval_exact_match=0"]
# 4 blocks of 128 channels: 0.80M parameters against T5's 0.93M (T5's decoder blocks carry a third
# attention, so equal depth would give the GPT fewer parameters still). 16 windows of 32 tokens: 512
# tokens per iteration, T5's 32 pairs hold ~541.
GPT_ARGS = ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=32", "--batch_size=16"]


def train(script, args, out_dir, seconds, workdir):
    """Run script for `seconds` of wall-clock time; return the iterations its last checkpoint holds."""
    command = [sys.executable, os.path.join(REPO, script), *COMMON, *args, f"--out_dir={out_dir}"]
    log = open(os.path.join(workdir, os.path.basename(out_dir) + ".log"), "w")
    process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                               env=os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()
    log.close()
    checkpoint = torch.load(os.path.join(workdir, out_dir, "ckpt.pt"), map_location="cpu", weights_only=True)
    return checkpoint


@torch.no_grad()
def gpt_exact_match(checkpoint, pairs, stoi):
    """Greedy GPT continuations of "input<TAB>" compared with "target<NEWLINE>"."""
    model = gpt.GPT(gpt.GPTConfig(**checkpoint["model_args"])).eval()
    model.load_state_dict(checkpoint["model"])
    tab, newline = stoi["\t"], stoi["\n"]
    by_length = {}
    for source, target in pairs:  # one batch per input length: gpt.py's prompts are not padded
        by_length.setdefault(len(source), []).append((source, target))
    correct = 0
    for length, group in by_length.items():
        prompts = torch.tensor([source.tolist() + [tab] for source, _ in group])
        out = model.generate(prompts, 12, temperature=0.0, eos_token_id=newline)[:, length + 1:]
        for row, (_, target) in zip(out.tolist(), group):
            expected = target.tolist() + [newline]
            correct += row[:len(expected)] == expected
    return correct / len(pairs), model.num_params()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=300, help="training time of each model (wall clock)")
    parser.add_argument("--workdir", default="bench-numbers", help="where data/ and the runs go")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    data_dir = prepare_data.ensure_prepared("numbers", data_root=os.path.join(args.workdir, "data"))
    meta = prepare_data.load_meta(data_dir)
    loader = t5.PairLoader(data_dir, meta, 32, "cpu", 16, 16)
    pairs = loader.pairs["val"]

    rows = []
    for name, script, extra in (("t5.py (encoder-decoder)", "t5.py", T5_ARGS), ("gpt.py (decoder-only)", "gpt.py", GPT_ARGS)):
        start = time.time()
        checkpoint = train(script, extra, "out-" + script[:-3], args.seconds, args.workdir)
        print(f"{name}: trained {time.time() - start:.0f}s, last checkpoint at iteration {checkpoint['iter_num']}",
              flush=True)
        if script == "t5.py":
            model = t5.T5(t5.T5Config(**checkpoint["model_args"])).eval()
            model.load_state_dict(checkpoint["model"])
            accuracy, n_params = t5.exact_match(model, loader, len(pairs)), model.num_params()
        else:
            accuracy, n_params = gpt_exact_match(checkpoint, pairs, meta["stoi"])
        rows.append((name, n_params, checkpoint["iter_num"], accuracy))

    print(f"\n{len(pairs):,} held-out numbers, greedy decoding, {args.seconds} s of training each "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')})\n")
    print("| model | parameters | iterations | exact match |")
    print("|---|---|---|---|")
    for name, n_params, iters, accuracy in rows:
        print(f"| {name} | {n_params / 1e6:.2f}M | {iters:,} | {100 * accuracy:.1f}% |")


if __name__ == "__main__":
    main()
