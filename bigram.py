"""
bigram.py — the simplest language model: one table of next-token scores, trained with the full loop.

A language model is a probability distribution over the next token given the tokens before it:
P(next | previous tokens). Train it to give high probability to the text it is shown, and you can
generate new text by drawing a token from that distribution, appending it and drawing again. A
*bigram* model is the crudest version: the distribution depends on the previous token only,
P(next | last). It is Shannon's character "digram" approximation of English (Shannon, "A
Mathematical Theory of Communication", 1948), and here it is Karpathy's first lesson in "Let's build
GPT" (2023): a single vocab_size x vocab_size table whose row i holds the scores of every possible
token following token i. There is nothing else — no embeddings in the usual sense, no layers.

What you will learn here, top to bottom:
  1. what a token, logits, softmax and cross-entropy are, and why the loss of an untrained model is
     ln(vocab_size) (4.17 for the 65 characters of tiny Shakespeare);
  2. what gradient descent does to the table: it converges to the counts — row i becomes the log of
     how often each token followed token i in the training text;
  3. sampling: temperature, top-k, top-p and a repetition penalty, exactly as gpt.py does them;
  4. the training loop every script in this repository shares: AdamW, warmup + cosine schedule,
     gradient accumulation and clipping, mixed precision, torch.compile, multi-GPU with DDP,
     checkpoints that resume exactly, and logging. It is the loop of gpt.py line for line, so that
     here you can read it without a Transformer in the way.

Run it:
    python bigram.py config/bigram_shakespeare_char.py   # seconds on a laptop CPU; val loss ~2.49
    python sample.py --out_dir=out-bigram                # generate from what you trained

What comes next: the samples look like words of the right length with plausible letter pairs but
no words, because the model sees one token of context — after "h" it cannot tell "th" from "sh".
gpt.py keeps this file's data, loss, sampling and training loop and replaces the table with a
Transformer, whose attention lets each position look at all earlier positions.
"""

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare_data

# -----------------------------------------------------------------------------
# Model configuration


@dataclass
class BigramConfig:
    # A token is an integer id in [0, vocab_size). What it stands for is the tokenizer's business
    # (prepare_data.py): with the char tokenizer, one distinct character of the text (65 for tiny
    # Shakespeare); with BPE, a frequent run of bytes such as " the". The model only sees the ids.
    vocab_size: int = 65
    # A bigram ignores context, so this is no limit of the model: any length works. It is kept so
    # that data loading (sequences of block_size tokens) and generate's cropping work as in gpt.py.
    block_size: int = 8


# -----------------------------------------------------------------------------
# The model


