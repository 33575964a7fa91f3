"""
llama.py — LLaMA in one file: the model, loading Hugging Face Llama checkpoints, and the training loop.

LLaMA (Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", Meta 2023) is GPT-2's
decoder-only Transformer with a handful of changes that had each proved itself elsewhere, trained
on far more tokens than was usual for its size. Llama 2 (Touvron et al., July 2023) kept the
architecture, doubled the context to 4096 tokens and gave the 70B model grouped-query attention.
Llama 3 (Meta, April 2024; "The Llama 3 Herd of Models", Grattafiori et al. 2024) used GQA at every
size, a 128K-token tiktoken-style BPE vocabulary and rope_theta = 500000; Llama 3.1 stretched the
context to 128K tokens by rescaling the rotary frequencies ("llama3" rope scaling), and Llama 3.2
added small 1B and 3B models with tied input/output embeddings. Many open models reuse the
architecture unchanged and are published as Hugging Face model_type "llama" (TinyLlama, SmolLM2, Yi,
DeepSeek LLM), so this file loads them too; Mistral and Qwen2 changed details and have their own types.

What differs from gpt.py, and why (everything else — the data, the loss, sampling, the training
loop — is gpt.py's, so read that first):
  1. RMSNorm instead of LayerNorm (Zhang & Sennrich 2019): scale by the root mean square only, no
     mean subtraction and no bias. Cheaper and, in practice, just as good.
  2. No biases anywhere (PaLM did the same): they cost memory and bandwidth and help nothing.
  3. SwiGLU feed-forward (Shazeer 2020) instead of GELU: a gated unit, with the hidden width cut to
     2/3 of 4 * n_embd so the three matrices cost what GPT's two did.
  4. Rotary position embeddings (RoPE; Su et al. 2021) instead of a learned position table:
     queries and keys are rotated by an angle proportional to their position, so attention scores
     depend on relative distance. No table means no parameters and no hard length limit baked
     into the weights (the context still has to be trained for, or stretched by rescaling).
  5. Grouped-query attention (GQA; Ainslie et al. 2023): several query heads share one key/value
     head, which shrinks the KV cache — the memory that limits long-context generation.
  6. Untied input and output embeddings by default (tied again in Llama 3.2's small models).

What you will learn here: each of those blocks written out, the two memory layouts of RoPE that
confuse everyone who ports Llama weights, Llama 3.1's frequency rescaling, a KV cache holding only
n_kv_head heads, and loading sharded Hugging Face safetensors checkpoints.

How to read it: Part 1 (the model) first, read against gpt.py's: RMSNorm, the RoPE functions,
Attention with its grouped key/value heads, FeedForward, Block, Llama; Part 1 ends with LoRA
fine-tuning (gpt.py's section, but for LORA_TARGETS) and gpt.py's int8 quantization for generation
(quantize_int8, unchanged). Part 2's main() is gpt.py's step for step; only the pretrained path
differs (load_pretrained_llama, above it). Part 3 maps Hugging
Face's tensor names onto ours, then holds the helpers every script shares (read once, in gpt.py).

Run it:
    python llama.py config/llama_shakespeare_char.py        # a small character-level Llama (GPU)
    python llama.py config/llama_shakespeare_char_cpu.py    # the same, shrunk for a laptop CPU
    python llama.py config/llama_shakespeare_char.py --init_from=resume   # continue exactly
    torchrun --standalone --nproc_per_node=4 llama.py config/llama_shakespeare_char.py --gradient_accumulation_steps=4
    python sample.py --out_dir=out-llama-shakespeare-char   # generate from what you trained
and in Python, a pretrained model (any Hugging Face "llama" checkpoint, hub id or local directory):
    model = Llama.from_pretrained("HuggingFaceTB/SmolLM2-135M")
"""

import json
import math
import mmap
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare_data
# =============================================================================
# Part 1: the model, the lesson. Read this first: the configuration, the building blocks in the
# order data meets them, the model with generation, and how generation picks each next token.
# =============================================================================

# -----------------------------------------------------------------------------
# Model configuration


@dataclass
class LlamaConfig:
    # Longest context the model is used with. Unlike GPT-2 nothing in the weights depends on it
    # (there is no position table): it bounds training blocks and the generation window, and for
    # pretrained models it is the context they were trained for (max_position_embeddings).
    block_size: int = 1024
    vocab_size: int = 32000  # LLaMA 1/2's SentencePiece vocabulary; Llama 3 has 128256
    n_layer: int = 12
    n_head: int = 12  # query heads
    # Key/value heads. n_kv_head == n_head is ordinary multi-head attention (LLaMA 1, Llama 2 7B);
    # n_kv_head == 1 is multi-query attention (Shazeer 2019); in between is grouped-query
    # attention, each group of n_head // n_kv_head query heads sharing one key and one value.
    n_kv_head: int = 4
    n_embd: int = 768
    # Width of the SwiGLU hidden layer. None derives it as Meta's code does, from the two below.
    hidden_dim: int | None = None
    multiple_of: int = 256  # round the derived hidden width up to a multiple of this (GPU friendly)
    ffn_dim_multiplier: float = 1.0  # scales the derived width (Llama 2 70B used 1.3, Llama 3 8B 1.3)
    norm_eps: float = 1e-5  # RMSNorm's epsilon (LLaMA 1 used 1e-6, Llama 2 and 3 use 1e-5)
    # RoPE base: the wavelengths of the rotation frequencies run from 2*pi up to about
    # 2*pi*rope_theta. 10000 in LLaMA 1/2 (as in the original Transformer's sinusoids); Llama 3
    # raised it to 500000 so that the slowest rotations stay distinguishable over long contexts.
    rope_theta: float = 10000.0
    # None, or Llama 3.1's frequency rescaling in Hugging Face's format:
    # {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    #  "original_max_position_embeddings": 8192}. See llama3_scaled_frequencies.
    rope_scaling: dict | None = None
    tie_embeddings: bool = False  # share the token embedding with the output head (Llama 3.2 1B/3B)
    dropout: float = 0.0  # Meta trained without dropout; small data sets want some
    attention: str = "sdpa"  # 'sdpa' (fused kernel) or 'manual' (written out), as in gpt.py

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}: "
                             f"each key/value head serves a whole group of query heads")
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"head dimension n_embd // n_head = {self.n_embd // self.n_head} must be even: "
                             f"RoPE rotates channels in pairs")
        if self.attention not in ("sdpa", "manual"):
            raise ValueError(f"attention={self.attention!r} must be 'sdpa' or 'manual'")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type")
            if rope_type != "llama3":
                raise ValueError(f"unsupported rope_scaling type {rope_type!r}; llama.py implements only 'llama3'")
            needed = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            missing = [key for key in needed if key not in self.rope_scaling]
            if missing:
                raise ValueError(f"rope_scaling {self.rope_scaling} lacks {missing}")
        if self.hidden_dim is None:
            # Meta's recipe: start from GPT's 4 * n_embd, take 2/3 of it because SwiGLU has three
            # matrices instead of two (same parameter count), scale, and round up. For 4096 wide
            # (LLaMA 7B): 2/3 * 16384 = 10922 -> 11008.
            hidden = int(2 * 4 * self.n_embd / 3)
            hidden = int(self.ffn_dim_multiplier * hidden)
            self.hidden_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


