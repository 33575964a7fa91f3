"""
bert.py — BERT in one file: the encoder-only Transformer, its WordPiece tokenizer, loading Hugging
Face BERT checkpoints, masked-language-model pretraining, fine-tuning for classification, fill-mask
and sentence embeddings.

BERT (Devlin, Chang, Lee & Toutanova, "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding", Google 2018, NAACL 2019) takes the Transformer's encoder (Vaswani et al.
2017) and pretrains it on unlabelled text with a cloze task: hide some tokens, predict them from
everything around them. The pretrained encoder is then fine-tuned, with one small layer on top, for
classification, tagging or question answering. For years this "pretrain, then fine-tune" recipe set
the state of the art; small BERTs are still everywhere today as sentence-embedding models
(sentence-transformers' all-MiniLM-L6-v2 is a plain 6-layer BertModel), rerankers and classifiers.

What differs from gpt.py, and why (read gpt.py first: the embeddings, attention maths, MLP, the
optimizer and the training loop are the same ideas):
  1. Bidirectional attention. A decoder's causal mask lets position t see only positions <= t, so
     every position can be trained to predict the next token. An encoder drops that mask: every
     token sees the whole sequence, left and right, which is what understanding a sentence wants
     ("bank" means something else before "of the river"). The only mask left is the padding mask:
     batches hold sequences of different lengths, padded to one length, and no token may attend to
     the padding. It is one row per example, (B, 1, 1, T), broadcast over heads and query positions.
  2. So the next-token objective is gone: a token that can see the next one would just copy it.
     BERT is trained instead as a masked language model (MLM): 15% of the tokens are chosen; of
     those 80% become [MASK], 10% a random token, 10% stay themselves; the model must predict the
     original token at the chosen positions only. (The 10%/10% keep the model from learning that
     only [MASK] positions matter, since [MASK] never appears when the model is used later.) The
     original BERT added next-sentence prediction; RoBERTa (Liu et al. 2019) showed it does not
     help, and we leave it out.
  3. And that is also why an encoder cannot simply generate text: it has no left-to-right
     factorisation p(x_t | x_<t) to sample from, only "fill in this blank given both sides". It
     fills masks, classifies and embeds; it does not write.
  4. Special tokens and segments. [CLS] starts every input; its final vector, through the
     "pooler" (dense + tanh), summarises the sequence for classification. [SEP] ends a sentence;
     a pair of sentences (question and passage, premise and hypothesis) is packed as
     [CLS] A [SEP] B [SEP], and a learned token-type (segment) embedding, 0 for A and 1 for B, is
     added to every token so the model knows which side a token is on.
  5. Post-norm blocks, as the original Transformer: x = LN(x + attn(x)), x = LN(x + ffn(x)),
     where gpt.py normalises the input of each sub-layer instead. Post-norm needs learning-rate
     warmup to train stably at depth, but it is what BERT's weights were trained with.
  6. The embedding sum (word + position + token type) is normalised by a LayerNorm before the first
     block; GELU is the exact erf form, not GPT-2's tanh approximation; LayerNorm's epsilon is 1e-12.
  7. Heads: the MLM head (dense, GELU, LayerNorm, then the word-embedding matrix transposed plus
     its own bias), sequence classification (pooler, dropout, linear) and token classification
     (dropout, linear on every position).

Run it:
    python bert.py config/bert_shakespeare_char_cpu.py   # MLM-pretrain a small character-level BERT (CPU)
    python bert.py config/bert_shakespeare_char.py       # the same at GPU scale
    python prepare_data.py shakespeare_speakers          # passages labelled with their speaker
    python bert.py config/bert_speakers_cpu.py           # fine-tune the MLM checkpoint to classify them
    python sample.py --out_dir=out-bert-shakespeare-char-cpu --start="To be, or not to [MASK]"
    python bert.py --embed --init_from=sentence-transformers/all-MiniLM-L6-v2 "A sentence." "Another one."
and in Python (a hub id, downloaded once into a cache, or a local Hugging Face directory):
    model = Bert.from_pretrained("google-bert/bert-base-uncased")  # BertModel / ForMaskedLM / ForSequenceClassification
    model, tokenizer = load_for_inference("sentence-transformers/all-MiniLM-L6-v2")
    vectors = sentence_embeddings(model, tokenizer, ["A sentence.", "Another one."])

Read Part 1 first (the model, then its WordPiece tokenizer, then what a trained encoder is used
for), then main() in Part 2. Part 3 is plumbing: reading Hugging Face checkpoints, then the functions
every script shares.
"""

import functools
import json
import math
import mmap
import os
import re
import sys
import time
import unicodedata
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare_data


# =============================================================================
# Part 1: the model, the lesson. Read this first: the configuration, the building blocks in the
# order data meets them, the model and its heads; then BERT's WordPiece tokenizer (a second lesson)
# and what a trained encoder is for: sentence embeddings, fill-mask, classification.
# =============================================================================

# -----------------------------------------------------------------------------
# Model configuration

# The model's output layer, and the Hugging Face architecture that has it:
#   'none'     BertModel: the encoder (and, if present, the pooler); forward returns hidden states
#   'mlm'      BertForMaskedLM (and BertForPreTraining, minus its next-sentence head)
#   'sequence' BertForSequenceClassification: one label per input, read from [CLS]
#   'token'    BertForTokenClassification: one label per token (named entities, part of speech)
HEADS = ("none", "mlm", "sequence", "token")


@dataclass
class BertConfig:
    # The length of the learned position table (HF: max_position_embeddings). As in GPT-2, a hard
    # limit: position 512 has no embedding.
    block_size: int = 512
    vocab_size: int = 30522  # bert-base-uncased's WordPiece vocabulary
    type_vocab_size: int = 2  # segments A and B
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768  # HF: hidden_size
    n_inner: int = 3072  # width of the feed-forward layer (HF: intermediate_size); 4 * n_embd in BERT
    # BERT used 0.1 everywhere: after the embeddings, on the attention weights, after each
    # sub-layer and before the classifier. HF has separate knobs; every public checkpoint sets them equal.
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    attention: str = "sdpa"  # 'sdpa' or 'manual', as in gpt.py
    head: str = "mlm"  # one of HEADS
    pooler: bool = True  # the dense + tanh over [CLS]; 'sequence' needs it, MLM checkpoints lack it
    labels: tuple = ()  # class names of a classification head (HF: id2label); their count sizes it

    def __post_init__(self):
        self.labels = tuple(self.labels)  # a checkpoint may hand us a list
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.attention not in ("sdpa", "manual"):
            raise ValueError(f"attention={self.attention!r} must be 'sdpa' or 'manual'")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} must be one of {', '.join(HEADS)}")
        if self.head == "sequence" and not self.pooler:
            raise ValueError("head='sequence' classifies from the pooler's output; it needs pooler=True")
        if self.head in ("sequence", "token") and len(self.labels) < 2:
            raise ValueError(f"a {self.head} classification head needs at least 2 labels, got {list(self.labels)}")


# -----------------------------------------------------------------------------
# Building blocks, in the order data meets them.


class Embeddings(nn.Module):
    """What a token is, where it is and which segment it belongs to: three learned vectors, summed.

    Summing (rather than concatenating) keeps the width at n_embd; the model learns to keep the
    three kinds of information in directions it can tell apart. BERT normalises the sum with a
    LayerNorm, because in a post-norm network every block's input is normalised, the first one too.
    """

    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # word (token) embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned absolute positions
        self.wtt = nn.Embedding(config.type_vocab_size, config.n_embd)  # token type: segment A or B
        self.ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, idx, token_type_ids):
        pos = torch.arange(idx.size(1), dtype=torch.long, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos) + self.wtt(token_type_ids)  # (B, T, C)
        return self.drop(self.ln(x))


