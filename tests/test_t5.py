"""t5.py: parity with Hugging Face T5 (v1.0 and v1.1), attention paths, masks, decoding, bad input."""
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import prepare_data
import sample
import t5
from conftest import TINY_T5, train_tiny_t5

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
        # The repository ignores targets of -1 where Hugging Face ignores -100.
        logits, loss = ours(ids, dec, attention_mask=mask, targets=labels.masked_fill(labels == -100, -1))
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


def test_relative_position_bucket_boundaries():
    # The ranges relative_position_bucket's docstring states for T5's 32 buckets and max_distance 128:
    # the first distance of every bucket, for keys to one side. The last bucket starts at 91 (encoder)
    # and 113 (decoder), and holds every larger distance too: there is no separate bucket from 128 on.
    transformers = pytest.importorskip("transformers")
    bucket_fn = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    encoder = list(range(8)) + [8, 12, 16, 23, 32, 46, 64, 91]
    decoder = list(range(16)) + [16, 19, 21, 24, 27, 31, 35, 40, 46, 52, 59, 67, 77, 87, 99, 113]
    distances = torch.arange(1000)
    for bidirectional, starts in ((True, encoder), (False, decoder)):
        offsets = distances if bidirectional else -distances  # the encoder's keys to the right; the decoder's to the left
        for buckets in (t5.relative_position_bucket(offsets, bidirectional, 32, 128),
                        bucket_fn(offsets, bidirectional=bidirectional, num_buckets=32, max_distance=128)):
            first = [int(d) for d in distances if d == 0 or buckets[d] != buckets[d - 1]]
            assert first == starts
            assert (buckets[starts[-1]:] == buckets[starts[-1]]).all()  # the last bucket never ends


def accumulated_gradients(model, batches, weights):
    """The gradients of sum_i weights[i] * (mean loss of batches[i]), as the training loop sums them."""
    model.zero_grad()
    for (x, mask, decoder_x, y), weight in zip(batches, weights):
        (model(x, decoder_x, mask, y)[1] * weight).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradient_accumulation_weighs_every_target_token_equally():
    # Two micro-batches whose targets hold 8 and 21 real tokens: the step's gradient must be that of
    # one batch holding all four pairs, the mean over all 29 tokens. The mean of the two micro-batch
    # means (each divided by 2, gpt.py's rule) gives the short micro-batch's tokens 21/8 times the weight.
    torch.manual_seed(0)
    model = t5.T5(tiny_config()).train()
    g = torch.Generator().manual_seed(1)

    def pair(source_len, target_len):
        return torch.randint(2, 53, (source_len,), generator=g), torch.randint(2, 53, (target_len,), generator=g)

    pairs = [pair(5, 2), pair(9, 4), pair(7, 11), pair(12, 8)]  # targets with </s>: 3 + 5, then 12 + 9
    collate = lambda chunk: t5.PairLoader.collate(SimpleNamespace(pad=0, eos=1, device="cpu"), chunk)
    batches = [collate(pairs[:2]), collate(pairs[2:])]
    runtime = SimpleNamespace(ddp=False, world_size=1)
    weights = t5.target_token_weights([y for *_, y in batches], runtime)
    assert weights.tolist() == pytest.approx([8 / 29, 21 / 29])
    accumulated = accumulated_gradients(model, batches, weights)
    reference = accumulated_gradients(model, [collate(pairs)], [1.0])
    mean_of_means = accumulated_gradients(model, batches, [0.5, 0.5])
    for name, grad in reference.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(mean_of_means["shared.weight"], reference["shared.weight"], rtol=1e-2)


def _weights_on_rank(rank, init_file, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    targets = [torch.tensor([[5, 6, 1, -1]]), torch.tensor([[5, 1, -1, -1]])] if rank == 0 else [
        torch.tensor([[5, 6, 7, 1]]), torch.tensor([[5, 6, 7, 8], [5, 6, 1, -1]])]
    results[rank] = t5.target_token_weights(targets, SimpleNamespace(ddp=True, world_size=2)).tolist()
    torch.distributed.destroy_process_group()


def test_gradient_accumulation_weights_count_every_process_tokens(tmp_path):
    # Under DDP the total is over every process's micro-batches (3 + 2 + 4 + 7 = 16 real tokens), and
    # each weight is doubled, since DDP averages the two processes' gradients.
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_weights_on_rank, args=(str(tmp_path / "init"), results), nprocs=2)
    assert results[0] == pytest.approx([2 * 3 / 16, 2 * 2 / 16]) and results[1] == pytest.approx([2 * 4 / 16, 2 * 7 / 16])


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