# -----------------------------------------------------------------------------
# Building blocks, in the order data meets them. (Token embeddings are a plain nn.Embedding; there
# is no position embedding: position enters inside attention, through RoPE.)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g over the channels of each position.

    LayerNorm centres (subtracts the mean) and rescales; Zhang & Sennrich (2019) found the
    re-centring is not what makes normalisation help, and dropping it (and the bias) saves work.
    The mean of squares is taken in float32 even under 16-bit autocast — squares of large
    activations overflow float16 and lose precision in bfloat16 — and the result is cast back
    before the gain, exactly as Hugging Face's LlamaRMSNorm does, so pretrained logits match it.
    """

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def llama3_scaled_frequencies(inv_freq, scaling):
    """Llama 3.1's rescaling of RoPE frequencies to stretch an 8K-trained context to 128K.

    Each channel pair rotates with wavelength 2*pi / inv_freq. Pairs whose wavelength is short
    compared with the original context (above high_freq_factor turns within it) encode local order
    and are left alone. Pairs whose wavelength exceeds the original context (fewer than
    low_freq_factor turns) never completed a turn in training; dividing their frequency by `factor`
    ("position interpolation", Chen et al. 2023) makes the longer context look, to them, like the
    one they were trained on. Pairs in between are blended linearly in the number of turns.
    Written to reproduce Hugging Face's float32 arithmetic step by step.
    """
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)  # 0 at the long end, 1 at the short end
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(is_medium, blended, scaled)


def rope_inverse_frequencies(config):
    """(head_dim / 2,) rotation speeds in radians per position: theta^(-2i / head_dim), i = 0, 1, ...

    The same geometric ladder as the original Transformer's sinusoidal position encoding: the first
    pair turns one radian per token, the last about 1/theta radians per token.
    """
    head_dim = config.n_embd // config.n_head
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (config.rope_theta ** exponents)
    if config.rope_scaling is not None:
        inv_freq = llama3_scaled_frequencies(inv_freq, config.rope_scaling)
    return inv_freq


def rope_cos_sin(inv_freq, start, length):
    """cos and sin, each (length, head_dim), for positions start .. start + length - 1 (apply_rope).

    angle[m, i] = m * inv_freq[i], in float32: at position 100000 a bfloat16 angle would be off by
    hundreds of radians. Hugging Face's rotate_half(x) = (-x2, x1) becomes our plain swap (x2, x1)
    with the minus sign moved into the first half of sin, which saves one operation per call and
    gives bit-identical results.
    """
    pos = torch.arange(start, start + length, device=inv_freq.device).float()
    angles = torch.outer(pos, inv_freq.float())  # (T, head_dim / 2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x, cos, sin):
    """Rotate the channel pairs of x (B, n_heads, T, head_dim) by the angles of each position.

    RoPE's idea (Su et al. 2021): treat a head's head_dim channels as head_dim / 2 points in the
    plane, and rotate pair i of a token at position m by m * inv_freq[i]. A rotated query at m
    dotted with a rotated key at n equals the unrotated pair dotted after one rotation by
    (n - m) * inv_freq[i]: the score sees only the relative offset, whatever the absolute positions.

    Which channels form a pair is a layout choice, and two are in use:
      - Meta's original code pairs neighbours (x0, x1), (x2, x3), ... and rotates them as complex
        numbers (torch.view_as_complex): "interleaved" layout;
      - Hugging Face pairs channel i with channel i + head_dim / 2: "rotate-half" layout, computed
        as x * cos + rotate_half(x) * sin with rotate_half(x) = (-x2, x1).
    The two are the same model up to the order of q's and k's output channels within each head, and
    attention scores are dot products, which do not care about channel order as long as q and k
    agree. So Hugging Face's conversion script permutes the rows of the q_proj and k_proj weights
    (evens first, then odds, per head) and rotate-half on converted weights gives exactly Meta's
    interleaved result. We load Hugging Face checkpoints, so we implement rotate-half. (v needs no
    permutation: it is never rotated.)

    cos: (T, head_dim), cos of each position's angles, repeated for the two halves; sin: the same
    for the sines, with the first half negated (see rope_cos_sin). The 2-D rotation of every pair,
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), is then x * cos + (x2, x1) * sin, where x1 and
    x2 are the two halves of the channels (pair i is (x1[..., i], x2[..., i])). Swapping the halves
    is a roll by head_dim / 2: (x1, x2) rolled by half its length is (x2, x1). The whole rotation is
    then four element-wise operations on whole tensors, with no per-pair indexing.
    """
    return x * cos.to(x.dtype) + x.roll(x.size(-1) // 2, dims=-1) * sin.to(x.dtype)


def attention_weights(q, k, mask):
    """softmax(Q K^T / sqrt(head_dim)) under the mask, (B, n_head, T_q, T_k): as in gpt.py.

    Position is already inside q and k (rotated by RoPE), so these weights are where it shows."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, n_head, T_q, T_k)
    scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores, dim=-1)  # each row sums to 1


def manual_attention(q, k, v, mask, dropout_p=0.0):
    """Scaled dot-product attention written out: softmax(Q K^T / sqrt(head_dim)) V, as in gpt.py.

    q, k, v: (B, n_head, T_q or T_k, head_dim) — by now the key/value heads have been repeated up to
    n_head; mask: (T_q, T_k) bool, True where a query may look at a key.
    """
    weights = F.dropout(attention_weights(q, k, mask), p=dropout_p)
    return weights @ v  # (B, n_head, T_q, head_dim)


class KVCache:
    """Keys and values of every layer for the tokens seen so far (see gpt.py's KVCache for why).

    Two differences from gpt.py. Only n_kv_head heads are stored — GQA's whole point: Llama 3 8B
    (32 query heads, 8 key/value heads) needs a quarter of the cache memory multi-head attention
    would. And the keys are stored already rotated, at their absolute positions: RoPE's relative
    property means a later query, rotated at its own position, scores them correctly as they are.
    """

    def __init__(self, n_layer, max_len):
        self.n_layer = n_layer
        self.max_len = max_len
        self.keys = self.values = None  # (n_layer, B, n_kv_head, max_len, head_dim), made on first use
        self.length = 0  # how many positions are filled; the next token goes at this position

    def update(self, layer, k, v):
        """Store the new tokens' k, v (B, n_kv_head, T, head_dim) for one layer; return all so far."""
        if self.keys is None:
            # Allocated at the first call, in the dtype and batch size the keys really have.
            B, n_kv_head, _, head_dim = k.shape
            shape = (self.n_layer, B, n_kv_head, self.max_len, head_dim)
            self.keys = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.values = torch.zeros(shape, dtype=v.dtype, device=v.device)
        start, end = self.length, self.length + k.size(2)
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class Attention(nn.Module):
    """Causal self-attention with rotary positions and grouped-query key/value heads.

    Separate q_proj, k_proj, v_proj instead of gpt.py's fused c_attn, because with GQA they have
    different widths (n_head * head_dim for queries, n_kv_head * head_dim for keys and values) and
    because those are Hugging Face's names, so checkpoints load without renaming. (Inference
    engines fuse them into one matmul; on CPU we measured no gain at this repository's sizes.)
    No biases.
    """

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.attention = config.attention
        self.q_proj = nn.Linear(config.n_embd, config.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_head * self.head_dim, config.n_embd, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0):
        B, T, C = x.shape
        # (B, T, C) -> (B, T, heads, head_dim) -> (B, heads, T, head_dim), as in gpt.py
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        # Position enters here, and only here: rotate queries and keys (never values).
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # now (B, n_kv_head, past + T, head_dim)
        if self.attention == "manual" or (past > 0 and T > 1):
            # Query i (absolute position past + i) may see keys 0 .. past + i, as in gpt.py.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        else:
            mask = None  # T == 1 with a cache sees everything; past == 0 is plain causal
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "manual":
            # GQA made explicit: query head h reads key/value head h // (n_head // n_kv_head), so
            # each kv head is repeated for its group: (B, n_kv_head, T, d) -> (B, n_head, T, d).
            # The copies cost memory and bandwidth for this one matmul only; the cache stays small.
            group = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            y = manual_attention(q, k, v, mask, dropout_p)
        elif T == 1:
            # Speed path: skip on first reading. It computes what the branch below does, faster.
            # One new token, the common case in generation: fold each group of query heads into
            # the query-length axis, (B, n_head, 1, d) -> (B, n_kv_head, group, d), so that every
            # key/value head serves its whole group in one plain attention call. No mask: all the
            # group's queries sit at the newest position and may see every cached key. The result
            # is enable_gqa's below, but each cached key and value is read once per group rather
            # than once per query head, which is the bandwidth GQA set out to save. (PyTorch's CPU
            # kernel behind enable_gqa copies the kv heads instead, several times slower per layer
            # on a CPU; the README gives the measurement.)
            group = self.n_head // self.n_kv_head
            y = F.scaled_dot_product_attention(q.view(B, self.n_kv_head, group, self.head_dim), k, v,
                                               dropout_p=dropout_p)
            y = y.view(B, self.n_head, 1, self.head_dim)
        else:
            # enable_gqa=True (PyTorch 2.5+) lets the kernel broadcast each key/value head over its
            # query group (same grouping as above) without materialising the repeated copies.
            # Several queries (one took the branch above) and no mask: a prompt on an empty cache
            # or no cache, so plain causal. (A plain bool, also under torch.compile, unlike
            # gpt.py's test of past; tests/test_compile.py.)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.o_proj(y))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) (Shazeer, "GLU Variants Improve Transformer", 2020).

    A gated linear unit: one projection (up) carries the content, the other (gate) passes through
    SiLU(z) = z * sigmoid(z) and decides, channel by channel, how much of it gets through. At equal
    parameter count it beat GELU and ReLU MLPs in Shazeer's experiments and was adopted by PaLM and
    LLaMA. ("Why" remains empirical; the paper famously attributes it to "divine benevolence".)
    """

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.hidden_dim, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm block as in gpt.py — x + attn(norm(x)), then x + mlp(norm(x)) — with RMSNorm.

    The attribute names are Hugging Face's (input_layernorm, self_attn, post_attention_layernorm,
    mlp), so a checkpoint's tensor names are our parameter names.
    """

    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = FeedForward(config)

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


# -----------------------------------------------------------------------------
# The model


