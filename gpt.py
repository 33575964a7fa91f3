"""
gpt.py — GPT-2 in one file: the model, loading OpenAI's weights, and the training loop.

GPT-2 (Radford et al., "Language Models are Unsupervised Multitask Learners", OpenAI 2019) is a
decoder-only Transformer (Vaswani et al. 2017) trained to predict the next token. Almost every
large language model since is a variation of it, so this is the script to read closely; the
others in this repository (llama.py, olmo.py, ...) are written as differences from it.

What you will learn here, top to bottom:
  1. the configuration of a GPT (how many layers, heads, channels, how long a context);
  2. its building blocks: LayerNorm, causal self-attention (both the explicit
     softmax(QK^T / sqrt(d)) V with a causal mask and PyTorch's fused kernel), the MLP, and the
     pre-norm residual block;
  3. the model: token + learned position embeddings, the stack of blocks, a final LayerNorm and a
     language-model head that shares its weights with the token embedding;
  4. generation with a key/value cache, temperature, top-k, top-p and a repetition penalty;
  5. loading Hugging Face GPT-2 checkpoints (including a tiny safetensors reader);
  6. a complete training loop: AdamW, warmup + cosine learning-rate schedule, gradient
     accumulation and clipping, mixed precision, torch.compile, multi-GPU with DDP, checkpoints
     that resume exactly, and throughput / MFU logging.

Run it:
    python gpt.py config/shakespeare_char.py            # train a small character-level GPT (GPU)
    python gpt.py config/shakespeare_char_cpu.py        # the same, shrunk to run on a laptop CPU
    python gpt.py config/finetune_shakespeare.py        # fine-tune OpenAI's GPT-2 on Shakespeare
    torchrun --standalone --nproc_per_node=4 gpt.py config/shakespeare_char.py --gradient_accumulation_steps=4
    python sample.py --out_dir=out-shakespeare-char     # generate from what you trained

Compared with bigram.py (the previous lesson), tokens now look at each other: attention lets every
position gather information from all earlier positions, and stacking blocks lets it do so many
times. Everything else — the data, cross-entropy loss, sampling — is the same.
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
class GPTConfig:
    # The longest context the model can see. GPT-2 learns one position embedding per slot, so this
    # is a hard limit: position 1024 simply has no embedding.
    block_size: int = 1024
    # GPT-2's tokenizer has 50257 tokens; 50304 is that rounded up to a multiple of 64, which makes
    # the output matmul map better onto GPU tensor cores (the extra logits are never targets, so
    # the model learns to give them ~zero probability).
    vocab_size: int = 50304
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # attention heads per block; each head works in n_embd // n_head channels
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # GPT-2 pretraining used 0.1; for short training runs 0 works better
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2; False is a little faster
    # 'sdpa' uses PyTorch's fused scaled_dot_product_attention (FlashAttention on GPUs);
    # 'manual' spells out softmax(QK^T/sqrt(d))V step by step. Both compute the same numbers;
    # the manual path is there to read, to step through in a debugger and to check the fused one.
    attention: str = "sdpa"

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.attention not in ("sdpa", "manual"):
            raise ValueError(f"attention={self.attention!r} must be 'sdpa' or 'manual'")


# -----------------------------------------------------------------------------
# Building blocks, in the order data meets them.


def manual_attention(q, k, v, mask, dropout_p=0.0):
    """Scaled dot-product attention written out: softmax(Q K^T / sqrt(head_dim)) V.

    q: (B, n_head, T_q, head_dim); k, v: (B, n_head, T_k, head_dim); mask: (T_q, T_k) bool, True
    where a query may look at a key. Each query scores every key by a dot product; dividing by
    sqrt(head_dim) keeps the scores' variance near 1 whatever the head size, so the softmax does not
    saturate (Vaswani et al. 2017, section 3.2.1). The mask sets forbidden scores to -inf, which the
    softmax turns into exactly zero weight. The output mixes the values by those weights.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, n_head, T_q, T_k)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)
    weights = F.dropout(weights, p=dropout_p)
    return weights @ v  # (B, n_head, T_q, head_dim)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so generation never recomputes them.

    Without a cache, producing token t+1 reruns the whole model over tokens 0..t: quadratic work per
    token. But a token's key and value in each layer depend only on that token and those before it
    (causality), so they never change once computed. We store them in preallocated tensors and
    each new token only computes its own query, key and value: linear work per token.
    """

    def __init__(self, n_layer, max_len):
        self.n_layer = n_layer
        self.max_len = max_len
        self.keys = self.values = None  # (n_layer, B, n_head, max_len, head_dim), made on first use
        self.length = 0  # how many positions are filled; the next token goes at this position

    def update(self, layer, k, v):
        """Store the new tokens' k, v (B, n_head, T, head_dim) for one layer; return all so far."""
        if self.keys is None:
            # Allocated at the first call so that it takes the dtype the keys really have (bfloat16
            # under autocast, float32 otherwise) and the batch size of the prompt.
            B, n_head, _, head_dim = k.shape
            shape = (self.n_layer, B, n_head, self.max_len, head_dim)
            self.keys = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.values = torch.zeros(shape, dtype=v.dtype, device=v.device)
        start, end = self.length, self.length + k.size(2)
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head attention in which each position may only look at itself and earlier positions.

    One Linear makes queries, keys and values for all heads at once (c_attn, 3 * n_embd outputs);
    the heads attend independently in n_embd / n_head channels each, and c_proj mixes their outputs
    back into the residual stream. The names c_attn / c_proj are GPT-2's own, which keeps loading
    OpenAI's weights a matter of renaming nothing.
    """

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.attention = config.attention
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        # Split channels into heads and put the head axis before time, so that the attention
        # matmuls batch over (B, n_head): (B, T, C) -> (B, T, n_head, head_dim) -> (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # now (B, n_head, past + T, head_dim)
        # Query i (absolute position past + i) may see keys 0 .. past + i. Without a cache (past = 0)
        # this is the usual lower-triangular mask; with one, the new queries sit at the bottom
        # right of a (past + T) x (past + T) mask.
        if self.attention == "manual" or (past > 0 and T > 1):
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        else:
            mask = None  # T == 1 with a cache sees everything; past == 0 is plain causal
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "manual":
            y = manual_attention(q, k, v, mask, dropout_p)
        else:
            # The fused kernel never materialises the (T, T) score matrix (FlashAttention on GPUs),
            # so it is faster and uses memory linear in T.
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=(mask is None and past == 0)
            )
        # Heads back side by side: (B, n_head, T, head_dim) -> (B, T, C)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward network: expand 4x, GELU, project back.

    Attention moves information between positions; the MLP then processes each position on its own.
    Most of a GPT's parameters (two thirds) live here. GPT-2 uses the tanh approximation of GELU
    (what Hugging Face calls 'gelu_new'), so we must too to reproduce its logits.
    """

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One Transformer block, pre-norm: x + attn(ln(x)), then x + mlp(ln(x)).

    The original Transformer normalised after each residual addition (post-norm). GPT-2 moved the
    LayerNorm to the input of each sub-layer, which leaves an unnormalised 'residual stream' running
    from the embedding to the output: gradients flow straight down it, which is what lets deep
    stacks train without careful warm-up tricks. LayerNorm(x) = (x - mean) / sqrt(var + eps) * g + b
    over the channels of each position.
    """

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


# -----------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the matrix that turns a token into a vector also turns
        # the final vector back into token scores. It saves vocab_size * n_embd parameters (38M of
        # GPT-2 small's 124M) and GPT-2 was trained this way, so its checkpoints only store one copy.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2's scaled initialisation: every block adds the output of two projections (attention
        # and MLP c_proj) to the residual stream, so after n_layer blocks the stream's variance has
        # grown by about 2 * n_layer contributions. Shrinking those projections' std by
        # 1/sqrt(2 * n_layer) keeps the stream's scale independent of depth at initialisation.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        # GPT-2 draws every weight from N(0, 0.02) and starts biases at zero.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        # Parameters() yields the tied embedding/head matrix once, so this counts it once.
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, cache=None):
        """idx: (B, T) token ids -> (logits (B, T, vocab_size), loss or None).

        With targets (B, T) the loss is the mean cross-entropy of predicting targets[b, t] from
        idx[b, :t+1]; targets of -1 are ignored. With a cache, idx holds only the new tokens and
        their positions continue from cache.length.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {past + T} is longer than block_size={self.config.block_size}"
            )
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        # A token's input is "what it is" plus "where it is": both learned vectors of n_embd.
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size): unnormalised log-probabilities
        loss = None
        if targets is not None:
            # Cross-entropy = -log softmax(logits)[target], averaged over every position of every
            # sequence: each (B, T) slot is one next-token prediction.
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to fine-tune GPT-2 (1024) with shorter, cheaper blocks."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    # -------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=1.0, use_cache=True):
        """Append max_new_tokens sampled tokens to idx (B, T) and return the (B, T + new) result.

        Each step turns the last position's logits into a distribution (sample_next_token) and
        draws from it. With use_cache, the first step runs the whole prompt and fills a KVCache;
        later steps feed only the newest token. Once the text outgrows block_size, the model can
        only see the newest block_size tokens. GPT-2's learned position embeddings are absolute:
        when the window slides, every kept token moves to a new position, so its cached keys and
        values (computed at the old position) are stale. Past that point we therefore recompute
        the cropped window every step; the cache is an optimisation that never changes the result.
        """
        block_size = self.config.block_size
        cache = None
        logits = None
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= block_size:
                if cache is None:  # first step: run the prompt and fill the cache
                    cache = KVCache(self.config.n_layer, block_size)
                    logits, _ = self(idx, cache=cache)
                # otherwise `logits` already holds the newest token's output from the last step
            else:
                logits, _ = self(idx[:, -block_size:])
            next_token = sample_next_token(logits[:, -1, :], idx, temperature, top_k, top_p, repetition_penalty)
            idx = torch.cat((idx, next_token), dim=1)
            if cache is not None and idx.size(1) <= block_size:
                logits, _ = self(next_token, cache=cache)
        return idx

    # -------------------------------------------------------------------------
    # Loading OpenAI's GPT-2 from Hugging Face checkpoints

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """Build a GPT from a Hugging Face GPT-2 checkpoint: a local directory (config.json plus
        model.safetensors or pytorch_model.bin) or a hub id such as 'gpt2', 'gpt2-medium',
        'gpt2-large', 'gpt2-xl' (downloaded once into a cache directory)."""
        directory = name_or_dir if os.path.isdir(name_or_dir) else download_hf_checkpoint(name_or_dir)
        config_path = os.path.join(directory, "config.json")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{directory} has no config.json: not a Hugging Face checkpoint directory")
        with open(config_path) as f:
            hf = json.load(f)
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"{directory} holds a {hf.get('model_type')!r} model; gpt.py loads only 'gpt2' checkpoints")
        # Options of HF's GPT2 implementation that change the maths; OpenAI's checkpoints use none.
        for key, expected in [("activation_function", "gelu_new"), ("scale_attn_weights", True),
                              ("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False)]:
            if hf.get(key, expected) != expected:
                raise ValueError(f"unsupported GPT-2 option {key}={hf[key]!r} in {config_path} (expected {expected!r})")
        if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
            raise ValueError(f"unsupported layer_norm_epsilon={hf['layer_norm_epsilon']} (gpt.py uses 1e-5)")
        config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=dropout, bias=True)
        model = cls(config)

        hf_state = load_hf_weights(directory)
        ours = model.state_dict()
        # HF GPT-2 stores c_attn, c_proj and c_fc as "Conv1D" modules whose weight is (in, out):
        # the transpose of nn.Linear's (out, in). Everything else matches by name once the
        # "transformer." prefix (present in some checkpoints, absent in OpenAI's) is dropped.
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        loaded = set()
        for hf_name, tensor in hf_state.items():
            name = hf_name.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # HF's precomputed causal mask buffers, not weights
            if name == "lm_head.weight":
                continue  # tied to wte: the same matrix
            key = "transformer." + name
            if key not in ours:
                raise ValueError(f"unexpected tensor {hf_name!r} in the checkpoint at {directory}")
            if name.endswith(transposed):
                tensor = tensor.t()
            if tensor.shape != ours[key].shape:
                raise ValueError(f"shape mismatch for {hf_name}: checkpoint {tuple(tensor.shape)}, model {tuple(ours[key].shape)}")
            with torch.no_grad():
                ours[key].copy_(tensor.to(ours[key].dtype))
            loaded.add(key)
        missing = set(ours) - loaded - {"lm_head.weight"}
        if missing:
            raise ValueError(f"checkpoint at {directory} lacks {sorted(missing)[:5]}")
        return model

    # -------------------------------------------------------------------------
    # Optimizer

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices only.

        Weight decay pulls weights towards zero, a regulariser that suits the big matrices of
        Linear and Embedding layers. Biases and LayerNorm gains are 1-D and few; decaying them only
        fights the model (a LayerNorm gain decayed to zero switches a channel off), so they get
        none. The fused implementation updates all parameters in one kernel instead of a loop of
        small ones: much faster on CUDA, and on CPU too.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self):
        """Training FLOPs per token (PaLM paper, appendix B): 6 per parameter (forward 2,
        backward 4) plus attention's score and mixing matmuls, 12 * n_layer * T * n_embd."""
        cfg = self.config
        n_params = self.num_params() - self.transformer.wpe.weight.numel()  # lookups cost no FLOPs
        return 6 * n_params + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


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
# Reading Hugging Face checkpoints without extra dependencies


