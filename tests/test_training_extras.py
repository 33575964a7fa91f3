"""What an evaluation adds to the losses in the decoder scripts: sample_interval (a greedy sample
printed and written to log.jsonl) and hellaswag_interval (HellaSwag accuracy on a fixed subset).

The references are independent: the sample logged at an evaluation equals a greedy decoding of the
checkpoint saved at that evaluation (which holds exactly the weights evaluated), and the HellaSwag
accuracy logged equals evaluate.py's on the same checkpoint and examples. Turning either on must not
change training: greedy decoding and scoring draw no random numbers.
"""
import importlib
import os

import pytest
import torch

import evaluate
import prepare_data
from test_evaluate import make_examples, write_jsonl

TINY = ["--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=2", "--n_head=2", "--n_embd=32",
        "--block_size=64", "--batch_size=4", "--gradient_accumulation_steps=1", "--eval_iters=2",
        "--log_interval=1", "--learning_rate=3e-3", "--warmup_iters=2", "--max_iters=4", "--eval_interval=2"]
DECODERS = ["gpt", "llama", "olmo"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_text_path, small_text):
    """data/tiny (characters) and data/tinybpe (a 300-token byte-level BPE, which spells any text, as
    HellaSwag needs), and a 12-example HellaSwag file where hellaswag_interval finds it: the cache."""
    root = tmp_path_factory.mktemp("extras")
    prepare_data.prepare("tiny", input_path=small_text_path, tokenizer="char", data_root=str(root / "data"))
    prepare_data.prepare("tinybpe", input_path=small_text_path, tokenizer="bpe", vocab_size=300,
                         data_root=str(root / "data"))
    (root / "cache" / "hellaswag").mkdir(parents=True)
    write_jsonl(root / "cache" / "hellaswag" / os.path.basename(evaluate.HELLASWAG_URL), make_examples(small_text, n=12))
    return root


def train(script, workdir, monkeypatch, *args):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("NANO_MODELS_CACHE", str(workdir / "cache"))  # the HellaSwag file, never downloaded
    heads = [] if script == "gpt" else ["--n_kv_head=1"]  # grouped-query attention: 2 query heads share 1
    importlib.import_module(script).main(TINY + heads + list(args))