class Bigram(nn.Module):
    """Next-token scores looked up from a (vocab_size, vocab_size) table by the current token.

    Row i of the table holds vocab_size *logits*: unnormalised scores, one per candidate next token,
    any real number. The softmax p_j = exp(z_j) / sum_k exp(z_k) turns a row into probabilities
    (positive, summing to 1); a larger logit means a more likely token, and adding the same constant
    to a whole row changes nothing. So the "embedding" of token i is directly the prediction made
    after it.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        # Karpathy's name for it. nn.Embedding(V, V) is a table lookup: row idx of the weight.
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)
        # Small logits make every row nearly uniform, so the untrained model predicts 1/V for every
        # token and its loss is ln(V). (PyTorch's default N(0, 1) starts higher, at ~ln(V) + 0.5, for
        # no benefit.) Zeros would work too: unlike a network with hidden units, there is no symmetry
        # to break, since each weight's gradient depends on the data alone; N(0, 0.02) matches gpt.py.
        nn.init.normal_(self.token_embedding_table.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        """idx: (B, T) token ids -> (logits (B, T, vocab_size), loss or None).

        Position t's logits depend on idx[b, t] alone. With targets (B, T), the loss is the mean
        cross-entropy of predicting targets[b, t]; targets of -1 are ignored. There is no `cache`
        argument as gpt.py has: there is nothing to cache (see generate).
        """
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            # Cross-entropy is -log p(target): the surprise of the right answer. 0 if the model gave
            # it probability 1, ln(V) if it spread its bets evenly over V tokens, unbounded as p -> 0.
            # Averaged over every (B, T) slot: each slot is one independent (token, next token)
            # example, so a batch of 32 sequences of 8 tokens holds 256 of them. exp(loss), the
            # perplexity, reads as "how many tokens the model hesitates between": 65 at the start,
            # about 12 for a trained character bigram.
            #
            # Training is gradient descent on this loss. Its gradient with respect to the logits of
            # one slot is softmax(z) - onehot(target): the target's logit goes up by (1 - p_target),
            # every other logit down by its own probability, in the one row that was looked up —
            # no other row receives any gradient. The loss is smallest when, for every row i, these
            # pushes cancel over all the places token i occurs, i.e. when softmax(row i) equals the
            # frequency of each token after i in the training text. Gradient descent thus recovers
            # what counting bigrams would give (maximum likelihood), and the best possible val loss
            # is the entropy of the next token given the last one, about 2.45 nats for characters.
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return logits, loss

    # -------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=1.0, use_cache=True, vocab_size=None, eos_token_id=None, on_token=None):
        """Append up to max_new_tokens sampled tokens to idx (B, T) and return the (B, T + new) result.

        Each step turns the last position's logits into a distribution (sample_next_token) and
        draws from it. The signature is gpt.py's so that sample.py can call every model alike
        (vocab_size, eos_token_id and on_token as explained there), but a bigram needs no key/value
        cache: the next token depends on the last token alone, so use_cache simply feeds that one
        token, while use_cache=False runs the whole (block_size-cropped) window as gpt.py does
        without a cache and keeps the last position. Both give the same logits, hence the same
        tokens; the window only wastes work, which is the point to see.
        """
        check_sampling_options(temperature, top_k, top_p, repetition_penalty)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        block_size = self.config.block_size
        stop_ids = None if eos_token_id is None else torch.tensor(eos_token_id, device=idx.device).view(-1)
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            window = idx[:, -1:] if use_cache else idx[:, -block_size:]
            logits, _ = self(window)
            logits = logits[:, -1, :vocab_size]  # (B, vocab_size); [:None] keeps every id
            # The repetition penalty looks at the whole text so far, as in gpt.py, not the window.
            next_token = sample_next_token(logits, idx, temperature, top_k, top_p, repetition_penalty)
            if stop_ids is not None:
                # A finished row repeats its end-of-sequence token: padding that decoders cut off.
                next_token = torch.where(finished[:, None], idx[:, -1:], next_token)
                finished |= torch.isin(next_token[:, 0], stop_ids)
            idx = torch.cat((idx, next_token), dim=1)
            if on_token is not None:
                on_token(next_token)
            if stop_ids is not None and bool(finished.all()):
                break
        return idx

    # -------------------------------------------------------------------------
    # Optimizer

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW over the one table.

        Adam scales each weight's step by a running estimate of its gradient's size, so rows of rare
        tokens, whose gradients are small and seldom, still move at about learning_rate per step.
        Weight decay here pulls every logit towards 0, i.e. every row towards uniform: the same
        smoothing as adding pseudo-counts to a count table. gpt.py exempts 1-D parameters (biases,
        LayerNorm gains) from decay; the bigram has none. Fused: one kernel for the whole update.
        """
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas,
                                 weight_decay=weight_decay, fused=fused)

    def flops_per_token(self):
        """Training FLOPs per token, counted honestly: about 6 * vocab_size.

        gpt.py's 6-per-parameter rule assumes every weight takes part in a matmul for every token.
        Here the forward is a lookup of one row (no arithmetic); the work is the softmax and
        cross-entropy over that row's vocab_size logits (max, subtract, exp, sum: ~4 per logit) and
        the backward's softmax - onehot added into that row (~2 per logit). The optimizer's update
        touches all vocab_size^2 weights but once per step, not per token, so it is not counted.
        Memory traffic, not arithmetic, bounds a bigram's speed; its MFU is tiny by nature.
        """
        return 6 * self.config.vocab_size


def check_sampling_options(temperature, top_k, top_p, repetition_penalty):
    """Raise ValueError naming the first sampling option that has no meaning.

    generate() calls it before any work, so a mistake is reported at once and in words (a top_k of
    0 would otherwise fail deep inside torch.topk, and a negative temperature would silently invert
    the distribution, making the least likely token the favourite).
    """
    if not temperature >= 0:  # written so that NaN fails too
        raise ValueError(f"temperature must be >= 0 (0 means greedy decoding), got {temperature}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {repetition_penalty}")


