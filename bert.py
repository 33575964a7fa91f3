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
    python bert.py --embed --init_from=path/to/all-MiniLM-L6-v2 "A sentence." "Another one."
and in Python:
    model = Bert.from_pretrained("path/to/hf_bert_dir")         # BertModel / ForMaskedLM / ForSequenceClassification
    tokenizer = WordPieceTokenizer.from_pretrained("path/to/hf_bert_dir")
    vectors = sentence_embeddings(model, tokenizer, ["A sentence.", "Another one."])
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

    GELU(x) = x * Phi(x), Phi the standard normal CDF, computed with erf. (GPT-2 used a tanh
    approximation of it; BERT's weights were trained with the exact form, and the two differ by up
    to ~1e-3, more than our 1e-4 parity test allows.)
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

    def encode(self, idx, attention_mask=None, token_type_ids=None):
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
        hidden = self.encode(idx, attention_mask, token_type_ids)
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
    def from_pretrained(cls, directory, dropout=0.0, head=None, labels=(), dtype=None):
        """Build a Bert from a Hugging Face BERT checkpoint directory (config.json plus
        model.safetensors or pytorch_model.bin).

        The head follows config.json's "architectures": BertModel -> 'none', BertForMaskedLM and
        BertForPreTraining -> 'mlm', BertForSequenceClassification -> 'sequence',
        BertForTokenClassification -> 'token'. Passing head= (and labels=) overrides that, e.g. to
        start a classifier from a BertModel or MLM checkpoint: the encoder (and pooler, where the
        checkpoint has one) are loaded; the new head (and a missing pooler) start from BERT's init.
        dtype (e.g. torch.bfloat16) converts the weights after loading; None keeps float32.
        """
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
        has_pooler = "pooler.dense.weight" in hf_state
        config = BertConfig(block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
                            type_vocab_size=hf.get("type_vocab_size", 2), n_layer=hf["num_hidden_layers"],
                            n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
                            n_inner=hf["intermediate_size"], dropout=dropout,
                            layer_norm_eps=hf.get("layer_norm_eps", 1e-12), head=head or hf_head,
                            pooler=has_pooler or head == "sequence", labels=labels)
        model = cls(config)
        ours = model.state_dict()

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

        qkv = {}  # (layer, 'weight' | 'bias') -> {'query': t, 'key': t, 'value': t}
        loaded = set()
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
                if head is not None and (hf_name.startswith(("cls.", "classifier.")) or key == "mlm_bias"):
                    continue  # the checkpoint's own head, replaced by the one asked for
                raise ValueError(f"unexpected tensor {hf_name!r} in the checkpoint at {directory}")
            loaded.add(key)
            model._copy_weight(key, tensor, hf_name)
        for (layer, kind), parts in qkv.items():
            key = f"h.{layer}.attn.c_attn.{kind}"
            if set(parts) != {"query", "key", "value"} or key not in ours:
                raise ValueError(f"checkpoint at {directory} has an incomplete or extra attention layer {layer}")
            model._copy_weight(key, torch.cat([parts["query"], parts["key"], parts["value"]]), key)
            loaded.add(key)
        fresh = ("classifier.", "mlm_", "pooler.") if head is not None else ()  # a new head starts from its init
        missing = [k for k in ours if k not in loaded and not (fresh and k.startswith(fresh))]
        if missing:
            raise ValueError(f"checkpoint at {directory} lacks {sorted(missing)[:5]}")
        return model if dtype is None else model.to(dtype)

    def _copy_weight(self, key, tensor, source_name):
        target = self.state_dict()[key]
        if tensor.shape != target.shape:
            raise ValueError(f"shape mismatch for {source_name}: checkpoint {tuple(tensor.shape)}, model {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(tensor.to(target.dtype))

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
# Reading Hugging Face checkpoints without extra dependencies (gpt.py's)


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


# -----------------------------------------------------------------------------
# The WordPiece tokenizer
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


@functools.lru_cache(maxsize=1 << 16)
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
    """BERT's input layout, shared by both tokenizers below (each brings its own tokenize(text) and
    cls_id / sep_id): [CLS] text [SEP], or [CLS] text [SEP] pair [SEP], with segment ids."""

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
    """

    def __init__(self, vocab, do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True,
                 max_input_chars_per_word=100):
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
        self.special_tokens = [t for t in SPECIAL_TOKENS if t in self.token_to_id]
        self.special_ids_by_token = {t: self.token_to_id[t] for t in self.special_tokens}
        self.special_ids = set(self.special_ids_by_token.values())
        self._special_pattern = re.compile("(" + "|".join(re.escape(t) for t in self.special_tokens) + ")")
        self.cls_id, self.sep_id = self.token_to_id["[CLS]"], self.token_to_id["[SEP]"]
        self.unk_id = self.token_to_id["[UNK]"]
        self.mask_id, self.pad_id = self.token_to_id.get("[MASK]"), self.token_to_id.get("[PAD]", 0)
        # Memos: a text uses few distinct characters, and words repeat (Zipf's law), so each distinct
        # character is classified and each distinct word split only once (3-5x faster on real text).
        self._clean_char = functools.lru_cache(maxsize=1 << 16)(self._clean_one_char)
        self.wordpiece = functools.lru_cache(maxsize=1 << 16)(self._wordpiece)

    @classmethod
    def from_pretrained(cls, directory):
        """Read vocab.txt and, where present, tokenizer_config.json (do_lower_case and friends)."""
        vocab_path = os.path.join(directory, "vocab.txt")
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(f"{directory} has no vocab.txt: not a BERT tokenizer directory")
        with open(vocab_path, encoding="utf-8") as f:
            vocab = [line.rstrip("\n") for line in f]
        options = {}
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                options = json.load(f)
        try:
            return cls(vocab, do_lower_case=options.get("do_lower_case", True),
                       strip_accents=options.get("strip_accents"),
                       tokenize_chinese_chars=options.get("tokenize_chinese_chars", True))
        except ValueError as e:
            raise ValueError(f"{vocab_path}: {e}") from None

    def to_meta(self):
        """A plain dict for a checkpoint's "tokenizer" entry (load_tokenizer rebuilds the tokenizer)."""
        return {"tokenizer": "wordpiece", "vocab_size": self.vocab_size,
                "wordpiece": {"vocab": self.vocab, "options": {
                    "do_lower_case": self.do_lower_case, "strip_accents": self.strip_accents,
                    "tokenize_chinese_chars": self.tokenize_chinese_chars,
                    "max_input_chars_per_word": self.max_input_chars_per_word}}}

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

    def tokenize(self, text):
        """Text -> ids, without [CLS]/[SEP]. Special tokens written in the text ("[MASK]") are kept whole."""
        ids = []
        # The capturing group makes re.split keep the special tokens: 'a [MASK] b' -> ['a ', '[MASK]', ' b'].
        for part in self._special_pattern.split(text):
            if part in self.special_ids_by_token:
                ids.append(self.special_ids_by_token[part])
            else:
                for word in self.basic_tokenize(part):
                    ids += self.wordpiece(word)
        return ids

    def decode(self, ids):
        """Ids -> text: special tokens dropped, pieces joined, "##" continuations glued to their word,
        and no space before . , ! ? (as HF's decode). Lossy by design: "Hello (World)" comes back as
        "hello ( world )" from an uncased vocabulary."""
        text = " ".join(self.vocab[i] for i in ids if i not in self.special_ids).replace(" ##", "")
        for mark in ".,!?":
            text = text.replace(" " + mark, mark)
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
        self.special_ids_by_token = dict(meta["special_tokens"])
        self.special_tokens = list(self.special_ids_by_token)
        self.special_ids = set(self.special_ids_by_token.values())
        self.vocab_size = meta["vocab_size"] + len(self.special_tokens)
        self.cls_id, self.sep_id = self.special_ids_by_token["[CLS]"], self.special_ids_by_token["[SEP]"]
        self.mask_id, self.pad_id = self.special_ids_by_token["[MASK]"], self.special_ids_by_token["[PAD]"]
        self._special_pattern = re.compile("(" + "|".join(re.escape(t) for t in self.special_tokens) + ")")

    def tokenize(self, text):
        ids = []
        for part in self._special_pattern.split(text):
            if part in self.special_ids_by_token:
                ids.append(self.special_ids_by_token[part])
            elif part:
                ids += self.base.encode(part)
        return ids

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
        hidden = model.encode(idx, attention_mask, token_type_ids).float()  # (B, T, C)
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


# -----------------------------------------------------------------------------
# Training data: masked-LM batches from a prepared dataset, labelled batches from label<TAB>text files

def mask_tokens(idx, mask_id, n_text_tokens, mask_prob=0.15):
    """BERT's corruption: (B, T) ids -> (inputs, targets).

    A share mask_prob of the text tokens is chosen (BERT's 15%: fewer gives too little signal per
    sequence, more leaves too little context to predict from; Wettig et al. 2023 found 40% better
    for large models) (at least one per sequence, so that no micro-batch is left
    without a loss); 80% of the chosen become [MASK], 10% a random text token, 10% stay themselves.
    targets holds the original id at chosen positions and -1 elsewhere, so the loss sees only them.
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

    def size(self, split):
        return len(self.data[split][1])

    def batch(self, split, rows):
        return tuple(t[rows].to(self.device) for t in self.data[split])

    def get_batch(self, split):
        """A random batch, drawn with the global RNG (saved in checkpoints, different per process)."""
        return self.batch(split, torch.randint(self.size(split), (self.batch_size,)))


# -----------------------------------------------------------------------------
# Training configuration. Every simple value below can be overridden by config files and
# --key=value arguments (see parse_config). The defaults pretrain BERT-base-sized MLM on Shakespeare.

# I/O
out_dir = "out-bert"
eval_interval = 250
log_interval = 10
eval_iters = 200  # MLM: random batches per estimate; classify: at most this many batches, in order
eval_only = False
always_save_checkpoint = True
# 'scratch', 'resume' (out_dir/ckpt.pt), or, to fine-tune a classifier, a bert.py out_dir (its MLM
# checkpoint) or a Hugging Face BERT directory
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
seed = 1337

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
    if "--embed" in argv:
        return embed_main([arg for arg in argv if arg != "--embed"])
    cfg = parse_config(argv, {k: globals()[k] for k in config_keys})
    check_config(cfg)
    if cfg["task"] not in ("mlm", "classify"):
        fail(f"task={cfg['task']!r} must be 'mlm' (pretraining) or 'classify' (fine-tuning)")
    if not 0 < cfg["mask_prob"] < 1:
        fail(f"mask_prob={cfg['mask_prob']} must be between 0 and 1 (BERT: 0.15)")
    mlm = cfg["task"] == "mlm"

    # ---- devices, processes and precision ----
    ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun?
    rank, local_rank, world_size = 0, 0, 1
    if ddp:
        rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if cfg["gradient_accumulation_steps"] % world_size != 0:
            fail(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be divisible by the "
                 f"number of processes ({world_size})")
    micro_steps = cfg["gradient_accumulation_steps"] // world_size  # this process's share of one step
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
        nccl = device_type == "cuda" and torch.distributed.is_nccl_available()
        backend = cfg["backend"] if cfg["backend"] != "auto" else ("nccl" if nccl else "gloo")
        torch.distributed.init_process_group(backend=backend)
    device = cfg["device"]
    torch.manual_seed(cfg["seed"] + rank)  # each process draws its own batches, masks and dropout
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    autocast = (nullcontext() if cfg["dtype"] == "float32"
                else torch.autocast(device_type=device_type, dtype=dtypes[cfg["dtype"]]))
    scaler = torch.amp.GradScaler(device_type, enabled=(cfg["dtype"] == "float16"))

    # ---- data ----
    # Pretraining reads a prepared dataset (token files); fine-tuning reads data/<dataset>/train.tsv
    # and val.tsv, tokenized below by the tokenizer that comes with the model.
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

    data_dir, dataset = local_rank0_first(prepare_dataset, ddp, local_rank)
    tokens_per_iter = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]

    # ---- model ----
    # For fine-tuning, the tokenizer comes with the model: the MLM checkpoint's, the HF directory's
    # vocab.txt, or (from scratch) the characters of the labelled files. The classes are train.tsv's.
    iter_num, best_val_loss, checkpoint = 0, float("inf"), None
    labels = () if mlm else tuple(sorted({label for label, _ in dataset["train"]}))
    model_keys = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "attention")
    if cfg["init_from"] == "scratch":
        # The dataset's vocabulary plus [PAD] [CLS] [SEP] [MASK] after it.
        meta = with_special_tokens(dataset if mlm else prepare_data.char_meta(
            "".join(text for split in ("train", "val") for _, text in dataset[split])))
        tokenizer = DatasetTokenizer(meta)
        vocab_size = tokenizer.vocab_size
        if vocab_size > 1024:  # large vocabularies: pad to a multiple of 64 for faster matmuls
            vocab_size = (vocab_size + 63) // 64 * 64
        try:
            # MLM pretraining has no use for the pooler (BERT trained it with next-sentence prediction).
            config = BertConfig(**{k: cfg[k] for k in model_keys}, vocab_size=vocab_size, n_inner=4 * cfg["n_embd"],
                                head="mlm" if mlm else "sequence", pooler=not mlm, labels=labels)
        except ValueError as e:
            fail(e)
        model = Bert(config)
    elif cfg["init_from"] == "resume":
        checkpoint = load_checkpoint(cfg["out_dir"], device, "bert")
        # The architecture comes from the checkpoint; only dropout may change between runs.
        model_args = checkpoint["model_args"] | {"dropout": cfg["dropout"]}
        if (model_args["head"] == "mlm") != mlm:
            fail(f"{cfg['out_dir']}/ckpt.pt holds a {model_args['head']!r} model; resume it with the task it was "
                 f"trained for (task={'mlm' if model_args['head'] == 'mlm' else 'classify'})")
        model = Bert(BertConfig(**model_args))
        model.load_state_dict(checkpoint["model"])
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
        meta, labels = checkpoint["tokenizer"], model.config.labels
        tokenizer = load_tokenizer(meta)
    else:
        # Fine-tuning a pretrained encoder: keep its encoder, put a new classifier on top.
        source = cfg["init_from"]
        if mlm:
            fail(f"init_from={source!r} with task='mlm': MLM trains from scratch or resumes; "
                 f"to fine-tune a classifier set task='classify'")
        if os.path.isfile(os.path.join(source, "ckpt.pt")):
            pretrained = load_checkpoint(source, "cpu", "bert")
            model = Bert(BertConfig(**(pretrained["model_args"] | {"dropout": cfg["dropout"], "head": "sequence",
                                                                   "pooler": True, "labels": labels})))
            # Every pretrained tensor the classifier has; what is left (pooler, classifier) is new.
            encoder = {k: v for k, v in pretrained["model"].items() if not k.startswith(("mlm_", "pooler.", "classifier."))}
            unexpected = model.load_state_dict(encoder, strict=False).unexpected_keys
            if unexpected:
                fail(f"{source}/ckpt.pt has tensors a BERT classifier does not: {unexpected[:3]}")
            meta = pretrained["tokenizer"]
            tokenizer = load_tokenizer(meta)
        else:
            try:
                model = Bert.from_pretrained(source, dropout=cfg["dropout"], head="sequence", labels=labels)
                tokenizer = WordPieceTokenizer.from_pretrained(source)
            except (ValueError, FileNotFoundError) as e:
                fail(f"cannot load {source!r}: {e}")
            meta = tokenizer.to_meta()
    model_args = asdict(model.config)
    if cfg["block_size"] > model.config.block_size:
        fail(f"block_size={cfg['block_size']} exceeds the model's {model.config.block_size}")
    try:
        if mlm:
            # meta["vocab_size"] counts the dataset's own tokens; the special tokens' ids come after them.
            loader = MaskedLMBatches(data_dir, tokenizer, meta["vocab_size"], cfg["block_size"], cfg["batch_size"],
                                     device, cfg["mask_prob"])
        else:
            loader = LabelledData(dataset, data_dir, tokenizer, labels, cfg["block_size"], cfg["batch_size"], device)
    except (prepare_data.DataError, ValueError) as e:
        fail(e)
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
        if not mlm:
            print(f"classes: {', '.join(labels)}; {loader.size('train')} train and {loader.size('val')} val examples")
            if loader.truncated:
                print(f"warning: {loader.truncated} texts are longer than block_size={cfg['block_size']} tokens; "
                      f"only their first {cfg['block_size'] - 2} tokens are used")
    wandb = None
    if cfg["wandb_log"] and master:
        try:
            import wandb
        except ImportError:
            fail("wandb_log=True but wandb is not installed: pip install wandb")
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

    def mean_over_processes(values):
        """Average a few floats over all processes (each has measured its own batches)."""
        if not ddp:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(total)  # a sum: gloo has no average
        return (total / world_size).tolist()

    def eval_batches(split):
        """MLM: eval_iters random masked batches. Classification: the whole split, or a fixed random
        subset of eval_iters batches if it is larger, so every evaluation scores the same examples.
        (Not the first ones: files are often sorted, e.g. by play, so those could be one class.)"""
        if mlm:
            for _ in range(cfg["eval_iters"]):
                yield loader.get_batch(split)
            return
        order = torch.randperm(loader.size(split), generator=torch.Generator().manual_seed(0))
        rows = order[:cfg["eval_iters"] * cfg["batch_size"]]
        for start in range(0, len(rows), cfg["batch_size"]):
            yield loader.batch(split, rows[start:start + cfg["batch_size"]])

    @torch.no_grad()
    def estimate_loss():
        """Per split, the loss and the accuracy over every scored position (masked tokens for MLM,
        examples for classification), dropout off, averaged over the processes. Means over scored
        positions, not of per-batch means: a batch with more masked tokens weighs more, as it should."""
        model.eval()
        results = []
        for split in ("train", "val"):
            loss_sum, correct, count = 0.0, 0, 0
            for idx, targets, attention_mask, token_type_ids in eval_batches(split):
                with autocast:
                    logits, loss = model(idx, targets, attention_mask, token_type_ids)
                scored = targets != -1
                n = int(scored.sum())
                loss_sum += loss.item() * n
                correct += int((logits.argmax(dim=-1) == targets)[scored].sum())
                count += n
            results += [loss_sum / count, correct / count]
        model.train()
        return dict(zip(("train", "train_accuracy", "val", "val_accuracy"), mean_over_processes(results)))

    def save_checkpoint(rng_states):
        checkpoint = {
            "model_type": "bert",
            "model_args": model_args,
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
        try:  # write then rename: a crash mid-write leaves the previous checkpoint intact
            torch.save(checkpoint, path + ".tmp")
            os.replace(path + ".tmp", path)
        except OSError as e:
            fail(f"could not write {path} ({e}); the previous checkpoint, if any, is intact")
        print(f"saved checkpoint to {path}")

    # ---- the training loop ----
    # gpt.py's loop, in gpt.py's order: evaluate (and checkpoint) the current weights, then take one
    # optimizer step, so that a resumed run repeats exactly what the original did next. What differs:
    # the batches (masked sequences or labelled examples), the accuracy beside the loss, and the
    # weights that combine micro-batches into one step.
    metric = "masked-token accuracy" if mlm else "accuracy"
    peak_flops = gpu_peak_flops(torch.cuda.get_device_name(device)) if device_type == "cuda" else None
    resumed_at = iter_num if checkpoint is not None else None
    checkpoint = None  # free the loaded copy
    # out_dir/log.jsonl: every log and eval line as JSON, for plot.py to draw (rank 0 writes it;
    # eval_only writes nothing). None: no log.
    run_log = None
    if master and not cfg["eval_only"]:
        run_log = start_run_log(os.path.join(cfg["out_dir"], "log.jsonl"), resumed_at,
                                {"kind": "start", "iter": iter_num, "model_type": "bert",
                                 "tokens_per_iter": tokens_per_iter, "config": cfg})
    model.train()
    t_last, iter_timed = time.time(), iter_num
    while True:
        lr = lr_at(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # A resumed run evaluated this iteration before saving it; eval_only evaluates it again.
        if iter_num % cfg["eval_interval"] == 0 and (iter_num != resumed_at or cfg["eval_only"]):
            losses = estimate_loss()
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                      f"train {metric} {losses['train_accuracy']:.4f}, val {metric} {losses['val_accuracy']:.4f}")
                if wandb:
                    wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"],
                               "train/accuracy": losses["train_accuracy"], "val/accuracy": losses["val_accuracy"], "lr": lr})
                if run_log:
                    append_run_log(run_log, {"kind": "eval", "iter": iter_num, "tokens": iter_num * tokens_per_iter,
                                             "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr,
                                             "train_accuracy": losses["train_accuracy"],
                                             "val_accuracy": losses["val_accuracy"]})
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

        # The step's micro-batches are drawn up front: MLM's weights depend on all of them (see
        # micro_batch_weights); for classification every micro-batch weighs 1 / micro_steps.
        batches = [loader.get_batch("train") for _ in range(micro_steps)]
        weights = micro_batch_weights([targets for _, targets, _, _ in batches], mlm, world_size)
        train_loss = 0.0  # the step's loss, for the log (averaged over processes when logged)
        for micro_step, (idx, targets, attention_mask, token_type_ids) in enumerate(batches):
            # Under DDP, gradients are averaged across processes only on the last micro-step.
            last = micro_step == micro_steps - 1
            with (model.no_sync() if ddp and not last else nullcontext()):
                with autocast:
                    _, loss = model(idx, targets, attention_mask, token_type_ids)
                    loss = loss * weights[micro_step]
                scaler.scale(loss).backward()
            train_loss += loss.detach()
        if cfg["grad_clip"] > 0:  # clip the true (unscaled) global gradient norm
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

        if iter_num % cfg["log_interval"] == 0:
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


def micro_batch_weights(targets, by_scored_count, world_size):
    """The factor each micro-batch's mean loss is multiplied by before backward, one per micro-batch.

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


def load_for_inference(directory, device="cpu"):
    """(model, tokenizer) from a bert.py out_dir (ckpt.pt) or a Hugging Face BERT directory."""
    if os.path.isfile(os.path.join(directory, "ckpt.pt")):
        checkpoint = load_checkpoint(directory, device, "bert")
        model = Bert(BertConfig(**checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"])
        return model.to(device).eval(), load_tokenizer(checkpoint["tokenizer"])
    model = Bert.from_pretrained(directory).to(device).eval()
    return model, WordPieceTokenizer.from_pretrained(directory)


def embed_main(argv):
    """python bert.py --embed --init_from=DIR "first sentence" "second sentence" ...

    Prints the cosine similarity of every pair of sentences, from their sentence_embeddings.
    DIR is a Hugging Face BERT directory (e.g. all-MiniLM-L6-v2) or a bert.py out_dir.
    """
    options = {"init_from": None, "device": "cpu"}
    sentences = []
    for arg in argv:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            if key not in options or not value:
                fail(f"--embed takes --init_from=DIR, --device=DEVICE and sentences; got {arg!r}")
            options[key] = value
        else:
            sentences.append(arg)
    if options["init_from"] is None or not sentences:
        fail('usage: python bert.py --embed --init_from=DIR "a sentence" "another sentence" ...')
    try:
        model, tokenizer = load_for_inference(options["init_from"], options["device"])
        vectors = sentence_embeddings(model, tokenizer, sentences)
    except (ValueError, FileNotFoundError) as e:
        fail(e)
    similarities = vectors @ vectors.T  # unit vectors: dot product = cosine similarity
    width = max(len(s) for s in sentences)
    for i, sentence in enumerate(sentences):
        print(f"{sentence:{width}}  " + " ".join(f"{similarities[i, j].item():6.3f}" for j in range(len(sentences))))


if __name__ == "__main__":
    main(sys.argv[1:])