class Llama(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.activation_checkpointing = False  # main() sets it from the training key; see forward()
        # `model.` then `lm_head`: Hugging Face's LlamaForCausalLM layout, so that state-dict keys
        # such as model.layers.3.mlp.up_proj.weight are exactly the checkpoint's.
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),  # holds no weights, so it adds no checkpoint key
                layers=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                norm=RMSNorm(config.n_embd, config.norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # As in gpt.py. LLaMA 1-3.1 keep two matrices; with Llama 3's 128K vocabulary the
            # embedding is a large share of a small model (263M of the 1.2B in Llama 3.2 1B), so
            # the 1B and 3B models tie them again.
            self.model.embed_tokens.weight = self.lm_head.weight
        # The rotation speeds are fixed, not learned: a buffer (moves with .to(device)) that is
        # not persistent (recomputed from the config, so not in checkpoints, as in HF's files).
        # Keep the model in float32 and use autocast for 16-bit speed, as the training loop does:
        # model.to(torch.bfloat16) would round these frequencies too.
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)
        # Initialisation: N(0, 0.02) everywhere and RMSNorm gains at 1, like Hugging Face's
        # LlamaForCausalLM (initializer_range=0.02), plus gpt.py's 1/sqrt(2 * n_layer) shrink of
        # the two projections that write into the residual stream (o_proj, down_proj), for the same
        # reason as there. Meta's training initialisation is not published; this trains well.
        for name, param in self.named_parameters():
            if param.dim() == 2:
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(param, mean=0.0, std=std)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # a tied matrix is counted once

    def forward(self, idx, targets=None, cache=None, last_only=False):
        """idx: (B, T) token ids -> (logits (B, T, vocab_size), loss or None), as in gpt.py.

        With targets (B, T) the loss is the mean cross-entropy of the next-token predictions
        (targets of -1 ignored). With a cache, idx holds only the new tokens, whose positions
        continue from cache.length. last_only=True computes the logits of the last position alone,
        all that generation needs (with Llama 3's 128K vocabulary the output layer dominates).
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {past + T} is longer than block_size={self.config.block_size}"
            )
        x = self.model.drop(self.model.embed_tokens(idx))  # (B, T, C): no position added here
        # Computed once, shared by all layers. The angles are float32 (see rope_cos_sin).
        cos, sin = rope_cos_sin(self.inv_freq, past, T)
        # Speed path: skip on first reading. Round cos and sin to the activations' dtype once here,
        # as Hugging Face does, rather than in each of the 2 * n_layer apply_rope calls. (Under
        # autocast x is float32, so this keeps them float32 and apply_rope still rounds them to the
        # 16-bit queries in every call.)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer, block in enumerate(self.model.layers):
            if self.activation_checkpointing and self.training and cache is None:
                # Memory path: skip on first reading. Backward needs every block's inner activations
                # (the attention's and feed-forward's inputs, SwiGLU's hidden_dim-wide gate and up, dropout masks), so
                # normally all n_layer blocks' worth stay in memory until backward. Checkpointing
                # stores only the block's input x, and reruns the block's forward during backward to
                # rebuild them, one block at a time: activation memory drops from n_layer blocks' to
                # about one block's (plus the n_layer inputs), for about one extra forward pass of
                # compute. The non-reentrant checkpoint saves the RNG state before the forward and
                # restores it for the rerun (preserve_rng_state=True, its default), so dropout draws
                # the same masks twice and the gradients are exactly those of the stored path.
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, cache, layer, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, layer)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        x = self.model.norm(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Lower the context limit, e.g. to fine-tune a 128K-context model on 1024-token blocks.

        With RoPE there is no position table to cut: only the limit changes (and with it the
        generation window and the block_size saved in checkpoints).
        """
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size

    # -------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=1.0, use_cache=True, vocab_size=None, eos_token_id=None, on_token=None):
        """Append up to max_new_tokens sampled tokens to idx (B, T) and return the (B, T + new) result.

        Same sampling and options as gpt.py (vocab_size, eos_token_id, on_token) and the same policy
        past block_size: once the text is longer than the window, recompute the newest block_size
        tokens every step. One might hope RoPE lets the cache simply slide — its scores depend only
        on relative positions, so dropping the oldest entry leaves every remaining offset unchanged
        — and in layer 0 that is true. But the keys of every later layer were computed from hidden
        states that had attended to the tokens now dropped; a true recompute of the window, which no
        longer contains them, gives different keys. Sliding would silently make cached and uncached
        generation disagree, so we keep them exactly equal and pay the recompute instead.
        """
        check_sampling_options(temperature, top_k, top_p, repetition_penalty)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        block_size = self.config.block_size
        # The cache only ever needs as many slots as the text can fill before it outgrows the
        # window: for a 128K-context model and a short generation that is far less than block_size.
        cache_len = min(block_size, idx.size(1) + max_new_tokens)
        stop_ids = None if eos_token_id is None else torch.tensor(eos_token_id, device=idx.device).view(-1)
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= block_size:
                if cache is None:  # first step: run the whole prompt and fill the cache
                    cache = KVCache(self.config.n_layer, cache_len)
                    logits, _ = self(idx, cache=cache, last_only=True)
                else:  # the cache holds every earlier token: feed only the newest
                    logits, _ = self(idx[:, -1:], cache=cache, last_only=True)
            else:
                logits, _ = self(idx[:, -block_size:], last_only=True)
            logits = logits[:, -1, :vocab_size]  # (B, vocab_size); [:None] keeps every id
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
    # Loading Hugging Face Llama-architecture checkpoints

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0, dtype=torch.float32):
        """Build a Llama from a Hugging Face checkpoint with model_type "llama": a local directory
        (config.json plus model.safetensors, or model.safetensors.index.json and its shards) or a hub
        id such as "HuggingFaceTB/SmolLM2-135M" or "meta-llama/Llama-3.2-1B" (downloaded once into a
        cache directory; gated repositories need an access token in the HF_TOKEN variable).

        dtype: of the weights, float32 by default (None: the file's own); bfloat16 halves the memory (sample.py
        --dtype=bfloat16). RoPE's frequencies stay float32 either way. As in gpt.py, the model is
        built on the meta device and takes the memory-mapped checkpoint tensors as its parameters,
        so loading needs about the weights' size in memory, shard after shard. Reading HF's config
        and matching its tensors is bookkeeping, in Part 3 (hf_llama_config, hf_llama_state_dict).
        """
        directory, config = hf_llama_config(name_or_dir, dropout)
        with torch.device("meta"):
            model = cls(config)
        state = hf_llama_state_dict(load_hf_weights(directory), model.state_dict(), config, dtype, directory)
        model.load_state_dict(state, strict=False, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight  # assign=True replaced the tied matrix
        # The buffer was made on the meta device too; compute the real frequencies, in float32.
        model.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)
        return model

    # -------------------------------------------------------------------------
    # Optimizer

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW, decaying matrices only (RMSNorm gains are 1-D and get none), as in gpt.py."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self):
        """Training FLOPs per token as in gpt.py: 6 per parameter that does a matmul, plus
        attention's 12 * n_layer * T * n_embd. An untied embedding table is only looked up, so it is
        left out; a tied one is also the output matmul, so it stays. GQA shrinks k_proj and v_proj
        (counted through the parameters) but not the score and mixing matmuls, which still run
        once per query head."""
        cfg = self.config
        lookup = 0 if cfg.tie_embeddings else self.model.embed_tokens.weight.numel()
        return 6 * (self.num_params() - lookup) + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


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

    Copied from gpt.py: repetition penalty, then temperature (0 = greedy), top-k, top-p.
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
# LoRA: fine-tuning a pretrained model through small low-rank corrections (Hu et al., "LoRA: Low-Rank
# Adaptation of Large Language Models", 2021). The same section in gpt.py, llama.py and olmo.py, but
# for LORA_TARGETS, the names of each model's own Linear layers. Read it after the model: nothing
# above uses it; main() calls add_lora when lora_rank > 0.
#
# Full fine-tuning changes every weight matrix W (out x in). LoRA freezes W and learns a correction
# of rank r instead:
#     W' = W + (alpha / r) * B @ A,     A: (r, in),  B: (out, r),  r << min(in, out)
# and computes x W'^T as x W^T + (alpha / r) * (x A^T) B^T: two thin matmuls, (in -> r -> out), so the
# (out x in) product B @ A is never formed while training. Why a small rank is enough: the paper
# finds that the change fine-tuning makes to a pretrained matrix has a low "intrinsic rank"; on
# GPT-3 175B, r = 1 to 8 on W_q and W_v matched full fine-tuning (its Tables 5 and 6).
# B starts at zero, so B @ A = 0 and step 0 computes exactly the base model; A starts random (as
# nn.Linear's own init), because with both at zero neither would get a gradient (B's is (x A^T)^T
# times the output's gradient, A's is B^T times it) and they would stay zero. Dividing by r makes
# the update's size about independent of the rank, so a learning rate found at one rank serves
# another (alpha is the knob; the paper sets alpha once and does not tune it).
#
# Memory, the reason to use it. AdamW keeps per trainable parameter its float32 weight, gradient and
# two moments: 16 bytes. Full fine-tuning of SmolLM2-135M (135M parameters) needs 2.2 GB before any
# activation. LoRA of rank 8 on q and v of its 30 layers (q: 576 -> 576, v: 576 -> 192) trains
# 30 * 8 * ((576 + 576) + (576 + 192)) = 461K parameters, 7 MB of weights, gradients and moments; the
# frozen 135M need only their 4 bytes each (0.54 GB), and a checkpoint holds the adapter alone (1.8 MB).
# Activations are still kept for backward: the gradient must flow back through the frozen layers to
# reach the earlier adapters (activation_checkpointing cuts that part). README: "Fine-tuning models
# larger than the machine".


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank path: y = x W^T + b + (alpha / r) * dropout(x) A^T B^T.

    It keeps the Linear's own weight and bias Parameters (the same objects under the same names), so
    a state dict keeps the base's keys (...q_proj.weight) and gains two per layer (...q_proj.lora_A,
    ...q_proj.lora_B): the base loads by name as before, and the adapter is the keys ending in lora_A
    and lora_B. Dropout acts on the adapter's input only, as in the paper; the frozen path sees x as is.
    """

    def __init__(self, linear, rank, alpha, dropout):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        like = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, **like))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, **like))  # (out, r): zero, so W' = W
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init of an (r, in) weight
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        # (..., in) -> (..., r) -> (..., out): 2r(in + out) FLOPs per token beside the frozen 2 in out.
        low_rank = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + self.scaling * low_rank


# The Linear layers add_lora can adapt, by the names lora_targets takes: the attention's four
# projections and SwiGLU's three, each by its short name or its full one ('q' or 'q_proj'). The
# paper adapts q and v; adding the feed-forward layers too ('all') costs more adapter parameters and
# often fits a new task better (Dettmers et al., QLoRA, 2023, found it needed to match full fine-tuning).
LORA_TARGETS = {short: short + "_proj" for short in ("q", "k", "v", "o", "gate", "up", "down")}


def add_lora(model, rank, alpha, dropout, targets):
    """Freeze every parameter of model, then put a LoRALinear in place of each Linear that targets
    names: a comma-separated list of LORA_TARGETS' names (e.g. 'q,v'), or 'all' (every name there; the
    output layer is never one: tied to the embedding, it is the input's matrix too). Returns how many
    layers were adapted. Only the adapters' A and B then require gradients, so only they reach the
    optimizer (configure_optimizer takes the parameters that require gradients)."""
    names = list(LORA_TARGETS) if targets == "all" else [t.strip() for t in targets.split(",")]
    unknown = [t for t in names if t not in LORA_TARGETS and t not in LORA_TARGETS.values()]
    if unknown:
        raise ValueError(f"unknown LoRA target {unknown[0]!r}; lora_targets takes a comma-separated list of "
                         f"{', '.join(LORA_TARGETS)}, or all")
    if rank < 1 or not alpha > 0 or not 0 <= dropout < 1:
        raise ValueError(f"LoRA needs rank >= 1, alpha > 0 and dropout in [0, 1), got {rank}, {alpha}, {dropout}")
    suffixes = {LORA_TARGETS.get(t, t) for t in names}  # module names such as 'q_proj' or 'attn.c_attn'
    model.requires_grad_(False)
    chosen = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)
              and any(name == s or name.endswith("." + s) for s in suffixes)]
    for name, module in chosen:
        parent, _, child = name.rpartition(".")
        adapted = LoRALinear(module, rank, alpha, dropout).train(module.training)  # eval mode stays eval mode
        setattr(model.get_submodule(parent), child, adapted)
    return len(chosen)


def lora_state_dict(model):
    """The adapter alone: every lora_A and lora_B, under the names load_lora_state_dict expects."""
    return {name: tensor for name, tensor in model.state_dict().items() if name.endswith((".lora_A", ".lora_B"))}


def load_lora_state_dict(model, adapter):
    """Load an adapter (lora_state_dict's output) into a model that add_lora prepared the same way;
    its names must be exactly the model's adapters (an adapter of other layers is refused)."""
    expected = set(lora_state_dict(model))
    if set(adapter) != expected:
        missing, unexpected = sorted(expected - set(adapter)), sorted(set(adapter) - expected)
        raise ValueError(f"the adapter does not fit the model's LoRA layers (missing {missing[:2]}, "
                         f"unexpected {unexpected[:2]})")
    model.load_state_dict(adapter, strict=False)  # strict=False: the base's own weights are not in it


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its weight, W <- W + (alpha / r) B @ A, and put plain Linear layers back.

    The merged model computes the same function (up to float rounding) with the base's shapes and
    speed: the low-rank path's extra matmuls and the LoRALinear wrapper are gone, which is what
    sampling wants. The sum is a new tensor, not written into W, whose memory may be a read-only
    mapping of the checkpoint file; it is computed in float32 and rounded once to W's dtype."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            merged = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
            delta = module.scaling * (module.lora_B.float() @ module.lora_A.float())  # (out, in), rank r
            merged.weight = nn.Parameter((module.weight.float() + delta).to(module.weight.dtype), requires_grad=False)
            merged.bias = module.bias
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, merged)
    return model


