"""evaluate.py: HellaSwag scores checked against transformers on the same weights (GPT-2, Llama, OLMo 2), a
char-level gpt.py checkpoint, padding invariance, the download, --task=loss, and every refusal's one-line message.

The models are tiny and random; their accuracies mean nothing, but they must equal a reference computed
independently: each ending scored on its own (no batch, no padding) with transformers' model, the ending's
tokens being those of ctx + " " + ending after the context's. The HellaSwag-format examples are made from
lines of the tiny Shakespeare excerpt, so that a character-level model knows every character.
"""
import contextlib
import dataclasses
import json
import random

import pytest
import torch
import torch.nn.functional as F

import evaluate
import gpt
import prepare_data
import sample
from test_prepare_data import server  # noqa: F401 (a fixture: a local HTTP server of server.files)


def make_examples(text, n=10, seed=0):
    """n HellaSwag-format examples: two lines as the context, four other lines (of varied lengths) as endings."""
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 8]
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        picked = rng.sample(lines, 6)
        examples.append({"ctx": picked[0] + " " + picked[1], "endings": picked[2:], "label": rng.randrange(4)})
    return examples


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def examples_file(tmp_path_factory, small_text):
    examples = make_examples(small_text)
    return examples, write_jsonl(tmp_path_factory.mktemp("hellaswag") / "ten.jsonl", examples)


def run(capsys, *args):
    """evaluate.main on args (CPU, float32); return the last line printed."""
    evaluate.main(["--device=cpu", "--dtype=float32", *args])
    return capsys.readouterr().out.strip().splitlines()[-1]


def reference_scores(log_probs_of, encode, prefix, example):
    """(sums, means) of each ending, each scored alone: log_probs_of(ids) -> (T, vocab) log-probabilities."""
    sums, means = [], []
    context = encode(example["ctx"])
    for ending in example["endings"]:
        whole = encode(example["ctx"] + " " + ending)
        ending_ids = whole[len(context):]
        ids = prefix + whole
        log_probs = log_probs_of(ids[:-1])
        picked = [log_probs[t, ids[t + 1]].item() for t in range(len(ids) - 1 - len(ending_ids), len(ids) - 1)]
        sums.append(sum(picked))
        means.append(sum(picked) / len(picked))
    return sums, means


def check_against_reference(capsys, tmp_path, model_dir, examples, path, log_probs_of, encode, prefix):
    output = tmp_path / "results.json"
    line = run(capsys, f"--init_from={model_dir}", f"--data={path}", f"--output={output}", "--batch_size=3")
    results = json.loads(output.read_text())
    correct = correct_norm = 0
    for example, scored in zip(examples, results["examples"], strict=True):
        sums, means = reference_scores(log_probs_of, encode, prefix, example)
        assert scored["sum_logprobs"] == pytest.approx(sums, abs=1e-4)
        assert scored["mean_logprobs"] == pytest.approx(means, abs=1e-4)
        correct += max(range(4), key=sums.__getitem__) == example["label"]
        correct_norm += max(range(4), key=means.__getitem__) == example["label"]
    assert (results["acc"], results["acc_norm"], results["n"]) == (correct / 10, correct_norm / 10, 10)
    assert line == f"hellaswag acc={correct / 10:.4f} acc_norm={correct_norm / 10:.4f} n=10"


def hf_log_probs(hf):
    def log_probs_of(ids):
        with torch.no_grad():
            return F.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    return log_probs_of


