"""Tests for prepare_data.py: token files, meta.pkl, batches, downloads and error messages.

Everything runs offline on small texts in tmp_path; downloads are served by a local HTTP server. The
GPT-2 tokenizer tests use tiktoken's GPT-2 files and one test the full tiny Shakespeare, through
conftest.py's fixtures (a local copy, else a download, else skipped).
"""
import http.server
import importlib.util
import os
import pickle
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import requests
import torch

import prepare_data as pdata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_bpe = pytest.mark.skipif(importlib.util.find_spec("bpe") is None, reason="bpe.py not in the repository yet")

# Non-ASCII characters and a Windows line ending, which must survive the round trip byte for byte.
TEXT = "Première ligne, café.\r\nTo be, or not to be: that is the question.\n" * 40


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


def bin_ids(path):
    return np.fromfile(path, dtype=np.uint16).tolist()


def check_dataset(data_dir, text):
    """The .bin files hold the tokenizer's encoding of the 90/10 split of `text`; decoding gives it back."""
    meta = pdata.load_meta(data_dir)
    tok = pdata.load_tokenizer(meta)
    assert tok.vocab_size == meta["vocab_size"]
    cut = int(len(text) * 0.9)
    train, val = bin_ids(os.path.join(data_dir, "train.bin")), bin_ids(os.path.join(data_dir, "val.bin"))
    assert train == tok.encode(text[:cut]) and val == tok.encode(text[cut:])
    assert tok.decode(train) == text[:cut] and tok.decode(val) == text[cut:]
    assert max(train + val) < meta["vocab_size"]
    assert not [f for f in os.listdir(data_dir) if f.endswith(".tmp")]
    return meta, tok


def check_meta_is_plain(meta, tmp_path):
    """meta.pkl must load with plain pickle and survive a weights_only checkpoint round trip."""
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"tokenizer": meta}, ckpt)
    assert torch.load(ckpt, weights_only=True)["tokenizer"] == meta


# ----------------------------------------------------------------------------------------------------
# Preparing and loading


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_prepare_round_trip(tmp_path, tokenizer, request):
    if tokenizer == "gpt2":
        request.getfixturevalue("gpt2_encoding")  # skips when GPT-2's files cannot be had
    src = write(tmp_path / "text.txt", TEXT)
    data_dir = pdata.prepare("mine", input_path=src, tokenizer=tokenizer, data_root=str(tmp_path / "data"))
    assert data_dir == os.path.join(str(tmp_path / "data"), "mine")
    meta, _ = check_dataset(data_dir, TEXT)
    assert meta["tokenizer"] == tokenizer
    with open(os.path.join(data_dir, "meta.pkl"), "rb") as f:
        assert pickle.load(f) == meta
    check_meta_is_plain(meta, tmp_path)


def test_char_vocab_and_unknown_characters(tmp_path):
    src = write(tmp_path / "text.txt", TEXT)
    meta = pdata.load_meta(pdata.prepare("c", src, "char", data_root=str(tmp_path)))
    assert meta["vocab_size"] == len(set(TEXT))
    assert all(meta["itos"][i] == c for c, i in meta["stoi"].items())
    tok = pdata.load_tokenizer(meta)
    assert tok.eot_token is None
    with pytest.raises(ValueError, match=r"not in the training vocabulary: 'ж', '€'$"):
        tok.encode("To bж€ж")


def test_gpt2_tokenizer_knows_endoftext(tmp_path, gpt2_encoding):
    tok = pdata.load_tokenizer({"tokenizer": "gpt2", "vocab_size": 50257})
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    assert tok.encode("a<|endoftext|>b")[1] == 50256
    assert tok.decode(tok.encode("Hello world")) == "Hello world"


def test_gpt2_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    import tiktoken

    def offline(name):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(pdata.DataError, match="TIKTOKEN_CACHE_DIR"):
        pdata.prepare("g", write(tmp_path / "t.txt", TEXT), "gpt2", data_root=str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()


def test_shakespeare_char_and_gpt2_reuse_the_same_input(tmp_path, monkeypatch, tiny_shakespeare, gpt2_encoding):
    root = tmp_path / "data"
    write(root / "shakespeare_char" / "input.txt", open(tiny_shakespeare, "rb").read())
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("must not download"))
    meta = pdata.load_meta(pdata.prepare("shakespeare_char", data_root=str(root)))
    assert meta["vocab_size"] == 65
    data_dir = pdata.prepare("shakespeare", data_root=str(root))  # reuses shakespeare_char/input.txt
    meta = pdata.load_meta(data_dir)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257
    assert len(bin_ids(os.path.join(data_dir, "val.bin"))) > 30000


