"""Web-scale corpora in shards (prepare_data.prepare_shards) and the three token layouts BatchLoader reads.

Parquet files are made here with pyarrow and served from a local HTTP server, so nothing is downloaded;
FINEWEB_EDU_URL points prepare_data at it and FINEWEB_EDU_FILES is cut to the files made here.
"""
import functools
import http.server
import os
import pickle
import sys
import threading

import numpy as np
import pytest
import torch

import prepare_data as pdata

pq = pytest.importorskip("pyarrow.parquet")
import pyarrow as pa  # noqa: E402  (after the skip: only with pyarrow installed)

EXCERPT = open(pdata.SHAKESPEARE_EXCERPT, encoding="utf-8").read()
FILES = ("000_00000.parquet", "001_00000.parquet")
SHARD = 700  # tokens per shard: the documents below make several shards, and documents cross their edges


def documents(file_index):
    """Distinct documents of varied length cut from the excerpt, one of them quoting <|endoftext|>."""
    paragraphs = [p for p in EXCERPT.split("\n\n") if p.strip()]
    docs = [paragraphs[(file_index * 37 + i) % len(paragraphs)] * (1 + i % 3) for i in range(45)]
    docs[5] += " <|endoftext|> is only text here"
    return docs


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local server of two parquet files (row groups of 10 documents); returns their documents."""
    folder = tmp_path / "hub"
    folder.mkdir()
    for i, name in enumerate(FILES):
        pq.write_table(pa.table({"id": list(range(45)), "text": documents(i)}), folder / name, row_group_size=10)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("FINEWEB_EDU_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(pdata, "FINEWEB_EDU_FILES", FILES)
    monkeypatch.setattr(pdata, "DOCUMENTS_PER_TASK", 4)  # many tasks, a shard's edge inside some of them
    yield [doc for i in range(len(FILES)) for doc in documents(i)]
    server.shutdown()


def one_process_stream(docs, tokenizer):
    """The reference: each document's ids after the end-of-text id, in one process, one loop."""
    encode = pdata.document_encoder(tokenizer)
    eot = tokenizer.eot_token
    return np.array([i for doc in docs for i in [eot, *encode(doc)]])


def shard_stream(data_dir):
    meta = pdata.load_meta(data_dir)
    files = [*meta["shards"]["val"], *meta["shards"]["train"]]
    return np.concatenate([np.fromfile(os.path.join(data_dir, f), dtype=meta["dtype"]) for f in files]), meta


