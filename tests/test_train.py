"""gpt.py's training loop end to end, and sample.py on what it writes.

Runs are tiny (a 2-layer, 32-wide model for tens of iterations) so the whole file stays fast on a
2-core CPU. Most runs call gpt.main() in-process (no interpreter start-up per run); the command-line
behaviours (one-line errors, torchrun) run as subprocesses.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

import gpt
import prepare_data
from conftest import byte_level_tokenizer_json
import sample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--dataset=tiny", "--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32",
        "--block_size=32", "--batch_size=8", "--gradient_accumulation_steps=1", "--eval_iters=4",
        "--log_interval=5", "--learning_rate=3e-3", "--warmup_iters=5", "--lr_decay_iters=60", "--min_lr=3e-4"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_text_path):
    """A directory holding data/tiny: the committed 40 KB of Shakespeare (conftest.py) at character level.
    Prompts must use its characters: it has no K, Q, X or Z; "MENENIUS:" and "MARCIUS" are in it."""
    root = tmp_path_factory.mktemp("train")
    prepare_data.prepare("tiny", input_path=small_text_path, tokenizer="char", data_root=str(root / "data"))
    return root


def train(workdir, monkeypatch, capsys, *args):
    monkeypatch.chdir(workdir)
    gpt.main(TINY + list(args))
    return capsys.readouterr().out


def val_losses(log):
    return [float(v) for v in re.findall(r"val loss ([0-9.]+)", log)]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_training_reduces_loss_and_writes_a_conventional_checkpoint(workdir, monkeypatch, capsys):
    log = train(workdir, monkeypatch, capsys, "--max_iters=60", "--eval_interval=30", "--out_dir=out-basic")
    losses = val_losses(log)
    assert len(losses) == 3  # iterations 0, 30, 60
    assert losses[-1] < losses[0] - 0.8, log
    assert re.search(r"iter 5: loss [0-9.]+, time [0-9.]+ms, tok/s [0-9,]+, mfu n/a", log)
    checkpoint = load(workdir / "out-basic" / "ckpt.pt")
    assert set(checkpoint) >= {"model_type", "model_args", "model", "optimizer", "iter_num", "best_val_loss",
                               "config", "tokenizer", "rng_state"}
    assert checkpoint["model_type"] == "gpt" and checkpoint["iter_num"] == 60
    assert checkpoint["config"]["n_embd"] == 32 and checkpoint["tokenizer"]["tokenizer"] == "char"
    assert not any(k.startswith("_orig_mod.") for k in checkpoint["model"])
    model = gpt.GPT(gpt.GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    assert not os.path.exists(workdir / "out-basic" / "ckpt.pt.tmp")


def test_resume_continues_exactly(workdir, monkeypatch, capsys):
    common = ["--eval_interval=10", "--dropout=0.1", "--always_save_checkpoint=True"]
    straight = train(workdir, monkeypatch, capsys, *common, "--max_iters=20", "--out_dir=out-straight")
    train(workdir, monkeypatch, capsys, *common, "--max_iters=10", "--out_dir=out-resumed")
    resumed = train(workdir, monkeypatch, capsys, *common, "--max_iters=20", "--out_dir=out-resumed",
                    "--init_from=resume")
    a = load(workdir / "out-straight" / "ckpt.pt")
    b = load(workdir / "out-resumed" / "ckpt.pt")
    assert b["iter_num"] == 20
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert val_losses(straight)[-1] == val_losses(resumed)[-1]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(workdir, monkeypatch, capsys):
    args = ["--eval_interval=5", "--log_interval=1", "--decay_lr=False", "--out_dir=out-nan"]
    train(workdir, monkeypatch, capsys, *args, "--max_iters=5")
    path = workdir / "out-nan" / "ckpt.pt"
    before = path.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        train(workdir, monkeypatch, capsys, *args, "--max_iters=15", "--init_from=resume", "--learning_rate=1e30")
    assert "loss is nan" in str(exit_info.value) and "last good checkpoint" in str(exit_info.value)
    assert path.read_bytes() == before


def test_compile_failure_falls_back_with_a_warning(workdir, monkeypatch, capsys):
    def broken_compile(model, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("no C compiler here")
        return fail

    monkeypatch.setattr(gpt.torch, "compile", broken_compile)
    log = train(workdir, monkeypatch, capsys, "--compile=True", "--max_iters=10", "--eval_interval=10",
                "--out_dir=out-compile")
    assert "warning: torch.compile failed (RuntimeError: no C compiler here)" in log
    assert load(workdir / "out-compile" / "ckpt.pt")["iter_num"] == 10


def test_resume_without_checkpoint_is_a_clear_error(workdir, monkeypatch, capsys):
    with pytest.raises(SystemExit, match="no checkpoint at out-none/ckpt.pt"):
        train(workdir, monkeypatch, capsys, "--init_from=resume", "--out_dir=out-none")


def test_missing_dataset_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "gpt.py"), "--dataset=nothing_here",
                             "--device=cpu"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "error: dataset 'nothing_here' not found" in result.stderr and "Traceback" not in result.stderr


def test_ddp_two_processes_on_cpu(workdir):
    # torchrun starts two processes that train one model with gloo, each on its own batches.
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(REPO, "gpt.py"), *TINY, "--gradient_accumulation_steps=2", "--max_iters=20",
         "--eval_interval=20", "--out_dir=out-ddp"],
        capture_output=True, text=True, cwd=workdir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("saved checkpoint") == 1  # only rank 0 writes
    assert "tokens per iteration: 512 (2 x 8 x 32)" in result.stdout
    losses = val_losses(result.stdout)
    assert losses[-1] < losses[0] - 0.5
    assert load(workdir / "out-ddp" / "ckpt.pt")["iter_num"] == 20


# -----------------------------------------------------------------------------
# sample.py


@pytest.fixture(scope="module")
def trained(workdir):
    """out-sample/ckpt.pt: a briefly trained tiny model (run in a subprocess to keep fixtures independent)."""
    subprocess.run([sys.executable, os.path.join(REPO, "gpt.py"), *TINY, "--max_iters=40", "--eval_interval=40",
                    "--out_dir=out-sample"], cwd=workdir, check=True, capture_output=True, timeout=300)
    return workdir / "out-sample"


def run_sample(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_sample_cli_generates_from_checkpoint(trained):
    result = run_sample(f"--out_dir={trained}", "--start=MENENIUS:", "--num_samples=2", "--max_new_tokens=25",
                        "--seed=3", cwd=trained.parent)
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split("---------------\n")[:-1]
    assert len(samples) == 2
    for text in samples:
        assert text.startswith("MENENIUS:") and len(text.rstrip("\n")) >= len("MENENIUS:") + 20


def test_sample_greedy_output_equals_model_generate(trained, monkeypatch, capsys):
    checkpoint = load(trained / "ckpt.pt")
    model = gpt.GPT(gpt.GPTConfig(**checkpoint["model_args"])).eval()
    model.load_state_dict(checkpoint["model"])
    tokenizer = prepare_data.load_tokenizer(checkpoint["tokenizer"])
    prompt = tokenizer.encode("MARCIUS")
    expected = tokenizer.decode(model.generate(torch.tensor([prompt]), 30, temperature=0.0)[0].tolist())
    (trained / "prompt.txt").write_text("MARCIUS")
    sample.main([f"--out_dir={trained}", f"--start=FILE:{trained / 'prompt.txt'}", "--num_samples=1",
                 "--max_new_tokens=30", "--temperature=0", "--device=cpu"])
    assert capsys.readouterr().out == expected + "\n---------------\n"


def test_sample_interactive(trained):
    result = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), f"--out_dir={trained}",
                             "--interactive=True", "--num_samples=1", "--max_new_tokens=5", "--temperature=0"],
                            input="MARCIUS\nVOLUMNIA\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("---------------") == 2 and "MARCIUS" in result.stdout and "VOLUMNIA" in result.stdout


def test_sample_errors_are_one_line(trained, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "ckpt.pt").write_bytes(b"not a checkpoint at all")
    cases = [
        ([f"--out_dir={tmp_path / 'empty'}"], "no checkpoint at"),
        ([f"--out_dir={corrupt}"], "is not a readable checkpoint"),
        ([f"--out_dir={trained}", "--start=caf\u00e9 \u20ac"], "characters not in the training vocabulary"),
        ([f"--out_dir={trained}", "--start=FILE:nowhere.txt"], "prompt file 'nowhere.txt' not found"),
        ([f"--out_dir={trained}", "--top_p=2.0"], "top_p must be in (0, 1]"),
        ([f"--out_dir={trained}", "--num_sample=2"], "unknown option 'num_sample'"),
        (["--init_from=" + str(tmp_path)], "has no config.json"),
    ]
    for args, message in cases:
        result = run_sample(*args, cwd=tmp_path)
        assert result.returncode != 0, args
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)


def test_sample_from_hf_gpt2_directory_matches_hf_generate(tmp_path, monkeypatch, capsys, gpt2_encoding):
    transformers = pytest.importorskip("transformers")
    encoding = gpt2_encoding
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=64, n_embd=16, n_layer=2, n_head=2)  # GPT-2's 50257 tokens
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)
    prompt = "Before we proceed any further, hear me speak."  # from the text excerpt
    expected_ids = hf.generate(torch.tensor([encoding.encode(prompt)]), max_new_tokens=12, do_sample=False,
                               pad_token_id=0)[0].tolist()
    sample.main([f"--init_from={tmp_path}", f"--start={prompt}", "--num_samples=1", "--max_new_tokens=12",
                 "--temperature=0", "--device=cpu"])
    assert capsys.readouterr().out == encoding.decode(expected_ids) + "\n---------------\n"


def test_sample_from_hf_llama_directory_with_tokenizer_json(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    # A byte-level BPE tokenizer.json, trained here on a little text, saved beside a random Llama.
    text = "the quick brown fox jumps over the lazy dog. " * 50 + "Shall I compare thee to a summer's day?"
    tok = byte_level_tokenizer_json(tmp_path / "tokenizer.json", text)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=None, eos_token_id=None)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    prompt = "Shall I compare thee"
    ids = tok.encode(prompt).ids
    expected = hf.generate(torch.tensor([ids]), max_new_tokens=15, do_sample=False, pad_token_id=0)[0].tolist()
    sample.main([f"--init_from={tmp_path}", f"--start={prompt}", "--num_samples=1", "--max_new_tokens=15",
                 "--temperature=0", "--device=cpu"])
    assert capsys.readouterr().out == tok.decode(expected) + "\n---------------\n"