# -----------------------------------------------------------------------------
# int8 weight-only quantization, for generation (sample.py --quantize=int8)
#
# Generating one token at batch 1 multiplies one vector by every weight matrix, so each weight is
# read from memory once per token and used for one multiply-add: the speed limit is memory bandwidth,
# bytes of weights per token / bytes per second, not arithmetic. Storing the weights in fewer bytes
# raises that limit: float32 is 4 bytes per weight, bfloat16 2, int8 1. Only the weights are
# quantized ("weight-only"); activations, the KV cache, norms and biases keep the model's dtype,
# because they are small, and because rounding activations to 8 bits hurts far more (a few channels
# of a Transformer's activations are 100x larger than the rest, and one scale cannot serve both).


class Int8Linear(nn.Module):
    """An nn.Linear whose weight is stored as int8, one float scale per output channel (row).

    Symmetric per-row quantization: row i of the weight W (out_features, in_features) gets the scale
    s_i = max_j |W_ij| / 127 and is stored as q_ij = round(W_ij / s_i), an integer in [-127, 127]
    (the row's largest weight maps to +-127; -128 is left unused so that the range is symmetric and
    0.0 is exactly 0). Dequantizing gives W_ij ~ q_ij * s_i, and because rounding to the nearest
    integer moves W_ij / s_i by at most 1/2, the error of every weight is bounded by its row's scale:
        |W_ij - q_ij * s_i| <= s_i / 2 = max_j |W_ij| / 254.
    Why one scale per row, not one for the whole matrix: a single scale is set by the largest weight
    anywhere, and rows of small weights would then be rounded to a handful of levels; per-row scales
    cost 4 bytes per row (0.2% of a 576-wide row) and adapt to each output channel. They also leave
    the matmul cheap: y_i = sum_j x_j q_ij s_i = s_i * (x . q_i), so the scale multiplies the
    out_features outputs, after an integer-weight dot product, rather than every weight.
    A row of zeros would have s_i = 0; its scale is set to 1 (q is 0 either way) to avoid 0 / 0.
    """

    def __init__(self, linear):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in): the scale and rounding are computed in float32
        scale = w.abs().amax(dim=1) / 127  # (out,)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        # Buffers, not parameters: nothing here is trained, but they move with .to(device) and are
        # saved in the state_dict.
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)  # float32: the bound above holds for the stored scale
        self.bias = linear.bias  # a bias is out_features numbers: it stays in the model's dtype

    def dequantized_weight(self, dtype=torch.float32):
        """q * s: the (out, in) matrix this layer multiplies by, in dtype."""
        return (self.weight.float() * self.scale[:, None]).to(dtype)

    def forward(self, x):
        # Under autocast, nn.Linear runs in the autocast dtype; our layer is not on autocast's list
        # of operations, so it casts its input itself, as autocast would.
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if x.device.type == "cpu":
            # Speed path: skip on first reading. PyTorch's CPU kernel for int8 weights converts
            # each block of q to the input's dtype inside the dot product and multiplies the
            # outputs by s afterwards, so no float copy of the weight is ever written to memory. It
            # takes a 2-D input, and scales in the input's dtype. Only its bfloat16 version is
            # vectorized (measured on an AVX2 CPU: float32 and float16 inputs ran 10x slower than a
            # float32 matmul, slower than no quantization at all), so a float32 input is rounded to
            # bfloat16 for the product (a relative error of at most 2^-9 per input, below the
            # weights' own rounding above) and the output, rounded to bfloat16 too, is returned
            # in the input's dtype.
            y = torch._weight_int8pack_mm(x.reshape(-1, x.size(-1)).bfloat16(), self.weight, self.scale.bfloat16())
            y = y.view(*x.shape[:-1], -1).to(x.dtype)
        else:
            # Elsewhere: the math spelled out, y = (x @ q^T) * s. It writes q in x's dtype (a
            # temporary copy of the weight) on every call; a GPU kernel would fuse that away.
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Int8Embedding(nn.Module):
    """The token embedding of a model whose embedding and output layer are tied, quantized with it.

    A tied matrix E (vocab_size, n_embd) is both the embedding (row t is token t's vector) and the
    output layer (row t gives token t's logit), so the output layer's per-row scales are also
    per-token scales of the embedding: one int8 matrix and one scale vector serve both, and the tie
    survives quantization. Looking token t up returns q_t * s_t, within s_t / 2 of E_t per channel.
    `weight` is an empty tensor that only carries the dtype the lookup returns (the float matrix's),
    which moves with model.to(dtype) and which code reading embedding.weight.dtype (gpt.py's
    sinusoidal positions) relies on.
    """

    def __init__(self, head, dtype):
        super().__init__()
        self.head = head  # the Int8Linear output layer holding the shared int8 matrix and scales
        self.register_buffer("weight", torch.empty(0, dtype=dtype), persistent=False)

    def forward(self, idx):
        return (self.head.weight[idx].float() * self.head.scale[idx, None]).to(self.weight.dtype)


