"""Turn a text file into token files that the training scripts can sample batches from.

What it does
    Reads a UTF-8 text, splits it into a training part and a validation part, encodes both with a
    tokenizer and writes, for a dataset called NAME:

        data/NAME/train.bin   token ids of the training text, raw np.uint16 (np.uint32 for a vocabulary
                              over 65536 tokens, as meta.pkl's "dtype" says), nothing else in the file
        data/NAME/val.bin     the same for the validation text
        data/NAME/meta.pkl    a pickled plain dict describing the tokenizer, e.g.
                              {"tokenizer": "char", "vocab_size": 65, "stoi": {...}, "itos": {...}}

    The split is 90/10 by characters of the text (the last 10% is validation), except for TinyStories,
    which comes as separate train and valid files. Three tokenizers are available:
        char  one token per distinct character of the text: tiny vocabulary, long sequences
        gpt2  OpenAI's GPT-2 byte-level BPE through tiktoken (50257 tokens), the same as nanoGPT
        bpe   this repository's own byte-level BPE (bpe.py), trained here on the training split
    or a pretrained model's own: its tokenizer.json (read by bpe.py), or T5's SentencePiece spiece.model
    (through the optional sentencepiece package), whose "input<TAB>target" lines make a pairs dataset.

Why uint16 and memmap
    Every vocabulary trained here has at most 65536 tokens, so a token id fits in 2 bytes: half the disk
    and page cache of int32 (a pretrained model's larger vocabulary, Llama 3's 128K, gets uint32). The files carry no header, so numpy can map them straight into memory
    (np.memmap): a batch reads only the few kilobytes it needs, and a dataset larger than RAM trains
    just as well as a small one. meta.pkl keeps only str/int/float/list/dict/bytes/None values because
    the training scripts copy it into checkpoints, which are loaded with torch.load(weights_only=True)
    and would refuse numpy arrays or custom classes.

How to run it
    python prepare_data.py shakespeare_char            # tiny Shakespeare, characters (vocab 65)
    python prepare_data.py shakespeare                 # tiny Shakespeare, GPT-2 tokens
    python prepare_data.py shakespeare_bpe --vocab_size=1024
    python prepare_data.py tinystories --vocab_size=4096
    python prepare_data.py numbers                     # "4,321" -> "four thousand three hundred twenty-one" pairs
    python prepare_data.py mytext --input=book.txt --tokenizer=char|gpt2|bpe [--vocab_size=N]
    python prepare_data.py mytext --input=book.txt --tokenizer=path/to/hf_model_dir   # its tokenizer.json
    python prepare_data.py mypairs --input=pairs.tsv --tokenizer=path/to/flan-t5-small   # its spiece.model
    python prepare_data.py shakespeare_speakers        # labelled passages for classification (bert.py)
    python prepare_data.py fineweb_edu --shards=2      # FineWeb-Edu parquet streamed into 100M-token shards
                                                       # (pyarrow); the first is val; --max_tokens=N caps it
    python prepare_data.py shakespeare_char --input=tests/data/tinyshakespeare_excerpt.txt
                                                       # offline: a Shakespeare dataset from the 40 KB excerpt
                                                       # (warns; meta.pkl gets "excerpt": True)
    Every command takes --data_root=DIR (default: ./data). The training scripts call ensure_prepared(),
    so the ready-made datasets are prepared on first use without running this by hand.

As a library (used by the training scripts and sample.py)
    prepare(name, ...)              prepare a dataset, return its directory
    ensure_prepared(dataset, ...)   return the directory, preparing a known dataset if it is missing
    load_meta(data_dir)             the meta.pkl dict
    load_tokenizer(meta)            an object with encode(str), decode(ids), vocab_size, eot_token
    same_tokenizer(meta, model_dir) whether a dataset was tokenized with a pretrained model's tokenizer.json
                                    (or, for a SentencePiece dataset, its spiece.model)
    BatchLoader(data_dir, block_size, batch_size, device).get_batch("train" | "val") -> (x, y)
"""
import argparse
import codecs
import contextlib
import difflib
import hashlib
import json
import os
import pickle
import shlex
import sys
import time

import numpy as np
import requests

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# The file at SHAKESPEARE_URL (1,115,394 bytes), by which a copy found on disk is known to be the whole
# text that the README's results were measured on.
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# Its first 40 KB, committed with the tests: without internet, the text a first run can be prepared from.
SHAKESPEARE_EXCERPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "data",
                                   "tinyshakespeare_excerpt.txt")
TINYSTORIES_URLS = {
    "train": "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt",
    "val": "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
}

# Ready-made datasets: name -> (tokenizer, default BPE vocabulary size, what it is).
# 1024 BPE tokens suit a 1 MB text: large enough to merge common words, small enough that most merges
# are seen many times. TinyStories is 2 GB of simple English; 4096 tokens cover its words well while
# keeping the embedding table of a small model small.
DATASETS = {
    "shakespeare_char": ("char", None, "tiny Shakespeare (1 MB), one token per character"),
    "shakespeare": ("gpt2", None, "tiny Shakespeare, GPT-2 BPE tokens (tiktoken)"),
    "shakespeare_bpe": ("bpe", 1024, "tiny Shakespeare, this repo's BPE trained on it"),
    "tinystories": ("bpe", 4096, "TinyStoriesV2-GPT4 (2 GB download), this repo's BPE"),
    "numbers": ("char", None, "generated number -> English words pairs (t5.py), characters"),
}
# Labelled datasets for classification (bert.py fine-tunes on them): data/NAME/train.tsv and val.tsv,
# one "label<TAB>text" example per line, tokenized later by whichever model reads them.
LABELLED_DATASETS = {
    "shakespeare_speakers": "tiny Shakespeare's speeches labelled with who speaks them (5 speakers)",
}
# The datasets made from tiny Shakespeare's one text file; each reuses a copy another one downloaded.
SHAKESPEARE_DATASETS = tuple(name for name in (*DATASETS, *LABELLED_DATASETS) if name.startswith("shakespeare"))
SPEAKERS_N = 5  # the most frequent speakers kept: GLOUCESTER, DUKE VINCENTIO, ROMEO, MENENIUS, PETRUCHIO
TOKENIZERS = ("char", "gpt2", "bpe")
DEFAULT_BPE_VOCAB_SIZE = 1024  # for --input=... --tokenizer=bpe
# Or --tokenizer=PATH: a pretrained model's Hugging Face tokenizer.json (or the model directory holding
# one), read by bpe.py, so that the dataset can fine-tune that model: its ids mean the model's tokens.
# The BPE tokenizers reserve this id so that files holding many documents (TinyStories separates its
# stories with it) keep document boundaries as one token instead of spelling the marker out in bytes.
SPECIAL_TOKENS = ("<|endoftext|>",)
# Or --tokenizer=PATH of a SentencePiece model: T5's spiece.model, or the T5 directory holding one (it
# wins over the directory's tokenizer.json, a Unigram model that bpe.py does not read). Its text may be
# "input<TAB>target" lines, which make a pairs dataset for fine-tuning T5 (see prepare_sentencepiece_pairs).
SENTENCEPIECE_FILE = "spiece.model"
TRAIN_FRACTION = 0.9
MAX_VOCAB_SIZE = 2**16  # ids 0..65535 are what np.uint16 can hold
OUTPUT_FILES = ("train.bin", "val.bin", "meta.pkl")  # meta.pkl last: it marks a finished dataset
# Written while OUTPUT_FILES are being renamed into place: train.bin and val.bin without meta.pkl would
# otherwise read as a nanoGPT-prepared dataset (see dataset_format).
RENAMING_MARKER = "renaming.incomplete"

# Web-scale corpora, too large for one train.bin: parquet files streamed through the tokenizer into shards.
# FineWeb-Edu's sample-10BT is 14 files, 000_00000.parquet .. 013_00000.parquet (about 2 GB each, about
# 10B GPT-2 tokens in all). FINEWEB_EDU_URL replaces the base URL (a mirror, or the tests' local server).
FINEWEB_EDU_URL = "https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT"
FINEWEB_EDU_FILES = tuple(f"{i:03d}_00000.parquet" for i in range(14))
SHARDED_DATASETS = {
    "fineweb_edu": "FineWeb-Edu sample-10BT (14 parquet files, 28 GB, ~10B GPT-2 tokens), streamed into shards",
}
# 100M tokens per shard (200 MB of uint16), as build-nanogpt: few enough files to list, small enough that
# preparing holds one shard in memory and that an interrupted run loses at most one shard of work.
DEFAULT_SHARD_TOKENS = 100_000_000
SHARDS_PROGRESS = "shards_progress.json"  # what a rerun needs to continue after the last finished shard
DOCUMENTS_PER_TASK = 256  # documents a worker process tokenizes per task: large enough to amortise pickling
PARQUET_MAGIC = b"PAR1"  # the first and last 4 bytes of every parquet file
# llm.c's and modded-nanogpt's shards: a header of 256 int32 (magic, version, token count, then zeros)
# followed by the ids. Version 1 holds GPT-2 ids as uint16 (llm.c's version 2, Llama 3 uint32, is not read).
LLMC_MAGIC, LLMC_VERSION, LLMC_HEADER_INTS = 20240520, 1, 256


