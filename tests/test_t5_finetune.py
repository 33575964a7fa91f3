"""Fine-tuning a pretrained T5 (t5.py --init_from=<HF T5 dir>) on "input<TAB>target" pairs that
prepare_data.py tokenized with the model's own SentencePiece model; sample.py on the result.

The "pretrained" T5 is a tiny random transformers.T5ForConditionalGeneration saved with
save_pretrained beside a SentencePiece model trained here with T5's special ids."""
import io
import os
import random
import re
import sys

import numpy as np
import pytest
import torch

import prepare_data
import sample
import t5

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

N_PAIRS = 400
# The task: a number to its English words, as prepare_data.py numbers, but in SentencePiece pieces.
NUMBERS = random.Random(0).sample(range(100_000), N_PAIRS)
PAIRS = [(f"{n:,}", prepare_data.number_to_words(n)) for n in NUMBERS]


def train_sentencepiece(vocab_size, seed_text):
    """A unigram SentencePiece model with T5's special ids (<pad> 0, </s> 1, <unk> 2, no <s>), as bytes."""
    lines = [f"{a} {b}" for a, b in PAIRS] + [seed_text]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram",
                                   minloglevel=2)
    return model.getvalue()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """<root>/pretrained: a tiny random HF T5 (v1.1 kind) with its spiece.model; <root>/pairs.tsv;
    <root>/data/pairs: that file prepared with the T5's tokenizer."""
    root = tmp_path_factory.mktemp("t5_finetune")
    model_bytes = train_sentencepiece(120, "")
    vocab = spm.SentencePieceProcessor(model_proto=model_bytes).get_piece_size()
    torch.manual_seed(0)
    # Like real T5, the embedding table is larger than the SentencePiece vocabulary (32128 for 32000).
    config = transformers.T5Config(vocab_size=vocab + 8, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                   dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(root / "pretrained")
    (root / "pretrained" / "spiece.model").write_bytes(model_bytes)
    (root / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS), encoding="utf-8")
    prepare_data.prepare("pairs", input_path=str(root / "pairs.tsv"), tokenizer=str(root / "pretrained"),
                         data_root=str(root / "data"))
    return root


def test_prepared_pairs_are_the_sentencepiece_ids(root):
    processor = spm.SentencePieceProcessor(model_file=str(root / "pretrained" / "spiece.model"))
    meta = prepare_data.load_meta(str(root / "data" / "pairs"))
    vocab = processor.get_piece_size()
    assert meta["tokenizer"] == "sentencepiece" and meta["vocab_size"] == vocab
    assert meta["pair_separators"] == [vocab, vocab + 1] and meta["dtype"] == "uint16"
    assert (meta["pad_token_id"], meta["eos_token_id"]) == (0, 1)
    assert meta["sentencepiece_model"] == (root / "pretrained" / "spiece.model").read_bytes()
    assert meta["source"] == os.path.abspath(root / "pretrained" / "spiece.model")
    # The last 10% of the pairs are validation; each is input ids, tab id, target ids, newline id.
    n_val = N_PAIRS // 10
    for split, part in (("train", PAIRS[:-n_val]), ("val", PAIRS[-n_val:])):
        ids = np.fromfile(root / "data" / "pairs" / f"{split}.bin", dtype=np.uint16).tolist()
        assert ids == [i for a, b in part for i in processor.encode(a) + [vocab] + processor.encode(b) + [vocab + 1]]
    tokenizer = prepare_data.load_tokenizer(meta)
    assert tokenizer.eot_token == 1 and tokenizer.vocab_size == vocab
    assert tokenizer.decode(tokenizer.encode("four thousand")) == "four thousand"
    # t5.py's PairLoader cuts the stream at the separators and pads with the model's <pad> / </s>.
    loader = t5.PairLoader(str(root / "data" / "pairs"), meta, 4, "cpu", 16, 24)
    assert [(s.tolist(), t.tolist()) for s, t in loader.pairs["val"]] == [
        (processor.encode(a), processor.encode(b)) for a, b in PAIRS[-n_val:]]
    x, mask, decoder_x, y = loader.collate(loader.pairs["val"][:2])
    source, target = processor.encode(PAIRS[-n_val][0]), processor.encode(PAIRS[-n_val][1])
    assert x[0, :len(source) + 1].tolist() == source + [1] and mask[0].sum() == len(source) + 1
    assert decoder_x[0, :len(target) + 1].tolist() == [0] + target  # <pad> starts the decoder
    assert y[0, :len(target) + 1].tolist() == target + [1]


TINY = ["--device=cpu", "--compile=False", "--dtype=float32", "--block_size=16", "--target_block_size=24",
        "--batch_size=16", "--eval_iters=2", "--eval_exact_match=20", "--log_interval=5", "--learning_rate=3e-3",
        "--warmup_iters=2", "--lr_decay_iters=20", "--dataset=pairs"]