# -----------------------------------------------------------------------------
# Configuration and loading errors


@pytest.mark.parametrize("overrides,message", [
    (dict(feed_forward="swiglu"), "feed_forward='swiglu' must be 'relu' or 'gated-gelu'"),
    (dict(attention="flash"), "attention='flash' must be 'sdpa' or 'manual'"),
    (dict(n_head=0), "n_head=0 must be a positive integer"),
    (dict(num_buckets=2), "num_buckets=2 must be at least 4"),
    (dict(eos_token_id=53), "eos_token_id=53 must be a token id below vocab_size=53"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(**overrides)


def test_input_longer_than_block_size_is_an_error(model):
    with pytest.raises(ValueError, match="input of 65 tokens is longer than block_size=64"):
        model(torch.zeros(1, 65, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="target of 49 tokens is longer than target_block_size=48"):
        model(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 49, dtype=torch.long))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        t5.T5.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="holds a 'bert' model; t5.py loads only 't5'"):
        t5.T5.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "t5", "feed_forward_proj": "gated-silu"}')
    with pytest.raises(ValueError, match="unsupported feed_forward_proj='gated-silu'"):
        t5.T5.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="neither a local directory nor a hub id"):
        t5.T5.from_pretrained("no-such-folder")  # hub ids: tests/test_t5_span.py, from a local server


# -----------------------------------------------------------------------------
# The numbers task, training and sample.py


def test_number_to_words():
    words = prepare_data.number_to_words
    assert [words(n) for n in (0, 7, 13, 20, 21, 105, 999, 1000, 4321, 20017, 100001, 999999, 1000000)] == [
        "zero", "seven", "thirteen", "twenty", "twenty-one", "one hundred five", "nine hundred ninety-nine",
        "one thousand", "four thousand three hundred twenty-one", "twenty thousand seventeen",
        "one hundred thousand one", "nine hundred ninety-nine thousand nine hundred ninety-nine", "one million"]
    assert "".join(prepare_data.number_to_pieces(4321)) == words(4321)
    for bad in (-1, 1_000_001, 2.5):
        with pytest.raises(prepare_data.DataError, match="outside the numbers task's range 0 to 1,000,000"):
            words(bad)


@pytest.fixture(scope="module")
def numbers_dir(tmp_path_factory):
    """A small numbers dataset under <root>/data/numbers: 6,000 training and 200 held-out pairs."""
    root = tmp_path_factory.mktemp("t5_numbers")
    prepare_data.prepare_numbers(str(root / "data" / "numbers"), n_train=6000, n_val=200)
    return root


def test_numbers_dataset_pairs_and_held_out(numbers_dir):
    data_dir = str(numbers_dir / "data" / "numbers")
    meta = prepare_data.load_meta(data_dir)
    tokenizer = prepare_data.load_tokenizer(meta)
    loader = t5.PairLoader(data_dir, meta, 4, "cpu", 16, 16)
    assert len(loader.pairs["train"]) == 6000 and len(loader.pairs["val"]) == 200
    sources = {}
    for split in ("train", "val"):
        sources[split] = set()
        for source, target in loader.pairs[split]:
            number = int(tokenizer.decode(source.tolist()).replace(",", ""))
            assert tokenizer.decode(source.tolist()) == f"{number:,}"
            assert tokenizer.decode(target.tolist()) == prepare_data.number_to_words(number)
            sources[split].add(number)
    assert not sources["train"] & sources["val"]  # held-out numbers never appear in training
    x, mask, decoder_x, y = loader.get_batch("train")
    # Teacher forcing: the decoder input is the target shifted right behind the start token <pad>.
    for row in range(4):
        n_target = int((y[row] != -1).sum())
        assert y[row, n_target - 1] == meta["stoi"]["</s>"]
        assert torch.equal(decoder_x[row, 1:n_target], y[row, :n_target - 1])
        assert decoder_x[row, 0] == 0 and (decoder_x[row, n_target:] == 0).all()
        n_source = int(mask[row].sum())
        assert x[row, n_source - 1] == meta["stoi"]["</s>"] and (x[row, n_source:] == 0).all()
        assert (x[row, :n_source - 1] >= 4).all()  # digits and commas