def sample_next_token(logits, context, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0):
    """Pick one next token per row from logits (B, vocab); context (B, T) is the text so far.

    The steps, in the order they are applied:
    - repetition penalty (Keskar et al. 2019, CTRL): tokens already in the context get their logit
      divided by the penalty if positive, multiplied if negative — either way less likely;
    - temperature: logits / T. T < 1 sharpens the distribution, T > 1 flattens it, and T = 0 means
      greedy decoding (always the most likely token);
    - top-k: keep only the k most likely tokens;
    - top-p, nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens
      whose probabilities sum to at least p, so the cut-off adapts to how confident the model is.
    Returns (B, 1) token ids.
    """
    logits = logits.float()
    if repetition_penalty != 1.0:
        seen = torch.gather(logits, 1, context)
        seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
        logits = logits.scatter(1, context, seen)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        # A token is dropped when the tokens ranked above it already cover p of the mass; the most
        # likely token is therefore always kept.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1)


# -----------------------------------------------------------------------------
# Training configuration. Every simple value below can be overridden by config files and
# --key=value arguments (see parse_config). The defaults are config/bigram_shakespeare_char.py's,
# except compile, which is on by default in every script and which that CPU preset turns off.

# I/O
out_dir = "out-bigram"  # not gpt.py's "out": a bigram run must not overwrite a GPT checkpoint
eval_interval = 250  # evaluate train/val loss (and maybe checkpoint) every this many iterations
log_interval = 100  # print a training line every this many iterations
eval_iters = 50  # batches averaged per loss estimate
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # save at every eval, not only when val loss improves
init_from = "scratch"  # 'scratch' or 'resume' (from out_dir/ckpt.pt); there are no pretrained bigrams
# logging
wandb_log = False
wandb_project = "bigram"
wandb_run_name = "bigram"
# data
dataset = "shakespeare_char"
gradient_accumulation_steps = 1  # micro-batches summed into one optimizer step
batch_size = 32  # sequences per micro-batch
block_size = 8  # tokens per sequence: for a bigram, just more (token, next token) pairs per batch
# AdamW. A table with one independent row per token tolerates ~10x the learning rate of a Transformer.
learning_rate = 1e-2
max_iters = 2000
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # clip the global gradient norm to this; 0 disables
# learning-rate schedule
decay_lr = True
warmup_iters = 0  # warmup protects deep networks from early large steps; a table needs none
lr_decay_iters = 2000  # ~ max_iters
min_lr = 1e-3  # learning_rate / 10
# system
backend = "auto"  # DDP backend: 'auto' is nccl on CUDA, gloo on CPU
device = "auto"  # 'auto' picks cuda, then mps, then cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # 'auto', 'float32', 'bfloat16' or 'float16'
compile = True  # torch.compile the model (falls back with a warning where it cannot)
seed = 1337

# Every simple-typed name defined above is a config key (names starting with "_" are not).
config_keys = [k for k, v in list(globals().items())
               if not k.startswith("_") and isinstance(v, (bool, int, float, str))]

# A bigram table has vocab_size^2 weights: 4,225 for characters, 1M for a 1024-token BPE, but 2.5
# billion for GPT-2's 50257 tokens (10 GB, 30 GB with AdamW's state). Refuse those up front.
_MAX_VOCAB_SIZE = 16384


def parse_config(argv, defaults):
    """Apply config files and --key=value overrides to the defaults; return the final dict.

    Each argument without "--" is a Python file whose top-level assignments override keys, in
    order; each --key=value overrides one key, later ones winning. Values are Python literals
    (--batch_size=32, --decay_lr=False, --learning_rate=3e-2); anything that is not a literal is taken
    as a string (--device=cuda). A key that does not exist, or a value of the wrong type, is an error
    naming the key: a typo must never silently train with the default.
    """
    import ast

    config = dict(defaults)

    def assign(key, value, source):
        if key not in config:
            fail(f"unknown config key {key!r} (from {source}); valid keys: {', '.join(sorted(config))}")
        default = config[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # --learning_rate=1 means 1.0
        if type(value) is not type(default):
            fail(f"config key {key!r} must be {type(default).__name__}, got {value!r} (from {source})")
        config[key] = value

    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            print("config keys and defaults:\n" + "\n".join(f"  {k} = {v!r}" for k, v in defaults.items()))
            sys.exit(0)
        if arg.startswith("--"):
            if "=" not in arg:
                fail(f"argument {arg!r} must look like --key=value")
            key, text = arg[2:].split("=", 1)
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            assign(key, value, arg)
        else:
            if not os.path.isfile(arg):
                fail(f"config file {arg!r} not found")
            namespace = {}
            try:
                with open(arg) as f:
                    exec(f.read(), namespace)
            except Exception as e:  # a broken config file: say which, not a traceback into exec
                fail(f"config file {arg!r} failed: {type(e).__name__}: {e}")
            for key, value in namespace.items():
                if not key.startswith("_") and not callable(value) and type(value).__name__ != "module":
                    assign(key, value, arg)
    return config


# Peak dense 16-bit tensor-core throughput (FLOP/s) of common GPUs, for MFU: model FLOPs per second
# achieved divided by what the hardware could do. Matched against torch.cuda.get_device_name().
_GPU_PEAK_FLOPS = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("A10G", 70e12),
    ("A10", 125e12), ("L40S", 362e12), ("L4", 121e12), ("4090", 165e12), ("3090", 71e12),
    ("V100", 125e12), ("T4", 65e12),
]


