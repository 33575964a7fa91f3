"""Tests for bpe.py, checked against independent references.

* Encoding with GPT-2's files must match tiktoken's "gpt2" ids exactly.
* Training must match a deliberately naive trainer written below (recount every
  pair after every merge), which is slow but obviously correct.
* Loading a Hugging Face tokenizer.json must match the `tokenizers` library.
* Streaming, parallel and chunked paths must match plain encode()/training.

GPT-2's files and tiny Shakespeare come from conftest.py's fixtures (a local copy, else a download,
else the test is skipped); tests that only need some text use the committed excerpt (small_text).
"""

import io
import itertools
import json
import os
import pickle
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bpe  # noqa: E402


# Text that exercises every branch of GPT-2's pattern plus byte-level details:
# contractions (and uppercase ones, which GPT-2 does not split), numbers,
# punctuation runs, whitespace runs with trailing spaces, tabs, \r\n, multiple
# newlines, accents, CJK, emoji (4-byte UTF-8 and ZWJ sequences), a ligature,
# and non-breaking / ideographic spaces.
TRICKY_TEXT = (
    "Hello, world! I'm here; you're there, we've been, they'll go, she'd see, it's HE'S.\n"
    "Numbers: 1234567890 3.14159 -42 1,000,000 and 2024-01-01T12:00:00Z\n\n\n"
    "   leading spaces, trailing spaces   \n\ttab\tseparated\t\tvalues\t\n"
    "windows line\r\nending\r\n\r\n"
    "Ünïcödé café naïve façade — “quotes” ‘single’ … ¿Qué? ¡Sí!\n"
    "中文字符测试，日本語のテキスト、한국어 텍스트.\n"
    "emoji: 🤖🎉👍🏽 👨‍👩‍👧‍👦 ﬁ ligature\u00a0nbsp\u3000ideographic space\n"
    "code: def f(x):\n    return x**2  # comment\n\n"
    "    \n  \n\n   end with spaces   "
)

SPECIAL = "<|endoftext|>"


# ----------------------------------------------------------------------------
# helpers and fixtures
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_tokenizer(gpt2_bpe_files):
    return bpe.Tokenizer.from_gpt2_files(*gpt2_bpe_files)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_encoding):
    return gpt2_encoding


@pytest.fixture(scope="module")
def shakespeare_text(tiny_shakespeare):
    return Path(tiny_shakespeare).read_text(encoding="utf-8")


def write(path, text):
    # newline="" keeps \r\n as written, so the file holds exactly `text`.
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(text)
    return str(path)


def naive_train(text, vocab_size, special_tokens=()):
    """Reference BPE trainer: recount all pairs before every merge.

    Works directly on byte strings, so it shares no id bookkeeping with bpe.py.
    Tie-break as specified: the lexicographically greater (left, right) pair.
    """
    if special_tokens:
        ordered = sorted(special_tokens, key=len, reverse=True)
        segments = regex.split("|".join(regex.escape(t) for t in ordered), text)
    else:
        segments = [text]
    words = Counter()
    for segment in segments:
        for piece in regex.findall(bpe.GPT2_SPLIT_PATTERN, segment):
            words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    merges = []
    while len(merges) < vocab_size - 256 - len(special_tokens):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged_words = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += count
        words = merged_words
    return merges


