"""bpe.py reading real models' tokenizer.json files, checked id for id against Hugging Face `tokenizers`.

Every kind of file that pretrained models ship is rebuilt here, small, with the `tokenizers` library's
own models and trainers (so nothing is downloaded), saved as tokenizer.json and loaded by
bpe.Tokenizer.from_hf_tokenizer_json:

    smollm2      byte-level, Sequence[Digits(individual_digits=True), ByteLevel], some single bytes missing
    neox         byte-level (OLMo 1's GPT-NeoX files): NFC, bytes 0xC0/0xC1/0xF5-0xFF and a few control bytes
                 missing, added tokens for runs of spaces spelled literally inside model.vocab
    dolma2       byte-level cl100k style (OLMo 2): Split(regex, Removed, invert=true) + ByteLevel(use_regex=false)
    llama3       byte-level: Split(regex, Isolated) + ByteLevel, ignore_merges, BOS through a post-processor
                 Sequence[ByteLevel, TemplateProcessing]
    llama2       SentencePiece style (Llama 2, TinyLlama, Mistral): byte_fallback, Prepend("▁") + Replace
                 normalizers, no pre-tokenizer, decoders Replace/ByteFallback/Fuse/Strip, BOS template
    llama2_wide  the same with merges that cross spaces, so each text between special tokens is one word
    metaspace    SentencePiece style with a Metaspace pre-tokenizer (prepend_scheme "first"), BOS and EOS
    metaspace_split  Metaspace(prepend_scheme "always", split=true) and a Metaspace decoder

The ids must equal HF's on tiny Shakespeare, on a stress text (digits, whitespace runs, \\r\\n, emoji,
mixed scripts, special tokens spelled out inside the text) and on seeded random texts, with and without
the template's special tokens; decode must equal HF's decode and give the text back where the tokenizer
keeps it.
"""
import io
import json
import random

import pytest

import bpe

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

CL100K_PATTERN = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"
                  r"|\s*[\r\n]|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Bytes a byte-level vocabulary may lack: the ones that never occur in UTF-8 (as in GPT-NeoX's files)
# and a few control characters (as in SmolLM2's), none of which the training text contains.
MISSING_BYTES = {0xC0, 0xC1, *range(0xF5, 0x100), 0x01, 0x02, 0x03, 0x7F}

STRESS_TEXT = (
    "Numbers 1234567890, 3.14159, -42, 1,000,000 and ٣٤٥ (Arabic-Indic) 2024-01-01T12:00:00Z\n"
    "    leading spaces and trailing   \n\t\ttabs\t\n\n\n\nwindows\r\nline\r\nends\r\n\r\n"
    "emoji 🤖🎉👍🏽 👨‍👩‍👧‍👦 mixed: Ünïcödé café naïve — “quotes” 中文字符测试 日本語のテキスト 한국어 Ελληνικά Русский\n"
    "decomposed cafe\u0301 \u212b and a literal \u2581 block, nbsp\u00a0and ideographic\u3000space\n"
    "specials inside text:{s0}hello{s1}  {s0}\n{s1}world{s0}{s0} {s1}x\n"
    "code: def f(x):\n    return x**2  # comment\n\n   ends with spaces   "
)


def shakespeare_lines(text):
    return text.splitlines(keepends=True)


def byte_level_alphabet(missing=()):
    return [char for byte, char in bpe.BYTE_TO_CHAR.items() if byte not in missing]


def train_byte_level(corpus, pre_tokenizer, specials, missing=(), normalizer=None, ignore_merges=False):
    hf = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        hf.normalizer = normalizer
    hf.pre_tokenizer = pre_tokenizer
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                  initial_alphabet=byte_level_alphabet(missing))
    hf.train_from_iterator(corpus, trainer=trainer)
    return hf


def train_sentencepiece_style(corpus, split_words=True):
    """A Llama 2-style BPE: <unk>, <s>, </s>, then the 256 byte tokens <0x00>..<0xFF>, then the merged
    pieces, with byte_fallback. Trained with a Metaspace pre-tokenizer (split_words=False: whole lines,
    so merges can cross spaces) and an alphabet too small for the stress text, so that byte fallback
    is exercised."""
    trainer_model = tokenizers.Tokenizer(models.BPE())
    trainer_model.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=split_words)
    trainer = trainers.BpeTrainer(vocab_size=800 if split_words else 500, limit_alphabet=60, show_progress=False)
    trainer_model.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(trainer_model.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{byte:02X}>": 3 + byte for byte in range(256)}}
    for piece in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    model = models.BPE(vocab, [tuple(merge) for merge in trained["merges"]], unk_token="<unk>",
                       byte_fallback=True, fuse_unk=True)
    hf = tokenizers.Tokenizer(model)
    hf.add_special_tokens(["<unk>", "<s>", "</s>"])
    return hf


SENTENCEPIECE_DECODER = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                         decoders.Strip(" ", 1, 0)]