class DataError(ValueError):
    """Something wrong with the user's data or options; the message says what and how to fix it."""


# ----------------------------------------------------------------------------------------------------
# Reading text


def check_text_file(path):
    """Raise DataError unless `path` is a non-empty UTF-8 file.

    Decodes in chunks so that a multi-gigabyte file is checked in bounded memory.
    """
    if not os.path.isfile(path):
        raise DataError(f"input file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DataError(f"input file is empty: {path}")
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed = 0  # bytes of the file handed to the decoder so far
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 24)
            # A multi-byte character can straddle two chunks; the decoder keeps its first bytes, and an
            # error offset counts from those kept bytes, not from the start of this chunk.
            held = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                offset = consumed - held + e.start
                raise DataError(f"{path} is not UTF-8 text: invalid byte 0x{e.object[e.start]:02x} at byte "
                                f"offset {offset}; convert it to UTF-8 first") from None
            if not chunk:
                return
            consumed += len(chunk)


def read_text(path):
    check_text_file(path)
    # newline="" keeps "\r\n" as it is: the .bin files must encode exactly the bytes of the file.
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def split_text(text, train_fraction=TRAIN_FRACTION):
    """Cut the text at `train_fraction` of its characters: (train_text, val_text).

    A cut in the text (not in the token ids) means every tokenizer sees the same two halves, so
    validation losses of char, gpt2 and bpe models are measured on the same passage.
    """
    cut = int(len(text) * train_fraction)
    if cut == 0 or cut == len(text):
        raise DataError(f"text of {len(text)} characters is too short to split {train_fraction:.0%}/"
                        f"{1 - train_fraction:.0%} into train and val; provide more text")
    return text[:cut], text[cut:]


# ----------------------------------------------------------------------------------------------------
# Tokenizers: everything the loader needs is rebuilt from the meta.pkl dict


class CharTokenizer:
    def __init__(self, stoi, itos):
        self.stoi, self.itos = stoi, itos
        self.vocab_size = len(stoi)
        self.eot_token = None  # a character-level text has no document separator

    def encode(self, text):
        unknown = [c for c in dict.fromkeys(text) if c not in self.stoi]  # dict keeps first-seen order
        if unknown:
            raise ValueError("prompt contains characters not in the training vocabulary: "
                             + ", ".join(repr(c) for c in unknown))
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return "".join(self.itos[i] for i in ids)


class GPT2Tokenizer:
    """tiktoken's GPT-2 encoding with the encode/decode/vocab_size interface of the other tokenizers."""

    def __init__(self):
        import tiktoken  # only this tokenizer needs it

        try:
            self.encoding = tiktoken.get_encoding("gpt2")
        except requests.RequestException as e:  # tiktoken downloads GPT-2's files once, then caches them
            raise DataError(f"tiktoken could not download GPT-2's tokenizer files ({e.__class__.__name__}); "
                            f"connect to the internet once, or set TIKTOKEN_CACHE_DIR to a folder that "
                            f"holds them") from None
        self.vocab_size = self.encoding.n_vocab  # 50257; models pad their embedding to 50304 themselves
        self.eot_token = self.encoding.eot_token

    def encode(self, text):
        # "<|endoftext|>" in the text becomes the single separator token, as GPT-2 saw it in training;
        # tiktoken would otherwise raise on it. (Texts without the marker encode as encode_ordinary.)
        return self.encoding.encode(text, allowed_special={"<|endoftext|>"})

    def decode(self, ids):
        return self.encoding.decode(list(ids))


def _import_bpe():
    # Imported on demand so that char and gpt2 datasets work without bpe.py.
    try:
        import bpe
    except ModuleNotFoundError as e:
        if e.name != "bpe":
            raise
        raise DataError("the bpe tokenizer needs bpe.py from this repository next to prepare_data.py") from None
    return bpe


def char_meta(text):
    """The char tokenizer's meta: its vocabulary is every distinct character of the whole text."""
    # The whole text, not only the train split: a character seen only in val would otherwise make val
    # unencodable. It leaks nothing useful to the model: the embedding of an unseen character stays untrained.
    chars = sorted(set(text))
    if len(chars) > MAX_VOCAB_SIZE:
        raise DataError(f"text has {len(chars)} distinct characters, more than the {MAX_VOCAB_SIZE} ids a "
                        f"uint16 .bin file can hold; use --tokenizer=bpe or --tokenizer=gpt2")
    return {"tokenizer": "char", "vocab_size": len(chars),
            "stoi": {c: i for i, c in enumerate(chars)}, "itos": {i: c for i, c in enumerate(chars)}}


def hf_tokenizer_path(name):
    """The tokenizer.json that --tokenizer=NAME points to (the file, or a model directory holding
    one), or None when NAME is not such a path."""
    path = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    return path if os.path.isfile(path) and path.endswith(".json") else None


def sentencepiece_path(name):
    """The SentencePiece model that --tokenizer=NAME points to (a .model file, or a directory holding
    spiece.model), or None when NAME is not such a path."""
    path = os.path.join(name, SENTENCEPIECE_FILE) if os.path.isdir(name) else name
    return path if os.path.isfile(path) and path.endswith(".model") else None


class SentencePieceTokenizer:
    """A SentencePiece model (T5's spiece.model) through the optional sentencepiece package, rebuilt
    from the model's serialized bytes, which the dataset's meta keeps: checkpoints and sample.py then
    need no file beside them. Ids are the model's own (T5: <pad> 0, </s> 1, <unk> 2)."""

    def __init__(self, model_bytes):
        try:
            import sentencepiece  # optional: only SentencePiece datasets need it
        except ImportError:
            raise DataError("SentencePiece tokenizers (T5's spiece.model) need the sentencepiece package: "
                            "pip install sentencepiece") from None
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
        self.vocab_size = self.processor.get_piece_size()
        self.eot_token = self.processor.eos_id()

    def encode(self, text):
        return self.processor.encode(text)

    def decode(self, ids):
        return self.processor.decode([int(i) for i in ids])


def sentencepiece_meta(path):
    """The meta of a dataset tokenized with a SentencePiece model file: its serialized bytes (plain
    bytes survive torch.load(weights_only=True) of a checkpoint), where it came from, and its
    <pad> / </s> ids (-1 when the model has none)."""
    with open(path, "rb") as f:
        model_bytes = f.read()
    try:
        tokenizer = SentencePieceTokenizer(model_bytes)
    except RuntimeError as e:  # sentencepiece's error for a file that is not a model
        raise DataError(f"cannot use {path} as a SentencePiece model: {str(e).splitlines()[0]}") from None
    return {"tokenizer": "sentencepiece", "vocab_size": tokenizer.vocab_size, "sentencepiece_model": model_bytes,
            "source": os.path.abspath(path), "pad_token_id": tokenizer.processor.pad_id(),
            "eos_token_id": tokenizer.eot_token}


def hf_tokenizer_meta(path):
    """The meta of a dataset tokenized with a Hugging Face tokenizer.json: bpe.py's plain-dict form
    of it (so checkpoints and sample.py rebuild it like any bpe dataset's tokenizer), plus where it
    came from."""
    try:
        tokenizer = _import_bpe().Tokenizer.from_hf_tokenizer_json(path)
    except (ValueError, OSError) as e:
        raise DataError(f"cannot use {path} as a tokenizer: {e}") from None
    meta = {"tokenizer": "bpe", "vocab_size": tokenizer.vocab_size, "bpe": tokenizer.to_meta(),
            "source": os.path.abspath(path)}
    # The model's end-of-sequence id(s), kept with the dataset so that sample.py stops a fine-tuned
    # model where the pretrained one stops (Llama 3: <|eot_id|> or <|end_of_text|>; SmolLM2:
    # <|endoftext|>; TinyLlama: </s>), not at a token the tokenizer merely happens to have.
    eos_token_id = hf_eos_token_id(os.path.dirname(os.path.abspath(path)))
    if eos_token_id is not None:
        meta["eos_token_id"] = eos_token_id
    return meta


def hf_eos_token_id(directory):
    """The end-of-sequence id(s) of a Hugging Face checkpoint directory: an int, a list (Llama 3 ends
    a turn with either of two tokens) or None. generation_config.json, when present, is what the
    model's authors set for generation, so it wins over config.json."""
    eos_token_id = None
    for filename in ("config.json", "generation_config.json"):
        path = os.path.join(directory, filename)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                eos_token_id = json.load(f).get("eos_token_id", eos_token_id)
    return eos_token_id


def same_tokenizer(meta, model_dir):
    """Whether a dataset's meta describes exactly the tokenizer.json of a pretrained model directory
    (or, for a SentencePiece dataset, exactly its spiece.model: the same serialized bytes)."""
    if meta.get("tokenizer") == "sentencepiece":
        path = os.path.join(model_dir, SENTENCEPIECE_FILE)
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            return f.read() == meta["sentencepiece_model"]
    path = os.path.join(model_dir, "tokenizer.json")
    if meta.get("tokenizer") != "bpe" or not os.path.isfile(path):
        return False
    return meta["bpe"] == hf_tokenizer_meta(path)["bpe"]


