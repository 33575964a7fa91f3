"""
olmo.py — the OLMo family in one file (OLMo 1, 2 and 3), loading Hugging Face OLMo checkpoints, and
the training loop; plus ALiBi, the third way of telling a Transformer where its tokens are.

OLMo is the Allen Institute for AI's "fully open" language model: not only the weights but the
training data (Dolma), the code, the intermediate checkpoints and the training logs are published,
so every design choice below can be traced to a paper and an ablation. Three generations and a
sparse branch:
  - OLMo 1 (Groeneveld et al., "OLMo: Accelerating the Science of Language Models", Feb 2024;
    1B and 7B): a Llama-like decoder with no biases, SwiGLU and RoPE, but a LayerNorm with no
    learnable scale or shift at all, and (from OLMo 1.7) clip_qkv, which clamps the query, key and
    value activations to [-clip, clip] to stop loss spikes.
  - OLMo 2 (OLMo et al., "2 OLMo 2 Furious", Dec 2024; 1B, 7B, 13B, 32B): rebuilt for training
    stability. RMSNorm; QK-norm (an RMSNorm over the whole query and the whole key projection,
    before RoPE); and the norm moved from the input of each sub-layer to its output:
    x = x + norm(attn(x)), x = x + norm(mlp(x)). rope_theta 500000, GQA in the 32B.
  - OLMo 3 (AI2, Nov 2025; 7B and 32B): OLMo 2's block with sliding-window attention in three of
    every four layers (each attends to the last 4096 tokens only; every fourth layer sees the whole
    context), which keeps long-context (65K) training and inference affordable, and YaRN rescaling
    of the rotary frequencies in the full-attention layers for the long-context stage.
  - OLMoE (Muennighoff et al., "OLMoE: Open Mixture-of-Experts Language Models", Sep 2024;
    OLMoE-1B-7B): the sparse branch. A pre-norm block with RMSNorm and QK-norm whose feed-forward is
    64 small SwiGLU experts, of which a learned router sends each token through 8: 7B parameters,
    1B of them used per token.

What differs from llama.py, and why (the data, the loss, sampling and the training loop are
llama.py's, which are gpt.py's, so read those first):
  1. Normalisation. OLMo 1: LayerNorm with no parameters (block_type='olmo1'), which its paper
     reports as the safest choice and the fastest of PyTorch's norms. OLMo 2 (block_type='olmo2'):
     RMSNorm, placed after each sub-layer instead of before it, plus QK-norm. Both changes bound the
     size of what is added to the residual stream and of the attention logits, the two quantities
     the OLMo 2 paper saw growing before its loss spikes.
  2. clip_qkv (OLMo 1.7): a blunter tool for the same problem: clamp the activations themselves.
  3. Sliding-window attention (OLMo 3; layer_types, sliding_window): a causal mask that also hides
     keys more than sliding_window - 1 positions back. Memory and compute of those layers stop
     growing with the context; the full layers carry information across the whole of it. The KV
     cache of a sliding layer keeps only the last sliding_window - 1 positions (see
     SlidingWindowKVCache), and generation stays exactly equal to recomputing everything.
  4. Initialisation: every matrix from N(0, 0.02), with no 1/sqrt(2 * n_layer) shrink of the output
     projections (OLMo 2's choice: it measured the simple scheme as the more stable one), and no
     weight decay on the token embeddings (also OLMo 2).
  5. ALiBi (Press et al., "Train Short, Test Long", ICLR 2022), as pos_emb='alibi' beside
     pos_emb='rope': no position embedding and no rotation at all; each head adds a fixed penalty
     proportional to the distance between query and key to its attention scores. The released OLMo
     checkpoints all use RoPE: ALiBi is here as the repository's third position scheme (learned
     table in gpt.py, rotation in llama.py, linear biases here), the one its paper claims
     extrapolates best to sequences longer than those trained on. benchmarks/compare_decoders.py
     measures that claim against the other two.
  6. Mixture of experts (OLMoE; block_type='olmoe', n_experts > 0): each feed-forward becomes
     n_experts SwiGLUs and a router that picks n_experts_per_token of them per token (top-k of a
     softmax), weighting their outputs by its probabilities. More parameters at the same compute per
     token; the price is routing, and two auxiliary losses that keep it healthy: load balancing
     (Switch Transformer) so that no expert starves, and the z-loss (ST-MoE) so that the router's
     logits stay small. Training logs each expert's share of the tokens (plot.py --experts).

What you will learn here: the three OLMo blocks side by side and the stability reasoning behind
each change, the sliding-window mask and its small cache, YaRN's frequency interpolation, ALiBi's
slopes (including AI2's and BLOOM's trick for head counts that are not powers of two), and how a
mixture of experts routes tokens, computes only the experts chosen, and is kept balanced.

How to read it: Part 1 (the model) first, read against llama.py's: the two norms, the position
schemes (RoPE with YaRN, ALiBi), the sliding-window cache, Attention, the feed-forwards (dense, then
the mixture of experts with its two losses), the OLMo 1, OLMo 2 and OLMoE blocks, OLMo; Part 1 ends
with LoRA fine-tuning (gpt.py's section, but for LORA_TARGETS) and gpt.py's int8 quantization for
generation (quantize_int8, unchanged). Part 2's main() is gpt.py's step for step; only the pretrained
path differs (load_pretrained_olmo), and an evaluation of a mixture of experts also logs its expert
load (expert_load_record).
Part 3 maps Hugging Face's configs and tensor names onto ours, then holds the helpers every script
shares (read once, in gpt.py).

Run it:
    python olmo.py config/olmo_shakespeare_char.py          # a small character-level OLMo 2 (GPU)
    python olmo.py config/olmo_shakespeare_char_cpu.py      # the same, shrunk for a laptop CPU
    python olmo.py config/olmo_shakespeare_char_cpu.py --pos_emb=alibi         # ALiBi instead of RoPE
    python olmo.py config/olmo_shakespeare_char_cpu.py --sliding_window=16     # OLMo 3's layer pattern
    python olmo.py config/olmo_shakespeare_char.py --init_from=resume          # continue exactly
    python olmo.py config/olmoe_shakespeare_char_cpu.py     # OLMoE: 8 experts, 2 per token (CPU)
    python sample.py --out_dir=out-olmo-shakespeare-char    # generate from what you trained
and in Python, a pretrained model (a Hugging Face "olmo", "olmo2", "olmo3" or "olmoe" checkpoint):
    model = OLMo.from_pretrained("allenai/OLMo-2-0425-1B")
    model = OLMo.from_pretrained("allenai/OLMoE-1B-7B-0125")
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
class OLMoConfig:
    # The defaults are the training defaults of Part 2 (a GPT-2-small-sized OLMo 2); the comments give
    # the released models' values. An option that can be off (clip_qkv, sliding_window) is off at 0,
    # here as in the training keys: a config key needs a value of one type for parse_config to check,
    # which None is not, and neither a clip nor a window of 0 would mean anything else.
    # Longest context the model is used with; no weight depends on it (RoPE and ALiBi have no
    # table). OLMo 1: 2048, OLMo 2: 4096, OLMo 3: 65536 after its long-context stage.
    block_size: int = 1024
    # OLMo 2 and 3's tokenizer, "dolma2" (named after Dolma, OLMo's training data), is OpenAI's
    # cl100k_base (the ~100K-token byte-level BPE of GPT-3.5 and GPT-4, in tiktoken) with a few
    # special tokens added: 100278 tokens, padded to 100352, a multiple of 128.
    vocab_size: int = 100352
    n_layer: int = 12
    n_head: int = 12
    # Grouped-query attention as in llama.py. OLMo 1 and OLMo 2 up to 13B use n_kv_head = n_head
    # (multi-head attention); OLMo 2 32B uses 8 kv heads for 40 query heads.
    n_kv_head: int = 4
    n_embd: int = 768
    hidden_dim: int | None = None  # SwiGLU width; None derives it as llama.py does
    multiple_of: int = 256
    # 'olmo1': pre-norm blocks with a parameter-free LayerNorm. 'olmo2' (also OLMo 3's block):
    # RMSNorm on the output of each sub-layer, and QK-norm.
    block_type: str = "olmo2"
    norm_eps: float = 1e-6  # OLMo 2 and 3 use 1e-6 (1e-5 is Hugging Face's fixed value for OLMo 1's LayerNorm)
    clip_qkv: float = 0.0  # clamp q, k and v to [-clip_qkv, clip_qkv]; 0 disables (OLMo 1.7 7B used 8.0)
    pos_emb: str = "rope"  # 'rope' (every released OLMo) or 'alibi'
    # OLMo 2 and 3 use 500000 for their 4K-65K contexts; OLMo 1 used 10000, which suits short blocks.
    rope_theta: float = 10000.0
    # None, or YaRN in Hugging Face's format, applied to the full-attention layers only (OLMo 3):
    # {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192,
    #  "beta_fast": 32, "beta_slow": 1, "attention_factor": ...}. See yarn_inverse_frequencies.
    rope_scaling: dict | None = None
    # Attention span of the sliding layers (OLMo 3: 4096); 0 means every layer attends fully.
    sliding_window: int = 0
    # Per layer, "full" or "sliding". None derives OLMo 3's pattern when sliding_window is set (three
    # sliding layers, then one full layer, repeated; the last layer of a multiple of 4 is full),
    # and all "full" otherwise.
    layer_types: list | None = None
    tie_embeddings: bool = False  # OLMo 1 1B ties; OLMo 2 and 3 do not
    dropout: float = 0.0  # AI2 trains without dropout; small data sets want some
    attention: str = "sdpa"  # 'sdpa' (fused kernel) or 'manual' (written out), as in gpt.py
    # Mixture of experts (OLMoE, see MoEFeedForward). 0 experts: one dense SwiGLU per block, as in
    # every OLMo; otherwise each block's feed-forward is n_experts SwiGLUs of which a router picks
    # n_experts_per_token per token (OLMoE-1B-7B: 8 of 64; Mixtral: 2 of 8; Switch Transformer: 1).
    n_experts: int = 0
    n_experts_per_token: int = 2
    norm_topk_prob: bool = False  # rescale the k chosen probabilities to sum to 1 (OLMoE: False)
    router_aux_loss_coef: float = 0.01  # load-balancing loss weight while training (OLMoE: 0.01)
    router_z_loss_coef: float = 0.001  # router z-loss weight while training (OLMoE: 0.001)

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}: "
                             f"each key/value head serves a whole group of query heads")
        if self.pos_emb not in ("rope", "alibi"):
            raise ValueError(f"pos_emb={self.pos_emb!r} must be 'rope' or 'alibi'")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"head dimension n_embd // n_head = {self.n_embd // self.n_head} must be even: "
                             f"RoPE rotates channels in pairs")
        if self.block_type not in ("olmo1", "olmo2", "olmoe"):
            raise ValueError(f"block_type={self.block_type!r} must be 'olmo1', 'olmo2' or 'olmoe'")
        if self.n_experts < 0:
            raise ValueError(f"n_experts={self.n_experts} must be at least 1 (or 0 for a dense feed-forward)")
        if self.n_experts and not 1 <= self.n_experts_per_token <= self.n_experts:
            raise ValueError(f"n_experts_per_token={self.n_experts_per_token} must be between 1 and "
                             f"n_experts={self.n_experts}")
        if self.router_aux_loss_coef < 0 or self.router_z_loss_coef < 0:
            raise ValueError(f"router_aux_loss_coef={self.router_aux_loss_coef} and router_z_loss_coef="
                             f"{self.router_z_loss_coef} must be >= 0 (0 switches a loss off)")
        if self.attention not in ("sdpa", "manual"):
            raise ValueError(f"attention={self.attention!r} must be 'sdpa' or 'manual'")
        if self.clip_qkv < 0:
            raise ValueError(f"clip_qkv={self.clip_qkv} must be positive (or 0 for no clipping)")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window={self.sliding_window} must be at least 1 (or 0 for none)")
        if self.layer_types is None:
            if not self.sliding_window:
                self.layer_types = ["full"] * self.n_layer
            else:
                self.layer_types = ["full" if (i + 1) % 4 == 0 else "sliding" for i in range(self.n_layer)]
        self.layer_types = list(self.layer_types)
        if len(self.layer_types) != self.n_layer or not set(self.layer_types) <= {"full", "sliding"}:
            raise ValueError(f"layer_types must list {self.n_layer} entries, each 'full' or 'sliding'; "
                             f"got {self.layer_types}")
        if "sliding" in self.layer_types and not self.sliding_window:
            raise ValueError("layer_types has sliding layers but sliding_window is 0")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type")
            if rope_type != "yarn":
                raise ValueError(f"unsupported rope_scaling type {rope_type!r}; olmo.py implements only 'yarn' "
                                 f"(OLMo 3's)")
            missing = [key for key in ("factor", "original_max_position_embeddings") if key not in self.rope_scaling]
            unsupported = [key for key in ("mscale", "mscale_all_dim") if self.rope_scaling.get(key)]
            if missing or unsupported:
                raise ValueError(f"rope_scaling {self.rope_scaling}: lacks {missing}, or uses unsupported {unsupported}")
        if self.hidden_dim is None:
            # llama.py's recipe: 2/3 of 4 * n_embd, rounded up to multiple_of (OLMo 2 7B: 11008).
            hidden = int(2 * 4 * self.n_embd / 3)
            self.hidden_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)
            if self.n_experts:
                # Each expert gets 1/k of that width, so the k experts a token runs through are
                # together as wide as the dense SwiGLU: the same active parameters and FLOPs per
                # token, n_experts / k times the total parameters. (OLMoE-1B-7B sets its width
                # directly: 64 experts of 1024, 8 active, against hidden size 2048.)
                self.hidden_dim = max(1, self.hidden_dim // self.n_experts_per_token)

    def layer_windows(self):
        """Per layer, how far back its queries may look: sliding_window, or None for the whole context."""
        return [self.sliding_window if kind == "sliding" else None for kind in self.layer_types]


# -----------------------------------------------------------------------------
# Building blocks, in the order data meets them: token embeddings (a plain nn.Embedding), the
# norms, positions (RoPE or ALiBi), attention with its cache, the feed-forwards (dense, mixture of
# experts), the three blocks.


class ParameterFreeLayerNorm(nn.Module):
    """OLMo 1's norm: (x - mean(x)) / sqrt(var(x) + eps) over the channels, with no gain and no bias.

    A LayerNorm's learnable scale and shift can always be absorbed by the linear layer that reads
    the normalised vector (a diagonal scale folds into its weight matrix, a shift into a bias, and
    OLMo has no biases anyway), so AI2 dropped them: fewer parameters, and nothing for weight decay
    to fight over. Computed in float32 and cast back, as Hugging Face's OlmoLayerNorm does, so
    pretrained logits match it. The module holds no tensor, so checkpoints have no entry for it.
    """

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x.float(), (x.size(-1),), None, None, eps=self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g, as in llama.py, but with the gain applied in float32.

    llama.py casts the normalised vector back to the input dtype and then multiplies by the gain
    (Hugging Face's Llama does); Hugging Face's OLMo 2 multiplies by the gain in float32 and casts
    the product. Identical in float32, slightly different under 16-bit autocast; we follow OLMo 2.
    """

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (self.weight * normed).to(x.dtype)