def test_ensure_prepared(tmp_path, monkeypatch, capsys):
    root = str(tmp_path / "data")
    with pytest.raises(pdata.DataError, match=r"python prepare_data.py mine --input="):
        pdata.ensure_prepared("mine", data_root=root)
    data_dir = pdata.prepare("mine", write(tmp_path / "t.txt", TEXT), "char", data_root=root)
    assert pdata.ensure_prepared("mine", data_root=root) == data_dir
    # A known dataset that is missing gets prepared (here from a pre-placed input.txt, which is not the
    # text the README measured on, so it warns).
    placed = write(tmp_path / "data" / "shakespeare_char" / "input.txt", TEXT)
    data_dir = pdata.ensure_prepared("shakespeare_char", data_root=root)
    out, err = capsys.readouterr()
    assert "preparing it now" in out
    assert err == (f"warning: shakespeare_char is prepared from {placed}, which is not tiny Shakespeare as "
                   f"{pdata.SHAKESPEARE_URL} serves it: results will differ from the README's; for the full text, "
                   f"replace {placed} with {pdata.SHAKESPEARE_URL} and prepare again\n")
    assert pdata.is_prepared(data_dir) and "excerpt" not in pdata.load_meta(data_dir)


def test_a_misspelled_dataset_gets_the_nearest_name(tmp_path):
    root = str(tmp_path / "data")
    with pytest.raises(pdata.DataError) as err:
        pdata.ensure_prepared("shakespear_char", data_root=root)
    assert str(err.value) == (f"dataset 'shakespear_char' not found: {root}/shakespear_char lacks train.bin, val.bin "
                              f"or meta.pkl (did you mean 'shakespeare_char'?)")
    pdata.prepare("my_novel", write(tmp_path / "t.txt", TEXT), "char", data_root=root)  # prepared folders count too
    with pytest.raises(pdata.DataError, match=r"meta.pkl \(did you mean 'my_novel'\?\)$"):
        pdata.ensure_prepared("my_nvel", data_root=root)


def test_datasets_of_another_kind_are_refused_naming_their_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("must not download or prepare"))
    root = str(tmp_path / "data")
    labelled = ("dataset 'shakespeare_speakers' holds labelled lines (for bert.py's classifier: --task=classify), "
                "not a token stream for a language model")
    with pytest.raises(pdata.DataError) as err:  # not prepared yet: refused before any download
        pdata.ensure_prepared("shakespeare_speakers", data_root=root)
    assert str(err.value) == labelled
    write(tmp_path / "data" / "shakespeare_speakers" / "train.tsv", "ROMEO\tO, she doth teach the torches\n")
    write(tmp_path / "data" / "shakespeare_speakers" / "val.tsv", "JULIET\tWhat's in a name?\n")
    with pytest.raises(pdata.DataError) as err:  # prepared
        pdata.ensure_prepared("shakespeare_speakers", data_root=root)
    assert str(err.value) == labelled
    with pytest.raises(pdata.DataError) as err:  # any labelled folder, given to a loader directly
        pdata.BatchLoader(os.path.join(root, "shakespeare_speakers"), block_size=4, batch_size=2, device="cpu")
    assert str(err.value) == labelled
    # Pairs whose separators are ids past the vocabulary (prepare_sentencepiece_pairs) would index past a
    # language model's embedding table.
    pairs_dir = pdata.prepare("t5_pairs", write(tmp_path / "t.txt", TEXT), "char", data_root=root)
    meta = pdata.load_meta(pairs_dir)
    pdata._write_meta(os.path.join(pairs_dir, "meta.pkl"), meta | {"pair_separators": [meta["vocab_size"], meta["vocab_size"] + 1]})
    with pytest.raises(pdata.DataError) as err:
        pdata.BatchLoader(pairs_dir, block_size=4, batch_size=2, device="cpu")
    assert str(err.value) == ("dataset 't5_pairs' holds (input, target) pairs whose separators are ids past its "
                              "vocabulary (for t5.py), not a token stream for a language model")