@pytest.fixture
def bpe_dataset(tmp_path):
    """A prepared dataset whose bpe.py tokenizer (300 tokens, trained on the excerpt) the shards reuse."""
    path = tmp_path / "excerpt.txt"
    path.write_text(EXCERPT, encoding="utf-8")
    return pdata.prepare("small_bpe", str(path), "bpe", 300, data_root=str(tmp_path / "data"))


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe"])
def test_shards_hold_exactly_the_one_process_ids(tmp_path, hub, tokenizer, request):
    if tokenizer == "gpt2":
        request.getfixturevalue("gpt2_encoding")
        name, meta = "gpt2", {"tokenizer": "gpt2"}
    else:
        name = request.getfixturevalue("bpe_dataset")
        meta = pdata.load_meta(name)
    data_dir = pdata.prepare("fineweb_edu", tokenizer=name, data_root=str(tmp_path / "data"), shard_size=SHARD,
                             processes=2)
    expected = one_process_stream(hub, pdata.load_tokenizer(meta))
    stream, shard_meta = shard_stream(data_dir)
    assert np.array_equal(stream, expected)
    assert shard_meta["format"] == "shards" and shard_meta["dtype"] == "uint16"
    assert shard_meta["shards"]["val"] == ["fineweb_edu_val_000000.bin"]
    assert shard_meta["shards"]["train"][0] == "fineweb_edu_train_000001.bin"
    assert shard_meta["tokens"] == {"val": SHARD, "train": len(expected) - SHARD}
    sizes = [os.path.getsize(os.path.join(data_dir, f)) // 2 for f in shard_meta["shards"]["train"]]
    assert sizes[:-1] == [SHARD] * (len(sizes) - 1) and 0 < sizes[-1] <= SHARD
    assert not [f for f in os.listdir(data_dir) if f.endswith((".tmp", ".part"))]


def test_an_interrupted_run_continues_and_equals_one_run(tmp_path, hub, gpt2_encoding, monkeypatch):
    root = str(tmp_path / "data")
    real_documents = pdata.parquet_documents
    read = []

    def stopped_mid_shard(path, start_row):
        for row, text in real_documents(path, start_row):
            read.append(text)
            if len(read) == 40:  # in the second file's first row groups: mid-shard, not at an edge
                raise KeyboardInterrupt
            yield row, text

    monkeypatch.setattr(pdata, "parquet_documents", stopped_mid_shard)
    with pytest.raises(KeyboardInterrupt):
        pdata.prepare("fineweb_edu", data_root=root, shard_size=SHARD, processes=1)
    data_dir = os.path.join(root, "fineweb_edu")
    finished = {f: os.stat(os.path.join(data_dir, f)).st_mtime_ns for f in os.listdir(data_dir) if f.endswith(".bin")}
    assert len(finished) >= 2 and not pdata.is_prepared(data_dir)

    monkeypatch.setattr(pdata, "parquet_documents", real_documents)
    pdata.prepare("fineweb_edu", data_root=root, shard_size=SHARD, processes=2)
    for file, mtime in finished.items():  # finished shards are kept, not written again
        assert os.stat(os.path.join(data_dir, file)).st_mtime_ns == mtime
    stream, _ = shard_stream(data_dir)
    assert np.array_equal(stream, one_process_stream(hub, pdata.load_tokenizer({"tokenizer": "gpt2"})))


def test_caps_stop_early_and_a_larger_cap_continues(tmp_path, hub, gpt2_encoding, capsys):
    root = str(tmp_path / "data")
    expected = one_process_stream(hub, pdata.load_tokenizer({"tokenizer": "gpt2"}))
    data_dir = pdata.prepare("fineweb_edu", data_root=root, shard_size=SHARD, max_tokens=2 * SHARD + 123, processes=1)
    stream, meta = shard_stream(data_dir)
    assert np.array_equal(stream, expected[:2 * SHARD + 123]) and meta["tokens"]["train"] == SHARD + 123
    assert not os.path.exists(os.path.join(data_dir, "parquet", FILES[1]))  # never needed, never downloaded
    pdata.prepare("fineweb_edu", data_root=root, shard_size=SHARD, max_tokens=2 * SHARD + 123, processes=1)
    assert "already prepared" in capsys.readouterr().out
    pdata.prepare("fineweb_edu", data_root=root, shard_size=SHARD, max_shards=4, processes=1)
    stream, meta = shard_stream(data_dir)
    assert np.array_equal(stream, expected[:4 * SHARD]) and len(meta["shards"]["train"]) == 3
    with pytest.raises(pdata.DataError, match="another tokenizer or shard size"):
        pdata.prepare("fineweb_edu", data_root=root, shard_size=SHARD + 1, processes=1)


def test_training_scripts_calls_read_the_shards(tmp_path, hub, gpt2_encoding):
    root = str(tmp_path / "data")
    pdata.prepare("fineweb_edu", data_root=root, shard_size=SHARD, processes=1)
    data_dir = pdata.ensure_prepared("fineweb_edu", data_root=root)  # prepared: nothing is redone
    assert pdata.load_meta(data_dir)["vocab_size"] == 50257
    check_batches(data_dir, split_tokens(data_dir))


# ----------------------------------------------------------------------------------------------------
# BatchLoader on the three layouts: every row of x is a window of one file of the right split, y = x + 1
# in position. The files hold consecutive integers, so a window is recognised by its first id.


def split_tokens(data_dir):
    meta = pdata.load_meta(data_dir)
    return {split: [np.fromfile(path, dtype=meta.get("dtype", "uint16"), offset=header)[:n]
                    for path, header, n in files] for split, files in pdata.token_files(data_dir, meta).items()}


def check_batches(data_dir, tokens, block_size=8, batch_size=32):
    loader = pdata.BatchLoader(data_dir, block_size, batch_size, "cpu")
    for split in ("train", "val"):
        x, y = loader.get_batch(split)
        assert x.shape == y.shape == (batch_size, block_size) and x.dtype == torch.int64
        for row_x, row_y in zip(x.numpy(), y.numpy()):
            window = np.concatenate([row_x, row_y[-1:]])
            assert np.array_equal(row_y[:-1], row_x[1:])
            assert any(np.array_equal(f[i:i + block_size + 1], window) for f in tokens[split]
                       for i in np.flatnonzero(f[:len(f) - block_size] == window[0]))


def consecutive(start, n):
    return np.arange(start, start + n, dtype=np.uint16)


def llmc_shard(path, ids, magic=pdata.LLMC_MAGIC, version=pdata.LLMC_VERSION, count=None):
    header = np.zeros(pdata.LLMC_HEADER_INTS, dtype=np.int32)
    header[:3] = magic, version, len(ids) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes() + ids.tobytes())