@torch.no_grad()
def quantize_int8(model):
    """Replace every nn.Linear of model (in place) by an Int8Linear, and a token embedding tied to
    one of them by an Int8Embedding; return the model. For generation: nothing here is trainable.

    What is quantized: every weight matrix a token's forward pass multiplies by, including the
    output layer (in SmolLM2-135M the tied 49152 x 576 matrix is 28M of the 135M weights, read in
    full for every token). A tied embedding is quantized with it (see Int8Embedding), which also
    keeps one matrix in memory, not two. An untied embedding stays as it is: a token reads one of
    its rows, so its bytes cost memory but no bandwidth. Norm gains, biases and position tables stay
    in the model's dtype.
    """
    quantized = []  # (float weight, the Int8Linear that replaced its layer)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                quantized.append((child.weight, Int8Linear(child)))
                setattr(parent, name, quantized[-1][1])
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            head = next((q for w, q in quantized if w is getattr(child, "weight", None)), None)
            if isinstance(child, nn.Embedding) and head is not None:  # tied to an output layer
                setattr(parent, name, Int8Embedding(head, child.weight.dtype))
    return model


# =============================================================================
# Part 2: training. The defaults (every one a config key), then main(): gpt.py's loop, step for
# step. Helpers it shares with every script are in Part 3; read main() first.
# =============================================================================

# -----------------------------------------------------------------------------
# Training configuration, as in gpt.py (config files and --key=value override these). The defaults
# train a GPT-2-small-sized Llama (12 layers, 768 wide) with 3 query heads per key/value head.

# I/O
out_dir = "out-llama"
eval_interval = 250  # evaluate train/val loss (and maybe checkpoint) every this many iterations
log_interval = 10  # print a training line every this many iterations
eval_iters = 200  # batches averaged per loss estimate
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # save at every eval, not only when val loss improves
init_from = "scratch"  # 'scratch', 'resume' (from out_dir/ckpt.pt), or a hub id / local HF directory
sample_interval = 0  # print and log a greedy sample every this many iterations (a multiple of eval_interval; 0: off)
sample_start = "\n"  # the fixed prompt of those samples
hellaswag_interval = 0  # HellaSwag accuracy every this many iterations (a multiple of eval_interval; 0: off)
hellaswag_examples = 500  # the fixed subset scored then: the first this many of its validation set
# logging
wandb_log = False
wandb_project = "llama"
wandb_run_name = "llama"
# data
dataset = "shakespeare"
gradient_accumulation_steps = 40  # micro-batches summed into one optimizer step
batch_size = 12  # sequences per micro-batch
block_size = 1024
# model
n_layer = 12
n_head = 12
n_kv_head = 4  # key/value heads; n_head for multi-head attention, 1 for multi-query
n_embd = 768
multiple_of = 256  # the SwiGLU width is 2/3 * 4 * n_embd * ffn_dim_multiplier rounded up to this
ffn_dim_multiplier = 1.0
norm_eps = 1e-5
rope_theta = 10000.0
tie_embeddings = False
dropout = 0.0
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
# LoRA: fine-tune a pretrained init_from through low-rank adapters (Part 1's last section)
lora_rank = 0  # 0: train every weight; r >= 1: freeze them all and train rank-r adapters instead
lora_alpha = 16.0  # the adapters' output is scaled by lora_alpha / lora_rank (2 at rank 8)
lora_dropout = 0.0  # dropout on the adapters' input (the paper used 0.05 to 0.1 on small datasets)
lora_targets = "q,v"  # the adapted layers: names in LORA_TARGETS, comma-separated, or 'all'
# system
backend = "auto"  # DDP backend: 'auto' is nccl on CUDA, gloo on CPU
parallelism = "ddp"  # 'ddp' (each process holds the whole model) or 'fsdp' (sharded over them: shard_model)
device = "auto"  # 'auto' picks cuda, then mps, then cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # 'auto', 'float32', 'bfloat16' or 'float16'
compile = True  # torch.compile the model (falls back with a warning where it cannot)
activation_checkpointing = False  # recompute each block in backward instead of storing it: less memory, more compute
seed = 1337

# Every simple-typed name defined above is a config key (names starting with "_" are not).
config_keys = [k for k, v in list(globals().items())
               if not k.startswith("_") and isinstance(v, (bool, int, float, str))]

def load_pretrained_llama(cfg, meta, runtime):
    """init_from=<a hub id or HF directory>: a pretrained Llama, to fine-tune. What differs from
    gpt.py's load_openai_gpt2: the tokenizer is the checkpoint's own (its tokenizer.json), so the
    dataset is checked against that file rather than against the name 'gpt2'."""

    def load():
        try:
            directory = cfg["init_from"]
            if not os.path.isdir(directory):
                directory = download_hf_checkpoint(directory)
            # FSDP: the file's own tensors, unread, whose slices shard_model copies into each process's shards.
            dtype = None if runtime.fsdp else torch.float32
            return (Llama.from_pretrained(directory, dropout=cfg["dropout"], dtype=dtype), directory), None
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            return None, f"cannot load {cfg['init_from']!r}: {e}"

    model, directory = local_rank0_first(load, runtime)  # a hub id downloads once per machine
    # Token ids mean nothing without the tokenizer that made them: the dataset must have been
    # tokenized with the model's own tokenizer.json, or every id is a wrong word.
    if not prepare_data.same_tokenizer(meta, directory):
        fail(f"dataset {cfg['dataset']!r} was not tokenized with {cfg['init_from']}'s tokenizer; prepare your text "
             f"with it: python prepare_data.py NAME --input=FILE --tokenizer={directory}")
    if cfg["block_size"] < model.config.block_size:
        model.crop_block_size(cfg["block_size"])  # RoPE has no table to cut: only the limit changes
    return model


def lora_recipe(cfg, checkpoint):
    """None for a run that trains every weight. For a LoRA run, what its checkpoint records beside the
    adapter, enough to rebuild the model: the base it adapts (the init_from that loaded it, a local
    directory made absolute) and the LoRA keys. A resumed run keeps its checkpoint's recipe."""
    if checkpoint is not None:
        return checkpoint.get("lora")
    if cfg["lora_rank"] == 0:
        return None
    if cfg["lora_rank"] < 0:
        fail(f"config key 'lora_rank' must be >= 0 (0 trains every weight), got {cfg['lora_rank']}")
    if cfg["parallelism"] == "fsdp":
        fail(f"lora_rank={cfg['lora_rank']} trains with parallelism='ddp': the adapters are small and their "
             f"checkpoint holds them alone, which the sharded checkpoint of 'fsdp' does not do here")
    if cfg["init_from"] == "scratch":
        fail(f"lora_rank={cfg['lora_rank']} adapts a pretrained model, but init_from='scratch': set init_from to "
             f"a Hugging Face directory or hub id (e.g. HuggingFaceTB/SmolLM2-135M) (lora_rank=0 trains every weight)")
    base = os.path.abspath(cfg["init_from"]) if os.path.isdir(cfg["init_from"]) else cfg["init_from"]
    return {"base": base, "rank": cfg["lora_rank"], "alpha": cfg["lora_alpha"], "dropout": cfg["lora_dropout"],
            "targets": cfg["lora_targets"]}


