"""
Byte-level Byte Pair Encoding (BPE): training, encoding and decoding in one file,
and reading pretrained models' tokenizers (byte-level, or SentencePiece-style BPE).

What BPE is
-----------
A language model reads integers, not text, so we need a tokenizer: a reversible
map from strings to sequences of ids. Characters give short vocabularies but long
sequences; whole words give short sequences but an open-ended vocabulary that can
never cover every typo or name. BPE sits in between. It starts from the smallest
units and repeatedly *merges the most frequent adjacent pair* into a new unit,
recording each merge. After N merges the vocabulary is (base units + N merged
units), frequent words have become single tokens, and rare words still decompose
into smaller known pieces, so nothing is ever out of vocabulary.

History
-------
* Gage (1994) introduced byte pair encoding as a data *compression* algorithm.
* Sennrich, Haddow & Birch, "Neural Machine Translation of Rare Words with
  Subword Units" (ACL 2016) repurposed it for NLP: merges are learned on
  characters inside words, giving an open vocabulary for translation.
* Radford et al., GPT-2 (2019) made it *byte-level*: the base units are the 256
  possible byte values of UTF-8 text, so any string at all (emoji, Chinese,
  binary junk) can be encoded with no "unknown" token. They also split text with
  a regular expression into "pre-tokens" (words, numbers, punctuation runs,
  whitespace runs) and never merge across them, so "dog." and "dog!" share the
  token "dog" instead of growing separate "dog." and "dog!" tokens.
  tiktoken (OpenAI) and Hugging Face `tokenizers` implement the same scheme in
  Rust; GPT-2/3/4, Llama 3 and Qwen all use byte-level BPE.

SentencePiece-style BPE
-----------------------
Llama 1 and 2, TinyLlama and Mistral were trained with Google's SentencePiece
(Kudo & Richardson, 2018) in its BPE mode, and their tokenizer.json files
describe the same algorithm in Hugging Face's terms. It is BPE too (the same
merge loop, the same encoder), but it differs from GPT-2's byte-level BPE in
three ways:
* Characters, not bytes, are the base units. Only a character missing from the
  vocabulary falls back to its UTF-8 bytes, as the 256 tokens <0x00>..<0xFF>
  ("byte_fallback"), so "é" is one token if it was frequent in training and the
  two tokens <0xC3> <0xA9> if it was not. Nothing is out of vocabulary either.
* A space is not a byte to hide but a visible character: every " " becomes
  "▁" (U+2581), and a "▁" goes in front of the text as well, so "Hello world"
  is "▁Hello▁world" and the first word gets the same token as a word after a
  space. Decoding turns "▁" back into spaces and drops the one added in front.
* No regex pre-split: the text is not cut into words first. SentencePiece keeps
  "▁" at the start of pieces only, so its merges stay within words anyway, but
  one merge rule meets the whole text, and runs like "▁▁▁" are tokens of their own.
Here such a vocabulary is stored with spaces in place of "▁" and the byte
tokens listed apart (the `sentencepiece` option of WithSentencePieceStyle), so
encoding and decoding are the byte-level code with a different first step.

What you learn by reading this file, top to bottom
--------------------------------------------------
1. Where text can be cut into chunks without changing the result
   (`_cut_patterns`), which is what makes parallel training, parallel file
   encoding and streaming encoding exact.
2. Training (`train_bpe`): count pre-tokens once, then run the merge loop with
   *incremental* pair counts, so each merge touches only the words that contain
   the merged pair, plus a heap with lazy invalidation to find the best pair.
   The textbook version re-counts every pair after every merge, which is
   O(merges x corpus); the incremental one is fast enough for real corpora.
3. Encoding and decoding, in six classes, each a subclass of the one before
   that adds one idea (and each usable alone):
   a. `ByteLevelBPE`: apply the learned merges to each pre-token in the order
      they were learned (lowest "rank" first), with a cache because natural
      text repeats the same words constantly (Zipf's law); decode.
   b. `WithSpecialTokens`: strings such as "<|endoftext|>" that are always one
      id, and the template that puts a BOS token before a prompt.
   c. `WithSentencePieceStyle`: a normalizer (a Unicode normal form), and
      SentencePiece-style BPE: characters as the base units, "▁" for spaces.
   d. `WithStreaming`: `encode_iterable`, exact streaming at the cuts of 1.
   e. `WithFileFormats`: GPT-2's files (encoder.json + vocab.bpe) and a
      plain-data form for checkpoints.
   f. `Tokenizer`, the class the other files use: Hugging Face's
      tokenizer.json, so you can load real tokenizers (GPT-2, Llama 2 and 3,
      Qwen, SmolLM2, TinyLlama, Mistral, OLMo) and check that this code
      reproduces them id for id (tests/test_bpe.py and tests/test_bpe_hf.py
      compare against tiktoken and `tokenizers`), including what their files
      add around BPE: normalizers, several pre-tokenization steps, and added
      tokens with their options.
4. `encode_file_to_bin`: a text file into nanoGPT's flat array of ids, encoded
   in parallel chunks cut as in 1; then the command line.

Conventions used throughout
---------------------------
* Vocabulary ids: 0..255 are the single bytes (id == byte value), then one id per
  merge in the order learned (256, 257, ...), then the special tokens at the end
  in the order given. GPT-2 does the same thing for its one special token
  (<|endoftext|> = 50256, the last id). Loaded tokenizers (GPT-2, Hugging Face)
  keep whatever ids their files say, so code must never assume id == byte.
* A merge is a pair of byte strings (left, right); its "rank" is its position in
  the merge list. Lower rank = learned earlier = more frequent = applied first.
* Special tokens (e.g. "<|endoftext|>") are cut out of the text *before*
  pre-tokenization, so they are always one id and never take part in merges.

Usage
-----
    python bpe.py train --input=input.txt --vocab_size=4096 --out=out/shakespeare \
        --special_tokens="<|endoftext|>"
    python bpe.py encode --tokenizer=out/shakespeare --text="To be, or not to be"
    python bpe.py decode --tokenizer=out/shakespeare --ids="1,2,3"
"""

import argparse
import heapq
import json
import math
import multiprocessing
import operator
import os
import secrets
import sys
import time
import unicodedata
from collections import Counter

import numpy as np
import regex

# GPT-2's pre-tokenization pattern (the `pat` in openai/gpt-2 encoder.py). Read
# the alternatives left to right, the first that matches at a position wins:
#   's 't 're 've 'm 'll 'd   English contractions as their own pieces
#   " ?\p{L}+"                a word, with at most one leading space glued on, so
#                             " the" (mid-sentence) and "the" are distinct tokens
#   " ?\p{N}+"                a number, same leading-space rule
#   " ?[^\s\p{L}\p{N}]+"      a run of punctuation/symbols
#   "\s+(?!\S)"               a whitespace run, minus its last character when a
#                             non-space follows (that last space then glues onto
#                             the next word via " ?\p{L}+")
#   "\s+"                     any remaining whitespace (e.g. a lone "\n")
# Known quirks we keep on purpose, for exact compatibility: the contractions are
# case-sensitive ("'S" is not matched) and ASCII-apostrophe only.
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

# Below this size a file is pre-tokenized / encoded in the calling process:
# starting worker processes costs ~0.1 s, more than the work it would save.
MIN_PARALLEL_BYTES = 1 << 20
# Upper bound on one chunk handed to a worker. A chunk is decoded to a str and
# split into pre-token strings all at once, which costs ~10x its size in memory,
# so this is what bounds memory on multi-GB corpora.
MAX_CHUNK_BYTES = 8 << 20
# encode_file_to_bin's chunks: at most this big, so that encoded chunks reach
# the output file steadily instead of all at the end.
ENCODE_CHUNK_BYTES = 1 << 20
# How much of a file is read at a time while looking for the next safe cut.
CUT_SEARCH_BYTES = 1 << 20



# ----------------------------------------------------------------------------
# Special tokens and safe cut points
# ----------------------------------------------------------------------------

def _special_token_regex(special_tokens):
    """Regex matching any special token, preferring the longest at a position.

    Regex alternation is "first alternative that matches wins", not "longest",
    so sorting longest first makes "<|endoftext|>x" beat "<|endoftext|>" when
    both are registered and both match at the same place.
    """
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("|".join(regex.escape(tok) for tok in ordered))


def _specials_can_overlap(special_tokens):
    """True if an occurrence of one special token could hide inside or overlap
    another (a proper suffix of one is a prefix of, or starts with, another).

    Only then can a special token found by searching from an arbitrary offset
    fail to be a real match of a left-to-right scan; see _cut_patterns.
    """
    for outer in special_tokens:
        for start in range(1, len(outer)):
            tail = outer[start:]
            if any(tail.startswith(t) or t.startswith(tail) for t in special_tokens):
                return True
    return False


# Whitespace characters after which a cut is allowed (see _cut_patterns).
_CUT_SPACES = " \t\n\r"


