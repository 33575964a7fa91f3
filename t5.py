"""
t5.py — T5, the encoder-decoder Transformer, in one file: the model, real T5 checkpoints, greedy /
sampled / beam-search decoding, and a training loop for sequence-to-sequence tasks.

T5 (Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", JMLR 2020) frames every task as text in, text out: translation, summarisation,
classification ("sst2 sentence: ..." -> "positive") all become one model reading an input and
writing an output. It keeps the original Transformer's two halves (Vaswani et al. 2017):

    input ids ──> ENCODER (bidirectional self-attention) ──> one vector per input token ─┐
                                                                                         │ cross-attention
    <start> y1 y2 ... ──> DECODER (causal self-attention + cross-attention) ──> logits ──┘ (next y)

What you will learn here, top to bottom:
  1. what an encoder-decoder adds to gpt.py's decoder-only model: an encoder that reads the whole
     input in both directions, and cross-attention, through which every decoder position queries
     the encoder's output;
  2. T5's own choices: no position embeddings but a learned relative position bias with
     log-spaced buckets, added to the attention scores (bidirectional in the encoder, causal in
     the decoder, computed once per stack and shared by its layers); attention without the
     1/sqrt(d) scaling (it moved into the initialisation); a scale-only RMS layer norm; ReLU
     (T5 v1.0) or gated-GELU (v1.1, Flan-T5) feed-forward layers; tied or untied output layer;
  3. padding masks: a batch of inputs of different lengths is right-padded, and no token may
     attend to padding;
  4. teacher forcing and the decoder start token: in training the decoder reads the target shifted
     right by one (starting with <pad>, T5's start token) and predicts it, all positions at once;
  5. decoding: greedy, sampling (temperature / top-k / top-p), and beam search with a length
     penalty, early stopping and several returned sequences; a KV cache for the decoder's
     self-attention while the cross-attention keys/values are computed once per input;
  6. loading Hugging Face T5ForConditionalGeneration checkpoints (t5-small, google/t5-v1_1-*,
     google/flan-t5-*), and a training loop (gpt.py's, with padded sequence-to-sequence batches and
     exact match as the evaluation metric) on a toy translation task: numbers to English words;
  7. T5's own pre-training objective, span corruption, on any text dataset: random spans of the
     input are each replaced by one sentinel token (<extra_id_0>, <extra_id_1>, ...), and the target
     lists the sentinels with the tokens they hid: BERT's denoising, but generative and cheap.

How to read it: Part 1 (the model) first: relative position buckets, the unscaled attention,
the encoder and decoder blocks, T5 with generation, then beam search. Part 2 has the training
defaults, what differs from gpt.py's loop (pairs, span corruption, exact match, evaluation weighted
by real target tokens) as named helpers, then main(), which is gpt.py's step for step. Part 3 maps
Hugging Face's T5 files onto ours, then holds the helpers every script shares (read once, in gpt.py).

Run it:
    python prepare_data.py numbers                     # "4,321" -> "four thousand three hundred twenty-one"
    python t5.py config/t5_numbers_cpu.py              # a small T5 on a laptop CPU
    python t5.py config/t5_numbers.py                  # the GPU preset
    python sample.py --out_dir=out-t5-numbers --start="123456" --beam_size=4
    python t5.py config/t5_shakespeare_char_cpu.py     # span corruption on any other dataset
    python sample.py --out_dir=out-t5-shakespeare-char-cpu --start="ROMEO: But <extra_id_0> what light"
    # fine-tune a pretrained T5 on your own "input<TAB>target" lines, tokenized with its spiece.model:
    python prepare_data.py mypairs --input=pairs.tsv --tokenizer=path/to/flan-t5-small
    python t5.py --init_from=path/to/flan-t5-small --dataset=mypairs --out_dir=out-mypairs   # or a hub id
    python sample.py --out_dir=out-mypairs --start="some input"

The dataset decides the objective: a pairs dataset ("input<TAB>target" lines, prepare_data.py
numbers) trains translation, any other prepared text trains span corruption.

Compared with gpt.py (the template this file is written against): the decoder-only stack becomes
two stacks joined by cross-attention; position embeddings are replaced by a relative bias in the
attention scores; LayerNorm becomes RMSNorm without bias; there are no biases anywhere; the
batches are (input, target) pairs instead of windows of one long text (for span corruption, pairs
made from such windows); and the evaluation reports exact match of decoded outputs (translation)
or the accuracy on the dropped tokens (span corruption) beside the loss.
"""