def checkpoint_model(script, out_dir):
    module = importlib.import_module(script)
    checkpoint = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu", weights_only=True)
    names = {"gpt": ("GPT", "GPTConfig"), "llama": ("Llama", "LlamaConfig"), "olmo": ("OLMo", "OLMoConfig")}[script]
    model_class, config_class = (getattr(module, name) for name in names)
    model = model_class(config_class(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


@pytest.mark.parametrize("script", DECODERS)
def test_logged_sample_is_the_greedy_decoding_of_the_saved_weights(script, workdir, monkeypatch, capsys, run_log):
    out = f"out-sample-{script}"
    train(script, workdir, monkeypatch, "--dataset=tiny", f"--out_dir={out}", "--sample_interval=2",
          "--sample_start=MENENIUS:")
    printed = capsys.readouterr().out
    evals = [r for r in run_log(workdir / out) if r["kind"] == "eval"]
    assert [("sample" in r) for r in evals] == [True, True, True]  # iterations 0, 2 and 4
    model, checkpoint = checkpoint_model(script, workdir / out)
    assert checkpoint["iter_num"] == 4
    tokenizer = prepare_data.load_tokenizer(checkpoint["tokenizer"])
    prompt = tokenizer.encode("MENENIUS:")
    with torch.no_grad():  # the reference: argmax step by step over the whole sequence, no cache
        ids = torch.tensor([prompt])
        for _ in range(100):
            logits, _ = model(ids[:, -model.config.block_size:])  # the newest block_size tokens, as generate
            ids = torch.cat([ids, logits[:, -1, :checkpoint["tokenizer"]["vocab_size"]].argmax(-1, keepdim=True)], 1)
    expected = "MENENIUS:" + tokenizer.decode(ids[0, len(prompt):].tolist())
    assert evals[-1]["sample"] == expected
    assert f"sample at step 4 (greedy):\n{expected}\n----" in printed


def test_samples_and_hellaswag_leave_training_unchanged(workdir, monkeypatch, capsys, run_log_values):
    common = ["--dataset=tinybpe", "--dropout=0.1"]
    train("gpt", workdir, monkeypatch, *common, "--out_dir=out-plain")
    train("gpt", workdir, monkeypatch, *common, "--out_dir=out-extras", "--sample_interval=2",
          "--hellaswag_interval=2", "--hellaswag_examples=4")
    capsys.readouterr()
    extra_keys = ("sample", "val_hellaswag_acc", "val_hellaswag_acc_norm", "hellaswag_n")
    plain = run_log_values(workdir / "out-plain")
    with_extras = [{k: v for k, v in r.items() if k not in extra_keys} for r in run_log_values(workdir / "out-extras")]
    assert plain == with_extras  # every loss and gradient norm, at every logged step


@pytest.mark.parametrize("script", ["gpt", "llama"])
def test_logged_hellaswag_equals_evaluate_py_on_the_checkpoint(script, workdir, monkeypatch, capsys, run_log):
    out = f"out-hellaswag-{script}"
    train(script, workdir, monkeypatch, "--dataset=tinybpe", f"--out_dir={out}", "--hellaswag_interval=4",
          "--hellaswag_examples=10")
    printed = capsys.readouterr().out
    evals = [r for r in run_log(workdir / out) if r["kind"] == "eval"]
    assert ["val_hellaswag_acc_norm" in r for r in evals] == [True, False, True]  # iterations 0 and 4
    data = workdir / "cache" / "hellaswag" / os.path.basename(evaluate.HELLASWAG_URL)
    evaluate.main(["--device=cpu", "--dtype=float32", f"--init_from={workdir / out}", f"--data={data}",
                   "--limit=10", "--batch_size=3"])
    reference = capsys.readouterr().out.strip().splitlines()[-1]
    logged = evals[-1]
    assert logged["hellaswag_n"] == 10
    assert reference == f"hellaswag acc={logged['val_hellaswag_acc']:.4f} acc_norm={logged['val_hellaswag_acc_norm']:.4f} n=10"
    assert f"step 4: hellaswag acc {logged['val_hellaswag_acc']:.4f}" in printed


@pytest.mark.parametrize("args, message", [
    (["--dataset=tiny", "--sample_interval=3"], "sample_interval=3 must be 0 (off) or a multiple of eval_interval=2"),
    (["--dataset=tiny", "--hellaswag_interval=2"], "hellaswag_interval needs a dataset tokenized into words"),
    (["--dataset=tiny", "--sample_interval=2", "--sample_start=QUIZ"], "sample_start='QUIZ' cannot be tokenized"),
])
def test_bad_settings_are_one_line_errors(args, message, workdir, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train("gpt", workdir, monkeypatch, "--out_dir=out-bad", *args)
    assert message in str(exit_info.value) and "\n" not in str(exit_info.value)


def test_two_processes_split_hellaswag_and_log_the_whole_subsets_accuracy(workdir, capsys, run_log):
    # torchrun, 2 processes (gloo): each scores 5 of the 10 examples; the logged accuracy must be that
    # of all 10, as evaluate.py computes it alone on the checkpoint.
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(repo, "gpt.py"), *TINY, "--gradient_accumulation_steps=2", "--dataset=tinybpe",
         "--out_dir=out-hellaswag-ddp", "--hellaswag_interval=4", "--hellaswag_examples=10", "--sample_interval=4"],
        capture_output=True, text=True, cwd=workdir, timeout=300,
        env=os.environ | {"NANO_MODELS_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("sample at step 4") == 1  # every process decodes; rank 0 prints
    logged = [r for r in run_log(workdir / "out-hellaswag-ddp") if r["kind"] == "eval"][-1]
    data = workdir / "cache" / "hellaswag" / os.path.basename(evaluate.HELLASWAG_URL)
    evaluate.main(["--device=cpu", "--dtype=float32", f"--init_from={workdir / 'out-hellaswag-ddp'}",
                   f"--data={data}", "--limit=10"])
    reference = capsys.readouterr().out.strip().splitlines()[-1]
    assert reference == f"hellaswag acc={logged['val_hellaswag_acc']:.4f} acc_norm={logged['val_hellaswag_acc_norm']:.4f} n=10"