def build_model(cfg, meta, checkpoint, runtime):
    """The model to train: from scratch (the config's shape), from a checkpoint (init_from=resume),
    or a pretrained Hugging Face Llama; checked against the run's context length and the dataset's vocabulary."""
    lora = lora_recipe(cfg, checkpoint)  # None unless this run trains LoRA adapters (Part 2, above)
    model_keys = ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "multiple_of", "ffn_dim_multiplier",
                  "norm_eps", "rope_theta", "tie_embeddings", "dropout", "attention")
    if cfg["init_from"] == "scratch":
        vocab_size = meta["vocab_size"]
        if vocab_size > 1024:  # large vocabularies: pad to a multiple of 64 for faster matmuls
            vocab_size = (vocab_size + 63) // 64 * 64
        try:
            model = Llama(LlamaConfig(**{k: cfg[k] for k in model_keys}, vocab_size=vocab_size))
        except ValueError as e:
            fail(e)
    elif cfg["init_from"] == "resume" and lora is None:
        # Only dropout may change between runs (the other keys were checked against the checkpoint);
        # model_args also holds the derived hidden_dim and any rope_scaling, which no key sets.
        model = Llama(LlamaConfig(**checkpoint["model_args"] | {"dropout": cfg["dropout"]}))
        if "sharded" not in checkpoint:  # a sharded checkpoint is read after sharding, in main()
            model.load_state_dict(checkpoint["model"])
    else:  # a pretrained model; a resumed LoRA run reloads the base its recipe names
        model = load_pretrained_llama(cfg | {"init_from": lora["base"]} if lora else cfg, meta, runtime)
    if lora is not None:  # freeze the base, add the adapters (and, resuming, load them)
        try:
            add_lora(model, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"])
            if checkpoint is not None:
                load_lora_state_dict(model, checkpoint["model"])
        except (ValueError, RuntimeError) as e:
            fail(f"LoRA: {e}")
    if cfg["block_size"] > model.config.block_size:
        fail(f"block_size={cfg['block_size']} exceeds the model's {model.config.block_size}")
    check_vocabulary_fits(meta, model.config.vocab_size, cfg["dataset"])
    return model


def main(argv):
    # ---- the config: defaults, then config files and --key=value (a resume takes the checkpoint's) ----
    defaults = {k: globals()[k] for k in config_keys}
    cfg = parse_config(argv, defaults)
    checkpoint = None
    if cfg["init_from"] == "resume":
        checkpoint = load_checkpoint(cfg["out_dir"], "llama")
        # The architecture, the dataset and the LoRA keys are the checkpoint's: an override of them is an error.
        cfg = resumed_config(argv, defaults, checkpoint, fixed=(
            "dataset", "n_layer", "n_head", "n_kv_head", "n_embd", "multiple_of", "ffn_dim_multiplier", "norm_eps",
            "rope_theta", "tie_embeddings",
            "lora_rank", "lora_alpha", "lora_dropout", "lora_targets"))
    check_config(cfg)

    # ---- devices, processes and precision ----
    # As in gpt.py; under autocast, RMSNorm and the RoPE angles stay float32 by construction (Part 1).
    runtime = start_processes(cfg)  # torchrun's rank, the device, autocast and the GradScaler (Part 3)
    device, master = runtime.device, runtime.rank == 0  # only rank 0 prints and writes files
    # Each process does its share of the micro-batches; together they make one optimizer step. (The
    # config keeps the total the user gave: that is what a resume with another process count needs.)
    micro_steps = cfg["gradient_accumulation_steps"] // runtime.world_size

    # ---- data ----
    def prepare_dataset():
        try:
            data_dir = prepare_data.ensure_prepared(cfg["dataset"])  # downloads, tokenizes if needed
            loader = prepare_data.BatchLoader(data_dir, cfg["block_size"], cfg["batch_size"], device)
            return (prepare_data.load_meta(data_dir), loader), None
        except prepare_data.DataError as e:
            return None, str(e)

    meta, loader = local_rank0_first(prepare_dataset, runtime)
    tokens_per_iter = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]

    # ---- model: from scratch, from a checkpoint, or a pretrained Hugging Face Llama ----
    model = build_model(cfg, meta, checkpoint, runtime)  # scratch, resume or pretrained (Part 2, above)
    lora = lora_recipe(cfg, checkpoint)  # None, or the adapter's base and keys, saved with it
    model_args = asdict(model.config)  # includes the derived hidden_dim
    model.to(device)
    model.activation_checkpointing = cfg["activation_checkpointing"]  # a training choice, not in model_args
    if runtime.fsdp:  # shard before the optimizer is made: it must hold (and update) the shards (Part 3)
        shard_model(model, model.model.layers, cfg["dtype"], runtime, random_init=cfg["init_from"] == "scratch")
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]),
                                          runtime.device_type)
    iter_num, best_val_loss = 0, float("inf")
    if checkpoint is not None:
        restore_model_and_optimizer(model, optimizer, checkpoint, runtime)  # (ckpt_dcp/: the weights too)
        iter_num, best_val_loss = restore_training_state(checkpoint, runtime, cfg["seed"])
        checkpoint = None  # free the loaded copy
    raw_model = model  # the plain module: what we save, and what MFU counts
    if cfg["compile"]:
        model = compile_or_warn(model, runtime, lambda: loader.get_batch("train"))
    if runtime.ddp and not runtime.fsdp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=runtime.device_ids)
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        print("config:", json.dumps(cfg))
        trainable = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)  # with LoRA, the adapters
        print(f"parameters: {raw_model.num_params() / 1e6:.2f}M ({trainable / 1e6:.2f}M trainable); "
              f"tokens per iteration: {tokens_per_iter:,} "
              f"({cfg['gradient_accumulation_steps']} x {cfg['batch_size']} x {cfg['block_size']})")
    wandb = start_wandb(cfg, master)

    # ---- the training loop, as in gpt.py ----
    # Evaluate (and checkpoint) the current weights, then take one optimizer step; a checkpoint
    # written at iteration N holds the state from just before step N, so resuming is exact.
    resumed_at = iter_num if cfg["init_from"] == "resume" else None
    run_log = start_run_log(cfg, runtime, resumed_at, {"kind": "start", "iter": iter_num, "model_type": "llama",
                                                       "tokens_per_iter": tokens_per_iter, "config": cfg})
    model.train()
    timer = IterationTimer(iter_num)
    while True:
        lr = learning_rate_at(iter_num, cfg)  # linear warmup, then cosine decay (Part 3)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # A resumed run evaluated this iteration before saving it; eval_only evaluates it again.
        if iter_num % cfg["eval_interval"] == 0 and (iter_num != resumed_at or cfg["eval_only"]):
            losses = estimate_loss(model, loader, cfg, runtime)  # train and val loss (Part 3)
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            extras = evaluate_extras(raw_model, meta, cfg, runtime, iter_num)  # sample, HellaSwag (Part 3)
            log_eval(run_log, wandb, {"kind": "eval", "iter": iter_num, "tokens": iter_num * tokens_per_iter,
                                      "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr} | extras)
            check_finite("val loss", losses["val"], iter_num, cfg)
            if iter_num > 0 and not cfg["eval_only"] and (losses["val"] < best_val_loss or cfg["always_save_checkpoint"]):
                best_val_loss = min(best_val_loss, losses["val"])
                state = {"model_type": "llama", "model_args": model_args, "lora": lora,
                         "scaler": runtime.scaler.state_dict(),
                         "iter_num": iter_num, "best_val_loss": best_val_loss, "config": cfg, "tokenizer": meta,
                         "rng_state": every_rank_rng_state(runtime)}  # collective: every process takes part
                if runtime.fsdp:  # every process writes its own shards (Part 3)
                    save_sharded_checkpoint(cfg["out_dir"], raw_model, optimizer, state, runtime)
                elif master:
                    save_checkpoint(cfg["out_dir"], state | {  # LoRA: the adapter alone
                        "model": lora_state_dict(raw_model) if lora else raw_model.state_dict(),
                        "optimizer": optimizer.state_dict()})
            timer.restart(iter_num)  # keep evaluation out of the timing
        if cfg["eval_only"] or iter_num >= cfg["max_iters"]:
            break

        # Gradient accumulation, as in gpt.py: micro-batch losses divided by their number sum to a mean.
        train_loss = 0.0  # the mean over this step's micro-batches, for the log
        for micro_step in range(micro_steps):
            x, y = loader.get_batch("train")
            with gradient_sync(model, runtime, last=micro_step == micro_steps - 1):  # DDP/FSDP: sync grads once
                with runtime.autocast:
                    _, loss = model(x, y)
                    loss = loss / micro_steps
                runtime.scaler.scale(loss).backward()
            train_loss += loss.detach()  # a tensor: no waiting for the GPU here
        runtime.scaler.unscale_(optimizer)  # the norm (logged) and clipping of the true gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"] or math.inf)  # 0: no clip
        runtime.scaler.step(optimizer)
        runtime.scaler.update()
        optimizer.zero_grad(set_to_none=True)

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
# Part 3: plumbing. Nothing here is needed to understand the model or the loop: this script's own
# reading of Hugging Face checkpoints, then the functions every model script shares by convention.
# =============================================================================

# -----------------------------------------------------------------------------
# Hugging Face Llama checkpoints: their config.json mapped to LlamaConfig, their tensors checked


def hf_llama_config(name_or_dir, dropout):
    """(directory, LlamaConfig) of a Hugging Face checkpoint with model_type "llama", downloading a
    hub id first."""
    directory = name_or_dir if os.path.isdir(name_or_dir) else download_hf_checkpoint(name_or_dir)
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{directory} has no config.json: not a Hugging Face checkpoint directory")
    with open(config_path) as f:
        hf = json.load(f)
    if hf.get("model_type") != "llama":
        raise ValueError(f"{directory} holds a {hf.get('model_type')!r} model; llama.py loads only 'llama' checkpoints")
    # Options of HF's Llama implementation that change the maths; none is used by Meta's models.
    for key, expected in [("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)]:
        if hf.get(key, expected) != expected:
            raise ValueError(f"unsupported Llama option {key}={hf[key]!r} in {config_path} (llama.py expects {expected!r})")
    n_head, n_embd = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim") or n_embd // n_head
    if head_dim * n_head != n_embd:
        raise ValueError(f"head_dim={head_dim} in {config_path} differs from hidden_size / num_attention_heads "
                         f"= {n_embd} / {n_head}; llama.py assumes they are equal")
    # Where the RoPE settings live depends on the transformers version that wrote the file:
    # rope_theta and rope_scaling (older key "type") at the top level, or since transformers 5
    # both inside rope_parameters.
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    rope_scaling = None if rope_type == "default" else {"rope_type": rope_type} | rope
    return directory, LlamaConfig(
        block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"], n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
        n_embd=n_embd, hidden_dim=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta), rope_scaling=rope_scaling,
        tie_embeddings=hf.get("tie_word_embeddings", False), dropout=dropout,
    )


def hf_llama_state_dict(hf_state, ours, config, dtype, directory):
    """The checkpoint's tensors, checked against ours (the model's state dict: names and shapes).

    Our modules carry Hugging Face's names, so nothing is renamed: this only drops what is not a
    weight of ours and refuses a tensor that is unexpected, missing or of the wrong shape.
    """
    state = {}
    for name, tensor in hf_state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # older checkpoints saved RoPE's fixed frequencies; we compute them
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # the same matrix as the token embedding
        if name not in ours:
            raise ValueError(f"unexpected tensor {name!r} in the checkpoint at {directory}")
        if tensor.shape != ours[name].shape:
            raise ValueError(f"shape mismatch for {name}: checkpoint {tuple(tensor.shape)}, model {tuple(ours[name].shape)}")
        state[name] = tensor.to(dtype or tensor.dtype)  # the tensor itself (a view of the file) when the dtype matches
    missing = set(ours) - set(state) - ({"lm_head.weight"} if config.tie_embeddings else set())
    if missing:
        raise ValueError(f"checkpoint at {directory} lacks {sorted(missing)[:5]}")
    return state


# -----------------------------------------------------------------------------
# Shared by convention: every function below is identical in every model script (bigram.py,
# gpt.py, llama.py, olmo.py, bert.py, t5.py; tests/test_template.py keeps them so). Read them once,
# in gpt.py: a fix to one is made in all.


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


@torch.no_grad()
def evaluate_extras(model, meta, cfg, runtime, iter_num):
    """What an evaluation adds to the losses when due, as fields of its log.jsonl record: a greedy
    sample (sample_interval) and HellaSwag accuracy (hellaswag_interval). {} when neither is due.

    model is the plain module (not the compiled or DDP-wrapped one): generation runs the KV-cache
    path, which training never compiles. Every process takes part and computes the same sample (a
    sharded model needs every process for each forward), and HellaSwag's fixed subset is split evenly
    between them; rank 0 prints. Greedy decoding and scoring draw no random numbers, so a resumed run
    stays exactly the run it continues.
    """
    for key in ("sample_interval", "hellaswag_interval"):
        if cfg[key] < 0 or cfg[key] % cfg["eval_interval"]:
            fail(f"{key}={cfg[key]} must be 0 (off) or a multiple of eval_interval={cfg['eval_interval']}: "
                 f"it runs at an evaluation")
    due = [key for key in ("sample_interval", "hellaswag_interval") if cfg[key] and iter_num % cfg[key] == 0]
    if not due:
        return {}
    extras, tokenizer = {}, prepare_data.load_tokenizer(meta)
    model.eval()
    if "sample_interval" in due:
        template = getattr(tokenizer, "template", None)  # a tokenizer.json's BOS, as every training document has
        try:
            prompt = (list(template[0]) if template else []) + tokenizer.encode(cfg["sample_start"])
        except (KeyError, ValueError) as e:  # a character-level vocabulary lacks one of its characters
            fail(f"sample_start={cfg['sample_start']!r} cannot be tokenized with this dataset's vocabulary ({e})")
        if not prompt:
            fail("sample_start is empty and this tokenizer adds no BOS token: give the samples a prompt")
        idx = torch.tensor([prompt], device=runtime.device)
        with runtime.autocast:
            # 100 tokens: enough to show the style and the grammar learned so far, cheap beside an evaluation.
            out = model.generate(idx, 100, temperature=0.0, vocab_size=meta["vocab_size"])
        extras["sample"] = cfg["sample_start"] + tokenizer.decode(out[0, len(prompt):].tolist())
        if runtime.rank == 0:
            print(f"sample at step {iter_num} (greedy):\n{extras['sample']}\n----")
    if "hellaswag_interval" in due:
        if meta["tokenizer"] == "char":
            fail("hellaswag_interval needs a dataset tokenized into words (gpt2, bpe or a pretrained tokenizer): "
                 "a character-level vocabulary cannot spell HellaSwag's texts")
        import evaluate  # this repository's evaluate.py: imported only when HellaSwag is asked for
        path = local_rank0_first(evaluate.hellaswag_file, runtime)  # one download per machine
        examples = evaluate.read_hellaswag(path, cfg["hellaswag_examples"])
        # An equal share for every process, so they all run the same number of forward passes.
        n = len(examples) // runtime.world_size * runtime.world_size
        if n == 0:
            fail(f"hellaswag_examples={cfg['hellaswag_examples']} gives fewer examples than processes")
        mine = examples[runtime.rank:n:runtime.world_size]
        scores = evaluate.evaluate_hellaswag(model, tokenizer, mine, cfg["batch_size"], runtime.device,
                                             runtime.autocast, progress=False)
        # Equal shares: the mean of the processes' accuracies is the accuracy over all n examples.
        acc, acc_norm = mean_over_processes([scores["acc"], scores["acc_norm"]], runtime)
        extras |= {"val_hellaswag_acc": acc, "val_hellaswag_acc_norm": acc_norm, "hellaswag_n": n}
        if runtime.rank == 0:
            print(f"step {iter_num}: hellaswag acc {acc:.4f}, acc_norm {acc_norm:.4f} (first {n} examples)")
    model.train()
    return extras


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


# Sharded training (parallelism='fsdp'): used by the decoders (gpt.py, llama.py, olmo.py).


def shard_model(model, blocks, dtype, runtime, random_init):
    """Shard the model over the processes with FSDP2 (fully_shard), in place: each block, then the root.

    DDP keeps a whole copy of the weights, gradients and AdamW's two moments on every process: 16
    bytes per parameter in float32. FSDP ("fully sharded data parallel", ZeRO stage 3) keeps only
    1/world_size of each: a parameter becomes a DTensor whose local piece is this process's rows.
    A block's whole weights exist only while it computes: its forward begins with an all-gather of
    its shards and frees them after (reshard_after_forward); its backward gathers them again and
    ends with a reduce-scatter, which averages the gradients over processes and leaves each with the
    gradient of its own shard, so AdamW updates only that shard. One sharding unit per block lets
    the all-gather of the next block overlap the compute of this one; the root unit holds what is
    left (embeddings, final norm, head: tied weights stay one parameter there). Memory per process:
    16 * n_params / world_size, plus the largest blocks' gathered weights and the activations.

    Mixed precision is FSDP's own (MixedPrecisionPolicy), not autocast: the sharded float32 weights
    are cast to `dtype` once per all-gather (so the gather moves half the bytes), forward and
    backward run in `dtype`, and gradients are reduced in float32 before they reach the float32
    shards the optimizer updates. Autocast would instead recast every weight at every matmul.
    compile=True compiles the sharded model as a whole, after this (it compiled and trained on CPU
    with gloo here; where it fails, compile_or_warn trains uncompiled, as ever).

    Pretrained weights stream into the shards: a loader that keeps a checkpoint's tensors as views
    of the memory-mapped file (in the file's dtype) lets fully_shard copy out only this process's
    slice of each, so no process reads, let alone holds, the whole model; only then are the shards
    made float32. (On a GPU, main() has moved the model to the device first: there each process
    holds the whole 16-bit model for a moment.)
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if random_init:
        # Every process drew its own random weights (seeded with seed + rank) and would keep its own
        # slice of them: first make them rank 0's everywhere, as DDP does when it wraps a model.
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    mesh = init_device_mesh(runtime.device_type, (runtime.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.float()  # 16-bit checkpoint tensors: float32 shards, each process converting its own slice


def gradient_sync(model, runtime, last):
    """The context for one micro-step's backward: gradients are reduced over processes only on the
    last micro-step of gradient accumulation (the earlier ones only add to local gradients)."""
    if runtime.fsdp:
        # FSDP then keeps whole (unsharded) gradients until the last micro-step: more memory, less traffic.
        model.set_requires_gradient_sync(last)
        return nullcontext()
    return model.no_sync() if runtime.ddp and not last else nullcontext()


def save_sharded_checkpoint(out_dir, model, optimizer, training_state, runtime):
    """Write out_dir/ckpt_dcp/ with torch.distributed.checkpoint (DCP): every process writes its
    own shards of the weights and of AdamW's moments, in parallel, and never gathers the model.
    (Every process must call this together; out_dir must be a directory every machine sees.)

    Files: one .distcp file per process and a .metadata index recording which slice of which
    tensor lies where, so a later run with another number of processes reads the slices its own
    shards need (resharding), and a run without any process group (sample.py) reads whole tensors.
    The rest (config, iteration, tokenizer, every rank's RNG state) is training_state.pt, as in
    ckpt.pt. Atomic as a directory: written as ckpt_dcp.tmp, then the old one is renamed away and
    the new one into place (a crash between the two renames leaves ckpt_dcp.old, which
    load_checkpoint reads).
    """
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = os.path.join(out_dir, "ckpt_dcp")
    if runtime.rank == 0:
        shutil.rmtree(path + ".tmp", ignore_errors=True)  # a crashed save's leftovers
    torch.distributed.barrier()
    # get_state_dict names the optimizer's state by parameter name (a plain optimizer numbers them).
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path + ".tmp")
    error = None
    if runtime.rank == 0:
        try:
            torch.save(training_state, os.path.join(path + ".tmp", "training_state.pt"))
            if os.path.exists(path):
                os.replace(path, path + ".old")
            os.replace(path + ".tmp", path)
            shutil.rmtree(path + ".old", ignore_errors=True)
            print(f"saved checkpoint to {path}")
        except OSError as e:
            error = f"could not write {path} ({e}); the previous checkpoint, if any, is intact"
    error = first_error(error, runtime)  # also a barrier: nobody goes on before the checkpoint is in place
    if error:
        fail(error)


def restore_model_and_optimizer(model, optimizer, checkpoint, runtime):
    """Load a resumed run's optimizer state (and, from a sharded checkpoint, its weights; build_model
    loaded those of ckpt.pt), for a sharded or a whole model, whatever the saving run's process count.

    From ckpt_dcp/: every process reads only the slices of its own shards (DCP reshards to the
    current layout, here the one get_state_dict describes). From ckpt.pt into a sharded model: each
    whole moment tensor is cut into this process's shard (distribute_tensor), like its parameter.
    """
    if "sharded" in checkpoint:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint["sharded"])
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
        return
    optimizer.load_state_dict(checkpoint["optimizer"])
    if runtime.fsdp:
        from torch.distributed.tensor import DTensor, distribute_tensor

        for param, state in optimizer.state.items():
            for key, value in state.items():
                if isinstance(param, DTensor) and not isinstance(value, DTensor) and value.shape == param.shape:
                    state[key] = distribute_tensor(value, param.device_mesh, param.placements)


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


# Reading Hugging Face checkpoints without extra dependencies: safetensors, shards, the hub.


def read_safetensors(path):
    """Read a .safetensors file into a dict of tensors.

    The format is deliberately simple: 8 bytes holding N (little-endian uint64), then N bytes of
    JSON mapping each tensor name to its dtype, shape and [begin, end) byte offsets, then the raw
    little-endian tensor bytes. Unlike a pickle, nothing in it can execute code. Llama checkpoints
    are usually bfloat16 ("BF16"), which numpy cannot represent; torch.frombuffer reads it like any
    other dtype.

    The file is memory-mapped, not read: every tensor is a view of the mapping, and the operating
    system reads a page from disk only when something touches it. Loading a model therefore never
    holds a second copy of the weights in memory, and tensors a loader assigns as they are (same
    dtype) cost nothing until used. The mapping is copy-on-write (ACCESS_COPY), so training such a
    tensor in place changes memory, never the file.
    """
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool}
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # stays valid after the file closes
    start = 8 + header_len  # the offsets count from the end of the header
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        dtype = dtypes[info["dtype"]]
        begin, end = info["data_offsets"]
        if begin == end:  # a shape with a 0 in it holds no bytes (and frombuffer refuses a count of 0)
            tensors[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        flat = torch.frombuffer(data, dtype=dtype, offset=start + begin, count=(end - begin) // dtype.itemsize)
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def load_hf_weights(directory):
    """The state dict of a Hugging Face checkpoint directory.

    Three layouts exist: one model.safetensors; a sharded one, where checkpoints above a few GB are
    split into model-00001-of-00004.safetensors, ... and model.safetensors.index.json maps every
    tensor name to the shard holding it; and older pickled pytorch_model.bin files (GPT-2's repos
    have both), which weights_only=True loads without running any code they might contain.
    """
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(single):
        return read_safetensors(single)
    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        state = {}
        for shard in sorted(set(weight_map.values())):
            state.update(read_safetensors(os.path.join(directory, shard)))
        return state
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(bin_path):
        return torch.load(bin_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def download_hf_checkpoint(repo):
    """Download a checkpoint from the Hugging Face hub into a cache directory; return the directory.

    The cache is $NANO_MODELS_CACHE, default ~/.cache/single-file-lms/owner--name. Fetches
    config.json, the tokenizer's files (tokenizer.json, or T5's spiece.model) and generation's (for
    sample.py and fine-tuning, those the repository has) and either model.safetensors or the shard
    index and every shard it names. One function serves every script, so the list holds every
    script's tokenizer files; those a repository lacks answer 404 and are skipped. Each file is
    written as name.part and renamed when complete (prepare_data.download, with a progress line), so an
    interrupted download never looks finished and a rerun continues it. Under torchrun the training scripts call this on one process per machine while the others wait.
    """
    if repo.count("/") != 1:
        raise ValueError(f"{repo!r} is neither a local directory nor a hub id of the form owner/name")
    import requests  # only needed for downloads

    cache_root = os.environ.get("NANO_MODELS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "single-file-lms"))
    directory = os.path.join(cache_root, repo.replace("/", "--"))
    os.makedirs(directory, exist_ok=True)
    token = os.environ.get("HF_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def fetch(filename, required=True):
        """Download one file unless present (resuming a partial one, with a progress line); return
        False if the hub has no such file (404) and it is not required."""
        url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
        try:
            prepare_data.download(url, os.path.join(directory, filename), headers=headers)
        except requests.RequestException as e:
            status = getattr(e.response, "status_code", None)
            if status == 404 and not required:
                return False
            hint = " (a gated model: accept its licence on huggingface.co and set HF_TOKEN)" if status in (401, 403) else ""
            raise RuntimeError(f"could not download {url} ({e}){hint}; download the checkpoint's files by hand "
                               f"into a folder and pass that folder instead") from None
        return True

    # Written once every file is in place, so that later loads (offline ones too) ask the hub nothing,
    # not even whether the optional files it lacked have appeared.
    complete_marker = os.path.join(directory, ".complete")
    if os.path.exists(complete_marker):
        return directory
    fetch("config.json")
    # For sample.py and fine-tuning: the tokenizer (tokenizer.json, or T5's SentencePiece spiece.model),
    # its settings and chat template, and the authors' generation settings (end-of-sequence ids),
    # where the repository has them.
    for optional in ("tokenizer.json", "spiece.model", "tokenizer_config.json", "chat_template.jinja",
                     "generation_config.json"):
        fetch(optional, required=False)
    if not fetch("model.safetensors", required=False):
        if not fetch("model.safetensors.index.json", required=False):
            raise RuntimeError(f"{repo} has neither model.safetensors nor model.safetensors.index.json")
        with open(os.path.join(directory, "model.safetensors.index.json")) as f:
            for shard in sorted(set(json.load(f)["weight_map"].values())):
                fetch(shard)
    open(complete_marker, "w").close()
    return directory


if __name__ == "__main__":
    main(sys.argv[1:])