def build(kind, corpus):
    """(HF tokenizer, the special tokens to spell inside the stress text) for one kind of file."""
    if kind == "smollm2":
        hf = train_byte_level(corpus, pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]),
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], missing=MISSING_BYTES)
        return hf, ["<|im_start|>", "<|im_end|>"]
    if kind == "neox":
        hf = train_byte_level(corpus, pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"],
                              missing=MISSING_BYTES, normalizer=normalizers.NFC())
        # GPT-NeoX adds tokens for runs of spaces, matched in the normalized text, and its files also
        # spell them literally (spaces, not "Ġ") inside model.vocab.
        hf.add_tokens([AddedToken(" " * n, normalized=True) for n in (2, 3, 4, 8)])
        spec = json.loads(hf.to_str())
        for token in spec["added_tokens"]:
            spec["model"]["vocab"][token["content"]] = token["id"]
        assert "  " in spec["model"]["vocab"]
        return tokenizers.Tokenizer.from_str(json.dumps(spec)), ["<|endoftext|>", "   "]
    if kind == "dolma2":
        hf = train_byte_level(corpus, pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(CL100K_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), ["<|endoftext|>", "<|pad|>"])
        return hf, ["<|endoftext|>", "<|pad|>"]
    if kind == "llama3":
        hf = train_byte_level(corpus, pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
            ["<|begin_of_text|>", "<|eot_id|>"], ignore_merges=True)
        bos = hf.token_to_id("<|begin_of_text|>")
        hf.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])])
        return hf, ["<|begin_of_text|>", "<|eot_id|>"]
    if kind in ("llama2", "llama2_wide"):
        hf = train_sentencepiece_style(corpus, split_words=kind == "llama2")
        hf.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        hf.decoder = decoders.Sequence(SENTENCEPIECE_DECODER)
        hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        return hf, ["<s>", "</s>"]
    if kind == "metaspace":
        hf = train_sentencepiece_style(corpus)
        hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
        hf.decoder = decoders.Sequence(SENTENCEPIECE_DECODER)
        hf.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
        return hf, ["</s>", "<unk>"]
    if kind == "metaspace_split":
        hf = train_sentencepiece_style(corpus)
        hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
        # (No Fuse before Metaspace: HF's Metaspace decoder drops every "▁" of the first token.)
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
        return hf, ["<s>", "</s>"]
    raise AssertionError(kind)


KINDS = ["smollm2", "neox", "dolma2", "llama3", "llama2", "llama2_wide", "metaspace", "metaspace_split"]


def stress_text(specials):
    return STRESS_TEXT.format(s0=specials[0], s1=specials[1])


def load_ours(hf, tmp_path):
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    return bpe.Tokenizer.from_hf_tokenizer_json(str(path)), path


def assert_same_ids(ours, hf, text):
    expected = hf.encode(text, add_special_tokens=False).ids
    assert ours.encode(text) == expected
    assert ours.encode(text, add_special_tokens=True) == hf.encode(text).ids
    assert ours.decode(expected) == hf.decode(expected, skip_special_tokens=False)
    return expected


@pytest.fixture(scope="module")
def corpus(small_text):
    # Stress-text characters in training too (except for the SentencePiece alphabet's limit), so that
    # merges exist across digits, spaces and other scripts.
    return shakespeare_lines(small_text) + [STRESS_TEXT.format(s0="", s1="")] * 3