import json
import math
import mmap
import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import numpy as np
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
class T5Config:
    # Relative positions put no hard limit on length (T5 was trained on 512 input tokens and ran on
    # longer ones); these two are the limits we enforce, so that a too-long input is an error
    # instead of an out-of-memory crash. block_size bounds the encoder's input, target_block_size
    # the decoder's (the start token plus the generated tokens).
    block_size: int = 512
    target_block_size: int = 512
    vocab_size: int = 32128  # T5's SentencePiece vocabulary (32000 + 100 sentinels, padded to 128)
    n_layer: int = 6  # encoder blocks
    n_decoder_layer: int = 6  # decoder blocks (T5 uses as many as the encoder)
    n_head: int = 8
    n_embd: int = 512  # d_model: the width of the residual stream
    # T5 decouples the head size from n_embd / n_head (t5-11b: 128 heads of 128 channels on a
    # 1024-wide stream), so the attention's inner width n_head * head_dim is a free choice.
    head_dim: int = 64
    n_ff: int = 2048  # hidden width of the feed-forward layers (d_ff)
    num_buckets: int = 32  # relative position buckets per direction pair (see relative_position_bucket)
    # Where the log-spaced buckets would run out: the last bucket holds every larger distance too, and
    # it starts below max_distance (at 91 for T5's encoder; see relative_position_bucket).
    max_distance: int = 128
    feed_forward: str = "relu"  # 'relu' (T5 v1.0) or 'gated-gelu' (T5 v1.1, Flan-T5)
    # v1.0 ties the output layer to the token embedding (and rescales by n_embd**-0.5, see T5.forward);
    # v1.1 gives the output layer its own matrix.
    tie_embeddings: bool = True
    dropout: float = 0.1  # T5 pre-trained and fine-tuned with 0.1
    layer_norm_eps: float = 1e-6
    attention: str = "sdpa"  # 'sdpa' (fused kernel) or 'manual' (t5_attention, written out)
    # T5's special ids: <pad> = 0 doubles as the decoder start token, </s> = 1 ends every sequence.
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        for key in ("block_size", "target_block_size", "vocab_size", "n_layer", "n_decoder_layer", "n_head",
                    "n_embd", "head_dim", "n_ff", "num_buckets", "max_distance"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key}={value!r} must be a positive integer")
        if self.num_buckets < 4:
            raise ValueError(f"num_buckets={self.num_buckets} must be at least 4 (two directions, exact and log-spaced)")
        if self.feed_forward not in ("relu", "gated-gelu"):
            raise ValueError(f"feed_forward={self.feed_forward!r} must be 'relu' or 'gated-gelu'")
        if self.attention not in ("sdpa", "manual"):
            raise ValueError(f"attention={self.attention!r} must be 'sdpa' or 'manual'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        for key in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, key) < self.vocab_size:
                raise ValueError(f"{key}={getattr(self, key)} must be a token id below vocab_size={self.vocab_size}")


# -----------------------------------------------------------------------------
# Building blocks, in the order data meets them.


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """Map key_position - query_position to one of num_buckets ids (T5, section 2.1).

    T5 learns one scalar per (bucket, head) and adds it to the attention score, so a head can
    prefer "the previous token" or "anything far to the right" regardless of absolute position.
    Nearby offsets matter most, so the buckets are exact for small distances and logarithmically
    wider for large ones:
      - bidirectional (the encoder): half the buckets are for keys to the right (offset > 0), half
        for keys at or to the left; the causal decoder never sees the right, so it uses all
        buckets for offsets <= 0;
      - within a direction of n buckets, distances 0 .. n/2 - 1 get one bucket each; distances
        from n/2 on are spread over the other n/2 buckets by log(distance), so that max_distance
        would be the first distance of a bucket one past the last. Truncating to whole buckets
        makes the last bucket start well before max_distance, and the clamp adds everything
        farther to it: there is no bucket of its own for "max_distance and beyond".
    With T5's 32 buckets and max_distance 128 (tests/test_t5.py checks these against Hugging Face's):
      - the encoder, 16 buckets per direction: distances 0..7 exact, then 8-11, 12-15, 16-22, 23-31,
        32-45, 46-63, 64-90, and 91 and beyond;
      - the decoder, all 32 for the left: 0..15 exact, then 16-18, 19-20, 21-23, 24-26, 27-30,
        31-34, 35-39, 40-45, 46-51, 52-58, 59-66, 67-76, 77-86, 87-98, 99-112, and 113 and beyond.
    """
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative_position > 0).long() * num_buckets  # keys to the right: the upper half
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)  # offsets to the right cannot occur (masked anyway)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log(distance / max_exact) / log(max_distance / max_exact) runs from 0 at max_exact to 1 at
    # max_distance; scaled to the (num_buckets - max_exact) log-spaced buckets and truncated.
    # clamp(min=1) only keeps log() finite where is_small will pick the exact bucket anyway.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """The learned relative position bias of one stack: (1, n_head, T_q, T_k) added to every score.

    T5 computes it once, in the first layer of each stack, and every later layer of that stack
    reuses it: 32 x n_head numbers per stack are all the position information the model has. (Hugging
    Face stores the table inside block 0's attention; we keep it on the stack, which says the same.)
    """

    def __init__(self, config, bidirectional):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = config.num_buckets, config.max_distance
        self.embedding = nn.Embedding(config.num_buckets, config.n_head)

    def forward(self, q_len, k_len, past=0):
        # With a cache, the q_len new queries sit at absolute positions past .. past + q_len - 1.
        device = self.embedding.weight.device
        query_pos = torch.arange(past, past + q_len, dtype=torch.long, device=device)[:, None]
        key_pos = torch.arange(k_len, dtype=torch.long, device=device)[None, :]
        buckets = relative_position_bucket(key_pos - query_pos, self.bidirectional, self.num_buckets, self.max_distance)
        bias = self.embedding(buckets)  # (T_q, T_k, n_head)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, n_head, T_q, T_k)


class RMSNorm(nn.Module):
    """T5's layer norm: x / sqrt(mean(x^2) + eps) * g, with no mean subtraction and no bias.

    LayerNorm centres and scales each vector; T5 only rescales it to unit root-mean-square and
    multiplies by a learned gain (Zhang & Sennrich 2019 later named this RMSNorm and showed the
    centring is not needed). The statistics are computed in float32 even under mixed precision:
    mean(x^2) of a 16-bit residual stream can overflow or lose all precision.
    """

    def __init__(self, n_embd, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_embd))

    def forward(self, x):
        variance = x.float().pow(2).mean(dim=-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(self.weight.dtype)


def t5_attention_weights(q, k, bias):
    """softmax(Q K^T + bias) in float32, (B, n_head, T_q, T_k): T5's attention weights (see t5_attention).

    A function of its own so that sample.py --attention_plot can keep the weights the model uses."""
    scores = q @ k.transpose(-2, -1) + bias  # (B, n_head, T_q, T_k)
    return F.softmax(scores.float(), dim=-1).to(q.dtype)


def t5_attention(q, k, v, bias, dropout_p=0.0):
    """T5's attention written out: softmax(Q K^T + bias) V, with NO division by sqrt(head_dim).

    q: (B, n_head, T_q, head_dim); k, v: (B, n_head, T_k, head_dim); bias: additive, broadcastable
    to (B, n_head, T_q, T_k): the relative position bias plus the masks (a very negative number where
    a query must not look). gpt.py's manual_attention divides by sqrt(head_dim) to keep the scores
    near unit variance; T5 (following Mesh TensorFlow, Google's library for splitting models across
    many TPU cores, which T5 was trained with) leaves the scores unscaled and instead
    initialises the query projection sqrt(head_dim) times smaller (see T5._init_weights), which gives
    the same scores at initialisation and one operation less at every step. A checkpoint trained
    this way must be run this way: adding the scaling would flatten its attention. The softmax runs
    in float32, as T5's, so that 16-bit scores with a large mask value stay exact.
    """
    weights = F.dropout(t5_attention_weights(q, k, bias), p=dropout_p)
    return weights @ v  # (B, n_head, T_q, head_dim)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so generation never recomputes them.

    (The same class as gpt.py's.) In T5 it serves the decoder's self-attention only: the decoder's
    keys and values for earlier target tokens never change. Cross-attention needs no growing cache:
    its keys and values come from the encoder output, which is fixed for the whole generation, so
    T5.cross_keys_values computes them once per input.
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


class Attention(nn.Module):
    """Multi-head attention for all three uses in T5: encoder self-attention, decoder (causal)
    self-attention and decoder cross-attention. Only where keys/values come from and which bias
    (positions, padding, causality) is added differ; the caller decides both.

    Separate q, k, v, o projections without biases, as T5 (and Hugging Face's names for them).
    """

    def __init__(self, config):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        inner = config.n_head * config.head_dim
        self.q = nn.Linear(config.n_embd, inner, bias=False)
        self.k = nn.Linear(config.n_embd, inner, bias=False)
        self.v = nn.Linear(config.n_embd, inner, bias=False)
        self.o = nn.Linear(inner, config.n_embd, bias=False)
        self.dropout = config.dropout
        self.attention = config.attention

    def heads(self, x):
        """(B, T, n_head * head_dim) -> (B, n_head, T, head_dim): heads before time, to batch the matmuls."""
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def keys_values(self, source):
        """Keys and values of a source sequence (B, T_k, n_embd), each (B, n_head, T_k, head_dim)."""
        return self.heads(self.k(source)), self.heads(self.v(source))

    def forward(self, x, bias, source=None, kv=None, cache=None, layer=0):
        """x: (B, T_q, n_embd), the queries' side. Keys/values come from, in this order of priority:
        kv (precomputed, for cross-attention while decoding), source (the encoder output, for
        cross-attention), or x itself (self-attention), then through the cache if one is given."""
        B, T, _ = x.shape
        q = self.heads(self.q(x))
        if kv is not None:
            k, v = kv
        else:
            k, v = self.keys_values(x if source is None else source)
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, n_head, past + T, head_dim)
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "manual":
            y = t5_attention(q, k, v, bias, dropout_p)
        else:
            # The fused kernel takes the additive bias as attn_mask; scale=1.0 switches off its
            # default 1/sqrt(head_dim), which T5 does not use.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p, scale=1.0)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.o(y)


class FeedForward(nn.Module):
    """The position-wise feed-forward network, in its two T5 versions.

    v1.0 ('relu'): wo(dropout(relu(wi x))), as the original Transformer.
    v1.1 ('gated-gelu'): wo(dropout(gelu(wi_0 x) * wi_1 x)), a gated linear unit (Shazeer 2020,
    "GLU Variants Improve Transformer"): one projection decides, per hidden channel, how much of the
    other passes. It costs a third more parameters at equal n_ff and trains measurably better.
    The GELU is the tanh approximation ('gelu_new'), as in the v1.1 checkpoints.
    """

    def __init__(self, config):
        super().__init__()
        self.gated = config.feed_forward == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(config.n_embd, config.n_ff, bias=False)
            self.wi_1 = nn.Linear(config.n_embd, config.n_ff, bias=False)
        else:
            self.wi = nn.Linear(config.n_embd, config.n_ff, bias=False)
        self.wo = nn.Linear(config.n_ff, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.gated:
            h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        else:
            h = F.relu(self.wi(x))
        return self.wo(self.dropout(h))


class EncoderBlock(nn.Module):
    """Pre-norm: x + dropout(attn(norm(x))), then x + dropout(ff(norm(x))) — gpt.py's Block with RMSNorm."""

    def __init__(self, config):
        super().__init__()
        self.ln_attn = RMSNorm(config.n_embd, config.layer_norm_eps)
        self.attn = Attention(config)
        self.ln_ff = RMSNorm(config.n_embd, config.layer_norm_eps)
        self.ff = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, bias):
        x = x + self.dropout(self.attn(self.ln_attn(x), bias))
        x = x + self.dropout(self.ff(self.ln_ff(x)))
        return x


class DecoderBlock(nn.Module):
    """Three pre-norm sub-layers: causal self-attention over the target so far, cross-attention in
    which each target position queries the encoder output, then the feed-forward network.

    Cross-attention is the whole bridge between the halves: queries come from the decoder, keys and
    values from the encoder's final output (the same for every decoder layer). It has no position
    bias: which input token to read is decided by content alone (the encoder has already mixed
    position information into its outputs)."""

    def __init__(self, config):
        super().__init__()
        self.ln_self = RMSNorm(config.n_embd, config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.ln_cross = RMSNorm(config.n_embd, config.layer_norm_eps)
        self.cross_attn = Attention(config)
        self.ln_ff = RMSNorm(config.n_embd, config.layer_norm_eps)
        self.ff = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, self_bias, encoder_out, cross_bias, cross_kv=None, cache=None, layer=0):
        x = x + self.dropout(self.self_attn(self.ln_self(x), self_bias, cache=cache, layer=layer))
        x = x + self.dropout(self.cross_attn(self.ln_cross(x), cross_bias, source=encoder_out, kv=cross_kv))
        x = x + self.dropout(self.ff(self.ln_ff(x)))
        return x


def padding_bias(attention_mask, dtype):
    """(B, T_k) with 1 for real tokens and 0 for padding -> additive bias (B, 1, 1, T_k).

    0 where a key is real, the most negative finite number of dtype (the bias's: float32 unless the
    weights are 16-bit) where it is padding: after the softmax a padded key gets exactly zero
    weight. Finite, not -inf, so that a softmax over a row with nothing to attend to gives a
    uniform average rather than NaN (the softmax subtracts the row's maximum: -inf - (-inf)). The
    guarantee does not survive autocast on the fused path: it converts a float32 bias to 16 bits
    (bias.to(q.dtype) in Attention), where this number is beyond the largest finite bfloat16 or
    float16 and becomes -inf. (The manual path adds the bias to the scores in float32 and keeps
    it finite.) No row of T5 is ever fully masked, though (every input ends with a real </s>, every
    causal query sees itself), so every softmax has a finite score to normalise by and the -inf
    keys still get exactly zero weight."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


# -----------------------------------------------------------------------------
# The model


class T5(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        # One token embedding shared by the encoder's input, the decoder's input and (if tied) the
        # output layer: T5's input and output text use one vocabulary.
        self.shared = nn.Embedding(config.vocab_size, config.n_embd)
        self.encoder = nn.ModuleDict(dict(
            relative_bias=RelativePositionBias(config, bidirectional=True),
            blocks=nn.ModuleList([EncoderBlock(config) for _ in range(config.n_layer)]),
            ln_f=RMSNorm(config.n_embd, config.layer_norm_eps),
        ))
        self.decoder = nn.ModuleDict(dict(
            relative_bias=RelativePositionBias(config, bidirectional=False),
            blocks=nn.ModuleList([DecoderBlock(config) for _ in range(config.n_decoder_layer)]),
            ln_f=RMSNorm(config.n_embd, config.layer_norm_eps),
        ))
        self.drop = nn.Dropout(config.dropout)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.activation_checkpointing = False  # main() sets it from the training key; see encode() and decode()

    def _init_weights(self, module):
        """Mesh TensorFlow's initialisation, which T5 used: every matrix N(0, 1/fan_in), except that
        the query projection is a further sqrt(head_dim) smaller.

        That one factor is where attention's 1/sqrt(head_dim) went (see t5_attention): with
        q ~ N(0, 1/(n_embd * head_dim)) the dot product q.k of unit-RMS inputs has variance ~1 at
        initialisation, exactly what the scaling would have produced. Embeddings are N(0, 1): an
        RMS-normalised vector has unit RMS too, so inputs and residual stream start on one scale."""
        cfg = self.config
        if isinstance(module, Attention):
            nn.init.normal_(module.q.weight, std=(cfg.n_embd * cfg.head_dim) ** -0.5)
            nn.init.normal_(module.k.weight, std=cfg.n_embd ** -0.5)
            nn.init.normal_(module.v.weight, std=cfg.n_embd ** -0.5)
            nn.init.normal_(module.o.weight, std=(cfg.n_head * cfg.head_dim) ** -0.5)
        elif isinstance(module, FeedForward):
            for name in ("wi", "wi_0", "wi_1"):
                if hasattr(module, name):
                    nn.init.normal_(getattr(module, name).weight, std=cfg.n_embd ** -0.5)
            nn.init.normal_(module.wo.weight, std=cfg.n_ff ** -0.5)
        elif isinstance(module, RelativePositionBias):
            nn.init.normal_(module.embedding.weight, std=cfg.n_embd ** -0.5)
        elif module is self:
            nn.init.normal_(self.shared.weight, std=1.0)
            if not cfg.tie_embeddings:
                nn.init.normal_(self.lm_head.weight, std=cfg.n_embd ** -0.5)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    # -------------------------------------------------------------------------
    # The two halves

    def encode(self, input_ids, attention_mask=None):
        """input_ids (B, T_src) -> the encoder's output (B, T_src, n_embd), one vector per input token.

        attention_mask (B, T_src): 1 for real tokens, 0 for padding (None: no padding). Padding is
        at the right of each row; no query attends to it. The padded positions still produce
        vectors, which the decoder's cross-attention masks out the same way."""
        B, T = input_ids.shape
        if T > self.config.block_size:
            raise ValueError(f"input of {T} tokens is longer than block_size={self.config.block_size}")
        x = self.drop(self.shared(input_ids))  # no position embedding: positions enter through the bias
        bias = self.encoder.relative_bias(T, T)  # (1, n_head, T, T), shared by all layers
        if attention_mask is not None:
            bias = bias + padding_bias(attention_mask, bias.dtype)  # (B, n_head, T, T)
        for block in self.encoder.blocks:
            if self.activation_checkpointing and self.training:
                # Memory path: skip on first reading. As in gpt.py: keep only each block's input and
                # recompute its inside during backward (non-reentrant, RNG restored, so dropout repeats
                # its masks): about one block's activations in memory instead of n_layer blocks'.
                x = torch.utils.checkpoint.checkpoint(block, x, bias, use_reentrant=False)
            else:
                x = block(x, bias)
        return self.drop(self.encoder.ln_f(x))

    def cross_keys_values(self, encoder_out):
        """Every decoder layer's cross-attention keys and values for one encoder output: computed
        once per input and reused at every decoding step, since the encoder output never changes."""
        return [block.cross_attn.keys_values(encoder_out) for block in self.decoder.blocks]

    def decode(self, decoder_input_ids, encoder_out, attention_mask=None, cross_kv=None, cache=None):
        """decoder_input_ids (B, T_tgt) -> logits (B, T_tgt, vocab_size).

        Causal: position t sees decoder inputs 0..t and the whole (unpadded) encoder output. With a
        cache, decoder_input_ids holds only the new tokens, placed after cache.length earlier ones."""
        B, T = decoder_input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.target_block_size:
            raise ValueError(f"target of {past + T} tokens is longer than target_block_size="
                             f"{self.config.target_block_size}")
        x = self.drop(self.shared(decoder_input_ids))
        # Self-attention bias: relative positions (the causal bucketing) plus the causal mask: query
        # past + i may see keys 0 .. past + i.
        self_bias = self.decoder.relative_bias(T, past + T, past)  # (1, n_head, T, past + T)
        causal = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        self_bias = self_bias.masked_fill(~causal, torch.finfo(self_bias.dtype).min)
        # Cross-attention bias: only the encoder's padding (zeros when there is none).
        T_src = encoder_out.size(1)
        if attention_mask is not None:
            cross_bias = padding_bias(attention_mask, self_bias.dtype)  # (B, 1, 1, T_src)
        else:
            cross_bias = torch.zeros(1, 1, 1, T_src, dtype=self_bias.dtype, device=x.device)
        for i, block in enumerate(self.decoder.blocks):
            layer_kv = cross_kv[i] if cross_kv is not None else None
            if self.activation_checkpointing and self.training and cache is None:  # the memory path, as above
                x = torch.utils.checkpoint.checkpoint(block, x, self_bias, encoder_out, cross_bias, layer_kv,
                                                      use_reentrant=False)
            else:
                x = block(x, self_bias, encoder_out, cross_bias, layer_kv, cache, i)
        x = self.drop(self.decoder.ln_f(x))
        if cache is not None:
            cache.length += T
        if self.config.tie_embeddings:
            # The tied output layer reuses the N(0, 1) embedding matrix; x has unit RMS, so x @ E^T
            # would have logits of standard deviation sqrt(n_embd). Mesh TensorFlow rescales by
            # n_embd**-0.5 to bring them back to ~1 (v1.1's untied head learns its own scale).
            return F.linear(x * self.config.n_embd ** -0.5, self.shared.weight)
        return self.lm_head(x)

    def forward(self, input_ids, decoder_input_ids, attention_mask=None, targets=None):
        """Teacher forcing: (logits (B, T_tgt, vocab_size), loss or None).

        The decoder reads the target shifted right by one, starting with the decoder start token,
        and predicts the target itself at every position at once: decoder_input_ids =
        [start, y0, y1, ...] and targets = [y0, y1, ..., </s>]. Feeding the true previous tokens
        (not the model's own guesses) is what makes training parallel over positions, like a GPT.
        targets of -1 are ignored (the repository's convention; Hugging Face uses -100): the padding
        of shorter targets in a batch. The loss is the mean over the remaining target tokens, so
        every real token counts the same however the batch was padded (and across a step's
        micro-batches too: the training loop weighs each mean by its token count, target_token_weights).
        """
        encoder_out = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, encoder_out, attention_mask)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # -------------------------------------------------------------------------
    # Decoding

    def _start(self, batch_size, device):
        return torch.full((batch_size, 1), self.config.decoder_start_token_id, dtype=torch.long, device=device)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, attention_mask=None, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=1.0, use_cache=True):
        """Decode one output per input row, token by token: greedy (temperature=0) or sampled.

        Returns the decoder ids (B, 1 + n): the start token, then the output. A row that has produced
        </s> is finished and gets <pad> from then on; decoding stops once every row is finished,
        after max_new_tokens, or when the output reaches target_block_size tokens.

        The encoder runs once. With use_cache, the cross-attention keys/values of every decoder
        layer are computed once from its output, and the decoder's self-attention keys/values go
        into a KVCache, so each step feeds only the newest token. T5 never slides a window over
        the cache only because decoding stops at target_block_size, the length the cache holds.
        Relative positions alone would not make sliding exact (llama.py explains: every layer above
        the first computed its cached keys while attending to the tokens a window would drop).
        """
        check_sampling_options(temperature, top_k, top_p, repetition_penalty)
        cfg = self.config
        encoder_out = self.encode(input_ids, attention_mask)
        cross_kv = self.cross_keys_values(encoder_out) if use_cache else None
        cache = KVCache(cfg.n_decoder_layer, cfg.target_block_size) if use_cache else None
        out = self._start(input_ids.size(0), input_ids.device)
        finished = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
        for _ in range(min(max_new_tokens, cfg.target_block_size - 1)):
            if use_cache:
                # The first step feeds the start token; later ones the token chosen last step.
                logits = self.decode(out[:, cache.length:], encoder_out, attention_mask, cross_kv, cache)
            else:
                logits = self.decode(out, encoder_out, attention_mask)
            next_token = sample_next_token(logits[:, -1, :], out, temperature, top_k, top_p, repetition_penalty)
            # A finished row gets <pad> (as Hugging Face's generate); the decoder-only scripts, which
            # have no pad token, repeat the end-of-sequence token instead.
            next_token = next_token.masked_fill(finished[:, None], cfg.pad_token_id)
            out = torch.cat((out, next_token), dim=1)
            finished |= next_token[:, 0] == cfg.eos_token_id
            if finished.all():
                break
        return out

    def beam_search(self, input_ids, max_new_tokens, attention_mask=None, beam_size=4, length_penalty=1.0,
                    early_stopping=False, num_return_sequences=1):
        """Decode with beam search: the beam_size most likely outputs per input, not one greedy path.
        Returns (sequences, scores); the search and its bookkeeping are beam_search, after the model."""
        return beam_search(self, input_ids, max_new_tokens, attention_mask, beam_size, length_penalty,
                           early_stopping, num_return_sequences)

    # -------------------------------------------------------------------------
    # Loading Hugging Face T5ForConditionalGeneration checkpoints

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0, dtype=torch.float32, **config_overrides):
        """Build a T5 from a Hugging Face T5ForConditionalGeneration checkpoint: a local directory
        (config.json plus model.safetensors or pytorch_model.bin) or a hub id such as
        "google-t5/t5-small" (v1.0), "google/t5-v1_1-small" or "google/flan-t5-small" (v1.1),
        downloaded once into a cache directory (hub repositories that hold only pytorch_model.bin
        must be downloaded by hand).

        dtype: of the weights (float32 for training; bfloat16 halves the memory for generation).
        config_overrides: T5Config fields the caller sets instead of the checkpoint's (fine-tuning
        sets its own length limits and attention path). As gpt.py's, the model is built on the "meta"
        device (no memory, no random init) and takes the checkpoint's tensors as its parameters;
        reading HF's config and renaming its tensors is in Part 3 (hf_t5_config, hf_t5_state_dict).
        """
        directory, config = hf_t5_config(name_or_dir, dropout)
        config = replace(config, **config_overrides)
        with torch.device("meta"):
            model = cls(config)
        state = hf_t5_state_dict(load_hf_weights(directory), model.state_dict(), config.tie_embeddings, dtype, directory)
        model.load_state_dict(state, assign=True)
        return model

    # -------------------------------------------------------------------------
    # Optimizer

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices only (gpt.py's): norms' gains are 1-D and get none.

        T5 itself trained with Adafactor (Shazeer & Stern 2018), which stores second moments as a
        row and a column vector per matrix instead of a full copy: at 11B parameters that memory
        mattered. At our sizes memory is no concern and AdamW is the optimizer every other script
        here uses, so the loops stay comparable."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self, source_len, target_len):
        """Training FLOPs per target token of a (source_len, target_len) pair: the whole pair's
        FLOPs divided by its target tokens, the tokens the training loop counts.

        6 per parameter per token that passes through it (PaLM appendix B: forward 2, backward 4):
        the encoder's parameters see source tokens, the decoder's and the output layer's see target
        tokens; plus 12 * layers * T * attention width for the score and mixing matmuls (self-
        attention over its own length, cross-attention over the source)."""
        cfg = self.config
        enc = sum(p.numel() for p in self.encoder.parameters())
        dec = sum(p.numel() for p in self.decoder.parameters())
        head = cfg.vocab_size * cfg.n_embd
        width = cfg.n_head * cfg.head_dim
        flops = 6 * (enc * source_len + (dec + head) * target_len)
        flops += 12 * width * (cfg.n_layer * source_len * source_len
                               + cfg.n_decoder_layer * target_len * (target_len + source_len))
        return flops / target_len


# -----------------------------------------------------------------------------
# Beam search: T5.beam_search's search and bookkeeping


@torch.no_grad()
def beam_search(model, input_ids, max_new_tokens, attention_mask=None, beam_size=4, length_penalty=1.0,
                early_stopping=False, num_return_sequences=1):
    """Beam search: keep the beam_size most likely partial outputs per input instead of one.

    Greedy decoding commits to the best token at every step and can walk into a sequence whose
    later tokens are all unlikely. Beam search keeps beam_size candidates ("beams"), extends each
    by every token, and keeps the beam_size best of the beam_size * vocab_size extensions by
    total log-probability. A beam that ends with </s> becomes a finished hypothesis, scored
    sum(log p) / length ** length_penalty (length: generated tokens, </s> included): log-probs
    only add up negatives, so without the division shorter outputs always win; length_penalty
    1.0 ranks by mean log-prob, > 1 favours longer, 0 ranks by plain total (Wu et al. 2016 use a
    similar normalisation). We look at the 2 * beam_size best extensions at each step so that,
    even if up to beam_size of them end with </s>, beam_size live beams remain.

    Search for an input ends when it has beam_size finished hypotheses and either
    early_stopping (stop right there) or no live beam can still beat the worst finished one
    (its current score, length-normalised, is below it: the heuristic Hugging Face uses), or at
    max_new_tokens / target_block_size, where the live beams join the hypotheses. The default
    is the heuristic: early_stopping=True can end the search while the best beam is still
    running (on the numbers task, beam_size short wrong outputs of log-prob -9 finished before
    the right one, of log-prob -0.005, and exact match fell from 99.9% to 97.2%).

    Returns (sequences, scores): sequences (B * num_return_sequences, L), the best
    num_return_sequences hypotheses of each input in order, each starting with the start token
    and padded with <pad> after </s>; scores (B * num_return_sequences,) their length-normalised
    log-probabilities.
    """
    cfg = model.config
    if not 1 <= num_return_sequences <= beam_size:
        raise ValueError(f"num_return_sequences={num_return_sequences} must be between 1 and beam_size={beam_size}")
    B, device = input_ids.size(0), input_ids.device
    K = beam_size
    # Every input becomes K rows, one per beam: (B * K, ...), the beams of input b at rows b*K .. b*K+K-1.
    encoder_out = model.encode(input_ids, attention_mask).repeat_interleave(K, dim=0)
    if attention_mask is not None:
        attention_mask = attention_mask.repeat_interleave(K, dim=0)
    cross_kv = model.cross_keys_values(encoder_out)
    cache = KVCache(cfg.n_decoder_layer, cfg.target_block_size)
    beams = model._start(B * K, device)
    # All beams start identical; giving all but the first -inf keeps the first step from filling
    # the beam with K copies of the same extension.
    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    beam_scores = beam_scores.view(-1)
    hypotheses = [[] for _ in range(B)]  # per input: (score, token list)
    done = [False] * B
    for step in range(min(max_new_tokens, cfg.target_block_size - 1)):
        logits = model.decode(beams[:, -1:], encoder_out, attention_mask, cross_kv, cache)
        log_probs = F.log_softmax(logits[:, -1, :].float(), dim=-1)  # (B * K, vocab)
        vocab = log_probs.size(-1)
        candidates = (beam_scores[:, None] + log_probs).view(B, K * vocab)
        top_scores, top_ids = candidates.topk(2 * K, dim=1)  # (B, 2K), best first
        # Python lists: the bookkeeping below reads them element by element.
        top_scores, source_beam, token = top_scores.tolist(), (top_ids // vocab).tolist(), (top_ids % vocab).tolist()
        length = step + 1  # generated tokens, this one included
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(B):
            chosen = []
            if not done[b]:
                for rank in range(2 * K):
                    row, score = b * K + source_beam[b][rank], top_scores[b][rank]
                    if token[b][rank] == cfg.eos_token_id:
                        # A finished beam counts only if it would have been among the K best.
                        if rank < K:
                            sequence = beams[row].tolist() + [cfg.eos_token_id]
                            hypotheses[b].append((score / length ** length_penalty, sequence))
                    else:
                        chosen.append((row, token[b][rank], score))
                    if len(chosen) == K:
                        break
                hypotheses[b] = sorted(hypotheses[b], key=lambda h: -h[0])[:K]
                if len(hypotheses[b]) == K:
                    best_live = max(score for _, _, score in chosen) / length ** length_penalty
                    done[b] = early_stopping or hypotheses[b][-1][0] >= best_live
            if done[b]:  # a finished input keeps K dummy beams so that tensors stay (B * K, ...)
                chosen = [(b * K, cfg.pad_token_id, float("-inf"))] * K
            for row, tok, score in chosen:
                next_rows.append(row)
                next_tokens.append(tok)
                next_scores.append(score)
        if all(done):
            break
        rows = torch.tensor(next_rows, device=device)
        beams = torch.cat((beams[rows], torch.tensor(next_tokens, device=device)[:, None]), dim=1)
        beam_scores = torch.tensor(next_scores, device=device)
        # Each new beam continues some old beam: its cached keys/values (the filled part) must follow it.
        filled = cache.length
        cache.keys[:, :, :, :filled] = cache.keys[:, rows, :, :filled]
        cache.values[:, :, :, :filled] = cache.values[:, rows, :, :filled]
    for b in range(B):
        if not done[b]:  # ran out of length: the live beams compete with the finished ones
            length = beams.size(1) - 1
            for k in range(K):
                hypotheses[b].append((beam_scores[b * K + k].item() / length ** length_penalty,
                                      beams[b * K + k].tolist()))
            hypotheses[b] = sorted(hypotheses[b], key=lambda h: -h[0])[:K]
    best = [h for b in range(B) for h in hypotheses[b][:num_return_sequences]]
    width = max(len(sequence) for _, sequence in best)
    sequences = torch.full((len(best), width), cfg.pad_token_id, dtype=torch.long, device=device)
    for i, (_, sequence) in enumerate(best):
        sequences[i, :len(sequence)] = torch.tensor(sequence, device=device)
    return sequences, torch.tensor([score for score, _ in best], device=device)



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
# Part 2: training. The defaults (every one a config key); then what differs from gpt.py's
# training, each marked so: (input, target) pairs, T5's span corruption, exact match, fine-tuning a
# pretrained T5; then main(): nanoGPT's train.py in named steps. Helpers it shares with every script
# are in Part 3; read main() first.
# =============================================================================

# -----------------------------------------------------------------------------
# Training configuration. Every simple value below can be overridden by config files and
# --key=value arguments (see parse_config). The defaults are t5-small's shape on the numbers task.

# I/O
out_dir = "out-t5"
eval_interval = 250  # evaluate losses and exact match (and maybe checkpoint) every this many iterations
log_interval = 10  # print a training line every this many iterations
eval_iters = 50  # batches averaged per loss estimate
eval_exact_match = 500  # pairs datasets: val pairs decoded greedily for exact match at each evaluation; 0 disables
eval_beam_size = 0  # > 1: at the last evaluation, also report beam-search exact match with this many beams
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # save at every eval, not only when val loss improves
init_from = "scratch"  # 'scratch', 'resume' (from out_dir/ckpt.pt), or a HF T5 directory / hub id to fine-tune
# logging
wandb_log = False
wandb_project = "t5"
wandb_run_name = "t5"
# data
dataset = "numbers"
gradient_accumulation_steps = 1  # micro-batches summed into one optimizer step
batch_size = 64  # pairs per micro-batch
block_size = 64  # longest input (tokens), with </s>; for span corruption, every input's length
target_block_size = 128  # longest target, with </s>
# span corruption (text datasets; see SpanCorruptionLoader): T5's values, from its section 3.3.4
noise_density = 0.15  # the fraction of each window's tokens dropped
mean_noise_span_length = 3.0  # the mean length of a dropped span
# model
n_layer = 6
n_decoder_layer = 6
n_head = 8
n_embd = 512
head_dim = 64
n_ff = 2048
num_buckets = 32
max_distance = 128
feed_forward = "relu"
tie_embeddings = True
dropout = 0.1
attention = "sdpa"
# AdamW
learning_rate = 1e-3
max_iters = 5000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # clip the global gradient norm to this; 0 disables
# learning-rate schedule
decay_lr = True
warmup_iters = 200
lr_decay_iters = 5000  # ~ max_iters
min_lr = 1e-4  # ~ learning_rate / 10
# system
backend = "auto"  # DDP backend: 'auto' is nccl on CUDA, gloo on CPU
device = "auto"  # 'auto' picks cuda, then mps, then cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # 'auto', 'float32', 'bfloat16' or 'float16'
compile = True  # torch.compile the model (falls back with a warning where it cannot)
activation_checkpointing = False  # recompute each block in backward instead of storing it: less memory, more compute
seed = 1337

# Every simple-typed name defined above is a config key (names starting with "_" are not).
config_keys = [k for k, v in list(globals().items())
               if not k.startswith("_") and isinstance(v, (bool, int, float, str))]


# -----------------------------------------------------------------------------
# Sequence-to-sequence data: (input, target) pairs, padded per batch (what differs from gpt.py's
# windows of one long text)


class PairLoader:
    """Random batches of (input, target) pairs from a prepared pairs dataset.

    The dataset's train.bin / val.bin hold lines "input<TAB>target<NEWLINE>" as token ids. In the
    numbers task (prepare_data.prepare_numbers) the tab and newline are tokens of its own vocabulary,
    which also has "<pad>" and "</s>". A SentencePiece vocabulary (a pretrained T5's spiece.model,
    prepare_data.prepare_sentencepiece_pairs) has no tab or newline token, so there the separators
    are the two ids just past the vocabulary, meta["pair_separators"]: markers in the file that are
    cut out here and never reach the model; <pad> and </s> are the SentencePiece model's own ids,
    which for T5 are the pretrained model's (0 and 1). A language model reads one
    long stream in fixed windows; a sequence-to-sequence model needs whole pairs, and pairs differ in
    length, so each batch is padded to its own longest input and target (padding to a global
    maximum would waste work on every short batch). Every input ends with </s>, as T5's tokenizer
    ends every input: it marks where the input stops, so that with only relative positions the
    encoder can still tell the units digit (just before </s>) from the thousands digit.
    get_batch returns, for B pairs:
        input_ids (B, S)            the inputs and their </s>, right-padded with <pad>
        attention_mask (B, S)       1 on real input tokens, 0 on padding
        decoder_input_ids (B, T)    <start> y_0 .. y_{n-1}   (teacher forcing: the target shifted right)
        targets (B, T)              y_0 .. y_{n-1} </s>      (-1 on padding: ignored by the loss)
    """

    def __init__(self, data_dir, meta, batch_size, device, block_size, target_block_size):
        if not is_pairs_dataset(meta):
            raise prepare_data.DataError(f"{data_dir} is not a pairs dataset (lines 'input<TAB>target' and the "
                                         f"tokens <pad>, </s>); prepare one with: python prepare_data.py numbers")
        if "pair_separators" in meta:  # a SentencePiece dataset
            self.pad, self.eos = meta["pad_token_id"], meta["eos_token_id"]
            tab, newline = meta["pair_separators"]
        else:
            stoi = meta["stoi"]
            self.pad, self.eos = stoi["<pad>"], stoi["</s>"]
            tab, newline = stoi["\t"], stoi["\n"]
        self.meta, self.vocab_size = meta, meta["vocab_size"]  # the dataset's vocabulary is the model's
        self.batch_size, self.device = batch_size, device
        self.pairs = {}
        for split in ("train", "val"):
            path = os.path.join(data_dir, f"{split}.bin")
            if not os.path.isfile(path):
                raise prepare_data.DataError(f"{path} not found; prepare the dataset first (python prepare_data.py ...)")
            self.pairs[split] = read_pairs(path, tab, newline, meta.get("dtype", "uint16"))
            if not self.pairs[split]:
                raise prepare_data.DataError(f"{path} holds no 'input<TAB>target' lines; prepare the dataset again")
            longest_input = max(len(source) for source, _ in self.pairs[split]) + 1  # + </s>
            longest_target = max(len(target) for _, target in self.pairs[split]) + 1  # + </s> or <start>
            if longest_input > block_size or longest_target > target_block_size:
                raise prepare_data.DataError(
                    f"{split} split has inputs of up to {longest_input} tokens and targets of up to {longest_target} "
                    f"(each with </s>), more than block_size={block_size} / target_block_size={target_block_size}; raise them")

    def mean_lengths(self):
        """Average input and target lengths (with </s>) of the training pairs: what a batch costs."""
        pairs = self.pairs["train"]
        return (sum(len(s) + 1 for s, _ in pairs) / len(pairs), sum(len(t) + 1 for _, t in pairs) / len(pairs))

    def collate(self, pairs):
        """Pad a list of (source ids, target ids) into the four tensors of get_batch."""
        B = len(pairs)
        S = max(len(source) for source, _ in pairs) + 1
        T = max(len(target) for _, target in pairs) + 1
        input_ids = torch.full((B, S), self.pad, dtype=torch.long)
        attention_mask = torch.zeros((B, S), dtype=torch.long)
        decoder_input_ids = torch.full((B, T), self.pad, dtype=torch.long)  # <pad> is also the start token
        targets = torch.full((B, T), -1, dtype=torch.long)
        for i, (source, target) in enumerate(pairs):
            input_ids[i, :len(source)] = torch.as_tensor(source)
            input_ids[i, len(source)] = self.eos
            attention_mask[i, :len(source) + 1] = 1
            decoder_input_ids[i, 1:len(target) + 1] = torch.as_tensor(target)
            targets[i, :len(target)] = torch.as_tensor(target)
            targets[i, len(target)] = self.eos
        return tuple(t.to(self.device) for t in (input_ids, attention_mask, decoder_input_ids, targets))

    def get_batch(self, split):
        # The global torch RNG, as prepare_data.BatchLoader: seeded per rank, saved for exact resume.
        rows = torch.randint(len(self.pairs[split]), (self.batch_size,)).tolist()
        return self.collate([self.pairs[split][i] for i in rows])


def is_pairs_dataset(meta):
    """Whether a dataset's meta describes (input, target) pairs: a vocabulary with the line format's
    tab and newline and T5's <pad> and </s> (prepare_data.prepare_numbers), or SentencePiece pairs
    with their separator ids (prepare_data.prepare_sentencepiece_pairs). Any other dataset is plain
    text, which t5.py trains on with span corruption (SpanCorruptionLoader)."""
    return "pair_separators" in meta or all(token in meta.get("stoi", {}) for token in ("\t", "\n", "<pad>", "</s>"))


def read_pairs(path, tab, newline, dtype="uint16"):
    """[(source ids, target ids), ...] from a .bin file of "source<TAB>target<NEWLINE>" lines; dtype:
    the file's, from meta.pkl (uint32 for vocabularies over 65536 ids)."""
    ids = np.fromfile(path, dtype=np.dtype(dtype)).astype(np.int64)
    pairs = []
    start = 0
    for end in np.flatnonzero(ids == newline).tolist():
        line = ids[start:end]
        cut = np.flatnonzero(line == tab)
        if len(cut) == 1 and cut[0] > 0:
            pairs.append((line[:cut[0]], line[cut[0] + 1:]))
        start = end + 1
    return pairs


@torch.no_grad()
def exact_match(model, loader, n_pairs, beam_size=1, batch_size=250):
    """Fraction of the first n_pairs validation pairs whose decoded output equals the target exactly.

    Loss measures how much probability the model puts on the right answer; exact match measures
    whether decoding (greedy, or beam search with beam_size > 1) actually produces it, every token
    right and </s> in the right place: the number a translation task cares about."""
    was_training = model.training
    model.eval()
    pairs = loader.pairs["val"][:n_pairs]
    correct = 0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        input_ids, attention_mask, _, targets = loader.collate(chunk)
        max_new = targets.size(1) + 2  # enough for the longest target and </s>, plus room to be wrong
        if beam_size > 1:
            out, _ = model.beam_search(input_ids, max_new, attention_mask, beam_size=beam_size)
        else:
            out = model.generate(input_ids, max_new, attention_mask, temperature=0.0)
        out = out[:, 1:]  # drop the start token
        for row, (_, target) in zip(out.tolist(), chunk):
            expected = target.tolist() + [loader.eos]
            correct += row[:len(expected)] == expected
    model.train(was_training)
    return correct / len(pairs)


# -----------------------------------------------------------------------------
# T5's own objective: span corruption, on any prepared text dataset (what differs from gpt.py's
# next-token prediction)
#
# A language model learns from raw text by predicting the next token; BERT by reconstructing 15%
# of the tokens it hid behind [MASK]. T5 wanted an unsupervised objective in its text-to-text form
# (input text -> output text) and compared many in its section 3.3. The winner, "span corruption",
# drops random spans of the input, puts one sentinel token where each span was, and asks the
# decoder to write only what was dropped:
#
#     original:  Thank you for inviting me to your party last week .
#     input:     Thank you <extra_id_0> me to your party <extra_id_1> week . </s>
#     target:    <extra_id_0> for inviting <extra_id_1> last </s>
#
# It is BERT's denoising idea made generative: the decoder writes the missing tokens one by one, so
# a span of any length can be filled (BERT needs one [MASK] per missing token, and predicts them
# independently). And it is cheap: objectives whose target is the whole original text (T5's
# "BERT-style" and deshuffling variants) make the target as long as the input, while here it is ~15%
# of it plus one sentinel per span, and the decoder's cost (self-attention, cross-attention, the
# output layer) grows with the target's length. In the paper's comparisons (Tables 4 and 5) denoising
# beat language modelling and deshuffling, and writing only the dropped spans did as well as
# writing everything.
#
# The numbers (section 3.3, Raffel et al. 2020): 15% of the tokens are noise, the "corruption rate"
# (Table 6: 10%, 15% and 25% did about equally well, 50% worse; T5 kept BERT's 15%), in spans of mean
# length 3 (Table 7: mean lengths 2, 3 and 5 did about the same, 10 slightly worse; 3 slightly beat
# dropping independent tokens, with shorter targets, since a span of 3 needs one sentinel, not 3).
# Both numbers are config keys (noise_density, mean_noise_span_length), defaulting to T5's.
#
# Sentinels are T5's "extra ids": <extra_id_0> is the last id of its SentencePiece vocabulary (32000
# pieces and 100 extra ids: 32099), <extra_id_1> the one below, and so on down to 32000. The model's
# embedding has 32128 rows (padded to a multiple of 128), so the top 28 ids are never used. We follow
# that numbering above a dataset's own vocabulary (see SpanCorruptionLoader), without the padding:
# there <extra_id_0> is the model's last id, and our checkpoints read like T5's.


def noise_span_counts(length, noise_density, mean_noise_span_length):
    """(noise tokens, noise spans) for a window of `length` tokens: round(length * density) tokens,
    in round(noise / mean span length) spans (Python's round and TensorFlow's both round halves to
    even, so these are T5's counts). At least one of each, and at least one token kept."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    return num_noise, num_spans


def random_segmentation(num_items, num_segments):
    """num_items split into num_segments random positive lengths (a tensor that sums to num_items).

    Every way of cutting the items into consecutive non-empty segments is equally likely: pick
    num_segments - 1 of the num_items - 1 gaps between items to cut at, without replacement."""
    cuts = torch.randperm(num_items - 1)[:num_segments - 1].sort().values + 1
    bounds = torch.cat((torch.tensor([0]), cuts, torch.tensor([num_items])))
    return bounds.diff()


def random_spans_noise_mask(length, noise_density, mean_noise_span_length):
    """A (length,) bool mask, True on the tokens to drop: T5's random_spans_noise_mask, rewritten.

    The noise tokens are cut into num_spans random segments and the kept tokens into as many, and the
    two are interleaved, kept first: keep, noise, keep, noise, ..., ending with noise. This fixes the
    counts exactly (every window gives inputs and targets of the same length, so batches need no
    padding) while the span lengths and positions are random. Ending with a noise span is T5's
    choice too (its code, not its paper figure): the last sentinel then stands at the end of the input.
    Uses torch's global RNG, like the batch positions: seeded per process and saved for exact resume.
    """
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(num_noise, num_spans)
    kept_lengths = random_segmentation(length - num_noise, num_spans)
    lengths = torch.stack((kept_lengths, noise_lengths), dim=1).view(-1)  # (2 * num_spans,): keep, noise, ...
    is_noise = torch.tensor([False, True]).repeat(num_spans)
    return is_noise.repeat_interleave(lengths)


def corrupt_spans(tokens, noise_mask, top_id):
    """Span corruption of a batch of windows: (encoder inputs, decoder targets), without </s>.

    tokens, noise_mask: (B, L). The k-th noise span of a row (k = 0, 1, ...) gets the sentinel
    top_id - k. The input keeps the kept tokens and puts the span's sentinel where each span starts;
    the target lists each sentinel followed by the tokens it replaced. Every row must have the same
    numbers of noise tokens and spans (random_spans_noise_mask guarantees it), so that the results
    are rectangular: inputs (B, L - noise + spans), targets (B, noise + spans).
    """
    B = tokens.size(0)
    previous = F.pad(noise_mask[:, :-1], (1, 0), value=False)
    span_starts = noise_mask & ~previous  # (B, L): the first token of each noise span
    sentinels = top_id + 1 - span_starts.long().cumsum(dim=1)  # at the k-th span's start: top_id - k
    # Each position offers two slots, [its span's sentinel, itself]; input and target each keep
    # some of them, and reading the kept slots in order writes the sequence.
    slots = torch.stack((sentinels, tokens), dim=2)  # (B, L, 2)

    def keep(sentinel_slots, token_slots):
        return slots[torch.stack((sentinel_slots, token_slots), dim=2)].view(B, -1)

    return keep(span_starts, ~noise_mask), keep(span_starts, noise_mask)


def span_window_length(block_size, noise_density, mean_noise_span_length):
    """The longest text window whose corrupted input, with </s>, fits block_size tokens.

    T5 did the same (random_spans_helper): the encoder length is the budget, and the raw window is
    longer, since each dropped span shrinks to one sentinel. For T5's 512 this gives T5's numbers:
    windows of 568 tokens, 85 of them dropped in 28 spans, targets of 85 + 28 + 1 = 114 tokens."""
    def input_length(n):
        num_noise, num_spans = noise_span_counts(n, noise_density, mean_noise_span_length)
        return n - num_noise + num_spans + 1

    if block_size < input_length(2):
        raise prepare_data.DataError(f"block_size={block_size} is too short for span corruption; use at least "
                                     f"{input_length(2)} (T5 used 512)")
    length = 2
    while input_length(length + 1) <= block_size:
        length += 1
    return length


class SpanCorruptionLoader:
    """Random span-corruption batches from any prepared text dataset (one long token stream).

    The dataset's ids 0 .. V-1 are all text, so T5's special tokens go above them: <pad> = V (also
    the decoder start token, as in T5), </s> = V + 1, then the sentinels, <extra_id_0> the top id,
    counting down: as many as one window has spans (a window of 141 characters has 7). The model's
    vocabulary is V + 2 + sentinels; the checkpoint's tokenizer meta lists the special tokens
    ("t5_special_tokens"), so sample.py reads "<extra_id_0>" in a prompt as the sentinel.

    Each example is a random window of the text, span_window_length(block_size) tokens long,
    corrupted with a fresh random mask (T5 also drew a new mask every time it saw a text).
    get_batch returns PairLoader's four tensors; all rows have the same lengths, so there is no
    padding: the attention mask is all ones and the loss counts every target token.
        input_ids (B, S)            kept tokens and sentinels, then </s>
        attention_mask (B, S)       all ones
        decoder_input_ids (B, T)    <start> <extra_id_0> dropped tokens <extra_id_1> ...
        targets (B, T)              <extra_id_0> dropped tokens <extra_id_1> ... </s>
    Why </s> and not a final sentinel at the end of the target: T5's code ends both sequences with
    </s> (its paper's figure shows a final sentinel instead), and </s> is what generate() stops at.
    """

    def __init__(self, data_dir, meta, batch_size, device, block_size, target_block_size, noise_density=0.15,
                 mean_noise_span_length=3.0):
        if not 0 < noise_density < 1 or not mean_noise_span_length >= 1:
            raise prepare_data.DataError(f"span corruption needs 0 < noise_density < 1 and mean_noise_span_length "
                                         f">= 1, got {noise_density} and {mean_noise_span_length}")
        self.batch_size, self.device = batch_size, device
        self.noise = (noise_density, mean_noise_span_length)
        self.text_vocab_size = meta["vocab_size"]
        self.window = span_window_length(block_size, *self.noise)
        num_noise, num_spans = noise_span_counts(self.window, *self.noise)
        if num_spans > self.window - num_noise:  # every noise span needs a kept span before it
            raise prepare_data.DataError(f"noise_density={noise_density} with mean_noise_span_length="
                                         f"{mean_noise_span_length} leaves too few kept tokens to separate the spans")
        self.input_length, self.target_length = self.window - num_noise + num_spans + 1, num_noise + num_spans + 1
        if self.target_length > target_block_size:
            raise prepare_data.DataError(
                f"span corruption of {self.window}-token windows (block_size={block_size}) makes targets of "
                f"{self.target_length} tokens, more than target_block_size={target_block_size}; raise it to "
                f"{self.target_length} or lower block_size")
        self.pad, self.eos = self.text_vocab_size, self.text_vocab_size + 1
        self.vocab_size = self.text_vocab_size + 2 + num_spans
        self.top_id = self.vocab_size - 1  # <extra_id_0>
        special = {"<pad>": self.pad, "</s>": self.eos} | {f"<extra_id_{k}>": self.top_id - k for k in range(num_spans)}
        self.meta = meta | {"task": "span_corruption", "t5_special_tokens": special}
        self.dtype = np.dtype(meta.get("dtype", "uint16"))  # uint32 for vocabularies > 65536
        self.paths = {split: os.path.join(data_dir, f"{split}.bin") for split in ("train", "val")}
        for split, path in self.paths.items():
            if not os.path.isfile(path):
                raise prepare_data.DataError(f"{path} not found; prepare the dataset first (python prepare_data.py ...)")
            n_tokens = os.path.getsize(path) // self.dtype.itemsize
            if n_tokens < self.window:
                raise prepare_data.DataError(f"{split} split has {n_tokens} tokens, fewer than one span-corruption "
                                             f"window of {self.window} (block_size={block_size}); lower block_size")

    def mean_lengths(self):
        """Input and target lengths (with </s>): the same for every example."""
        return float(self.input_length), float(self.target_length)

    def get_batch(self, split):
        # A fresh memmap per call, as prepare_data.BatchLoader (a long-lived one appears to leak).
        data = np.memmap(self.paths[split], dtype=self.dtype, mode="r")
        # The global torch RNG, for the windows and the masks: seeded per rank, saved for exact resume.
        starts = torch.randint(len(data) - self.window + 1, (self.batch_size,)).tolist()
        windows = torch.from_numpy(np.stack([data[i:i + self.window] for i in starts]).astype(np.int64))
        noise_mask = torch.stack([random_spans_noise_mask(self.window, *self.noise) for _ in starts])
        inputs, dropped = corrupt_spans(windows, noise_mask, self.top_id)
        B = len(starts)
        eos = torch.full((B, 1), self.eos, dtype=torch.long)
        input_ids = torch.cat((inputs, eos), dim=1)
        attention_mask = torch.ones_like(input_ids)
        decoder_input_ids = torch.cat((torch.full((B, 1), self.pad, dtype=torch.long), dropped), dim=1)
        targets = torch.cat((dropped, eos), dim=1)
        return tuple(t.to(self.device) for t in (input_ids, attention_mask, decoder_input_ids, targets))


class SentinelTokenizer:
    """A prepared dataset's tokenizer (char, gpt2 or bpe) plus the special tokens of span corruption.

    Text goes through the dataset's tokenizer, except that "<pad>", "</s>" and "<extra_id_N>" written
    in it become their ids ("ROMEO: But <extra_id_0> what light"); decoding writes them back by name."""

    def __init__(self, meta):
        self.base = prepare_data.load_tokenizer(meta)
        self.special_ids_by_token = dict(meta["t5_special_tokens"])
        self.special_tokens = {i: token for token, i in self.special_ids_by_token.items()}
        self.vocab_size = meta["vocab_size"] + len(self.special_ids_by_token)
        self.eot_token = self.special_ids_by_token["</s>"]
        # A capturing group: re.split keeps the special tokens, 'a <extra_id_0> b' -> ['a ', '<extra_id_0>', ' b'].
        self._pattern = re.compile("(" + "|".join(re.escape(t) for t in self.special_ids_by_token) + ")")

    def encode(self, text):
        ids = []
        for part in self._pattern.split(text):
            if part in self.special_ids_by_token:
                ids.append(self.special_ids_by_token[part])
            elif part:
                ids.extend(self.base.encode(part))
        return ids

    def fill_spans(self, input_ids, output_ids):
        """The input's text with each sentinel replaced by what the output wrote after it.

        output_ids are in the target's format, "<extra_id_0> fill <extra_id_1> fill ..." (no </s>). A
        sentinel the output leaves unfilled stays in the text; fills for sentinels the input does
        not have are dropped: a model trained on windows that all have n spans (ours, and T5) goes
        on writing n spans whatever the input holds."""
        fills, current = {}, None
        for i in output_ids:
            if i in self.special_tokens:
                current = fills.setdefault(i, [])
            elif current is not None:
                current.append(i)
        ids = [j for i in input_ids for j in fills.get(i, [i])]
        return self.decode(ids)

    def decode(self, ids):
        # Runs of ordinary ids are decoded together (a BPE character may span several tokens).
        text, run = [], []
        for i in list(ids) + [None]:
            if i is None or i in self.special_tokens:
                text.append(self.base.decode(run))
                run = []
                if i is not None:
                    text.append(self.special_tokens[i])
            else:
                run.append(i)
        return "".join(text)


def load_tokenizer(meta):
    """The tokenizer of a t5.py checkpoint, from its "tokenizer" meta (sample.py calls this): the
    dataset's own for a pairs dataset (its vocabulary has <pad> and </s>), with the span-corruption
    special tokens added for a text dataset."""
    if "t5_special_tokens" in meta:
        return SentinelTokenizer(meta)
    return prepare_data.load_tokenizer(meta)


# -----------------------------------------------------------------------------
# The training loop's own steps: what differs from gpt.py's, one function each


def make_loader(data_dir, meta, cfg, device):
    """The batches of a prepared dataset (what differs from gpt.py's BatchLoader): the dataset decides
    the objective. A pairs dataset (numbers, or SentencePiece pairs) trains translation, any other
    text T5's span corruption; no config key chooses, since the other objective would not fit the data."""
    sizes = (cfg["batch_size"], device, cfg["block_size"], cfg["target_block_size"])
    if is_pairs_dataset(meta):
        return PairLoader(data_dir, meta, *sizes)
    return SpanCorruptionLoader(data_dir, meta, *sizes, cfg["noise_density"], cfg["mean_noise_span_length"])


def model_inputs(batch):
    """A loader's (input_ids, attention_mask, decoder_input_ids, targets) in T5.forward's order."""
    input_ids, attention_mask, decoder_input_ids, targets = batch
    return input_ids, decoder_input_ids, attention_mask, targets


def resumed_t5(checkpoint, cfg, loader):
    """init_from='resume': the checkpoint's model. What differs from gpt.py: the dataset's vocabulary
    (special tokens included) is checked against the checkpoint's, and the run may set its own
    length limits and attention path (relative positions tie no weight to a length)."""
    # A span-corruption vocabulary must match exactly (a block_size with more spans needs more
    # sentinels); a fine-tuned T5's may be larger than its dataset's (32128 ids for 32000 pieces).
    vocab_size = checkpoint["model_args"]["vocab_size"]
    if vocab_size < loader.vocab_size or (isinstance(loader, SpanCorruptionLoader) and vocab_size != loader.vocab_size):
        fail(f"the checkpoint's vocabulary has {vocab_size} ids and this dataset and block_size "
             f"need {loader.vocab_size}; resume with the dataset and block_size it was trained with")
    if checkpoint["tokenizer"].get("sentencepiece_model") != loader.meta.get("sentencepiece_model"):
        fail(f"dataset {cfg['dataset']!r} was tokenized with another SentencePiece model than the checkpoint's "
             f"dataset; resume with the dataset it was trained on")
    run_keys = ("dropout", "attention", "block_size", "target_block_size")
    model = T5(T5Config(**checkpoint["model_args"] | {k: cfg[k] for k in run_keys}))
    model.load_state_dict(checkpoint["model"])
    return model


def pretrained_t5(cfg, loader, runtime):
    """init_from=<a Hugging Face T5 directory or hub id>: its weights, to fine-tune on pairs. What
    differs from gpt.py's load_openai_gpt2: the dataset must have been tokenized with the model's own
    SentencePiece file, and T5's special ids must be the dataset's."""
    def load():
        try:
            directory = cfg["init_from"]
            if not os.path.isdir(directory):
                directory = download_hf_checkpoint(directory)  # T5's spiece.model with it
            spiece_model_path(cfg["init_from"], directory)  # the dataset is checked against it below
            # The weights are the pretrained ones; the run's length limits and attention path are ours.
            model = T5.from_pretrained(directory, dropout=cfg["dropout"], block_size=cfg["block_size"],
                                       target_block_size=cfg["target_block_size"], attention=cfg["attention"])
            return (model, directory), None
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            return None, f"cannot load {cfg['init_from']!r}: {e}"

    model, directory = local_rank0_first(load, runtime)  # a hub id downloads once per machine
    # Token ids mean nothing without the tokenizer that made them: the pretrained embedding row 37
    # is whatever piece 37 of ITS spiece.model is, so the dataset must have been tokenized with
    # exactly that file (the same serialized bytes), or every id is a wrong word.
    command = f"python prepare_data.py NAME --input=PAIRS.tsv --tokenizer={directory}"
    if not prepare_data.same_tokenizer(loader.meta, directory):
        fail(f"dataset {cfg['dataset']!r} was not tokenized with {cfg['init_from']}'s spiece.model; prepare "
             f"'input<TAB>target' lines with it: {command}")
    if isinstance(loader, SpanCorruptionLoader):  # its sentinels would have to be T5's own <extra_id_N>: not done here
        fail(f"dataset {cfg['dataset']!r} is plain text; fine-tuning a pretrained T5 needs 'input<TAB>target' "
             f"pairs: {command}")
    # T5's convention, which the loader's batches follow: <pad> (0) is also the decoder's start
    # token, and </s> (1) ends inputs and targets. The dataset's ids come from the same
    # spiece.model, so they agree unless config.json says otherwise.
    pretrained_ids = (model.config.pad_token_id, model.config.decoder_start_token_id, model.config.eos_token_id)
    if pretrained_ids != (loader.pad, loader.pad, loader.eos):
        fail(f"{cfg['init_from']} has pad, decoder start and eos ids {pretrained_ids}, but its spiece.model "
             f"has <pad> {loader.pad} and </s> {loader.eos}; t5.py trains with T5's (pad = start)")
    return model


def target_token_weights(targets, runtime):
    """The factor each micro-batch's mean loss is multiplied by before backward, one per micro-batch.

    targets: the step's micro-batches' targets, -1 on padding. T5.forward returns the mean over a
    micro-batch's real target tokens, and micro-batches of padded pairs hold different numbers of
    them. gpt.py divides every micro-batch's mean by their number, a mean of means that gives each
    token of a short micro-batch more weight than one of a long micro-batch. The step's loss should
    be the mean over every real target token of every micro-batch on every process: each mean is
    weighted by its micro-batch's token count over the total. DDP averages gradients over the
    processes, so the weights are multiplied by world_size to make that average a sum, and the
    total is summed over processes with an all_reduce. (bert.py weighs its masked tokens the same way.)
    """
    counts = torch.stack([(t != -1).sum() for t in targets]).float()  # (micro_batches,)
    total = counts.sum()
    if runtime.ddp:
        torch.distributed.all_reduce(total)
    return counts * runtime.world_size / total


@torch.no_grad()
def evaluate(model, raw_model, loader, cfg, runtime, final):
    """t5.py's evaluation, in place of gpt.py's estimate_loss: the mean loss over eval_iters batches of
    each split with dropout off (averaged over the processes, so that all take the same decisions),
    then the task's metric.

    Span corruption: the val accuracy on the dropped tokens (the target's text tokens, not its
    sentinels or </s>): how often the likeliest next token is the one that was dropped, given the
    true ones before it. Pairs (rank 0 only): exact match of eval_exact_match decoded val pairs,
    greedy at every evaluation; beam search (several greedy decodings' cost) at the final one.
    Decoding draws no random numbers, so the training batches after it are the same without it.
    """
    span_corruption = isinstance(loader, SpanCorruptionLoader)
    model.eval()
    losses = []
    for split in ("train", "val"):
        total, correct, count = 0.0, 0, 0
        for _ in range(cfg["eval_iters"]):
            x, mask, decoder_x, y = loader.get_batch(split)
            with runtime.autocast:
                logits, loss = model(x, decoder_x, mask, y)
            total += loss.item()
            if span_corruption:
                dropped = (y >= 0) & (y < loader.text_vocab_size)
                correct += int((logits.argmax(dim=-1) == y)[dropped].sum())
                count += int(dropped.sum())
        losses.append(total / cfg["eval_iters"])
    names = ["train", "val"]
    if span_corruption:  # the last split's: val
        names.append("dropped_token_accuracy")
        losses.append(correct / count)
    model.train()
    results = dict(zip(names, mean_over_processes(losses, runtime)))
    if runtime.rank == 0 and cfg["eval_exact_match"] > 0 and not span_corruption:
        with runtime.autocast:
            results["exact_match"] = exact_match(raw_model, loader, cfg["eval_exact_match"])
            if cfg["eval_beam_size"] > 1 and final:
                results["beam_exact_match"] = exact_match(raw_model, loader, cfg["eval_exact_match"],
                                                          cfg["eval_beam_size"])
    return results

def main(argv):
    # ---- the config: defaults, then config files and --key=value (a resume takes the checkpoint's) ----
    defaults = {k: globals()[k] for k in config_keys}
    cfg = parse_config(argv, defaults)
    architecture = ("n_layer", "n_decoder_layer", "n_head", "n_embd", "head_dim", "n_ff", "num_buckets", "max_distance",
                    "feed_forward", "tie_embeddings")
    checkpoint = None
    if cfg["init_from"] == "resume":
        checkpoint = load_checkpoint(cfg["out_dir"], "t5")
        # The architecture and the dataset are the checkpoint's: an override of them is an error.
        cfg = resumed_config(argv, defaults, checkpoint, fixed=("dataset",) + architecture)
    check_config(cfg)

    # ---- devices, processes and precision ----
    runtime = start_processes(cfg)  # torchrun's rank, the device, autocast and the GradScaler (Part 3)
    device, master = runtime.device, runtime.rank == 0  # only rank 0 prints and writes files
    # Each process does its share of the micro-batches; together they make one optimizer step. (The
    # config keeps the total the user gave: that is what a resume with another process count needs.)
    micro_steps = cfg["gradient_accumulation_steps"] // runtime.world_size

    # ---- data: (input, target) pairs, or span corruption of any text (make_loader, Part 2) ----
    def prepare_dataset():
        try:
            data_dir = prepare_data.ensure_prepared(cfg["dataset"])  # downloads, tokenizes if needed
            return make_loader(data_dir, prepare_data.load_meta(data_dir), cfg, device), None
        except prepare_data.DataError as e:
            return None, str(e)

    loader = local_rank0_first(prepare_dataset, runtime)
    meta = loader.meta  # the tokenizer, with span corruption's special tokens
    # Batches are padded to their own longest pair; tokens per iteration count the real target
    # tokens (padding excluded), the tokens the loss is a mean over (bert.py counts its own the same way).
    mean_source, mean_target = loader.mean_lengths()
    pairs_per_iter = cfg["gradient_accumulation_steps"] * cfg["batch_size"]
    tokens_per_iter = pairs_per_iter * mean_target

    # ---- model: from scratch, from a checkpoint, or a pretrained T5 to fine-tune ----
    if cfg["init_from"] == "scratch":
        model_keys = architecture + ("dropout", "attention", "block_size", "target_block_size")
        try:
            # T5's conventions: <pad> is also the decoder start token; </s> ends inputs and targets.
            model = T5(T5Config(**{k: cfg[k] for k in model_keys}, vocab_size=loader.vocab_size,
                                pad_token_id=loader.pad, eos_token_id=loader.eos, decoder_start_token_id=loader.pad))
        except ValueError as e:
            fail(e)
    elif cfg["init_from"] == "resume":
        model = resumed_t5(checkpoint, cfg, loader)  # Part 2, above
    else:
        model = pretrained_t5(cfg, loader, runtime)  # Part 2, above
    # Every id the loader makes (its special tokens too) must have a row in the model's embedding.
    check_vocabulary_fits({"vocab_size": loader.vocab_size}, model.config.vocab_size, cfg["dataset"])
    model_args = asdict(model.config)
    model.to(device)
    model.activation_checkpointing = cfg["activation_checkpointing"]  # a training choice, not in model_args
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]),
                                          runtime.device_type)
    iter_num, best_val_loss = 0, float("inf")
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        iter_num, best_val_loss = restore_training_state(checkpoint, runtime, cfg["seed"])
        checkpoint = None  # free the loaded copy
    raw_model = model  # the plain module: what we save, and what MFU counts
    if cfg["compile"]:
        # Batches change shape with their longest pair: one shape-generic graph, not one per length.
        model = compile_or_warn(model, runtime, lambda: model_inputs(loader.get_batch("train")), dynamic=True)
    if runtime.ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=runtime.device_ids)
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        print("config:", json.dumps(cfg))
        print(f"parameters: {raw_model.num_params() / 1e6:.2f}M; tokens per iteration: ~{tokens_per_iter:,.0f} target "
              f"tokens ({pairs_per_iter} pairs x {mean_target:.1f}; inputs {mean_source:.1f} tokens)")
    wandb = start_wandb(cfg, master)

    # ---- the training loop ----
    # Order within an iteration: evaluate (and checkpoint) the current weights, then take one
    # optimizer step. A checkpoint written at iteration N therefore holds the weights and RNG state
    # from just before step N, and resuming repeats exactly what the original run did next.
    resumed_at = iter_num if cfg["init_from"] == "resume" else None
    run_log = start_run_log(cfg, runtime, resumed_at, {"kind": "start", "iter": iter_num, "model_type": "t5",
                                                       "tokens_per_iter": tokens_per_iter, "config": cfg})
    model.train()
    timer = IterationTimer(iter_num)
    t_start = time.time()  # wall time since training began, evaluations included: what "trains in N minutes" means
    while True:
        lr = learning_rate_at(iter_num, cfg)  # linear warmup, then cosine decay (Part 3)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # A resumed run evaluated this iteration before saving it; eval_only evaluates it again.
        if iter_num % cfg["eval_interval"] == 0 and (iter_num != resumed_at or cfg["eval_only"]):
            final = cfg["eval_only"] or iter_num >= cfg["max_iters"]
            losses = evaluate(model, raw_model, loader, cfg, runtime, final)  # losses and the task's metric (Part 2)
            metrics = {name: value for name, value in losses.items() if name not in ("train", "val")}
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                      + "".join(f", {name.replace('_', ' ')} {100 * value:.1f}%" for name, value in metrics.items())
                      + f" (time {time.time() - t_start:.0f}s)")
            log_eval(run_log, wandb, {"kind": "eval", "iter": iter_num, "tokens": iter_num * tokens_per_iter,
                                      "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr}
                     | {f"val_{name}": value for name, value in metrics.items()})
            check_finite("val loss", losses["val"], iter_num, cfg)
            if iter_num > 0 and not cfg["eval_only"] and (losses["val"] < best_val_loss or cfg["always_save_checkpoint"]):
                best_val_loss = min(best_val_loss, losses["val"])
                rng_states = every_rank_rng_state(runtime)  # collective: every process takes part
                if master:
                    save_checkpoint(cfg["out_dir"], {
                        "model_type": "t5", "model_args": model_args, "model": raw_model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scaler": runtime.scaler.state_dict(),
                        "iter_num": iter_num, "best_val_loss": best_val_loss, "config": cfg, "tokenizer": meta,
                        "rng_state": rng_states})
            timer.restart(iter_num)  # keep evaluation out of the timing
        if cfg["eval_only"] or iter_num >= cfg["max_iters"]:
            break

        # Gradient accumulation, weighted by real target tokens (what differs from gpt.py): the step's
        # micro-batches are drawn first, since each one's weight depends on all of them.
        batches = [loader.get_batch("train") for _ in range(micro_steps)]
        weights = target_token_weights([targets for *_, targets in batches], runtime)  # Part 2
        train_loss = 0.0  # the step's mean loss per target token, for the log (summed over processes)
        for micro_step, batch in enumerate(batches):
            # Under DDP, gradients are averaged across processes during backward; doing it only on
            # the last micro-step saves all the communication of the earlier ones.
            last = micro_step == micro_steps - 1
            with (model.no_sync() if runtime.ddp and not last else nullcontext()):
                with runtime.autocast:
                    _, loss = model(*model_inputs(batch))
                    loss = loss * weights[micro_step]
                runtime.scaler.scale(loss).backward()
            train_loss += loss.detach()  # a tensor: no waiting for the GPU here
        # Clipping the global gradient norm bounds the size of any one update, protecting against
        # the occasional huge gradient of a bad batch; the norm is logged either way (grad_clip=0:
        # measured, never clipped). Unscale first: the norm and the threshold are the true gradients'.
        runtime.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"] or math.inf)
        runtime.scaler.step(optimizer)
        runtime.scaler.update()
        optimizer.zero_grad(set_to_none=True)  # free gradient memory until the next backward

        if iter_num % cfg["log_interval"] == 0:
            # The mean loss over every target token of this step, of every process. .item() waits
            # for the GPU to finish, so we only ask for it when logging.
            loss_value = mean_over_processes([train_loss.item()], runtime)[0]
            check_finite("training loss", loss_value, iter_num, cfg)
            log_train_step(run_log, cfg, runtime, iter_num, loss_value, grad_norm.item(), lr,
                           timer.seconds_per_iter(iter_num),
                           tokens_per_iter, raw_model.flops_per_token(mean_source, mean_target))
        iter_num += 1

    end_run(cfg, runtime, iter_num, best_val_loss, wandb)


# =============================================================================
# Part 3: plumbing. Nothing here is needed to understand the model or the loop: this script's own
# reading of Hugging Face checkpoints, then the functions every model script shares by convention.
# =============================================================================

# -----------------------------------------------------------------------------
# Hugging Face T5 checkpoints: their config.json and tensor names, mapped to ours


def hf_t5_config(name_or_dir, dropout):
    """(directory, T5Config) of a Hugging Face T5ForConditionalGeneration checkpoint, downloading a hub id first."""
    directory = name_or_dir if os.path.isdir(name_or_dir) else download_hf_checkpoint(name_or_dir)
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{directory} has no config.json: not a Hugging Face checkpoint directory")
    with open(config_path) as f:
        hf = json.load(f)
    if hf.get("model_type") != "t5":
        raise ValueError(f"{directory} holds a {hf.get('model_type')!r} model; t5.py loads only 't5' checkpoints")
    feed_forward = hf.get("feed_forward_proj", "relu")
    if feed_forward not in ("relu", "gated-gelu"):
        raise ValueError(f"unsupported feed_forward_proj={feed_forward!r} in {config_path} (relu or gated-gelu)")
    # Real checkpoints come in two kinds: v1.0 ties the output layer to the embedding and rescales
    # by n_embd**-0.5; v1.1 stores its own lm_head.weight and does not rescale (config.json:
    # tie_word_embeddings=false). transformers 5 writes the rescaling as scale_decoder_outputs and
    # may share the matrix even without it; that is the same maths as an untied head that holds a
    # copy of the embedding, which is how we load it (tie_embeddings means tied *and* rescaled).
    tie = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    n_layer = hf["num_layers"]
    return directory, T5Config(
        vocab_size=hf["vocab_size"], n_embd=hf["d_model"], head_dim=hf["d_kv"], n_ff=hf["d_ff"],
        n_layer=n_layer, n_decoder_layer=hf.get("num_decoder_layers") or n_layer, n_head=hf["num_heads"],
        num_buckets=hf.get("relative_attention_num_buckets", 32),
        max_distance=hf.get("relative_attention_max_distance", 128), feed_forward=feed_forward,
        tie_embeddings=tie, dropout=dropout, layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        pad_token_id=hf.get("pad_token_id", 0), eos_token_id=hf.get("eos_token_id", 1),
        decoder_start_token_id=hf.get("decoder_start_token_id", 0))


def hf_t5_state_dict(hf_state, ours, tie, dtype, directory):
    """HF T5's tensors under our names; ours: the model's state dict (names, shapes); tie: the
    config's tie_embeddings."""
    # Hugging Face's names spell out the sub-layer index: encoder block layer.0 is self-attention,
    # layer.1 the feed-forward; decoder layer.0 self-attention, layer.1 cross-attention
    # ("EncDecAttention"), layer.2 feed-forward. Each layer.N holds its own layer_norm.
    sublayers = {"encoder": {"0": ("attn", "ln_attn"), "1": ("ff", "ln_ff")},
                 "decoder": {"0": ("self_attn", "ln_self"), "1": ("cross_attn", "ln_cross"), "2": ("ff", "ln_ff")}}
    state = {}
    for hf_name, tensor in hf_state.items():
        parts = hf_name.split(".")
        if hf_name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") or (
                hf_name == "lm_head.weight" and tie):
            continue  # copies of (tied to) shared.weight
        if hf_name == "shared.weight" and not tie and "lm_head.weight" not in hf_state:
            # An untied head stored as the shared matrix (see hf_t5_config): a copy of its own, so
            # that training one does not move the other.
            state["lm_head.weight"] = tensor.to(dtype, copy=True)
        if parts[0] in sublayers and parts[1] == "block":
            module, norm = sublayers[parts[0]][parts[4]]
            if parts[6] == "relative_attention_bias":  # block 0's table, shared by the stack
                key = f"{parts[0]}.relative_bias.embedding.weight"
            elif parts[5] == "layer_norm":
                key = f"{parts[0]}.blocks.{parts[2]}.{norm}.weight"
            else:  # SelfAttention/EncDecAttention.{q,k,v,o} or DenseReluDense.{wi,wi_0,wi_1,wo}
                key = f"{parts[0]}.blocks.{parts[2]}.{module}.{parts[6]}.weight"
        elif parts[0] in sublayers and parts[1] == "final_layer_norm":
            key = f"{parts[0]}.ln_f.weight"
        else:
            key = hf_name  # shared.weight, lm_head.weight
        if key not in ours:
            raise ValueError(f"unexpected tensor {hf_name!r} in the checkpoint at {directory}")
        if tensor.shape != ours[key].shape:
            raise ValueError(f"shape mismatch for {hf_name}: checkpoint {tuple(tensor.shape)}, model {tuple(ours[key].shape)}")
        state[key] = tensor.to(dtype)  # the tensor itself (a view of the file) when the dtype matches
    missing = set(ours) - set(state)
    if missing:
        raise ValueError(f"checkpoint at {directory} lacks {sorted(missing)[:5]}")
    return state