def attention_weights(q, k, mask):
    """softmax(Q K^T / sqrt(head_dim)) under the mask, (B, n_head, T_q, T_k): as in gpt.py.

    mask: bool, True where a query may look at a key, of any shape that broadcasts to
    (B, n_head, T_q, T_k): gpt.py's causal (T_q, T_k), or here the padding mask (B, 1, 1, T_k)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, n_head, T_q, T_k)
    scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores, dim=-1)  # each row sums to 1


def manual_attention(q, k, v, mask, dropout_p=0.0):
    """Scaled dot-product attention written out: softmax(Q K^T / sqrt(head_dim)) V.

    q: (B, n_head, T_q, head_dim); k, v: (B, n_head, T_k, head_dim); mask: bool, True where a query
    may look at a key, of any shape that broadcasts to (B, n_head, T_q, T_k): gpt.py's causal
    (T_q, T_k), or here the padding mask (B, 1, 1, T_k). Forbidden scores become -inf, which the
    softmax turns into exactly zero weight.
    """
    weights = F.dropout(attention_weights(q, k, mask), p=dropout_p)
    return weights @ v  # (B, n_head, T_q, head_dim)


class SelfAttention(nn.Module):
    """Multi-head self-attention in which every token may look at every real token, both sides.

    The same computation as gpt.py's CausalSelfAttention, minus the causal mask. HF's BERT has
    separate query, key and value Linears; we fuse them into one c_attn (3 * n_embd outputs), the
    same maths as one matmul instead of three, and concatenate HF's weights when loading.
    """

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.attention = config.attention
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, T, n_head, head_dim) -> (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "manual":
            if mask is None:  # no padding: every query sees every key
                mask = torch.ones(1, 1, 1, T, dtype=torch.bool, device=x.device)
            y = manual_attention(q, k, v, mask, dropout_p)
        else:
            # No is_causal here: that flag is the whole difference between a decoder and an encoder.
            # A bool attn_mask (B, 1, 1, T) hides the padding keys; None attends everywhere.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Feed-forward network: n_embd -> n_inner, exact GELU, -> n_embd, on each position alone.

    GELU(x) = x * Phi(x), Phi the standard normal CDF, computed with erf. GPT-2 used a tanh
    approximation of it; BERT's weights were trained with the exact form, and HF computes that form.
    The two differ by at most 4.7e-4 (near |x| = 2.7), more than the 1e-4 our parity tests with HF allow.
    """

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.n_inner)
        self.gelu = nn.GELU()  # approximate='none': the erf form
        self.c_proj = nn.Linear(config.n_inner, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One encoder block, post-norm: x = LN(x + attn(x)), then x = LN(x + mlp(x)).

    The original Transformer's layout, which BERT kept. Every block's output is normalised, so no
    final LayerNorm is needed after the stack (gpt.py's pre-norm blocks need its ln_f). The price:
    the residual path passes through a LayerNorm in every block, so gradients reaching the lower
    layers are rescaled many times, and deep post-norm stacks need learning-rate warmup to start
    training stably (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture").
    """

    def __init__(self, config):
        super().__init__()
        self.attn = SelfAttention(config)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)

    def forward(self, x, mask):
        x = self.ln_1(x + self.attn(x, mask))
        x = self.ln_2(x + self.mlp(x))
        return x


# -----------------------------------------------------------------------------
# The model


class Bert(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        if config.pooler:
            # The pooler turns [CLS]'s final vector into a summary of the sequence: dense + tanh. In
            # BERT it was trained by next-sentence prediction, and classifiers start from it.
            self.pooler = nn.Linear(config.n_embd, config.n_embd)
        if config.head == "mlm":
            # One more dense + GELU + LayerNorm before the output matrix (BERT's "transform"), then
            # scores against every word embedding: the decoder is wte's matrix (tied, as gpt.py's
            # lm_head) plus a bias of its own, one per vocabulary entry.
            self.mlm_dense = nn.Linear(config.n_embd, config.n_embd)
            self.mlm_gelu = nn.GELU()
            self.mlm_ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
            self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        elif config.head in ("sequence", "token"):
            self.classifier_dropout = nn.Dropout(config.dropout)
            self.classifier = nn.Linear(config.n_embd, len(config.labels))
        self.apply(self._init_weights)
        self.activation_checkpointing = False  # main() sets it from the training key; see hidden_states()

    def _init_weights(self, module):
        # BERT's initialisation: every weight from N(0, 0.02), biases zero (LayerNorms start at
        # gain 1, bias 0, PyTorch's default). Post-norm blocks keep each block's output at unit
        # scale, so no depth-dependent scaling like GPT-2's is needed.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx, attention_mask=None, token_type_ids=None):
        """idx: (B, T) token ids -> (B, T, n_embd), the last block's hidden states.

        attention_mask (B, T): 1 for real tokens, 0 for padding (None: all real). token_type_ids
        (B, T): 0 for segment A, 1 for segment B (None: all A). Padding positions get vectors too
        (they attend to the real tokens), but no real token ever looks at them.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(idx)
        # The padding mask: True where a key may be looked at. (B, T) -> (B, 1, 1, T) broadcasts
        # over the heads and over every query position: each example hides its own padding keys.
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.embeddings(idx, token_type_ids)  # (B, T, C)
        for block in self.h:
            if self.activation_checkpointing and self.training:
                # Memory path: skip on first reading. As in gpt.py: keep only each block's input and
                # recompute its inside during backward (non-reentrant, RNG restored, so dropout repeats
                # its masks): about one block's activations in memory instead of n_layer blocks'.
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x

    def pool(self, hidden):
        """(B, T, C) hidden states -> (B, C): tanh(dense(hidden at [CLS], position 0))."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def forward(self, idx, targets=None, attention_mask=None, token_type_ids=None):
        """idx: (B, T) token ids -> (logits, loss or None).

        The logits are the head's output: (B, T, vocab_size) for 'mlm', (B, len(labels)) for
        'sequence', (B, T, len(labels)) for 'token'; for 'none' there is no head and the hidden
        states (B, T, n_embd) are returned. Targets: for 'mlm' and 'token' (B, T) ids with -1 at
        the positions that carry no loss (for MLM: every position that was not chosen), for
        'sequence' (B,) label ids. The loss is the mean cross-entropy over the scored positions.
        """
        hidden = self.hidden_states(idx, attention_mask, token_type_ids)
        head = self.config.head
        if head == "none":
            if targets is not None:
                raise ValueError("a model without a head (head='none') has no loss; load a model with a head")
            return hidden, None
        if head == "mlm":
            x = self.mlm_ln(self.mlm_gelu(self.mlm_dense(hidden)))
            logits = F.linear(x, self.embeddings.wte.weight, self.mlm_bias)  # (B, T, vocab_size)
        elif head == "sequence":
            logits = self.classifier(self.classifier_dropout(self.pool(hidden)))  # (B, n_labels)
        else:
            logits = self.classifier(self.classifier_dropout(hidden))  # (B, T, n_labels)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # -------------------------------------------------------------------------
    # Loading Hugging Face BERT checkpoints

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0, head=None, labels=(), dtype=torch.float32):
        """Build a Bert from a Hugging Face BERT checkpoint: a local directory (config.json plus
        model.safetensors or pytorch_model.bin) or a hub id, e.g. 'google-bert/bert-base-uncased'
        (or plain 'bert-base-uncased') or 'sentence-transformers/all-MiniLM-L6-v2', downloaded once
        into a cache directory.

        The head follows config.json's "architectures": BertModel -> 'none', BertForMaskedLM and
        BertForPreTraining -> 'mlm', BertForSequenceClassification -> 'sequence',
        BertForTokenClassification -> 'token'. Passing head= (and labels=) overrides that, e.g. to
        start a classifier from a BertModel or MLM checkpoint: the encoder (and pooler, where the
        checkpoint has one) are loaded; the new head (and a missing pooler) start from BERT's init.

        dtype: of the weights. As in gpt.py, the model is built on the "meta" device (no memory, no
        random init) and then takes the checkpoint's tensors as its parameters
        (load_state_dict(assign=True)), so a load needs the memory of the weights, once. Reading
        HF's config and renaming its tensors is in Part 3 (hf_bert_config, hf_bert_state_dict).
        """
        directory, config, hf_state = hf_bert_config(name_or_dir, dropout, head, labels)
        with torch.device("meta"):
            model = cls(config)
        state = hf_bert_state_dict(hf_state, model.state_dict(), dtype, directory, new_head=head is not None)
        model.load_state_dict(state, assign=True)
        return model

    # -------------------------------------------------------------------------
    # Optimizer

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices only (gpt.py's): biases and LayerNorm gains get none."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self):
        """Training FLOPs per token: 6 per parameter that does a matmul, plus attention's score and
        mixing matmuls, 12 * n_layer * T * n_embd (as gpt.py). The position and token-type tables are
        lookups, not matmuls; the word table counts, as the MLM decoder multiplies by it."""
        cfg = self.config
        lookups = self.embeddings.wpe.weight.numel() + self.embeddings.wtt.weight.numel()
        if cfg.head != "mlm":
            lookups += self.embeddings.wte.weight.numel()
        return 6 * (self.num_params() - lookups) + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


# -----------------------------------------------------------------------------
# The WordPiece tokenizer: a second lesson, how BERT turns text into ids
#
# BERT splits text in two stages. "Basic" tokenization cleans the text and cuts it into words and
# punctuation marks; WordPiece (Schuster & Nakajima 2012, Wu et al. 2016) then cuts each word into
# pieces from a fixed vocabulary, greedily taking the longest piece that matches at each point.
# Pieces that continue a word carry a "##" prefix: "unaffable" -> "un", "##aff", "##able". So a
# 30k vocabulary spells every word made of known characters, frequent words as one token. Unlike
# gpt.py's byte-level BPE the result is lossy: case and accents may be dropped (uncased models),
# spacing around punctuation is forgotten, and a word with any unspellable character becomes [UNK].

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def is_control(char):
    # Unicode categories C*: controls, format characters, surrogates, private use, unassigned.
    # Tab, newline and carriage return count as whitespace instead.
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def is_whitespace(char):
    return char in "\t\n\r" or char.isspace()


@functools.lru_cache(maxsize=1 << 16)  # speed only: each distinct character is classified once
def is_punctuation(char):
    # Every ASCII non-letter, non-digit printable (so "$", "+", "^", "`" too, which Unicode calls
    # symbols), and every Unicode punctuation category (P*).
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk(char):
    # The CJK Unified Ideographs blocks. Chinese is written without spaces, so every ideograph
    # becomes a word of its own (Japanese kana and Korean hangul are not in these blocks and are
    # split on spaces as usual).
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                             (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                             (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class BertInput:
    """BERT's input layout, shared by both tokenizers below: [CLS] text [SEP], or [CLS] text [SEP]
    pair [SEP], with segment ids. Each tokenizer brings its special_tokens (a dict, token -> id, as
    in the checkpoint's meta), cls_id and sep_id, and tokenize_text(text) for the text between them."""

    def tokenize(self, text):
        """Text -> ids, without [CLS]/[SEP]. Special tokens written in the text ("[MASK]") are kept whole."""
        # The capturing group makes re.split keep the special tokens: 'a [MASK] b' -> ['a ', '[MASK]', ' b'].
        pattern = "(" + "|".join(re.escape(token) for token in self.special_tokens) + ")"
        ids = []
        for part in re.split(pattern, text):
            if part in self.special_tokens:
                ids.append(self.special_tokens[part])
            elif part:
                ids += self.tokenize_text(part)
        return ids

    def encode(self, text, pair=None):
        """[CLS] text [SEP], or [CLS] text [SEP] pair [SEP] for a pair; token_types(ids) gives the segments."""
        ids = [self.cls_id] + self.tokenize(text) + [self.sep_id]
        if pair is not None:
            ids += self.tokenize(pair) + [self.sep_id]
        return ids

    def token_types(self, ids):
        """Segment ids: 0 up to and including the first [SEP], 1 after it (segment B of a pair)."""
        types, segment = [], 0
        for i in ids:
            types.append(segment)
            if i == self.sep_id:
                segment = 1
        return types


class WordPieceTokenizer(BertInput):
    """BERT's tokenizer: basic tokenization, then greedy longest-match-first WordPiece.

    vocab: the tokens in id order (vocab.txt, one per line). do_lower_case: the "uncased" models
    lower-case the text and strip accents ("Élan" -> "elan"); strip_accents=None follows it.
    clean_up_tokenization_spaces: decode glues English contractions back together, as HF's decode
    does when the checkpoint's tokenizer_config.json sets it (see decode).
    """

    def __init__(self, vocab, do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True,
                 max_input_chars_per_word=100, clean_up_tokenization_spaces=False):
        self.vocab = list(vocab)
        self.token_to_id = {token: i for i, token in enumerate(self.vocab)}
        missing = [t for t in ("[CLS]", "[SEP]", "[UNK]") if t not in self.token_to_id]
        if missing:
            raise ValueError(f"the vocabulary lacks {', '.join(missing)}, which every BERT input needs; "
                             f"is this a BERT vocab.txt?")
        self.vocab_size = len(self.vocab)
        self.do_lower_case = do_lower_case
        self.strip_accents = do_lower_case if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_input_chars_per_word = max_input_chars_per_word
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.special_tokens = {t: self.token_to_id[t] for t in SPECIAL_TOKENS if t in self.token_to_id}
        self.special_ids = set(self.special_tokens.values())
        self.cls_id, self.sep_id = self.token_to_id["[CLS]"], self.token_to_id["[SEP]"]
        self.unk_id = self.token_to_id["[UNK]"]
        self.mask_id, self.pad_id = self.token_to_id.get("[MASK]"), self.token_to_id.get("[PAD]", 0)
        # Speed path: skip on first reading.
        # Memos: a text uses few distinct characters, and words repeat (Zipf's law), so each distinct
        # character is classified and each distinct word split only once.
        self._clean_char = functools.lru_cache(maxsize=1 << 16)(self._clean_one_char)
        self.wordpiece = functools.lru_cache(maxsize=1 << 16)(self._wordpiece)

    @classmethod
    def from_pretrained(cls, directory):
        """Read vocab.txt and, where present, tokenizer_config.json (do_lower_case and friends).

        A directory without vocab.txt (a hub download fetches tokenizer.json, not vocab.txt) is read
        from tokenizer.json, whose WordPiece model holds the same vocabulary as a token -> id map."""
        vocab_path = os.path.join(directory, "vocab.txt")
        if os.path.isfile(vocab_path):
            with open(vocab_path, encoding="utf-8") as f:
                vocab = [line.rstrip("\n") for line in f]
        elif os.path.isfile(os.path.join(directory, "tokenizer.json")):
            vocab_path = os.path.join(directory, "tokenizer.json")
            with open(vocab_path, encoding="utf-8") as f:
                model = json.load(f)["model"]
            if model.get("type") != "WordPiece":
                raise ValueError(f"{vocab_path} holds a {model.get('type')!r} tokenizer, not BERT's WordPiece")
            vocab = sorted(model["vocab"], key=model["vocab"].get)  # the tokens in id order
        else:
            raise FileNotFoundError(f"{directory} has no vocab.txt (nor tokenizer.json): not a BERT tokenizer directory")
        options = {}
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                options = json.load(f)
        try:
            return cls(vocab, do_lower_case=options.get("do_lower_case", True),
                       strip_accents=options.get("strip_accents"),
                       tokenize_chinese_chars=options.get("tokenize_chinese_chars", True),
                       clean_up_tokenization_spaces=options.get("clean_up_tokenization_spaces", False))
        except ValueError as e:
            raise ValueError(f"{vocab_path}: {e}") from None

    def to_meta(self):
        """A plain dict for a checkpoint's "tokenizer" entry (load_tokenizer rebuilds the tokenizer)."""
        return {"tokenizer": "wordpiece", "vocab_size": self.vocab_size,
                "wordpiece": {"vocab": self.vocab, "options": {
                    "do_lower_case": self.do_lower_case, "strip_accents": self.strip_accents,
                    "tokenize_chinese_chars": self.tokenize_chinese_chars,
                    "max_input_chars_per_word": self.max_input_chars_per_word,
                    "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces}}}

    def basic_tokenize(self, text):
        """Text -> words and punctuation marks: clean, space out CJK, strip accents, lower-case, split."""
        text = "".join(self._clean_char(char) for char in text)
        if self.strip_accents:
            # NFD splits "é" into "e" + a combining acute accent (category Mn), which we drop.
            text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        if self.do_lower_case:
            text = text.lower()
        # Every punctuation mark is a word of its own: "don't!" -> "don", "'", "t", "!".
        return "".join(f" {c} " if is_punctuation(c) else c for c in text).split()

    def _clean_one_char(self, char):
        if char in ("\0", "\ufffd") or is_control(char):
            return ""  # NUL, the replacement character and invisible controls are dropped
        if is_whitespace(char):
            return " "
        if self.tokenize_chinese_chars and is_cjk(char):
            return f" {char} "
        return char

    def _wordpiece(self, word):
        """One word -> ids (a tuple), greedy longest match first; [UNK] for the whole word if it cannot be spelled."""
        if len(word) > self.max_input_chars_per_word:
            return (self.unk_id,)  # very long "words" are usually junk (URLs, base64); give up early
        ids, start = [], 0
        while start < len(word):
            # Try the longest remaining substring first and shorten it until the vocabulary has it.
            # Greedy is not always the split with fewest pieces, but it is what BERT was trained with.
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.token_to_id:
                    ids.append(self.token_to_id[piece])
                    start = end
                    break
            else:
                return (self.unk_id,)
        return tuple(ids)

    def tokenize_text(self, text):
        """Text without special tokens -> ids: basic tokenization, then WordPiece on every word."""
        return [i for word in self.basic_tokenize(text) for i in self.wordpiece(word)]

    def decode(self, ids):
        """Ids -> text, as HF's decode(ids, skip_special_tokens=True): special tokens dropped, pieces
        joined by spaces, "##" continuations glued to their word, no space before . , ! or ?.

        With clean_up_tokenization_spaces (bert-base-uncased's tokenizer_config.json sets it), HF
        also rejoins English contractions, and so do we: "don ' t!" -> "don't!", "it ' s" -> "it's".
        Without it, HF's decode gives "don ' t!" too. Lossy by design either way: "Hello (World)"
        comes back as "hello ( world )" from an uncased vocabulary."""
        text = " ".join(self.vocab[i] for i in ids if i not in self.special_ids).replace(" ##", "")
        rejoined = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ",")]
        if self.clean_up_tokenization_spaces:
            rejoined += [(" ' ", "'"), (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]
        for spaced, joined in rejoined:  # in HF's order: each rule sees the text the previous left
            text = text.replace(spaced, joined)
        return text


class DatasetTokenizer(BertInput):
    """A prepared dataset's tokenizer (prepare_data.py: char, gpt2 or bpe) with BERT's special tokens
    appended after its vocabulary, and the same interface as WordPieceTokenizer.

    The datasets have no [CLS], [SEP], [MASK] or [PAD], so pretraining gives them the next free
    ids: a 65-character vocabulary becomes 69 tokens, ids 65..68 being the special tokens (listed in
    the checkpoint's tokenizer meta as "special_tokens"). Special tokens typed in a prompt
    ("To be, or [MASK] to be") are recognised; everything else goes through the dataset's tokenizer.
    """

    def __init__(self, meta):
        self.base = prepare_data.load_tokenizer(meta)
        self.special_tokens = dict(meta["special_tokens"])
        self.special_ids = set(self.special_tokens.values())
        self.vocab_size = meta["vocab_size"] + len(self.special_tokens)
        self.cls_id, self.sep_id = self.special_tokens["[CLS]"], self.special_tokens["[SEP]"]
        self.mask_id, self.pad_id = self.special_tokens["[MASK]"], self.special_tokens["[PAD]"]

    def tokenize_text(self, text):
        return self.base.encode(text)

    def decode(self, ids):
        return self.base.decode([i for i in ids if i not in self.special_ids])


def with_special_tokens(meta):
    """A dataset's meta with BERT's special tokens appended to its vocabulary (see DatasetTokenizer)."""
    n = meta["vocab_size"]
    return meta | {"special_tokens": {t: n + i for i, t in enumerate(t for t in SPECIAL_TOKENS if t != "[UNK]")}}


def load_tokenizer(meta):
    """The tokenizer of a bert.py checkpoint, from its "tokenizer" meta (sample.py calls this)."""
    if "wordpiece" in meta:  # fine-tuned from a Hugging Face checkpoint: its vocab.txt travels along
        return WordPieceTokenizer(meta["wordpiece"]["vocab"], **meta["wordpiece"]["options"])
    return DatasetTokenizer(meta)


# -----------------------------------------------------------------------------
# Using a trained encoder: embeddings, fill-mask, classification


def pad_batch(sequences, tokenizer, block_size):
    """Lists of ids -> idx, attention_mask, token_type_ids, each (B, T), padded to the longest.

    Refuses (ValueError) a sequence longer than the position table rather than truncating it:
    silently dropping the end of a text would change the answer without saying so.
    """
    longest = max(len(ids) for ids in sequences)
    if longest > block_size:
        raise ValueError(f"a text is {longest} tokens long, more than the model's {block_size} positions; "
                         f"shorten it (or split it into parts)")
    idx = torch.full((len(sequences), longest), tokenizer.pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(sequences), longest, dtype=torch.long)
    token_type_ids = torch.zeros(len(sequences), longest, dtype=torch.long)
    for row, ids in enumerate(sequences):
        idx[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        token_type_ids[row, :len(ids)] = torch.tensor(tokenizer.token_types(ids))
    return idx, attention_mask, token_type_ids


@torch.no_grad()
def sentence_embeddings(model, tokenizer, sentences, batch_size=32):
    """Sentences -> (N, n_embd) unit vectors whose dot products are cosine similarities.

    The recipe of sentence-transformers (Reimers & Gurevych 2019, "Sentence-BERT") for models such as
    all-MiniLM-L6-v2: run the encoder, average the last hidden states over the real tokens ([CLS] and
    [SEP] included, padding excluded), then L2-normalise. Mean pooling beat the [CLS] vector in their
    experiments; a model trained this way (contrastively, on sentence pairs) puts paraphrases close
    together. A raw MLM checkpoint was never trained for this, so its similarities are much weaker.
    """
    device = next(model.parameters()).device
    vectors = []
    for start in range(0, len(sentences), batch_size):
        batch = [tokenizer.encode(s) for s in sentences[start:start + batch_size]]
        idx, attention_mask, token_type_ids = (t.to(device) for t in pad_batch(batch, tokenizer, model.config.block_size))
        hidden = model.hidden_states(idx, attention_mask, token_type_ids).float()  # (B, T, C)
        weights = attention_mask.unsqueeze(-1).float()  # (B, T, 1): 1 on real tokens, 0 on padding
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1)  # (B, C)
        vectors.append(F.normalize(mean, dim=-1))
    return torch.cat(vectors)


@torch.no_grad()
def fill_mask(model, tokenizer, text, k=5):
    """The k most likely tokens for each [MASK] in text: a list (one per [MASK]) of [(token, probability)].

    Every [MASK] is predicted from the same single forward pass, each independently of the others'
    answers: BERT's masked positions do not condition on one another.
    """
    if model.config.head != "mlm":
        raise ValueError(f"fill-mask needs a masked-LM head; this model's head is {model.config.head!r}")
    ids = tokenizer.encode(text)
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if not positions:
        raise ValueError(f"the text has no [MASK] token to fill; write [MASK] where a token is missing, "
                         f"e.g. \"To be, or [MASK] to be\"")
    device = next(model.parameters()).device
    idx, attention_mask, token_type_ids = (t.to(device) for t in pad_batch([ids], tokenizer, model.config.block_size))
    logits, _ = model(idx, attention_mask=attention_mask, token_type_ids=token_type_ids)
    probs = F.softmax(logits[0, positions].float(), dim=-1)  # (n_masks, vocab_size)
    # Never propose [MASK], [CLS], ... or the unused rows of a padded vocabulary: they are not text.
    # Their probability is dropped, not shared out, so the others keep the model's own numbers.
    probs[:, sorted(tokenizer.special_ids)] = 0.0
    probs[:, tokenizer.vocab_size:] = 0.0
    probs, best = probs.topk(k, dim=-1)
    return [[(tokenizer.decode([i]), p) for i, p in zip(row_ids.tolist(), row_probs.tolist())]
            for row_ids, row_probs in zip(best, probs)]


@torch.no_grad()
def classify(model, tokenizer, text, pair=None):
    """[(label, probability)] for a sequence classifier, most likely first."""
    if model.config.head != "sequence":
        raise ValueError(f"classification needs a sequence-classification head; this model's head is {model.config.head!r}")
    device = next(model.parameters()).device
    batch = pad_batch([tokenizer.encode(text, pair)], tokenizer, model.config.block_size)
    idx, attention_mask, token_type_ids = (t.to(device) for t in batch)
    logits, _ = model(idx, attention_mask=attention_mask, token_type_ids=token_type_ids)
    probs = F.softmax(logits[0].float(), dim=-1)
    order = probs.argsort(descending=True).tolist()
    return [(model.config.labels[i], probs[i].item()) for i in order]


# =============================================================================
# Part 2: training. The defaults (every one a config key), the helpers where bert.py's training
# differs from gpt.py's (masking, labelled batches, the classifier, accuracy), then main(): gpt.py's
# main in the same named steps. Helpers it shares with every script are in Part 3; read main() first.
# =============================================================================

# -----------------------------------------------------------------------------
# Training configuration. Every simple value below can be overridden by config files and
# --key=value arguments (see parse_config). The defaults pretrain BERT-base-sized MLM on Shakespeare.

# I/O
out_dir = "out-bert"
eval_interval = 250
log_interval = 10
eval_iters = 200  # MLM: random batches per estimate; classify: at most this many batches, the same every time
eval_only = False
always_save_checkpoint = True
# 'scratch', 'resume' (out_dir/ckpt.pt), or, to fine-tune a classifier, a bert.py out_dir (its MLM
# checkpoint), a Hugging Face BERT directory or a hub id ('google-bert/bert-base-uncased')
init_from = "scratch"
# logging
wandb_log = False
wandb_project = "bert"
wandb_run_name = "bert"
# task and data
task = "mlm"  # 'mlm': pretrain on a prepared dataset; 'classify': fine-tune on data/<dataset>/{train,val}.tsv
mask_prob = 0.15  # MLM: the share of tokens chosen for prediction
dataset = "shakespeare_char"
gradient_accumulation_steps = 8
batch_size = 32
block_size = 512
# model
n_layer = 12
n_head = 12
n_embd = 768  # the feed-forward width is 4 * n_embd, as in BERT
dropout = 0.1
attention = "sdpa"
# AdamW (BERT: 1e-4 with beta2 0.999 and warmup, weight decay 0.01)
learning_rate = 1e-4
max_iters = 10000
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0
# learning-rate schedule
decay_lr = True
warmup_iters = 500  # post-norm blocks need warmup to start stably
lr_decay_iters = 10000
min_lr = 1e-5
# system
backend = "auto"
device = "auto"
dtype = "auto"
compile = True
activation_checkpointing = False  # recompute each block in backward instead of storing it: less memory, more compute
seed = 1337

config_keys = [k for k, v in list(globals().items())
               if not k.startswith("_") and isinstance(v, (bool, int, float, str))]


# -----------------------------------------------------------------------------
# What differs from gpt.py. The training data: masked-LM batches from a prepared dataset (gpt.py's
# batches are plain text), labelled batches from label<TAB>text files (padded: gpt.py never pads).

def mask_tokens(idx, mask_id, n_text_tokens, mask_prob=0.15):
    """BERT's corruption: (B, T) ids -> (inputs, targets).

    Each text token is chosen with probability mask_prob, and every sequence gets at least one, so
    that no micro-batch is left without a loss. BERT chose 15%: with fewer, each sequence teaches too
    little; with more, too little context is left to predict from (though Wettig et al. 2023 found
    40% better for large models). Of the chosen tokens, 80% become [MASK], 10% a random text token
    and 10% stay themselves. targets holds the original id at chosen positions and -1 elsewhere, so the loss sees only them.
    Ids >= n_text_tokens are the special tokens appended to the vocabulary ([CLS], [SEP], ...): never
    chosen, never drawn as random replacements. Uses the global RNG, saved in checkpoints.
    """
    is_text = idx < n_text_tokens
    scores = torch.rand(idx.shape, device=idx.device)
    chosen = (scores < mask_prob) & is_text
    first = scores.masked_fill(~is_text, 2.0).argmin(dim=1)  # the likeliest-chosen text token of each row
    chosen[torch.arange(idx.size(0), device=idx.device), first] = True
    targets = torch.where(chosen, idx, -1)
    action = torch.rand(idx.shape, device=idx.device)
    inputs = torch.where(chosen & (action < 0.8), mask_id, idx)
    random_ids = torch.randint(n_text_tokens, idx.shape, device=idx.device)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, targets


def read_labelled(path):
    """A label<TAB>text file -> [(label, text)]; a malformed line is a ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found; write label<TAB>text lines there, or run "
                         f"python prepare_data.py shakespeare_speakers")
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            label, tab, text = line.partition("\t")
            if not tab or not label or not text:
                raise ValueError(f"{path} line {number} is not label<TAB>text: {line[:60]!r}")
            examples.append((label, text))
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


class MaskedLMBatches:
    """Masked-LM batches from a prepared dataset (prepare_data's train.bin / val.bin).

    Every sequence is [CLS] + block_size - 2 tokens of text + [SEP]: the layout a classifier
    fine-tuned later sees, so [CLS]'s position and role are already learned. get_batch returns
    (idx, targets, attention_mask, token_type_ids) like LabelledData; there is no padding (every row
    is full) and one segment, so the last two are None.
    """

    def __init__(self, data_dir, tokenizer, n_text_tokens, block_size, batch_size, device, mask_prob):
        self.tokens = prepare_data.BatchLoader(data_dir, block_size - 2, batch_size, device)
        self.tokenizer, self.n_text_tokens, self.mask_prob = tokenizer, n_text_tokens, mask_prob
        self.tokens_per_example = block_size  # every row is full: no padding

    def eval_batches(self, split, eval_iters):
        """eval_iters random masked batches: the masks differ at every evaluation, as in training."""
        for _ in range(eval_iters):
            yield self.get_batch(split)

    def get_batch(self, split):
        text, _ = self.tokens.get_batch(split)  # (B, block_size - 2); the shifted copy is for gpt.py
        cls = torch.full((text.size(0), 1), self.tokenizer.cls_id, dtype=text.dtype, device=text.device)
        sep = torch.full((text.size(0), 1), self.tokenizer.sep_id, dtype=text.dtype, device=text.device)
        idx, targets = mask_tokens(torch.cat([cls, text, sep], dim=1), self.tokenizer.mask_id,
                                   self.n_text_tokens, self.mask_prob)
        return idx, targets, None, None


class LabelledData:
    """A labelled dataset's train and val examples, tokenized and padded to block_size.

    Each text becomes [CLS] text [SEP]; one longer than block_size keeps its first block_size - 2 tokens
    (a warning says how many). Batches are padded to block_size, a fixed shape; attention_mask hides
    the padding. get_batch returns (idx, targets, attention_mask, token_type_ids), targets being the
    label ids (B,).
    """

    def __init__(self, examples, data_dir, tokenizer, labels, block_size, batch_size, device):
        self.device, self.batch_size = device, batch_size
        self.label_ids = {label: i for i, label in enumerate(labels)}
        self.data = {}
        truncated = 0
        for split in ("train", "val"):
            path = os.path.join(data_dir, f"{split}.tsv")
            rows = []
            for number, (label, text) in enumerate(examples[split], 1):
                if label not in self.label_ids:
                    raise ValueError(f"unknown label {label!r} in {path} (example {number}); the model knows "
                                     f"{', '.join(labels)}")
                try:
                    ids = tokenizer.encode(text)
                except ValueError as e:  # e.g. a character the char-level vocabulary never saw
                    raise ValueError(f"{path} example {number}: {e}") from None
                if len(ids) > block_size:
                    ids = ids[:block_size - 1] + [tokenizer.sep_id]
                    truncated += 1
                rows.append((ids, self.label_ids[label]))
            idx, attention_mask, token_type_ids = pad_batch([ids for ids, _ in rows], tokenizer, block_size)
            pad = block_size - idx.size(1)  # pad_batch pads to the longest; we want block_size exactly
            self.data[split] = (F.pad(idx, (0, pad), value=tokenizer.pad_id), torch.tensor([y for _, y in rows]),
                                F.pad(attention_mask, (0, pad)), F.pad(token_type_ids, (0, pad)))
        self.truncated = truncated
        # The real (unpadded) tokens of a training example, on average: what the model learns from.
        self.tokens_per_example = self.data["train"][2].sum().item() / self.size("train")

    def size(self, split):
        return len(self.data[split][1])

    def batch(self, split, rows):
        return tuple(t[rows].to(self.device) for t in self.data[split])

    def get_batch(self, split):
        """A random batch, drawn with the global RNG (saved in checkpoints, different per process)."""
        return self.batch(split, torch.randint(self.size(split), (self.batch_size,)))

    def eval_batches(self, split, eval_iters):
        """The whole split, or a fixed random subset of eval_iters batches if it is larger, so every
        evaluation scores the same examples. (Not the first ones: files are often sorted, e.g. by
        play, so those could be one class.)"""
        order = torch.randperm(self.size(split), generator=torch.Generator().manual_seed(0))
        rows = order[:eval_iters * self.batch_size]
        for start in range(0, len(rows), self.batch_size):
            yield self.batch(split, rows[start:start + self.batch_size])


def micro_batch_weights(targets, by_scored_count, world_size):
    """The factor each micro-batch's mean loss is multiplied by before backward, one per micro-batch
    (what differs from gpt.py, where every micro-batch weighs 1 / count).

    Classification weighs every micro-batch equally (each holds batch_size examples): 1 / count.
    MLM's micro-batches score different numbers of masked tokens, and the step's loss must be the
    sum over every masked token of every micro-batch on every process, divided by their total
    count: each micro-batch's mean is weighted by its own count over the total. (A mean of
    per-micro-batch means would give the tokens of a lightly masked micro-batch more weight.) DDP
    averages gradients over processes, so the weights are multiplied by world_size, making that
    average a sum; the total count is summed over processes with an all_reduce.
    """
    if not by_scored_count:
        return torch.full((len(targets),), 1.0 / len(targets))
    scored = torch.stack([(t != -1).sum() for t in targets]).float()  # (micro_batches,)
    total = scored.sum()
    if world_size > 1:
        torch.distributed.all_reduce(total)
    return scored * world_size / total


# -----------------------------------------------------------------------------
# What differs from gpt.py. The model: BERT's special tokens join the vocabulary, and fine-tuning
# puts a new classifier on a pretrained encoder, whose tokenizer comes with it.


def bert_from_scratch(cfg, dataset, labels):
    """init_from='scratch': (a new Bert, its tokenizer's meta). Where gpt.py's vocabulary is the
    dataset's, ours adds [PAD] [CLS] [SEP] [MASK] after it; a classifier trained from scratch has
    the characters of its labelled files as its vocabulary."""
    mlm = cfg["task"] == "mlm"
    meta = with_special_tokens(dataset if mlm else prepare_data.char_meta(
        "".join(text for split in ("train", "val") for _, text in dataset[split])))
    vocab_size = DatasetTokenizer(meta).vocab_size
    if vocab_size > 1024:  # large vocabularies: pad to a multiple of 64 for faster matmuls
        vocab_size = (vocab_size + 63) // 64 * 64
    model_keys = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "attention")
    try:
        # MLM pretraining has no use for the pooler (BERT trained it with next-sentence prediction).
        config = BertConfig(**{k: cfg[k] for k in model_keys}, vocab_size=vocab_size, n_inner=4 * cfg["n_embd"],
                            head="mlm" if mlm else "sequence", pooler=not mlm, labels=labels)
    except ValueError as e:
        fail(e)
    return Bert(config), meta


def pretrained_classifier(cfg, labels, runtime):
    """init_from=<a bert.py out_dir, a Hugging Face BERT directory or hub id>: (a pretrained encoder
    with a new classifier on top, its tokenizer's meta). gpt.py's load_openai_gpt2 keeps GPT-2's
    head; here the encoder is kept and the head is new, and the tokenizer is the checkpoint's."""
    source = cfg["init_from"]
    if cfg["task"] == "mlm":
        fail(f"init_from={source!r} with task='mlm': MLM trains from scratch or resumes; "
             f"to fine-tune a classifier set task='classify'")
    if os.path.isfile(os.path.join(source, "ckpt.pt")):
        pretrained = load_checkpoint(source, "bert")
        model = Bert(BertConfig(**(pretrained["model_args"] | {"dropout": cfg["dropout"], "head": "sequence",
                                                               "pooler": True, "labels": labels})))
        # Every pretrained tensor the classifier has; what is left (pooler, classifier) is new.
        encoder = {k: v for k, v in pretrained["model"].items() if not k.startswith(("mlm_", "pooler.", "classifier."))}
        unexpected = model.load_state_dict(encoder, strict=False).unexpected_keys
        if unexpected:
            fail(f"{source}/ckpt.pt has tensors a BERT classifier does not: {unexpected[:3]}")
        return model, pretrained["tokenizer"]

    def load():
        try:
            directory = hf_bert_directory(source)  # a hub id downloads once per machine
            model = Bert.from_pretrained(directory, dropout=cfg["dropout"], head="sequence", labels=labels)
            return (model, WordPieceTokenizer.from_pretrained(directory).to_meta()), None
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            return None, f"cannot load {source!r}: {e}"

    return local_rank0_first(load, runtime)


def training_batches(cfg, data_dir, dataset, tokenizer, labels, device):
    """The task's batches, each (idx, targets, attention_mask, token_type_ids): masked sequences of a
    prepared dataset, or labelled examples (gpt.py's BatchLoader gives plain (x, y) text)."""
    try:
        if cfg["task"] == "mlm":
            # The dataset's own tokens come first; the special tokens' ids follow them.
            n_text_tokens = tokenizer.vocab_size - len(tokenizer.special_tokens)
            return MaskedLMBatches(data_dir, tokenizer, n_text_tokens, cfg["block_size"], cfg["batch_size"], device,
                                   cfg["mask_prob"])
        return LabelledData(dataset, data_dir, tokenizer, labels, cfg["block_size"], cfg["batch_size"], device)
    except (prepare_data.DataError, ValueError) as e:
        fail(e)


@torch.no_grad()
def estimate_loss_and_accuracy(model, loader, cfg, runtime):
    """bert.py's evaluation, in place of gpt.py's estimate_loss: per split, the loss and the accuracy
    over every scored position (masked tokens for MLM, examples for classification), dropout off,
    averaged over the processes. Means over scored positions, not of per-batch means: a batch with
    more masked tokens weighs more, as it should."""
    model.eval()
    results = []
    for split in ("train", "val"):
        loss_sum, correct, count = 0.0, 0, 0
        for idx, targets, attention_mask, token_type_ids in loader.eval_batches(split, cfg["eval_iters"]):
            with runtime.autocast:
                logits, loss = model(idx, targets, attention_mask, token_type_ids)
            scored = targets != -1
            n = int(scored.sum())
            loss_sum += loss.item() * n
            correct += int((logits.argmax(dim=-1) == targets)[scored].sum())
            count += n
        results += [loss_sum / count, correct / count]
    model.train()
    return dict(zip(("train", "train_accuracy", "val", "val_accuracy"), mean_over_processes(results, runtime)))


# -----------------------------------------------------------------------------
# What differs from gpt.py. A second command: sentence similarities from a trained encoder.


def load_for_inference(name_or_dir, device="cpu"):
    """(model, tokenizer) from a bert.py out_dir (ckpt.pt), a Hugging Face BERT directory or a hub id."""
    if os.path.isfile(os.path.join(name_or_dir, "ckpt.pt")):
        checkpoint = load_checkpoint(name_or_dir, "bert")
        model = Bert(BertConfig(**checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"])
        return model.to(device).eval(), load_tokenizer(checkpoint["tokenizer"])
    directory = hf_bert_directory(name_or_dir)
    return Bert.from_pretrained(directory).to(device).eval(), WordPieceTokenizer.from_pretrained(directory)


def embed_main(argv):
    """python bert.py --embed --init_from=DIR "first sentence" "second sentence" ...

    Prints the cosine similarity of every pair of sentences, from their sentence_embeddings. DIR is
    a Hugging Face BERT directory or hub id (e.g. sentence-transformers/all-MiniLM-L6-v2) or a
    bert.py out_dir. The options are config keys, read by parse_config as training's are
    (--init_from=..., --device=...); every other argument is a sentence.
    """
    sentences = [arg for arg in argv if not arg.startswith("--") and arg != "-h"]
    cfg = parse_config([arg for arg in argv if arg not in sentences], {"init_from": "", "device": "cpu"})
    if not cfg["init_from"] or not sentences:
        fail('usage: python bert.py --embed --init_from=DIR "a sentence" "another sentence" ...')
    try:
        model, tokenizer = load_for_inference(cfg["init_from"], cfg["device"])
        vectors = sentence_embeddings(model, tokenizer, sentences)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        fail(e)
    similarities = vectors @ vectors.T  # unit vectors: dot product = cosine similarity
    width = max(len(s) for s in sentences)
    for i, sentence in enumerate(sentences):
        print(f"{sentence:{width}}  " + " ".join(f"{similarities[i, j].item():6.3f}" for j in range(len(sentences))))


def main(argv):
    if "--embed" in argv:  # the other command (embed_main, above): sentence similarities, no training
        return embed_main([arg for arg in argv if arg != "--embed"])
    # ---- the config: defaults, then config files and --key=value (a resume takes the checkpoint's) ----
    defaults = {k: globals()[k] for k in config_keys}
    cfg = parse_config(argv, defaults)
    checkpoint = None
    if cfg["init_from"] == "resume":
        checkpoint = load_checkpoint(cfg["out_dir"], "bert")
        # The dataset, the task (it sets the head) and the architecture are the checkpoint's: no override.
        cfg = resumed_config(argv, defaults, checkpoint, fixed=("dataset", "task", "n_layer", "n_head", "n_embd"))
    check_config(cfg)
    if cfg["task"] not in ("mlm", "classify"):
        fail(f"task={cfg['task']!r} must be 'mlm' (pretraining) or 'classify' (fine-tuning)")
    if not 0 < cfg["mask_prob"] < 1:
        fail(f"mask_prob={cfg['mask_prob']} must be between 0 and 1 (BERT: 0.15)")
    mlm = cfg["task"] == "mlm"

    # ---- devices, processes and precision ----
    runtime = start_processes(cfg)  # torchrun's rank, the device, autocast and the GradScaler (Part 3)
    device, master = runtime.device, runtime.rank == 0  # only rank 0 prints and writes files
    micro_steps = cfg["gradient_accumulation_steps"] // runtime.world_size  # this process's share of a step

    # ---- data: a prepared dataset (MLM), or label<TAB>text files (classify), which gpt.py does not have ----
    def prepare_dataset():
        try:
            if mlm:
                data_dir = prepare_data.ensure_prepared(cfg["dataset"])  # downloads and tokenizes if needed
                return (data_dir, prepare_data.load_meta(data_dir)), None
            data_dir = os.path.join("data", cfg["dataset"])
            if not os.path.exists(os.path.join(data_dir, "train.tsv")) and cfg["dataset"] in prepare_data.LABELLED_DATASETS:
                prepare_data.prepare(cfg["dataset"])
            return (data_dir, {split: read_labelled(os.path.join(data_dir, f"{split}.tsv")) for split in ("train", "val")}), None
        except (prepare_data.DataError, ValueError) as e:
            return None, str(e)

    data_dir, dataset = local_rank0_first(prepare_dataset, runtime)
    labels = () if mlm else tuple(sorted({label for label, _ in dataset["train"]}))  # a classifier's classes

    # ---- model: from scratch, from a checkpoint, or a pretrained encoder with a new classifier ----
    # What differs from gpt.py: the tokenizer comes with the model (an encoder reads its own vocabulary).
    if cfg["init_from"] == "scratch":
        model, meta = bert_from_scratch(cfg, dataset, labels)  # Part 2, above
    elif cfg["init_from"] == "resume":
        # Only dropout may change between runs (the other keys were checked against the checkpoint).
        model = Bert(BertConfig(**checkpoint["model_args"] | {"dropout": cfg["dropout"]}))
        model.load_state_dict(checkpoint["model"])
        meta, labels = checkpoint["tokenizer"], model.config.labels
    else:
        model, meta = pretrained_classifier(cfg, labels, runtime)  # Part 2, above
    if cfg["block_size"] > model.config.block_size:
        fail(f"block_size={cfg['block_size']} exceeds the model's {model.config.block_size}")
    tokenizer = load_tokenizer(meta)
    check_vocabulary_fits({"vocab_size": tokenizer.vocab_size}, model.config.vocab_size, cfg["dataset"])
    loader = training_batches(cfg, data_dir, dataset, tokenizer, labels, device)  # Part 2, above
    # Tokens per iteration count real tokens, not padding, as t5.py does (classification pads its examples).
    tokens_per_iter = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * loader.tokens_per_example
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
        model = compile_or_warn(model, runtime, lambda: loader.get_batch("train"))
    if runtime.ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=runtime.device_ids)
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        print("config:", json.dumps(cfg))
        print(f"parameters: {raw_model.num_params() / 1e6:.2f}M; tokens per iteration: {tokens_per_iter:,.0f} "
              f"({cfg['gradient_accumulation_steps']} x {cfg['batch_size']} x {loader.tokens_per_example:,.4g} real tokens)")
        if not mlm:
            print(f"classes: {', '.join(labels)}; {loader.size('train')} train and {loader.size('val')} val examples")
            if loader.truncated:
                print(f"warning: {loader.truncated} texts are longer than block_size={cfg['block_size']} tokens; "
                      f"only their first {cfg['block_size'] - 2} tokens are used")
    wandb = start_wandb(cfg, master)

    # ---- the training loop ----
    # gpt.py's loop, in gpt.py's order. What differs: the batches (masked sequences or labelled examples),
    # the accuracy beside the loss, and the weights that combine micro-batches into one step.
    metric = "masked-token accuracy" if mlm else "accuracy"
    resumed_at = iter_num if cfg["init_from"] == "resume" else None
    run_log = start_run_log(cfg, runtime, resumed_at, {"kind": "start", "iter": iter_num, "model_type": "bert",
                                                       "tokens_per_iter": tokens_per_iter, "config": cfg})
    model.train()
    timer = IterationTimer(iter_num)
    while True:
        lr = learning_rate_at(iter_num, cfg)  # linear warmup, then cosine decay (Part 3)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # A resumed run evaluated this iteration before saving it; eval_only evaluates it again.
        if iter_num % cfg["eval_interval"] == 0 and (iter_num != resumed_at or cfg["eval_only"]):
            losses = estimate_loss_and_accuracy(model, loader, cfg, runtime)  # Part 2, above
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                      f"train {metric} {losses['train_accuracy']:.4f}, val {metric} {losses['val_accuracy']:.4f}")
            log_eval(run_log, wandb, {"kind": "eval", "iter": iter_num, "tokens": iter_num * tokens_per_iter,
                                      "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr,
                                      "train_accuracy": losses["train_accuracy"], "val_accuracy": losses["val_accuracy"]})
            check_finite("val loss", losses["val"], iter_num, cfg)
            if iter_num > 0 and not cfg["eval_only"] and (losses["val"] < best_val_loss or cfg["always_save_checkpoint"]):
                best_val_loss = min(best_val_loss, losses["val"])
                rng_states = every_rank_rng_state(runtime)  # collective: every process takes part
                if master:
                    save_checkpoint(cfg["out_dir"], {
                        "model_type": "bert", "model_args": model_args, "model": raw_model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scaler": runtime.scaler.state_dict(),
                        "iter_num": iter_num, "best_val_loss": best_val_loss, "config": cfg, "tokenizer": meta,
                        "rng_state": rng_states})
            timer.restart(iter_num)  # keep evaluation out of the timing
        if cfg["eval_only"] or iter_num >= cfg["max_iters"]:
            break

        # The step's micro-batches are drawn up front: MLM's weights depend on all of them (see
        # micro_batch_weights); for classification every micro-batch weighs 1 / micro_steps.
        batches = [loader.get_batch("train") for _ in range(micro_steps)]
        weights = micro_batch_weights([targets for _, targets, _, _ in batches], mlm, runtime.world_size)
        train_loss = 0.0  # the step's loss, for the log
        for micro_step, (idx, targets, attention_mask, token_type_ids) in enumerate(batches):
            # Under DDP, gradients are averaged across processes only on the last micro-step.
            last = micro_step == micro_steps - 1
            with (model.no_sync() if runtime.ddp and not last else nullcontext()):
                with runtime.autocast:
                    _, loss = model(idx, targets, attention_mask, token_type_ids)
                    loss = loss * weights[micro_step]
                runtime.scaler.scale(loss).backward()
            train_loss += loss.detach()  # a tensor: no waiting for the GPU here
        runtime.scaler.unscale_(optimizer)  # the norm (logged) and clipping of the true gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"] or math.inf)  # 0: no clip
        runtime.scaler.step(optimizer)
        runtime.scaler.update()
        optimizer.zero_grad(set_to_none=True)

        if iter_num % cfg["log_interval"] == 0:
            loss_value = mean_over_processes([train_loss.item()], runtime)[0]  # .item() waits for the GPU
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
# Hugging Face BERT checkpoints: where they are, their config.json and tensor names, mapped to ours


def hf_bert_directory(name_or_dir):
    """The local directory of a Hugging Face BERT checkpoint: name_or_dir itself, or where a hub id
    was downloaded (once: later calls find it in the cache)."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    if name_or_dir.startswith("bert-") and "/" not in name_or_dir:
        name_or_dir = "google-bert/" + name_or_dir  # where Google's original BERTs live on the hub
    return download_hf_checkpoint(name_or_dir)


def hf_bert_config(name_or_dir, dropout, head, labels):
    """(directory, BertConfig, weights) of a Hugging Face BERT checkpoint, downloading a hub id first.

    The weights (HF's names without the "bert." prefix, views of the file: see read_safetensors) come
    along because config.json does not say whether the checkpoint has a pooler; its tensors do.
    head and labels: as Bert.from_pretrained's (None: the head config.json's architecture names).
    """
    directory = hf_bert_directory(name_or_dir)
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory} has no config.json: not a Hugging Face checkpoint directory")
    with open(config_path) as f:
        hf = json.load(f)
    if hf.get("model_type") != "bert":
        raise ValueError(f"{directory} holds a {hf.get('model_type')!r} model; bert.py loads only 'bert' checkpoints")
    for key, expected in [("hidden_act", "gelu"), ("position_embedding_type", "absolute"), ("is_decoder", False)]:
        if hf.get(key, expected) != expected:
            raise ValueError(f"unsupported BERT option {key}={hf[key]!r} in {config_path} (expected {expected!r})")
    architectures = {"BertModel": "none", "BertForMaskedLM": "mlm", "BertForPreTraining": "mlm",
                     "BertForSequenceClassification": "sequence", "BertForTokenClassification": "token"}
    architecture = (hf.get("architectures") or ["BertModel"])[0]
    if architecture not in architectures:
        raise ValueError(f"architecture {architecture!r} is not supported; bert.py loads {', '.join(architectures)}")
    hf_head = architectures[architecture]
    if head is None and hf_head in ("sequence", "token"):
        id2label = hf.get("id2label") or {str(i): f"LABEL_{i}" for i in range(hf.get("num_labels", 2))}
        labels = tuple(id2label[str(i)] for i in range(len(id2label)))
        if len(labels) < 2:
            raise ValueError(f"{len(labels)} label(s): regression heads (num_labels=1) are not supported")
    hf_state = {name.removeprefix("bert."): t for name, t in load_hf_weights(directory).items()}
    config = BertConfig(block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
                        type_vocab_size=hf.get("type_vocab_size", 2), n_layer=hf["num_hidden_layers"],
                        n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
                        n_inner=hf["intermediate_size"], dropout=dropout,
                        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), head=head or hf_head,
                        pooler="pooler.dense.weight" in hf_state or head == "sequence", labels=labels)
    return directory, config, hf_state


def hf_bert_state_dict(hf_state, ours, dtype, directory, new_head):
    """HF BERT's tensors under our names, in dtype; ours: the model's state dict (names, shapes).

    new_head: the model's head replaces the checkpoint's, whose tensors are skipped; the new head's
    tensors (and a pooler's the checkpoint lacks) are made here with BERT's initialisation, as
    Bert._init_weights gives them: matrices from N(0, 0.02), LayerNorm gains 1, biases 0.
    """
    # HF name -> our name. Old TensorFlow-converted checkpoints call LayerNorm's weight and bias
    # gamma and beta; HF's q/k/v Linears are gathered and concatenated into our fused c_attn.
    def rename(name):
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        for hf_part, our_part in [("embeddings.word_embeddings.", "embeddings.wte."),
                                  ("embeddings.position_embeddings.", "embeddings.wpe."),
                                  ("embeddings.token_type_embeddings.", "embeddings.wtt."),
                                  ("embeddings.LayerNorm.", "embeddings.ln."),
                                  ("encoder.layer.", "h."), (".attention.output.dense.", ".attn.c_proj."),
                                  (".attention.output.LayerNorm.", ".ln_1."), (".intermediate.dense.", ".mlp.c_fc."),
                                  (".output.dense.", ".mlp.c_proj."), (".output.LayerNorm.", ".ln_2."),
                                  ("pooler.dense.", "pooler."), ("cls.predictions.transform.dense.", "mlm_dense."),
                                  ("cls.predictions.transform.LayerNorm.", "mlm_ln.")]:
            name = name.replace(hf_part, our_part)
        return "mlm_bias" if name == "cls.predictions.bias" else name

    state = {}
    qkv = {}  # (layer, 'weight' | 'bias') -> {'query': t, 'key': t, 'value': t}
    for hf_name, tensor in hf_state.items():
        if hf_name.endswith("position_ids") or hf_name.startswith("cls.seq_relationship."):
            continue  # a buffer of 0..T-1, and BertForPreTraining's next-sentence head
        if hf_name.startswith("cls.predictions.decoder."):
            continue  # tied to the word embeddings, and its bias is cls.predictions.bias
        if ".attention.self." in hf_name:
            layer = int(hf_name.split(".")[2])
            part, kind = hf_name.split(".")[-2:]
            qkv.setdefault((layer, kind), {})[part] = tensor
            continue
        key = rename(hf_name)
        if key not in ours:
            if new_head and (hf_name.startswith(("cls.", "classifier.")) or key == "mlm_bias"):
                continue  # the checkpoint's own head, replaced by the one asked for
            raise ValueError(f"unexpected tensor {hf_name!r} in the checkpoint at {directory}")
        state[key] = tensor
    for (layer, kind), parts in qkv.items():
        key = f"h.{layer}.attn.c_attn.{kind}"
        if set(parts) != {"query", "key", "value"} or key not in ours:
            raise ValueError(f"checkpoint at {directory} has an incomplete or extra attention layer {layer}")
        state[key] = torch.cat([parts["query"], parts["key"], parts["value"]])
    missing = [key for key in ours if key not in state]
    new = [key for key in missing if new_head and key.startswith(("classifier.", "mlm_", "pooler."))]
    if len(new) < len(missing):
        raise ValueError(f"checkpoint at {directory} lacks {sorted(set(missing) - set(new))[:5]}")
    for key in new:
        tensor = torch.zeros(ours[key].shape)
        if tensor.dim() == 2:
            nn.init.normal_(tensor, mean=0.0, std=0.02)
        elif key.endswith(".weight"):  # a LayerNorm's gain
            nn.init.ones_(tensor)
        state[key] = tensor
    for key, tensor in state.items():
        if tensor.shape != ours[key].shape:
            raise ValueError(f"shape mismatch for {key}: checkpoint {tuple(tensor.shape)}, model {tuple(ours[key].shape)}")
        state[key] = tensor.to(dtype)  # the tensor itself (a view of the file) when the dtype matches
    return state
# -----------------------------------------------------------------------------
# Shared by convention: every function below is identical in every model script (bigram.py,
# gpt.py, llama.py, olmo.py, bert.py, t5.py; tests/test_template.py keeps them so). Read them once,
# in gpt.py: a fix to one is made in all. (gpt.py's estimate_loss is not here: bert.py evaluates
# with estimate_loss_and_accuracy, in Part 2.)


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