def read_safetensors(path):
    """Read a .safetensors file into a dict of tensors.

    The format is deliberately simple: 8 bytes holding N (little-endian uint64), then N bytes of
    JSON mapping each tensor name to its dtype, shape and [begin, end) byte offsets, then the raw
    little-endian tensor bytes. Unlike a pickle, nothing in it can execute code.
    """
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool}
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        data = bytearray(f.read())
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if info["dtype"] not in dtypes:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        flat = torch.frombuffer(data, dtype=dtypes[info["dtype"]], offset=begin,
                                count=(end - begin) // dtypes[info["dtype"]].itemsize)
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def load_hf_weights(directory):
    """The state dict of a Hugging Face checkpoint directory, from safetensors or a PyTorch .bin."""
    safetensors_path = os.path.join(directory, "model.safetensors")
    if os.path.exists(safetensors_path):
        return read_safetensors(safetensors_path)
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(bin_path):
        return torch.load(bin_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def download_hf_checkpoint(name):
    """Download a GPT-2 checkpoint from the Hugging Face hub into a cache directory; return it."""
    known = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
    if name.removeprefix("openai-community/") not in known:
        raise ValueError(f"{name!r} is neither a local directory nor one of the GPT-2 hub ids {known}")
    import requests  # only needed for downloads

    repo = name if "/" in name else "openai-community/" + name
    cache_root = os.environ.get("NANO_MODELS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "single-file-lms"))
    directory = os.path.join(cache_root, repo.replace("/", "--"))
    os.makedirs(directory, exist_ok=True)
    for filename in ("config.json", "model.safetensors"):
        target = os.path.join(directory, filename)
        if os.path.exists(target):
            continue
        url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
        print(f"downloading {url}")
        try:
            with requests.get(url, stream=True, timeout=30) as response:
                response.raise_for_status()
                with open(target + ".part", "wb") as f:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
        except requests.RequestException as e:
            raise RuntimeError(f"could not download {url} ({e}); download config.json and model.safetensors "
                               f"by hand into a folder and pass that folder instead") from None
        os.replace(target + ".part", target)  # only a complete file ever gets the real name
    return directory


# -----------------------------------------------------------------------------
# Training configuration. Every simple value below can be overridden by config files and
# --key=value arguments (see parse_config). The defaults train GPT-2 small (124M parameters).

# I/O
out_dir = "out"
eval_interval = 250  # evaluate train/val loss (and maybe checkpoint) every this many iterations
log_interval = 10  # print a training line every this many iterations
eval_iters = 200  # batches averaged per loss estimate
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # save at every eval, not only when val loss improves
init_from = "scratch"  # 'scratch', 'resume' (from out_dir/ckpt.pt), 'gpt2*' or a local HF directory
# logging
wandb_log = False
wandb_project = "gpt"
wandb_run_name = "gpt"
# data
dataset = "shakespeare"
gradient_accumulation_steps = 40  # micro-batches summed into one optimizer step
batch_size = 12  # sequences per micro-batch
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True
attention = "sdpa"
# AdamW
learning_rate = 6e-4
max_iters = 5000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip the global gradient norm to this; 0 disables
# learning-rate schedule
decay_lr = True
warmup_iters = 200
lr_decay_iters = 5000  # ~ max_iters, as the Chinchilla paper suggests
min_lr = 6e-5  # ~ learning_rate / 10
# system
backend = "auto"  # DDP backend: 'auto' is nccl on CUDA, gloo on CPU
device = "auto"  # 'auto' picks cuda, then mps, then cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # 'auto', 'float32', 'bfloat16' or 'float16'
compile = True  # torch.compile the model (falls back with a warning where it cannot)
seed = 1337

# Every simple-typed name defined above is a config key (names starting with "_" are not).
config_keys = [k for k, v in list(globals().items())
               if not k.startswith("_") and isinstance(v, (bool, int, float, str))]


def parse_config(argv, defaults):
    """Apply config files and --key=value overrides to the defaults; return the final dict.

    Each argument without "--" is a Python file whose top-level assignments override keys, in
    order; each --key=value overrides one key, later ones winning. Values are Python literals
    (--batch_size=32, --decay_lr=False, --dropout=0.1); anything that is not a literal is taken as
    a string (--device=cuda). A key that does not exist, or a value of the wrong type, is an error
    naming the key: a typo must never silently train with the default.
    """
    import ast

    config = dict(defaults)

    def fail(message):
        sys.exit(f"error: {message}")

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


def main(argv):
    cfg = parse_config(argv, {k: globals()[k] for k in config_keys})

    # ---- devices, processes and precision ----
    ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun?
    if cfg["device"] == "auto":
        cfg["device"] = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if ddp:
        rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if cfg["device"].startswith("cuda"):
            cfg["device"] = f"cuda:{local_rank}"
            torch.cuda.set_device(cfg["device"])
        backend = cfg["backend"] if cfg["backend"] != "auto" else ("nccl" if cfg["device"].startswith("cuda") else "gloo")
        torch.distributed.init_process_group(backend=backend)
        if cfg["gradient_accumulation_steps"] % world_size != 0:
            sys.exit(f"error: gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be divisible "
                     f"by the number of processes ({world_size})")
        # Each process does its share of the micro-batches; together they make one optimizer step.
        cfg["gradient_accumulation_steps"] //= world_size
    else:
        rank, local_rank, world_size = 0, 0, 1
    master = rank == 0  # only this process logs and writes checkpoints
    device = cfg["device"]
    device_type = "cuda" if device.startswith("cuda") else device.split(":")[0]
    if device_type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: device='cuda' but no CUDA GPU is available; use --device=cpu")
    if device_type == "mps" and not torch.backends.mps.is_available():
        sys.exit("error: device='mps' but MPS is not available on this machine; use --device=cpu")
    if cfg["dtype"] == "auto":
        if device_type == "cuda":
            cfg["dtype"] = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            cfg["dtype"] = "float32"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg["dtype"] not in dtypes:
        sys.exit(f"error: dtype={cfg['dtype']!r} must be one of auto, {', '.join(dtypes)}")
    # Each process seeds differently, so DDP ranks draw different batches (and dropout masks).
    torch.manual_seed(cfg["seed"] + rank)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: float32 range, much faster on Ampere+
    torch.backends.cudnn.allow_tf32 = True
    # Mixed precision: autocast runs matmuls in 16 bits while keeping weights and reductions in
    # float32. bfloat16 has float32's exponent range, so it needs nothing else; float16 gradients
    # can underflow to zero, which the GradScaler prevents by scaling the loss up before backward
    # (and skipping a step whose gradients overflowed to inf).
    autocast = (nullcontext() if cfg["dtype"] == "float32"
                else torch.autocast(device_type=device_type, dtype=dtypes[cfg["dtype"]]))
    scaler = torch.amp.GradScaler(device_type, enabled=(cfg["dtype"] == "float16"))

    # ---- data ----
    try:
        if ddp and not master:  # let rank 0 download and tokenize alone; the others wait for it
            torch.distributed.barrier()
        data_dir = prepare_data.ensure_prepared(cfg["dataset"])
        if ddp and master:
            torch.distributed.barrier()
        meta = prepare_data.load_meta(data_dir)
        loader = prepare_data.BatchLoader(data_dir, cfg["block_size"], cfg["batch_size"], device)
    except prepare_data.DataError as e:
        sys.exit(f"error: {e}")
    tokens_per_iter = cfg["gradient_accumulation_steps"] * world_size * cfg["batch_size"] * cfg["block_size"]

    # ---- model ----
    iter_num, best_val_loss, checkpoint = 0, float("inf"), None
    model_keys = ("n_layer", "n_head", "n_embd", "block_size", "bias", "dropout", "attention")
    if cfg["init_from"] == "scratch":
        vocab_size = meta["vocab_size"]
        if vocab_size > 1024:  # large vocabularies: pad to a multiple of 64 for faster matmuls
            vocab_size = (vocab_size + 63) // 64 * 64
        try:
            config = GPTConfig(**{k: cfg[k] for k in model_keys}, vocab_size=vocab_size)
        except ValueError as e:
            sys.exit(f"error: {e}")
        model = GPT(config)
        model_args = asdict(config)
    elif cfg["init_from"] == "resume":
        ckpt_path = os.path.join(cfg["out_dir"], "ckpt.pt")
        if not os.path.exists(ckpt_path):
            sys.exit(f"error: init_from='resume' but there is no checkpoint at {ckpt_path}; train with init_from='scratch' first")
        checkpoint = torch.load(ckpt_path, map_location=device, weights_only=True)
        if checkpoint.get("model_type") != "gpt":
            sys.exit(f"error: {ckpt_path} was written by {checkpoint.get('model_type')}.py, not gpt.py")
        # The architecture comes from the checkpoint; only dropout may change between runs.
        model_args = checkpoint["model_args"] | {"dropout": cfg["dropout"]}
        model = GPT(GPTConfig(**model_args))
        model.load_state_dict(checkpoint["model"])
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
    else:
        try:
            model = GPT.from_pretrained(cfg["init_from"], dropout=cfg["dropout"])
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            sys.exit(f"error: cannot load {cfg['init_from']!r}: {e}")
        if meta["vocab_size"] > model.config.vocab_size:
            sys.exit(f"error: dataset {cfg['dataset']!r} has {meta['vocab_size']} tokens but {cfg['init_from']} "
                     f"knows {model.config.vocab_size}; prepare it with --tokenizer=gpt2")
        if cfg["block_size"] < model.config.block_size:
            model.crop_block_size(cfg["block_size"])
        model_args = asdict(model.config)
    if cfg["block_size"] > model.config.block_size:
        sys.exit(f"error: block_size={cfg['block_size']} exceeds the model's {model.config.block_size}")
    model.to(device)
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]), device_type)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng_state"]["cpu"].cpu())
        if device_type == "cuda" and checkpoint["rng_state"].get("cuda") is not None:
            torch.cuda.set_rng_state(checkpoint["rng_state"]["cuda"].cpu())
    raw_model = model  # the plain module: what we save, and what MFU counts
    if cfg["compile"]:
        model = compile_model(model, autocast, device, cfg["batch_size"])
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device_type == "cuda" else None)

    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        print("config:", json.dumps(cfg))
        print(f"parameters: {raw_model.num_params() / 1e6:.2f}M; tokens per iteration: {tokens_per_iter:,} "
              f"({cfg['gradient_accumulation_steps'] * world_size} x {cfg['batch_size']} x {cfg['block_size']})")
    wandb = None
    if cfg["wandb_log"] and master:
        try:
            import wandb
        except ImportError:
            sys.exit("error: wandb_log=True but wandb is not installed: pip install wandb")
        wandb.init(project=cfg["wandb_project"], name=cfg["wandb_run_name"], config=cfg)

    def lr_at(it):
        """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
        if not cfg["decay_lr"]:
            return cfg["learning_rate"]
        if it < cfg["warmup_iters"]:
            return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
        if it > cfg["lr_decay_iters"]:
            return cfg["min_lr"]
        progress = (it - cfg["warmup_iters"]) / max(1, cfg["lr_decay_iters"] - cfg["warmup_iters"])
        return cfg["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg["learning_rate"] - cfg["min_lr"])

    @torch.no_grad()
    def estimate_loss():
        """Mean loss over eval_iters batches of each split, with dropout off."""
        model.eval()
        losses = {}
        for split in ("train", "val"):
            total = 0.0
            for _ in range(cfg["eval_iters"]):
                x, y = loader.get_batch(split)
                with autocast:
                    _, loss = model(x, y)
                total += loss.item()
            losses[split] = total / cfg["eval_iters"]
        model.train()
        return losses

    def save_checkpoint():
        checkpoint = {
            "model_type": "gpt",
            "model_args": model_args,
            "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "iter_num": iter_num,
            "best_val_loss": best_val_loss,
            "config": cfg,
            "tokenizer": meta,
            "rng_state": {"cpu": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None},
        }
        path = os.path.join(cfg["out_dir"], "ckpt.pt")
        # Write then rename: a crash mid-write leaves the previous checkpoint intact.
        torch.save(checkpoint, path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"saved checkpoint to {path}")

    # ---- the training loop ----
    # Order within an iteration: evaluate (and checkpoint) the current weights, then take one
    # optimizer step. A checkpoint written at iteration N therefore holds the weights and RNG state
    # from just before step N, and resuming repeats exactly what the original run did next.
    peak_flops = gpu_peak_flops(torch.cuda.get_device_name(device)) if device_type == "cuda" else None
    resumed_at = iter_num if checkpoint is not None else None
    checkpoint = None  # free the loaded copy
    model.train()
    # Timing: t_last is when iteration iter_timed began; a log line averages over the iterations since.
    t_last, iter_timed = time.time(), iter_num
    while True:
        lr = lr_at(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if iter_num % cfg["eval_interval"] == 0 and iter_num != resumed_at:
            losses = estimate_loss()
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if wandb:
                    wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})
                if not math.isfinite(losses["val"]):
                    sys.exit(f"error: val loss is {losses['val']} at iteration {iter_num}; the last good checkpoint "
                             f"in {cfg['out_dir']} was kept. Lower learning_rate, or use dtype=bfloat16/float32.")
                if iter_num > 0 and (losses["val"] < best_val_loss or cfg["always_save_checkpoint"]):
                    best_val_loss = min(best_val_loss, losses["val"])
                    save_checkpoint()
            t_last, iter_timed = time.time(), iter_num  # keep evaluation out of the timing
        if cfg["eval_only"] or iter_num >= cfg["max_iters"]:
            break

        # Gradient accumulation: sum the gradients of several micro-batches (each loss divided by
        # their number, so the sum is a mean) to train with a larger batch than fits in memory.
        for micro_step in range(cfg["gradient_accumulation_steps"]):
            x, y = loader.get_batch("train")
            # Under DDP, gradients are averaged across processes during backward; doing it only on
            # the last micro-step saves all the communication of the earlier ones.
            last = micro_step == cfg["gradient_accumulation_steps"] - 1
            with (model.no_sync() if ddp and not last else nullcontext()):
                with autocast:
                    _, loss = model(x, y)
                    loss = loss / cfg["gradient_accumulation_steps"]
                scaler.scale(loss).backward()
        if cfg["grad_clip"] > 0:
            # Clipping the global gradient norm bounds the size of any one update, protecting
            # against the occasional huge gradient of a bad batch. Unscale first so the threshold
            # applies to true gradients.
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)  # free gradient memory until the next backward

        if iter_num % cfg["log_interval"] == 0 and master:
            # .item() waits for the GPU to finish, so we only call it when logging.
            loss_value = loss.item() * cfg["gradient_accumulation_steps"]
            if not math.isfinite(loss_value):
                sys.exit(f"error: training loss is {loss_value} at iteration {iter_num}; the last good checkpoint "
                         f"in {cfg['out_dir']} was kept. Lower learning_rate, or use dtype=bfloat16/float32.")
            now = time.time()
            dt = (now - t_last) / (iter_num + 1 - iter_timed)
            t_last, iter_timed = now, iter_num + 1
            tokens_per_sec = tokens_per_iter / dt
            flops_per_sec = raw_model.flops_per_token() * tokens_per_sec / world_size
            if peak_flops is None:
                mfu = "n/a (unknown peak)"
            elif cfg["dtype"] == "float32":
                mfu = "n/a (peaks are for 16-bit)"
            else:
                mfu = f"{100 * flops_per_sec / peak_flops:.1f}%"
            print(f"iter {iter_num}: loss {loss_value:.4f}, time {dt * 1000:.2f}ms, tok/s {tokens_per_sec:,.0f}, "
                  f"mfu {mfu}, lr {lr:.2e}")
        iter_num += 1

    if ddp:
        torch.distributed.destroy_process_group()


def compile_model(model, autocast, device, batch_size):
    """torch.compile the model, or return it unchanged with a warning if compiling fails here.

    Compilation is lazy: errors (no C compiler, an unsupported platform) only appear at the first
    call. So we try one forward and backward on random tokens right away, inside fork_rng so that
    the trial does not change the random stream of the real run.
    """
    compiled = torch.compile(model)
    try:
        with torch.random.fork_rng(devices=[device] if str(device).startswith("cuda") else []):
            x = torch.randint(model.config.vocab_size, (batch_size, model.config.block_size), device=device)
            with autocast:
                _, loss = compiled(x, x)
            loss.backward()
        model.zero_grad(set_to_none=True)
        return compiled
    except Exception as e:  # any compiler failure: training uncompiled is slower but correct
        model.zero_grad(set_to_none=True)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"warning: torch.compile failed ({type(e).__name__}: {first_line}); continuing without compile")
        return model


if __name__ == "__main__":
    main(sys.argv[1:])