# conftest's tiny T5 on the numbers task: its lengths, and exact match on 50 held-out pairs.
TINY = TINY_T5 + ["--block_size=16", "--target_block_size=16", "--eval_iters=3", "--eval_exact_match=50"]


@pytest.fixture(scope="module")
def trained(numbers_dir):
    """(training log, out_dir) of a 40-iteration run on the small numbers dataset."""
    log = train_tiny_t5(numbers_dir, TINY + ["--out_dir=out-basic", "--max_iters=40", "--lr_decay_iters=40",
                                             "--eval_interval=20", "--eval_beam_size=2", "--dropout=0.0"])
    return log, numbers_dir / "out-basic"


def test_training_reduces_loss_and_reports_exact_match(trained, run_log):
    log, out_dir = trained
    val = [float(v) for v in re.findall(r"val loss ([0-9.]+)", log)]
    assert len(val) == 3 and val[-1] < val[0] - 2.0, log
    assert len(re.findall(r" exact match [0-9.]+%", log)) == 4  # greedy at every evaluation, beam at the last
    assert re.search(r"step 40: .*, exact match [0-9.]+%, beam exact match [0-9.]+%", log)
    evals = [r for r in run_log(out_dir) if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 20, 40] and "val_beam_exact_match" in evals[-1]
    printed = re.search(r"step 40: .*, exact match ([0-9.]+)%", log).group(1)
    assert f"{100 * evals[-1]['val_exact_match']:.1f}" == printed
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)
    assert checkpoint["model_type"] == "t5" and checkpoint["iter_num"] == 40
    assert checkpoint["tokenizer"]["task"] == "numbers"
    model = t5.T5(t5.T5Config(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])


def test_exact_match_counts_whole_outputs(numbers_dir):
    data_dir = str(numbers_dir / "data" / "numbers")
    loader = t5.PairLoader(data_dir, prepare_data.load_meta(data_dir), 4, "cpu", 16, 16)

    class Oracle(t5.T5):
        """Decodes the true target for every second pair and a wrong word for the others."""
        def generate(self, input_ids, max_new_tokens, attention_mask=None, **kwargs):
            _, _, decoder_x, y = loader.collate(loader.pairs["val"][self.offset:self.offset + len(input_ids)])
            self.offset += len(input_ids)
            out = torch.cat((decoder_x[:, :1], y.clamp(min=0)), dim=1)
            out[1::2, 1] = 5  # the digit "0": never a word
            return out

    oracle = Oracle(tiny_config(vocab_size=loader.eos + 100))
    oracle.offset = 0
    assert t5.exact_match(oracle, loader, 40, batch_size=16) == 0.5


def test_resume_is_exact(numbers_dir, run_log_values):
    common = TINY + ["--eval_interval=10", "--dropout=0.1", "--lr_decay_iters=20", "--eval_exact_match=0"]
    straight = train_tiny_t5(numbers_dir, common + ["--max_iters=20", "--out_dir=out-straight"])
    train_tiny_t5(numbers_dir, common + ["--max_iters=10", "--out_dir=out-resumed"])
    resumed = train_tiny_t5(numbers_dir, common + ["--max_iters=20", "--out_dir=out-resumed", "--init_from=resume"])
    a = torch.load(numbers_dir / "out-straight" / "ckpt.pt", weights_only=True)
    b = torch.load(numbers_dir / "out-resumed" / "ckpt.pt", weights_only=True)
    assert b["iter_num"] == 20
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert re.findall(r"val loss ([0-9.]+)", straight)[-1] == re.findall(r"val loss ([0-9.]+)", resumed)[-1]
    assert run_log_values(numbers_dir / "out-straight") == run_log_values(numbers_dir / "out-resumed")