def spiece_model_path(name_or_dir, directory):
    """The path of a pretrained T5's SentencePiece model, spiece.model, in directory: name_or_dir
    itself, or the cache download_hf_checkpoint filled for that hub id. sample.py reads it to encode
    and decode T5's text (its tokenizer.json holds a Unigram model, which bpe.py does not read), and
    fine-tuning checks the dataset against it. A FileNotFoundError that says what to do if missing."""
    path = os.path.join(directory, "spiece.model")
    if os.path.isfile(path):
        return path
    if directory == name_or_dir:
        raise FileNotFoundError(f"{directory} has no spiece.model, T5's SentencePiece tokenizer; copy it there "
                                f"from the model's repository")
    # A cache marked complete is never asked about again, and versions before spiece.model joined
    # download_hf_checkpoint's files left it out: deleting the cache makes the next run fetch everything.
    raise FileNotFoundError(f"the download cache {directory} has no spiece.model, T5's SentencePiece tokenizer "
                            f"(an older version did not fetch it, or {name_or_dir} lacks it); delete {directory} "
                            f"to download {name_or_dir} again")



# -----------------------------------------------------------------------------
# Shared by convention: every function below is identical in every model script (bigram.py,
# gpt.py, llama.py, olmo.py, bert.py, t5.py; tests/test_template.py keeps them so). Read them once,
# here in gpt.py: a fix to one is made in all.


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