def test_batch_loader_reads_prepare_data_shards(tmp_path):
    data_dir = tmp_path / "corpus"
    data_dir.mkdir()
    files = {"val": ["c_val_000000.bin"], "train": ["c_train_000001.bin", "c_train_000002.bin", "c_train_000003.bin"]}
    for k, name in enumerate([*files["val"], *files["train"]]):
        consecutive(10_000 * k, [50, 40, 5, 60][k]).tofile(data_dir / name)  # 5 tokens: too short, never drawn
    with open(data_dir / "meta.pkl", "wb") as f:
        pickle.dump({"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16", "format": "shards", "shards": files},
                    f)
    assert pdata.dataset_format(str(data_dir)) == "shards"
    check_batches(str(data_dir), split_tokens(str(data_dir)))


def test_batch_loader_reads_a_nanogpt_directory(tmp_path):
    data_dir = tmp_path / "data" / "openwebtext"
    data_dir.mkdir(parents=True)
    consecutive(0, 300).tofile(data_dir / "train.bin")
    consecutive(40_000, 50).tofile(data_dir / "val.bin")
    assert pdata.ensure_prepared("openwebtext", data_root=str(tmp_path / "data")) == str(data_dir)
    meta = pdata.load_meta(str(data_dir))
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("gpt2", 50257, "uint16")
    check_batches(str(data_dir), split_tokens(str(data_dir)))


def test_batch_loader_reads_llmc_shards(tmp_path):
    data_dir = tmp_path / "fineweb10B"
    data_dir.mkdir()
    llmc_shard(data_dir / "fineweb_val_000000.bin", consecutive(50_000, 40))
    llmc_shard(data_dir / "fineweb_train_000001.bin", consecutive(0, 100))
    llmc_shard(data_dir / "fineweb_train_000002.bin", consecutive(20_000, 30))
    assert pdata.load_meta(str(data_dir))["format"] == "llmc"
    tokens = split_tokens(str(data_dir))
    assert [len(t) for t in tokens["train"]] == [100, 30] and tokens["val"][0][0] == 50_000
    check_batches(str(data_dir), tokens)


def test_one_file_draws_the_same_batches_as_before(tmp_path):
    # The single-file path is one torch.randint over len - block_size starts, as it always was, so a
    # resumed run of an existing dataset draws the batches it drew before.
    pdata.prepare("mine", str(tmp_path / "t.txt") if (tmp_path / "t.txt").write_text(EXCERPT) else None, "char",
                  data_root=str(tmp_path))
    data = np.memmap(tmp_path / "mine" / "train.bin", dtype=np.uint16, mode="r")
    torch.manual_seed(0)
    x, _ = pdata.BatchLoader(str(tmp_path / "mine"), 16, 4, "cpu").get_batch("train")
    torch.manual_seed(0)
    starts = torch.randint(len(data) - 16, (4,)).tolist()
    assert np.array_equal(x.numpy(), np.stack([data[i:i + 16] for i in starts]))