def rope_inverse_frequencies(head_dim, theta):
    """(head_dim / 2,) rotation speeds theta^(-2i / head_dim), as in llama.py (see apply_rope)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta ** exponents)


def yarn_inverse_frequencies(head_dim, theta, scaling):
    """YaRN (Peng et al., "YaRN: Efficient Context Window Extension of LLMs", 2023): rescaled RoPE
    frequencies for a context `factor` times longer than the one trained, and an attention factor.

    Returns (inv_freq (head_dim / 2,), attention_factor). The idea is llama.py's Llama 3.1 scaling
    with a different ramp. A channel pair that completes many turns within the original context
    (more than beta_fast) encodes local order and keeps its frequency ("extrapolation"); one that
    completes less than beta_slow turns has its frequency divided by factor ("interpolation": the
    longer context then spans, to it, the angles it saw in training); pairs in between are blended
    linearly by their index. The number of turns of pair i over a context L is
    L / (2 pi theta^(2i/d)), so the pair index with r turns is d * ln(L / (2 pi r)) / (2 ln theta).
    Interpolated attention gets flatter (scores shrink as angles crowd together), so YaRN also
    sharpens the softmax: cos and sin, hence q and k, are multiplied by attention_factor
    (default 0.1 ln(factor) + 1). Written to follow Hugging Face's float32 arithmetic.
    """
    factor = scaling["factor"]
    old_context = scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def pair_index_with_turns(turns):
        return head_dim * math.log(old_context / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_index_with_turns(beta_fast), pair_index_with_turns(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    wavelength_ratio = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    kept, divided = 1.0 / wavelength_ratio, 1.0 / (factor * wavelength_ratio)
    # 1 for the fast pairs (index below low), 0 for the slow ones (above high), linear in between.
    keep = 1 - ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    return divided * (1 - keep) + kept * keep, attention_factor


def rope_cos_sin(inv_freq, start, length):
    """cos and sin, each (length, head_dim), for positions start .. start + length - 1 (llama.py)."""
    pos = torch.arange(start, start + length, device=inv_freq.device).float()
    angles = torch.outer(pos, inv_freq.float())  # (T, head_dim / 2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x, cos, sin):
    """Rotate the channel pairs (i, i + head_dim / 2) of x (B, n_heads, T, head_dim): llama.py's
    rotate-half RoPE, which is Hugging Face's layout for OLMo too."""
    return x * cos.to(x.dtype) + x.roll(x.size(-1) // 2, dims=-1) * sin.to(x.dtype)


def alibi_slopes(n_head):
    """ALiBi's per-head slopes m_h: head h adds -m_h * (distance to the key) to its scores.

    For n heads, a power of two, the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ...,
    2^(-8) (for 8 heads: 1/2, 1/4, ..., 1/256). A steep head (m = 1/2) all but ignores tokens a few
    positions back: a local head. A shallow one (m = 1/256) barely discounts distance at all. The
    spread gives every layer heads at all scales without learning any of them.

    For other head counts Press et al. take the n' = largest power of two below n slopes as usual,
    then fill the remaining n - n' heads with every other slope of the 2n' sequence, which
    interleave between the first ones (12 heads: the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5,
    2^-3.5). BLOOM's implementation and Hugging Face's build_alibi_tensor do the same.
    """
    def geometric(n):  # n a power of two
        ratio = 2.0 ** (-8.0 / n)
        return [ratio ** (i + 1) for i in range(n)]

    below = 2 ** math.floor(math.log2(n_head))
    if below == n_head:
        return torch.tensor(geometric(n_head))
    return torch.tensor(geometric(below) + geometric(2 * below)[0::2][: n_head - below])


def attention_weights(q, k, mask):
    """softmax(Q K^T / sqrt(head_dim)) under a bool mask, (B, n_head, T_q, T_k): as in gpt.py."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, n_head, T_q, T_k)
    scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores, dim=-1)  # each row sums to 1


def manual_attention(q, k, v, mask, dropout_p=0.0):
    """Scaled dot-product attention written out: softmax(Q K^T / sqrt(head_dim)) V, as in gpt.py.

    q, k, v: (B, n_head, T_q or T_k, head_dim), the key/value heads repeated up to n_head;
    mask: (T_q, T_k) bool, True where a query may look at a key.
    """
    weights = F.dropout(attention_weights(q, k, mask), p=dropout_p)
    return weights @ v  # (B, n_head, T_q, head_dim)


def biased_attention_weights(q, k, bias):
    """softmax(Q K^T / sqrt(head_dim) + bias), (B, n_head, T_q, T_k): ALiBi's attention weights."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)) + bias  # (B, n_head, T_q, T_k)
    return F.softmax(scores, dim=-1)


def manual_biased_attention(q, k, v, bias, dropout_p=0.0):
    """manual_attention with ALiBi: softmax(Q K^T / sqrt(head_dim) + bias) V.

    bias: (n_head, T_q, T_k) float, -m_h * distance where a query may look at a key and -inf where
    it may not, so it is the causal (or sliding-window) mask as well. That one addition is all of
    ALiBi: q and k carry no position at all.
    """
    weights = F.dropout(biased_attention_weights(q, k, bias), p=dropout_p)
    return weights @ v  # (B, n_head, T_q, head_dim)


class KVCache:
    """Keys and values of every layer for the tokens seen so far (see gpt.py's KVCache for why).

    As in llama.py: n_kv_head heads, keys stored after RoPE at their absolute positions (with ALiBi
    they carry no position at all: the distance penalty is added at scoring time).
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


class SlidingWindowKVCache:
    """The cache of a model with sliding-window layers (OLMo 3): a KVCache for the full-attention
    layers, and for each sliding layer only the keys and values of its last window - 1 positions.

    Why that is enough, exactly: a sliding layer's query at position p may look at keys
    p - window + 1 .. p. The key at p is the new token's own, computed in this very call, so from
    the past it needs only the window - 1 positions before it; nothing older can ever be looked at
    again by this layer, whatever comes later. (Unlike dropping old tokens when the whole text
    outgrows block_size — see generate — nothing here changes any hidden state: the older tokens
    still shaped the residual stream through the full layers, and their keys are simply never read.)
    For OLMo 3 7B at 65K tokens this cuts the cache of 24 of its 32 layers from 65536 to 4095
    positions each: 3.4x less cache memory overall.

    Each call concatenates the kept keys with the new ones and keeps the newest window - 1: a copy
    of the window per token, the same order of work as attending over it. A ring buffer (write
    position p at slot p % (window - 1)) avoids even that copy, and attention does not care about
    the order of its keys; but ALiBi's distances and a chunk's mask then need each slot's position,
    so we keep the simpler, ordered version.
    """

    def __init__(self, layer_windows, max_len):
        self.windows = layer_windows  # per layer: None (full attention) or its window
        full_layers = [layer for layer, window in enumerate(layer_windows) if window is None]
        self.full = KVCache(len(full_layers), max_len)
        self.full_slot = {layer: slot for slot, layer in enumerate(full_layers)}  # layer -> index in self.full
        self.recent = [None] * len(layer_windows)  # sliding layers: (keys, values) of the last window - 1 positions

    @property
    def length(self):  # positions seen so far: the full layers' count (the model advances it)
        return self.full.length

    @length.setter
    def length(self, value):
        self.full.length = value

    def update(self, layer, k, v):
        """Store the new k, v (B, n_kv_head, T, head_dim) of one layer; return what the layer may
        read: every position so far (full layers) or the last window - 1 plus the new T (sliding)."""
        window = self.windows[layer]
        if window is None:
            return self.full.update(self.full_slot[layer], k, v)
        if self.recent[layer] is not None:
            kept_k, kept_v = self.recent[layer]
            k, v = torch.cat((kept_k, k), dim=2), torch.cat((kept_v, v), dim=2)
        keep_from = max(0, k.size(2) - (window - 1))
        self.recent[layer] = (k[:, :, keep_from:], v[:, :, keep_from:])
        return k, v


class Attention(nn.Module):
    """llama.py's causal self-attention (separate q/k/v/o projections, GQA, no biases) with OLMo's
    additions: clip_qkv, QK-norm (OLMo 2 and 3), and positions from RoPE or from ALiBi's bias.

    QK-norm: an RMSNorm with a learned gain over the whole query projection (n_head * head_dim
    channels at once) and one over the whole key projection, before RoPE. Attention logits are
    dot products of q and k, so their size is bounded once q and k are; without it OLMo 2's authors
    saw logits grow until the softmax saturated and the loss spiked (Dehghani et al. 2023 and
    Wortsman et al. 2023 made the same diagnosis). Later models (Qwen3, Gemma 3) normalise each head
    separately, which is cheaper under tensor parallelism (each layer's heads split across several
    GPUs, each computing its own heads: a norm over all heads would need their channels gathered
    from every GPU); OLMo 2 and 3 normalise across heads.
    """

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.attention = config.attention
        self.clip_qkv = config.clip_qkv
        self.q_proj = nn.Linear(config.n_embd, config.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_head * self.head_dim, config.n_embd, bias=False)
        self.qk_norm = config.block_type in ("olmo2", "olmoe")
        # OLMo 1.7 clamps the raw projections; OLMoE clamps after QK-norm (as Hugging Face's
        # OlmoeAttention does), so the clip bounds exactly what enters the dot products.
        self.clip_after_norm = config.block_type == "olmoe"
        if self.qk_norm:
            self.q_norm = RMSNorm(config.n_head * self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(config.n_kv_head * self.head_dim, config.norm_eps)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, mask, cache=None, layer=0):
        """x (B, T, C); rope: (cos, sin) or None (ALiBi); mask: see OLMo.attention_mask."""
        B, T, C = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, heads * head_dim)
        if self.clip_qkv and not self.clip_after_norm:  # 0: no clipping
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)  # over all heads' channels together
        if self.clip_qkv and self.clip_after_norm:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, head_dim)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, n_kv_head, L, head_dim): what this layer may read
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "manual":
            group = self.n_head // self.n_kv_head  # GQA made explicit, as in llama.py
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            if mask.dtype == torch.bool:
                y = manual_attention(q, k, v, mask, dropout_p)
            else:
                y = manual_biased_attention(q, k, v, mask.to(q.dtype), dropout_p)
        elif T == 1 and mask is None:
            # Speed path: skip on first reading. It computes what the branch below does, faster.
            # One new token that may see the whole cache (RoPE, no window cutting it): llama.py's
            # folding of each query group into the query axis, (B, n_head, 1, d) -> (B, n_kv_head,
            # group, d), which reads each cached key once per group, not once per query head.
            group = self.n_head // self.n_kv_head
            y = F.scaled_dot_product_attention(q.view(B, self.n_kv_head, group, self.head_dim), k, v,
                                               dropout_p=dropout_p)
            y = y.view(B, self.n_head, 1, self.head_dim)
        else:
            if mask is not None and mask.dtype != torch.bool:
                mask = mask.to(q.dtype)  # the kernel wants a float bias in the queries' dtype (autocast)
            # No mask here (see attention_mask) means several new queries and no earlier keys: plain
            # causal, as in llama.py. (One new token took the branch above.)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.o_proj(y))


class FeedForward(nn.Module):
    """SwiGLU, as in llama.py: down(silu(gate(x)) * up(x)). Every OLMo uses it."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.hidden_dim, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class Experts(nn.Module):
    """n_experts SwiGLU feed-forwards (FeedForward's three matrices each), stacked on a leading axis:
    expert e's matrices are gate_proj[e], up_proj[e] and down_proj[e].

    Stacked (as Hugging Face's transformers 5 holds OLMoE's experts in memory, with gate and up
    fused into one tensor; its checkpoint files, like the released ones, keep one tensor per expert:
    Part 3 stacks them), so that a batched computation could run them all in one matrix multiply.
    We measured one and dropped it: sorting the (token, choice) pairs by expert, padding each
    expert's group to the busiest one's size and running three torch.bmm calls made a forward and
    backward of the whole model 1.7x slower than forward's loop on a 2-core CPU (365 against
    218 ms at config/olmoe_shakespeare_char_cpu.py's size: 8 experts, 768 tokens a batch): the
    gathers, scatters and padding cost more than the 8 * 3 small matmuls they replace. On a GPU,
    grouped-GEMM kernels (megablocks, torch._grouped_mm) are what makes a MoE fast at scale.
    """

    def __init__(self, config):
        super().__init__()
        E, C, H = config.n_experts, config.n_embd, config.hidden_dim
        self.gate_proj = nn.Parameter(torch.empty(E, H, C))  # nn.Linear's (out, in) layout, per expert
        self.up_proj = nn.Parameter(torch.empty(E, H, C))
        self.down_proj = nn.Parameter(torch.empty(E, C, H))

    def expert(self, e, x):
        """Expert e on its tokens x (n, C): FeedForward's down(silu(gate(x)) * up(x)) -> (n, C)."""
        return F.linear(F.silu(F.linear(x, self.gate_proj[e])) * F.linear(x, self.up_proj[e]), self.down_proj[e])

    def forward(self, x, chosen, weights):
        """x (N, C) tokens; chosen (N, k) each token's experts; weights (N, k) their routing
        weights. Returns (N, C): for each token, sum_j weights[j] * expert_chosen[j](x).

        One expert at a time: gather the tokens that chose it, run it on them alone, scatter the
        weighted outputs back onto their rows. Each token is computed by exactly k experts, so the
        work is k dense feed-forwards' worth however many experts there are (the point of a MoE).
        """
        y = torch.zeros_like(x)
        for e in range(self.gate_proj.size(0)):
            token, slot = torch.where(chosen == e)  # (n_e,) each: which tokens chose e, as which choice
            out = self.expert(e, x[token]) * weights[token, slot, None]  # (n_e, C)
            y.index_add_(0, token, out)  # a token's k outputs land on the same row and add up
        return y


class MoEFeedForward(nn.Module):
    """OLMoE's sparse mixture-of-experts feed-forward (Muennighoff et al., "OLMoE: Open
    Mixture-of-Experts Language Models", Sep 2024), replacing FeedForward when n_experts > 0.

    Many feed-forwards (the experts) and a router, gate: a bias-free linear map from a token to one
    logit per expert. A softmax turns the logits into probabilities, the token goes through the k
    most probable experts only, and their outputs are summed weighted by those probabilities
    (renormalised to sum to 1 when norm_topk_prob; OLMoE leaves them as they are, so the weights
    also say how sure the router is). The parameters grow with n_experts, the compute per token with
    k: OLMoE-1B-7B holds 6.9B parameters but runs 1.3B per token (its name: 7B total, 1B active),
    and its paper reports it ahead of dense models with similar active parameters. The router's
    choice is not differentiable, but the weights are: the gradient teaches the router through them
    which experts served a token well.

    A router left alone tends to collapse onto a few experts (those chosen early train faster, so
    they get chosen more), hence the load-balancing loss (see load_balancing_loss). Each call keeps
    its router_logits (N, n_experts), for the model's auxiliary losses, and chosen (N, k), for
    expert_load(): what fraction of the tokens each expert received.
    """

    def __init__(self, config):
        super().__init__()
        self.top_k, self.norm_topk_prob = config.n_experts_per_token, config.norm_topk_prob
        self.gate = nn.Linear(config.n_embd, config.n_experts, bias=False)  # the router; Hugging Face's name
        self.experts = Experts(config)
        self.dropout = nn.Dropout(config.dropout)
        self.router_logits = self.chosen = None  # of the last call

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(B * T, C)  # routing is per token: batch and time are one axis here
        logits = self.gate(x)  # (B * T, n_experts)
        probs = F.softmax(logits.float(), dim=-1)  # in float32, as Hugging Face's OLMoE
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (B * T, k) each, most probable first
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        self.router_logits, self.chosen = logits, chosen.detach()
        return self.dropout(self.experts(x, chosen, weights).view(B, T, C))

    def expert_load(self):
        """(n_experts,) fraction of the last call's (token, choice) pairs that went to each expert:
        sums to 1, and 1 / n_experts everywhere when perfectly balanced."""
        counts = torch.bincount(self.chosen.flatten(), minlength=self.gate.out_features)
        return counts.float() / self.chosen.numel()


def load_balancing_loss(router_logits, top_k):
    """Switch Transformer's load-balancing loss (Fedus et al. 2021, eq. 4-6), as Hugging Face's
    load_balancing_loss_func computes it for OLMoE. router_logits: one (N, E) tensor per layer.

    With f_e the fraction of tokens that chose expert e among their top k, and P_e the mean router
    probability of e: loss = E * sum_e f_e * P_e. f_e is a count, with no gradient; P_e carries it:
    the gradient lowers the probability of each expert in proportion to how often it is chosen, so
    the busiest experts lose the most, which evens the load. Balanced routing (f_e = k / E,
    P_e = 1 / E) gives loss = k. Hugging Face pools every layer's tokens before multiplying (f and
    P averaged over all layers, then one product), which is what we do so the numbers match; Switch
    Transformer computes the product per layer and adds the layers' losses, which differs once
    layers route differently.
    """
    logits = torch.cat(router_logits)  # (n_layer * N, E)
    E = logits.size(-1)
    probs = F.softmax(logits.float(), dim=-1)
    chosen = probs.topk(top_k, dim=-1).indices  # (n_layer * N, k)
    fraction = F.one_hot(chosen, E).sum(dim=1).float().mean(dim=0)  # (E,) f_e: sums to k
    return E * (fraction * probs.mean(dim=0)).sum()


def router_z_loss(router_logits):
    """ST-MoE's router z-loss (Zoph et al. 2022): the mean over tokens (and layers) of
    logsumexp(router logits)^2. It keeps the logits small: large ones make the softmax's float
    rounding matter and the router's choices brittle, which ST-MoE found to cause instabilities.
    The OLMoE paper uses it with weight 0.001; Hugging Face's OlmoeForCausalLM does not compute it.
    """
    return torch.cat(router_logits).float().logsumexp(dim=-1).square().mean()


def feed_forward(config):
    """The feed-forward of a block: the mixture of experts when n_experts > 0, else one SwiGLU."""
    return MoEFeedForward(config) if config.n_experts else FeedForward(config)


class OLMo1Block(nn.Module):
    """OLMo 1: llama.py's pre-norm block, x + attn(norm(x)) then x + mlp(norm(x)), with the
    parameter-free LayerNorm (Hugging Face keeps llama.py's attribute names)."""

    def __init__(self, config):
        super().__init__()
        self.input_layernorm = ParameterFreeLayerNorm(config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = ParameterFreeLayerNorm(config.norm_eps)
        self.mlp = feed_forward(config)

    def forward(self, x, rope, mask, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, layer)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class OLMo2Block(nn.Module):
    """OLMo 2 and 3: x + norm(attn(x)) then x + norm(mlp(x)): the norm on each sub-layer's output.

    Pre-norm (gpt.py, llama.py, OLMo 1) normalises what goes *into* a sub-layer, but what comes out
    is added to the residual stream at whatever size it has, and in OLMo 1 those sizes grew during
    training until the loss spiked. Normalising the output instead (with a learned gain, RMSNorm)
    caps each sub-layer's contribution, while the residual stream itself still carries the
    un-normalised sum, so the identity path that makes deep stacks trainable is untouched. (This is
    not the original Transformer's post-norm, which normalised the residual stream itself,
    x = norm(x + attn(x)), and needed careful warm-up. Swin Transformer V2 called this variant
    "res-post-norm".) Because the block's input is no longer normalised, QK-norm (in Attention)
    does that job where it matters most, on the queries and keys. The final norm before the output
    head stays.
    """

    def __init__(self, config):
        super().__init__()
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = feed_forward(config)
        self.post_feedforward_layernorm = RMSNorm(config.n_embd, config.norm_eps)

    def forward(self, x, rope, mask, cache=None, layer=0):
        x = x + self.post_attention_layernorm(self.self_attn(x, rope, mask, cache, layer))
        x = x + self.post_feedforward_layernorm(self.mlp(x))
        return x


class OLMoEBlock(nn.Module):
    """OLMoE: llama.py's pre-norm block again, x + attn(norm(x)) then x + mlp(norm(x)), with RMSNorm,
    OLMo 2's QK-norm (and clip_qkv after it), and in OLMoE the mixture of experts as its mlp.

    OLMoE (Sep 2024) came between OLMo 1 and OLMo 2 and kept the pre-norm layout; its paper's
    ablations found QK-norm worth its cost in stability, and moved from OLMo 1's parameter-free
    LayerNorm to RMSNorm. (FlexOlmo and OLMo 3's later MoE experiments use OLMo 2's block instead:
    n_experts works with every block_type here.)
    """

    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = feed_forward(config)

    def forward(self, x, rope, mask, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, layer)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


# -----------------------------------------------------------------------------
# The model


class OLMo(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.activation_checkpointing = False  # main() sets it from the training key; see forward()
        block = {"olmo1": OLMo1Block, "olmo2": OLMo2Block, "olmoe": OLMoEBlock}[config.block_type]
        # Hugging Face's OlmoForCausalLM / Olmo2ForCausalLM / Olmo3ForCausalLM / OlmoeForCausalLM
        # layout (as in llama.py), so checkpoint tensor names are our parameter names (but for
        # OLMoE's experts, stacked here: see Experts).
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                layers=nn.ModuleList([block(config) for _ in range(config.n_layer)]),
                norm=(ParameterFreeLayerNorm(config.norm_eps) if config.block_type == "olmo1"
                      else RMSNorm(config.n_embd, config.norm_eps)),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.model.embed_tokens.weight = self.lm_head.weight
        self.layer_windows = config.layer_windows()
        self.register_position_buffers()
        # OLMo 2's initialisation: every matrix (embeddings included) from N(0, 0.02), and no
        # 1/sqrt(2 * n_layer) shrink of o_proj and down_proj as gpt.py and llama.py do. OLMo 1 used
        # the "mitchell" init, named after Mitchell Wortsman, who suggested it to AI2: each matrix
        # from a normal truncated at 3 standard deviations, with std 1/sqrt(fan-in) (so every output
        # channel starts with about unit variance, whatever the width), and the projections that write
        # into the residual stream shrunk further by 1/sqrt(2 * (layer index + 1)), more with depth.
        # The OLMo 2 paper reports the plain N(0, 0.02) kept the growth of activations and gradient
        # norms in check better (with the norm now on each sub-layer's output, the depth-dependent
        # shrink is no longer needed to keep the residual stream small).
        # The experts' stacked (n_experts, out, in) matrices and the router are matrices too.
        for param in self.parameters():
            if param.dim() >= 2:
                nn.init.normal_(param, mean=0.0, std=0.02)

    def register_position_buffers(self):
        """RoPE's frequencies or ALiBi's slopes: fixed, not learned, so buffers recomputed from the
        config (not persistent: not in checkpoints, as in llama.py), always in float32."""
        config = self.config
        head_dim = config.n_embd // config.n_head
        if config.pos_emb == "rope":
            # OLMo 3 keeps the sliding layers at plain RoPE and rescales only the full layers: a
            # sliding layer never sees a distance beyond its window, which training covered.
            self.register_buffer("inv_freq", rope_inverse_frequencies(head_dim, config.rope_theta), persistent=False)
            if config.rope_scaling is not None:
                scaled, self.rope_attention_factor = yarn_inverse_frequencies(head_dim, config.rope_theta,
                                                                              config.rope_scaling)
                self.register_buffer("scaled_inv_freq", scaled, persistent=False)
        else:
            self.register_buffer("slopes", alibi_slopes(config.n_head), persistent=False)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # a tied matrix is counted once

    def num_active_params(self):
        """Parameters one token runs through: all of them, less the experts it was not routed to
        (n_experts - k per layer, 3 * n_embd * hidden_dim each). A dense model's are num_params()."""
        cfg = self.config
        idle_experts = cfg.n_layer * (cfg.n_experts - cfg.n_experts_per_token) if cfg.n_experts else 0
        return self.num_params() - idle_experts * 3 * cfg.n_embd * cfg.hidden_dim

    def attention_mask(self, past, T, window, device):
        """What T new queries (positions past .. past + T - 1) may look at, in a layer with this window.

        The layer's keys (see SlidingWindowKVCache) are the `kept` positions just before the new
        tokens, then the T new ones. Returns:
          - None when the fused kernel can do it alone: a RoPE model without a cache, or with a
            cache and one new token (which may see every key the cache returns), when the window
            (if any) covers the whole block;
          - a bool (T, kept + T) mask, True where query i may see key j: causal, and within the
            window (query minus key < window, so a window of W covers W positions, the query's own
            included — Hugging Face's convention);
          - for ALiBi, a float (n_head, T, kept + T) bias: -slope * distance where visible, -inf
            where not. Score q.k / sqrt(d) - m * (i - j): ALiBi's whole position signal.
        """
        kept = past if window is None else min(past, window - 1)
        fits_window = window is None or kept + T <= window
        if self.config.pos_emb == "rope" and self.config.attention == "sdpa" and fits_window and (T == 1 or kept == 0):
            return None
        queries = torch.arange(past, past + T, device=device)
        keys = torch.arange(past - kept, past + T, device=device)
        distance = queries[:, None] - keys[None, :]  # (T, kept + T): how far back each key is
        visible = distance >= 0
        if window is not None:
            visible &= distance < window
        if self.config.pos_emb == "rope":
            return visible
        bias = -self.slopes[:, None, None] * distance.float()  # (n_head, T, kept + T)
        return bias.masked_fill(~visible, float("-inf"))

    def forward(self, idx, targets=None, cache=None, last_only=False):
        """idx: (B, T) token ids -> (logits (B, T, vocab_size), loss or None), as in llama.py.

        With a cache (KVCache, or SlidingWindowKVCache for a model with sliding layers), idx holds
        only the new tokens, whose positions continue from cache.length. last_only=True computes
        the last position's logits alone, all that generation needs (OLMo 2's 100K-token output
        layer costs as much as a few blocks).
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of length {past + T} is longer than block_size={self.config.block_size}")
        x = self.model.drop(self.model.embed_tokens(idx))  # (B, T, C): no position added here
        # Positions, computed once and shared by the layers of each kind: float32 angles (see
        # llama.py's rope_cos_sin); with YaRN the full layers have their own, scaled ones.
        rope = {"full": None, "sliding": None}
        if self.config.pos_emb == "rope":
            rope["sliding"] = rope["full"] = rope_cos_sin(self.inv_freq, past, T)
            if self.config.rope_scaling is not None:
                cos, sin = rope_cos_sin(self.scaled_inv_freq, past, T)
                rope["full"] = (cos * self.rope_attention_factor, sin * self.rope_attention_factor)
            # Speed path: skip on first reading. Round cos and sin to the activations' dtype once
            # here, as in llama.py, rather than in each of the 2 * n_layer apply_rope calls. (Under
            # autocast x is float32, so this keeps them float32 and apply_rope still rounds them to
            # the 16-bit queries in every call.)
            rope = {kind: tuple(t.to(x.dtype) for t in cos_sin) for kind, cos_sin in rope.items()}
        masks = {}
        for window in set(self.layer_windows):
            masks[window] = self.attention_mask(past, T, window, idx.device)
        for layer, block in enumerate(self.model.layers):
            window = self.layer_windows[layer]
            inputs = (x, rope["sliding" if window else "full"], masks[window], cache, layer)
            if self.activation_checkpointing and self.training and cache is None:
                # Memory path: skip on first reading. As in gpt.py: the block's inner activations are
                # recomputed in backward rather than stored, about one block's worth of memory
                # instead of n_layer blocks' for about one extra forward pass; the non-reentrant
                # checkpoint restores the RNG state for the rerun, so dropout repeats its masks.
                x = torch.utils.checkpoint.checkpoint(block, *inputs, use_reentrant=False)
            else:
                x = block(*inputs)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        x = self.model.norm(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
            if self.config.n_experts and self.training:
                # Training a MoE: loss = cross_entropy + router_aux_loss_coef * balance
                # + router_z_loss_coef * z (Hugging Face adds the first term, OLMoE's training both).
                # In eval mode the loss is the cross-entropy alone, comparable with a dense model's.
                router_logits = [block.mlp.router_logits for block in self.model.layers]
                balance = load_balancing_loss(router_logits, self.config.n_experts_per_token)
                z = router_z_loss(router_logits)
                loss = loss + self.config.router_aux_loss_coef * balance + self.config.router_z_loss_coef * z
        return logits, loss

    def crop_block_size(self, block_size):
        """Lower the context limit (no table to cut with RoPE or ALiBi), as in llama.py."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size

    # -------------------------------------------------------------------------
    # Generation

    def new_cache(self, max_len):
        """An empty cache for max_len positions: a plain KVCache unless some layer slides."""
        if all(window is None for window in self.layer_windows):
            return KVCache(self.config.n_layer, max_len)
        return SlidingWindowKVCache(self.layer_windows, max_len)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=1.0, use_cache=True, vocab_size=None, eos_token_id=None, on_token=None):
        """Append up to max_new_tokens sampled tokens to idx (B, T) and return the (B, T + new) result.

        llama.py's generate (same sampling and options: vocab_size, eos_token_id, on_token), with
        the cache new_cache picks. Past block_size the newest block_size tokens are recomputed every
        step, for llama.py's reason: the keys of every layer above the first were computed from
        hidden states that attended to the tokens now dropped. ALiBi does not change that argument
        (its scores are relative, but the hidden states are not), and neither do the sliding layers:
        what they drop from their cache they would never read again, whereas a token leaving the
        block changes what the full layers saw.
        """
        check_sampling_options(temperature, top_k, top_p, repetition_penalty)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        block_size = self.config.block_size
        cache_len = min(block_size, idx.size(1) + max_new_tokens)
        stop_ids = None if eos_token_id is None else torch.tensor(eos_token_id, device=idx.device).view(-1)
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= block_size:
                if cache is None:  # first step: run the whole prompt and fill the cache
                    cache = self.new_cache(cache_len)
                    logits, _ = self(idx, cache=cache, last_only=True)
                else:  # the cache holds every earlier token (that a layer may still read): feed the newest
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
    # Loading Hugging Face OLMo checkpoints

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0, dtype=torch.float32):
        """Build an OLMo from a Hugging Face checkpoint with model_type "olmo" (OLMo 1, converted
        "-hf" repositories such as allenai/OLMo-1B-hf), "olmo2", "olmo3" or "olmoe" (such as
        allenai/OLMoE-1B-7B-0125): a local directory or a hub id (downloaded once, as in llama.py).

        dtype: of the weights, float32 by default (None: the file's own); bfloat16 halves the memory. As in llama.py the
        model is built on the meta device and takes the memory-mapped checkpoint tensors as its
        parameters; RoPE's frequencies are then computed for real, in float32. Reading HF's config
        and matching its tensors is bookkeeping, in Part 3 (hf_olmo_config, hf_olmo_state_dict).
        """
        directory, config = hf_olmo_config(name_or_dir, dropout)
        with torch.device("meta"):
            model = cls(config)
        state = hf_olmo_state_dict(load_hf_weights(directory), model.state_dict(), config, dtype, directory)
        model.load_state_dict(state, strict=False, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight  # assign=True replaced the tied matrix
        model.register_position_buffers()  # they were made on the meta device too
        return model

    # -------------------------------------------------------------------------
    # Optimizer

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW, decaying matrices only, as in llama.py, except the token embedding (OLMo 2).

        Weight decay pulls every weight towards zero; on the embedding it shrinks the vectors of
        rare tokens, which get few gradient updates to push back, and with OLMo 2's post-sub-layer
        norms the small embeddings then stay small through the whole residual stream. OLMo 2 found
        training more stable without it. (With tied embeddings the output head shares that matrix
        and goes undecayed too.)
        """
        embedding = self.model.embed_tokens.weight
        params = [p for p in self.parameters() if p.requires_grad]
        decayed = [p for p in params if p.dim() >= 2 and p is not embedding]
        groups = [
            {"params": decayed, "weight_decay": weight_decay},
            {"params": [p for p in params if not any(p is d for d in decayed)], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self):
        """Training FLOPs per token as in llama.py: 6 per matmul parameter it runs through (with
        experts, the active ones only), plus attention's 12 * T_seen * n_embd per layer, where a
        sliding layer's query sees at most its window. (The router's softmax, top-k, gathers and
        scatters are not matmuls and are not counted.)"""
        cfg = self.config
        lookup = 0 if cfg.tie_embeddings else self.model.embed_tokens.weight.numel()
        attention = sum(12 * min(cfg.block_size, window or cfg.block_size) * cfg.n_embd for window in self.layer_windows)
        return 6 * (self.num_active_params() - lookup) + attention


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
# In a mixture of experts (n_experts > 0) the experts are stacked tensors, not Linear layers, and the
# router is left alone: there only the attention's projections take adapters.
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
# Training configuration, as in llama.py (config files and --key=value override these). The defaults
# train a GPT-2-small-sized OLMo 2 (12 layers, 768 wide) with 3 query heads per key/value head, and
# are OLMoConfig's defaults; as there, 0 switches clip_qkv and sliding_window off.

# I/O
out_dir = "out-olmo"
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
wandb_project = "olmo"
wandb_run_name = "olmo"
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
multiple_of = 256  # the SwiGLU width is 2/3 * 4 * n_embd rounded up to this
block_type = "olmo2"  # 'olmo2' (also OLMo 3's block) or 'olmo1'
norm_eps = 1e-6
clip_qkv = 0.0  # clamp q, k, v to [-clip_qkv, clip_qkv]; 0 disables (OLMo 1.7 used 8.0)
pos_emb = "rope"  # 'rope' or 'alibi'
rope_theta = 10000.0  # OLMo 2 and 3 use 500000 for their 4K-65K contexts; 10000 suits short blocks
sliding_window = 0  # > 0: OLMo 3's pattern, three layers of every four attend only this far back
tie_embeddings = False
dropout = 0.0
attention = "sdpa"
# mixture of experts (OLMoE, with block_type='olmoe'); 0 experts: the dense SwiGLU of every OLMo
n_experts = 0  # > 0: each feed-forward is this many experts (OLMoE-1B-7B: 64), each 1/k the dense width
n_experts_per_token = 2  # top-k experts per token (OLMoE-1B-7B: 8)
norm_topk_prob = False  # rescale the k routing weights to sum to 1 (OLMoE: False)
router_aux_loss_coef = 0.01  # load-balancing loss weight (OLMoE: 0.01)
router_z_loss_coef = 0.001  # router z-loss weight (OLMoE: 0.001)
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

def load_pretrained_olmo(cfg, meta, runtime):
    """init_from=<a hub id or HF directory>: a pretrained OLMo, to fine-tune; llama.py's
    load_pretrained_llama (what differs from gpt.py's load_openai_gpt2: the tokenizer is the
    checkpoint's own tokenizer.json, and the dataset is checked against that file)."""

    def load():
        try:
            directory = cfg["init_from"]
            if not os.path.isdir(directory):
                directory = download_hf_checkpoint(directory)
            # FSDP: the file's own tensors, unread, whose slices shard_model copies into each process's shards.
            dtype = None if runtime.fsdp else torch.float32
            return (OLMo.from_pretrained(directory, dropout=cfg["dropout"], dtype=dtype), directory), None
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            return None, f"cannot load {cfg['init_from']!r}: {e}"

    model, directory = local_rank0_first(load, runtime)  # a hub id downloads once per machine
    # Token ids mean nothing without the tokenizer that made them: the dataset must have been
    # tokenized with the model's own tokenizer.json, or every id is a wrong word.
    if not prepare_data.same_tokenizer(meta, directory):
        fail(f"dataset {cfg['dataset']!r} was not tokenized with {cfg['init_from']}'s tokenizer; prepare your text "
             f"with it: python prepare_data.py NAME --input=FILE --tokenizer={directory}")
    if cfg["block_size"] < model.config.block_size:
        model.crop_block_size(cfg["block_size"])  # no table to cut with RoPE or ALiBi: only the limit changes
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
             f"a Hugging Face directory or hub id (e.g. allenai/OLMo-2-0425-1B) (lora_rank=0 trains every weight)")
    base = os.path.abspath(cfg["init_from"]) if os.path.isdir(cfg["init_from"]) else cfg["init_from"]
    return {"base": base, "rank": cfg["lora_rank"], "alpha": cfg["lora_alpha"], "dropout": cfg["lora_dropout"],
            "targets": cfg["lora_targets"]}


def build_model(cfg, meta, checkpoint, runtime):
    """The model to train: from scratch (the config's shape), from a checkpoint (init_from=resume),
    or a pretrained Hugging Face OLMo; checked against the run's context length and the dataset's vocabulary."""
    lora = lora_recipe(cfg, checkpoint)  # None unless this run trains LoRA adapters (Part 2, above)
    model_keys = ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "multiple_of", "block_type", "norm_eps",
                  "clip_qkv", "pos_emb", "rope_theta", "sliding_window", "tie_embeddings", "dropout", "attention",
                  "n_experts", "n_experts_per_token", "norm_topk_prob", "router_aux_loss_coef", "router_z_loss_coef")
    if cfg["init_from"] == "scratch":
        vocab_size = meta["vocab_size"]
        if vocab_size > 1024:  # large vocabularies: pad to a multiple of 64 for faster matmuls
            vocab_size = (vocab_size + 63) // 64 * 64
        try:
            model = OLMo(OLMoConfig(**{k: cfg[k] for k in model_keys}, vocab_size=vocab_size))
        except ValueError as e:
            fail(e)
    elif cfg["init_from"] == "resume" and lora is None:
        # Only dropout may change between runs (the other keys were checked against the checkpoint);
        # model_args also holds what no key sets: hidden_dim, layer_types and any rope_scaling.
        model = OLMo(OLMoConfig(**checkpoint["model_args"] | {"dropout": cfg["dropout"]}))
        if "sharded" not in checkpoint:  # a sharded checkpoint is read after sharding, in main()
            model.load_state_dict(checkpoint["model"])
    else:  # a pretrained model; a resumed LoRA run reloads the base its recipe names
        model = load_pretrained_olmo(cfg | {"init_from": lora["base"]} if lora else cfg, meta, runtime)
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