@pytest.mark.parametrize("kind", KINDS)
def test_ids_equal_hf(kind, corpus, tmp_path, small_text):
    hf, specials = build(kind, corpus)
    ours, _ = load_ours(hf, tmp_path)
    stress = stress_text(specials)
    for text in [stress, small_text, "", " ", "  hi", "\n", specials[0] + " x", "x" + specials[1],
                 specials[0] + specials[1], " " + specials[0] + "  leading", "a\u2581b"]:
        ids = assert_same_ids(ours, hf, text)
        # decode(encode(text)) is the text wherever the tokenizer keeps everything: not when it drops
        # bytes it has no token for or normalizes (NFC); for SentencePiece style, not for a literal "▁"
        # (a space to it), nor where HF's decoders lose a space (after a special token, or the first
        # of a text that starts with one).
        sentencepiece = kind.startswith(("llama2", "metaspace"))
        if kind not in ("neox", "smollm2") and not (sentencepiece and (
                "\u2581" in text or text.startswith(" ") or any(s in text for s in specials))):
            assert ours.decode(ids) == text
    # The stress text must exercise what each kind is about.
    ids = hf.encode(stress, add_special_tokens=False).ids
    if kind in ("llama2", "llama2_wide", "metaspace", "metaspace_split"):
        assert ours.sentencepiece is not None
        assert set(ids) & set(ours.sentencepiece["byte_ids"]), "no byte fallback in the stress text"
    if kind in ("smollm2", "neox"):
        # A byte with no token is dropped, as HF does, also inside a pre-token ("!\x01!" is one).
        assert ours.encode("a\x01b") == hf.encode("a\x01b").ids == ours.encode("a") + ours.encode("b")
        assert ours.encode("?!\x01!?\x7f") == hf.encode("?!\x01!?\x7f").ids == ours.encode("?!!?")
        assert ours.decode(ours.encode(small_text)) == small_text
    if kind == "smollm2":
        assert ours.encode("1234") == [ours.encode(digit)[0] for digit in "1234"]
    if kind == "llama2":  # no merge crosses a space, so texts are cut before spaces (see bpe.py)
        assert [split.pattern for split in ours._split_res] == [r" *[^ ]+| +"]
    if kind == "llama2_wide":  # merges cross spaces: each text is one word, merged with the heap
        assert ours._split_res == []
    # Streaming, and the plain-data form that checkpoints and meta.pkl keep, give the same ids.
    assert list(ours.encode_iterable(io.StringIO(stress, newline=""))) == ids
    restored = bpe.Tokenizer.from_meta(ours.to_meta())
    assert restored.encode(stress, add_special_tokens=True) == hf.encode(stress).ids


@pytest.mark.parametrize("kind", ["smollm2", "llama2"])
def test_tiny_shakespeare_equal_hf(kind, corpus, tmp_path, tiny_shakespeare):
    with open(tiny_shakespeare, encoding="utf-8", newline="") as f:
        text = f.read()
    hf, _ = build(kind, corpus)
    ours, _ = load_ours(hf, tmp_path)
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids


def test_long_word_merges_equal_the_loop(corpus, tmp_path, small_text):
    # The heap merge for long words against the simple loop, on a whole text as one word.
    hf, _ = build("llama2_wide", corpus)
    ours, _ = load_ours(hf, tmp_path)
    text = " " + small_text[:1200]
    assert len(text) > bpe.LONG_WORD_SYMBOLS
    ids = ours._encode_pretoken(text)
    original, bpe.LONG_WORD_SYMBOLS = bpe.LONG_WORD_SYMBOLS, 10 ** 9
    try:
        assert ours._encode_pretoken(text) == ids
    finally:
        bpe.LONG_WORD_SYMBOLS = original


@pytest.mark.parametrize("kind", ["llama2", "dolma2"])
def test_added_token_flags(kind, corpus, tmp_path):
    # lstrip/rstrip take the whitespace around a token; a normalized token is matched in the normalized
    # text (under Llama 2's Prepend normalizer, "[x]" only where a space precedes it).
    hf, specials = build(kind, corpus)
    hf.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False),
                           AddedToken("<tool>", lstrip=False, rstrip=True, normalized=False)])
    hf.add_tokens([AddedToken("[x]", normalized=True)])
    ours, _ = load_ours(hf, tmp_path)
    if kind == "llama2":
        assert ours.added_token_flags["[x]"] == {"normalized": True}
    for text in ["a  <mask>  b <tool>  c", "<mask> x", " <tool>\n\ny", "a [x] b[x]c [x]", "[x] at start",
                 stress_text(["<mask>", "<tool>"]) + " [x]"]:
        assert_same_ids(ours, hf, text)
    assert ours._cut_str is None  # lstrip: no safe cuts


def test_sentencepiece_meta_and_decode(corpus, tmp_path):
    hf, _ = build("llama2", corpus)
    ours, path = load_ours(hf, tmp_path)
    spec = json.loads(path.read_text(encoding="utf-8"))
    assert spec["model"]["byte_fallback"] and spec["pre_tokenizer"] is None
    assert ours.template == ([1], [])
    assert ours.sentencepiece["prepend"] == "normalizer" and ours.sentencepiece["strip"] == 1
    # Byte tokens decode to their bytes; "▁" to a space, whose first one the Strip decoder removes.
    byte_ids = ours.sentencepiece["byte_ids"]
    assert ours.decode([byte_ids[0x0A]]) == "\n"
    assert ours.decode([byte_ids[b] for b in "🤖".encode()]) == "🤖"
    assert ours.decode(ours.encode("Hello world")) == "Hello world"
    with pytest.raises(ValueError, match="cannot save"):
        ours.save(str(tmp_path / "x"))


