"""t5.py: parity with Hugging Face T5 (v1.0 and v1.1), attention paths, masks, decoding, bad input."""
import math
import os
import subprocess
import sys

import pytest
import torch

import t5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    args = dict(block_size=64, target_block_size=48, vocab_size=53, n_layer=2, n_decoder_layer=2, n_head=4,
                n_embd=32, head_dim=8, n_ff=64, num_buckets=8, max_distance=20, dropout=0.0)
    return t5.T5Config(**(args | overrides))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return t5.T5(tiny_config()).eval()


def padded_batch(vocab=53, lengths=(30, 17, 25), seed=3):
    """Right-padded input ids and their attention mask: rows of different real lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


# -----------------------------------------------------------------------------
# Hugging Face parity


def save_random_hf_t5(directory, version, safe=True):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    v11 = version == "v1.1"
    config = transformers.T5Config(
        vocab_size=99, d_model=32, d_kv=12, d_ff=56, num_layers=2, num_decoder_layers=3, num_heads=3,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if v11 else "relu", tie_word_embeddings=not v11,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    # Random init leaves the norm gains at 1; perturb them so that a dropped or misplaced gain shows.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(directory, safe_serialization=safe)
    return hf


@pytest.mark.parametrize("version,safe", [("v1.0", True), ("v1.1", True), ("v1.0", False)],
                         ids=["v1.0", "v1.1", "v1.0-pytorch_bin"])
def test_logits_match_hf_t5_with_padding(tmp_path, version, safe):
    hf = save_random_hf_t5(tmp_path, version, safe)
    ours = t5.T5.from_pretrained(str(tmp_path)).eval()
    assert ours.config.tie_embeddings == (version == "v1.0")
    assert ours.config.feed_forward == ("relu" if version == "v1.0" else "gated-gelu")
    # Inputs longer than max_distance=20 so that the log-spaced and the clamped buckets are used.
    ids, mask = padded_batch(vocab=99, lengths=(30, 17, 25))
    dec = torch.randint(2, 99, (3, 26))
    labels = torch.randint(2, 99, (3, 26))
    labels[1, 20:] = -100
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, labels=labels)
        logits, loss = ours(ids, dec, attention_mask=mask, targets=labels)
    torch.testing.assert_close(logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, expected.loss, rtol=1e-4, atol=1e-4)


def test_relative_position_buckets_match_hf():
    transformers = pytest.importorskip("transformers")
    bucket_fn = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    offsets = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for num_buckets, max_distance in ((32, 128), (8, 20)):
            expected = bucket_fn(offsets, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
            assert torch.equal(t5.relative_position_bucket(offsets, bidirectional, num_buckets, max_distance), expected)