def token_dtype(vocab_size):
    """The smallest unsigned integer type that holds every id: uint16 up to 65536 tokens (GPT-2,
    SmolLM2), uint32 beyond (Llama 3's 128256, OLMo's 100278). It is recorded in meta.pkl."""
    return "uint16" if vocab_size <= MAX_VOCAB_SIZE else "uint32"


def load_tokenizer(meta):
    """Rebuild the tokenizer described by a meta dict (from meta.pkl or a checkpoint's 'tokenizer')."""
    kind = meta.get("tokenizer")
    if kind == "char":
        return CharTokenizer(meta["stoi"], meta["itos"])
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "bpe":
        tokenizer = _import_bpe().Tokenizer.from_meta(meta["bpe"])
        # bpe.Tokenizer keeps its special tokens as a dict; give it the same eot_token attribute the
        # others have, so that callers need not know which tokenizer they hold: the id (or list of
        # ids) that ends a text, the pretrained model's own when the dataset recorded it.
        tokenizer.eot_token = meta.get("eos_token_id", tokenizer.special_tokens.get("<|endoftext|>"))
        return tokenizer
    if kind == "sentencepiece":
        return SentencePieceTokenizer(meta["sentencepiece_model"])
    raise DataError(f"unknown tokenizer {kind!r} in meta; expected one of {', '.join(TOKENIZERS)}")


def check_vocab_size(vocab_size):
    if vocab_size > MAX_VOCAB_SIZE:
        raise DataError(f"vocab_size {vocab_size} does not fit the uint16 .bin format (at most "
                        f"{MAX_VOCAB_SIZE}); choose a smaller --vocab_size")
    smallest = 256 + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise DataError(f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
                        f"{smallest} (256 bytes + {len(SPECIAL_TOKENS)} special token)")


# ----------------------------------------------------------------------------------------------------
# Writing: nothing half-written ever carries a final name


def _temp_path_beside(path):
    # In the same directory as the final file, so that os.replace is a rename within one file system,
    # which is atomic: readers see the old file or the new one, never a partial one. The process id
    # keeps two concurrent runs from writing into the same temporary file.
    return f"{path}.{os.getpid()}.tmp"