# -----------------------------------------------------------------------------
# Hugging Face models, against transformers


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, gpt2_encoding):
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=gpt2_encoding.n_vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(directory)  # no tokenizer.json: evaluate.py reads GPT-2's tokens through tiktoken
    return directory, hf


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, small_text):
    """A tiny random Llama with a byte-level tokenizer.json whose template puts <s> before a text (the
    OLMo 2 test borrows the tokenizer)."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    directory = tmp_path_factory.mktemp("llama")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([small_text], trainer)
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, bos_token_id=0, eos_token_id=1)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(directory)
    return directory, hf, tok


def test_gpt2_directory_matches_transformers(gpt2_dir, gpt2_encoding, examples_file, capsys, tmp_path):
    directory, hf = gpt2_dir
    examples, path = examples_file
    check_against_reference(capsys, tmp_path, directory, examples, path, hf_log_probs(hf),
                            gpt2_encoding.encode_ordinary, [])


def test_llama_directory_matches_transformers(llama_dir, examples_file, capsys, tmp_path):
    directory, hf, tok = llama_dir
    examples, path = examples_file

    def encode(text):
        return tok.encode(text, add_special_tokens=False).ids
    check_against_reference(capsys, tmp_path, directory, examples, path, hf_log_probs(hf), encode, [0])


def test_olmo2_directory_matches_transformers(llama_dir, examples_file, capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    _, _, tok = llama_dir
    examples, path = examples_file
    directory = tmp_path / "olmo2"
    torch.manual_seed(0)
    config = transformers.Olmo2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    hf = transformers.Olmo2ForCausalLM(config).eval()
    hf.save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))

    def encode(text):
        return tok.encode(text, add_special_tokens=False).ids
    check_against_reference(capsys, tmp_path, directory, examples, path, hf_log_probs(hf), encode, [0])


def test_padding_never_changes_a_score(gpt2_dir, examples_file):
    directory, _ = gpt2_dir
    examples = evaluate.read_hellaswag(examples_file[1], None)
    model, tokenizer, _ = evaluate.load_language_model(str(directory), torch.float32)
    model.eval()
    block_size = model.config.block_size
    by_length = sorted(examples, key=lambda e: len(e["ctx"]))
    short, long = by_length[0], by_length[-1]
    short_rows = evaluate.ending_rows(tokenizer, short, block_size)
    long_rows = evaluate.ending_rows(tokenizer, long, block_size)
    assert max(len(ids) for ids, _ in long_rows) > max(len(ids) for ids, _ in short_rows)  # padding happens
    alone = evaluate.score_rows(model, short_rows, "cpu", contextlib.nullcontext())
    batched = evaluate.score_rows(model, long_rows + short_rows, "cpu", contextlib.nullcontext())
    for alone_scores, batched_scores in zip(alone, batched):
        torch.testing.assert_close(batched_scores[len(long_rows):], alone_scores, rtol=0, atol=1e-5)


# -----------------------------------------------------------------------------
# A checkpoint of this repository: gpt.py with the char tokenizer


@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory, small_text):
    """An out_dir with a ckpt.pt as gpt.py writes it (the keys sample.py reads), of a tiny random GPT."""
    out_dir = tmp_path_factory.mktemp("out-char")
    meta = prepare_data.char_meta(small_text)
    torch.manual_seed(0)
    config = gpt.GPTConfig(block_size=64, vocab_size=meta["vocab_size"], n_layer=1, n_head=2, n_embd=16)
    model = gpt.GPT(config).eval()
    torch.save({"model_type": "gpt", "model_args": dataclasses.asdict(config), "model": model.state_dict(),
                "tokenizer": meta}, out_dir / "ckpt.pt")
    return out_dir, model, meta


def char_log_probs(model):
    def log_probs_of(ids):
        with torch.no_grad():
            return F.log_softmax(model(torch.tensor([ids]))[0][0], dim=-1)
    return log_probs_of


def test_char_checkpoint_scores_through_its_tokenizer(char_checkpoint, capsys, tmp_path, small_text):
    out_dir, model, meta = char_checkpoint
    # Short lines, so that every row fits the model's 64 characters and is scored whole.
    lines = [line.strip() for line in small_text.splitlines() if 8 < len(line.strip()) < 25]
    rng = random.Random(1)
    examples = [{"ctx": rng.choice(lines), "endings": rng.sample(lines, 4), "label": rng.randrange(4)} for _ in range(10)]
    path = write_jsonl(tmp_path / "short.jsonl", examples)
    encode = prepare_data.load_tokenizer(meta).encode
    check_against_reference(capsys, tmp_path, out_dir, examples, path, char_log_probs(model), encode, [])


def test_long_context_is_cut_on_the_left(char_checkpoint):
    out_dir, model, meta = char_checkpoint
    tokenizer = prepare_data.load_tokenizer(meta)
    ending = "speak, speak."
    long = {"line": 1, "ctx": "First Citizen: " * 20 + "Before we proceed any further, hear me", "endings": [ending, "No"],
            "label": 0}
    rows = evaluate.ending_rows(tokenizer, long, block_size=64)
    assert [len(ids) for ids, _ in rows] == [65, 65]  # block_size inputs and the token the last one predicts
    # The same as an example whose context is only the characters that fit.
    kept = 65 - len(" " + ending)
    short = dict(long, ctx=long["ctx"][-kept:], endings=[ending])
    assert evaluate.ending_rows(tokenizer, short, block_size=64)[0] == rows[0]
    with pytest.raises(SystemExit, match="an ending of 71 tokens does not fit the model's block_size=64"):
        evaluate.ending_rows(tokenizer, dict(long, endings=["x" * 70, "No"]), block_size=64)
    with pytest.raises(SystemExit, match="line 1: the context is empty"):
        evaluate.ending_rows(tokenizer, dict(long, ctx=""), block_size=64)


def test_limit_and_output(char_checkpoint, examples_file, capsys, tmp_path):
    out_dir, _, _ = char_checkpoint
    _, path = examples_file
    output = tmp_path / "three.json"
    line = run(capsys, f"--init_from={out_dir}", f"--data={path}", "--limit=3", f"--output={output}")
    assert line.startswith("hellaswag acc=") and line.endswith(" n=3")
    results = json.loads(output.read_text())
    assert results["n"] == 3 and [e["line"] for e in results["examples"]] == [1, 2, 3]
    assert not (tmp_path / "three.json.tmp").exists()


def test_ctx_a_and_ctx_b_stand_in_for_ctx(char_checkpoint, tmp_path):
    path = write_jsonl(tmp_path / "split.jsonl", [{"ctx_a": "Speak, speak.", "ctx_b": "You are", "endings": ["all", "no"],
                                                   "label": 0}])
    assert evaluate.read_hellaswag(path, None)[0]["ctx"] == "Speak, speak. You are"


# -----------------------------------------------------------------------------
# The download, from a local server (test_prepare_data's)


def test_download_into_the_cache(char_checkpoint, examples_file, server, monkeypatch, capsys, tmp_path):
    out_dir, _, _ = char_checkpoint
    _, path = examples_file
    with open(path, "rb") as f:
        server.files["/data/hellaswag_val.jsonl"] = f.read()
    monkeypatch.setattr(evaluate, "HELLASWAG_URL", server.url + "/data/hellaswag_val.jsonl")
    monkeypatch.setenv("NANO_MODELS_CACHE", str(tmp_path / "cache"))
    line = run(capsys, f"--init_from={out_dir}")
    assert line.endswith(" n=10")
    cached = tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"
    assert cached.read_bytes() == server.files["/data/hellaswag_val.jsonl"]
    assert not (tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl.part").exists()
    # Offline (here: the server has no such file): one line that says where the file goes and names --data.
    monkeypatch.setenv("NANO_MODELS_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(evaluate, "HELLASWAG_URL", server.url + "/missing/hellaswag_val.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, f"--init_from={out_dir}")
    message = str(exit_info.value)
    assert "\n" not in message and message.startswith("error: could not download")
    assert str(tmp_path / "empty_cache" / "hellaswag" / "hellaswag_val.jsonl") in message and "--data=FILE" in message


# -----------------------------------------------------------------------------
# Refusals: one line each


def one_line_error(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, *args)
    message = str(exit_info.value)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_bad_inputs_are_refused_in_one_line(char_checkpoint, examples_file, capsys, tmp_path):
    out_dir, _, _ = char_checkpoint
    examples, path = examples_file
    assert "did you mean --task=hellaswag?" in one_line_error(capsys, f"--init_from={out_dir}", "--task=hellaswg")
    assert "did you mean --batch_size?" in one_line_error(capsys, f"--init_from={out_dir}", "--batchsize=2")
    assert "--init_from=" in one_line_error(capsys, f"--data={path}")
    assert "not found" in one_line_error(capsys, f"--init_from={out_dir}", f"--data={tmp_path / 'nope.jsonl'}")
    assert "neither ckpt.pt" in one_line_error(capsys, f"--init_from={tmp_path}", f"--data={path}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(examples[0]) + "\n\n" + '{"ctx": "Speak", "endings": ["a", "b"]\n', encoding="utf-8")
    assert f"{bad} line 3 is not valid JSON" in one_line_error(capsys, f"--init_from={out_dir}", f"--data={bad}")
    bad.write_text(json.dumps(dict(examples[0], label=4)) + "\n", encoding="utf-8")
    assert "line 1: 'label' must be the index" in one_line_error(capsys, f"--init_from={out_dir}", f"--data={bad}")
    bad.write_text(json.dumps({"ctx": "Speak, 3 times", "endings": ["a", "b"], "label": 0}) + "\n", encoding="utf-8")
    assert "line 1: prompt contains characters not in" in one_line_error(capsys, f"--init_from={out_dir}", f"--data={bad}")


def test_encoders_and_t5_are_refused(capsys, tmp_path, examples_file):
    import bert

    _, path = examples_file
    out_dir = tmp_path / "out-bert"
    out_dir.mkdir()
    config = bert.BertConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    torch.save({"model_type": "bert", "model_args": dataclasses.asdict(config), "model": bert.Bert(config).state_dict(),
                "tokenizer": {"tokenizer": "char"}}, out_dir / "ckpt.pt")
    assert "holds an encoder (bert) model" in one_line_error(capsys, f"--init_from={out_dir}", f"--data={path}")
    for hf_type, kind in (("bert", "an encoder (bert)"), ("t5", "an encoder-decoder (T5)")):
        (tmp_path / hf_type).mkdir()
        (tmp_path / hf_type / "config.json").write_text(json.dumps({"model_type": hf_type}))
        assert kind in one_line_error(capsys, f"--init_from={tmp_path / hf_type}", f"--data={path}")


# -----------------------------------------------------------------------------
# --task=loss


def prepare(root, name, text, tokenizer):
    prepare_data.prepare_text(text, str(root / "data" / name), tokenizer)


def test_loss_equals_a_direct_computation(char_checkpoint, small_text, capsys, tmp_path, monkeypatch):
    out_dir, _, _ = char_checkpoint
    prepare(tmp_path, "excerpt_char", small_text, "char")
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "loss.json"
    line = run(capsys, f"--init_from={out_dir}", "--task=loss", "--dataset=excerpt_char", "--eval_iters=3",
               "--batch_size=2", "--block_size=32", "--seed=5", f"--output={output}")
    model, _, _ = sample.load_checkpoint(str(out_dir))
    model.eval()
    torch.manual_seed(5)
    loader = prepare_data.BatchLoader("data/excerpt_char", 32, 2, "cpu")
    losses = []
    with torch.no_grad():
        for _ in range(3):
            x, y = loader.get_batch("val")
            logits, _ = model(x)
            losses.append(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
    expected = sum(losses) / 3
    assert json.loads(output.read_text())["loss"] == pytest.approx(expected, abs=1e-6)
    assert line == f"loss val={expected:.4f} n_tokens={3 * 2 * 32}"


def test_loss_refuses_another_tokenizer(char_checkpoint, llama_dir, small_text, capsys, tmp_path, monkeypatch):
    out_dir, _, _ = char_checkpoint
    directory, _, _ = llama_dir
    prepare(tmp_path, "other_chars", small_text + "Zebra & 3 $", "char")  # a vocabulary with four more characters
    prepare(tmp_path, "llama_tokens", small_text, str(directory / "tokenizer.json"))
    monkeypatch.chdir(tmp_path)
    loss = ["--task=loss", "--eval_iters=1", "--batch_size=1", "--block_size=16"]
    for init_from, dataset in ((out_dir, "other_chars"), (out_dir, "llama_tokens"), (directory, "other_chars")):
        message = one_line_error(capsys, f"--init_from={init_from}", f"--dataset={dataset}", *loss)
        assert f"dataset {dataset!r} was not tokenized with" in message
    assert run(capsys, f"--init_from={directory}", "--dataset=llama_tokens", *loss).startswith("loss val=")
    assert "--dataset=NAME" in one_line_error(capsys, f"--init_from={directory}", "--task=loss")


def test_loss_of_a_gpt2_directory_accepts_gpt2_datasets(gpt2_dir, small_text, capsys, tmp_path, monkeypatch):
    directory, _ = gpt2_dir
    prepare(tmp_path, "excerpt_gpt2", small_text, "gpt2")
    prepare(tmp_path, "excerpt_char", small_text, "char")
    monkeypatch.chdir(tmp_path)
    loss = ["--task=loss", "--eval_iters=1", "--batch_size=1", "--block_size=16"]
    assert run(capsys, f"--init_from={directory}", "--dataset=excerpt_gpt2", *loss).startswith("loss val=")
    assert "was not tokenized with" in one_line_error(capsys, f"--init_from={directory}", "--dataset=excerpt_char", *loss)
