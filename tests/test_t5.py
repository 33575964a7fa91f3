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


def save_random_hf_t5(directory, version, safe=True, num_decoder_layers=3):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    v11 = version == "v1.1"
    config = transformers.T5Config(
        vocab_size=99, d_model=32, d_kv=12, d_ff=56, num_layers=2, num_decoder_layers=num_decoder_layers, num_heads=3,
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


def varied_hf(tmp_path):
    """A random HF T5 v1.1 whose greedy outputs vary and end at different lengths.

    At its initial scale a random T5 repeats one token forever; larger projections and relative
    position biases make the outputs depend on position, and picking a token those outputs contain
    (71) as </s> makes rows end at different steps."""
    hf = save_random_hf_t5(tmp_path, "v1.1", num_decoder_layers=2)  # equal depths: HF's generation cache needs them
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "relative_attention_bias" in name:
                p.mul_(10.0)
            elif p.dim() == 2 and not name.startswith(("shared", "lm_head")):
                p.mul_(3.0)
    hf.config.eos_token_id = hf.generation_config.eos_token_id = 71
    hf.save_pretrained(tmp_path)
    return hf


def test_greedy_generation_matches_hf(tmp_path):
    hf = varied_hf(tmp_path)
    ours = t5.T5.from_pretrained(str(tmp_path)).eval()
    ids, mask = padded_batch(vocab=99, lengths=(12, 7, 9, 11), seed=5)
    expected = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False, num_beams=1)
    out = ours.generate(ids, 20, attention_mask=mask, temperature=0.0)
    assert (out == 71).any(dim=1).sum() >= 2  # some rows really stopped at </s>
    assert torch.equal(out, expected)


@pytest.mark.parametrize("early_stopping,length_penalty", [(True, 1.0), (False, 0.6)])
def test_beam_search_matches_hf(tmp_path, early_stopping, length_penalty):
    hf = varied_hf(tmp_path)
    ours = t5.T5.from_pretrained(str(tmp_path)).eval()
    ids, mask = padded_batch(vocab=99, lengths=(12, 7, 9, 11), seed=5)
    expected = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, do_sample=False, num_beams=4,
                           num_return_sequences=2, length_penalty=length_penalty, early_stopping=early_stopping,
                           output_scores=True, return_dict_in_generate=True)
    sequences, scores = ours.beam_search(ids, 15, attention_mask=mask, beam_size=4, length_penalty=length_penalty,
                                         early_stopping=early_stopping, num_return_sequences=2)
    assert (sequences == 71).any(dim=1).sum() >= 2
    # transformers fills finished beams with </s> (this config names no separate pad for generation); we use <pad>.
    hf_sequences = expected.sequences
    after_eos = torch.cumsum((hf_sequences == 71).long(), dim=1) - (hf_sequences == 71).long() > 0
    hf_sequences = hf_sequences.masked_fill(after_eos, 0)
    assert torch.equal(sequences, hf_sequences[:, :sequences.size(1)])
    assert (hf_sequences[:, sequences.size(1):] == 0).all()
    torch.testing.assert_close(scores, expected.sequences_scores, rtol=1e-4, atol=1e-4)


# -----------------------------------------------------------------------------
# Masks, attention paths and the cache