def expert_load_record(model):
    """{"expert_load": [per layer, the fraction of (token, choice) pairs each expert received]} for
    the eval record of a mixture of experts ({} for a dense model): from the last batch the
    evaluation ran (a validation batch of batch_size * block_size tokens; see MoEFeedForward).

    Balanced is 1 / n_experts everywhere; an expert near 0 is dead (the router never picks it and it
    stops learning), one far above 1 / n_experts is a bottleneck. plot.py --experts draws it.
    """
    if not model.config.n_experts:
        return {}
    return {"expert_load": [[round(f, 4) for f in block.mlp.expert_load().tolist()] for block in model.model.layers]}


def main(argv):
    # ---- the config: defaults, then config files and --key=value (a resume takes the checkpoint's) ----
    defaults = {k: globals()[k] for k in config_keys}
    cfg = parse_config(argv, defaults)
    checkpoint = None
    if cfg["init_from"] == "resume":
        checkpoint = load_checkpoint(cfg["out_dir"], "olmo")
        # The architecture, the dataset and the LoRA keys are the checkpoint's: an override of them is an error.
        cfg = resumed_config(argv, defaults, checkpoint, fixed=(
            "dataset", "n_layer", "n_head", "n_kv_head", "n_embd", "multiple_of", "block_type", "norm_eps", "clip_qkv",
            "pos_emb", "rope_theta", "sliding_window", "tie_embeddings", "n_experts", "n_experts_per_token",
            "norm_topk_prob", "router_aux_loss_coef", "router_z_loss_coef", "lora_rank", "lora_alpha",
            "lora_dropout", "lora_targets"))
    check_config(cfg)

    # ---- devices, processes and precision ----
    # As in gpt.py; under autocast the norms and the RoPE angles stay float32 by construction (Part 1),
    # and ALiBi's bias is cast to the queries' 16-bit dtype, like the scores it is added to.
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

    # ---- model: from scratch, from a checkpoint, or a pretrained Hugging Face OLMo ----
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
    run_log = start_run_log(cfg, runtime, resumed_at, {"kind": "start", "iter": iter_num, "model_type": "olmo",
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
                                      "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr}
                     | extras | expert_load_record(raw_model))  # a MoE's routing, for plot.py --experts (Part 2)
            check_finite("val loss", losses["val"], iter_num, cfg)
            if iter_num > 0 and not cfg["eval_only"] and (losses["val"] < best_val_loss or cfg["always_save_checkpoint"]):
                best_val_loss = min(best_val_loss, losses["val"])
                state = {"model_type": "olmo", "model_args": model_args, "lora": lora,
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
# Hugging Face OLMo checkpoints: their config.json mapped to OLMoConfig, their tensors checked

# Hugging Face's names for the two kinds of layer in an OLMo 3 config.json (layer_types, and the
# per-kind rope_parameters); ours are "full" and "sliding".
HF_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def hf_olmo_config(name_or_dir, dropout):
    """(directory, OLMoConfig) of a Hugging Face checkpoint with model_type "olmo", "olmo2", "olmo3"
    or "olmoe", downloading a hub id first."""
    directory = name_or_dir if os.path.isdir(name_or_dir) else download_hf_checkpoint(name_or_dir)
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{directory} has no config.json: not a Hugging Face checkpoint directory")
    with open(config_path) as f:
        hf = json.load(f)
    model_type = hf.get("model_type")
    if model_type not in ("olmo", "olmo2", "olmo3", "olmoe"):
        raise ValueError(f"{directory} holds a {model_type!r} model; olmo.py loads 'olmo', 'olmo2', 'olmo3' and "
                         f"'olmoe' checkpoints (the original, non-'-hf' OLMo 1 repositories need converting first)")
    for key, expected in [("hidden_act", "silu"), ("attention_bias", False)]:
        if hf.get(key, expected) != expected:
            raise ValueError(f"unsupported OLMo option {key}={hf[key]!r} in {config_path} (olmo.py expects {expected!r})")
    n_head, n_embd = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim") or n_embd // n_head
    if head_dim * n_head != n_embd:
        raise ValueError(f"head_dim={head_dim} in {config_path} differs from hidden_size / num_attention_heads "
                         f"= {n_embd} / {n_head}; olmo.py assumes they are equal")
    hf_layer_types = (hf.get("layer_types") if model_type == "olmo3" else None) or []
    unknown = set(hf_layer_types) - set(HF_LAYER_TYPES)
    if unknown:
        raise ValueError(f"unsupported layer_types {sorted(unknown)} in {config_path}")
    layer_types = [HF_LAYER_TYPES[kind] for kind in hf_layer_types]
    sliding_window = (hf.get("sliding_window") or 0) if "sliding" in layer_types else 0
    rope_theta, rope_scaling = hf_rope_settings(hf, config_path)
    # OLMoE: its experts (num_local_experts is an older spelling of num_experts); intermediate_size
    # is then each expert's width. HF has no z-loss setting: ours keeps OLMoE's training value.
    moe = dict(n_experts=hf.get("num_experts") or hf.get("num_local_experts") or 64,
               n_experts_per_token=hf.get("num_experts_per_tok", 8), norm_topk_prob=hf.get("norm_topk_prob", False),
               router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.01)) if model_type == "olmoe" else {}
    block_type = {"olmo": "olmo1", "olmoe": "olmoe"}.get(model_type, "olmo2")
    return directory, OLMoConfig(**moe,
        block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"], n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
        n_embd=n_embd, hidden_dim=hf["intermediate_size"], block_type=block_type,
        # Hugging Face's OLMo 1 LayerNorm has a fixed eps of 1e-5; OLMo 2, 3 and OLMoE read rms_norm_eps.
        norm_eps=1e-5 if model_type == "olmo" else hf.get("rms_norm_eps", 1e-5),
        clip_qkv=(hf.get("clip_qkv") or 0.0) if model_type in ("olmo", "olmoe") else 0.0, pos_emb="rope",
        rope_theta=rope_theta, rope_scaling=rope_scaling, sliding_window=sliding_window,
        layer_types=layer_types if sliding_window else None,
        tie_embeddings=hf.get("tie_word_embeddings", False), dropout=dropout,
    )


def hf_rope_settings(hf, config_path):
    """(rope_theta, rope_scaling or None) from a Hugging Face OLMo config.json.

    Three layouts exist, by the transformers version that wrote the file: rope_theta and
    rope_scaling at the top level (older files, and the released OLMo 3 checkpoints); one
    rope_parameters dict (transformers 5); or, for OLMo 3 in transformers 5, rope_parameters
    holding one dict per layer type, the scaling under full_attention only.
    """
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        full, sliding = dict(params.get("full_attention") or {}), dict(params.get("sliding_attention") or {})
        if sliding.get("rope_type", "default") != "default":
            raise ValueError(f"{config_path}: rope scaling in sliding-window layers is not supported")
        if "rope_theta" in sliding and full.get("rope_theta", sliding["rope_theta"]) != sliding["rope_theta"]:
            raise ValueError(f"{config_path}: different rope_theta per layer type is not supported")
    else:
        full = dict(params or hf.get("rope_scaling") or {})
    theta = full.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = full.pop("rope_type", full.pop("type", "default"))
    return float(theta), None if rope_type == "default" else {"rope_type": rope_type} | full


def hf_olmo_state_dict(hf_state, ours, config, dtype, directory):
    """The checkpoint's tensors, checked against ours (the model's state dict: names and shapes).

    Our modules carry Hugging Face's names (as in llama.py), so nothing is renamed but OLMoE's
    experts (stack_hf_experts): this drops what is not a weight of ours and refuses a tensor that is
    unexpected, missing or misshapen.
    """
    state = {}
    for name, tensor in stack_hf_experts(hf_state).items():
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


def stack_hf_experts(hf_state):
    """hf_state with OLMoE's experts in our layout (see Experts): one (n_experts, out, in) tensor
    per projection and layer, named model.layers.{i}.mlp.experts.{gate,up,down}_proj.

    Two layouts come in. The released checkpoints, and what transformers 5's save_pretrained writes,
    hold one matrix per expert, ...mlp.experts.{e}.gate_proj.weight: stacked here in expert order.
    transformers 5's in-memory layout (in a file written with save_original_format=False) fuses
    gate and up into ...mlp.experts.gate_up_proj (n_experts, 2 * hidden, n_embd), gate first:
    split here; its down_proj already is ours. Any other tensor passes through unchanged.
    """
    state, per_expert = {}, {}
    for name, tensor in hf_state.items():
        parts = name.split(".")
        # model.layers.{i}.mlp.experts.{e}.{proj}.weight: 8 parts, "experts" at 4, a number at 5
        if len(parts) == 8 and parts[4] == "experts" and parts[5].isdigit() and parts[7] == "weight":
            per_expert.setdefault(".".join(parts[:5] + [parts[6]]), {})[int(parts[5])] = tensor
        elif name.endswith(".mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            state[prefix + "gate_proj"], state[prefix + "up_proj"] = tensor.chunk(2, dim=1)
        else:
            state[name] = tensor
    for name, experts in per_expert.items():
        if sorted(experts) != list(range(len(experts))):
            raise ValueError(f"the checkpoint's experts for {name} are not numbered 0 .. {len(experts) - 1}")
        state[name] = torch.stack([experts[e] for e in range(len(experts))])
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
    little-endian tensor bytes. Unlike a pickle, nothing in it can execute code.

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