def _cut_patterns(pattern, special_tokens):
    r"""Regexes (for str, for bytes) whose match *starts* are safe cut points.

    A cut at position k is safe when pre-tokenizing text[:k] and text[k:]
    separately gives exactly the pre-tokens of the whole text. That is what
    parallel training, parallel file encoding and streaming encoding rely on.

    Cut 1, the start of a special token. Special tokens are removed before
    pre-tokenization, so their starts are segment ends anyway. We search for
    them from arbitrary offsets, so we need every occurrence to be a real match
    of a left-to-right scan; that holds unless two special tokens can overlap
    (e.g. "ab" and "ba"), in which case this cut is disabled.

    Cut 2, GPT-2's pattern only: just before a whitespace character w (space,
    tab, \n, \r) that is directly followed by a printable ASCII non-space c,
    where c does not start a special token.
    Why this is safe: no GPT-2 pre-token ends in whitespace and then continues,
    and the only whitespace glued *forward* is a single " " before c. Take the
    whitespace run R that ends with w. Because c is not the start of a special
    token, c is in the same segment as w (the text between special tokens that
    is pre-tokenized as one piece), so w is not the last character of its
    segment. In the whole text, "\s+(?!\S)" then takes R minus w (the lookahead
    sees w, a space, and succeeds; one more character would see c and fail),
    and w is alone or glued to c. Cut before w: the left part ends with R minus
    w, which "\s+(?!\S)" takes entirely because the string ends there; the
    right part starts with w then c, tokenized as before. Both halves agree with
    the single pass.
    If c started a special token, the segment would end at w, "\s+(?!\S)" would
    take all of R as one pre-token (nothing follows it inside the segment), and
    the cut would split it in two: "...\n\n<|endoftext|>" has one "\n\n"
    pre-token, the halves "\n" and "\n". Hence the negative lookahead for the
    special tokens. (If special tokens can overlap, a special token spelled at c
    is still a real match: a match that began earlier would contain w.)
    Requiring c to be ASCII lets us test it on raw bytes (a byte < 0x80 is
    always a whole UTF-8 character) and keeps the rule one cheap regex. Other
    patterns (e.g. Llama 3's, where ":\n" is one pre-token) break this argument,
    so for them only Cut 1 is used; and if a special token itself contains such
    whitespace, Cut 2 could land inside it, so it is disabled then too.

    A match is only decided by the text after its start (Cut 2 looks past c
    for a special token), so a search in a window of the text must not trust a
    match within _cut_lookahead(special_tokens) characters of the window's end,
    unless the window ends where the text does.

    Returns (None, None) when no cut is safe: the text is then one chunk.
    """
    str_alternatives, bytes_alternatives = [], []
    ordered = sorted(special_tokens, key=len, reverse=True)
    if special_tokens and not _specials_can_overlap(special_tokens):
        str_alternatives += [regex.escape(tok) for tok in ordered]
        bytes_alternatives += [regex.escape(tok.encode("utf-8")) for tok in ordered]
    if pattern == GPT2_SPLIT_PATTERN and not any(
        ch in tok for tok in special_tokens for ch in _CUT_SPACES
    ):
        str_cut2, bytes_cut2 = r"[ \t\n\r](?=[\x21-\x7e])", rb"[ \t\n\r](?=[\x21-\x7e])"
        if special_tokens:
            str_cut2 += "(?!" + "|".join(regex.escape(tok) for tok in ordered) + ")"
            bytes_cut2 += b"(?!" + b"|".join(regex.escape(tok.encode("utf-8")) for tok in ordered) + b")"
        str_alternatives.append(str_cut2)
        bytes_alternatives.append(bytes_cut2)
    if not str_alternatives:
        return None, None
    return (
        regex.compile("|".join(str_alternatives)),
        regex.compile(b"|".join(bytes_alternatives)),
    )


def _cut_lookahead(special_tokens):
    """How many bytes from a cut match's start decide it: the whitespace w and
    c for Cut 2, or w and a whole special token after it; a special token for
    Cut 1. Counted in UTF-8 bytes, which is also a bound in characters."""
    return 1 + max([1] + [len(tok.encode("utf-8")) for tok in special_tokens])


def _find_cut(file, offset, size, cut_re, lookahead):
    """First safe cut at or after byte `offset` of an open binary file (or size)."""
    window = max(CUT_SEARCH_BYTES, 2 * lookahead)
    while offset < size:
        file.seek(offset)
        data = file.read(window)
        at_end = offset + len(data) >= size
        match = cut_re.search(data)
        # A match whose lookahead runs past the window's end may be wrong (the
        # window could end inside "<|endoftext|>", hiding it from Cut 2's
        # check), so it counts only if it has all it needs in view.
        if match and (at_end or match.start() + lookahead <= len(data)):
            return offset + match.start()
        if at_end:
            break
        # The next window starts early enough to see every undecided match whole.
        offset += len(data) - lookahead
    return size


def _chunk_ranges(path, size, chunk_bytes, cut_re, lookahead):
    """Split [0, size) of a file into byte ranges of about chunk_bytes, cut only
    at safe points. Cuts fall on ASCII bytes or special-token starts, so every
    range is also valid UTF-8 on its own if the file is."""
    if cut_re is None or size <= chunk_bytes:
        return [(0, size)]
    starts = [0]
    with open(path, "rb") as file:
        while True:
            cut = _find_cut(file, starts[-1] + chunk_bytes, size, cut_re, lookahead)
            if cut >= size:
                break
            starts.append(cut)
    return list(zip(starts, starts[1:] + [size]))


def _read_text(path, start, end):
    with open(path, "rb") as file:
        file.seek(start)
        data = file.read(end - start)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not valid UTF-8 (bad byte at offset {start + exc.start}); "
            "convert it to UTF-8 first"
        ) from None