def test_batches(tmp_path):
    data_dir = pdata.prepare("mine", write(tmp_path / "t.txt", TEXT), "char", data_root=str(tmp_path))
    loader = pdata.BatchLoader(data_dir, block_size=16, batch_size=5, device="cpu")
    torch.manual_seed(0)
    x, y = loader.get_batch("train")
    assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Every row is a real window of the file, y being the next tokens.
    train = torch.tensor(bin_ids(os.path.join(data_dir, "train.bin")))
    windows = train.unfold(0, 17, 1)
    for xr, yr in zip(x, y):
        assert (windows == torch.cat([xr, yr[-1:]])).all(dim=1).any()
    # Batches come from the global torch RNG, so reseeding it replays them (exact resume).
    torch.manual_seed(0)
    assert torch.equal(loader.get_batch("train")[0], x)
    assert loader.get_batch("val")[0].shape == (5, 16)


def test_batch_loader_refuses_short_split(tmp_path):
    data_dir = pdata.prepare("mine", write(tmp_path / "t.txt", "abcdefghij" * 10), "char", data_root=str(tmp_path))
    pdata.BatchLoader(data_dir, block_size=9, batch_size=2, device="cpu")  # val has exactly 10 tokens
    with pytest.raises(pdata.DataError, match=r"val split has 10 tokens, fewer than block_size\+1=11"):
        pdata.BatchLoader(data_dir, block_size=10, batch_size=2, device="cpu")


def test_warns_about_a_split_of_one_token(tmp_path, capsys):
    pdata.prepare("mine", write(tmp_path / "t.txt", "abcdefghij"), "char", data_root=str(tmp_path))
    assert "warning: the val split has only 1 token(s)" in capsys.readouterr().err