def _remove_if_present(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def _staged_outputs(out_dir):
    """Yield {file name: temp path} for OUTPUT_FILES; give them their real names only if the block succeeds."""
    os.makedirs(out_dir, exist_ok=True)
    temps = {name: _temp_path_beside(os.path.join(out_dir, name)) for name in OUTPUT_FILES}
    try:
        yield temps
        # Drop the old meta.pkl first: if we are stopped between the renames, the directory reads as
        # "not prepared" instead of pairing new .bin files with an old vocabulary.
        marker = os.path.join(out_dir, RENAMING_MARKER)
        open(marker, "wb").close()
        _remove_if_present(os.path.join(out_dir, "meta.pkl"))
        for name in OUTPUT_FILES:
            os.replace(temps[name], os.path.join(out_dir, name))
        os.remove(marker)
    finally:
        for temp in temps.values():
            _remove_if_present(temp)


def _write_tokens(path, ids, dtype="uint16"):
    np.array(ids, dtype=dtype).tofile(path)
    return len(ids)


def _write_meta(path, meta):
    with open(path, "wb") as f:
        pickle.dump(meta, f)


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def _report(out_dir, meta, counts):
    print(f"wrote {out_dir}: {meta['tokenizer']} tokenizer, vocab_size {meta['vocab_size']}, "
          f"train {counts['train']:,} tokens, val {counts['val']:,} tokens")
    for split, n in counts.items():
        if n < 2:
            # A batch needs block_size + 1 tokens; BatchLoader refuses too-short splits with the details.
            print(f"warning: the {split} split has only {n} token(s), too few to train or evaluate on; "
                  f"provide more text", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------
# Preparing


def prepare_text(text, out_dir, tokenizer, vocab_size=None, text_meta=None):
    """Split `text` 90/10, encode both parts with `tokenizer` ('char' | 'gpt2' | 'bpe' | the path of a
    tokenizer.json), write out_dir. text_meta: what meta.pkl records about the text (read_shakespeare's)."""
    train_text, val_text = split_text(text)
    if tokenizer == "bpe":
        # bpe.py trains on and encodes files (so that it can stream gigabytes in parallel); the two halves
        # go to temporary files and take the same path as TinyStories.
        os.makedirs(out_dir, exist_ok=True)
        split_paths = []
        try:
            for split, part in (("train", train_text), ("val", val_text)):
                split_paths.append(_temp_path_beside(os.path.join(out_dir, f"{split}.txt")))
                with open(split_paths[-1], "w", encoding="utf-8", newline="") as f:
                    f.write(part)
            return prepare_bpe_files(split_paths[0], split_paths[1], out_dir, vocab_size or DEFAULT_BPE_VOCAB_SIZE,
                                     text_meta)
        finally:
            for path in split_paths:
                _remove_if_present(path)

    if tokenizer == "char":
        meta = char_meta(text)
    elif tokenizer == "gpt2":
        meta = {"tokenizer": "gpt2"}
    elif sentencepiece_path(tokenizer) is not None:
        meta = sentencepiece_meta(tokenizer)
    else:
        meta = hf_tokenizer_meta(tokenizer)
    encoder = load_tokenizer(meta)
    meta["vocab_size"] = encoder.vocab_size
    meta["dtype"] = token_dtype(encoder.vocab_size)
    meta.update(text_meta or {})
    with _staged_outputs(out_dir) as staged:
        counts = {"train": _write_tokens(staged["train.bin"], encoder.encode(train_text), meta["dtype"]),
                  "val": _write_tokens(staged["val.bin"], encoder.encode(val_text), meta["dtype"])}
        _write_meta(staged["meta.pkl"], meta)
    _report(out_dir, meta, counts)
    return out_dir


def prepare_bpe_files(train_path, val_path, out_dir, vocab_size, text_meta=None):
    """Train bpe.py on the train text file, then encode both text files into out_dir.

    Everything works on files, in parallel and in bounded memory, so that the same code serves a 1 MB
    text and TinyStories' 2 GB.
    """
    check_vocab_size(vocab_size)
    for path in (train_path, val_path):
        check_text_file(path)
    bpe = _import_bpe()
    print(f"training a {vocab_size}-token BPE on the train split")
    vocab, merges = bpe.train_bpe(train_path, vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer = bpe.Tokenizer(vocab, merges, special_tokens=list(SPECIAL_TOKENS))
    meta = {"tokenizer": "bpe", "vocab_size": tokenizer.vocab_size, "bpe": tokenizer.to_meta(), **(text_meta or {})}
    with _staged_outputs(out_dir) as staged:
        counts = {}
        for split, path in (("train", train_path), ("val", val_path)):
            print(f"encoding the {split} split")
            counts[split] = bpe.encode_file_to_bin(tokenizer, path, staged[f"{split}.bin"], dtype=np.uint16)
        _write_meta(staged["meta.pkl"], meta)
    # A human-readable copy of the vocabulary and merges for inspection; meta.pkl is what gets loaded.
    tokenizer.save(os.path.join(out_dir, "bpe"))
    _report(out_dir, meta, counts)
    return out_dir


def prepare(name, input_path=None, tokenizer=None, vocab_size=None, data_root="data", **shard_options):
    """Prepare dataset `name` into <data_root>/<name> and return that directory.

    With input_path, any UTF-8 text file becomes dataset `name` with the given tokenizer; without it,
    `name` must be one of DATASETS, which know where their text comes from and how to tokenize it, or
    of SHARDED_DATASETS, which take prepare_shards' options (max_tokens, max_shards, shard_size, processes).
    """
    if not name or name != os.path.basename(name) or name in (".", ".."):
        raise DataError(f"dataset name {name!r} must be a plain folder name (no '/')")
    shard_options = {key: value for key, value in shard_options.items() if value is not None}
    if name in SHARDED_DATASETS:
        if input_path is not None or vocab_size is not None:
            raise DataError(f"{name} is downloaded and takes no --input or --vocab_size")
        base_url = os.environ.get("FINEWEB_EDU_URL", FINEWEB_EDU_URL).rstrip("/")
        urls = [f"{base_url}/{file}" for file in FINEWEB_EDU_FILES]
        return prepare_shards(name, urls, data_root, tokenizer, **shard_options)
    if shard_options:
        raise DataError(f"--{', --'.join(shard_options)} only apply to the sharded datasets: "
                        f"{', '.join(SHARDED_DATASETS)}")
    if tokenizer is not None and tokenizer not in TOKENIZERS:
        path = sentencepiece_path(tokenizer) or hf_tokenizer_path(tokenizer)
        if path is None:
            raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}, or give a "
                            f"tokenizer.json file, a SentencePiece .model file or a Hugging Face model directory "
                            f"that holds one")
        if input_path is None:
            raise DataError(f"--tokenizer={tokenizer} needs --input=FILE: the text to tokenize with it")
        tokenizer = path
    out_dir = os.path.join(data_root, name)

    if name in LABELLED_DATASETS:
        if tokenizer is not None or vocab_size is not None:
            raise DataError(f"{name} holds labelled lines of text, which the model that reads them tokenizes; "
                            f"drop --tokenizer and --vocab_size")
        return prepare_shakespeare_speakers(data_root, input_path=input_path)
    if name in DATASETS:
        # A ready-made dataset's name stands for its tokenizer too; --input only replaces its text (a
        # Shakespeare dataset from the excerpt when offline), except for numbers, which is generated.
        if input_path is not None and name == "numbers":
            raise DataError("numbers is generated and takes no --input; give your own text another name")
        dataset_tokenizer, default_vocab_size, _ = DATASETS[name]
        if tokenizer not in (None, dataset_tokenizer):
            raise DataError(f"{name} uses the {dataset_tokenizer} tokenizer; to use {tokenizer}, pick the "
                            f"matching dataset or give your text another name: python prepare_data.py NAME "
                            f"--input=FILE --tokenizer={tokenizer}")
        tokenizer = dataset_tokenizer
        vocab_size = vocab_size or default_vocab_size
    elif input_path is None:
        known = ", ".join([*DATASETS, *LABELLED_DATASETS])
        suggestion = did_you_mean(name, [*DATASETS, *SHARDED_DATASETS, *LABELLED_DATASETS])
        raise DataError(f"unknown dataset {name!r}{suggestion}; known datasets: {known} (or give your own text with "
                        f"--input=FILE --tokenizer={'|'.join(TOKENIZERS)}); in shards: {', '.join(SHARDED_DATASETS)}")
    elif tokenizer is None:
        raise DataError(f"--input needs --tokenizer={'|'.join(TOKENIZERS)}")

    if vocab_size is not None and tokenizer != "bpe":
        raise DataError(f"--vocab_size only applies to the bpe tokenizer; {tokenizer} has a fixed vocabulary")
    if tokenizer == "bpe":
        vocab_size = vocab_size or DEFAULT_BPE_VOCAB_SIZE
        check_vocab_size(vocab_size)  # before any download or training, not after

    if name in SHAKESPEARE_DATASETS:
        text, text_meta = read_shakespeare(name, data_root, input_path)
        return prepare_text(text, out_dir, tokenizer, vocab_size, text_meta)
    if input_path is not None:
        text = read_text(input_path)
        if sentencepiece_path(tokenizer) is not None and "\t" in text:
            return prepare_sentencepiece_pairs(parse_pairs(text, input_path), out_dir, tokenizer)
        return prepare_text(text, out_dir, tokenizer, vocab_size)
    if name == "numbers":
        return prepare_numbers(out_dir)
    return prepare_bpe_files(*download_tinystories(out_dir), out_dir, vocab_size)  # tinystories, the last one


def did_you_mean(name, names):
    """' (did you mean 'X'?)' for the one of `names` closest to a misspelled `name`, else ''."""
    match = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def parse_pairs(text, path):
    """[(input, target), ...] from a text of "input<TAB>target" lines; blank lines are skipped, and any
    other line without exactly one tab, or with an empty side, is an error naming it."""
    pairs = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")  # Windows line ends
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise DataError(f"{path} line {number} is not 'input<TAB>target' (a text with tabs is read as pairs: "
                            f"every non-empty line needs exactly one tab with text on both sides): {line[:60]!r}")
        pairs.append((fields[0], fields[1]))
    if len(pairs) < 2:
        raise DataError(f"{path} has {len(pairs)} 'input<TAB>target' line(s); at least 2 are needed (train and val)")
    return pairs


def prepare_sentencepiece_pairs(pairs, out_dir, tokenizer_path):
    """Write (input, target) pairs tokenized with a SentencePiece model, for fine-tuning a pretrained
    T5 with t5.py (python t5.py --init_from=<the T5> --dataset=NAME).

    The last 10% of the pairs (at least one) are validation, as the last 10% of a text is. Each pair
    is stored as t5.py's PairLoader reads the numbers task's lines, "input<TAB>target<NEWLINE>", but
    SentencePiece vocabularies have no tab or newline token (its normaliser turns them into spaces),
    so the two separators get the first ids past the vocabulary, vocab_size and vocab_size + 1,
    recorded as meta["pair_separators"]. No text encodes to them, and they are never fed to a model:
    PairLoader cuts the stream at them. (T5's own embedding table is larger than its 32000 pieces,
    with its sentinels at 32000..32099, but those ids never appear in these files either.)"""
    meta = sentencepiece_meta(tokenizer_path)
    if meta["pad_token_id"] < 0 or meta["eos_token_id"] < 0:
        raise DataError(f"{tokenizer_path} has no <pad> or no </s> piece; sequence-to-sequence pairs need both "
                        f"(T5's: <pad> 0, </s> 1)")
    tokenizer = load_tokenizer(meta)
    tab, newline = meta["vocab_size"], meta["vocab_size"] + 1
    meta["pair_separators"] = [tab, newline]
    meta["dtype"] = token_dtype(newline + 1)
    cut = len(pairs) - max(1, len(pairs) // 10)

    def stream(part):
        return [i for source, target in part
                for i in [*tokenizer.encode(source), tab, *tokenizer.encode(target), newline]]

    with _staged_outputs(out_dir) as staged:
        counts = {"train": _write_tokens(staged["train.bin"], stream(pairs[:cut]), meta["dtype"]),
                  "val": _write_tokens(staged["val.bin"], stream(pairs[cut:]), meta["dtype"])}
        _write_meta(staged["meta.pkl"], meta)
    _report(out_dir, meta, counts)
    print(f"{cut:,} training and {len(pairs) - cut:,} validation pairs")
    return out_dir


def prepare_shakespeare_speakers(data_root="data", n_speakers=SPEAKERS_N, input_path=None):
    """Write data/shakespeare_speakers/{train,val}.tsv: each speech of the n most frequent speakers,
    labelled with the speaker, the "NAME:" line removed and its lines joined by spaces.

    Tiny Shakespeare is a sequence of speeches separated by blank lines, each opening with its
    speaker's name and a colon. The split is by speech (a speech lies wholly in train or in val), 80/20
    at random with a fixed seed, so that every speaker and play appears on both sides; a split by
    position would put whole plays, and their speakers, only in val.
    """
    import collections
    import random

    out_dir = os.path.join(data_root, "shakespeare_speakers")
    text, _ = read_shakespeare("shakespeare_speakers", data_root, input_path)  # no meta.pkl to record it in
    speeches = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":") and "\t" not in block:
            speeches.append((lines[0][:-1], " ".join(line.strip() for line in lines[1:])))
    counts = collections.Counter(speaker for speaker, _ in speeches)
    kept = {speaker for speaker, _ in counts.most_common(n_speakers)}
    examples = [(speaker, speech) for speaker, speech in speeches if speaker in kept]
    order = list(range(len(examples)))
    random.Random(1337).shuffle(order)
    n_val = len(examples) // 5
    splits = {"val": sorted(order[:n_val]), "train": sorted(order[n_val:])}
    os.makedirs(out_dir, exist_ok=True)
    for split, indices in splits.items():
        path = os.path.join(out_dir, f"{split}.tsv")
        with open(_temp_path_beside(path), "w", encoding="utf-8") as f:
            f.writelines(f"{examples[i][0]}\t{examples[i][1]}\n" for i in indices)
        os.replace(_temp_path_beside(path), path)
    print(f"wrote {out_dir}: {len(splits['train'])} train and {n_val} val speeches by "
          f"{', '.join(s for s, _ in counts.most_common(n_speakers))}")
    return out_dir


def shakespeare_input(name, data_root):
    """Path to tiny Shakespeare's input.txt for dataset `name`: its own copy or any other Shakespeare
    dataset's (a full one first), else a download into <data_root>/<name>/input.txt."""
    target = os.path.join(data_root, name, "input.txt")
    copies = dict.fromkeys([target, *(os.path.join(data_root, n, "input.txt") for n in SHAKESPEARE_DATASETS)])
    copies = [path for path in copies if os.path.isfile(path)]
    # A copy put there by hand may be the excerpt, while a full one elsewhere is what should be reused.
    full = [path for path in copies if shakespeare_text_kind(path) == "full"]
    if full or copies:
        return (full or copies)[0]
    try:
        download(SHAKESPEARE_URL, target)
    except requests.RequestException as e:
        # A failed connection's message is a paragraph of proxy and socket details that would bury the advice.
        reason = e.__class__.__name__ if isinstance(e, requests.ConnectionError) else f"{e.__class__.__name__}: {e}"
        raise DataError(f"could not download tiny Shakespeare ({reason}); "
                        f"{offline_advice(name, data_root, target)}") from None
    return target


def offline_advice(name, data_root, target):
    """What to do without internet: prepare from the excerpt (a command to copy), or save the text by hand."""
    by_hand = f"download {SHAKESPEARE_URL} by hand and save it as {os.path.abspath(target)}"
    if not os.path.isfile(SHAKESPEARE_EXCERPT):  # prepare_data.py copied out of the repository
        return by_hand
    return (f"without internet, prepare it from the 40 KB excerpt the tests use (results will differ from the "
            f"README's): {excerpt_command(name, data_root)} (or {by_hand})")


def excerpt_command(name, data_root):
    """The command that prepares dataset `name` from the committed excerpt, to be run where the user is
    (the relative data_root, like the training scripts' data/, means the same there)."""
    def short(path):  # relative from the repository root, as the README's commands are
        relative = os.path.relpath(path)
        return path if relative.startswith(os.pardir) else relative

    command = ["python", short(os.path.abspath(__file__)), name, f"--input={short(SHAKESPEARE_EXCERPT)}"]
    if os.path.normpath(data_root) != "data":
        command.append(f"--data_root={data_root}")
    return shlex.join(command)


def shakespeare_text_kind(path):
    """'full' for the whole tiny Shakespeare, 'excerpt' for the 40 KB committed with the tests, else 'other'."""
    with open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() == SHAKESPEARE_SHA256:
        return "full"
    if os.path.isfile(SHAKESPEARE_EXCERPT):
        with open(SHAKESPEARE_EXCERPT, "rb") as f:
            if f.read() == data:
                return "excerpt"
    return "other"


def read_shakespeare(name, data_root, input_path=None):
    """Tiny Shakespeare's text for dataset `name` (from input_path if given, else shakespeare_input) and
    what meta.pkl records about it: {"excerpt": True} when it is the excerpt, so that tests and scripts can
    tell a dataset whose numbers will not match the README's. Any other text is prepared all the same
    (it is the user's choice), with a warning, since results are then no longer comparable."""
    path = input_path or shakespeare_input(name, data_root)
    text = read_text(path)
    kind = shakespeare_text_kind(path)
    if kind == "full":
        return text, {}
    # A copy in a dataset folder is what a rerun would reuse again, so it has to be replaced by hand.
    full_text_next_time = (f"once online, `python prepare_data.py {name}` prepares the full text" if input_path
                           else f"for the full text, replace {path} with {SHAKESPEARE_URL} and prepare again")
    if kind == "excerpt":
        print(f"warning: {name} is prepared from the 40 KB excerpt of tiny Shakespeare ({path}), not the full "
              f"1.1 MB text: results will differ from the README's (58 distinct characters instead of 65, only "
              f"the speakers of Coriolanus' first scenes, and a model overfits it early); {full_text_next_time}",
              file=sys.stderr)
        return text, {"excerpt": True}
    print(f"warning: {name} is prepared from {path}, which is not tiny Shakespeare as {SHAKESPEARE_URL} serves "
          f"it: results will differ from the README's; {full_text_next_time}", file=sys.stderr)
    return text, {}


def download_tinystories(out_dir):
    """Download (or resume) TinyStoriesV2-GPT4 train and valid text files; return their paths."""
    paths = []
    for url in (TINYSTORIES_URLS["train"], TINYSTORIES_URLS["val"]):
        path = os.path.join(out_dir, url.rsplit("/", 1)[-1])
        try:
            download(url, path)
        except requests.RequestException as e:
            raise DataError(f"could not download {url} ({e.__class__.__name__}: {e}); run the command "
                            f"again to resume, or save the file by hand as {os.path.abspath(path)}") from None
        paths.append(path)
    return paths


class ProgressLine:
    """A progress line that redraws itself with \\r on a terminal and prints plain lines, less often,
    into a log file (where \\r would leave one endless line)."""

    def __init__(self):
        self.terminal = sys.stdout.isatty()
        self.every = 1 if self.terminal else 30  # seconds between two lines
        self.last = time.monotonic()
        self.width = 0  # of the line on screen, which a shorter one must blank out

    def due(self):
        return time.monotonic() - self.last >= self.every

    def show(self, line, final=False):
        self.last = time.monotonic()
        if not self.terminal:
            print(line, flush=True)
            return
        print("\r" + line.ljust(self.width), end="\n" if final else "", flush=True)
        self.width = 0 if final else len(line)


def duration(seconds):
    """'1h02m', '3m05s' or '12s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def download(url, path, timeout=30, chunk_size=1 << 20, headers=None):
    """Download `url` to `path` unless it is already there, resuming an interrupted download.

    Bytes go to `path + ".part"`; a rerun asks the server only for what is missing (HTTP Range) and
    appends. The file gets its real name only once complete, so `path` existing means "fully downloaded".
    A progress line shows the bytes done, the rate and the time left. headers: extra HTTP headers (the
    hub's Authorization for a gated model). Network failures, and HTTP errors such as 404, raise
    requests.RequestException (callers turn it into advice for the user).
    """
    if os.path.exists(path):
        return path
    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    # "identity" turns off gzip transfer encoding, so that byte counts and Range offsets are those of the file.
    headers = (headers or {}) | {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
        if response.status_code == 416 and have:
            # "Range not satisfiable": nothing lies beyond what we have. That is a finished download whose
            # rename was interrupted if the server's size (Content-Range: bytes */SIZE) equals ours.
            if response.headers.get("Content-Range", "").rsplit("/", 1)[-1] != str(have):
                raise requests.RequestException(f"{part} is larger than the file on the server; delete it and rerun")
            os.replace(part, path)
            return path
        response.raise_for_status()
        # Only now: a download that fails at once (offline) must not leave an empty dataset folder behind.
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # 206 means the server honoured the Range header; 200 means it sends the whole file again.
        if response.status_code != 206:
            have = 0
        size = response.headers.get("Content-Length")
        total = have + int(size) if size is not None else None
        done, started, progress = have, time.monotonic(), ProgressLine()
        with open(part, "ab" if have else "wb") as f:
            for chunk in response.iter_content(chunk_size):
                f.write(chunk)
                done += len(chunk)
                if progress.due():
                    rate = (done - have) / 1e6 / max(time.monotonic() - started, 1e-9)
                    of_total = (f" of {total / 1e6:,.1f} MB ({100 * done / total:.0f}%), {rate:,.1f} MB/s, "
                                f"{duration((total - done) / 1e6 / rate) if rate else '?'} left") if total else " MB"
                    progress.show(f"downloading {os.path.basename(path)}: {done / 1e6:,.1f}{of_total}")
    progress.show(f"downloaded {os.path.basename(path)}: {done / 1e6:,.1f} MB", final=True)
    if total is not None and done != total:
        raise requests.RequestException(f"connection closed after {done} of {total} bytes; rerun to resume")
    os.replace(part, path)
    return path


# ----------------------------------------------------------------------------------------------------
# The numbers task: a toy translation dataset for t5.py that needs no download

NUMBERS_MAX = 1_000_000  # pairs cover 0 .. NUMBERS_MAX
NUMBERS_VAL, NUMBERS_TRAIN = 2_000, 200_000  # held-out and training pairs, disjoint sets of numbers
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n):
    """English words for 0 <= n <= 1,000,000, American style without "and": 4321 -> "four thousand
    three hundred twenty-one", 1005 -> "one thousand five"."""
    if not isinstance(n, int) or not 0 <= n <= NUMBERS_MAX:
        raise DataError(f"{n!r} is outside the numbers task's range 0 to {NUMBERS_MAX:,}")
    if n == NUMBERS_MAX:
        return "one million"

    def below_thousand(k):
        hundreds, rest = divmod(k, 100)
        words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
        if rest >= 20:
            words.append(_TENS[rest // 10] + (f"-{_ONES[rest % 10]}" if rest % 10 else ""))
        elif rest or not words:
            words.append(_ONES[rest])
        return " ".join(words)

    thousands, rest = divmod(n, 1000)
    if not thousands:
        return below_thousand(rest)
    return f"{below_thousand(thousands)} thousand" + (f" {below_thousand(rest)}" if rest else "")


def number_to_pieces(n):
    """The words of n as output tokens, each carrying the space or hyphen before it, as SentencePiece's
    "▁thousand" does: 4321 -> ["four", " thousand", " three", " hundred", " twenty", "-one"]."""
    import re

    return re.findall(r"[ -]?[a-z]+", number_to_words(n))


def prepare_numbers(out_dir, n_train=NUMBERS_TRAIN, n_val=NUMBERS_VAL, seed=0):
    """Write number -> words pairs, one "4,321<TAB>four thousand ...<NEWLINE>" line per pair.

    The numbers are drawn without replacement from 0 .. NUMBERS_MAX, so no validation number ever
    appears in training: exact match on val measures generalisation, not memory.

    The vocabulary is that of a translation model: the input side is characters (digits and the
    comma), the output side whole words (each with its leading space or hyphen, so that decoding is
    concatenation), which keeps targets ~9 tokens long instead of ~53 characters. It starts with T5's
    two special tokens, "<pad>" (id 0, also the decoder start) and "</s>" (id 1). The meta is a char
    tokenizer's (stoi / itos), so load_tokenizer encodes inputs and decodes outputs as usual; the files
    have the usual layout, so gpt.py can also train on them as one stream; t5.py splits them into pairs.
    """
    import random

    numbers = random.Random(seed).sample(range(NUMBERS_MAX + 1), n_val + n_train)
    # Every output piece occurs in 0..999, 1,000 or 1,000,000 (thousands reuse the same words).
    pieces = sorted({p for n in [*range(1000), 1000, NUMBERS_MAX] for p in number_to_pieces(n)})
    vocab = ["<pad>", "</s>", "\t", "\n", ","] + [str(d) for d in range(10)] + pieces
    stoi = {token: i for i, token in enumerate(vocab)}
    meta = {"tokenizer": "char", "vocab_size": len(vocab), "stoi": stoi, "itos": dict(enumerate(vocab)),
            "task": "numbers", "max_number": NUMBERS_MAX}

    def line(n):
        return [stoi[c] for c in f"{n:,}"] + [stoi["\t"]] + [stoi[p] for p in number_to_pieces(n)] + [stoi["\n"]]

    with _staged_outputs(out_dir) as staged:
        counts = {"val": _write_tokens(staged["val.bin"], [i for n in numbers[:n_val] for i in line(n)]),
                  "train": _write_tokens(staged["train.bin"], [i for n in numbers[n_val:] for i in line(n)])}
        _write_meta(staged["meta.pkl"], meta)
    _report(out_dir, meta, counts)
    return out_dir


# ----------------------------------------------------------------------------------------------------
# Web-scale corpora: parquet files streamed into shards
#
# Why shards: FineWeb-Edu's 10B tokens are 20 GB of uint16, more than one comfortable file and far more
# than memory. Tokenizing into fixed-size shard files keeps memory bounded by one shard, lets a run be
# interrupted and continued shard by shard, and lets a user stop after the first 100M tokens.
# Why <|endoftext|> before each document: documents are concatenated into one stream and cut into
# training windows anywhere, so a window often spans two unrelated documents; the separator tells the
# model "what follows does not continue what came before" (and is how GPT-2 was trained). Putting it
# before (not after) each document means every document, the first one included, starts right after it.
# Why the first shard is val: the documents arrive in a fixed order, so the first shard is a fixed,
# held-out sample of the corpus that no training shard contains (as llm.c does).


def _import_parquet():
    try:
        import pyarrow.parquet  # optional: only the parquet corpora need it
    except ImportError:
        raise DataError("reading parquet files needs the pyarrow package: pip install pyarrow") from None
    return pyarrow.parquet


def shard_name(name, index):
    """The file of shard `index`: shard 0 holds validation, every later one training tokens."""
    return f"{name}_{'val' if index == 0 else 'train'}_{index:06d}.bin"


def check_parquet_file(path):
    """Delete and refuse a download that is not a parquet file (an error page saved under its name)."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, os.path.getsize(path) - 4))
        tail = f.read(4)
    if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        os.remove(path)
        raise DataError(f"{path} was not a parquet file (no PAR1 at its start and end) and has been deleted; "
                        f"rerun to download it again, or check FINEWEB_EDU_URL")


def parquet_documents(path, start_row):
    """Yield (row, text) for the rows of a parquet file's 'text' column from `start_row` on, reading one
    row group at a time (thousands of documents), never the whole file."""
    parquet = _import_parquet()
    try:
        file = parquet.ParquetFile(path)
        first_row = 0
        for group in range(file.num_row_groups):
            rows = file.metadata.row_group(group).num_rows
            if first_row + rows > start_row:  # row groups wholly before start_row are skipped unread
                texts = file.read_row_group(group, columns=["text"]).column("text").to_pylist()
                for row in range(max(start_row, first_row), first_row + rows):
                    yield row, texts[row - first_row]
            first_row += rows
    except (ValueError, KeyError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"cannot read the 'text' column of {path} ({str(e).splitlines()[0]}); delete the file and "
                        f"rerun to download it again") from None


def document_encoder(tokenizer):
    """The function that encodes one document: GPT-2's encode_ordinary, so that a document quoting
    "<|endoftext|>" cannot forge a separator; bpe.py's encode otherwise (as Hugging Face's does)."""
    return tokenizer.encoding.encode_ordinary if isinstance(tokenizer, GPT2Tokenizer) else tokenizer.encode


_worker_encode = None  # set in each worker process by _start_worker


def _start_worker(meta):
    global _worker_encode
    _worker_encode = document_encoder(load_tokenizer(meta))


def _tokenize_documents(texts, eot, dtype, encode=None):
    """[eot, ids of document 0..., eot, ids of document 1..., ...] and each document's token count."""
    encode = encode or _worker_encode
    import itertools

    ids = [[eot, *encode(text)] for text in texts]
    lengths = np.array([len(document) for document in ids], dtype=np.int64)
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum())), lengths


def _document_tasks(urls, out_dir, position):
    """Yield (file index, first row, rows in the file, texts) in tasks of DOCUMENTS_PER_TASK, from
    position (file, row) on, downloading each file when the stream reaches it."""
    for file_index in range(position[0], len(urls)):
        path = os.path.join(out_dir, "parquet", urls[file_index].rsplit("/", 1)[-1])
        if not os.path.exists(path):
            try:
                download(urls[file_index], path)
            except requests.RequestException as e:
                raise DataError(f"could not download {urls[file_index]} ({e.__class__.__name__}); rerun to "
                                f"resume, finished shards are kept") from None
        check_parquet_file(path)
        rows = _import_parquet().ParquetFile(path).metadata.num_rows
        texts, first_row = [], None
        for row, text in parquet_documents(path, position[1] if file_index == position[0] else 0):
            first_row = row if first_row is None else first_row
            texts.append(text)
            if len(texts) == DOCUMENTS_PER_TASK:
                yield file_index, first_row, rows, texts
                texts, first_row = [], None
        if texts:
            yield file_index, first_row, rows, texts


def _tokenized_tasks(tasks, meta, eot, dtype, processes):
    """Tokenize tasks in order with `processes` worker processes (1: in this one); yield (file, first
    row, rows in the file, ids, lengths).

    At most 2 tasks per process are in flight: Pool.imap would read the whole corpus ahead into its
    queue, while this keeps memory bounded whatever the corpus size."""
    if processes == 1:
        encode = document_encoder(load_tokenizer(meta))
        for *where, texts in tasks:
            yield *where, *_tokenize_documents(texts, eot, dtype, encode)
        return
    import collections
    import multiprocessing

    with multiprocessing.Pool(processes, initializer=_start_worker, initargs=(meta,)) as pool:
        pending = collections.deque()
        for *where, texts in tasks:
            pending.append((where, pool.apply_async(_tokenize_documents, (texts, eot, dtype))))
            if len(pending) >= 2 * processes:
                where, result = pending.popleft()
                yield *where, *result.get()
        while pending:
            where, result = pending.popleft()
            yield *where, *result.get()


def shards_tokenizer_meta(tokenizer):
    """The tokenizer meta for a sharded corpus: GPT-2 (the default), a pretrained tokenizer.json (or the
    model directory holding one), or the tokenizer of a prepared dataset (--tokenizer=data/NAME, e.g. a
    bpe.py tokenizer trained on TinyStories). Every one needs an end-of-text id to separate documents."""
    if tokenizer in (None, "gpt2"):
        return {"tokenizer": "gpt2"}
    if tokenizer in TOKENIZERS:
        raise DataError(f"--tokenizer={tokenizer} would train a tokenizer on the corpus, which is not done here; "
                        f"use gpt2, a tokenizer.json, or a prepared dataset's tokenizer: --tokenizer=data/NAME")
    if os.path.isfile(os.path.join(tokenizer, "meta.pkl")):
        keep = ("tokenizer", "bpe", "stoi", "itos", "source", "eos_token_id", "sentencepiece_model")
        return {key: value for key, value in load_meta(tokenizer).items() if key in keep}
    path = hf_tokenizer_path(tokenizer)
    if path is None:
        raise DataError(f"unknown tokenizer {tokenizer!r} for a sharded corpus; give gpt2, a tokenizer.json (or the "
                        f"model directory holding one), or a prepared dataset directory (data/NAME)")
    return hf_tokenizer_meta(path)


def prepare_shards(name, urls, data_root="data", tokenizer=None, max_tokens=None, max_shards=None,
                   shard_size=DEFAULT_SHARD_TOKENS, processes=None):
    """Stream the 'text' column of the parquet files at `urls` through a tokenizer into shards of
    `shard_size` tokens in <data_root>/<name>/: <name>_val_000000.bin, then <name>_train_000001.bin, ...
    (raw ids like train.bin), and a meta.pkl with format "shards". Stops after max_tokens tokens or
    max_shards shards (the validation shard included), or at the end of the corpus.

    A rerun continues after the last finished shard: each finished shard is renamed into place and then
    SHARDS_PROGRESS records where the next one starts (file, row, and how many tokens of that
    document the finished shard already holds), so the stream, and every shard, is the same as in one
    uninterrupted run."""
    if (max_tokens is not None and max_tokens < 1) or (max_shards is not None and max_shards < 1) or shard_size < 1:
        raise DataError("--max_tokens, --shards and --shard_size must be positive")
    processes = processes or os.cpu_count() or 1
    out_dir = os.path.join(data_root, name)
    meta = shards_tokenizer_meta(tokenizer)
    encoder = load_tokenizer(meta)
    eot = encoder.eot_token[0] if isinstance(encoder.eot_token, list) else encoder.eot_token
    if eot is None:
        raise DataError(f"the {meta['tokenizer']} tokenizer has no end-of-text token to separate documents with; "
                        f"use a tokenizer that has one")
    meta.update(vocab_size=encoder.vocab_size, dtype=token_dtype(encoder.vocab_size), format="shards",
                shard_size=shard_size, eot_token=eot)
    # What the finished shards depend on: the tokenizer and the shard size (not the caps, nor a mirror's URL).
    fingerprint = hashlib.sha256(pickle.dumps(meta)).hexdigest()
    meta["source"] = urls[0].rsplit("/", 1)[0]
    caps = {"max_tokens": max_tokens, "max_shards": max_shards}
    progress_path = os.path.join(out_dir, SHARDS_PROGRESS)
    progress = {"fingerprint": fingerprint, "shards": [], "next": [0, 0, 0]}
    if os.path.isfile(progress_path):
        with open(progress_path, encoding="utf-8") as f:
            progress = json.load(f)
        if progress["fingerprint"] != fingerprint:
            raise DataError(f"{out_dir} holds shards made with another tokenizer or shard size; delete it, or "
                            f"give this one another name")
    if is_prepared(out_dir):
        existing = load_meta(out_dir)
        if {key: existing.get(key) for key in caps} == caps:
            print(f"{out_dir} is already prepared ({existing['tokens']['train']:,} train tokens)")
            return out_dir
        os.remove(os.path.join(out_dir, "meta.pkl"))  # other caps: unfinished until meta.pkl is rewritten
    os.makedirs(out_dir, exist_ok=True)
    for stale in os.listdir(out_dir):  # what a killed run was writing (a finished shard is never a .tmp)
        if stale.startswith(f"{name}_") and stale.endswith(".tmp"):
            os.remove(os.path.join(out_dir, stale))

    dtype = np.dtype(meta["dtype"])
    buffer = np.empty(shard_size, dtype=dtype)  # the one shard held in memory
    shards = progress["shards"]  # [[file name, tokens], ...] of the finished shards
    filled, total = 0, sum(tokens for _, tokens in shards)
    file_index, row, skip = progress["next"]
    started, done_at_start, progress_line = time.monotonic(), total, ProgressLine()

    def limit_reached():
        return (max_tokens is not None and total >= max_tokens) or (max_shards is not None and len(shards) >= max_shards)

    def write_shard(next_position):
        path = os.path.join(out_dir, shard_name(name, len(shards)))
        _write_atomically(path, buffer[:filled].tofile)
        shards.append([os.path.basename(path), filled])
        if filled == shard_size:  # a short last shard is redone by a rerun that asks for more
            progress["next"] = next_position
            _write_atomically(progress_path, lambda temp: _write_json(temp, progress))

    tasks = _document_tasks(urls, out_dir, (file_index, row))
    for task_file, first_row, file_rows, ids, lengths in _tokenized_tasks(tasks, meta, eot, dtype, processes):
        if task_file == file_index and first_row == row and skip:  # the document a finished shard began
            ids, lengths = ids[skip:], lengths.copy()
            lengths[0] -= skip
        starts = np.concatenate([[0], np.cumsum(lengths)])
        used = 0
        while used < len(ids) and not limit_reached():
            room = shard_size - filled
            if max_tokens is not None:
                room = min(room, max_tokens - total)
            take = min(room, len(ids) - used)
            buffer[filled:filled + take] = ids[used:used + take]
            filled, total, used = filled + take, total + take, used + take
            if filled == shard_size or limit_reached():
                document = int(np.searchsorted(starts, used, side="right")) - 1
                offset = used - int(starts[document]) + (skip if document == 0 and task_file == file_index
                                                        and first_row == row else 0)
                write_shard([task_file, first_row + document, offset])
                filled = 0
        rate = (total - done_at_start) / max(time.monotonic() - started, 1e-9)
        if progress_line.due():
            fraction = (task_file + first_row / file_rows) / len(urls)  # of the corpus read
            if max_tokens is not None:
                fraction = max(fraction, total / max_tokens)
            left = f", {duration((1 - fraction) / fraction * (time.monotonic() - started))} left" if fraction > 0 else ""
            progress_line.show(f"tokenizing {urls[task_file].rsplit('/', 1)[-1]}: {len(shards)} shards done, "
                               f"{total / 1e6:,.1f}M tokens, {rate / 1e6:,.2f}M tokens/s{left}")
        if limit_reached():
            break
    if filled:  # the end of the corpus: its last, shorter shard
        write_shard(None)
    if not shards or len(shards) < 2:
        raise DataError(f"{name} gave {total:,} tokens, {len(shards)} shard(s): at least a val and a train shard are "
                        f"needed; raise --max_tokens or --shards, or lower --shard_size")
    meta.update(caps, shards={"val": [shards[0][0]], "train": [file for file, _ in shards[1:]]},
                tokens={"val": shards[0][1], "train": sum(tokens for _, tokens in shards[1:])})
    _write_atomically(os.path.join(out_dir, "meta.pkl"), lambda temp: _write_meta(temp, meta))
    progress_line.show(f"wrote {out_dir}: {len(shards)} shards of up to {shard_size:,} {meta['dtype']} ids, "
                       f"{meta['tokenizer']} tokenizer, train {meta['tokens']['train']:,} tokens, val "
                       f"{meta['tokens']['val']:,} tokens", final=True)
    return out_dir


def _write_atomically(path, write):
    """write(temp) a file beside path, then rename it over path: readers never see a partial file, and
    an interrupted write leaves the old one (and no temp file) behind."""
    temp = _temp_path_beside(path)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        _remove_if_present(temp)


# ----------------------------------------------------------------------------------------------------
# Loading (used by the training scripts and sample.py)


def dataset_format(data_dir):
    """How data_dir holds its tokens, or None when it holds no finished dataset:
        "bins"     train.bin, val.bin and meta.pkl, as prepare_data.py writes them
        "shards"   <name>_val_000000.bin, <name>_train_000001.bin, ... and a meta.pkl saying "shards"
        "nanogpt"  train.bin and val.bin without meta.pkl: nanoGPT's data/openwebtext (GPT-2 ids, uint16)
        "llmc"     *_train_*.bin and *_val_*.bin without meta.pkl: llm.c's or modded-nanogpt's shards"""
    def has(file):
        return os.path.isfile(os.path.join(data_dir, file))

    if has("meta.pkl"):
        if all(has(file) for file in OUTPUT_FILES):
            return "bins"
        return "shards" if not has("train.bin") and load_meta(data_dir).get("format") == "shards" else None
    if has(RENAMING_MARKER) or has(SHARDS_PROGRESS) or not os.path.isdir(data_dir):  # being written
        return None
    if has("train.bin") and has("val.bin"):
        return "nanogpt"
    files = os.listdir(data_dir)
    if any("_train_" in f and f.endswith(".bin") for f in files) and any("_val_" in f and f.endswith(".bin") for f in files):
        return "llmc"
    return None


def is_prepared(data_dir):
    return dataset_format(data_dir) is not None


def is_labelled(data_dir):
    """Whether data_dir holds a labelled dataset (train.tsv and val.tsv, as prepare_shakespeare_speakers writes)."""
    return os.path.isfile(os.path.join(data_dir, "train.tsv"))


def not_a_token_stream(data_dir, kind):
    """The error for a dataset of another kind ('labelled' or 'pairs') given to a reader of token streams."""
    holds = {"labelled": "labelled lines (for bert.py's classifier: --task=classify)",
             "pairs": "(input, target) pairs whose separators are ids past its vocabulary (for t5.py)"}[kind]
    return DataError(f"dataset {os.path.basename(os.path.normpath(data_dir))!r} holds {holds}, not a token "
                     f"stream for a language model")


def ensure_prepared(dataset, data_root="data"):
    """Return <data_root>/<dataset>, preparing it first if it is a known dataset that is not there yet.

    For the loaders of token files (BatchLoader, t5.py's): a labelled dataset is refused, not prepared."""
    data_dir = os.path.join(data_root, dataset)
    if is_prepared(data_dir):
        if load_meta(data_dir).get("excerpt"):  # said when it was prepared, but a new user compares every run
            print(f"warning: {data_dir} holds the 40 KB excerpt of tiny Shakespeare, so results will differ from "
                  f"the README's; python prepare_data.py {dataset} prepares the full text", file=sys.stderr)
        return data_dir
    if dataset in LABELLED_DATASETS or is_labelled(data_dir):
        raise not_a_token_stream(data_dir, "labelled")
    if dataset in DATASETS or dataset in SHARDED_DATASETS:
        print(f"{data_dir} is not prepared yet; preparing it now (python prepare_data.py {dataset})")
        return prepare(dataset, data_root=data_root)
    prepared = [n for n in sorted(os.listdir(data_root)) if is_prepared(os.path.join(data_root, n))] \
        if os.path.isdir(data_root) else []
    suggestion = did_you_mean(dataset, [*DATASETS, *prepared])
    if suggestion:
        raise DataError(f"dataset {dataset!r} not found: {data_dir} lacks train.bin, val.bin or meta.pkl{suggestion}")
    raise DataError(f"dataset {dataset!r} not found: {data_dir} lacks train.bin, val.bin or meta.pkl; prepare "
                    f"it with: python prepare_data.py {dataset} --input=path/to/text.txt --tokenizer=char")


def load_meta(data_dir):
    path = os.path.join(data_dir, "meta.pkl")
    if not os.path.isfile(path) and is_labelled(data_dir):
        raise not_a_token_stream(data_dir, "labelled")
    if not os.path.isfile(path) and dataset_format(data_dir) in ("nanogpt", "llmc"):
        # Both hold GPT-2 ids as uint16, which is all nanoGPT and llm.c's version 1 ever write.
        return {"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16", "format": dataset_format(data_dir)}
    if not os.path.isfile(path):
        raise DataError(f"{path} not found; prepare the dataset first (python prepare_data.py ...)")
    # pickle runs code from the file while loading: fine for meta.pkl files this script wrote.
    with open(path, "rb") as f:
        meta = pickle.load(f)
    if not isinstance(meta, dict) or "tokenizer" not in meta:
        raise DataError(f"{path} is not a meta.pkl written by prepare_data.py; prepare the dataset again")
    return meta


def llmc_shard_tokens(path):
    """The token count in an llm.c shard's header, after checking its magic number, version and size."""
    header = np.fromfile(path, dtype=np.int32, count=LLMC_HEADER_INTS)
    if len(header) < LLMC_HEADER_INTS or header[0] != LLMC_MAGIC:
        raise DataError(f"{path} is not an llm.c shard (its first int32 is not the magic number {LLMC_MAGIC}); "
                        f"remove it from the folder")
    if header[1] != LLMC_VERSION:
        raise DataError(f"{path} is an llm.c shard of version {header[1]}, not {LLMC_VERSION} (GPT-2 ids as uint16), "
                        f"the only one read here; prepare it again with GPT-2's tokenizer")
    expected = 4 * LLMC_HEADER_INTS + 2 * int(header[2])
    if os.path.getsize(path) != expected:
        raise DataError(f"{path} is {os.path.getsize(path):,} bytes but its header says {header[2]:,} tokens "
                        f"({expected:,} bytes): it is truncated or damaged; download or prepare it again")
    return int(header[2])


def token_files(data_dir, meta):
    """{split: [(path, header bytes, tokens), ...]}: the files each split's tokens are in."""
    dtype = np.dtype(meta.get("dtype", "uint16"))
    if meta.get("format") == "shards":
        return {split: [(path, 0, os.path.getsize(path) // dtype.itemsize)
                        for path in (os.path.join(data_dir, file) for file in meta["shards"][split])]
                for split in ("train", "val")}
    if meta.get("format") == "llmc":
        return {split: [(path, 4 * LLMC_HEADER_INTS, llmc_shard_tokens(path))
                        for path in (os.path.join(data_dir, file) for file in sorted(os.listdir(data_dir))
                                     if f"_{split}_" in file and file.endswith(".bin"))]
                for split in ("train", "val")}
    files = {}
    for split in ("train", "val"):
        path = os.path.join(data_dir, f"{split}.bin")
        if not os.path.isfile(path):
            raise DataError(f"{path} not found; prepare the dataset first (python prepare_data.py ...)")
        files[split] = [(path, 0, os.path.getsize(path) // dtype.itemsize)]
    return files


class BatchLoader:
    """Random (x, y) batches of a dataset's train or val tokens, y being x shifted by one token.

    The tokens may be one file per split (train.bin, val.bin: prepare_data's own datasets and nanoGPT's)
    or many shards (prepare_data's web-scale corpora, llm.c's): each sequence is a window drawn uniformly
    from all windows of the split, which picks a shard with probability proportional to its length, and
    never spans two shards. For one file this is exactly one torch.randint over its windows."""

    def __init__(self, data_dir, block_size, batch_size, device):
        self.block_size, self.batch_size = block_size, batch_size
        self.device = device
        meta = load_meta(data_dir)
        if "pair_separators" in meta:  # a language model would be fed ids that its embedding lacks
            raise not_a_token_stream(data_dir, "pairs")
        self.dtype = np.dtype(meta.get("dtype", "uint16"))  # uint32 for vocabularies > 65536
        self.files = token_files(data_dir, meta)
        self.window_ends = {}  # per split: the cumulative count of windows up to the end of each file
        for split, files in self.files.items():
            n_tokens = sum(tokens for _, _, tokens in files)
            windows = [max(0, tokens - block_size) for _, _, tokens in files]  # x needs block_size tokens, y one more
            if len(files) <= 1 and n_tokens < block_size + 1:
                raise DataError(f"{split} split has {n_tokens} tokens, fewer than block_size+1={block_size + 1}; "
                                f"lower block_size or provide more text")
            if sum(windows) == 0:
                raise DataError(f"{split} split has no shard of block_size+1={block_size + 1} tokens or more in "
                                f"{data_dir}; lower block_size")
            self.window_ends[split] = np.cumsum(windows)

    def get_batch(self, split):
        import torch  # imported here: preparing data never needs torch, and importing it takes seconds

        ends = self.window_ends[split]
        # The global torch RNG, not a private generator: training scripts seed it per DDP rank (so ranks
        # draw different batches) and save and restore its state (so a resumed run draws the same batches).
        draws = torch.randint(int(ends[-1]), (self.batch_size,)).tolist()
        files = np.searchsorted(ends, draws, side="right")  # the file each window lies in
        # A fresh memmap per call: a long-lived np.memmap keeps every page it has touched referenced, so
        # over a long run the process appears to hold the whole file in memory (a known leak). Opening
        # one costs microseconds.
        data = {}
        for k in set(files.tolist()):
            path, header_bytes, tokens = self.files[split][k]
            data[k] = np.memmap(path, dtype=self.dtype, mode="r", offset=header_bytes, shape=(tokens,))
        starts = [(k, draw - int(ends[k - 1] if k else 0)) for k, draw in zip(files.tolist(), draws)]
        # uint16/uint32 -> int64 because embedding lookups and cross_entropy targets want int64 indices.
        x = torch.from_numpy(np.stack([data[k][i:i + self.block_size] for k, i in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[k][i + 1:i + 1 + self.block_size] for k, i in starts]).astype(np.int64))
        if torch.device(self.device).type == "cuda":
            # Page-locked memory lets the copy to the GPU run asynchronously, overlapping the next step.
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


# ----------------------------------------------------------------------------------------------------
# Command line


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # argparse would print the usage and exit with 2; report it like every other mistake instead.
        raise DataError(f"{message} (see python prepare_data.py --help)")


def main(argv=None):
    datasets_help = "\n".join(f"  {name:18} {about}" for name, (_, _, about) in DATASETS.items())
    datasets_help += "".join(f"\n  {name:18} {about}" for name, about in SHARDED_DATASETS.items())
    datasets_help += "".join(f"\n  {name:18} {about}" for name, about in LABELLED_DATASETS.items())
    parser = _ArgumentParser(
        description="Tokenize a text into data/NAME/{train.bin,val.bin,meta.pkl}.",
        epilog=f"ready-made datasets:\n{datasets_help}\nany other NAME needs --input and --tokenizer.",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("name", help="a ready-made dataset, or the folder name for your own --input text")
    parser.add_argument("--input", dest="input_path", metavar="FILE", help="a UTF-8 text file to prepare as dataset NAME")
    parser.add_argument("--tokenizer", metavar="NAME", help=f"one of {', '.join(TOKENIZERS)}, or a tokenizer.json / "
                                                            f"SentencePiece .model file / Hugging Face model directory "
                                                            f"(required with --input)")
    parser.add_argument("--vocab_size", type=int, metavar="N",
                        help=f"BPE vocabulary size (default {DEFAULT_BPE_VOCAB_SIZE}; tinystories "
                             f"{DATASETS['tinystories'][1]}); at most {MAX_VOCAB_SIZE}")
    parser.add_argument("--data_root", default="data", metavar="DIR", help="where dataset folders go (default: ./data)")
    sharded = ", ".join(SHARDED_DATASETS)
    parser.add_argument("--max_tokens", type=int, metavar="N", help=f"{sharded}: stop after N tokens (val shard included)")
    parser.add_argument("--shards", dest="max_shards", type=int, metavar="N",
                        help=f"{sharded}: stop after N shards (val shard included)")
    parser.add_argument("--shard_size", type=int, metavar="N",
                        help=f"{sharded}: tokens per shard (default {DEFAULT_SHARD_TOKENS:,})")
    parser.add_argument("--processes", type=int, metavar="N", help=f"{sharded}: tokenizer processes (default: all cores)")
    try:
        args = parser.parse_args(argv)
        prepare(args.name, args.input_path, args.tokenizer, args.vocab_size, args.data_root, max_tokens=args.max_tokens,
                max_shards=args.max_shards, shard_size=args.shard_size, processes=args.processes)
    except (DataError, OSError, ValueError) as e:  # ValueError: bpe.py and tiktoken reject bad input so
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command (downloads resume where they stopped)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
