"""Benchmark: time per training step of the OLMoE CPU preset against the dense OLMo CPU preset.

    OMP_NUM_THREADS=1 python benchmarks/bench_moe.py               # 5 rounds of 20 steps each
    OMP_NUM_THREADS=1 python benchmarks/bench_moe.py --rounds=3 --steps=10

Both models are built from their preset files (config/olmo_shakespeare_char_cpu.py and
config/olmoe_shakespeare_char_cpu.py, read by olmo.py's own parse_config) and trained on the same
random batches (12 x 64 tokens of a 65-token vocabulary): forward, backward (with the MoE's two
router losses), AdamW step. The rounds alternate between the two models, so a change in the
machine's load during the run hits both alike; the table reports each model's median time per step
over the rounds and the ratio. No data set, no evaluation: only the step is timed. (A third row, the
OLMoE block with one dense SwiGLU, separates what the block layout costs from what the experts do.)
"""
import argparse
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import olmo  # noqa: E402

RUNS = {
    "olmo2 dense (olmo_shakespeare_char_cpu.py)": ["config/olmo_shakespeare_char_cpu.py"],
    "olmoe block, dense": ["config/olmo_shakespeare_char_cpu.py", "--block_type=olmoe"],
    "olmoe 8 experts, top 2 (olmoe_shakespeare_char_cpu.py)": ["config/olmoe_shakespeare_char_cpu.py"],
}


def build(argv):
    defaults = {k: getattr(olmo, k) for k in olmo.config_keys}
    cfg = olmo.parse_config([os.path.join(REPO, a) if a.endswith(".py") else a for a in argv], defaults)
    args = {k: cfg[k] for k in olmo.OLMoConfig.__dataclass_fields__ if k in cfg}  # the model's keys
    torch.manual_seed(0)
    model = olmo.OLMo(olmo.OLMoConfig(**args, vocab_size=65)).train()
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]), "cpu")
    return model, optimizer, cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(1)
    batches = [(torch.randint(0, 65, (12, 64)), torch.randint(0, 65, (12, 64))) for _ in range(8)]
    runs = {name: build(argv) for name, argv in RUNS.items()}
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, optimizer, _) in runs.items():
            for step in range(args.steps + 2):  # the first 2 of each round warm up
                if step == 2:
                    start = time.perf_counter()
                x, y = batches[step % len(batches)]
                _, loss = model(x, y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    dense = statistics.median(times[next(iter(times))])
    print(f"threads: {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps, batch 12 x 64")
    print("| model | parameters (active) | ms per step (median of rounds) | vs dense |")
    print("|---|---|---|---|")
    for name, (model, _, _) in runs.items():
        ms = statistics.median(times[name])
        print(f"| {name} | {model.num_params() / 1e6:.2f}M ({model.num_active_params() / 1e6:.2f}M) | {ms:.1f} | "
              f"{ms / dense:.2f}x |")


if __name__ == "__main__":
    main()
