"""Benchmark bert.py: pretraining speed beside gpt.py, and what MLM pretraining buys a classifier.

    python benchmarks/bench_bert.py                          # everything (pretrains 2000 iterations first)
    python benchmarks/bench_bert.py --pretrained=out-bert-shakespeare-char-cpu   # reuse an MLM checkpoint
    python benchmarks/bench_bert.py --speed_only --speed_iters=100               # a quicker look

1. Speed: the CPU presets of gpt.py (config/shakespeare_char_cpu.py: block 64, batch 12) and bert.py
   (config/bert_shakespeare_char_cpu.py: block 128, batch 8), and bert.py at gpt.py's shape, same
   width and depth (4 layers, 4 heads, 128 wide), float32, no compile. Each logs every iteration; the
   table reports the median time per iteration (leaving out start-up and evaluation) and tokens/s.
2. Accuracy on shakespeare_speakers (who speaks a passage, 5 speakers, 175 val speeches): (a) always
   answering the most frequent class of the train split; (b) config/bert_speakers_cpu.py fine-tuning
   the MLM checkpoint; (c) the same preset with the same model shape from random weights. Reported at
   the evaluation with the lowest val loss (the iteration the checkpoint keeps) and at the last one.
Runs happen one after another in a scratch directory; with 2 cores, any other load distorts speed.
"""
import argparse
import collections
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
EVAL = r"step (\d+): train loss [0-9.]+, val loss ([0-9.]+), train [a-z -]+ [0-9.]+, val [a-z -]+ ([0-9.]+)"


def run(args, cwd):
    """Run a repository script; return (stdout, wall seconds), or exit with its error."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout, time.perf_counter() - start


def speed(script, preset, iters, work, *overrides):
    """Median ms per iteration and tokens per iteration of a short run logging every iteration."""
    out, _ = run([os.path.join(REPO, script), os.path.join(REPO, "config", preset), f"--max_iters={iters}",
                  f"--lr_decay_iters={iters}", "--log_interval=1", f"--eval_interval={iters}", "--eval_iters=1",
                  f"--out_dir=out-speed-{script}", *overrides], work)
    times = [float(t) for n, t in re.findall(r"iter (\d+): loss [0-9.]+, time ([0-9.]+)ms", out) if int(n) > 0]
    tokens = int(re.search(r"tokens per iteration: ([0-9,]+)", out).group(1).replace(",", ""))
    return statistics.median(times), tokens


def accuracies(log):
    """(val accuracy at the lowest val loss, at the last evaluation, and that last step) from a training log."""
    evals = [(int(step), float(loss), float(acc)) for step, loss, acc in re.findall(EVAL, log)]
    best = min(evals[1:], key=lambda e: e[1])  # evaluations after training started
    return best[2], evals[-1][2], evals[-1][0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed_iters", type=int, default=200)
    parser.add_argument("--speed_only", action="store_true")
    parser.add_argument("--pretrained", help="an existing bert.py MLM out_dir to fine-tune instead of pretraining")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench_bert_")
    text = os.path.join(work, "data", "shakespeare_char", "input.txt")
    os.makedirs(os.path.dirname(text))
    if os.path.exists(SHAKESPEARE):
        shutil.copy(SHAKESPEARE, text)  # offline copy; otherwise prepare_data downloads it
    run([os.path.join(REPO, "prepare_data.py"), "shakespeare_char"], work)

    rows = [("gpt.py, CPU preset", *speed("gpt.py", "shakespeare_char_cpu.py", args.speed_iters, work)),
            ("bert.py, CPU preset", *speed("bert.py", "bert_shakespeare_char_cpu.py", args.speed_iters, work)),
            ("bert.py at gpt.py's shape", *speed("bert.py", "bert_shakespeare_char_cpu.py", args.speed_iters, work,
                                                 "--block_size=64", "--batch_size=12"))]
    print(f"\npretraining speed, {args.speed_iters} iterations, 4 layers x 4 heads x 128 wide, float32, no compile")
    print(f"{'run':28} {'tokens/iter':>11} {'ms/iter':>8} {'tokens/s':>9}")
    for name, ms, tokens in rows:
        print(f"{name:28} {tokens:11,} {ms:8.2f} {tokens / ms * 1000:9,.0f}")
    if args.speed_only:
        return

    run([os.path.join(REPO, "prepare_data.py"), "shakespeare_speakers"], work)
    pretrained = os.path.abspath(args.pretrained) if args.pretrained else None
    if pretrained is None:
        log, wall = run([os.path.join(REPO, "bert.py"), os.path.join(REPO, "config", "bert_shakespeare_char_cpu.py")], work)
        pretrained = os.path.join(work, "out-bert-shakespeare-char-cpu")
        last = re.findall(EVAL, log)[-1]
        print(f"\nMLM pretraining (config/bert_shakespeare_char_cpu.py): {wall:.0f} s, at step {last[0]} val loss "
              f"{last[1]}, val masked-token accuracy {last[2]}")
    with open(os.path.join(work, "data", "shakespeare_speakers", "train.tsv"), encoding="utf-8") as f:
        train_labels = collections.Counter(line.split("\t", 1)[0] for line in f)
    with open(os.path.join(work, "data", "shakespeare_speakers", "val.tsv"), encoding="utf-8") as f:
        val_labels = [line.split("\t", 1)[0] for line in f]
    majority = train_labels.most_common(1)[0][0]
    preset = os.path.join(REPO, "config", "bert_speakers_cpu.py")
    tuned, tuned_wall = run([os.path.join(REPO, "bert.py"), preset, f"--init_from={pretrained}"], work)
    scratch, scratch_wall = run([os.path.join(REPO, "bert.py"), preset, "--init_from=scratch",
                                 "--out_dir=out-bert-speakers-scratch"], work)
    print(f"\nshakespeare_speakers val accuracy ({len(val_labels)} speeches, 5 speakers)")
    print(f"{'model':34} {'at best val loss':>16} {'at the end':>10} {'wall':>6}")
    print(f"{'majority class (' + majority + ')':34} {val_labels.count(majority) / len(val_labels):16.3f}")
    for name, log, wall in (("fine-tuned from the MLM checkpoint", tuned, tuned_wall),
                            ("same model from scratch", scratch, scratch_wall)):
        best, last, step = accuracies(log)
        print(f"{name:34} {best:16.3f} {last:10.3f} {wall:5.0f}s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