def finetune(root, monkeypatch, capsys, *args):
    monkeypatch.chdir(root)
    t5.main(TINY + list(args))
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def finetuned(root):
    """(log, out_dir) of 20 iterations of fine-tuning the pretrained T5, checkpoints at 10 and 20."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        log = io.StringIO()
        monkeypatch.setattr(sys, "stdout", log)
        t5.main(TINY + [f"--init_from={root / 'pretrained'}", "--out_dir=out-straight", "--max_iters=20",
                        "--eval_interval=10", "--dropout=0.1"])
    return log.getvalue(), root / "out-straight"


def test_finetuning_reduces_loss_and_resumes_exactly(root, finetuned, monkeypatch, capsys):
    log, out_dir = finetuned
    val = [float(v) for v in re.findall(r"val loss ([0-9.]+)", log)]
    assert len(val) == 3 and val[-1] < val[0] - 1.0, log
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)  # the SentencePiece bytes load as data
    assert checkpoint["tokenizer"]["sentencepiece_model"] == (root / "pretrained" / "spiece.model").read_bytes()
    assert checkpoint["model_args"]["vocab_size"] == checkpoint["tokenizer"]["vocab_size"] + 8
    assert (checkpoint["model_args"]["block_size"], checkpoint["model_args"]["target_block_size"]) == (16, 24)
    # Stopping at 10 and resuming to 20 gives the same weights as the straight run.
    finetune(root, monkeypatch, capsys, f"--init_from={root / 'pretrained'}", "--out_dir=out-resumed",
             "--max_iters=10", "--eval_interval=10", "--dropout=0.1")
    resumed = finetune(root, monkeypatch, capsys, "--init_from=resume", "--out_dir=out-resumed", "--max_iters=20",
                       "--eval_interval=10", "--dropout=0.1")
    b = torch.load(root / "out-resumed" / "ckpt.pt", weights_only=True)
    assert b["iter_num"] == 20
    for name, tensor in checkpoint["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert re.findall(r"val loss ([0-9.]+)", log)[-1] == re.findall(r"val loss ([0-9.]+)", resumed)[-1]


def test_finetuning_starts_from_the_pretrained_weights(root, monkeypatch, capsys):
    """The loss evaluated at iteration 0 is the HF model's own on the same batches."""
    hf = transformers.T5ForConditionalGeneration.from_pretrained(root / "pretrained").eval()
    out = finetune(root, monkeypatch, capsys, f"--init_from={root / 'pretrained'}", "--out_dir=out-eval",
                   "--eval_only=True", "--eval_exact_match=0", "--attention=manual", "--seed=7")
    printed = re.search(r"step 0: train loss ([0-9.]+), val loss ([0-9.]+)", out).groups()
    # Replay the evaluation's batches: the same seed, and no draw before them (from_pretrained builds
    # the model on the meta device, which runs no random init).
    torch.manual_seed(7)
    loader = t5.PairLoader(str(root / "data" / "pairs"), prepare_data.load_meta(str(root / "data" / "pairs")),
                           16, "cpu", 16, 24)
    expected = []
    for split in ("train", "val"):
        losses = []
        for _ in range(2):
            x, mask, decoder_x, y = loader.get_batch(split)
            with torch.no_grad():
                labels = y.masked_fill(y == -1, -100)  # the padding HF's loss ignores
                losses.append(hf(input_ids=x, attention_mask=mask, decoder_input_ids=decoder_x, labels=labels).loss.item())
        expected.append(f"{sum(losses) / 2:.4f}")
    assert list(printed) == expected


def test_sample_prints_the_greedy_output(root, finetuned, capsys):
    out_dir = finetuned[1]
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)
    model = t5.T5(t5.T5Config(**checkpoint["model_args"])).eval()
    model.load_state_dict(checkpoint["model"])
    processor = spm.SentencePieceProcessor(model_file=str(root / "pretrained" / "spiece.model"))
    prompt = "12,345"
    row = model.generate(torch.tensor([processor.encode(prompt) + [1]]), 20, temperature=0.0)[0, 1:].tolist()
    row = row[:row.index(1)] if 1 in row else row
    capsys.readouterr()
    sample.main([f"--out_dir={out_dir}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
                 "--max_new_tokens=20", "--device=cpu"])
    assert capsys.readouterr().out == processor.decode(row) + "\n---------------\n"


def one_line_error(function, args):
    with pytest.raises(SystemExit) as exit_info:
        function(args)
    text = str(exit_info.value)
    assert text.startswith("error: ") and "\n" not in text, text
    return text