def test_padding_is_invisible(model):
    """A row padded to a longer batch gives exactly the logits it gives alone."""
    ids, mask = padded_batch()
    dec = torch.randint(2, 53, (3, 9))
    logits, _ = model(ids, dec, attention_mask=mask)
    for i, n in enumerate(mask.sum(1).tolist()):
        alone, _ = model(ids[i:i + 1, :n], dec[i:i + 1])
        torch.testing.assert_close(logits[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_decoder_is_causal_and_encoder_is_bidirectional(model):
    ids = torch.randint(2, 53, (1, 20))
    dec = torch.randint(2, 53, (1, 16))
    base, _ = model(ids, dec)
    changed_dec = dec.clone()
    changed_dec[0, 10:] = (changed_dec[0, 10:] + 5) % 53
    later, _ = model(ids, changed_dec)
    torch.testing.assert_close(base[:, :10], later[:, :10], rtol=0, atol=1e-6)
    assert (base[:, 10:] - later[:, 10:]).abs().max() > 1e-3
    changed_ids = ids.clone()
    changed_ids[0, -1] = (changed_ids[0, -1] + 5) % 53  # the last input token changes every output
    other, _ = model(changed_ids, dec)
    assert (base[:, 0] - other[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_manual_attention_equals_sdpa(feed_forward):
    torch.manual_seed(1)
    fused = t5.T5(tiny_config(feed_forward=feed_forward)).eval()
    manual = t5.T5(tiny_config(feed_forward=feed_forward, attention="manual")).eval()
    manual.load_state_dict(fused.state_dict())
    ids, mask = padded_batch()
    dec = torch.randint(2, 53, (3, 12))
    torch.testing.assert_close(manual(ids, dec, mask)[0], fused(ids, dec, mask)[0], rtol=1e-5, atol=1e-5)
    # Also with a cache, where the self-attention bias is the bottom-right block of the full one.
    tails = []
    for m in (fused, manual):
        enc = m.encode(ids, mask)
        cache = t5.KVCache(m.config.n_decoder_layer, 48)
        m.decode(dec[:, :5], enc, mask, cache=cache)
        tails.append(m.decode(dec[:, 5:], enc, mask, m.cross_keys_values(enc), cache))
    torch.testing.assert_close(tails[1], tails[0], rtol=1e-5, atol=1e-5)


def test_cached_decoding_equals_full_forward(model):
    ids, mask = padded_batch()
    dec = torch.randint(2, 53, (3, 30))  # longer than max_distance: the clamped buckets too
    full, _ = model(ids, dec, attention_mask=mask)
    enc = model.encode(ids, mask)
    cross_kv = model.cross_keys_values(enc)
    cache = t5.KVCache(model.config.n_decoder_layer, model.config.target_block_size)
    pieces = [model.decode(dec[:, a:b], enc, mask, cross_kv, cache) for a, b in [(0, 1), (1, 9), (9, 10), (10, 30)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 30


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.9, top_k=20),
                                      dict(temperature=1.0, top_p=0.8, repetition_penalty=1.3)])
def test_generate_cached_equals_uncached(model, sampling):
    ids, mask = padded_batch()
    torch.manual_seed(7)
    cached = model.generate(ids, 30, attention_mask=mask, use_cache=True, **sampling)
    torch.manual_seed(7)
    uncached = model.generate(ids, 30, attention_mask=mask, use_cache=False, **sampling)
    assert cached.shape == (3, 31)
    assert torch.equal(cached, uncached)
    assert (cached[:, 0] == model.config.decoder_start_token_id).all()


def sequence_log_prob(model, ids, mask, sequences):
    """Total log-probability of each decoded sequence (start token excluded, up to and including </s>)."""
    logits, _ = model(ids, sequences[:, :-1], attention_mask=mask)
    log_probs = torch.log_softmax(logits, dim=-1).gather(2, sequences[:, 1:, None])[..., 0]
    after_eos = torch.cumsum((sequences[:, :-1] == model.config.eos_token_id).long(), dim=1) > 0
    return log_probs.masked_fill(after_eos, 0.0).sum(dim=1)


def test_beam_of_one_is_greedy_and_wider_beams_find_likelier_outputs():
    torch.manual_seed(2)
    model = t5.T5(tiny_config()).eval()
    with torch.no_grad():
        model.shared.weight[1] *= 2.5  # make </s> likely enough that lengths vary
    ids, mask = padded_batch(seed=11)
    greedy = model.generate(ids, 20, attention_mask=mask, temperature=0.0)
    beam1, _ = model.beam_search(ids, 20, attention_mask=mask, beam_size=1)
    assert torch.equal(beam1, greedy[:, :beam1.size(1)])
    # Ranked by plain total log-probability (length_penalty=0) and searched to the end, a beam of 5
    # finds outputs at least as likely as greedy's (beam search keeps greedy's path unless five
    # better prefixes displace it; on these inputs it finds strictly better ones).
    wide, scores = model.beam_search(ids, 20, attention_mask=mask, beam_size=5, length_penalty=0.0,
                                     early_stopping=False)
    greedy_lp = sequence_log_prob(model, ids, mask, greedy)
    wide_lp = sequence_log_prob(model, ids, mask, wide)
    torch.testing.assert_close(wide_lp, scores, rtol=1e-4, atol=1e-4)  # the returned score is that log-prob
    assert (wide_lp >= greedy_lp - 1e-5).all()
    assert (wide_lp > greedy_lp + 1e-3).any()