def test_unsupported_files_are_refused(corpus, tmp_path):
    hf, _ = build("llama2", corpus)
    hf.normalizer = normalizers.Lowercase()
    with pytest.raises(ValueError, match="normalizer 'Lowercase' is not supported"):
        load_ours(hf, tmp_path)
    hf, _ = build("metaspace", corpus)
    spec = json.loads(hf.to_str())
    spec["model"]["byte_fallback"] = False
    (tmp_path / "nofallback.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="without byte_fallback"):
        bpe.Tokenizer.from_hf_tokenizer_json(str(tmp_path / "nofallback.json"))
    hf, _ = build("llama3", corpus)
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                                                pre_tokenizers.Digits()])
    with pytest.raises(ValueError, match="'Digits' after ByteLevel"):
        load_ours(hf, tmp_path)


def test_legacy_metaspace_files(corpus, tmp_path):
    # Files written by older `tokenizers` spell Metaspace's scheme as add_prefix_space (true: "always").
    hf, specials = build("metaspace_split", corpus)
    spec = json.loads(hf.to_str())
    for section in (spec["pre_tokenizer"], spec["decoder"]["decoders"][1]):
        assert section["type"] == "Metaspace"
        del section["prepend_scheme"]
        section["add_prefix_space"] = True
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    hf = tokenizers.Tokenizer.from_file(str(path))
    ours = bpe.Tokenizer.from_hf_tokenizer_json(str(path))
    assert ours.sentencepiece["prepend"] == "always" and ours.sentencepiece["strip"] == 1
    for text in [stress_text(specials), "Hello world", " two  spaces"]:
        assert_same_ids(ours, hf, text)


@pytest.mark.parametrize("sentencepiece", [False, True])
def test_merges_listed_before_their_parts(sentencepiece, tmp_path):
    # Files converted from SentencePiece or tiktoken list a merge for every split of a token, some
    # before the merges that make their parts: here "bc"+"b" (rank 0) before "b"+"c" (rank 1). HF (and
    # tiktoken) merge the leftmost lowest-rank pair one at a time: "bcbc" -> "bc" "b" "c" -> "bcb" "c";
    # merging every "b"+"c" at once would give "bc" "bc".
    merges = [("bc", "b"), ("b", "c"), ("c", "bcb"), ("a", "a")]
    if sentencepiece:
        vocab = {"<unk>": 0, **{f"<0x{byte:02X}>": 1 + byte for byte in range(256)}}
        vocab.update({piece: len(vocab) + i for i, piece in enumerate(["\u2581", "a", "b", "c", "bc", "bcb", "cbcb", "aa"])})
        hf = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
        hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never", split=False)
        hf.decoder = decoders.Sequence(SENTENCEPIECE_DECODER)
    else:
        vocab = {char: byte for byte, char in bpe.BYTE_TO_CHAR.items()}
        vocab.update({piece: 256 + i for i, piece in enumerate(["bc", "bcb", "cbcb", "aa"])})
        hf = tokenizers.Tokenizer(models.BPE(vocab, merges))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
    ours, _ = load_ours(hf, tmp_path)
    assert hf.encode("bcbc").tokens == ["bcb", "c"]
    # Short words take the loop, the long one (no pre-split: one word) the heap.
    for text in ["bcbc", "bcbcbc", "cbcbcb", "aaaaa", "abcbcaaabcb", "bcbcaaabc" * 60]:
        assert ours.encode(text) == hf.encode(text).ids


FUZZ_PIECES = [" ", "  ", "\n", "\r\n", "\t", "a", "the", "The", " king", "1", "23", "\u0663", "\u00e9", "e\u0301",
               "\U0001f916", "\u4e2d\u6587", "\u2581", "'s", "'S", ".", "...", "\u00a0", "\x01", "\x7f", "x",
               "<mask>", "<tool>", "[x]"]


@pytest.mark.parametrize("kind", KINDS)
def test_random_texts_equal_hf(kind, corpus, tmp_path):
    # Seeded random concatenations of the pieces where tokenizers differ (whitespace runs, digits, combining
    # marks, "▁", bytes some vocabularies lack, special tokens with lstrip/rstrip/normalized flags).
    hf, specials = build(kind, corpus)
    hf.add_special_tokens([AddedToken("<mask>", lstrip=True), AddedToken("<tool>", rstrip=True)])
    hf.add_tokens([AddedToken("[x]", normalized=True)])
    ours, _ = load_ours(hf, tmp_path)
    rng = random.Random(kind)
    for _ in range(150):
        text = "".join(rng.choice(FUZZ_PIECES + specials) for _ in range(rng.randint(0, 20)))
        assert_same_ids(ours, hf, text)