def test_failure_leaves_previous_dataset_intact(tmp_path, monkeypatch):
    root = str(tmp_path)
    data_dir = pdata.prepare("mine", write(tmp_path / "t.txt", TEXT), "char", data_root=root)
    before = {f: open(os.path.join(data_dir, f), "rb").read() for f in os.listdir(data_dir)}
    calls = []

    def write_then_fail(path, ids, dtype):  # the val split fails after train's temp file was written
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(path, ids, dtype)

    original = pdata._write_tokens
    monkeypatch.setattr(pdata, "_write_tokens", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        pdata.prepare("mine", write(tmp_path / "t2.txt", "other text " * 50), "char", data_root=root)
    assert {f: open(os.path.join(data_dir, f), "rb").read() for f in os.listdir(data_dir)} == before


# ----------------------------------------------------------------------------------------------------
# BPE (needs bpe.py)


@needs_bpe
def test_bpe_round_trip(tmp_path):
    src = write(tmp_path / "text.txt", TEXT)
    data_dir = pdata.prepare("b", src, "bpe", vocab_size=300, data_root=str(tmp_path / "data"))
    meta, tok = check_dataset(data_dir, TEXT)
    assert meta["tokenizer"] == "bpe" and 257 < meta["vocab_size"] <= 300  # BPE may run out of pairs to merge
    assert tok.eot_token is not None and tok.encode("<|endoftext|>") == [tok.eot_token]
    check_meta_is_plain(meta, tmp_path)


@needs_bpe
def test_bpe_files_path_as_for_tinystories(tmp_path):
    """Train on one file, encode separate train and valid files: the TinyStories path without the download."""
    story = "Once upon a time, a little cat found a red ball. She was happy.\n"
    train = write(tmp_path / "train.txt", (story + "<|endoftext|>\n") * 60)
    valid = write(tmp_path / "valid.txt", "The dog ran to the park. <|endoftext|>\n" * 5)
    data_dir = pdata.prepare_bpe_files(train, valid, str(tmp_path / "ts"), vocab_size=320)
    tok = pdata.load_tokenizer(pdata.load_meta(data_dir))
    for split, path in (("train", train), ("val", valid)):
        ids = bin_ids(os.path.join(data_dir, f"{split}.bin"))
        assert ids == tok.encode(open(path, encoding="utf-8").read())
        assert ids.count(tok.eot_token) == open(path, encoding="utf-8").read().count("<|endoftext|>")


# ----------------------------------------------------------------------------------------------------
# Downloads against a local server


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files; honours "Range: bytes=N-" unless server.ignore_range; server.cut_after truncates
    responses (a dropped connection)."""

    def do_GET(self):
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.server.ranges.append(self.headers.get("Range"))
        ranged = self.headers.get("Range") and not self.server.ignore_range
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if ranged else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:start + self.server.cut_after] if self.server.cut_after else body[start:])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.ranges, srv.cut_after, srv.ignore_range = {}, [], None, False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_resumes_after_dropped_connection(tmp_path, server):
    body = os.urandom(300_000)
    server.files["/f.bin"] = body
    server.cut_after = 100_000
    target = str(tmp_path / "f.bin")
    with pytest.raises(requests.RequestException):
        pdata.download(server.url + "/f.bin", target, timeout=5, chunk_size=4096)
    assert not os.path.exists(target)
    have = os.path.getsize(target + ".part")
    assert 0 < have <= 100_000
    server.cut_after = None
    pdata.download(server.url + "/f.bin", target, timeout=5, chunk_size=4096)
    assert open(target, "rb").read() == body and not os.path.exists(target + ".part")
    assert server.ranges == [None, f"bytes={have}-"]
    pdata.download(server.url + "/f.bin", target, timeout=5)  # present: no request at all
    assert len(server.ranges) == 2


def test_download_finishes_a_complete_part_file(tmp_path, server):
    server.files["/f.txt"] = b"complete"
    write(tmp_path / "f.txt.part", b"complete")  # downloaded, but stopped before the rename
    pdata.download(server.url + "/f.txt", str(tmp_path / "f.txt"), timeout=5)
    assert (tmp_path / "f.txt").read_bytes() == b"complete"


def test_download_restarts_when_server_ignores_range(tmp_path, server):
    server.files["/f.txt"] = b"0123456789"
    server.ignore_range = True
    write(tmp_path / "f.txt.part", b"01234")
    pdata.download(server.url + "/f.txt", str(tmp_path / "f.txt"), timeout=5)
    assert (tmp_path / "f.txt").read_bytes() == b"0123456789"  # not 01234 + 0123456789


def offline(*args, **kwargs):
    raise requests.ConnectionError("no network")


def test_download_failure_says_where_to_put_input(tmp_path, monkeypatch):
    monkeypatch.setattr(requests, "get", offline)
    monkeypatch.chdir(REPO)  # where the README's commands run, so the command is the README's
    with pytest.raises(pdata.DataError) as err:
        pdata.prepare("shakespeare_char", data_root=str(tmp_path))
    target = os.path.join(str(tmp_path), "shakespeare_char", "input.txt")
    assert str(err.value) == (
        f"could not download tiny Shakespeare (ConnectionError); without internet, prepare it from the 40 KB "
        f"excerpt the tests use (results will differ from the README's): python prepare_data.py shakespeare_char "
        f"--input=tests/data/tinyshakespeare_excerpt.txt --data_root={tmp_path} (or download {pdata.SHAKESPEARE_URL} "
        f"by hand and save it as {target})")
    assert os.listdir(tmp_path) == []  # not even the dataset folder: the download never started
    assert pdata.excerpt_command("shakespeare_char", "data") == \
        "python prepare_data.py shakespeare_char --input=tests/data/tinyshakespeare_excerpt.txt"


EXCERPT_WARNING = ("warning: {name} is prepared from the 40 KB excerpt of tiny Shakespeare ({path}), not the full "
                   "1.1 MB text: results will differ from the README's (58 distinct characters instead of 65, only "
                   "the speakers of Coriolanus' first scenes, and a model overfits it early); {advice}\n")


def test_offline_first_run_is_the_command_the_error_prints(tmp_path, monkeypatch, capsys):
    """Elsewhere than the repository root the command names both files by absolute path, and works as printed."""
    monkeypatch.setattr(requests, "get", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pdata.DataError) as err:
        pdata.ensure_prepared("shakespeare_char")  # what the training scripts call, with their data/
    command = re.search(r"prepare it from the 40 KB excerpt .*?: (python .*?) \(or download", str(err.value)).group(1)
    excerpt = os.path.join(REPO, "tests", "data", "tinyshakespeare_excerpt.txt")
    assert command == f"python {os.path.join(REPO, 'prepare_data.py')} shakespeare_char --input={excerpt}"
    result = subprocess.run([sys.executable, *command.split()[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == EXCERPT_WARNING.format(
        name="shakespeare_char", path=excerpt,
        advice="once online, `python prepare_data.py shakespeare_char` prepares the full text")
    meta = pdata.load_meta(str(tmp_path / "data" / "shakespeare_char"))
    assert meta["excerpt"] is True and meta["vocab_size"] == 58
    # The dataset is there now; every run that uses it says again that it is the excerpt.
    capsys.readouterr()
    assert pdata.ensure_prepared("shakespeare_char") == os.path.join("data", "shakespeare_char")
    assert capsys.readouterr().err == (
        "warning: data/shakespeare_char holds the 40 KB excerpt of tiny Shakespeare, so results will differ from "
        "the README's; python prepare_data.py shakespeare_char prepares the full text\n")


def test_a_reused_excerpt_is_warned_about(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("must not download"))
    placed = write(tmp_path / "shakespeare_char" / "input.txt", open(pdata.SHAKESPEARE_EXCERPT, "rb").read())
    pdata.prepare("shakespeare_speakers", data_root=str(tmp_path))
    advice = f"for the full text, replace {placed} with {pdata.SHAKESPEARE_URL} and prepare again"
    assert capsys.readouterr().err == EXCERPT_WARNING.format(name="shakespeare_speakers", path=placed, advice=advice)
    assert pdata.load_meta(pdata.prepare("shakespeare_char", data_root=str(tmp_path)))["excerpt"] is True
    assert capsys.readouterr().err == EXCERPT_WARNING.format(name="shakespeare_char", path=placed, advice=advice)


def test_a_full_copy_is_reused_before_an_excerpt(tmp_path, tiny_shakespeare, capsys):
    write(tmp_path / "shakespeare_char" / "input.txt", open(pdata.SHAKESPEARE_EXCERPT, "rb").read())
    full = write(tmp_path / "shakespeare_bpe" / "input.txt", open(tiny_shakespeare, "rb").read())
    assert pdata.shakespeare_input("shakespeare_char", str(tmp_path)) == full
    meta = pdata.load_meta(pdata.prepare("shakespeare_char", data_root=str(tmp_path)))
    assert meta["vocab_size"] == 65 and "excerpt" not in meta
    assert capsys.readouterr().err == ""


def test_tiny_shakespeare_fixture_skips_on_the_excerpt_and_leaves_nothing_offline(tmp_path, monkeypatch):
    from conftest import find_tiny_shakespeare

    monkeypatch.setattr(requests, "get", offline)
    shared, data_root = str(tmp_path / "shared"), str(tmp_path / "repo" / "data")
    with pytest.raises(pytest.skip.Exception, match=r"could not be downloaded \(ConnectionError\)"):
        find_tiny_shakespeare(shared, data_root)
    assert os.listdir(tmp_path) == []  # the offline test run used to leave data/shakespeare_char/ behind
    placed = write(tmp_path / "repo" / "data" / "shakespeare_char" / "input.txt", open(pdata.SHAKESPEARE_EXCERPT, "rb").read())
    with pytest.raises(pytest.skip.Exception) as skipped:
        find_tiny_shakespeare(shared, data_root)
    assert str(skipped.value) == (f"needs the full tiny Shakespeare (1.1 MB), but {placed} is the 40 KB excerpt; "
                                  f"replace it with {pdata.SHAKESPEARE_URL}")


@needs_bpe
def test_tinystories_end_to_end_from_local_server(tmp_path, server, monkeypatch):
    server.files["/train.txt"] = ("Tom had a big red ball. <|endoftext|>\n" * 80).encode()
    server.files["/valid.txt"] = "Sue saw a cat. <|endoftext|>\n".encode() * 4
    monkeypatch.setattr(pdata, "TINYSTORIES_URLS", {"train": server.url + "/train.txt", "val": server.url + "/valid.txt"})
    data_dir = pdata.prepare("tinystories", vocab_size=300, data_root=str(tmp_path))
    tok = pdata.load_tokenizer(pdata.load_meta(data_dir))
    assert tok.decode(bin_ids(os.path.join(data_dir, "val.bin"))) == server.files["/valid.txt"].decode()


# ----------------------------------------------------------------------------------------------------
# Errors: one clear line, exit code 1, nothing written


def run_cli(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, "prepare_data.py"), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


ERROR_CASES = [
    (["mine", "--input=missing.txt", "--tokenizer=char"], r"input file not found: missing.txt"),
    (["mine", "--input=empty.txt", "--tokenizer=char"], r"input file is empty: empty.txt"),
    (["mine", "--input=latin1.txt", "--tokenizer=gpt2"], r"not UTF-8 text: invalid byte 0xe9 at byte offset 10"),
    (["mine", "--input=ok.txt", "--tokenizer=words"], r"unknown tokenizer 'words'; choose one of char, gpt2, bpe"),
    (["mine", "--input=ok.txt"], r"--input needs --tokenizer="),
    (["mine", "--input=ok.txt", "--tokenizer=bpe", "--vocab_size=70000"], r"vocab_size 70000 does not fit"),
    (["mine", "--input=ok.txt", "--tokenizer=char", "--vocab_size=500"], r"only applies to the bpe tokenizer"),
    (["mine", "--input=tiny.txt", "--tokenizer=char"], r"too short to split"),
    (["mine", "--input=cjk.txt", "--tokenizer=char"], r"70000 distinct characters, more than the 65536"),
    (["wikipedia"], r"unknown dataset 'wikipedia'; known datasets: shakespeare_char, shakespeare, shakespeare_bpe, "
                    r"tinystories, numbers, shakespeare_speakers \(or give your own text"),
    (["shakespear_char"], r"unknown dataset 'shakespear_char' \(did you mean 'shakespeare_char'\?\); known datasets"),
    (["numbers", "--input=ok.txt"], r"numbers is generated and takes no --input; give your own text another name$"),
    (["shakespeare_speakers", "--tokenizer=char"], r"shakespeare_speakers holds labelled lines of text, which the model "
                                                   r"that reads them tokenizes; drop --tokenizer and --vocab_size$"),
    (["mine", "--vocab_size=lots"], r"invalid int value: 'lots'"),
    (["shakespeare_char", "--tokenizer=gpt2"], r"shakespeare_char uses the char tokenizer"),
    (["../mine", "--input=ok.txt", "--tokenizer=char"], r"must be a plain folder name"),
]


@pytest.mark.parametrize("args,message", ERROR_CASES, ids=[m.split(":")[0][:30] for _, m in ERROR_CASES])
def test_cli_errors(tmp_path, args, message):
    write(tmp_path / "empty.txt", b"")
    write(tmp_path / "latin1.txt", "Bonjourcafé".encode("latin-1"))
    write(tmp_path / "ok.txt", TEXT)
    write(tmp_path / "tiny.txt", "a")
    # 70000 distinct characters, skipping the surrogates, which UTF-8 cannot encode.
    write(tmp_path / "cjk.txt", "".join(chr(c) for c in range(0x100, 0x100 + 72048) if not 0xD800 <= c < 0xE000))
    result = run_cli(tmp_path, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "data" / "mine").exists() or os.listdir(tmp_path / "data" / "mine") == []


def test_utf8_error_offset_across_chunk_boundary(tmp_path):
    # A valid 2-byte character split across two reads, followed by an invalid byte.
    data = b"x" * ((1 << 24) - 1) + "é".encode() + b"\xff"
    path = write(tmp_path / "big.txt", data)
    with pytest.raises(pdata.DataError, match=f"byte offset {(1 << 24) + 1}"):
        pdata.check_text_file(path)


def test_cli_success(tmp_path):
    write(tmp_path / "ok.txt", TEXT)
    result = run_cli(tmp_path, "mine", "--input=ok.txt", "--tokenizer=char", "--data_root=out")
    assert result.returncode == 0, result.stderr
    assert pdata.is_prepared(str(tmp_path / "out" / "mine"))
