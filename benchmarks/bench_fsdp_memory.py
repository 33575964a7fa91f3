"""Per-process peak memory of training a Llama of SmolLM2-135M's shape on 2 processes: DDP against FSDP2.

    python benchmarks/bench_fsdp_memory.py                    # 20 iterations each, 2 processes, CPU (gloo)
    python benchmarks/bench_fsdp_memory.py --iters=5 --block_size=64   # a quicker look
    python benchmarks/bench_fsdp_memory.py --pretrained --iters=2     # load a bfloat16 HF checkpoint first
    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/bench_fsdp_memory.py --iters=3   # RSS that follows live tensors

Each run is a torchrun of this file (--worker) on 2 processes. A worker builds llama.py's Llama at
SmolLM2-135M's shape (30 layers, 576 wide, 9 heads / 3 key-value heads, 49152-token vocabulary, tied
embeddings: 134.5M parameters) with random weights, then does what llama.py's main() does for
parallelism='ddp' or 'fsdp' (the same shared functions: shard_model, configure_optimizer,
gradient_sync, clip_grad_norm_) and fine-tunes for --iters AdamW steps in float32 on one fixed random
batch (so the loss must fall). Memory: the process's resident-set peak (VmHWM, Linux), as kB above
what it held once torch was imported and the process group joined. Two peaks are reported: over the
whole run, which includes building the whole model on every process before FSDP shards it, and over
the training steps alone (the peak reset after set-up): the figure sharding changes. Beside them, the
bytes of weights, gradients and AdamW moments the process holds. glibc's malloc keeps freed memory for
reuse, so the transient buffers of FSDP's gathers and reduce-scatters stay resident and RSS overstates
the live tensors; MALLOC_MMAP_THRESHOLD_=65536 returns every large freed buffer to the system at once.

--pretrained saves such a model once with transformers, in bfloat16 as real checkpoints are, and the
workers load it as llama.py's fine-tuning does: in float32 for DDP; for FSDP as the file's own
memory-mapped tensors, of which each process copies only its slice into its shards (shard_model), so
the set-up peak shows whether the whole model was ever read into one process.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status(key):
    """One of this process's memory figures (/proc/self/status), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := the current resident size


def worker(args):
    sys.path.insert(0, REPO)
    import torch

    import llama

    cfg = {"parallelism": args.parallelism, "device": "cpu", "dtype": "float32", "backend": "auto",
           "gradient_accumulation_steps": 2, "seed": 1337}
    runtime = llama.start_processes(cfg)
    reset_peak()
    base = status("VmRSS")
    if args.pretrained:
        model = llama.Llama.from_pretrained(args.pretrained, dtype=None if args.parallelism == "fsdp" else torch.float32)
    else:
        model = llama.Llama(llama.LlamaConfig(n_layer=30, n_head=9, n_kv_head=3, n_embd=576, vocab_size=49152,
                                              block_size=args.block_size, hidden_dim=1536,
                                              tie_embeddings=True, rope_theta=100000.0))
    if args.parallelism == "fsdp":
        llama.shard_model(model, model.model.layers, cfg["dtype"], runtime, random_init=not args.pretrained)
    optimizer = model.configure_optimizer(0.1, 1e-4, (0.9, 0.95), "cpu")
    if args.parallelism == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    setup_peak = status("VmHWM") - base
    reset_peak()
    generator = torch.Generator().manual_seed(runtime.rank)
    x = torch.randint(49152, (1, args.block_size + 1), generator=generator)
    losses, start = [], time.time()
    for _ in range(args.iters):
        with llama.gradient_sync(model, runtime, last=True):  # one micro-step per process and step
            _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(llama.mean_over_processes([loss.item()], runtime)[0])
    seconds = (time.time() - start) / args.iters

    def local_mib(tensors):  # this process's own bytes (a DTensor's local shard)
        return sum(getattr(t, "_local_tensor", t).numel() * t.element_size() for t in tensors) / 2**20

    # Weights + their gradients (the same size) + AdamW's moments, as this process holds them.
    state_mib = 2 * local_mib(model.parameters()) + local_mib(
        v for state in optimizer.state.values() for v in state.values() if v.dim() > 0)
    n_params = sum(p.numel() for p in (model.module if args.parallelism == "ddp" else model).parameters())
    print(json.dumps({"parallelism": args.parallelism, "rank": runtime.rank, "params": n_params,
                      "setup_peak_mib": setup_peak, "state_mib": state_mib, "train_peak_mib": status("VmHWM") - base,
                      "s_per_iter": seconds, "first_loss": losses[0], "last_loss": losses[-1]}), flush=True)
    torch.distributed.barrier()
    llama.leave_process_group(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--parallelism", default="ddp,fsdp")
    parser.add_argument("--pretrained", nargs="?", const=True, default=None, help="(a worker gets the directory)")
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    scratch = tempfile.mkdtemp()
    extra = []
    if args.pretrained:
        import torch
        import transformers

        transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
            max_position_embeddings=2048)).to(torch.bfloat16).save_pretrained(scratch)
        extra = [f"--pretrained={scratch}"]
    for parallelism in args.parallelism.split(","):
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, "--worker",
             f"--parallelism={parallelism}", f"--iters={args.iters}", f"--block_size={args.block_size}", *extra],
            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if result.returncode != 0:
            sys.exit(f"error: the {parallelism} run failed:\n{result.stderr[-3000:]}")
        for record in re.findall(r"\{[^{}]*\}", result.stdout):  # the two processes' lines may interleave
            r = json.loads(record)
            print(f"{r['parallelism']} rank {r['rank']}: {r['params'] / 1e6:.1f}M params, weights + gradients + "
                  f"AdamW state held {r['state_mib']:.0f} MiB; peak RSS above baseline "
                  f"{r['setup_peak_mib']:.0f} MiB in set-up, {r['train_peak_mib']:.0f} MiB in training; "
                  f"{r['s_per_iter']:.2f} s/iter; loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}")
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