# ----------------------------------------------------------------------------------------------------
# Bad input: one line that says what to do


@pytest.mark.parametrize("kind,message", [
    ("magic", "is not an llm.c shard"), ("version", "of version 2, not 1"), ("truncated", "truncated or damaged")])
def test_bad_llmc_shards_are_refused_in_one_line(tmp_path, kind, message):
    data_dir = tmp_path / "bad"
    data_dir.mkdir()
    llmc_shard(data_dir / "x_val_000000.bin", consecutive(0, 40))
    ids = consecutive(0, 100)
    llmc_shard(data_dir / "x_train_000001.bin", ids, magic=1234 if kind == "magic" else pdata.LLMC_MAGIC,
               version=2 if kind == "version" else 1, count=200 if kind == "truncated" else None)
    with pytest.raises(pdata.DataError, match=message) as error:
        pdata.BatchLoader(str(data_dir), 8, 4, "cpu")
    assert "\n" not in str(error.value)


def test_missing_pyarrow_is_named(tmp_path, hub, monkeypatch, gpt2_encoding):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import pyarrow.parquet now raises ImportError
    with pytest.raises(pdata.DataError, match=r"needs the pyarrow package: pip install pyarrow$"):
        pdata.prepare("fineweb_edu", data_root=str(tmp_path / "data"), shard_size=SHARD, processes=1)


def test_a_download_that_is_not_parquet_is_deleted(tmp_path, hub, gpt2_encoding):
    (tmp_path / "hub" / FILES[0]).write_text("<html>rate limited</html>")
    with pytest.raises(pdata.DataError, match="was not a parquet file .* deleted; rerun"):
        pdata.prepare("fineweb_edu", data_root=str(tmp_path / "data"), shard_size=SHARD, processes=1)
    assert not os.listdir(tmp_path / "data" / "fineweb_edu" / "parquet")


def test_cli_options_and_errors(tmp_path):
    with pytest.raises(pdata.DataError, match="only apply to the sharded datasets: fineweb_edu"):
        pdata.prepare("shakespeare_char", data_root=str(tmp_path), max_tokens=10)
    with pytest.raises(pdata.DataError, match="would train a tokenizer on the corpus"):
        pdata.prepare("fineweb_edu", tokenizer="bpe", data_root=str(tmp_path))
    assert pdata.main(["fineweb_edu", "--shards=0", f"--data_root={tmp_path}"]) == 1


# ----------------------------------------------------------------------------------------------------
# The 124M presets: the model each builds, counted on the meta device (no memory, no time)


@pytest.mark.parametrize("script,preset,expected", [("gpt", "gpt2_124m", 124_475_904),
                                                     ("llama", "llama_124m", 123_587_328)])
def test_preset_parameter_counts(script, preset, expected):
    import importlib

    module = importlib.import_module(script)
    config_path = os.path.join(os.path.dirname(pdata.__file__), "config", f"{preset}.py")
    cfg = module.parse_config([config_path], {k: getattr(module, k) for k in module.config_keys})
    make_model, make_config = (module.GPT, module.GPTConfig) if script == "gpt" else (module.Llama, module.LlamaConfig)
    fields = make_config.__dataclass_fields__
    with torch.device("meta"):
        # GPT-2's 50,257 tokens padded to 50,304, as the scripts do for a vocabulary over 1024.
        model = make_model(make_config(**{k: cfg[k] for k in cfg if k in fields and k != "vocab_size"}, vocab_size=50304))
    assert sum(p.numel() for p in model.parameters()) == expected
    assert cfg["batch_size"] * cfg["block_size"] * cfg["gradient_accumulation_steps"] == 524_288
    if script == "gpt":  # OpenAI's GPT-2 small, with the unpadded vocabulary
        with torch.device("meta"):
            gpt2 = make_model(make_config(**{k: cfg[k] for k in cfg if k in fields and k != "vocab_size"}, vocab_size=50257))
        assert sum(p.numel() for p in gpt2.parameters()) == 124_439_808
