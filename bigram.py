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
     checkpoints that resume exactly, and logging. main() is gpt.py's step for step, so that here
     you can read it without a Transformer in the way.

How to read it: three parts, as in every script of the series. Part 1 is the model, the lesson;
Part 2 holds the training defaults and main(), the loop in named steps; Part 3 is plumbing, the
helpers main() calls (config parsing, processes, checkpoints, logging), identical in every script.
Read Part 1, then main(); open Part 3 for the detail of one step.

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
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare_data


# =============================================================================
# Part 1: the model, the lesson. Read this first: the configuration, the table that is the whole
# model, generation, and how generation picks each next token.
# =============================================================================

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


# =============================================================================
# Part 2: training. The defaults (every one a config key), then main(): nanoGPT's train.py in
# named steps, the same steps as in every other script. Helpers it shares with every script are in
# Part 3; read main() first.
# =============================================================================

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


def check_table_size(vocab_size, dataset):
    """Refuse, before any weight exists, a vocabulary too large for a table (what differs from
    gpt.py, whose embedding grows with vocab_size, not with its square)."""
    if vocab_size > _MAX_VOCAB_SIZE:
        fail(f"dataset {dataset!r} has {vocab_size} tokens: a bigram table would hold {vocab_size ** 2:,} weights. "
             f"Use a vocabulary of at most {_MAX_VOCAB_SIZE} tokens (shakespeare_char, shakespeare_bpe)")