def _check_input_file(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file {path!r} does not exist")
    return os.path.getsize(path)


def _default_processes(num_processes):
    if num_processes is None:
        return os.cpu_count() or 1
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
    return num_processes


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

def _count_pretokens(args):
    """Worker: pre-token string -> count, for one byte range of the corpus."""
    path, start, end, special_tokens = args
    text = _read_text(path, start, end)
    special_re = _special_token_regex(special_tokens)
    segments = special_re.split(text) if special_re else [text]
    split_re = regex.compile(GPT2_SPLIT_PATTERN)
    counts = Counter()
    for segment in segments:
        counts.update(split_re.findall(segment))
    return counts


def _descending_key(token):
    """A sort key that orders byte strings in *reverse* lexicographic order.

    heapq is a min-heap, but ties must go to the lexicographically *greater*
    pair. Negating a count is easy; negating a byte string is not, so map each
    byte b to 255 - b and append 256 as a terminator. The terminator makes a
    string sort *after* its own extensions (b"ab" > b"a" normally, so under the
    reversed order b"a" must come later), which plain 255 - b would get wrong.
    """
    return tuple(255 - b for b in token) + (256,)


def merge_pair(ids, left, right, merged):
    """Return ids with every adjacent (left, right) replaced by `merged`, scanning left to right.

    The one operation of BPE training: a new merge applied to every word that has the pair.
    (Encoding replays the merges one occurrence at a time, which gives the same result for
    trained merges; see ByteLevelBPE._encode_pretoken.) Left to right matters for repeats: with the
    merge (a, a), "a a a" becomes "aa a", as GPT-2's encoder does.
    """
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == left and ids[i + 1] == right:
            out.append(merged)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(input_path, vocab_size, special_tokens=(), num_processes=None, verbose=False):
    """Learn a byte-level BPE vocabulary from a UTF-8 text file.

    Returns (vocab, merges): vocab maps id -> bytes (0..255 single bytes, then
    one id per merge, then the special tokens in the given order) and merges is
    the list of (left, right) byte pairs in the order they were learned.
    Ties between equally frequent pairs go to the lexicographically greater
    (left, right) pair of byte strings, so results are deterministic. Training
    stops early (with a smaller vocabulary) if every pre-token has become a
    single token before vocab_size is reached.
    """
    start_time = time.perf_counter()
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a list of strings, e.g. [{special_tokens!r}]")
    special_tokens = list(dict.fromkeys(special_tokens))  # dedupe, keep order
    if any(not isinstance(tok, str) or not tok for tok in special_tokens):
        raise ValueError("special tokens must be non-empty strings")
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
        raise ValueError(
            f"vocab_size must be an integer >= 256 (the byte tokens) + "
            f"{len(special_tokens)} (special tokens) = {256 + len(special_tokens)}, "
            f"got {vocab_size!r}"
        )
    num_processes = _default_processes(num_processes)
    size = _check_input_file(input_path)

    # --- 1. Pre-tokenize and count, in parallel over safe chunks. ---
    # The merge loop only needs each distinct pre-token and how often it occurs,
    # not the text: 1.1 MB of Shakespeare is ~300k pre-tokens but only ~15k
    # distinct ones, and the ratio improves as corpora grow.
    cut_str, cut_bytes = _cut_patterns(GPT2_SPLIT_PATTERN, special_tokens)
    if num_processes == 1 or size < MIN_PARALLEL_BYTES:
        chunk_bytes = min(max(size, 1), MAX_CHUNK_BYTES)
    else:
        chunk_bytes = min(MAX_CHUNK_BYTES, math.ceil(size / num_processes))
    ranges = _chunk_ranges(input_path, size, chunk_bytes, cut_bytes, _cut_lookahead(special_tokens))
    jobs = [(input_path, start, end, special_tokens) for start, end in ranges]
    word_counts = Counter()
    if len(jobs) == 1 or num_processes == 1:
        for job in jobs:
            word_counts.update(_count_pretokens(job))
    else:
        with multiprocessing.get_context().Pool(min(num_processes, len(jobs))) as pool:
            for counts in pool.imap_unordered(_count_pretokens, jobs):
                word_counts.update(counts)
    if not word_counts:
        raise ValueError(
            f"corpus {input_path!r} is empty (no text outside special tokens); "
            "train on a file that contains text"
        )
    if verbose:
        print(
            f"pre-tokenized {size:,} bytes in {len(jobs)} chunk(s): "
            f"{sum(word_counts.values()):,} pre-tokens, {len(word_counts):,} distinct "
            f"({time.perf_counter() - start_time:.2f}s)"
        )

    # --- 2. Merge loop with incremental pair counts. ---
    # Each distinct pre-token becomes a list of token ids ("symbols"); all the
    # bookkeeping is weighted by the pre-token's count, which is the whole point
    # of counting first: a word seen 10,000 times is processed once.
    vocab = {i: bytes([i]) for i in range(256)}
    sort_key = {i: _descending_key(vocab[i]) for i in range(256)}
    words = [list(word.encode("utf-8")) for word in word_counts]
    counts = list(word_counts.values())
    del word_counts

    # pair_counts: how many times each adjacent pair occurs in the corpus. Every
    # adjacent position counts, so "aaa" holds the pair (a, a) twice, as in
    # GPT-2/HF/minbpe; the merge itself then goes left to right without overlap.
    # pair_words: which words contain each pair, so a merge visits only those.
    # It is allowed to go stale (list a word that no longer has the pair); the
    # merge step simply finds nothing to do there, which is cheaper than keeping
    # the sets exact on every change.
    pair_counts = Counter()
    pair_words = {}
    for index, (symbols, count) in enumerate(zip(words, counts)):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += count
            pair_words.setdefault(pair, set()).add(index)

    # Max-heap (via negated counts) of (count, tie-break key, pair). Counts only
    # change for a few pairs per merge, so instead of updating entries in place
    # (heapq cannot) we push a fresh entry whenever a count *rises* and never on
    # a fall. Popped entries are checked against pair_counts ("lazy
    # invalidation"): equal -> it is the true maximum; higher than the truth ->
    # stale, re-push with the true count; otherwise drop it. An entry whose count
    # is too high can only be popped early, never late, so the first valid pop is
    # always the real best pair.
    heap = [(-c, sort_key[a], sort_key[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    num_merges = vocab_size - 256 - len(special_tokens)
    report_every = max(1, num_merges // 10)
    while len(merges) < num_merges and heap:
        neg_count, _, _, a, b = heapq.heappop(heap)
        current = pair_counts.get((a, b), 0)
        if current != -neg_count:
            if 0 < current < -neg_count:
                heapq.heappush(heap, (-current, sort_key[a], sort_key[b], a, b))
            continue

        new_id = 256 + len(merges)
        vocab[new_id] = vocab[a] + vocab[b]
        sort_key[new_id] = _descending_key(vocab[new_id])
        merges.append((vocab[a], vocab[b]))

        # Rewrite every word containing (a, b). Rather than reason about which
        # neighbouring pairs appear and disappear (fiddly with repeats such as
        # "aaaa"), remove all of the old word's pairs and add all of the new
        # word's: words are short, and only the net change is applied below.
        delta = Counter()
        for index in pair_words.pop((a, b)):
            old = words[index]
            new = merge_pair(old, a, b, new_id)
            if len(new) == len(old):
                continue  # stale entry: this word no longer contains (a, b)
            words[index] = new
            count = counts[index]
            for pair in zip(old, old[1:]):
                delta[pair] -= count
            for pair in zip(new, new[1:]):
                delta[pair] += count
                # Only pairs with the new token are new to this word; the others
                # were already adjacent in `old`, so their set holds the word.
                if new_id in pair:
                    pair_words.setdefault(pair, set()).add(index)
        for pair, change in delta.items():
            if change == 0:
                continue
            total = pair_counts[pair] + change
            if total > 0:
                pair_counts[pair] = total
                if change > 0:
                    heapq.heappush(heap, (-total, sort_key[pair[0]], sort_key[pair[1]], *pair))
            else:
                del pair_counts[pair]
                pair_words.pop(pair, None)
        pair_counts.pop((a, b), None)

        if verbose and len(merges) % report_every == 0:
            print(
                f"merge {len(merges):,}/{num_merges:,}: {merges[-1]!r} "
                f"(count {-neg_count:,}) {time.perf_counter() - start_time:.2f}s"
            )

    if verbose and len(merges) < num_merges:
        print(f"stopped after {len(merges):,} merges: no adjacent pairs are left")
    for tok in special_tokens:
        vocab[len(vocab)] = tok.encode("utf-8")
    if verbose:
        print(f"trained vocab of {len(vocab):,} tokens in {time.perf_counter() - start_time:.2f}s")
    return vocab, merges


# ----------------------------------------------------------------------------
# Encoding and decoding, in layers
# ----------------------------------------------------------------------------
#
# The tokenizer is six classes, each a subclass of the one before that adds one
# idea, so it can be read, and tried, a layer at a time:
#   ByteLevelBPE            pre-tokenize with a regex, merge each pre-token, decode
#   WithSpecialTokens       strings that are always one id; a template (BOS)
#   WithSentencePieceStyle  a normalizer; characters as base units, bytes as fallback
#   WithStreaming           encode an iterable of strings in bounded memory
#   WithFileFormats         GPT-2's files, and a plain-data form for checkpoints
#   Tokenizer               Hugging Face's tokenizer.json and its added-token flags
# A layer changes the earlier ones only by overriding a few small methods, which
# its docstring names, called once per piece of text or per pre-token not yet in
# the cache: the loop over pre-tokens stays in ByteLevelBPE._encode_ordinary, so
# a cached pre-token costs what it would in one flat class.

# Pre-tokens with more symbols than this are merged with a heap (see
# ByteLevelBPE._merge_long_word) instead of the simple quadratic loop.
LONG_WORD_SYMBOLS = 256
# Bound on the per-tokenizer pre-token cache (pre-token string -> ids). Natural
# text has a heavy head, so even a cleared cache refills with the useful entries.
ENCODE_CACHE_LIMIT = 1 << 18


def _is_known_id(value, vocab):
    try:
        return operator.index(value) in vocab
    except TypeError:
        return False


class ByteLevelBPE:
    """Layer 1, the algorithm: byte-level BPE as GPT-2 encodes. The text is cut
    into pre-tokens by a regex, each pre-token starts as its UTF-8 bytes, and
    the merges are replayed on it in the order they were learned; decoding
    joins the tokens' bytes.

    Read first: the module docstring and train_bpe, which makes the inputs.
    vocab: dict id -> bytes. merges: list of (left, right) byte pairs, in rank
    order; both halves and their concatenation must be in the vocabulary.
    pattern: the pre-tokenization regex (GPT-2's by default); or a list of
    regexes applied one after another, each splitting the pieces the previous
    one made (SmolLM2 isolates every digit, then applies GPT-2's regex); or
    None, no pre-split: the whole text is one word (SentencePiece style, the
    only place the full Tokenizer accepts it).
    ignore_merges: Llama 3's tokenizer.json option; a pre-token that is itself a
    vocabulary entry is emitted as that id without running the merges.

    With GPT-2's vocab and merges (less <|endoftext|>) this alone gives
    tiktoken's ids for text without special tokens. Later layers override
    _text_token_ids and _symbols (which tokens text starts from) and decode.
    """

    def __init__(self, vocab, merges, pattern=GPT2_SPLIT_PATTERN, ignore_merges=False):
        self.vocab = dict(vocab)
        self.merges = [(bytes(left), bytes(right)) for left, right in merges]
        self.pattern = pattern
        self.ignore_merges = bool(ignore_merges)
        patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
        try:
            self._split_res = [regex.compile(p) for p in patterns]
        except (regex.error, TypeError) as exc:
            raise ValueError(f"invalid pre-tokenization pattern {pattern!r}: {exc}") from None

        # bytes -> id. If two ids share the same bytes (possible in principle),
        # the lower id wins, so encoding is deterministic.
        self._id_of = {}
        for token_id in sorted(self._text_token_ids()):
            self._id_of.setdefault(self.vocab[token_id], token_id)
        # Byte-level BPE starts every pre-token from its bytes. A few real
        # vocabularies lack some single-byte tokens: SmolLM2 has none for 21
        # bytes, OLMo 1's GPT-NeoX files none for 0xC0, 0xC1 and 0xF5-0xFF,
        # which never occur in valid UTF-8. Hugging Face's BPE model silently
        # drops a symbol it has no token for (these files have no unknown
        # token), so we drop such bytes too: they vanish from the ids (and
        # decode cannot bring them back); the bytes around them then merge
        # as if they were adjacent.
        self._byte_ids = [self._id_of.get(bytes([b])) for b in range(256)]
        self._drops_bytes = None in self._byte_ids

        # Encoding works on ids, so translate each merge (bytes, bytes) into
        # (left id, right id) -> rank, plus rank -> id of the merged token.
        self._rank = {}
        self._merged_id = []
        for rank, (left, right) in enumerate(self.merges):
            ids = [self._id_of.get(left), self._id_of.get(right), self._id_of.get(left + right)]
            if None in ids:
                raise ValueError(
                    f"merge #{rank} {left!r} + {right!r} refers to a token that is not "
                    "in the vocabulary; the merges and vocab files do not belong together"
                )
            self._rank.setdefault((ids[0], ids[1]), rank)
            self._merged_id.append(ids[2])
        self._cache = {}

    @property
    def vocab_size(self):
        """One more than the largest id (the size an embedding table needs).
        Equal to len(vocab) unless a loaded file leaves holes in its ids."""
        return max(self.vocab) + 1

    def _text_token_ids(self):
        """The ids that text is encoded to by their bytes: all of them here."""
        return self.vocab

    def encode(self, text):
        """Encode a string to a list of ids."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        out = []
        self._encode_ordinary(text, out)
        return out

    def _encode_ordinary(self, text, out):
        """Append the ids of text to `out`: cut it into pre-tokens, then merge
        each one, or find it in the cache, as natural text repeats the same
        words constantly (Zipf's law)."""
        splits = self._split_res
        pretokens = splits[0].findall(text) if splits else [text] if text else []
        for split_re in splits[1:]:
            pretokens = [piece for pretoken in pretokens for piece in split_re.findall(pretoken)]
        cache = self._cache
        for pretoken in pretokens:
            ids = cache.get(pretoken)
            if ids is None:
                ids = self._encode_pretoken(pretoken)
                if len(cache) >= ENCODE_CACHE_LIMIT:
                    cache.clear()
                if len(pretoken) <= LONG_WORD_SYMBOLS:  # a whole book does not repeat
                    cache[pretoken] = ids
            out.extend(ids)

    def _symbols(self, pretoken):
        """The ids a pre-token starts from: one per UTF-8 byte."""
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in pretoken.encode("utf-8")]
        if self._drops_bytes:
            ids = [i for i in ids if i is not None]
        return ids

    def _encode_pretoken(self, pretoken):
        """Apply the merges to one pre-token, lowest rank first.

        GPT-2's loop: among all adjacent pairs, find the one whose merge was
        learned earliest (the leftmost, if it occurs more than once), merge it,
        repeat until no adjacent pair is a known merge. It reproduces training
        because training merged pairs in that same order. GPT-2's code merges
        every occurrence of the pair in one sweep; we merge one at a time, as
        tiktoken and Hugging Face do. For trained merge lists the two agree (a
        merge only makes pairs with the new token, learned later, so the other
        occurrences still go next), but files converted from another format
        (Llama 2's from SentencePiece, Llama 3's from tiktoken) list a merge
        for every way to split a token, some before the merges that make their
        parts, and there only one-at-a-time matches. (tiktoken ranks by the id
        of the merged token; for such files that is the merge order.) Each
        round scans the word, so this is quadratic in the pre-token length,
        fine for words and made rare by the cache.
        """
        if self.ignore_merges:
            whole = self._id_of.get(pretoken.encode("utf-8"))
            if whole is not None:
                return (whole,)
        ids = self._symbols(pretoken)
        if len(ids) > LONG_WORD_SYMBOLS:
            return tuple(self._merge_long_word(ids))
        rank_of = self._rank
        no_merge = len(self._merged_id)  # larger than every real rank
        while len(ids) > 1:
            ranks = [rank_of.get(pair, no_merge) for pair in zip(ids, ids[1:])]
            rank = min(ranks)
            if rank == no_merge:
                break
            at = ranks.index(rank)  # the leftmost occurrence
            ids[at:at + 2] = [self._merged_id[rank]]
        return tuple(ids)

    def _merge_long_word(self, ids):
        """The merges of _encode_pretoken in O(n log n), for long words.

        A SentencePiece-style file with no pre-tokenizer makes the whole text
        between special tokens one word (unless the vocabulary lets us cut it,
        see WithSentencePieceStyle), so the quadratic loop would take hours on
        a book. Same order of merges, found differently: a heap of (rank,
        position) for every adjacent pair, the symbols in a linked list.
        Popping the lowest (rank, position) merges the earliest-learned pair,
        leftmost first, as the loop does; the pairs a merge creates with its
        neighbours are pushed, so the heap always holds every current pair, and
        the next pop is the loop's next choice. Entries made stale by a
        neighbouring merge are skipped when popped. Hugging Face merges every
        word this way.
        """
        rank_of, merged_id = self._rank, self._merged_id
        n = len(ids)
        symbols = list(ids)
        next_of = list(range(1, n + 1))  # n: no next symbol
        prev_of = list(range(-1, n - 1))  # -1: no previous symbol
        alive = [True] * n
        heap = [(rank_of[pair], i) for i, pair in enumerate(zip(ids, ids[1:])) if pair in rank_of]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = next_of[i]
            if not alive[i] or j == n or rank_of.get((symbols[i], symbols[j])) != rank:
                continue  # stale: a neighbouring merge changed this pair
            symbols[i] = merged_id[rank]
            alive[j] = False
            after = next_of[j]
            next_of[i] = after
            if after < n:
                prev_of[after] = i
                new_rank = rank_of.get((symbols[i], symbols[after]))
                if new_rank is not None:
                    heapq.heappush(heap, (new_rank, i))
            before = prev_of[i]
            if before >= 0:
                new_rank = rank_of.get((symbols[before], symbols[i]))
                if new_rank is not None:
                    heapq.heappush(heap, (new_rank, before))
        return [symbol for symbol, live in zip(symbols, alive) if live]

    def decode(self, ids):
        """Decode ids to a string. A token can be part of a UTF-8 character, so
        an arbitrary id sequence need not be valid UTF-8; such bytes become
        U+FFFD replacement characters (as GPT-2 does) instead of raising."""
        vocab = self.vocab
        try:
            # operator.index accepts ints, numpy integers and 0-d integer tensors
            # (ids straight out of a model) but rejects floats and strings.
            data = b"".join([vocab[operator.index(i)] for i in ids])
        except (KeyError, TypeError):
            bad = next(i for i in ids if not _is_known_id(i, vocab))
            raise ValueError(f"cannot decode id {bad!r}: not in the vocabulary") from None
        return data.decode("utf-8", errors="replace")


class WithSpecialTokens(ByteLevelBPE):
    """Layer 2: special tokens, strings such as "<|endoftext|>" that are always
    one id, and the template of ids that encode() can put around a text.

    Read first: ByteLevelBPE. The text is cut around the special tokens and
    each piece between them is encoded on its own, exactly as in training and
    in tiktoken (with allowed_special="all"): a special token is a hard
    boundary and never takes part in merges.
    special_tokens: a list, whose tokens take the id already in vocab for their
    bytes or new ids at the end; or a dict str -> id for files that fix the ids
    (Hugging Face).
    template: (prefix ids, suffix ids) that encode(..., add_special_tokens=True)
    puts around a text: ([BOS], []) for Llama, from a tokenizer.json's
    post-processor.

    Later layers override _encode_segment (how the text between special tokens
    is encoded), _special_matches (where a match starts and ends) and
    _special_spelling (the bytes a special token stands for).
    """

    def __init__(self, vocab, merges, special_tokens=None, pattern=GPT2_SPLIT_PATTERN,
                 ignore_merges=False, template=None):
        super().__init__(vocab, merges, pattern=pattern, ignore_merges=ignore_merges)
        prefix, suffix = template or ([], [])
        self.template = (list(prefix), list(suffix))
        self.special_tokens = {}
        if isinstance(special_tokens, str):
            raise ValueError(f"special_tokens must be a list or dict, e.g. [{special_tokens!r}]")
        if isinstance(special_tokens, dict):
            for token, token_id in special_tokens.items():
                spelling = self._special_spelling(token)
                known = self.vocab.setdefault(token_id, spelling)
                if known != spelling:
                    raise ValueError(
                        f"special token {token!r} has id {token_id}, but that id is "
                        f"already the token {known!r}"
                    )
                self.special_tokens[token] = token_id
        else:
            for token in special_tokens or ():
                token_id = self._id_of.get(token.encode("utf-8"))
                if token_id is None:
                    token_id = max(self.vocab) + 1
                    self.vocab[token_id] = token.encode("utf-8")
                self.special_tokens[token] = token_id
        if any(not token for token in self.special_tokens):
            raise ValueError("special tokens must be non-empty strings")
        self._special_re = _special_token_regex(list(self.special_tokens))

    def _special_spelling(self, token):
        """The bytes a special token of a dict stands for in the vocabulary,
        which decode() gives back: its own UTF-8."""
        return token.encode("utf-8")

    def encode(self, text, add_special_tokens=False):
        """Encode a string to a list of ids; special tokens are kept whole.

        add_special_tokens=True also puts the tokenizer's template around the
        text (Llama's BOS first), as Hugging Face's encode() does by default.
        It is off here because most callers encode *parts* of a text (a
        dataset file in chunks, a stream): a BOS belongs once before a prompt
        or a document, not before every chunk.
        """
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        prefix, suffix = self.template
        out = list(prefix) if add_special_tokens else []
        matches = self._special_matches(text) if self._special_re is not None else ()
        self._encode_around(text, matches, True, self._encode_segment, out)
        if add_special_tokens:
            out.extend(suffix)
        return out

    def _special_matches(self, text):
        """(start, end, special token) for each special token in text, left to right."""
        for match in self._special_re.finditer(text):
            yield match.start(), match.end(), match.group()

    def _encode_around(self, text, matches, at_start, encode_piece, out):
        """Append to `out` the ids of text with the special tokens of `matches`
        (see _special_matches) in it: each token's id, and between them what
        encode_piece(piece, piece_at_start, out) appends for the text."""
        position = 0
        for start, end, token in matches:
            encode_piece(text[position:start], at_start and position == 0, out)
            out.append(self.special_tokens[token])
            position = end
        encode_piece(text[position:], at_start and position == 0, out)

    def _encode_segment(self, text, at_start, out):
        """Append the ids of the text between two special tokens to `out`.
        at_start: the text begins the input, which only matters to the
        "first" prepend scheme of WithSentencePieceStyle."""
        self._encode_ordinary(text, out)


# Unicode normal forms WithSentencePieceStyle can apply before pre-tokenizing
# (None: none). They have the same names in Python's unicodedata and in Hugging
# Face's files.
UNICODE_NORMAL_FORMS = (None, "NFC", "NFD", "NFKC", "NFKD")
# SentencePiece's spelling of a space inside tokens: U+2581 LOWER ONE EIGHTH
# BLOCK, a visible character that is not whitespace. See "SentencePiece-style
# BPE" in the module docstring.
SENTENCEPIECE_SPACE = "\u2581"
# Where a SentencePiece-style tokenizer puts a space ("▁") in front of text, so
# that the first word gets the same "▁word" token as words after a space:
#   None          nowhere
#   "normalizer"  before every non-empty stretch of text between special tokens,
#                 even one that starts with a space (a Prepend("▁") normalizer:
#                 Llama 2, TinyLlama, Mistral)
#   "always"      the same, unless the stretch already starts with a space
#                 (a Metaspace pre-tokenizer with prepend_scheme "always")
#   "first"       only before the stretch at the very start of the input, unless
#                 it starts with a space (Metaspace's "first", newer Llama files)
PREPEND_SCHEMES = (None, "normalizer", "always", "first")


class WithSentencePieceStyle(WithSpecialTokens):
    """Layer 3: a normalizer, which rewrites the text between special tokens
    before it is pre-tokenized, and SentencePiece-style BPE (Llama 2,
    TinyLlama, Mistral), which is the same merging after such a rewrite, with
    characters, not bytes, as the units it starts from.

    Read first: WithSpecialTokens, and "SentencePiece-style BPE" in the module
    docstring.
    normalization: None, or a Unicode normal form ("NFC", "NFD", "NFKC",
    "NFKD") applied to the text between special tokens before pre-tokenizing,
    as Qwen's tokenizer.json asks for NFC. decode() cannot undo it.
    sentencepiece: None for byte-level BPE; for SentencePiece-style BPE a dict:
    "byte_ids", the ids of the 256 byte tokens <0x00>..<0xFF> in byte order;
    "prepend", where a space goes in front of the text (one of
    PREPEND_SCHEMES); "strip", how many leading spaces decode() removes. Its
    vocab spells spaces as b" ", not as "▁", so once the text's "▁" are
    spaces too, the earlier layers' merging applies unchanged.

    Overrides _text_token_ids and _symbols (characters first, bytes as the
    fallback), _encode_segment (normalize, then prepend a space) and decode
    (strip it). The last layer overrides _encode_normalized.
    """

    def __init__(self, vocab, merges, special_tokens=None, pattern=GPT2_SPLIT_PATTERN,
                 ignore_merges=False, normalization=None, sentencepiece=None, template=None):
        # Set before the earlier layers' __init__ runs: it calls _text_token_ids,
        # and _special_spelling may call _normalize, which read these.
        if normalization not in UNICODE_NORMAL_FORMS:
            raise ValueError(f"normalization must be one of {UNICODE_NORMAL_FORMS}, got {normalization!r}")
        self.normalization = normalization
        self.sentencepiece = None
        if sentencepiece:
            self.sentencepiece = {"byte_ids": list(sentencepiece.get("byte_ids", ())),
                                  "prepend": sentencepiece.get("prepend"), "strip": int(sentencepiece.get("strip", 0))}
            byte_ids = self.sentencepiece["byte_ids"]
            if len(byte_ids) != 256 or any(vocab.get(i) != bytes([b]) for b, i in enumerate(byte_ids)):
                raise ValueError("sentencepiece['byte_ids'] must be the ids of the 256 byte tokens "
                                 "<0x00>..<0xFF>, in byte order")
            if self.sentencepiece["prepend"] not in PREPEND_SCHEMES:
                raise ValueError(f"sentencepiece['prepend'] must be one of {PREPEND_SCHEMES}")
        elif pattern is None:
            raise ValueError("byte-level BPE needs a pre-tokenization pattern (pattern=None is "
                             "for SentencePiece-style vocabularies)")
        super().__init__(vocab, merges, special_tokens, pattern=pattern, ignore_merges=ignore_merges,
                         template=template)
        self._char_ids = None
        if self.sentencepiece is None:
            return
        # The byte tokens are found by id, not by bytes (see _text_token_ids),
        # and all 256 exist.
        self._byte_ids, self._drops_bytes = self.sentencepiece["byte_ids"], False
        # SentencePiece's base units are characters: character -> its token.
        self._char_ids = {}
        for data, token_id in self._id_of.items():
            text = data.decode("utf-8", errors="replace")
            if len(text) == 1 and text != "\ufffd":
                self._char_ids[text] = token_id
        if pattern is None and not ignore_merges and not any(
            regex.search(r"[^ ] ", data.decode("utf-8", errors="replace")) for data in self._id_of
        ):
            # With no pre-tokenizer, Hugging Face runs BPE on the whole text
            # between special tokens as one word. When no token has a space
            # after another character (true of SentencePiece vocabularies,
            # whose pieces only *start* with "▁"), no merge can join the
            # characters either side of such a boundary, so cutting the text
            # just before each run of spaces that follows a non-space gives
            # the same ids, and keeps words short and cacheable.
            self._split_res = [regex.compile(r" *[^ ]+| +")]

    def _text_token_ids(self):
        """A SentencePiece vocabulary has both "A" and the byte token <0x41>
        for b"A"; only the former is a text token, the byte tokens are reached
        through byte_ids."""
        if self.sentencepiece is None:
            return super()._text_token_ids()
        byte_tokens = set(self.sentencepiece["byte_ids"])
        return [token_id for token_id in self.vocab if token_id not in byte_tokens]

    def _symbols(self, pretoken):
        """SentencePiece style: one symbol per character, and the character's
        UTF-8 bytes (as byte tokens) only when the vocabulary lacks it."""
        char_ids = self._char_ids
        if char_ids is None:
            # Named directly, not through super(), which builds a proxy object
            # per call (Python 3.11): this runs once per pre-token not cached.
            return ByteLevelBPE._symbols(self, pretoken)
        byte_ids = self._byte_ids
        ids = []
        for char in pretoken:
            char_id = char_ids.get(char)
            if char_id is None:
                ids.extend(byte_ids[b] for b in char.encode("utf-8"))
            else:
                ids.append(char_id)
        return ids

    def _normalize(self, text):
        """The normalizer's part: a Unicode normal form, and for SentencePiece
        style the space-for-"▁" replacement (a literal "▁" in the text is a
        space to these tokenizers) and Llama 2's Prepend("▁"), which puts a
        space before every non-empty stretch of text between special tokens."""
        if self.normalization:
            # Normalizing each piece separately equals normalizing the whole:
            # the pieces end at special tokens or at safe cuts, which sit before
            # an ASCII space/newline that no normal form changes or composes.
            text = unicodedata.normalize(self.normalization, text)
        if self.sentencepiece:
            text = text.replace(SENTENCEPIECE_SPACE, " ")
            if text and self.sentencepiece["prepend"] == "normalizer":
                text = " " + text
        return text

    def _encode_segment(self, text, at_start, out):
        if text:
            self._encode_normalized(self._normalize(text), at_start, out)

    def _encode_normalized(self, text, at_start, out):
        """Append the ids of normalized text that contains no special tokens to
        `out`. at_start: the text begins at the start of the whole input."""
        prepend = self.sentencepiece and self.sentencepiece["prepend"]
        if text and (prepend == "always" or (prepend == "first" and at_start)) and not text.startswith(" "):
            # Metaspace's prepend_scheme: a space before each stretch of text,
            # or only before the first, unless one is already there.
            text = " " + text
        self._encode_ordinary(text, out)

    def decode(self, ids):
        text = super().decode(ids)
        strip = self.sentencepiece["strip"] if self.sentencepiece else 0
        if strip:
            # A Strip decoder (or Metaspace's) removes the space that encoding
            # put before the text, so that decode(encode(text)) == text.
            text = text[min(strip, len(text) - len(text.lstrip(" "))):]
        return text


# encode_iterable accumulates this many characters before looking for a cut.
STREAM_FLUSH_CHARS = 1 << 16


class WithStreaming(WithSentencePieceStyle):
    """Layer 4: encode_iterable, which encodes a stream of strings (an open
    file's lines) in bounded memory, with the ids encode() gives for their
    concatenation.

    Read first: WithSentencePieceStyle, and _cut_patterns (above train_bpe):
    where text can be cut without changing its pre-tokens. This layer keeps
    those cuts for its tokenizer (_cut_str for text; _cut_bytes and
    _cut_lookahead, which encode_file_to_bin uses to cut a file for parallel
    workers). The last layer overrides _can_cut.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cut_str = self._cut_bytes = self._last_cut = None
        if self._can_cut():
            self._cut_str, self._cut_bytes = _cut_patterns(self.pattern, list(self.special_tokens))
        self._cut_lookahead = _cut_lookahead(self.special_tokens)
        if self._cut_str:
            # The streaming encoder wants the *last* cut in its buffer; the
            # regex module can search right-to-left with the (?r) flag.
            self._last_cut = regex.compile("(?r)" + self._cut_str.pattern)

    def _can_cut(self):
        """Whether the safe cuts of _cut_patterns apply: yes, here."""
        return True

    def encode_iterable(self, iterable):
        """Lazily encode an iterable of strings (e.g. an open text file, which
        yields lines) as if it were one concatenated string.

        Encoding each line separately would be wrong: a pre-token can span a
        line break (the run "  \\n\\n  " is split by what comes after it, and a
        special token could be cut in half). So we buffer the pieces and only
        encode up to the last *safe cut* in the buffer (see _cut_patterns); the
        rest waits for more input. Memory stays around STREAM_FLUSH_CHARS unless
        the text has no safe cut at all (e.g. a non-GPT-2 pattern and no special
        tokens), in which case the buffer must grow.
        """
        parts, buffered = [], 0
        flush_at = STREAM_FLUSH_CHARS
        for piece in iterable:
            if not isinstance(piece, str):
                raise ValueError(
                    f"encode_iterable expects str pieces, got {type(piece).__name__}; "
                    "open files in text mode"
                )
            parts.append(piece)
            buffered += len(piece)
            if buffered < flush_at:
                continue
            text = "".join(parts)
            match = self._last_decided_cut(text)
            if match and match.start() > 0:
                yield from self.encode(text[:match.start()])
                text = text[match.start():]
                flush_at = STREAM_FLUSH_CHARS
            else:
                flush_at = 2 * len(text)  # no cut yet: wait for more, without rescanning per line
            parts, buffered = [text], len(text)
        yield from self.encode("".join(parts))

    def _last_decided_cut(self, text):
        r"""The last cut in text that has enough text after it to be decided
        (see _cut_patterns): "\n\n<|endo" must wait for the rest of the
        special token before the cut before its second "\n" can be trusted."""
        if self._last_cut is None:
            return None
        last_decided = len(text) - self._cut_lookahead
        for match in self._last_cut.finditer(text):  # right to left: (?r)
            if match.start() <= last_decided:
                return match
        return None


# ----------------------------------------------------------------------------
# Helpers of the file formats (layers 5 and 6): GPT-2's bytes <-> printable
# unicode mapping, reading JSON, writing files atomically
# ----------------------------------------------------------------------------

def bytes_to_unicode():
    """Map each byte value 0..255 to a printable unicode character.

    Tokens are arbitrary byte strings (a token may even be half of a UTF-8
    character), which neither JSON nor a human can read. GPT-2's trick: bytes
    that are already visible characters (!..~, ¡..¬, ®..ÿ) stand for themselves,
    and the remaining 68 (control characters, space, DEL, NBSP, soft hyphen...)
    are shifted to code points 256+n in byte order. So the space byte shows up
    as "Ġ" (U+0120) and newline as "Ċ" (U+010A) in GPT-2's files. The mapping is
    a bijection, so every token has exactly one printable spelling.
    """
    visible = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in visible}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _token_to_printable(token):
    return "".join(BYTE_TO_CHAR[b] for b in token)


def _printable_to_token(text, where):
    try:
        return bytes(CHAR_TO_BYTE[c] for c in text)
    except KeyError as exc:
        raise ValueError(
            f"{where}: token {text!r} contains {exc.args[0]!r}, which is not in "
            "GPT-2's byte-to-unicode alphabet; is this a byte-level BPE file?"
        ) from None


def _read_json(path):
    """A tokenizer's JSON file, with a one-line error for a missing or malformed file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None


def _atomic_write(path, text):
    """Write a file so that readers see either the old file or the whole new
    one, never a half-written file: write a temp file beside it, then rename."""
    _atomic_write_with(path, lambda file: file.write(text.encode("utf-8")))


def _atomic_write_with(path, write):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"output directory {directory!r} does not exist")
    # A unique name beside the target (same filesystem, so os.replace is an
    # atomic rename). os.open with mode 0o666 lets the umask decide permissions,
    # as for any ordinary file; tempfile.mkstemp would force 0600.
    tmp_path = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            result = write(file)
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
    return result


class WithFileFormats(WithStreaming):
    """Layer 5: saving and loading. GPT-2's two files (save, load,
    from_gpt2_files), readable and read by tiktoken and Hugging Face too, and
    a plain-data form (to_meta, from_meta) for meta.pkl and checkpoints.

    Read first: WithStreaming, and bytes_to_unicode above. The last layer
    overrides save, to_meta and _options_from_meta for what it adds.
    """

    def save(self, prefix):
        """Write prefix.vocab.json and prefix.merges.txt in GPT-2's format.

        vocab.json maps each token, spelled with GPT-2's bytes_to_unicode
        alphabet, to its id (special tokens are written as themselves, as GPT-2
        writes "<|endoftext|>"). merges.txt starts with "#version: 0.2" and has
        one merge per line, "left right". Both files are exactly what GPT-2,
        tiktoken and HF read, as long as the pattern is GPT-2's. Settings those
        readers have no place for (another pattern, ignore_merges, normalization) go as a
        JSON object after "#version: 0.2" on the first line, which they skip.
        """
        if self.sentencepiece or not isinstance(self.pattern, str) or self.template != ([], []):
            raise ValueError("cannot save: GPT-2's file format has no place for SentencePiece-style "
                             "vocabularies, several pre-tokenization patterns or templates; use "
                             "to_meta() instead")
        merged_bytes = {left + right for left, right in self.merges}
        special_ids = set(self.special_tokens.values())
        # Special tokens are recognised on load as the entries that are neither
        # a single byte nor the result of a merge. A token that is an ordinary
        # token too would be taken for a special one, so refuse to write it.
        for token, token_id in self.special_tokens.items():
            data = token.encode("utf-8")
            if len(data) == 1 or data in merged_bytes:
                raise ValueError(
                    f"cannot save: special token {token!r} is also an ordinary token, "
                    "which the GPT-2 file format cannot express; use to_meta() instead"
                )
        vocab_json = {}
        for token_id in sorted(self.vocab):
            token = self.vocab[token_id]
            if token_id in special_ids:
                key = token.decode("utf-8")
            else:
                key = _token_to_printable(token)
            if key in vocab_json:
                raise ValueError(
                    f"cannot save: ids {vocab_json[key]} and {token_id} would both be "
                    f"written as {key!r}; use to_meta() instead"
                )
            vocab_json[key] = token_id
        header = "#version: 0.2"
        settings = {}
        if self.pattern != GPT2_SPLIT_PATTERN:
            settings["pattern"] = self.pattern
        if self.ignore_merges:
            settings["ignore_merges"] = True
        if self.normalization:
            settings["normalization"] = self.normalization
        if settings:
            header += " " + json.dumps(settings, ensure_ascii=False)
        merge_lines = [header] + [
            f"{_token_to_printable(left)} {_token_to_printable(right)}"
            for left, right in self.merges
        ]
        _atomic_write(prefix + ".vocab.json", json.dumps(vocab_json, ensure_ascii=False, indent=0))
        _atomic_write(prefix + ".merges.txt", "\n".join(merge_lines) + "\n")

    @classmethod
    def load(cls, prefix):
        """Load a tokenizer written by save(prefix)."""
        return cls.from_gpt2_files(prefix + ".vocab.json", prefix + ".merges.txt")

    @classmethod
    def from_gpt2_files(cls, encoder_json_path, vocab_bpe_path):
        """Load GPT-2's own encoder.json (token -> id) and vocab.bpe (merges).

        The special tokens are not listed anywhere in GPT-2's files; they are
        the vocabulary entries that are neither a single byte nor produced by a
        merge (for GPT-2: only <|endoftext|>).
        """
        if not os.path.isfile(vocab_bpe_path):
            raise FileNotFoundError(f"tokenizer file {vocab_bpe_path!r} does not exist")
        encoder = _read_json(encoder_json_path)
        if not isinstance(encoder, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in encoder.items()
        ):
            raise ValueError(f"{encoder_json_path} must be a JSON object mapping tokens to ids")
        with open(vocab_bpe_path, encoding="utf-8") as file:
            lines = file.read().split("\n")

        settings = {}
        if lines and lines[0].startswith("#version"):
            version_line, lines = lines[0], lines[1:]
            _, _, rest = version_line.partition(" ")  # "0.2" or '0.2 {...}'
            _, _, settings_json = rest.partition(" ")
            if settings_json:
                try:
                    settings = json.loads(settings_json)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{vocab_bpe_path}: bad settings on line 1: {exc}") from None
        merge_strings = []
        for number, line in enumerate(lines, start=2):
            if not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(
                    f"{vocab_bpe_path} line {number}: expected 'left right', got {line!r}"
                )
            for part in parts:
                if part not in encoder:
                    raise ValueError(
                        f"{vocab_bpe_path} line {number}: token {part!r} is not in {encoder_json_path}"
                    )
            merge_strings.append(parts)

        produced = {left + right for left, right in merge_strings}
        vocab, special_tokens = {}, {}
        for key, token_id in encoder.items():
            if len(key) == 1 or key in produced:
                vocab[token_id] = _printable_to_token(key, encoder_json_path)
            else:
                special_tokens[key] = token_id
        merges = [
            (_printable_to_token(left, vocab_bpe_path), _printable_to_token(right, vocab_bpe_path))
            for left, right in merge_strings
        ]
        return cls(
            vocab, merges, special_tokens,
            pattern=settings.get("pattern", GPT2_SPLIT_PATTERN),
            ignore_merges=settings.get("ignore_merges", False),
            normalization=settings.get("normalization"),
        )

    def to_meta(self):
        """Everything needed to rebuild this tokenizer, as plain dict/list/str/
        int/bytes values only, so it can be pickled into meta.pkl or stored in a
        torch checkpoint that is loaded with torch.load(weights_only=True)."""
        return {
            "type": "byte_level_bpe",
            "version": 2,
            "vocab": dict(self.vocab),
            "merges": [[left, right] for left, right in self.merges],
            "special_tokens": dict(self.special_tokens),
            "pattern": self.pattern if isinstance(self.pattern, str) or self.pattern is None else list(self.pattern),
            "ignore_merges": int(self.ignore_merges),
            "normalization": self.normalization,
            # Version 2 (older metas lack these keys, meaning none of them).
            "sentencepiece": dict(self.sentencepiece) if self.sentencepiece else None,
            "template": [list(self.template[0]), list(self.template[1])],
        }

    @classmethod
    def from_meta(cls, meta):
        """Inverse of to_meta()."""
        if not isinstance(meta, dict) or meta.get("type") != "byte_level_bpe":
            raise ValueError("not a tokenizer meta dict (expected one made by Tokenizer.to_meta())")
        try:
            return cls(meta["vocab"], meta["merges"], meta["special_tokens"], **cls._options_from_meta(meta))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed tokenizer meta dict: {exc!r}") from None

    @classmethod
    def _options_from_meta(cls, meta):
        """The constructor's keyword arguments that a meta dict holds."""
        return {"pattern": meta["pattern"], "ignore_merges": meta["ignore_merges"],
                "normalization": meta["normalization"], "sentencepiece": meta.get("sentencepiece"),
                "template": meta.get("template")}


# What Hugging Face's lstrip/rstrip options strip: Unicode White_Space, as
# Rust's char::is_whitespace (Python's str.isspace also takes \x1c-\x1f).
_WHITE_SPACE = regex.compile(r"\p{White_Space}")


class Tokenizer(WithFileFormats):
    """Layer 6, the tokenizer every other file uses: all of the above, plus
    Hugging Face's tokenizer.json (from_hf_tokenizer_json) and the options its
    added tokens have that change ids.

    Read first: the layers above, whose arguments it takes: vocab, merges and
    pattern, ignore_merges (ByteLevelBPE); special_tokens, template
    (WithSpecialTokens); normalization, sentencepiece (WithSentencePieceStyle).
    added_token_flags: special token -> {"lstrip", "rstrip", "normalized"}, for
    the tokens that set any of these Hugging Face options. lstrip (rstrip): the
    token also takes the whitespace before (after) it, which is then not
    encoded. normalized: the token is looked for in the normalized text, by
    its normalized spelling, after the others were found in the raw text.
    """

    def __init__(self, vocab, merges, special_tokens=None, pattern=GPT2_SPLIT_PATTERN,
                 ignore_merges=False, normalization=None, sentencepiece=None,
                 added_token_flags=None, template=None):
        # Set before the earlier layers' __init__ runs: it calls _special_spelling
        # and _can_cut, which read it.
        self.added_token_flags = {token: dict(flags) for token, flags in (added_token_flags or {}).items()}
        super().__init__(vocab, merges, special_tokens, pattern=pattern, ignore_merges=ignore_merges,
                         normalization=normalization, sentencepiece=sentencepiece, template=template)
        unknown = set(self.added_token_flags) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"added_token_flags names {sorted(unknown)[0]!r}, which is not a special token")
        # Special tokens are found in two passes, as Hugging Face does: those
        # matched in the raw text first, then, in the text between them once it
        # is normalized, the "normalized" ones, by their normalized spelling:
        # under Llama 2's Prepend normalizer "<x>" is looked for as " <x>" (so
        # "a <x>" has it, "a<x>" does not) and decodes as " <x>".
        normalized = {token for token, flags in self.added_token_flags.items() if flags.get("normalized")}
        if normalized:
            self._special_re = _special_token_regex([t for t in self.special_tokens if t not in normalized])
        self._normalized_specials = {self._normalize(token): token for token in normalized}
        self._normalized_re = _special_token_regex([t for t in self._normalized_specials if t])

    def _special_spelling(self, token):
        """A "normalized" token is looked for, and decoded, as its normalized
        spelling; every other one as itself."""
        flags = self.added_token_flags.get(token)
        if flags and flags.get("normalized"):
            return self._normalize(token).encode("utf-8")
        return super()._special_spelling(token)

    def _can_cut(self):
        # A token that swallows the whitespace before it, or is matched in
        # rewritten text, can start before its spelling in the raw text, so
        # a cut at that spelling would not be a boundary: no cuts at all.
        rewrites_text = self.normalization or (self.sentencepiece and self.sentencepiece["prepend"] == "normalizer")
        return not any(flags.get("lstrip") or (flags.get("normalized") and rewrites_text)
                       for flags in self.added_token_flags.values())

    def _special_matches(self, text, special_re=None, token_of=str):
        """As WithSpecialTokens._special_matches, but a token with the lstrip
        (rstrip) flag also takes the whitespace before (after) it. special_re
        and token_of: another regex, and how its matches name their special
        token (the normalized spellings, in _encode_normalized)."""
        flags_of = self.added_token_flags
        previous_end = 0
        for match in (special_re or self._special_re).finditer(text):
            start, end = match.span()
            if start < previous_end:
                continue  # inside whitespace an rstrip token already took
            token = token_of(match.group())
            flags = flags_of.get(token)
            if flags and flags.get("lstrip"):
                while start > previous_end and _WHITE_SPACE.match(text[start - 1]):
                    start -= 1
            if flags and flags.get("rstrip"):
                while end < len(text) and _WHITE_SPACE.match(text[end]):
                    end += 1
            yield start, end, token
            previous_end = end

    def _encode_normalized(self, text, at_start, out):
        """The second pass: the normalized special tokens in normalized text."""
        if self._normalized_re is None:
            super()._encode_normalized(text, at_start, out)
            return
        matches = self._special_matches(text, self._normalized_re, self._normalized_specials.get)
        self._encode_around(text, matches, at_start, super()._encode_normalized, out)

    def save(self, prefix):
        if self.added_token_flags:
            raise ValueError("cannot save: GPT-2's file format has no place for added-token flags; "
                             "use to_meta() instead")
        super().save(prefix)

    def to_meta(self):
        meta = super().to_meta()
        # A version-2 key too: older metas lack it, meaning no flags.
        meta["added_token_flags"] = {token: dict(flags) for token, flags in self.added_token_flags.items()}
        return meta

    @classmethod
    def _options_from_meta(cls, meta):
        return {**super()._options_from_meta(meta), "added_token_flags": meta.get("added_token_flags")}

    @classmethod
    def from_hf_tokenizer_json(cls, path):
        """Load a Hugging Face tokenizer.json of a BPE model.

        Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM2, OLMo): a ByteLevel
        pre-tokenizer, alone (GPT-2's regex) or last in a Sequence after
        Split(regex) (Isolated, or Removed with invert=true, which is the same
        for patterns that match every character) and Digits steps, and a
        ByteLevel decoder. SentencePiece-style BPE (Llama 2, TinyLlama,
        Mistral): byte_fallback with <0xNN> tokens, spaces as "▁" through
        Prepend/Replace normalizers or a Metaspace pre-tokenizer, and decoders
        Replace, ByteFallback, Fuse, Strip or Metaspace. Either may have a
        Unicode normal form. added_tokens become special tokens with their ids
        and their lstrip/rstrip/normalized flags; a TemplateProcessing (or
        Roberta/Bert) post-processor becomes the template that
        encode(text, add_special_tokens=True) applies. Anything else raises
        ValueError naming what is not supported.
        """
        spec = _read_json(path)

        def unsupported(what):
            return ValueError(
                f"{path}: {what} is not supported; only BPE tokenizer.json files (byte-level like "
                "GPT-2 / Llama 3 / SmolLM2, or SentencePiece-style like Llama 2 / Mistral) are"
            )

        def steps(section):
            # A "Sequence" normalizer/pre-tokenizer/decoder/post-processor is a
            # list of steps applied in order; a single one is a list of one.
            if not section:
                return []
            if section.get("type") == "Sequence":
                return [step for part in section.get("normalizers") or section.get("pretokenizers")
                        or section.get("decoders") or section.get("processors") or []
                        for step in steps(part)]
            return [section]

        model = spec.get("model") if isinstance(spec, dict) else None
        if not isinstance(model, dict):
            raise ValueError(f"{path}: no 'model' section; is this a tokenizer.json?")
        if model.get("type") != "BPE":
            raise unsupported(f"model type {model.get('type')!r}")
        for option in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(option):
                raise unsupported(f"BPE option {option}={model[option]!r}")

        # Normalizer: a Unicode normal form; SentencePiece's Prepend("▁") and
        # Replace(" ", "▁").
        normalization, prepend, spaces_as_metaspace = None, None, False
        for step in steps(spec.get("normalizer")):
            kind = step.get("type")
            if kind in UNICODE_NORMAL_FORMS[1:] and normalization is None:
                normalization = kind
            elif kind == "Prepend" and step.get("prepend") == SENTENCEPIECE_SPACE:
                prepend = "normalizer"
            elif (kind == "Replace" and step.get("pattern") == {"String": " "}
                  and step.get("content") == SENTENCEPIECE_SPACE):
                spaces_as_metaspace = True
            else:
                raise unsupported(f"normalizer {kind!r}")

        # Pre-tokenizer: the regexes that split text, in order.
        patterns, byte_level = [], None
        for step in steps(spec.get("pre_tokenizer")):
            kind = step.get("type")
            if byte_level is not None:
                raise unsupported(f"pre_tokenizer {kind!r} after ByteLevel")
            if kind == "ByteLevel":
                if step.get("add_prefix_space"):
                    raise unsupported("ByteLevel add_prefix_space=true")
                byte_level = step
                if step.get("use_regex", True):
                    patterns.append(GPT2_SPLIT_PATTERN)
            elif kind == "Split":
                pattern = (step.get("pattern") or {}).get("Regex")
                behavior = (step.get("behavior"), bool(step.get("invert")))
                # Isolated keeps the matches and the text between them as
                # pieces; Removed with invert=true keeps only the matches. The
                # patterns of these files (Llama 3's, cl100k's) match every
                # character, so there is nothing between matches and both are
                # the regex's findall, which is what we do.
                if pattern is None or behavior not in (("Isolated", False), ("Removed", True)):
                    raise unsupported(f"pre_tokenizer Split {step.get('pattern')} {behavior} "
                                      "(need a Regex with Isolated, or Removed with invert=true)")
                patterns.append(pattern)
            elif kind == "Digits":
                # Digits isolates runs of digits (Rust's is_numeric: \p{N}), or
                # each digit alone with individual_digits, from the rest.
                patterns.append(r"\p{N}|\P{N}+" if step.get("individual_digits") else r"\p{N}+|\P{N}+")
            elif kind == "Metaspace" and step.get("replacement") == SENTENCEPIECE_SPACE and not patterns:
                spaces_as_metaspace = True
                # Older files say add_prefix_space, newer ones prepend_scheme.
                scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
                if scheme not in ("always", "first", "never"):
                    raise unsupported(f"Metaspace prepend_scheme {scheme!r}")
                prepend = prepend or (None if scheme == "never" else scheme)
                if step.get("split", True):
                    # Cut before every "▁" (here a space), which starts the next piece.
                    patterns.append(r"[^ ]+| [^ ]*")
            else:
                raise unsupported(f"pre_tokenizer {kind!r}")

        decoders = [step.get("type") for step in steps(spec.get("decoder"))]
        strip = 0
        for step in steps(spec.get("decoder")):
            if step.get("type") == "Strip":
                if step.get("content") != " " or step.get("stop"):
                    raise unsupported(f"decoder Strip {step}")
                strip += step.get("start", 0)
            elif step.get("type") == "Metaspace" and step.get(
                    "prepend_scheme", "always" if step.get("add_prefix_space", True) else "never") != "never":
                strip += 1  # the "▁" it put in front, unless it never puts one
            elif step.get("type") == "Replace" and (step.get("pattern") != {"String": SENTENCEPIECE_SPACE}
                                                    or step.get("content") != " "):
                raise unsupported(f"decoder Replace {step.get('pattern')} -> {step.get('content')!r}")

        vocab_json = model.get("vocab")
        merges_json = model.get("merges")
        if not isinstance(vocab_json, dict) or not isinstance(merges_json, list):
            raise ValueError(f"{path}: model.vocab must be an object and model.merges a list")
        added = spec.get("added_tokens") or []
        for token in added:
            if token.get("single_word"):
                raise unsupported(f"added token {token.get('content')!r} with single_word=true")
        special_tokens = {token["content"]: token["id"] for token in added}
        # An added token may also sit in model.vocab, spelled in the vocabulary's
        # alphabet or literally (GPT-NeoX spells its runs of spaces as spaces);
        # its id means the literal text of the added token, so skip that entry.
        # decode() gives an added token's own text. (HF's ByteLevel decoder
        # passes added tokens through the byte alphabet too, so one written
        # with letters such as "é" or "Ġ" decodes to other bytes there; the
        # special tokens of the models named above are ASCII, where both agree.)
        added_ids = set(special_tokens.values())

        if byte_level is not None:
            if model.get("byte_fallback") or spaces_as_metaspace or prepend:
                raise unsupported("mixing ByteLevel with SentencePiece's byte_fallback or '▁'")
            if not patterns:
                raise unsupported("ByteLevel(use_regex=false) with no Split before it")
            if decoders != ["ByteLevel"]:
                raise unsupported(f"decoder {'+'.join(decoders) or None} (need ByteLevel)")
            vocab = {token_id: _printable_to_token(key, path)
                     for key, token_id in vocab_json.items() if token_id not in added_ids}

            def to_bytes(part):
                return _printable_to_token(part, path)
            sentencepiece = None
        elif spaces_as_metaspace:
            if not model.get("byte_fallback"):
                raise unsupported("SentencePiece-style BPE without byte_fallback")
            if ("ByteFallback" not in decoders or not {"Replace", "Metaspace"} & set(decoders)
                    or set(decoders) - {"Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"}):
                raise unsupported(f"decoder {'+'.join(decoders) or None} (need ByteFallback and "
                                  "Replace or Metaspace)")
            # Byte tokens <0x00>..<0xFF> are bytes; every other token is text
            # whose "▁" we store as a space.
            vocab, byte_ids = {}, {}
            for key, token_id in vocab_json.items():
                if token_id in added_ids:
                    continue
                byte = regex.fullmatch(r"<0x([0-9A-F]{2})>", key)
                if byte:
                    byte_ids[int(byte.group(1), 16)] = token_id
                    vocab[token_id] = bytes([int(byte.group(1), 16)])
                else:
                    vocab[token_id] = key.replace(SENTENCEPIECE_SPACE, " ").encode("utf-8")
            if len(byte_ids) != 256:
                raise ValueError(f"{path}: byte_fallback needs all 256 byte tokens <0x00>..<0xFF>; "
                                 f"model.vocab has {len(byte_ids)}")
            texts = [data for token_id, data in vocab.items() if token_id not in byte_ids.values()]
            if len(set(texts)) != len(texts):
                raise unsupported("a vocabulary that spells a space both as ' ' and as '▁'")

            def to_bytes(part):
                return part.replace(SENTENCEPIECE_SPACE, " ").encode("utf-8")
            sentencepiece = {"byte_ids": [byte_ids[b] for b in range(256)], "prepend": prepend, "strip": strip}
        else:
            raise unsupported(f"pre_tokenizer {(spec.get('pre_tokenizer') or {}).get('type')!r} with "
                              "neither ByteLevel nor SentencePiece's '▁'")

        merges = []
        for number, merge in enumerate(merges_json):
            # Older files spell a merge "left right", newer ones ["left", "right"].
            parts = merge.split(" ") if isinstance(merge, str) else merge
            if not isinstance(parts, list) or len(parts) != 2:
                raise ValueError(f"{path}: merge #{number} {merge!r} is not a pair")
            merges.append(tuple(to_bytes(p) for p in parts))

        # The flags that change ids ("special" only matters to HF's
        # skip_special_tokens). "normalized" does only when a normalizer
        # rewrites the text; GPT-2's file sets it on <|endoftext|>, to no effect.
        flags = {}
        rewrites_text = normalization or prepend == "normalizer"
        for token in added:
            chosen = {name: True for name in ("lstrip", "rstrip") if token.get(name)}
            if token.get("normalized") and rewrites_text:
                chosen["normalized"] = True
            if chosen:
                flags[token["content"]] = chosen

        template = None
        for step in steps(spec.get("post_processor")):
            kind = step.get("type")
            if kind == "TemplateProcessing":
                pieces = step.get("single") or []
                text_at = [i for i, piece in enumerate(pieces) if "Sequence" in piece]
                if len(text_at) != 1:
                    raise unsupported("a TemplateProcessing without exactly one $A")

                def ids_of(part):
                    return [token_id for piece in part
                            for token_id in step["special_tokens"][piece["SpecialToken"]["id"]]["ids"]]
                template = (ids_of(pieces[:text_at[0]]), ids_of(pieces[text_at[0] + 1:]))
            elif kind in ("RobertaProcessing", "BertProcessing"):
                template = ([step["cls"][1]], [step["sep"][1]])
            elif kind != "ByteLevel":  # ByteLevel's post-processor only trims offsets
                raise unsupported(f"post_processor {kind!r}")

        pattern = patterns[0] if len(patterns) == 1 else patterns or None
        return cls(vocab, merges, special_tokens, pattern=pattern,
                   ignore_merges=model.get("ignore_merges", False), normalization=normalization,
                   sentencepiece=sentencepiece, added_token_flags=flags, template=template)


# ----------------------------------------------------------------------------
# Parallel encoding of a large file into a flat binary array of ids
# ----------------------------------------------------------------------------

# Each worker process receives the tokenizer once, when it starts, and keeps it
# (with its growing pre-token cache) for all the chunks it encodes. With the
# "fork" start method (Linux's default) the object is simply inherited, cache
# included, at no cost; with "spawn" it is pickled once per worker.
_worker_tokenizer = None


def _init_encode_worker(tokenizer):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_range(args):
    path, start, end, dtype = args
    ids = _worker_tokenizer.encode(_read_text(path, start, end))
    return np.asarray(ids, dtype=dtype).tobytes()


def encode_file_to_bin(tokenizer, input_path, output_path, num_processes=None, dtype=np.uint16):
    """Encode a UTF-8 text file into a raw array of ids (nanoGPT's train.bin).

    The file is cut at safe points (special-token starts, or for GPT-2's
    pattern a space/newline before a printable ASCII character that does not
    start a special token; see _cut_patterns) into chunks that are encoded in parallel and written in
    order, so the output equals tokenizer.encode(whole_text) while only a few
    chunks are in memory at once. Writes to a temp file and renames it into
    place. Returns the number of tokens written.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui":
        raise ValueError(f"dtype must be an integer type, got {dtype}")
    if tokenizer.vocab_size - 1 > np.iinfo(dtype).max:
        raise ValueError(
            f"token ids go up to {tokenizer.vocab_size - 1}, which does not fit in "
            f"{dtype.name} (max {np.iinfo(dtype).max}); pass dtype=numpy.uint32"
        )
    num_processes = _default_processes(num_processes)
    size = _check_input_file(input_path)
    parallel = num_processes > 1 and size >= MIN_PARALLEL_BYTES
    # Chunks of at most ENCODE_CHUNK_BYTES; smaller files are split evenly
    # across the processes.
    chunk_bytes = min(ENCODE_CHUNK_BYTES, math.ceil(size / num_processes)) if parallel else ENCODE_CHUNK_BYTES
    ranges = _chunk_ranges(input_path, size, max(chunk_bytes, 1), tokenizer._cut_bytes,
                           tokenizer._cut_lookahead)
    jobs = [(input_path, start, end, dtype) for start, end in ranges]

    def write_all(file):
        written = 0
        if parallel and len(jobs) > 1:
            with multiprocessing.get_context().Pool(
                min(num_processes, len(jobs)), _init_encode_worker, (tokenizer,)
            ) as pool:
                # imap (not imap_unordered) returns chunks in file order.
                for data in pool.imap(_encode_range, jobs):
                    file.write(data)
                    written += len(data)
        else:
            for path, start, end, _ in jobs:
                data = np.asarray(tokenizer.encode(_read_text(path, start, end)), dtype=dtype)
                file.write(data.tobytes())
                written += data.nbytes
        return written // dtype.itemsize

    return _atomic_write_with(output_path, write_all)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def _parse_ids(text):
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"--ids must be comma-separated integers, got {text!r}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Byte-level BPE tokenizer (train / encode / decode).")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="learn merges from a text file")
    train.add_argument("--input", required=True, help="UTF-8 training text")
    train.add_argument("--vocab_size", type=int, required=True,
                       help="total ids: 256 bytes + merges + special tokens")
    train.add_argument("--out", required=True, help="writes OUT.vocab.json and OUT.merges.txt")
    train.add_argument("--special_tokens", default="",
                       help='comma-separated, e.g. "<|endoftext|>"')
    train.add_argument("--num_processes", type=int, default=None)
    encode = commands.add_parser("encode", help="print the ids of a text, comma-separated")
    encode.add_argument("--tokenizer", required=True, help="prefix given to train --out")
    source = encode.add_mutually_exclusive_group(required=True)
    source.add_argument("--text")
    source.add_argument("--input", help="UTF-8 text file to encode")
    decode = commands.add_parser("decode", help="print the text of comma-separated ids")
    decode.add_argument("--tokenizer", required=True)
    decode.add_argument("--ids", required=True, help='e.g. "1,2,3"')
    args = parser.parse_args(argv)

    try:
        if args.command == "train":
            special = [tok for tok in args.special_tokens.split(",") if tok]
            # Create the output folder first: a failure to write should come before training, not after.
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            started = time.perf_counter()
            vocab, merges = train_bpe(args.input, args.vocab_size, special,
                                      num_processes=args.num_processes, verbose=True)
            Tokenizer(vocab, merges, special).save(args.out)
            print(f"wrote {args.out}.vocab.json and {args.out}.merges.txt "
                  f"({time.perf_counter() - started:.2f}s total)")
        elif args.command == "encode":
            tokenizer = Tokenizer.load(args.tokenizer)
            if args.input is not None:
                _check_input_file(args.input)
                with open(args.input, encoding="utf-8", newline="") as file:
                    ids = list(tokenizer.encode_iterable(file))
            else:
                ids = tokenizer.encode(args.text)
            print(",".join(map(str, ids)))
        else:
            tokenizer = Tokenizer.load(args.tokenizer)
            print(tokenizer.decode(_parse_ids(args.ids)))
    except (ValueError, OSError) as exc:  # OSError: missing or unwritable files
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