def test_sample_decodes_a_number_like_generate(trained, capsys):
    out_dir = trained[1]
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)
    model = t5.T5(t5.T5Config(**checkpoint["model_args"])).eval()
    model.load_state_dict(checkpoint["model"])
    tokenizer = prepare_data.load_tokenizer(checkpoint["tokenizer"])
    ids = torch.tensor([tokenizer.encode("123,456") + [1]])  # inputs end with </s>

    def decoded(out):
        return [tokenizer.decode(row[1:row.index(1)] if 1 in row else row[1:]) for row in out.tolist()]

    greedy = decoded(model.generate(ids, 15, temperature=0.0))
    beams = decoded(model.beam_search(ids, 15, beam_size=3, num_return_sequences=2, length_penalty=0.5)[0])
    capsys.readouterr()
    sample.main([f"--out_dir={out_dir}", "--start=123456", "--temperature=0", "--num_samples=1",
                 "--max_new_tokens=15", "--device=cpu"])
    assert capsys.readouterr().out == greedy[0] + "\n---------------\n"
    sample.main([f"--out_dir={out_dir}", "--start=123,456", "--beam_size=3", "--num_samples=2",
                 "--length_penalty=0.5", "--max_new_tokens=15", "--device=cpu"])
    assert capsys.readouterr().out == "".join(text + "\n---------------\n" for text in beams)


def test_bad_input_gives_one_line_errors(numbers_dir, trained, tmp_path, monkeypatch):
    out = trained[1]
    gpt_dir = tmp_path / "gpt-ckpt"
    gpt_dir.mkdir()
    torch.save({"model_type": "gpt", "model_args": {}, "model": {}}, gpt_dir / "ckpt.pt")
    (tmp_path / "plain.txt").write_text("not pairs, just text\n" * 50)
    prepare_data.prepare("plain", input_path=str(tmp_path / "plain.txt"), tokenizer="char",
                         data_root=str(numbers_dir / "data"))
    monkeypatch.chdir(numbers_dir)
    cases = [
        (sample, [f"--out_dir={out}", "--start=1234567"], "1,234,567 is outside the numbers task's range 0 to 1,000,000"),
        (sample, [f"--out_dir={out}", "--start="], "turns a whole number into words"),
        (sample, [f"--out_dir={out}", "--start=twelve"], "turns a whole number into words, like 4321"),
        (sample, [f"--out_dir={out}", "--beam_size=2", "--num_samples=3"], "num_samples=3 must be at most beam_size=2"),
        (t5, [f"--out_dir={gpt_dir}", "--init_from=resume", *TINY], "was written by gpt.py, not t5.py"),
        (t5, ["--out_dir=o", *TINY, "--block_size=4"], "more than block_size=4"),
        (t5, ["--out_dir=o", *TINY, "--feed_forward=geglu"], "must be 'relu' or 'gated-gelu'"),
        # Plain text trains span corruption (tests/test_t5_span.py), whose targets must fit too.
        (t5, ["--dataset=plain", "--out_dir=o", *TINY, "--target_block_size=4"], "raise it to 5"),
    ]
    for module, args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            module.main(args)
        text = str(exit_info.value)
        assert text.startswith("error: ") and message in text and "\n" not in text, (args, text)
    # And on the command line: one line on stderr, no traceback.
    result = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), f"--out_dir={out}", "--start=2000000"],
                            capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 1 and result.stderr == "error: 2,000,000 is outside the numbers task's range 0 to 1,000,000\n"