def gpu_peak_flops(device_name):
    for key, flops in _GPU_PEAK_FLOPS:
        if key in device_name:
            return flops
    return None


def check_config(cfg):
    """Refuse, in one line naming the key, a numeric setting that has no meaning.

    The types are already right (parse_config); this checks the values. Keys a script does not have
    are skipped, so every script shares this one function. Meanings at the edges: max_iters=0
    evaluates once and trains nothing, grad_clip=0 disables clipping, weight_decay=0 disables decay.
    """
    rules = [
        (("batch_size", "block_size", "gradient_accumulation_steps", "eval_iters", "eval_interval", "log_interval",
          "n_layer", "n_head", "n_embd", "n_kv_head"), lambda v: v >= 1, "must be >= 1"),
        (("max_iters", "warmup_iters", "lr_decay_iters"), lambda v: v >= 0, "must be >= 0"),
        (("learning_rate",), lambda v: v > 0, "must be > 0"),
        (("min_lr", "weight_decay", "grad_clip"), lambda v: v >= 0, "must be >= 0 (0 disables it)"),
        (("dropout", "beta1", "beta2"), lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ]
    for keys, meaningful, requirement in rules:
        for key in keys:
            if key in cfg and not meaningful(cfg[key]):  # comparisons with NaN are False: refused too
                fail(f"config key {key!r} {requirement}, got {cfg[key]!r}")


def fail(message):
    """Stop with the one line "error: <message>" and exit status 1.

    Under torchrun every process runs the same code and meets the same failure (errors that one
    process alone sees are first shared with all, see first_error), so only rank 0 prints: the
    message appears once, not once per process.
    """
    sys.exit(f"error: {message}" if int(os.environ.get("RANK", "0")) == 0 else 1)


def first_error(error, ddp):
    """The first error message (or None) of all processes; under DDP every process must call it.

    A failure seen by one process alone (rank 0 could not prepare the data) must stop all of them,
    or the others wait forever at their next collective call. Gathering every process's message,
    None when it is fine, lets all of them take the same decision.
    """
    if not ddp:
        return error
    errors = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(errors, error)
    return next((e for e in errors if e is not None), None)


def local_rank0_first(step, ddp, local_rank):
    """Run step() -> (value, error message or None) on every process, local rank 0 first; return
    the value, or fail everywhere if any process failed.

    Downloads and data preparation write files that every process then reads. One process per
    machine (local rank 0: each machine of a multi-node run has its own disk) does the writing
    while the others wait; after it, they find the files in place and only read them.
    """
    value = None
    for leaders_turn in (True, False):
        error = None
        if (local_rank == 0) == leaders_turn:
            value, error = step()
        error = first_error(error, ddp)
        if error is not None:
            fail(error)
    return value


def main(argv):
    cfg = parse_config(argv, {k: globals()[k] for k in config_keys})
    check_config(cfg)
    # Checked before any work: gpt.py would load a pretrained model here, a bigram has none.
    if cfg["init_from"] not in ("scratch", "resume"):
        fail(f"init_from={cfg['init_from']!r} is not supported by bigram.py: use 'scratch' or 'resume' (there "
             f"are no pretrained bigram models)")

    # ---- devices, processes and precision ----
    ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun?
    rank, local_rank, world_size = 0, 0, 1
    if ddp:
        rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if cfg["gradient_accumulation_steps"] % world_size != 0:
            fail(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be divisible by the "
                 f"number of processes ({world_size})")
    # Each process does its share of the micro-batches; together they make one optimizer step. (The
    # config keeps the total the user gave: that is what a resume with another process count needs.)
    micro_steps = cfg["gradient_accumulation_steps"] // world_size
    master = rank == 0  # only this process logs and writes checkpoints
    if cfg["device"] == "auto":
        cfg["device"] = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device_type = "cuda" if cfg["device"].startswith("cuda") else cfg["device"].split(":")[0]
    if device_type == "cuda" and not torch.cuda.is_available():
        fail("device='cuda' but no CUDA GPU is available; use --device=cpu")
    if device_type == "mps" and not torch.backends.mps.is_available():
        fail("device='mps' but MPS is not available on this machine; use --device=cpu")
    if cfg["dtype"] == "auto":
        if device_type == "cuda":
            cfg["dtype"] = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            cfg["dtype"] = "float32"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg["dtype"] not in dtypes:
        fail(f"dtype={cfg['dtype']!r} must be one of auto, {', '.join(dtypes)}")
    if ddp:
        if device_type == "cuda":
            cfg["device"] = f"cuda:{local_rank}"
            torch.cuda.set_device(cfg["device"])
        # NCCL is NVIDIA's fast GPU-to-GPU library; gloo works everywhere (CPUs, and Windows, which
        # has no NCCL).
        nccl = device_type == "cuda" and torch.distributed.is_nccl_available()
        backend = cfg["backend"] if cfg["backend"] != "auto" else ("nccl" if nccl else "gloo")
        torch.distributed.init_process_group(backend=backend)
    device = cfg["device"]
    # Each process seeds differently, so DDP ranks draw different batches.
    torch.manual_seed(cfg["seed"] + rank)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: float32 range, much faster on Ampere+
    torch.backends.cudnn.allow_tf32 = True
    # Mixed precision: autocast runs matmuls in 16 bits while keeping weights and reductions in
    # float32. bfloat16 has float32's exponent range, so it needs nothing else; float16 gradients
    # can underflow to zero, which the GradScaler prevents by scaling the loss up before backward
    # (and skipping a step whose gradients overflowed to inf). A bigram has no matmul, so autocast
    # changes little here; it stays so that this loop is gpt.py's.
    autocast = (nullcontext() if cfg["dtype"] == "float32"
                else torch.autocast(device_type=device_type, dtype=dtypes[cfg["dtype"]]))
    scaler = torch.amp.GradScaler(device_type, enabled=(cfg["dtype"] == "float16"))

    # ---- data ----
    def prepare_dataset():
        try:
            data_dir = prepare_data.ensure_prepared(cfg["dataset"])  # downloads and tokenizes if needed
            loader = prepare_data.BatchLoader(data_dir, cfg["block_size"], cfg["batch_size"], device)
            return (prepare_data.load_meta(data_dir), loader), None
        except prepare_data.DataError as e:
            return None, str(e)

    meta, loader = local_rank0_first(prepare_dataset, ddp, local_rank)
    tokens_per_iter = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]

    # ---- model ----
    iter_num, best_val_loss, checkpoint = 0, float("inf"), None
    if cfg["init_from"] == "scratch":
        # No padding of the vocabulary to a multiple of 64 as gpt.py does: it would grow the table
        # quadratically, and a lookup gains nothing from aligned shapes.
        model_args = {"vocab_size": meta["vocab_size"], "block_size": cfg["block_size"]}
    else:
        checkpoint = load_checkpoint(cfg["out_dir"], device, "bigram")
        # The table's size comes from the checkpoint. block_size is not part of the model, so the
        # resumed run's value (the data's sequence length) is the one to keep.
        model_args = checkpoint["model_args"] | {"block_size": cfg["block_size"]}
    if model_args["vocab_size"] < meta["vocab_size"]:
        fail(f"dataset {cfg['dataset']!r} has {meta['vocab_size']} tokens but the checkpoint's table knows "
             f"{model_args['vocab_size']}; resume on the dataset it was trained on")
    if model_args["vocab_size"] > _MAX_VOCAB_SIZE:
        fail(f"dataset {cfg['dataset']!r} has {model_args['vocab_size']} tokens: a bigram table would hold "
             f"{model_args['vocab_size'] ** 2:,} weights. Use a vocabulary of at most {_MAX_VOCAB_SIZE} tokens "
             f"(shakespeare_char, shakespeare_bpe)")
    model = Bigram(BigramConfig(**model_args))
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
    model.to(device)
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]), device_type)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint["scaler"]:  # empty when the run that wrote it used no float16 (and so no scaler)
            scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng_state"], rank, world_size, cfg["seed"] + world_size * iter_num + rank)
    raw_model = model  # the plain module: what we save, and what MFU counts
    if cfg["compile"]:
        model, compile_error = compile_model(model, autocast, device, lambda: loader.get_batch("train"))
        if compile_error and master:
            print(f"warning: torch.compile failed ({compile_error}); continuing without compile")
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device_type == "cuda" else None)

    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        print("config:", json.dumps(cfg))
        print(f"parameters: {raw_model.num_params() / 1e6:.2f}M; tokens per iteration: {tokens_per_iter:,} "
              f"({cfg['gradient_accumulation_steps']} x {cfg['batch_size']} x {cfg['block_size']})")
        # The loss of a uniform guess: what the first evaluation should show, and the bar to beat.
        print(f"loss of a uniform guess over {meta['vocab_size']} tokens: ln({meta['vocab_size']}) = "
              f"{math.log(meta['vocab_size']):.4f}")
    wandb = None
    if cfg["wandb_log"] and master:
        try:
            import wandb
        except ImportError:
            fail("wandb_log=True but wandb is not installed: pip install wandb")
        wandb.init(project=cfg["wandb_project"], name=cfg["wandb_run_name"], config=cfg)

    def lr_at(it):
        """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr.

        Large steps early cover the distance from uniform to the counts fast; small steps late stop
        the rows from jittering around the optimum with the noise of each random batch.
        """
        if not cfg["decay_lr"]:
            return cfg["learning_rate"]
        if it < cfg["warmup_iters"]:
            # (it + 1) / (warmup_iters + 1): the first step already moves (a step at lr 0 would be
            # wasted), and the ramp reaches the full rate just as the cosine takes over.
            return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
        if it > cfg["lr_decay_iters"]:
            return cfg["min_lr"]
        progress = (it - cfg["warmup_iters"]) / max(1, cfg["lr_decay_iters"] - cfg["warmup_iters"])
        return cfg["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg["learning_rate"] - cfg["min_lr"])

    def mean_over_processes(values):
        """Average a few floats over all processes (each has measured its own batches)."""
        if not ddp:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(total)  # a sum: gloo has no average
        return (total / world_size).tolist()

    @torch.no_grad()
    def estimate_loss():
        """Mean loss over eval_iters batches of each split (on every process), in eval mode.

        The val loss is the honest score: text the table was never fitted to. A bigram has too few
        parameters to memorise much, so train and val losses stay close. Averaged over the
        processes, so that all of them see the same numbers and take the same decisions.
        """
        model.eval()
        losses = []
        for split in ("train", "val"):
            total = 0.0
            for _ in range(cfg["eval_iters"]):
                x, y = loader.get_batch(split)
                with autocast:
                    _, loss = model(x, y)
                total += loss.item()
            losses.append(total / cfg["eval_iters"])
        model.train()
        return dict(zip(("train", "val"), mean_over_processes(losses)))

    def save_checkpoint(rng_states):
        checkpoint = {
            "model_type": "bigram",
            "model_args": asdict(raw_model.config),
            "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "iter_num": iter_num,
            "best_val_loss": best_val_loss,
            "config": cfg,
            "tokenizer": meta,
            "rng_state": rng_states,
        }
        path = os.path.join(cfg["out_dir"], "ckpt.pt")
        # Write then rename: a crash mid-write leaves the previous checkpoint intact.
        try:
            torch.save(checkpoint, path + ".tmp")
            os.replace(path + ".tmp", path)
        except OSError as e:
            fail(f"could not write {path} ({e}); the previous checkpoint, if any, is intact")
        print(f"saved checkpoint to {path}")

    # ---- the training loop ----
    # Order within an iteration: evaluate (and checkpoint) the current weights, then take one
    # optimizer step. A checkpoint written at iteration N therefore holds the weights and RNG state
    # from just before step N, and resuming repeats exactly what the original run did next.
    peak_flops = gpu_peak_flops(torch.cuda.get_device_name(device)) if device_type == "cuda" else None
    resumed_at = iter_num if checkpoint is not None else None
    checkpoint = None  # free the loaded copy
    # out_dir/log.jsonl: every log and eval line as JSON, for plot.py to draw (rank 0 writes it;
    # eval_only writes nothing). None: no log.
    run_log = None
    if master and not cfg["eval_only"]:
        run_log = start_run_log(os.path.join(cfg["out_dir"], "log.jsonl"), resumed_at,
                                {"kind": "start", "iter": iter_num, "model_type": "bigram",
                                 "tokens_per_iter": tokens_per_iter, "config": cfg})
    model.train()
    # Timing: t_last is when iteration iter_timed began; a log line averages over the iterations since.
    t_last, iter_timed = time.time(), iter_num
    while True:
        lr = lr_at(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # A resumed run evaluated this iteration before saving it; eval_only evaluates it again.
        if iter_num % cfg["eval_interval"] == 0 and (iter_num != resumed_at or cfg["eval_only"]):
            losses = estimate_loss()
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if wandb:
                    wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})
                if run_log:
                    append_run_log(run_log, {"kind": "eval", "iter": iter_num, "tokens": iter_num * tokens_per_iter,
                                             "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr})
            if not math.isfinite(losses["val"]):
                fail(f"val loss is {losses['val']} at iteration {iter_num}; the last good checkpoint in "
                     f"{cfg['out_dir']} was kept. Lower learning_rate, or use dtype=bfloat16/float32.")
            if iter_num > 0 and not cfg["eval_only"] and (losses["val"] < best_val_loss or cfg["always_save_checkpoint"]):
                best_val_loss = min(best_val_loss, losses["val"])
                rng_states = every_rank_rng_state(ddp, device_type)  # collective: every process takes part
                if master:
                    save_checkpoint(rng_states)
            t_last, iter_timed = time.time(), iter_num  # keep evaluation out of the timing
        if cfg["eval_only"] or iter_num >= cfg["max_iters"]:
            break

        # Gradient accumulation: sum the gradients of several micro-batches (each loss divided by
        # their number, so the sum is a mean) to train with a larger batch than fits in memory.
        train_loss = 0.0  # the mean over this step's micro-batches, for the log
        for micro_step in range(micro_steps):
            x, y = loader.get_batch("train")
            # Under DDP, gradients are averaged across processes during backward; doing it only on
            # the last micro-step saves all the communication of the earlier ones.
            last = micro_step == micro_steps - 1
            with (model.no_sync() if ddp and not last else nullcontext()):
                with autocast:
                    _, loss = model(x, y)
                    loss = loss / micro_steps
                scaler.scale(loss).backward()
            train_loss += loss.detach()  # a tensor: no waiting for the GPU here
        if cfg["grad_clip"] > 0:
            # Clipping the global gradient norm bounds the size of any one update, protecting
            # against the occasional huge gradient of a bad batch. Unscale first so the threshold
            # applies to true gradients.
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)  # free gradient memory until the next backward

        if iter_num % cfg["log_interval"] == 0:
            # The mean loss over all micro-batches of this step, of every process. .item() waits
            # for the GPU to finish, so we only ask for it when logging.
            loss_value = mean_over_processes([train_loss.item()])[0]
            if not math.isfinite(loss_value):
                fail(f"training loss is {loss_value} at iteration {iter_num}; the last good checkpoint in "
                     f"{cfg['out_dir']} was kept. Lower learning_rate, or use dtype=bfloat16/float32.")
            now = time.time()
            dt = (now - t_last) / (iter_num + 1 - iter_timed)
            t_last, iter_timed = now, iter_num + 1
            tokens_per_sec = tokens_per_iter / dt
            flops_per_sec = raw_model.flops_per_token() * tokens_per_sec / world_size
            mfu = None  # the fraction of the GPU's 16-bit peak FLOP/s the model's arithmetic reaches
            if peak_flops is None:
                mfu_text = "n/a (unknown peak)"
            elif cfg["dtype"] == "float32":
                mfu_text = "n/a (peaks are for 16-bit)"
            else:
                mfu = flops_per_sec / peak_flops
                mfu_text = f"{100 * mfu:.1f}%"
            if master:
                print(f"iter {iter_num}: loss {loss_value:.4f}, time {dt * 1000:.2f}ms, tok/s {tokens_per_sec:,.0f}, "
                      f"mfu {mfu_text}, lr {lr:.2e}")
            if run_log:
                append_run_log(run_log, {"kind": "train", "iter": iter_num, "tokens": (iter_num + 1) * tokens_per_iter,
                                         "loss": loss_value, "lr": lr, "ms_per_iter": dt * 1000,
                                         "tokens_per_sec": tokens_per_sec, "mfu": mfu})
        iter_num += 1

    if ddp:
        # Leave together: a process that exited while rank 0 was still writing the checkpoint would
        # tear down the connections under it.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def start_run_log(path, resumed_at, start_record):
    """Begin the run log at path (out_dir/log.jsonl) with start_record; return the path.

    One JSON object per line: a "start" record (the config) at the beginning of every run and
    resume, an "eval" record per evaluation, a "train" record per log line. A new run starts the
    file afresh. A resumed run keeps the lines of the iterations before its checkpoint, and the
    evaluation at the checkpoint's own iteration (which it does not repeat), and drops the rest:
    the run that wrote them went on past its last checkpoint, and those iterations are about to be
    trained and logged again. So every iteration appears once, whatever was resumed. The file is
    rewritten through a temporary file, so a crash here loses no line of the old log.
    """
    kept = []
    if resumed_at is not None and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    keep = record["iter"] < resumed_at or (record["iter"] == resumed_at and record["kind"] == "eval")
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash mid-write
                if keep:
                    kept.append(json.dumps(record) + "\n")
    kept.append(json.dumps(start_record) + "\n")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
    return path


def append_run_log(path, record):
    """Add one record to the run log as a line of JSON (opened per line: a crash loses at most it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def load_checkpoint(out_dir, device, model_type):
    """out_dir/ckpt.pt as a dict, or a one-line error if it is missing, damaged or another script's.

    The file is only read: a damaged checkpoint is left exactly as it is, for the user to restore.
    """
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(path):
        fail(f"init_from='resume' but there is no checkpoint at {path}; train with init_from='scratch' first")
    try:
        # weights_only: a checkpoint is data; refuse anything that would run code while unpickling.
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        written_by = checkpoint["model_type"]
    except Exception as e:  # truncated, not a torch file, or not our dict
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        fail(f"{path} is not a readable checkpoint of this repository ({type(e).__name__}: {first_line}); "
             f"restore it from a copy, or train again with init_from='scratch'")
    if written_by != model_type:
        fail(f"{path} was written by {written_by}.py, not {model_type}.py")
    return checkpoint


def every_rank_rng_state(ddp, device_type):
    """The random-number-generator state of every process, as a list indexed by rank.

    The RNG decides the batches and the dropout masks. Each process has its own stream (seeded with
    seed + rank), so an exact resume must restore each process's own state, not rank 0's for all:
    with one state, every process would draw the same batches after a resume, and the effective
    batch would silently shrink by the process count. Every process must call this together.
    """
    state = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None}
    if not ddp:
        return [state]
    states = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


def restore_rng_state(states, rank, world_size, fresh_seed):
    """Restore this process's RNG state from a checkpoint's list (see every_rank_rng_state).

    With as many processes as the run that wrote it, each takes its own state and the run continues
    exactly. With another number there is no exact continuation (the batches are split differently
    anyway): each process then starts a fresh stream of its own, seeded from the seed, the iteration
    and its rank, so that processes still differ and no batch sequence from the start is replayed.
    """
    if isinstance(states, dict):  # a checkpoint from before every process's state was saved: one state
        states = [states]
    if len(states) == world_size:
        torch.set_rng_state(states[rank]["cpu"].cpu())
        if states[rank]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(states[rank]["cuda"].cpu())
        return
    if rank == 0:
        print(f"note: the checkpoint was written by {len(states)} process(es) and this run has {world_size}: "
              f"training continues with fresh random streams, not exactly as the original run would have")
    torch.manual_seed(fresh_seed)


def compile_model(model, autocast, device, trial_batch, dynamic=False):
    """torch.compile the model; return (compiled model, None), or (model, why) if compiling fails.

    One trial forward and backward right away on trial_batch() (the arguments of one training
    call), inside fork_rng so the real run's random stream is untouched, because compile errors only
    surface at the first call (gpt.py explains).
    """
    compiled = torch.compile(model, dynamic=dynamic)
    try:
        with torch.random.fork_rng(devices=[device] if str(device).startswith("cuda") else []):
            with autocast:
                _, loss = compiled(*trial_batch())
            loss.backward()
        model.zero_grad(set_to_none=True)
        return compiled, None
    except Exception as e:  # any compiler failure
        model.zero_grad(set_to_none=True)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return model, f"{type(e).__name__}: {first_line}"


if __name__ == "__main__":
    main(sys.argv[1:])