def test_a_dataset_of_another_tokenizer_is_refused(root, finetuned, monkeypatch):
    other = root / "other_spiece"
    other.mkdir(exist_ok=True)
    (other / "spiece.model").write_bytes(train_sentencepiece(100, "another tokenizer"))
    data = str(root / "data")
    prepare_data.prepare("other", input_path=str(root / "pairs.tsv"), tokenizer=str(other), data_root=data)
    prepare_data.prepare("chars", input_path=str(root / "pairs.tsv"), tokenizer="char", data_root=data)
    monkeypatch.chdir(root)
    pretrained = root / "pretrained"
    for dataset in ("other", "chars"):
        text = one_line_error(t5.main, TINY + [f"--init_from={pretrained}", f"--dataset={dataset}", "--out_dir=o"])
        assert (f"dataset {dataset!r} was not tokenized with {pretrained}'s spiece.model; prepare 'input<TAB>target' "
                f"lines with it: python prepare_data.py NAME --input=PAIRS.tsv --tokenizer={pretrained}") in text
    # Plain text in the model's own vocabulary is refused too (span corruption of a pretrained T5 is not done).
    (root / "plain.txt").write_text("".join(f"{a} is {b}.\n" for a, b in PAIRS), encoding="utf-8")
    prepare_data.prepare("plain", input_path=str(root / "plain.txt"), tokenizer=str(pretrained), data_root=data)
    assert prepare_data.load_meta(os.path.join(data, "plain"))["tokenizer"] == "sentencepiece"
    text = one_line_error(t5.main, TINY + [f"--init_from={pretrained}", "--dataset=plain", "--out_dir=o"])
    assert "dataset 'plain' is plain text; fine-tuning a pretrained T5 needs 'input<TAB>target' pairs" in text
    # Nor may a fine-tuned checkpoint resume on another dataset (a resume keeps the checkpoint's).
    text = one_line_error(t5.main, TINY + ["--init_from=resume", f"--out_dir={finetuned[1]}", "--dataset=other"])
    assert "dataset='other' conflicts with the checkpoint" in text
    # A checkpoint whose own dataset was tokenized with another SentencePiece model is refused too.
    checkpoint = torch.load(finetuned[1] / "ckpt.pt", weights_only=True)
    checkpoint["config"]["dataset"] = "other"
    (root / "out-other").mkdir(exist_ok=True)
    torch.save(checkpoint, root / "out-other" / "ckpt.pt")
    args = [arg for arg in TINY if not arg.startswith("--dataset=")]  # the checkpoint's dataset, 'other'
    text = one_line_error(t5.main, args + ["--init_from=resume", f"--out_dir={root / 'out-other'}"])
    assert "was tokenized with another SentencePiece model than the checkpoint's dataset" in text


def test_a_pairs_file_with_a_bad_line_is_an_error(root, capsys):
    bad = root / "bad.tsv"
    bad.write_text("1\tone\n\n2\ttwo\n3 three\n4\tfour\n", encoding="utf-8")
    args = ["bad", f"--input={bad}", f"--tokenizer={root / 'pretrained'}", f"--data_root={root / 'data'}"]
    assert prepare_data.main(args) == 1
    assert capsys.readouterr().err == (f"error: {bad} line 4 is not 'input<TAB>target' (a text with tabs is read "
                                       f"as pairs: every non-empty line needs exactly one tab with text on both "
                                       f"sides): '3 three'\n")
    assert not (root / "data" / "bad").exists()  # nothing half-written


def test_sentencepiece_missing(root, finetuned, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece now raises ImportError
    message = "SentencePiece tokenizers (T5's spiece.model) need the sentencepiece package: pip install sentencepiece"
    args = ["again", f"--input={root / 'pairs.tsv'}", f"--tokenizer={root / 'pretrained'}",
            f"--data_root={root / 'data'}"]
    assert prepare_data.main(args) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    assert one_line_error(sample.main, [f"--out_dir={finetuned[1]}", "--start=1", "--device=cpu"]) == f"error: {message}"


def test_finetuning_a_hub_id_downloads_the_model_and_its_spiece_model(root, monkeypatch, capsys, tmp_path, local_hub):
    """--init_from=<hub id>: the checkpoint and spiece.model come from the hub (a local HTTP server
    standing in for huggingface.co) into the cache, through download_hf_checkpoint, and the dataset is
    checked against them. A cache without spiece.model (an older version's) is a one-line error."""
    import shutil

    hub = tmp_path / "hub" / "someone" / "tiny-t5" / "resolve" / "main"
    shutil.copytree(root / "pretrained", hub)
    cache = tmp_path / "cache" / "someone--tiny-t5"
    assert t5.download_hf_checkpoint("someone/tiny-t5") == str(cache)
    assert (cache / "spiece.model").read_bytes() == (root / "pretrained" / "spiece.model").read_bytes()
    out = finetune(root, monkeypatch, capsys, "--init_from=someone/tiny-t5", "--out_dir=out-hub", "--max_iters=1",
                   "--eval_interval=1", "--eval_exact_match=0")
    assert "step 1:" in out and (root / "out-hub" / "ckpt.pt").exists()
    (cache / "spiece.model").unlink()  # as a cache completed by a version that did not fetch it
    assert one_line_error(t5.main, TINY + ["--init_from=someone/tiny-t5", "--out_dir=out-hub-old-cache"]) == (
        f"error: cannot load 'someone/tiny-t5': the download cache {cache} has no spiece.model, T5's "
        f"SentencePiece tokenizer (an older version did not fetch it, or someone/tiny-t5 lacks it); delete "
        f"{cache} to download someone/tiny-t5 again")
