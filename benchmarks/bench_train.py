"""Benchmark: training speed and quality of the CPU presets, side by side in one run.

    python benchmarks/bench_train.py                                # gpt.py and llama.py
    python benchmarks/bench_train.py --nanogpt=/path/to/nanoGPT     # and nanoGPT's train.py
    python benchmarks/bench_train.py --max_iters=500 --scripts=gpt  # a quicker look

Every run trains the same shape on the same data: tiny Shakespeare at character level, 4 layers,
4 heads, 128 wide, context 64, batch 12, float32, no compile (config/shakespeare_char_cpu.py and
its llama twin). nanoGPT's train.py gets the equivalent command-line flags and its own
data/shakespeare_char/prepare.py (which writes the same 90/10 character split). The runs happen one
after another in a scratch directory, each logging every iteration; the table reports wall time,
the median time per iteration (which leaves out start-up and evaluation) and the val loss at the
last evaluation. Run it on an otherwise idle machine: with 2 cores, any other load distorts it.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(os.path.dirname(REPO), "shared", "data", "tinyshakespeare", "input.txt")

PRESETS = {
    "gpt": ["gpt.py", "config/shakespeare_char_cpu.py"],
    "llama": ["llama.py", "config/llama_shakespeare_char_cpu.py"],
}
NANOGPT_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                 "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                 "--dropout=0.0"]


def run(command, cwd):
    """Run one training command; return (wall seconds, median ms per iteration, last val loss)."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    # Both nanoGPT and our scripts log "iter N: loss L, time Tms" and "step N: train loss A, val loss B".
    times = [float(t) for n, t in re.findall(r"iter (\d+): loss [0-9.]+, time ([0-9.]+)ms", result.stdout)
             if int(n) > 0]
    val = re.findall(r"step (\d+): train loss [0-9.]+, val loss ([0-9.]+)", result.stdout)
    return wall, statistics.median(times), val[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", help="a checkout of karpathy/nanoGPT to compare against")
    parser.add_argument("--scripts", default="gpt,llama", help="comma-separated: " + ", ".join(PRESETS))
    parser.add_argument("--max_iters", type=int, default=2000)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench_train_")
    text = os.path.join(work, "data", "shakespeare_char", "input.txt")
    os.makedirs(os.path.dirname(text))
    if os.path.exists(SHAKESPEARE):
        shutil.copy(SHAKESPEARE, text)  # offline copy; otherwise prepare_data downloads it
    common = [f"--max_iters={args.max_iters}", f"--lr_decay_iters={args.max_iters}", "--log_interval=1"]
    rows = []
    for name in args.scripts.split(","):
        script, preset = PRESETS[name]
        command = [sys.executable, os.path.join(REPO, script), os.path.join(REPO, preset), *common,
                   f"--out_dir=out-{name}"]
        rows.append((name, *run(command, work)))
    if args.nanogpt:
        nano = os.path.join(work, "nanoGPT")
        shutil.copytree(args.nanogpt, nano, ignore=shutil.ignore_patterns(".git"))
        if os.path.exists(text):
            shutil.copy(text, os.path.join(nano, "data", "shakespeare_char", "input.txt"))
        subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=nano, check=True,
                       capture_output=True)
        command = [sys.executable, "train.py", *NANOGPT_FLAGS, *common, "--out_dir=out-nanogpt"]
        rows.append(("nanoGPT", *run(command, nano)))

    print(f"\n{args.max_iters} iterations, CPU preset (4x4x128, block 64, batch 12), float32, no compile")
    print(f"{'script':8} {'wall':>8} {'ms/iter':>8}  val loss")
    for name, wall, ms, (step, val) in rows:
        print(f"{name:8} {wall:7.1f}s {ms:8.2f}  {val} (step {step})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