def test_sample_from_hf_t5_directory_with_sentencepiece(tmp_path, capsys):
    """sample.py --init_from=<HF T5 dir>: spiece.model encodes the input (plus </s>, as T5's tokenizer),
    and the printed output is HF generate's greedy output, decoded."""
    transformers = pytest.importorskip("transformers")
    spm = pytest.importorskip("sentencepiece")
    import io

    words = "the king doth speak and queen answers thee my lord good night sweet sorrow to be or not".split()
    generator = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (8,), generator=generator).tolist()) for _ in range(300)]
    model_bytes = io.BytesIO()
    # T5's special ids: <pad> 0, </s> 1, <unk> 2, no <s>.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model_bytes, vocab_size=40,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram")
    (tmp_path / "spiece.model").write_bytes(model_bytes.getvalue())
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                   dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():  # varied outputs instead of one token repeated
            if p.dim() == 2 and not name.startswith(("shared", "lm_head")):
                p.mul_(3.0)
    hf.save_pretrained(tmp_path)
    prompt = "good night sweet lord"
    ids = torch.tensor([processor.encode(prompt) + [1]])
    expected = hf.generate(input_ids=ids, max_new_tokens=12, do_sample=False, num_beams=1)[0, 1:].tolist()
    if 1 in expected:
        expected = expected[:expected.index(1)]
    assert len(expected) >= 3  # a real output, not an immediate </s>
    capsys.readouterr()
    sample.main([f"--init_from={tmp_path}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
                 "--max_new_tokens=12", "--device=cpu"])
    assert capsys.readouterr().out == processor.decode(expected) + "\n---------------\n"


def test_t5_checkpoint_without_sentencepiece_installed(tmp_path, monkeypatch):
    save_random_hf_t5(tmp_path, "v1.0")
    with pytest.raises(SystemExit) as exit_info:  # first without its spiece.model
        sample.main([f"--init_from={tmp_path}", "--start=hello", "--device=cpu"])
    assert str(exit_info.value) == (f"error: cannot load {str(tmp_path)!r}: {tmp_path} has no spiece.model, T5's "
                                    f"SentencePiece tokenizer; copy it there from the model's repository")
    (tmp_path / "spiece.model").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece now raises ImportError
    with pytest.raises(SystemExit, match=r"need the sentencepiece package: pip install sentencepiece"):
        sample.main([f"--init_from={tmp_path}", "--start=hello", "--device=cpu"])


def test_from_pretrained_downloads_a_hub_id(tmp_path, monkeypatch, capsys, local_hub):
    """A hub id goes through download_hf_checkpoint into the cache, served here by a local HTTP server
    standing in for huggingface.co, with T5's spiece.model among its files; sample.py reads it from the
    cache, and a cache without it (written by an older version) is a one-line error saying to delete it."""
    requested = local_hub
    hub = tmp_path / "hub" / "someone" / "tiny-t5" / "resolve" / "main"
    hf = save_random_hf_t5(hub, "v1.1")
    (hub / "spiece.model").write_bytes(b"not a real sentencepiece model")
    model = t5.T5.from_pretrained("someone/tiny-t5").eval()
    cache = tmp_path / "cache" / "someone--tiny-t5"
    assert (cache / "model.safetensors").read_bytes() == (hub / "model.safetensors").read_bytes()
    assert (cache / "spiece.model").read_bytes() == b"not a real sentencepiece model"
    assert "https://huggingface.co/someone/tiny-t5/resolve/main/spiece.model" in requested
    assert (cache / ".complete").exists() and not list(cache.glob("*.part"))
    ids, mask = padded_batch(vocab=99)
    decoder_ids = torch.randint(0, 99, (3, 7))
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        torch.testing.assert_close(model(ids, decoder_ids, mask)[0], expected, atol=1e-4, rtol=0)
    requested.clear()
    t5.T5.from_pretrained("someone/tiny-t5")  # cached: the hub is not asked again
    assert requested == []
    # sample.py: the weights and spiece.model from the cache; reading it needs sentencepiece.
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(SystemExit, match="pip install sentencepiece"):
        sample.main(["--init_from=someone/tiny-t5", "--start=hello", "--device=cpu"])
    assert requested == []
    # A cache completed by a version that did not fetch spiece.model: the hub is not asked again.
    (cache / "spiece.model").unlink()
    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--init_from=someone/tiny-t5", "--start=hello", "--device=cpu"])
    assert str(exit_info.value) == (
        f"error: cannot load 'someone/tiny-t5': the download cache {cache} has no spiece.model, T5's "
        f"SentencePiece tokenizer (an older version did not fetch it, or someone/tiny-t5 lacks it); delete "
        f"{cache} to download someone/tiny-t5 again")
    assert requested == []