def small_corpus():
    rng = random.Random(0)
    sentences = [
        "the quick brown fox jumps over the lazy dog",
        "a man a plan a canal panama",
        "she sells sea shells by the sea shore",
        "to be or not to be that is the question",
        "héllo wörld ünïcödé naïve café 😀 😀 🎉",
        "aaaa bbbb aaaabbbb abab baba 1234 12 123",
    ]
    lines = []
    for _ in range(300):
        sentence = rng.choice(sentences).split()
        rng.shuffle(sentence)
        lines.append(" ".join(sentence) + rng.choice([".", "!", "?", "", "  ", "\n"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# encoding with GPT-2's merges vs tiktoken
# ----------------------------------------------------------------------------

def test_bytes_to_unicode_matches_gpt2_spelling():
    mapping = bpe.bytes_to_unicode()
    assert len(set(mapping.values())) == 256
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("a")] == "a"
    assert all(c.isprintable() for c in mapping.values())


def test_gpt2_vocab_loaded(gpt2_tokenizer):
    assert gpt2_tokenizer.vocab_size == 50257
    assert gpt2_tokenizer.special_tokens == {SPECIAL: 50256}
    assert len(gpt2_tokenizer.merges) == 50000
    assert gpt2_tokenizer.merges[0] == (b" ", b"t")


@pytest.mark.parametrize("text", [
    TRICKY_TEXT,
    "",
    " ",
    "\n\n\n",
    "a",
    "   \t  \n",
    "trailing   ",
    f"{SPECIAL}",
    f"doc one.{SPECIAL}doc two\n\n{SPECIAL}  {SPECIAL}{SPECIAL}three   ",
    "<|endoftext|",  # an incomplete special token is ordinary text
    "I'M DON'T can't won't y'all '''s 'S",
    "1 22 333 4444 55555 1.5e-10 0x1F 一二三 ٣٤٥",
    "🤖" * 20 + " " + "🏳️‍🌈" + "\u200b\u200d" + "\ud7ff" + "\U0010ffff",
])
def test_encode_matches_tiktoken(gpt2_tokenizer, tiktoken_gpt2, text):
    ids = gpt2_tokenizer.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special={SPECIAL})
    assert gpt2_tokenizer.decode(ids) == text


def test_encode_shakespeare_matches_tiktoken(gpt2_tokenizer, tiktoken_gpt2, shakespeare_text):
    text = shakespeare_text
    ids = gpt2_tokenizer.encode(text)
    assert ids == tiktoken_gpt2.encode(text)
    assert len(ids) == 338025
    assert gpt2_tokenizer.decode(ids) == text


def test_known_ids(gpt2_tokenizer):
    # Fixed values from GPT-2, so the test fails even if tiktoken were absent.
    assert gpt2_tokenizer.encode("hello <|endoftext|> world") == [31373, 220, 50256, 995]
    assert gpt2_tokenizer.encode("Hello world") == [15496, 995]


def test_decode_invalid_utf8_gives_replacement_chars(gpt2_tokenizer):
    ids = gpt2_tokenizer.encode("🤖")
    assert len(ids) > 1  # the emoji is split across byte-level tokens
    assert gpt2_tokenizer.decode(ids[:1]) == "\ufffd"
    assert gpt2_tokenizer.decode(ids[1:] + ids) == "\ufffd" * len(ids[1:]) + "🤖"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        gpt2_tokenizer.decode([50257])
    with pytest.raises(ValueError, match="cannot decode id '1'"):
        gpt2_tokenizer.decode([0, "1"])
    assert gpt2_tokenizer.decode(np.array([15496, 995], dtype=np.uint16)) == "Hello world"


def test_layers_form_one_chain():
    layers = [bpe.ByteLevelBPE, bpe.WithSpecialTokens, bpe.WithSentencePieceStyle, bpe.WithStreaming,
              bpe.WithFileFormats, bpe.Tokenizer]
    assert list(reversed(bpe.Tokenizer.__mro__[:-1])) == layers


def test_each_layer_works_alone(gpt2_tokenizer, tiktoken_gpt2, tmp_path, monkeypatch):
    # Every layer, built by itself from GPT-2's merges, encodes as tiktoken does and as the full class.
    vocab = {i: token for i, token in gpt2_tokenizer.vocab.items() if i != gpt2_tokenizer.special_tokens[SPECIAL]}
    core = bpe.ByteLevelBPE(vocab, gpt2_tokenizer.merges)
    ids = core.encode(TRICKY_TEXT)
    assert ids == tiktoken_gpt2.encode(TRICKY_TEXT) == gpt2_tokenizer.encode(TRICKY_TEXT)
    assert core.decode(ids) == TRICKY_TEXT
    text = f"doc one.{SPECIAL}doc two\n\n{SPECIAL}  {TRICKY_TEXT}"
    expected = tiktoken_gpt2.encode(text, allowed_special={SPECIAL})
    for layer in (bpe.WithSpecialTokens, bpe.WithSentencePieceStyle, bpe.WithStreaming, bpe.WithFileFormats):
        tokenizer = layer(vocab, gpt2_tokenizer.merges, [SPECIAL])
        assert tokenizer.special_tokens == {SPECIAL: 50256}
        assert tokenizer.encode(text) == expected
        assert tokenizer.decode(expected) == text
    # The last two layers' own methods, on the last of them built alone.
    monkeypatch.setattr(bpe, "STREAM_FLUSH_CHARS", 16)  # cut the stream often
    long_text = text * 3
    assert list(tokenizer.encode_iterable(io.StringIO(long_text, newline=""))) == gpt2_tokenizer.encode(long_text)
    tokenizer.save(str(tmp_path / "layer5"))
    for restored in (bpe.WithFileFormats.load(str(tmp_path / "layer5")),
                     bpe.WithFileFormats.from_meta(tokenizer.to_meta())):
        assert type(restored) is bpe.WithFileFormats and restored.encode(text) == expected


def test_overlapping_special_tokens_longest_first():
    vocab, merges = {i: bytes([i]) for i in range(256)}, []
    tok = bpe.Tokenizer(vocab, merges, ["<s>", "<s><s>", "s>"])
    ids = tok.special_tokens
    assert ids == {"<s>": 256, "<s><s>": 257, "s>": 258}
    assert tok.encode("x<s><s><s>y s>") == [ord("x"), 257, 256, ord("y"), ord(" "), 258]
    assert tok.decode(tok.encode("x<s><s><s>y s>")) == "x<s><s><s>y s>"


# ----------------------------------------------------------------------------
# safe cut points, streaming and parallel encoding
# ----------------------------------------------------------------------------

def test_cut_points_do_not_change_pretokenization(small_text):
    text = TRICKY_TEXT + small_text[:20000]
    cut_str, _ = bpe._cut_patterns(bpe.GPT2_SPLIT_PATTERN, [SPECIAL])
    whole = regex.findall(bpe.GPT2_SPLIT_PATTERN, text)
    cuts = [m.start() for m in cut_str.finditer(text) if m.start() > 0]
    assert len(cuts) > 100
    for k in cuts:
        left = regex.findall(bpe.GPT2_SPLIT_PATTERN, text[:k])
        right = regex.findall(bpe.GPT2_SPLIT_PATTERN, text[k:])
        assert left + right == whole, f"cut at {k} ({text[k - 5:k + 5]!r}) changes pre-tokens"


def test_no_cut_splits_whitespace_that_ends_a_segment():
    # "\n\n" right before a special token is one pre-token (the segment ends
    # there), so there is no cut before its second "\n"; before "X" there is.
    text = "end.\n\n<|endoftext|>Next\n\nX"
    cut_str, cut_bytes = bpe._cut_patterns(bpe.GPT2_SPLIT_PATTERN, [SPECIAL])
    expected = [text.index(SPECIAL), text.rindex("\n")]
    assert [m.start() for m in cut_str.finditer(text)] == expected
    assert [m.start() for m in cut_bytes.finditer(text.encode())] == expected


def test_no_cuts_for_unknown_patterns_or_overlapping_specials():
    assert bpe._cut_patterns(r"\S+|\s+", []) == (None, None)
    assert bpe._cut_patterns(r"\S+|\s+", ["ab", "ba"]) == (None, None)
    assert bpe._cut_patterns(bpe.GPT2_SPLIT_PATTERN, ["a b"])[0].pattern == "a\\ b"


@pytest.mark.parametrize("piece_size", [1, 7, 100])
def test_encode_iterable_equals_encode(gpt2_tokenizer, monkeypatch, piece_size):
    monkeypatch.setattr(bpe, "STREAM_FLUSH_CHARS", 16)  # force many cuts
    text = (TRICKY_TEXT + SPECIAL) * 3
    pieces = [text[i:i + piece_size] for i in range(0, len(text), piece_size)]
    assert list(gpt2_tokenizer.encode_iterable(pieces)) == gpt2_tokenizer.encode(text)
    lines = io.StringIO(text, newline="")
    assert list(gpt2_tokenizer.encode_iterable(lines)) == gpt2_tokenizer.encode(text)


def test_encode_iterable_shakespeare_lines(gpt2_tokenizer, tiny_shakespeare, shakespeare_text):
    text = shakespeare_text
    with open(tiny_shakespeare, encoding="utf-8", newline="") as file:
        assert list(gpt2_tokenizer.encode_iterable(file)) == gpt2_tokenizer.encode(text)


def test_encode_iterable_without_cut_points(monkeypatch):
    # A non-GPT-2 pattern has no known safe cuts except special tokens, so the
    # buffer just grows; the result must still be exact.
    monkeypatch.setattr(bpe, "STREAM_FLUSH_CHARS", 8)
    vocab = {**{i: bytes([i]) for i in range(256)}, 256: b"ab"}
    tok = bpe.Tokenizer(vocab, [(b"a", b"b")], ["<|x|>"], pattern=r"\S+\s*|\s+")
    text = "ab  ab\n\n ab<|x|>ab  " * 5
    assert list(tok.encode_iterable(text)) == tok.encode(text)


def test_encode_file_to_bin_matches_encode(gpt2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(bpe, "MIN_PARALLEL_BYTES", 0)  # small file, still parallel
    text = (TRICKY_TEXT + SPECIAL + "\n") * 50
    path = write(tmp_path / "in.txt", text)
    out = tmp_path / "out.bin"
    count = bpe.encode_file_to_bin(gpt2_tokenizer, path, str(out), num_processes=2)
    expected = gpt2_tokenizer.encode(text)
    assert count == len(expected)
    assert np.fromfile(out, dtype=np.uint16).tolist() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.bin"]  # no temp left
    count = bpe.encode_file_to_bin(gpt2_tokenizer, path, str(out), num_processes=1, dtype=np.uint32)
    assert np.fromfile(out, dtype=np.uint32).tolist() == expected


def test_encode_file_to_bin_shakespeare(gpt2_tokenizer, tiktoken_gpt2, tiny_shakespeare, shakespeare_text,
                                        tmp_path):
    text = shakespeare_text
    out = tmp_path / "shakespeare.bin"
    count = bpe.encode_file_to_bin(gpt2_tokenizer, tiny_shakespeare, str(out), num_processes=2)
    assert count == 338025
    assert np.fromfile(out, dtype=np.uint16).tolist() == tiktoken_gpt2.encode(text)


def test_encode_file_to_bin_dtype_too_small(gpt2_tokenizer, tmp_path):
    big = bpe.Tokenizer(gpt2_tokenizer.vocab, gpt2_tokenizer.merges, {SPECIAL: 50256, "<|big|>": 70000})
    path = write(tmp_path / "in.txt", "hello <|big|>")
    with pytest.raises(ValueError, match="does not fit in uint16"):
        bpe.encode_file_to_bin(big, path, str(tmp_path / "out.bin"))
    assert not (tmp_path / "out.bin").exists()
    assert bpe.encode_file_to_bin(big, path, str(tmp_path / "out.bin"), dtype=np.uint32) == 3
    assert np.fromfile(tmp_path / "out.bin", dtype=np.uint32).tolist() == [31373, 220, 70000]


# Safe cuts, fuzzed. A wrong cut shows only when text around a chunk boundary
# has a particular shape ("\n\n" before a special token, a whitespace run
# split in two, half a special token at the end of a buffer), so the texts are
# built from exactly such pieces and the chunk, window and buffer sizes are
# small and random, which puts boundaries everywhere. The tokenizer merges
# every pair of whitespace characters (and a space with what follows it), so a
# pre-token split in two encodes to different ids than the whole one.
FUZZ_SPECIALS = [SPECIAL, "<pad>"]
FUZZ_PIECES = (
    [" ", "  ", "\t", "\n", "\n\n", "\r\n", "\r", "\u00a0", "\u3000"] * 3
    + [SPECIAL, "<pad>"] * 3
    + ["a", "ab", "X", "!", "'s", "1", "é", "<", "<|", "<|endoftext", "<pa", "pad>"]
)


def fuzz_tokenizer():
    spaces = [b" ", b"\t", b"\n", b"\r"]
    merges = [(a, b) for a in spaces for b in spaces]
    merges += [(b"\n\n", b"\n"), (b"  ", b" "), (b"a", b"b")]
    merges += [(b" ", c.encode()) for c in "a<X!'1"]
    vocab = {i: bytes([i]) for i in range(256)}
    for left, right in merges:
        vocab[len(vocab)] = left + right
    return bpe.Tokenizer(vocab, merges, FUZZ_SPECIALS)


def fuzz_text(rng):
    return "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 30)))


def random_pieces(rng, text):
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
    return [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]


def test_fuzz_cut_points_streaming_and_file_encoding(tmp_path, monkeypatch):
    tok = fuzz_tokenizer()
    assert tok.encode("\n\n") != tok.encode("\n") * 2  # a split whitespace run would show
    rng = random.Random(1234)
    path, out = tmp_path / "in.txt", tmp_path / "out.bin"
    texts = []
    for case in range(400):
        text = fuzz_text(rng)
        texts.append(text)
        expected = tok.encode(text)
        assert tok.decode(expected) == text
        monkeypatch.setattr(bpe, "STREAM_FLUSH_CHARS", rng.randint(1, 24))
        pieces = random_pieces(rng, text)
        assert list(tok.encode_iterable(pieces)) == expected, (case, pieces)
        write(path, text)
        monkeypatch.setattr(bpe, "ENCODE_CHUNK_BYTES", rng.randint(1, 24))
        monkeypatch.setattr(bpe, "CUT_SEARCH_BYTES", rng.randint(1, 40))
        bpe.encode_file_to_bin(tok, str(path), str(out), num_processes=1)
        assert np.fromfile(out, dtype=np.uint16).tolist() == expected, (case, text)

    # The same texts as one file: worker processes, and training's chunks.
    text = "".join(texts)
    write(path, text)
    monkeypatch.setattr(bpe, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(bpe, "ENCODE_CHUNK_BYTES", 50)
    bpe.encode_file_to_bin(tok, str(path), str(out), num_processes=2)
    assert np.fromfile(out, dtype=np.uint16).tolist() == tok.encode(text)
    whole = bpe.train_bpe(str(path), 400, FUZZ_SPECIALS, num_processes=1)
    monkeypatch.setattr(bpe, "MAX_CHUNK_BYTES", 37)
    assert bpe.train_bpe(str(path), 400, FUZZ_SPECIALS, num_processes=1) == whole


# ----------------------------------------------------------------------------
# training vs the naive reference
# ----------------------------------------------------------------------------

def check_against_naive(tmp_path, text, vocab_size, special_tokens=(), num_processes=1):
    path = write(tmp_path / "corpus.txt", text)
    vocab, merges = bpe.train_bpe(path, vocab_size, special_tokens, num_processes=num_processes)
    assert merges == naive_train(text, vocab_size, special_tokens)
    assert len(vocab) == 256 + len(merges) + len(special_tokens)
    assert all(vocab[i] == bytes([i]) for i in range(256))
    assert all(vocab[256 + i] == a + b for i, (a, b) in enumerate(merges))
    for offset, token in enumerate(special_tokens):
        assert vocab[256 + len(merges) + offset] == token.encode("utf-8")
    return vocab, merges


@pytest.mark.parametrize("vocab_size", [257, 300, 600])
def test_train_matches_naive_small_corpus(tmp_path, vocab_size):
    check_against_naive(tmp_path, small_corpus(), vocab_size)


def test_train_matches_naive_shakespeare(tmp_path, small_text):
    check_against_naive(tmp_path, small_text[:30000], 420)


def test_train_matches_naive_with_special_tokens(tmp_path):
    stories = [f"Once upon a time story {i} had {'very ' * (i % 4)}happy ending." for i in range(60)]
    text = SPECIAL.join(stories) + "<pad><pad>" + SPECIAL
    vocab, merges = check_against_naive(tmp_path, text, 380, (SPECIAL, "<pad>"))
    assert vocab[len(vocab) - 2] == SPECIAL.encode() and vocab[len(vocab) - 1] == b"<pad>"
    assert not any(b"<|" in a + b or b"pad>" in a + b for a, b in merges)


def test_train_matches_naive_with_many_ties(tmp_path):
    # Every permutation appears exactly once, so most pair counts are equal and
    # nearly every merge is decided by the tie-break; non-ASCII letters make
    # the byte order (not the character order) matter.
    words = ["".join(p) for p in itertools.permutations("abcdé")]
    text = " ".join(words) + "\n" + "".join(words[:30])
    check_against_naive(tmp_path, text, 400)


def test_train_runs_out_of_pairs(tmp_path):
    vocab, merges = check_against_naive(tmp_path, "ab ab ab", 1000, (SPECIAL,))
    assert merges == [(b"a", b"b"), (b" ", b"ab")]
    assert vocab[258] == SPECIAL.encode()


def test_train_parallel_chunks_equal_single_pass(tmp_path, monkeypatch):
    # Force many small chunks so that the cut logic is exercised on tricky text.
    monkeypatch.setattr(bpe, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(bpe, "MAX_CHUNK_BYTES", 64)
    text = (TRICKY_TEXT + SPECIAL) * 4 + small_corpus()
    path = write(tmp_path / "corpus.txt", text)
    parallel = bpe.train_bpe(path, 500, [SPECIAL], num_processes=2)
    monkeypatch.setattr(bpe, "MAX_CHUNK_BYTES", 1 << 30)
    single = bpe.train_bpe(path, 500, [SPECIAL], num_processes=1)
    assert parallel == single
    assert parallel[1] == naive_train(text, 500, [SPECIAL])


def test_trained_tokenizer_roundtrip_and_compression(tmp_path):
    text = small_corpus()
    vocab, merges = bpe.train_bpe(write(tmp_path / "c.txt", text), 400, [SPECIAL])
    tok = bpe.Tokenizer(vocab, merges, [SPECIAL])
    ids = tok.encode(text + SPECIAL + TRICKY_TEXT)
    assert tok.decode(ids) == text + SPECIAL + TRICKY_TEXT
    assert ids.count(399) == 1 and tok.vocab_size == 400
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2


# ----------------------------------------------------------------------------
# file formats: save/load, meta, Hugging Face tokenizer.json
# ----------------------------------------------------------------------------

def assert_same_tokenizer(a, b, text=TRICKY_TEXT + SPECIAL):
    assert a.vocab == b.vocab
    assert a.merges == b.merges
    assert a.special_tokens == b.special_tokens
    assert a.pattern == b.pattern and a.ignore_merges == b.ignore_merges
    assert a.normalization == b.normalization
    assert a.encode(text) == b.encode(text)


def test_save_load_roundtrip(tmp_path):
    vocab, merges = bpe.train_bpe(write(tmp_path / "c.txt", small_corpus() + TRICKY_TEXT), 500,
                                  [SPECIAL, "<pad>"])
    tok = bpe.Tokenizer(vocab, merges, [SPECIAL, "<pad>"])
    prefix = str(tmp_path / "tok")
    tok.save(prefix)
    lines = Path(prefix + ".merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert len(lines) == 1 + len(merges)
    saved_vocab = json.loads(Path(prefix + ".vocab.json").read_text(encoding="utf-8"))
    assert saved_vocab["Ġ"] == 32 and saved_vocab[SPECIAL] == 498 and saved_vocab["<pad>"] == 499
    assert_same_tokenizer(tok, bpe.Tokenizer.load(prefix))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(prefix + ".vocab.json").st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "tok.merges.txt", "tok.vocab.json"]


def test_save_gpt2_reproduces_its_files(gpt2_tokenizer, gpt2_bpe_files, tmp_path):
    encoder_json, vocab_bpe = gpt2_bpe_files
    prefix = str(tmp_path / "gpt2")
    gpt2_tokenizer.save(prefix)
    original = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    assert json.loads(Path(prefix + ".vocab.json").read_text(encoding="utf-8")) == original
    ours = Path(prefix + ".merges.txt").read_text(encoding="utf-8").split("\n")[1:]
    theirs = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")[1:]
    assert [l for l in ours if l] == [l for l in theirs if l]
    assert_same_tokenizer(gpt2_tokenizer, bpe.Tokenizer.load(prefix))


def test_meta_roundtrip_plain_types(gpt2_tokenizer):
    meta = gpt2_tokenizer.to_meta()

    def plain(value):
        if isinstance(value, dict):
            return all(plain(k) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (str, int, bytes)

    assert plain(meta)
    restored = bpe.Tokenizer.from_meta(pickle.loads(pickle.dumps(meta)))
    assert_same_tokenizer(gpt2_tokenizer, restored)


def test_meta_survives_torch_weights_only(gpt2_tokenizer, tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"tokenizer": gpt2_tokenizer.to_meta()}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert_same_tokenizer(gpt2_tokenizer, bpe.Tokenizer.from_meta(loaded["tokenizer"]))


LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_hf(tmp_path, llama_style, ignore_merges=False, nfc=False):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    model = models.BPE(ignore_merges=ignore_merges)
    hf = tokenizers.Tokenizer(model)
    if nfc:
        hf.normalizer = normalizers.NFC()
    if llama_style:
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=[SPECIAL, "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator([small_corpus(), TRICKY_TEXT * 3], trainer=trainer)
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    return hf, path


HF_TEXT = (
    TRICKY_TEXT + f"{SPECIAL}I'M YOU'RE it's 1234567 x:\n\ny;\r\n  z  \n<pad>"
    + "cafe\u0301 cafe\u0301 \u212b\u0301 " + small_corpus()[:2000]  # decomposed accents for NFC
)


@pytest.mark.parametrize("llama_style,ignore_merges,nfc", [
    (False, False, False), (True, False, False), (True, True, True),
])
def test_from_hf_tokenizer_json_matches_tokenizers(tmp_path, llama_style, ignore_merges, nfc):
    hf, path = train_hf(tmp_path, llama_style, ignore_merges, nfc)
    ours = bpe.Tokenizer.from_hf_tokenizer_json(str(path))
    assert ours.pattern == (LLAMA3_PATTERN if llama_style else bpe.GPT2_SPLIT_PATTERN)
    assert ours.ignore_merges == ignore_merges
    assert ours.normalization == ("NFC" if nfc else None)
    for text in [HF_TEXT, small_corpus(), "<pad><pad>x" + SPECIAL, "   \n\n  "]:
        expected = hf.encode(text).ids
        assert ours.encode(text) == expected
        assert ours.decode(expected) == hf.decode(expected, skip_special_tokens=False)
    if nfc:
        # The comparison above only means something if NFC changed the ids.
        plain = bpe.Tokenizer(ours.vocab, ours.merges, ours.special_tokens, pattern=ours.pattern,
                              ignore_merges=ours.ignore_merges)
        assert ours.encode("cafe\u0301") == ours.encode("caf\u00e9") != plain.encode("cafe\u0301")
    assert list(ours.encode_iterable(io.StringIO(HF_TEXT, newline=""))) == hf.encode(HF_TEXT).ids

    # Older tokenizer.json files write merges as "left right" strings.
    spec = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(spec["model"]["merges"][0], list)
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    old_style = tmp_path / "old.json"
    old_style.write_text(json.dumps(spec), encoding="utf-8")
    assert_same_tokenizer(ours, bpe.Tokenizer.from_hf_tokenizer_json(str(old_style)), HF_TEXT)

    # The custom pattern and ignore_merges survive save/load and to_meta.
    ours.save(str(tmp_path / "saved"))
    assert_same_tokenizer(ours, bpe.Tokenizer.load(str(tmp_path / "saved")), HF_TEXT)
    assert_same_tokenizer(ours, bpe.Tokenizer.from_meta(ours.to_meta()), HF_TEXT)


def test_from_hf_gpt2_tokenizer_json_matches_tiktoken(gpt2_tokenizer, tiktoken_gpt2, gpt2_bpe_files, tmp_path):
    # GPT-2's own vocabulary, written by `tokenizers` in its tokenizer.json form
    # (as openai-community/gpt2 ships it), must load to the same tokenizer.
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers

    hf = tokenizers.Tokenizer(models.BPE.from_file(*gpt2_bpe_files))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([SPECIAL])
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = bpe.Tokenizer.from_hf_tokenizer_json(str(tmp_path / "tokenizer.json"))
    assert_same_tokenizer(gpt2_tokenizer, ours)
    text = TRICKY_TEXT + SPECIAL + "x"
    assert ours.encode(text) == tiktoken_gpt2.encode(text, allowed_special={SPECIAL}) == hf.encode(text).ids


def test_from_hf_unsupported_models(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    wordpiece = tokenizers.Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    unigram = tokenizers.Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0))
    lowercase = tokenizers.Tokenizer(models.BPE({"a": 0}, []))
    lowercase.normalizer = normalizers.Lowercase()
    lowercase.pre_tokenizer = pre_tokenizers.ByteLevel()
    lowercase.decoder = decoders.ByteLevel()
    # SentencePiece-style files, Digits and more: tests/test_bpe_hf.py.
    cases = [(wordpiece, "WordPiece"), (unigram, "Unigram"), (lowercase, "Lowercase")]
    for hf, name in cases:
        path = tmp_path / f"{name}.json"
        hf.save(str(path))
        with pytest.raises(ValueError, match=f"{name}.*only BPE tokenizer.json files"):
            bpe.Tokenizer.from_hf_tokenizer_json(str(path))


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------

def test_train_bad_input(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="empty"):
        bpe.train_bpe(empty, 300)
    only_special = write(tmp_path / "special.txt", SPECIAL * 3)
    with pytest.raises(ValueError, match="empty"):
        bpe.train_bpe(only_special, 300, [SPECIAL])
    corpus = write(tmp_path / "c.txt", "hello")
    with pytest.raises(ValueError, match="special_tokens must be a list"):
        bpe.train_bpe(corpus, 300, SPECIAL)
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 256.*= 257"):
        bpe.train_bpe(corpus, 256, [SPECIAL])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bpe.train_bpe(str(tmp_path / "missing.txt"), 300)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        bpe.train_bpe(str(tmp_path / "latin1.txt"), 300)


def test_load_bad_files(tmp_path):
    vocab = {bpe.bytes_to_unicode()[b]: b for b in range(256)}
    (tmp_path / "bad.vocab.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "bad.merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        bpe.Tokenizer.load(str(tmp_path / "bad"))
    (tmp_path / "unk.vocab.json").write_text(json.dumps({**vocab, "ab": 256}), encoding="utf-8")
    (tmp_path / "unk.merges.txt").write_text("#version: 0.2\na b\nab zz\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: token 'zz' is not in"):
        bpe.Tokenizer.load(str(tmp_path / "unk"))
    (tmp_path / "unk.vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "unk.merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        bpe.Tokenizer.load(str(tmp_path / "unk"))  # "ab" itself is missing from vocab
    with pytest.raises(FileNotFoundError):
        bpe.Tokenizer.load(str(tmp_path / "missing"))
    (tmp_path / "bad.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        bpe.Tokenizer.from_hf_tokenizer_json(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="not a tokenizer meta dict"):
        bpe.Tokenizer.from_meta({"vocab": {}})


# ----------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "bpe.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_cli_train_encode_decode(tmp_path):
    corpus = write(tmp_path / "corpus.txt", small_corpus() + SPECIAL + TRICKY_TEXT)
    prefix = str(tmp_path / "tok")
    result = run_cli("train", f"--input={corpus}", "--vocab_size=400", f"--out={prefix}",
                     f"--special_tokens={SPECIAL}")
    assert result.returncode == 0, result.stderr
    assert "merge" in result.stdout and "wrote" in result.stdout
    tok = bpe.Tokenizer.load(prefix)
    assert tok.vocab_size == 400 and tok.special_tokens == {SPECIAL: 399}

    text = f"the quick brown fox{SPECIAL} naïve 🤖"
    result = run_cli("encode", f"--tokenizer={prefix}", f"--text={text}")
    assert result.returncode == 0, result.stderr
    ids = [int(x) for x in result.stdout.strip().split(",")]
    assert ids == tok.encode(text)

    result = run_cli("encode", f"--tokenizer={prefix}", f"--input={corpus}")
    assert result.stdout.strip() == ",".join(map(str, tok.encode(Path(corpus).read_bytes().decode())))

    result = run_cli("decode", f"--tokenizer={prefix}", "--ids=" + ",".join(map(str, ids)))
    assert result.returncode == 0 and result.stdout == text + "\n"


def test_cli_errors_are_one_line(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    cases = [
        ("train", f"--input={empty}", "--vocab_size=300", f"--out={tmp_path / 'x'}"),
        ("train", f"--input={tmp_path / 'nope.txt'}", "--vocab_size=300", f"--out={tmp_path / 'x'}"),
        ("decode", f"--tokenizer={tmp_path / 'nope'}", "--ids=1"),
    ]
    for args in cases:
        result = run_cli(*args)
        assert result.returncode == 1
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("x.*"))