def main(argv):
    # ---- the config: defaults, then config files and --key=value (a resume takes the checkpoint's) ----
    # cfg, a plain dict: the defaults above, then each config file and --key=value in the order given.
    defaults = {k: globals()[k] for k in config_keys}
    cfg = parse_config(argv, defaults)
    if cfg["init_from"] not in ("scratch", "resume"):  # what differs from gpt.py: no pretrained bigrams
        fail(f"init_from={cfg['init_from']!r} is not supported by bigram.py: use 'scratch' or 'resume' (there "
             f"are no pretrained bigram models)")
    checkpoint = None
    if cfg["init_from"] == "resume":
        checkpoint = load_checkpoint(cfg["out_dir"], "bigram")
        # A resume continues the saved run with its settings. Only the dataset is fixed: the table
        # has one row and one column per token of its vocabulary (gpt.py also fixes its layers).
        cfg = resumed_config(argv, defaults, checkpoint, fixed=("dataset",))
    check_config(cfg)

    # ---- devices, processes and precision ----
    # Under torchrun, one copy of this script runs per GPU, each on its own batches; DDP averages their
    # gradients. start_processes (Part 3) places this process, picks the device and mixed precision (a
    # bigram has no matmul, so autocast changes little here; it stays so that this loop is gpt.py's).
    runtime = start_processes(cfg)
    device, master = runtime.device, runtime.rank == 0  # only rank 0 prints and writes files
    # Each process does its share of the micro-batches; together they make one optimizer step. (The
    # config keeps the total the user gave: that is what a resume with another process count needs.)
    micro_steps = cfg["gradient_accumulation_steps"] // runtime.world_size

    # ---- data ----
    # prepare_data.py turns the text into token ids once; get_batch draws batch_size random windows:
    # x (batch_size, block_size) and y, the same window shifted by one, so y[b, t] follows x[b, t].
    def prepare_dataset():
        try:
            data_dir = prepare_data.ensure_prepared(cfg["dataset"])  # downloads, tokenizes if needed
            loader = prepare_data.BatchLoader(data_dir, cfg["block_size"], cfg["batch_size"], device)
            return (prepare_data.load_meta(data_dir), loader), None
        except prepare_data.DataError as e:
            return None, str(e)

    meta, loader = local_rank0_first(prepare_dataset, runtime)
    tokens_per_iter = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]

    # ---- model: from scratch or from a checkpoint (no pretrained weights, unlike gpt.py) ----
    if cfg["init_from"] == "scratch":
        # No padding of the vocabulary to a multiple of 64 as gpt.py does: it would grow the table
        # quadratically, and a lookup gains nothing from aligned shapes.
        model_args = {"vocab_size": meta["vocab_size"], "block_size": cfg["block_size"]}
    else:
        # The table's size comes from the checkpoint. block_size is not part of the model (what
        # differs from gpt.py), so the resumed run's value, the data's sequence length, is kept.
        model_args = checkpoint["model_args"] | {"block_size": cfg["block_size"]}
    check_vocabulary_fits(meta, model_args["vocab_size"], cfg["dataset"])
    check_table_size(model_args["vocab_size"], cfg["dataset"])  # what differs from gpt.py (Part 2, above)
    model = Bigram(BigramConfig(**model_args))
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    model.to(device)
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]),
                                          runtime.device_type)
    iter_num, best_val_loss = 0, float("inf")
    if checkpoint is not None:
        # Adam's running averages, the GradScaler, this process's random stream: an exact continuation.
        optimizer.load_state_dict(checkpoint["optimizer"])
        iter_num, best_val_loss = restore_training_state(checkpoint, runtime, cfg["seed"])
        checkpoint = None  # free the loaded copy
    raw_model = model  # the plain module: what we save, and what MFU counts
    if cfg["compile"]:
        model = compile_or_warn(model, runtime, lambda: loader.get_batch("train"))
    if runtime.ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=runtime.device_ids)
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        print("config:", json.dumps(cfg))
        print(f"parameters: {raw_model.num_params() / 1e6:.2f}M; tokens per iteration: {tokens_per_iter:,} "
              f"({cfg['gradient_accumulation_steps']} x {cfg['batch_size']} x {cfg['block_size']})")
        # What differs from gpt.py: a uniform guess's loss, what the first evaluation shows, the bar to beat.
        print(f"loss of a uniform guess over {meta['vocab_size']} tokens: ln({meta['vocab_size']}) = "
              f"{math.log(meta['vocab_size']):.4f}")
    wandb = start_wandb(cfg, master)

    # ---- the training loop ----
    # Order within an iteration: evaluate (and checkpoint) the current weights, then take one
    # optimizer step. A checkpoint written at iteration N therefore holds the weights and RNG state
    # from just before step N, and resuming repeats exactly what the original run did next.
    resumed_at = iter_num if cfg["init_from"] == "resume" else None
    # out_dir/log.jsonl: every log and eval line as JSON, for plot.py to draw (rank 0 writes it).
    run_log = start_run_log(cfg, runtime, resumed_at, {"kind": "start", "iter": iter_num, "model_type": "bigram",
                                                       "tokens_per_iter": tokens_per_iter, "config": cfg})
    model.train()
    timer = IterationTimer(iter_num)
    while True:
        # Large steps early carry the rows from uniform to the counts; small late ones let them settle.
        lr = learning_rate_at(iter_num, cfg)  # linear warmup, then cosine decay (Part 3)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # A resumed run evaluated this iteration before saving it; eval_only evaluates it again.
        if iter_num % cfg["eval_interval"] == 0 and (iter_num != resumed_at or cfg["eval_only"]):
            # The val loss, on text the table never saw, is the honest score; a bigram is too small to overfit.
            losses = estimate_loss(model, loader, cfg, runtime)  # train and val loss (Part 3)
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            log_eval(run_log, wandb, {"kind": "eval", "iter": iter_num, "tokens": iter_num * tokens_per_iter,
                                      "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr})
            check_finite("val loss", losses["val"], iter_num, cfg)
            if iter_num > 0 and not cfg["eval_only"] and (losses["val"] < best_val_loss or cfg["always_save_checkpoint"]):
                best_val_loss = min(best_val_loss, losses["val"])
                rng_states = every_rank_rng_state(runtime)  # collective: every process takes part
                if master:
                    save_checkpoint(cfg["out_dir"], {
                        "model_type": "bigram", "model_args": model_args, "model": raw_model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scaler": runtime.scaler.state_dict(),
                        "iter_num": iter_num, "best_val_loss": best_val_loss, "config": cfg, "tokenizer": meta,
                        "rng_state": rng_states})
            timer.restart(iter_num)  # keep evaluation out of the timing
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
            with (model.no_sync() if runtime.ddp and not last else nullcontext()):
                with runtime.autocast:
                    _, loss = model(x, y)
                    loss = loss / micro_steps
                runtime.scaler.scale(loss).backward()
            train_loss += loss.detach()  # a tensor: no waiting for the GPU here
        # Clipping the global gradient norm bounds the size of any one update, protecting against
        # the occasional huge gradient of a bad batch; the norm is logged either way (grad_clip=0:
        # measured, never clipped). Unscale first: the norm and the threshold are the true gradients'.
        runtime.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"] or math.inf)
        runtime.scaler.step(optimizer)  # AdamW moves the looked-up rows along their gradients
        runtime.scaler.update()
        optimizer.zero_grad(set_to_none=True)  # free gradient memory until the next backward

        if iter_num % cfg["log_interval"] == 0:
            # The mean loss over all micro-batches of this step, of every process. .item() waits
            # for the GPU to finish, so we only ask for it when logging.
            loss_value = mean_over_processes([train_loss.item()], runtime)[0]
            check_finite("training loss", loss_value, iter_num, cfg)
            log_train_step(run_log, cfg, runtime, iter_num, loss_value, grad_norm.item(), lr,
                           timer.seconds_per_iter(iter_num),
                           tokens_per_iter, raw_model.flops_per_token())
        iter_num += 1

    end_run(cfg, runtime, iter_num, best_val_loss, wandb)


# =============================================================================
# Part 3: plumbing. Nothing here is needed to understand the model or the loop. gpt.py begins this
# part with its reading of Hugging Face checkpoints; bigram.py has none (there are no pretrained
# bigrams), so it holds only the functions every model script shares by convention.
# =============================================================================

# -----------------------------------------------------------------------------
# Shared by convention: every function below is identical in every model script (bigram.py,
# gpt.py, llama.py, olmo.py, bert.py, t5.py; tests/test_template.py keeps them so). Read them once,
# here or in gpt.py: a fix to one is made in all.


def parse_config(argv, defaults):
    """Apply config files and --key=value overrides to the defaults; return the final dict.

    Each argument without "--" is a Python file whose top-level assignments override keys, in
    order; each --key=value overrides one key, later ones winning. Values are Python literals
    (--batch_size=32, --decay_lr=False, --dropout=0.1); anything that is not a literal is taken as
    a string (--device=cuda). A key that does not exist, or a value of the wrong type, is an error
    naming the key and, where one is close, the key or value that was probably meant: a typo must
    never silently train with the default.
    """
    import ast
    import difflib

    config = dict(defaults)

    def assign(key, value, source):
        if key not in config:
            close = difflib.get_close_matches(key, config, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(config))}"
            fail(f"unknown config key {key!r} (from {source}){hint}")
        default = config[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # --learning_rate=1 means 1.0
        if type(value) is not type(default):
            # --compile=false is the string "false" (Python's literals are True and False).
            hint = (f"; use {value.capitalize()}" if isinstance(default, bool) and isinstance(value, str)
                    and value.lower() in ("true", "false") else "")
            fail(f"config key {key!r} must be {type(default).__name__}, got {value!r} (from {source}){hint}")
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


def resumed_config(argv, defaults, checkpoint, fixed):
    """The config of a resumed run: the checkpoint's, with the command line's settings on top.

    A resume continues a run, so every key the user does not set comes from the run being resumed,
    not from the script's defaults: `--init_from=resume --out_dir=X` alone trains on X's dataset
    with X's settings. The keys in `fixed` (the dataset and the architecture) cannot change in a
    resumed run, so setting one to another value than the checkpoint's is an error naming it,
    rather than a setting that is silently ignored or a crash at the first batch.
    """
    # The machine's settings belong to this run, not the checkpoint's: a run trained on a GPU may
    # resume on a CPU, so device, dtype and backend ('auto' resolved when the checkpoint was written)
    # come from this command line or the defaults.
    machine = ("device", "dtype", "backend")
    saved = {k: v for k, v in checkpoint["config"].items()
             if k in defaults and k not in machine and type(v) is type(defaults[k])}
    cfg = parse_config(argv, defaults | saved)
    for key in fixed:
        if key in saved and cfg[key] != saved[key]:
            fail(f"{key}={cfg[key]!r} conflicts with the checkpoint in {cfg['out_dir']}, trained with {key}="
                 f"{saved[key]!r}: a resumed run keeps its dataset and architecture. Drop the {key} setting, or "
                 f"start a new run (init_from='scratch') in another out_dir")
    return cfg


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
    text = f"error: {message}" if int(os.environ.get("RANK", "0")) == 0 else None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        leave_process_group(1, text)
    sys.exit(text or 1)


def leave_process_group(status, message=None):
    """Leave torchrun's process group and end this process at once, with exit status `status`
    (after printing `message`, if any, to stderr).

    Why not return and let Python exit as usual: DistributedDataParallel keeps the process group
    alive until the process ends (its gradient hooks and the group hold each other from C++, where
    Python's garbage collector cannot see them), so gloo's worker threads still run while the
    interpreter shuts down. A worker that then lets go of a tensor that Python also knew must take
    the interpreter's lock, which a shutting-down interpreter no longer grants: the thread is
    stopped inside C++ code and the whole process aborts ("terminate called without an active
    exception", SIGABRT), rarely: about once in a hundred 2-process runs here. By now every file is written and
    no Python code is left to run, so we end with os._exit, which skips the interpreter's shutdown
    and leaves the race no window.
    """
    torch.distributed.destroy_process_group()
    if message:
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def first_error(error, runtime):
    """The first error message (or None) of all processes; under DDP every process must call it.

    A failure seen by one process alone (rank 0 could not prepare the data) must stop all of them,
    or the others wait forever at their next collective call. Gathering every process's message,
    None when it is fine, lets all of them take the same decision.
    """
    if not runtime.ddp:
        return error
    errors = [None] * runtime.world_size
    torch.distributed.all_gather_object(errors, error)
    return next((e for e in errors if e is not None), None)


def local_rank0_first(step, runtime):
    """Run step() -> (value, error message or None) on every process, local rank 0 first; return
    the value, or fail everywhere if any process failed.

    Downloads and data preparation write files that every process then reads. One process per
    machine (local rank 0: each machine of a multi-node run has its own disk) does the writing
    while the others wait; after it, they find the files in place and only read them.
    """
    value = None
    for leaders_turn in (True, False):
        error = None
        if (runtime.local_rank == 0) == leaders_turn:
            value, error = step()
        error = first_error(error, runtime)
        if error is not None:
            fail(error)
    return value


@dataclass
class Runtime:
    """Where this process computes and how: what start_processes decided from the config."""
    ddp: bool  # in a process group (launched by torchrun, or FSDP's group of one): collectives take part
    rank: int  # this process's number among all processes (0 logs and writes files)
    local_rank: int  # its number on this machine (its GPU, on a multi-GPU machine)
    world_size: int
    device: str  # 'cpu', 'cuda:1', 'mps'
    device_type: str  # 'cpu', 'cuda' or 'mps'
    autocast: object  # the context in which forward passes run (16-bit matmuls, or nothing)
    scaler: object  # torch.amp.GradScaler, enabled for float16 only
    fsdp: bool = False  # parallelism='fsdp': the model is sharded over the processes (shard_model)

    @property
    def device_ids(self):
        """DistributedDataParallel's device_ids: this process's GPU, or None on a CPU."""
        return [self.local_rank] if self.device_type == "cuda" else None


def start_processes(cfg):
    """Settle the device, dtype and processes from the config (resolving 'auto'); return a Runtime.

    Under torchrun (RANK in the environment), join the process group: NCCL, NVIDIA's fast
    GPU-to-GPU library, on GPUs; gloo everywhere else (CPUs, and Windows, which has no NCCL).
    """
    ddp = int(os.environ.get("RANK", -1)) != -1
    parallelism = cfg.get("parallelism", "ddp")  # only the decoders have the key
    if parallelism not in ("ddp", "fsdp"):
        fail(f"parallelism={parallelism!r} must be 'ddp' (each process holds the whole model) or 'fsdp' "
             f"(the model, its gradients and optimizer state sharded over the processes)")
    fsdp = parallelism == "fsdp"
    rank, local_rank, world_size = 0, 0, 1
    if ddp:
        rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if cfg["gradient_accumulation_steps"] % world_size != 0:
            fail(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be divisible by the "
                 f"number of processes ({world_size})")
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
    if fsdp and (cfg["dtype"] == "float16" or device_type == "mps"):
        fail(f"parallelism='fsdp' runs on CUDA or CPU in float32 or bfloat16, not {cfg['dtype']} on {device_type} "
             f"(float16 would need a GradScaler over sharded gradients, which these scripts do not handle); use "
             f"--dtype=bfloat16 or parallelism='ddp'")
    if ddp or fsdp:
        if device_type == "cuda" and ddp:
            cfg["device"] = f"cuda:{local_rank}"
            torch.cuda.set_device(cfg["device"])
        nccl = device_type == "cuda" and torch.distributed.is_nccl_available()
        backend = cfg["backend"] if cfg["backend"] != "auto" else ("nccl" if nccl else "gloo")
        if ddp:
            torch.distributed.init_process_group(backend=backend)
        else:  # FSDP without torchrun: a group of one process, so that the same code (and checkpoints) serve
            torch.distributed.init_process_group(backend=backend, store=torch.distributed.HashStore(), rank=0,
                                                 world_size=1)
        ddp = True
    if device_type == "cpu" and rank == 0:
        warn_if_cpu_is_busy(world_size)
    # Each process seeds differently, so DDP ranks draw different batches (and dropout masks).
    torch.manual_seed(cfg["seed"] + rank)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: float32 range, much faster on Ampere+
    torch.backends.cudnn.allow_tf32 = True
    # Mixed precision: autocast runs matmuls in 16 bits while keeping weights and reductions in
    # float32. bfloat16 has float32's exponent range, so it needs nothing else; float16 gradients
    # can underflow to zero, which the GradScaler prevents by scaling the loss up before backward
    # (and skipping a step whose gradients overflowed to inf).
    # Under FSDP the sharded module itself casts (MixedPrecisionPolicy, see shard_model): no autocast.
    autocast = (nullcontext() if cfg["dtype"] == "float32" or fsdp
                else torch.autocast(device_type=device_type, dtype=dtypes[cfg["dtype"]]))
    scaler = torch.amp.GradScaler(device_type, enabled=(cfg["dtype"] == "float16"))
    return Runtime(ddp, rank, local_rank, world_size, cfg["device"], device_type, autocast, scaler, fsdp)


def warn_if_cpu_is_busy(world_size):
    """Warn once when torch's threads outnumber the cores that other programs leave free.

    PyTorch starts one thread per core. When another program already keeps cores busy, its
    threads wait for each other at every operation (each op splits its work evenly, so the slowest
    thread sets the pace), and training can run ten times slower than with fewer threads. The
    1-minute load average (Unix only) estimates the busy cores.
    """
    if not hasattr(os, "getloadavg"):
        return
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    free = max(1, round(cores - load))
    threads = torch.get_num_threads() * world_size
    if threads > free:
        per_process = max(1, free // world_size)
        print(f"warning: this CPU is busy (load {load:.1f} on {cores} cores) and torch runs {threads} "
              f"thread(s); with OMP_NUM_THREADS={per_process} it may train several times faster")


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


def load_checkpoint(out_dir, model_type):
    """out_dir/ckpt.pt as a dict (tensors on the CPU), or a one-line error if it is missing,
    damaged or another script's.

    The file is only read: a damaged checkpoint is left exactly as it is, for the user to restore.
    The tensors go to the model's device when the model and optimizer take them.

    A sharded checkpoint (ckpt_dcp/, written under parallelism='fsdp') gives its training_state.pt,
    without weights or optimizer, and under "sharded" its directory, from which the model's shards are
    read later (restore_model_and_optimizer). Where out_dir holds both kinds, the newer one counts.
    """
    path = os.path.join(out_dir, "ckpt.pt")
    sharded = os.path.join(out_dir, "ckpt_dcp")
    if not os.path.isdir(sharded):
        sharded += ".old"  # save_sharded_checkpoint crashed between its two renames: the previous checkpoint
    state_path = os.path.join(sharded, "training_state.pt")
    if os.path.exists(state_path) and (not os.path.exists(path) or os.path.getmtime(state_path) > os.path.getmtime(path)):
        path = state_path
    if not os.path.exists(path):
        fail(f"init_from='resume' but there is no checkpoint at {path}; train with init_from='scratch' first")
    try:
        # weights_only: a checkpoint is data; refuse anything that would run code while unpickling.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        written_by = checkpoint["model_type"]
    except Exception as e:  # truncated, not a torch file, or not our dict
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        fail(f"{path} is not a readable checkpoint of this repository ({type(e).__name__}: {first_line}); "
             f"restore it from a copy, or train again with init_from='scratch'")
    if written_by != model_type:
        fail(f"{path} was written by {written_by}.py, not {model_type}.py")
    if path == state_path:
        checkpoint["sharded"] = sharded
    return checkpoint


def check_vocabulary_fits(meta, vocab_size, dataset):
    """Refuse, before the first batch, a dataset whose token ids the model has no row for.

    An id past the embedding table is an IndexError deep inside the first forward pass (or, on a
    GPU, a device-side assert); here it is one line naming both sizes.
    """
    if meta["vocab_size"] > vocab_size:
        fail(f"dataset {dataset!r} has {meta['vocab_size']} tokens but the model knows {vocab_size}: use a "
             f"dataset made with the model's tokenizer (a resumed run: the dataset it was trained on)")


def restore_training_state(checkpoint, runtime, seed):
    """Put a resumed run where the checkpoint left it: the GradScaler, this process's random stream;
    return (iter_num, best_val_loss). (The model and optimizer are loaded by the caller.)"""
    if checkpoint["scaler"]:  # empty when the run that wrote it used no float16 (and so no scaler)
        runtime.scaler.load_state_dict(checkpoint["scaler"])
    iter_num = checkpoint["iter_num"]
    restore_rng_state(checkpoint["rng_state"], runtime.rank, runtime.world_size,
                      seed + runtime.world_size * iter_num + runtime.rank)
    return iter_num, checkpoint["best_val_loss"]


def every_rank_rng_state(runtime):
    """The random-number-generator state of every process, as a list indexed by rank.

    The RNG decides the batches and the dropout masks. Each process has its own stream (seeded with
    seed + rank), so an exact resume must restore each process's own state, not rank 0's for all:
    with one state, every process would draw the same batches after a resume, and the effective
    batch would silently shrink by the process count. Every process must call this together.
    """
    state = {"cpu": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state() if runtime.device_type == "cuda" else None}
    if not runtime.ddp:
        return [state]
    states = [None] * runtime.world_size
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
    """torch.compile the model; return (compiled model, None), or (model, why) if compiling fails here.

    Compilation is lazy: errors (no C compiler, an unsupported platform) only appear at the first
    call. So we try one forward and backward right away, on trial_batch(): the arguments of one
    training call, model(*trial_batch()) -> (logits, loss). It runs inside fork_rng, so that
    drawing that batch (and any dropout) does not change the random stream of the real run.
    dynamic=True compiles one shape-generic graph, for batches whose shape changes from step to
    step (padded pairs in t5.py). On failure the caller warns and trains uncompiled: slower, but
    correct.
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


def compile_or_warn(model, runtime, trial_batch, dynamic=False):
    """compile_model for training: the compiled model, or the model itself after a warning."""
    compiled, compile_error = compile_model(model, runtime.autocast, runtime.device, trial_batch, dynamic)
    if compile_error and runtime.rank == 0:
        print(f"warning: torch.compile failed ({compile_error}); continuing without compile")
    return compiled


def start_wandb(cfg, master):
    """The wandb module, logging this run, when wandb_log is set (on rank 0); else None."""
    if not (cfg["wandb_log"] and master):
        return None
    try:
        import wandb
    except ImportError:
        fail("wandb_log=True but wandb is not installed: pip install wandb")
    wandb.init(project=cfg["wandb_project"], name=cfg["wandb_run_name"], config=cfg)
    return wandb


@torch.no_grad()
def estimate_loss(model, loader, cfg, runtime):
    """Mean loss over eval_iters batches of each split (on every process), with dropout off.

    Averaged over the processes, so that all of them see the same numbers and take the same
    decisions: whether to save, whether the loss has diverged.
    """
    model.eval()
    losses = []
    for split in ("train", "val"):
        total = 0.0
        for _ in range(cfg["eval_iters"]):
            x, y = loader.get_batch(split)
            with runtime.autocast:
                _, loss = model(x, y)
            total += loss.item()
        losses.append(total / cfg["eval_iters"])
    model.train()
    return dict(zip(("train", "val"), mean_over_processes(losses, runtime)))


def learning_rate_at(it, cfg):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr.

    Warmup: at the start, Adam's moment estimates are built from a handful of gradients and the
    weights are random, so full-size steps can throw the model somewhere it never recovers from.
    The cosine then spends most of the run at a high rate and anneals smoothly at the end, where
    small steps let the weights settle instead of jittering with each batch's noise.
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


def mean_over_processes(values, runtime):
    """Average a few floats over all processes (each has measured its own batches)."""
    if not runtime.ddp:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    torch.distributed.all_reduce(total)  # a sum: gloo has no average
    return (total / runtime.world_size).tolist()


def check_finite(what, value, iter_num, cfg):
    """Stop at a loss that is inf or NaN: every step after it would only spread the damage."""
    if not math.isfinite(value):
        fail(f"{what} is {value} at iteration {iter_num}; the last good checkpoint in {cfg['out_dir']} was kept. "
             f"Lower learning_rate, or use dtype=bfloat16/float32.")


class IterationTimer:
    """Wall time per training iteration, averaged over the iterations since the last log line."""

    def __init__(self, iter_num):
        self.restart(iter_num)

    def restart(self, iter_num):
        """Start timing at iteration iter_num (after an evaluation, which the timing leaves out)."""
        self.start, self.first_iter = time.time(), iter_num

    def seconds_per_iter(self, iter_num):
        """The mean time of iterations first_iter..iter_num; timing then restarts at iter_num + 1."""
        now = time.time()
        seconds = (now - self.start) / (iter_num + 1 - self.first_iter)
        self.start, self.first_iter = now, iter_num + 1
        return seconds


def log_train_step(run_log, cfg, runtime, iter_num, loss, grad_norm, lr, seconds, tokens_per_iter, flops_per_token):
    """Print the training line (rank 0) and add it to the run log: loss, time, tokens/s, MFU, and
    the gradient norm before clipping.

    MFU (model FLOPs utilisation, PaLM paper): the fraction of the GPU's 16-bit peak FLOP/s that
    the model's own arithmetic reaches, the honest measure of how well a run uses its hardware. The
    gradient norm is the first thing to look at when a loss spikes: a norm that jumps by orders of
    magnitude before the spike, or one clipped at every step, says the learning rate is too high.
    """
    tokens_per_sec = tokens_per_iter / seconds
    peak = gpu_peak_flops(torch.cuda.get_device_name(runtime.device)) if runtime.device_type == "cuda" else None
    mfu = None
    if peak is None:
        mfu_text = "n/a (unknown peak)"
    elif cfg["dtype"] == "float32":
        mfu_text = "n/a (peaks are for 16-bit)"
    else:
        mfu = flops_per_token * tokens_per_sec / runtime.world_size / peak
        mfu_text = f"{100 * mfu:.1f}%"
    if runtime.rank == 0:
        print(f"iter {iter_num}: loss {loss:.4f}, time {seconds * 1000:.2f}ms, tok/s {tokens_per_sec:,.0f}, "
              f"mfu {mfu_text}, lr {lr:.2e}, grad norm {grad_norm:.3g}")
    if run_log:
        append_run_log(run_log, {"kind": "train", "iter": iter_num, "tokens": (iter_num + 1) * tokens_per_iter,
                                 "loss": loss, "grad_norm": grad_norm, "lr": lr, "ms_per_iter": seconds * 1000,
                                 "tokens_per_sec": tokens_per_sec, "mfu": mfu})


def log_eval(run_log, wandb, record):
    """Add an evaluation's record (losses, the model's own metric) to the run log and to wandb."""
    if run_log:
        append_run_log(run_log, record)
    if wandb:
        # wandb groups charts by the prefix before "/": train/loss, val/loss, val/exact_match, ...
        wandb.log({k.replace("_", "/", 1) if k.startswith(("train_", "val_")) else k: v
                   for k, v in record.items() if k != "kind"})


def save_checkpoint(out_dir, checkpoint):
    """Write out_dir/ckpt.pt: to a temporary file, then renamed over the old one, so a crash
    mid-write leaves the previous checkpoint intact."""
    path = os.path.join(out_dir, "ckpt.pt")
    try:
        torch.save(checkpoint, path + ".tmp")
        os.replace(path + ".tmp", path)
    except OSError as e:
        fail(f"could not write {path} ({e}); the previous checkpoint, if any, is intact")
    print(f"saved checkpoint to {path}")


def start_run_log(cfg, runtime, resumed_at, start_record):
    """Begin out_dir/log.jsonl with start_record and return its path; None where no log is written
    (on ranks other than 0, and for eval_only, which trains nothing).

    One JSON object per line: a "start" record (the config) at the beginning of every run and
    resume, an "eval" record per evaluation, a "train" record per log line. A new run starts the
    file afresh. A resumed run keeps every line, and marks "superseded": true on the lines past its
    checkpoint (the evaluation at the checkpoint's own iteration, which it does not repeat, stays
    current): the run that wrote them went on past its last checkpoint, and those iterations are
    about to be trained and logged again. Readers (plot.py) skip superseded lines, so every
    iteration counts once. The file is rewritten through a temporary file, so a crash here loses no
    line of the old log.
    """
    if runtime.rank != 0 or cfg["eval_only"]:
        return None
    path = os.path.join(cfg["out_dir"], "log.jsonl")
    lines, superseded = [], 0
    if resumed_at is not None and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    later = record["iter"] > resumed_at or (record["iter"] == resumed_at and record["kind"] != "eval")
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash mid-write
                if later and not record.get("superseded"):
                    record["superseded"], superseded = True, superseded + 1
                lines.append(json.dumps(record) + "\n")
    if superseded:
        print(f"note: {path}: {superseded} record(s) past iteration {resumed_at}, the checkpoint's, are kept but "
              f"marked superseded; this run trains those iterations again")
    lines.append(json.dumps(start_record) + "\n")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)
    return path


def append_run_log(path, record):
    """Add one record to the run log as a line of JSON (opened per line: a crash loses at most it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def end_run(cfg, runtime, iter_num, best_val_loss, wandb):
    """Say what a resume would continue from, close the wandb run, and under torchrun leave the
    process group together (which ends the process: see leave_process_group).

    With always_save_checkpoint=False the checkpoint is the best evaluation's, which may be far
    behind the last iteration: a later --init_from=resume continues from there, not from the end.
    """
    if runtime.rank == 0 and not cfg["eval_only"] and not cfg["always_save_checkpoint"]:
        path = os.path.join(cfg["out_dir"], "ckpt.pt")
        if os.path.exists(path):
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iter_num"]  # no tensor read
            if saved != iter_num:
                print(f"note: {path} holds iteration {saved}, the best val loss ({best_val_loss:.4f}); "
                      f"--init_from=resume continues from there, not from iteration {iter_num}")
    if wandb:
        wandb.finish()
    if runtime.ddp:
        # Leave together: a process that exited while rank 0 was still writing the checkpoint would
        # tear down the connections under it.
        torch.distributed.barrier()
        leave_process_group(0)


if __name__ == "__main__":
    main(sys.argv[1:])
