"""bert.py: parity with Hugging Face BERT (models and tokenizer), masks, heads, embeddings, training, errors."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    args = dict(block_size=32, vocab_size=61, n_layer=2, n_head=4, n_embd=32, n_inner=64, dropout=0.0)
    return bert.BertConfig(**(args | overrides))


# -----------------------------------------------------------------------------
# Hugging Face parity


def save_random_hf_bert(directory, architecture="BertForMaskedLM", safe=True, **overrides):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(**(dict(vocab_size=99, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                                             intermediate_size=80, max_position_embeddings=40, type_vocab_size=2,
                                             num_labels=3) | overrides))
    hf = getattr(transformers, architecture)(config).eval()
    # Random init leaves biases and LayerNorms at 0/1; perturb every parameter a little so the
    # test notices any tensor dropped, misplaced or transposed.
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(directory, safe_serialization=safe)
    return hf


def padded_pair_batch(vocab_size=99):
    """Three sequences of lengths 17, 11 and 6 padded to 17, each with two segments."""
    torch.manual_seed(1)
    idx = torch.randint(1, vocab_size, (3, 17))
    attention_mask = torch.zeros(3, 17, dtype=torch.long)
    token_type_ids = torch.zeros(3, 17, dtype=torch.long)
    for row, (length, second) in enumerate([(17, 9), (11, 4), (6, 3)]):
        attention_mask[row, :length] = 1
        token_type_ids[row, second:length] = 1
        idx[row, length:] = 0  # [PAD]
    return idx, attention_mask, token_type_ids


@pytest.mark.parametrize("architecture, safe", [("BertForMaskedLM", True), ("BertForMaskedLM", False),
                                                ("BertForSequenceClassification", True),
                                                ("BertForTokenClassification", True), ("BertModel", True)])
def test_logits_and_hidden_states_match_hf(tmp_path, architecture, safe):
    hf = save_random_hf_bert(tmp_path, architecture, safe)
    ours = bert.Bert.from_pretrained(str(tmp_path)).eval()
    idx, attention_mask, token_type_ids = padded_pair_batch()
    with torch.no_grad():
        expected = hf(input_ids=idx, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      output_hidden_states=True)
        logits, _ = ours(idx, attention_mask=attention_mask, token_type_ids=token_type_ids)
        hidden = ours.hidden_states(idx, attention_mask, token_type_ids)
    torch.testing.assert_close(hidden, expected.hidden_states[-1], rtol=0, atol=1e-4)
    if architecture == "BertModel":
        assert ours.config.head == "none"
        torch.testing.assert_close(logits, expected.last_hidden_state, rtol=0, atol=1e-4)
        torch.testing.assert_close(ours.pool(hidden), expected.pooler_output, rtol=0, atol=1e-4)
    else:
        torch.testing.assert_close(logits, expected.logits, rtol=0, atol=1e-4)
    if architecture == "BertForSequenceClassification":
        assert ours.config.labels == ("LABEL_0", "LABEL_1", "LABEL_2")


def test_losses_match_hf(tmp_path):
    hf = save_random_hf_bert(tmp_path, "BertForMaskedLM")
    ours = bert.Bert.from_pretrained(str(tmp_path)).eval()
    idx, attention_mask, token_type_ids = padded_pair_batch()
    targets = torch.full_like(idx, -1)
    targets[0, 3], targets[1, 5], targets[2, 0] = 7, 8, 9
    with torch.no_grad():
        expected = hf(input_ids=idx, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      labels=targets.masked_fill(targets == -1, -100)).loss
        _, loss = ours(idx, targets, attention_mask, token_type_ids)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)


def test_padding_does_not_change_real_tokens(tmp_path):
    save_random_hf_bert(tmp_path, "BertForMaskedLM")
    model = bert.Bert.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(1, 99, (1, 9))
    alone, _ = model(idx)
    padded = torch.cat([idx, torch.randint(1, 99, (1, 5))], dim=1)  # junk after the end
    mask = torch.tensor([[1] * 9 + [0] * 5])
    with_padding, _ = model(padded, attention_mask=mask)
    torch.testing.assert_close(with_padding[:, :9], alone, rtol=0, atol=1e-5)


def test_attention_is_bidirectional():
    torch.manual_seed(0)
    model = bert.Bert(tiny_config()).eval()
    idx = torch.randint(61, (1, 20))
    changed = idx.clone()
    changed[0, 15] = (changed[0, 15] + 1) % 61  # a change late in the sequence...
    a, _ = model(idx)
    b, _ = model(changed)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # ...reaches the first position


@pytest.mark.parametrize("head", ["mlm", "sequence", "token", "none"])
def test_manual_attention_equals_sdpa(head):
    torch.manual_seed(2)
    labels = ("a", "b", "c") if head in ("sequence", "token") else ()
    fused = bert.Bert(tiny_config(head=head, labels=labels)).eval()
    manual = bert.Bert(tiny_config(head=head, labels=labels, attention="manual")).eval()
    manual.load_state_dict(fused.state_dict())
    idx, attention_mask, token_type_ids = padded_pair_batch(61)
    torch.testing.assert_close(manual(idx, None, attention_mask, token_type_ids)[0],
                               fused(idx, None, attention_mask, token_type_ids)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(manual(idx)[0], fused(idx)[0], rtol=1e-5, atol=1e-5)  # no mask at all


def test_shapes_initial_loss_and_tying():
    torch.manual_seed(0)
    model = bert.Bert(tiny_config())
    idx = torch.randint(61, (3, 20))
    targets = torch.full_like(idx, -1)
    targets[:, ::3] = idx[:, ::3]
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 20, 61)
    assert abs(loss.item() - math.log(61)) < 0.2  # near-uniform predictions at init
    assert model.embeddings.wte.weight.grad is None
    loss.backward()
    assert model.embeddings.wte.weight.grad is not None  # the decoder is the embedding matrix
    classifier = bert.Bert(tiny_config(head="sequence", labels=("x", "y")))
    logits, loss = classifier(idx, torch.tensor([0, 1, 1]))
    assert logits.shape == (3, 2) and loss.item() > 0


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by n_head"):
        bert.BertConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="head='decoder'"):
        bert.BertConfig(head="decoder")
    with pytest.raises(ValueError, match="at least 2 labels"):
        bert.BertConfig(head="sequence", labels=("only",))
    with pytest.raises(ValueError, match="longer than block_size=32"):
        bert.Bert(tiny_config())(torch.zeros(1, 33, dtype=torch.long))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        bert.Bert.from_pretrained(str(tmp_path))
    save_random_hf_bert(tmp_path, "BertForMaskedLM", hidden_act="relu")
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        bert.Bert.from_pretrained(str(tmp_path))
    save_random_hf_bert(tmp_path, "BertForMultipleChoice")
    with pytest.raises(ValueError, match="BertForMultipleChoice"):
        bert.Bert.from_pretrained(str(tmp_path))


def test_new_head_on_a_pretrained_encoder(tmp_path):
    hf = save_random_hf_bert(tmp_path, "BertForMaskedLM")
    model = bert.Bert.from_pretrained(str(tmp_path), head="sequence", labels=("x", "y")).eval()
    idx, attention_mask, token_type_ids = padded_pair_batch()
    with torch.no_grad():
        expected = hf(input_ids=idx, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      output_hidden_states=True).hidden_states[-1]
        logits, _ = model(idx, attention_mask=attention_mask, token_type_ids=token_type_ids)
    torch.testing.assert_close(model.hidden_states(idx, attention_mask, token_type_ids), expected, rtol=0, atol=1e-4)
    assert logits.shape == (3, 2)


def test_from_pretrained_builds_on_meta_and_takes_the_files_tensors(tmp_path):
    # As gpt.py's: no random init, no second copy. A float32 file loaded as float32 gives parameters
    # that are views of one mapping of the file (address - offset is the mapping's start for all),
    # except c_attn, which concatenates HF's query, key and value into new memory.
    save_random_hf_bert(tmp_path, "BertForMaskedLM")
    model = bert.Bert.from_pretrained(str(tmp_path))
    with open(tmp_path / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    params = dict(model.named_parameters())
    ours = {"bert.embeddings.word_embeddings.weight": "embeddings.wte.weight",
            "bert.encoder.layer.0.attention.output.dense.weight": "h.0.attn.c_proj.weight",
            "bert.encoder.layer.2.output.LayerNorm.bias": "h.2.ln_2.bias", "cls.predictions.bias": "mlm_bias"}
    bases = {params[name].data_ptr() - header[hf_name]["data_offsets"][0] for hf_name, name in ours.items()}
    assert len(bases) == 1
    assert not any(p.is_meta for p in model.parameters())


def test_from_pretrained_downloads_a_hub_id(tmp_path, local_hub):
    """A hub id goes through download_hf_checkpoint into the cache, served here by a local HTTP server
    standing in for huggingface.co. The download has tokenizer.json but no vocab.txt: the WordPiece
    vocabulary is read from tokenizer.json."""
    requested = local_hub
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    hub = tmp_path / "hub" / "someone" / "tiny-bert" / "resolve" / "main"
    hf = save_hf_dir_with_vocab(hub, "BertModel")
    tokenizers.BertWordPieceTokenizer(str(hub / "vocab.txt")).save(str(hub / "tokenizer.json"))
    hf_tokenizer = transformers.BertTokenizer.from_pretrained(str(hub))
    (hub / "vocab.txt").unlink()
    model, tokenizer = bert.load_for_inference("someone/tiny-bert")
    cache = tmp_path / "cache" / "someone--tiny-bert"
    assert (cache / "model.safetensors").read_bytes() == (hub / "model.safetensors").read_bytes()
    assert not (cache / "vocab.txt").exists()
    idx, attention_mask, token_type_ids = padded_pair_batch()
    with torch.no_grad():
        expected = hf(input_ids=idx, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        torch.testing.assert_close(model(idx, None, attention_mask, token_type_ids)[0], expected, atol=1e-4, rtol=0)
    text = "a rose by any other name would smell as sweet, my lord!"
    assert tokenizer.encode(text) == hf_tokenizer(text)["input_ids"]
    requested.clear()
    bert.Bert.from_pretrained("someone/tiny-bert")  # cached: the hub is not asked again
    assert requested == []


# -----------------------------------------------------------------------------
# WordPiece tokenizer: ids equal HF's BertTokenizer

STRESS = [
    "Héllo Wörld! Ça va? naïve café RÉSUMÉ", "北京欢迎你 and 東京", "ＡＢＣ full-width ｄｉｇｉｔｓ１２",
    "MiXeD CaSe WoRdS", "x" * 150, "a" + "b" * 99, "a" + "b" * 100, "emoji 😀👍🏽 here", "tabs\tand\nnewlines\r\n",
    "control\x00\x07\u200bchars\ufffd", "punct: (a), [b]; {c}! ¿qué? «quote» — dash… $5+3=8 ^_^ `tick` ~tilde |pipe",
    "don't can't it's", "İstanbul ǅ ß ﬁ", "Ωμέγα Ελληνικά", "日本語のテキスト", "한국어 텍스트", "To be, or [MASK] to be",
    "[CLS] x [SEP] [mask]", "   leading and trailing   ", "", "\u2028line\u2029sep\u00a0nbsp\u3000ideo",
    "ROMEO: O, she doth teach the torches to burn bright!",
]
UNSEEN = ["snow ☃ man", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 fraktur", "Zanzibarquux xylophonic"]  # characters the vocabulary lacks


@pytest.fixture(scope="session")
def shakespeare_lines(tiny_shakespeare):
    """Every line of tiny Shakespeare (conftest's fixture finds it, or skips saying where to put it)."""
    with open(tiny_shakespeare, encoding="utf-8") as f:
        return f.read().split("\n")


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def vocab_dir(request, tmp_path_factory, shakespeare_lines):
    """A WordPiece vocabulary trained on Shakespeare plus the stress list, saved as HF saves one."""
    tokenizers = pytest.importorskip("tokenizers")
    directory = tmp_path_factory.mktemp("uncased" if request.param else "cased")
    trainer = tokenizers.BertWordPieceTokenizer(lowercase=request.param)
    trainer.train_from_iterator(shakespeare_lines + STRESS, vocab_size=1500)
    trainer.save_model(str(directory))
    (directory / "tokenizer_config.json").write_text(f'{{"do_lower_case": {str(request.param).lower()}}}')
    return str(directory)


def test_wordpiece_ids_equal_hf(vocab_dir, shakespeare_lines):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizer.from_pretrained(vocab_dir)
    ours = bert.WordPieceTokenizer.from_pretrained(vocab_dir)
    texts = shakespeare_lines + STRESS + UNSEEN
    expected = hf(texts)["input_ids"]
    got = [ours.encode(text) for text in texts]
    mismatches = [(t, e, g) for t, e, g in zip(texts, expected, got) if e != g]
    assert not mismatches, mismatches[:3]
    # The stress list really reaches the unknown-word and long-word paths.
    assert ours.encode("x" * 150) == [ours.cls_id, ours.unk_id, ours.sep_id]
    assert all(ours.unk_id in ids for ids in got[-len(UNSEEN):-1])
    assert len(ours.encode("a" + "b" * 99)) > 3  # 100 characters is still a word
    # Pairs get [CLS] a [SEP] b [SEP] and segments 0...0 1...1; decode as HF's.
    pair = hf("Hello there, friend.", "Second part: (here)!")
    ids = ours.encode("Hello there, friend.", "Second part: (here)!")
    assert ids == pair["input_ids"] and ours.token_types(ids) == pair["token_type_ids"]
    for ids in got[:2000] + got[-len(STRESS) - len(UNSEEN):]:
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_decode_with_clean_up_equals_hf(vocab_dir, shakespeare_lines, tmp_path):
    """A tokenizer_config.json with clean_up_tokenization_spaces (bert-base-uncased has one) makes HF's
    decode rejoin contractions: "don ' t!" -> "don't!". Ours follows the same setting."""
    transformers = pytest.importorskip("transformers")
    options = json.loads((Path(vocab_dir) / "tokenizer_config.json").read_text())
    (tmp_path / "vocab.txt").write_bytes((Path(vocab_dir) / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(options | {"clean_up_tokenization_spaces": True}))
    hf = transformers.BertTokenizer.from_pretrained(str(tmp_path))
    ours = bert.WordPieceTokenizer.from_pretrained(str(tmp_path))
    assert ours.decode(ours.encode("Don't!")).lower() == "don't!"
    assert bert.WordPieceTokenizer.from_pretrained(vocab_dir).decode(ours.encode("Don't!")).lower() == "don ' t!"
    for text in shakespeare_lines[:3000] + STRESS + UNSEEN:
        ids = ours.encode(text)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
    # The setting travels with a fine-tuned checkpoint's tokenizer meta.
    assert bert.load_tokenizer(ours.to_meta()).decode(ours.encode("it's")) == "it's"


def test_vocab_without_cls_or_sep_is_refused(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[SEP]\nthe\n")
    with pytest.raises(ValueError, match=r"vocab.txt: the vocabulary lacks \[CLS\]"):
        bert.WordPieceTokenizer.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no vocab.txt"):
        bert.WordPieceTokenizer.from_pretrained(str(tmp_path / "nowhere"))


# -----------------------------------------------------------------------------
# Embeddings, fill-mask and classification on a pretrained directory

WORDS = ["the", "king", "queen", "my", "lord", "good", "night", "sweet", "sorrow", "to", "be", "or", "not", "is",
         "question", "a", "rose", "by", "any", "other", "name", "would", "smell", "as", "##s", "##ed", ",", ".", "!", "?"]


def save_hf_dir_with_vocab(directory, architecture):
    """A random HF BERT of 99 tokens plus a matching vocab.txt: a complete pretrained directory."""
    hf = save_random_hf_bert(directory, architecture)
    vocab = list(bert.SPECIAL_TOKENS) + WORDS
    vocab += [f"[unused{i}]" for i in range(99 - len(vocab))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return hf


def test_sentence_embeddings_are_mean_pooled_hf_states(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = save_hf_dir_with_vocab(tmp_path, "BertModel")
    hf_tokenizer = transformers.BertTokenizer.from_pretrained(str(tmp_path))
    model = bert.Bert.from_pretrained(str(tmp_path)).eval()
    tokenizer = bert.WordPieceTokenizer.from_pretrained(str(tmp_path))
    sentences = ["the king is good", "a rose by any other name would smell as sweet", "good night"]
    vectors = bert.sentence_embeddings(model, tokenizer, sentences, batch_size=2)
    # Reference: sentence-transformers' pooling written out on HF's hidden states.
    batch = hf_tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    torch.testing.assert_close(vectors, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    alone = bert.sentence_embeddings(model, tokenizer, sentences[2:])
    torch.testing.assert_close(alone[0], vectors[2], rtol=0, atol=1e-5)  # padding changes nothing


def test_fill_mask_equals_hf_probabilities(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = save_hf_dir_with_vocab(tmp_path, "BertForMaskedLM")
    hf_tokenizer = transformers.BertTokenizer.from_pretrained(str(tmp_path))
    model = bert.Bert.from_pretrained(str(tmp_path)).eval()
    tokenizer = bert.WordPieceTokenizer.from_pretrained(str(tmp_path))
    text = "to be , or [MASK] to be : that is the [MASK]"
    fills = bert.fill_mask(model, tokenizer, text, k=4)
    batch = hf_tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        probs = hf(**batch).logits.softmax(-1)[0]
    positions = (batch["input_ids"][0] == tokenizer.mask_id).nonzero().flatten().tolist()
    assert len(fills) == len(positions) == 2
    for position, row in zip(positions, fills):
        expected = probs[position].clone()
        expected[sorted(tokenizer.special_ids)] = 0
        values, ids = expected.topk(4)
        assert [token for token, _ in row] == hf_tokenizer.convert_ids_to_tokens(ids.tolist())
        torch.testing.assert_close(torch.tensor([p for _, p in row]), values, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no \\[MASK\\] token"):
        bert.fill_mask(model, tokenizer, "no mask here")
    with pytest.raises(ValueError, match="more than the model's 40 positions"):
        bert.fill_mask(model, tokenizer, "[MASK] " + "the " * 40)


def test_classify_equals_hf(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = save_hf_dir_with_vocab(tmp_path, "BertForSequenceClassification")
    hf_tokenizer = transformers.BertTokenizer.from_pretrained(str(tmp_path))
    model = bert.Bert.from_pretrained(str(tmp_path)).eval()
    tokenizer = bert.WordPieceTokenizer.from_pretrained(str(tmp_path))
    result = bert.classify(model, tokenizer, "my lord", "good night")
    with torch.no_grad():
        probs = hf(**hf_tokenizer("my lord", "good night", return_tensors="pt")).logits.softmax(-1)[0]
    ours = dict(result)
    assert sorted(ours) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert [ours[f"LABEL_{i}"] for i in range(3)] == pytest.approx(probs.tolist(), abs=1e-5)
    assert [p for _, p in result] == sorted((p for _, p in result), reverse=True)


def run_sample(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), "--device=cpu", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_sample_py_fills_masks_and_classifies_from_a_hf_directory(tmp_path, capsys):
    sample = pytest.importorskip("sample")
    mlm_dir, classifier_dir = tmp_path / "mlm", tmp_path / "classifier"
    save_hf_dir_with_vocab(mlm_dir, "BertForMaskedLM")
    save_hf_dir_with_vocab(classifier_dir, "BertForSequenceClassification")
    model = bert.Bert.from_pretrained(str(mlm_dir)).eval()
    tokenizer = bert.WordPieceTokenizer.from_pretrained(str(mlm_dir))
    text = "good [MASK] , sweet [MASK]"
    sample.main([f"--init_from={mlm_dir}", f"--start={text}", "--fill_k=3", "--device=cpu"])
    expected = bert.fill_mask(model, tokenizer, text, k=3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for n, (line, candidates) in enumerate(zip(lines, expected), 1):
        assert line == f"[MASK] {n}: " + ", ".join(f"{t!r} {p:.4f}" for t, p in candidates)
    sample.main([f"--init_from={classifier_dir}", "--start=my lord", "--device=cpu"])
    printed = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted(label for _, label in printed) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert sum(float(p) for p, _ in printed) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(SystemExit, match="more than the model's 40 positions"):
        sample.main([f"--init_from={mlm_dir}", "--start=[MASK] " + "the " * 40, "--device=cpu"])
    # On the command line: one line, no traceback.
    result = run_sample(f"--init_from={mlm_dir}", "--start=no mask at all")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: the text has no [MASK] token") and len(result.stderr.strip().splitlines()) == 1


# -----------------------------------------------------------------------------
# Masked-LM corruption and loss weighting


def test_mask_tokens_follows_bert_recipe():
    torch.manual_seed(0)
    n_text, mask_id = 60, 63  # ids 60.. are special tokens
    idx = torch.randint(n_text, (200, 500))
    idx[:, 0], idx[:, -1] = 61, 62  # [CLS] ... [SEP]
    inputs, targets = bert.mask_tokens(idx, mask_id, n_text)
    chosen = targets != -1
    assert torch.equal(targets[chosen], idx[chosen])  # targets are the original tokens
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # specials are never chosen
    assert torch.equal(inputs[~chosen], idx[~chosen])  # nothing else changes
    assert abs(chosen.float().mean().item() - 0.15 * 498 / 500) < 0.005
    masked = (inputs == mask_id) & chosen
    unchanged = (inputs == idx) & chosen
    replaced = chosen & ~masked & ~unchanged  # a random token different from the original
    n = chosen.sum().item()
    # 80% [MASK], 10% random, 10% kept (a random draw equal to the original counts as kept: 1/60 of 10%).
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(replaced.sum().item() / n - 0.1 * 59 / 60) < 0.01
    assert abs(unchanged.sum().item() / n - (0.1 + 0.1 / 60)) < 0.01
    assert (inputs[replaced] < n_text).all()  # random replacements are text tokens
    short = torch.randint(n_text, (50, 4))
    assert ((bert.mask_tokens(short, mask_id, n_text)[1] != -1).sum(dim=1) >= 1).all()  # never an empty row


def test_micro_batch_weights_give_the_mean_over_all_masked_tokens():
    torch.manual_seed(0)
    losses = torch.rand(3, 10)  # per-token losses of 3 micro-batches
    targets = torch.full((3, 10), -1)
    targets[0, :1], targets[1, :4], targets[2, :9] = 1, 1, 1  # 1, 4 and 9 masked tokens
    weights = bert.micro_batch_weights(list(targets), True, 1)
    means = [losses[i][targets[i] != -1].mean() for i in range(3)]
    combined = sum(w * m for w, m in zip(weights, means))
    torch.testing.assert_close(combined, losses[targets != -1].mean())
    torch.testing.assert_close(bert.micro_batch_weights(list(targets), False, 1), torch.full((3,), 1 / 3))


# -----------------------------------------------------------------------------
# Training: MLM pretraining, resume, fine-tuning, sample.py on the checkpoints, errors

TINY = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32",
        "--batch_size=8", "--gradient_accumulation_steps=2", "--eval_iters=4", "--log_interval=5",
        "--learning_rate=3e-3", "--warmup_iters=5", "--lr_decay_iters=60", "--min_lr=3e-4", "--dropout=0.0"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shakespeare_lines):
    """data/tiny: tiny Shakespeare at character level; data/speakers: its labelled speeches."""
    prepare_data = pytest.importorskip("prepare_data")
    root = tmp_path_factory.mktemp("bert_train")
    lines = shakespeare_lines
    speakers_dir = root / "data" / "shakespeare_speakers"
    speakers_dir.mkdir(parents=True)
    (speakers_dir / "input.txt").write_text("\n".join(lines), encoding="utf-8")
    prepare_data.prepare_shakespeare_speakers(str(root / "data"))
    os.rename(speakers_dir, root / "data" / "speakers")
    (root / "tiny.txt").write_text("\n".join(lines), encoding="utf-8")
    prepare_data.prepare("tiny", input_path=str(root / "tiny.txt"), tokenizer="char", data_root=str(root / "data"))
    return root


def train(workdir, monkeypatch, capsys, *args):
    monkeypatch.chdir(workdir)
    bert.main(TINY + list(args))
    return capsys.readouterr().out


def evals(log):
    pattern = r"step (\d+): train loss ([0-9.]+), val loss ([0-9.]+), train [a-z -]+ ([0-9.]+), val [a-z -]+ ([0-9.]+)"
    return [tuple(float(v) for v in m) for m in __import__("re").findall(pattern, log)]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_speakers_dataset(workdir):
    train_rows = bert.read_labelled(str(workdir / "data" / "speakers" / "train.tsv"))
    val_rows = bert.read_labelled(str(workdir / "data" / "speakers" / "val.tsv"))
    labels = {label for label, _ in train_rows}
    assert labels == {"GLOUCESTER", "DUKE VINCENTIO", "ROMEO", "MENENIUS", "PETRUCHIO"}
    assert {label for label, _ in val_rows} == labels
    assert abs(len(val_rows) / (len(train_rows) + len(val_rows)) - 0.2) < 0.01
    assert not {text for _, text in train_rows} & {text for _, text in val_rows} - {""}  # split by speech
    assert all(not text.endswith(":") and "\n" not in text for _, text in train_rows)


def test_mlm_pretraining_learns_and_resumes_exactly(workdir, monkeypatch, capsys, run_log_values):
    log = train(workdir, monkeypatch, capsys, "--dataset=tiny", "--max_iters=60", "--eval_interval=30",
                "--out_dir=out-mlm")
    steps = evals(log)
    assert [s[0] for s in steps] == [0, 30, 60]
    assert steps[-1][2] < steps[0][2] - 0.8, log  # val loss falls from ~ln(69)
    assert steps[-1][4] > steps[0][4] + 0.05  # and masked-token accuracy rises (from ~1/69)
    checkpoint = load(workdir / "out-mlm" / "ckpt.pt")
    assert checkpoint["model_type"] == "bert" and checkpoint["iter_num"] == 60
    n = checkpoint["tokenizer"]["vocab_size"]  # the characters of the text; the special tokens follow
    assert checkpoint["model_args"]["head"] == "mlm" and checkpoint["model_args"]["vocab_size"] == n + 4
    assert checkpoint["tokenizer"]["special_tokens"] == {"[PAD]": n, "[CLS]": n + 1, "[SEP]": n + 2, "[MASK]": n + 3}
    # Exact resume: 10 + 10 iterations equal 20 straight, weights and optimizer state alike.
    common = ["--dataset=tiny", "--eval_interval=10", "--dropout=0.1", "--always_save_checkpoint=True"]
    train(workdir, monkeypatch, capsys, *common, "--max_iters=20", "--out_dir=out-straight")
    train(workdir, monkeypatch, capsys, *common, "--max_iters=10", "--out_dir=out-resumed")
    train(workdir, monkeypatch, capsys, *common, "--max_iters=20", "--out_dir=out-resumed", "--init_from=resume")
    a, b = load(workdir / "out-straight" / "ckpt.pt"), load(workdir / "out-resumed" / "ckpt.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    # log.jsonl: the same records, each iteration once (timings aside), with the masked-token accuracy.
    assert run_log_values(workdir / "out-straight") == run_log_values(workdir / "out-resumed")
    assert [r["iter"] for r in run_log_values(workdir / "out-straight") if "val_accuracy" in r] == [0, 10, 20]


def test_fine_tuning_from_mlm_checkpoint_and_sample_py(workdir, monkeypatch, capsys, shakespeare_lines):
    sample = pytest.importorskip("sample")
    if not (workdir / "out-mlm" / "ckpt.pt").exists():
        train(workdir, monkeypatch, capsys, "--dataset=tiny", "--max_iters=60", "--eval_interval=30",
              "--out_dir=out-mlm")
    # A task a 2-layer model learns in 30 steps: is the text shouted (upper case) or not?
    easy = workdir / "data" / "easy"
    easy.mkdir(exist_ok=True)
    rng = __import__("random").Random(0)
    words = " ".join(shakespeare_lines[:500]).lower().split()
    for split, n in (("train", 200), ("val", 50)):
        rows = [" ".join(rng.choice(words) for _ in range(5)) for _ in range(n)]
        rows = [f"shout\t{t.upper()}" if i % 2 else f"whisper\t{t}" for i, t in enumerate(rows)]
        (easy / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    log = train(workdir, monkeypatch, capsys, "--task=classify", "--dataset=easy", "--init_from=out-mlm",
                "--max_iters=30", "--eval_interval=15", "--out_dir=out-easy")
    steps = evals(log)
    assert steps[-1][2] < steps[0][2] - 0.3 and steps[-1][4] == 1.0, log  # val loss falls, all correct
    # The real task: speakers. Classes come from train.tsv; long speeches are truncated with a warning.
    log = train(workdir, monkeypatch, capsys, "--task=classify", "--dataset=speakers", "--init_from=out-mlm",
                "--max_iters=4", "--eval_interval=4", "--out_dir=out-cls")
    assert "classes: DUKE VINCENTIO, GLOUCESTER, MENENIUS, PETRUCHIO, ROMEO" in log
    assert "texts are longer than block_size=32" in log
    checkpoint = load(workdir / "out-cls" / "ckpt.pt")
    mlm = load(workdir / "out-mlm" / "ckpt.pt")
    assert checkpoint["model_args"]["head"] == "sequence" and len(checkpoint["model_args"]["labels"]) == 5
    assert checkpoint["tokenizer"] == mlm["tokenizer"]
    # The encoder started from the MLM weights: the embedding of [MASK], which fine-tuning inputs never
    # contain, gets no gradient, only AdamW's decoupled weight decay, which shrinks it by a scalar.
    mask_id = mlm["tokenizer"]["special_tokens"]["[MASK]"]
    tuned, pretrained = (c["model"]["embeddings.wte.weight"][mask_id] for c in (checkpoint, mlm))
    torch.testing.assert_close(tuned / tuned.norm(), pretrained / pretrained.norm())
    # sample.py: label distribution for the classifier, fill-mask for the MLM model.
    sample.main(["--out_dir=out-cls", "--start=Good morrow, my lord.", "--device=cpu"])
    printed = [line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted(label for _, label in printed) == sorted(checkpoint["model_args"]["labels"])
    assert sum(float(p) for p, _ in printed) == pytest.approx(1.0, abs=1e-3)
    sample.main(["--out_dir=out-mlm", "--start=To be, or not to b[MASK]", "--device=cpu", "--fill_k=3"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("[MASK] 1: ") and line.count("'") == 6
    # From scratch, the same data trains too (its vocabulary is the characters of the files).
    log = train(workdir, monkeypatch, capsys, "--task=classify", "--dataset=speakers", "--max_iters=10",
                "--eval_interval=10", "--out_dir=out-cls-scratch")
    assert len(evals(log)) == 2


def test_fine_tuning_from_a_hf_directory(workdir, monkeypatch, capsys):
    hf_dir = workdir / "hf"
    save_hf_dir_with_vocab(hf_dir, "BertForMaskedLM")
    small = workdir / "data" / "small"
    small.mkdir(exist_ok=True)
    (small / "train.tsv").write_text("pos\tgood night sweet king\nneg\tnot the rose\npos\tgood lord\n")
    (small / "val.tsv").write_text("pos\tsweet good night\nneg\tnot a rose\n")
    log = train(workdir, monkeypatch, capsys, "--task=classify", "--dataset=small", f"--init_from={hf_dir}",
                "--max_iters=4", "--eval_interval=4", "--out_dir=out-hf-cls", "--batch_size=2")
    assert len(evals(log)) == 2
    checkpoint = load(workdir / "out-hf-cls" / "ckpt.pt")
    tokenizer = bert.load_tokenizer(checkpoint["tokenizer"])
    assert isinstance(tokenizer, bert.WordPieceTokenizer) and tokenizer.encode("good night")[1:3] == [10, 11]


@pytest.mark.parametrize("args, files, message", [
    (["--task=classify", "--dataset=badlabel", "--init_from=out-mlm"], {"train.tsv": "a\tx\nb\ty\n", "val.tsv": "c\tz\n"},
     "unknown label 'c'"),
    (["--task=classify", "--dataset=badline"], {"train.tsv": "a\tx\nno tab here\n", "val.tsv": "a\tz\n"},
     "line 2 is not label<TAB>text"),
    (["--init_from=resume", "--out_dir=out-gpt"], {}, "was written by gpt.py, not bert.py"),
    (["--task=mlm", "--init_from=out-mlm"], {}, "MLM trains from scratch or resumes"),
    (["--task=translate"], {}, "task='translate' must be 'mlm'"),
    (["--mask_prob=1.5"], {}, "mask_prob=1.5 must be between 0 and 1"),
])
def test_training_errors_are_one_line(workdir, monkeypatch, capsys, args, files, message):
    monkeypatch.chdir(workdir)
    dataset = next((a.split("=")[1] for a in args if a.startswith("--dataset=")), None)
    for name, text in files.items():
        (workdir / "data" / dataset).mkdir(exist_ok=True)
        (workdir / "data" / dataset / name).write_text(text)
    (workdir / "out-gpt").mkdir(exist_ok=True)
    torch.save({"model_type": "gpt"}, workdir / "out-gpt" / "ckpt.pt")
    if not (workdir / "out-mlm" / "ckpt.pt").exists():
        train(workdir, monkeypatch, capsys, "--dataset=tiny", "--max_iters=2", "--eval_interval=2", "--out_dir=out-mlm")
    with pytest.raises(SystemExit) as exit_info:
        bert.main(TINY + ["--dataset=tiny"] + args)
    text = str(exit_info.value)
    assert text.startswith("error: ") and message in text and "\n" not in text


def test_embed_command_line(tmp_path):
    save_hf_dir_with_vocab(tmp_path, "BertModel")
    result = subprocess.run([sys.executable, os.path.join(REPO, "bert.py"), "--embed", f"--init_from={tmp_path}",
                             "good night", "sweet sorrow", "good night"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line.split()[-3:] for line in result.stdout.strip().splitlines()]
    model = bert.Bert.from_pretrained(str(tmp_path)).eval()
    vectors = bert.sentence_embeddings(model, bert.WordPieceTokenizer.from_pretrained(str(tmp_path)),
                                       ["good night", "sweet sorrow"])
    assert float(rows[0][1]) == pytest.approx((vectors[0] @ vectors[1]).item(), abs=1e-3)
    assert rows[0][0] == rows[0][2] == "1.000"
    # Its options are config keys (parse_config): a typo is one line naming the key meant.
    with pytest.raises(SystemExit, match="unknown config key 'init_fro'.*did you mean 'init_from'"):
        bert.main(["--embed", f"--init_fro={tmp_path}", "good night"])
    with pytest.raises(SystemExit, match="usage: python bert.py --embed"):
        bert.main(["--embed", "good night"])


def test_torchrun_two_processes(workdir):
    """Under DDP the MLM loss weights need an all_reduce of the masked-token count, and every rank's
    random state goes into the checkpoint."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                os.path.join(REPO, "bert.py")]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, *TINY, "--max_iters=4", "--eval_interval=4", "--log_interval=1",
                             "--dataset=tiny", "--out_dir=out-ddp"], capture_output=True, text=True, cwd=workdir,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("step 4: train loss") == 1  # logged once, by rank 0
    assert len(load(workdir / "out-ddp" / "ckpt.pt")["rng_state"]) == 2
