"""The training template's edge cases, in every training script (gpt.py, llama.py, bigram.py) alike.

Multi-process training (torchrun with gloo on the CPU): exact resume with every rank's own random
stream, one error line instead of one per rank, the config as the user gave it. Resume and evaluation:
eval_only after a resume, a float32 checkpoint resumed in float16 and back, a damaged checkpoint.
Bad numeric settings, each refused in one line naming the key. And generation: logits of the last
position only, no forward pass after the last token, no ids the tokenizer cannot decode, stopping at
the end-of-sequence token, and sampling options checked through the Python API.
"""
import importlib
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import prepare_data
from conftest import byte_level_tokenizer_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["gpt", "llama", "bigram"]
COMMON = ["--dataset=tiny", "--device=cpu", "--compile=False", "--dtype=float32", "--eval_iters=2",
          "--log_interval=2", "--learning_rate=3e-3", "--warmup_iters=2", "--always_save_checkpoint=True"]
MODEL_ARGS = {
    "gpt": ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--dropout=0.1"],
    "llama": ["--n_layer=2", "--n_head=4", "--n_kv_head=2", "--n_embd=32", "--multiple_of=16", "--block_size=32",
              "--batch_size=4", "--dropout=0.1"],
    "bigram": ["--block_size=16", "--batch_size=4"],
}


def args_for(script, *extra):
    return COMMON + MODEL_ARGS[script] + list(extra)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory with a small character dataset 'tiny' under data/."""
    root = tmp_path_factory.mktemp("hardening")
    words = ["the", "king", "doth", "speak", "and", "queen", "answers", "thee", "my", "lord", "ROMEO:", "\n"]
    generator = torch.Generator().manual_seed(0)
    text = " ".join(words[i] for i in torch.randint(0, len(words), (6000,), generator=generator).tolist())
    (root / "input.txt").write_text(text)
    prepare_data.prepare("tiny", input_path=str(root / "input.txt"), tokenizer="char", data_root=str(root / "data"))
    return root


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def run_script(script, *args, cwd, nproc=None):
    """A training script as a subprocess: plain python, or torchrun with nproc gloo processes."""
    launcher = [sys.executable] if nproc is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, os.path.join(REPO, f"{script}.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def train_in_process(script, workdir, monkeypatch, capsys, *args):
    monkeypatch.chdir(workdir)
    importlib.import_module(script).main(args_for(script, *args))
    return capsys.readouterr().out


def val_losses(log):
    return [float(v) for v in re.findall(r"val loss ([0-9.]+)", log)]


# -----------------------------------------------------------------------------
# torchrun


@pytest.mark.parametrize("script", SCRIPTS)
def test_ddp_resume_is_exact_with_every_ranks_own_random_stream(workdir, script, run_log, run_log_values):
    # Two processes, gradient accumulation 2 (one micro-batch each): 8 iterations straight, and 4 then
    # a resume to 8, must end with bit-identical weights and losses. With one RNG state saved for all
    # ranks, both ranks would draw the same batches after the resume, and the runs would differ.
    args = args_for(script, "--gradient_accumulation_steps=2", "--eval_interval=4", "--lr_decay_iters=8")
    straight = run_script(script, *args, "--max_iters=8", f"--out_dir=out-{script}-straight", cwd=workdir, nproc=2)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = run_script(script, *args, "--max_iters=4", f"--out_dir=out-{script}-split", cwd=workdir, nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    # As if the first run had gone on past its checkpoint and crashed mid-line: the resumed run must
    # drop those lines, as it trains those iterations again.
    with open(workdir / f"out-{script}-split" / "log.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "iter": 4, "tokens": 0, "loss": 9.0, "lr": 0.0}) + '\n{"kind": "tr')
    resumed = run_script(script, *args, "--max_iters=8", f"--out_dir=out-{script}-split", "--init_from=resume",
                         cwd=workdir, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load(workdir / f"out-{script}-straight" / "ckpt.pt"), load(workdir / f"out-{script}-split" / "ckpt.pt")
    assert a["iter_num"] == b["iter_num"] == 8
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert val_losses(straight.stdout)[-1] == val_losses(resumed.stdout)[-1]
    # Each rank's own state is saved, and the config keeps the accumulation the user asked for.
    assert len(a["rng_state"]) == 2 and not torch.equal(a["rng_state"][0]["cpu"], a["rng_state"][1]["cpu"])
    assert a["config"]["gradient_accumulation_steps"] == 2
    assert straight.stdout.count("saved checkpoint") == 2  # rank 0 alone writes (iterations 4 and 8)
    # log.jsonl (written by rank 0): the resumed run's records equal the straight run's, each iteration
    # once, timings aside; the resume adds its own start record.
    straight_log = run_log(workdir / f"out-{script}-straight")
    split_log = run_log(workdir / f"out-{script}-split")
    assert [r["iter"] for r in split_log if r["kind"] == "start"] == [0, 4]
    assert [r["iter"] for r in straight_log if r["kind"] == "eval"] == [0, 4, 8]
    assert [r["iter"] for r in straight_log if r["kind"] == "train"] == [0, 2, 4, 6]
    assert straight_log[0]["config"]["gradient_accumulation_steps"] == 2 and straight_log[0]["model_type"] == script
    assert round(straight_log[-1]["val_loss"], 4) == val_losses(straight.stdout)[-1]
    assert run_log_values(workdir / f"out-{script}-straight") == run_log_values(workdir / f"out-{script}-split")
    # The crashed run's line past the checkpoint is kept, marked superseded, and the resume says so.
    assert [r for r in run_log(workdir / f"out-{script}-split", superseded=True) if r.get("superseded")] == [
        {"kind": "train", "iter": 4, "tokens": 0, "loss": 9.0, "lr": 0.0, "superseded": True}]
    assert "1 record(s) past iteration 4, the checkpoint's, are kept but marked superseded" in resumed.stdout


def test_ddp_checkpoint_resumes_with_another_process_count(workdir, monkeypatch, capsys):
    run = run_script("gpt", *args_for("gpt", "--gradient_accumulation_steps=2", "--eval_interval=4"),
                     "--max_iters=4", "--out_dir=out-gpt-count", cwd=workdir, nproc=2)
    assert run.returncode == 0, run.stderr[-3000:]
    log = train_in_process("gpt", workdir, monkeypatch, capsys, "--gradient_accumulation_steps=2",
                           "--eval_interval=4", "--max_iters=8", "--out_dir=out-gpt-count", "--init_from=resume")
    assert "written by 2 process(es) and this run has 1" in log
    assert load(workdir / "out-gpt-count" / "ckpt.pt")["iter_num"] == 8


def test_ddp_error_is_printed_once_without_tracebacks(workdir):
    result = run_script("gpt", *args_for("gpt", "--dataset=nothing_here"), cwd=workdir, nproc=2)
    assert result.returncode != 0
    assert result.stderr.count("error: dataset 'nothing_here' not found") == 1, result.stderr
    assert "[rank0]" not in result.stderr and "[rank1]" not in result.stderr, result.stderr  # no worker traceback


# -----------------------------------------------------------------------------
# Resume and evaluation


@pytest.mark.parametrize("script", SCRIPTS)
def test_eval_only_after_resume_evaluates_and_keeps_the_checkpoint(workdir, monkeypatch, capsys, script, run_log):
    out = f"--out_dir=out-{script}-evalonly"
    train_in_process(script, workdir, monkeypatch, capsys, "--max_iters=4", "--eval_interval=4", out)
    before = (workdir / f"out-{script}-evalonly" / "ckpt.pt").read_bytes()
    log_before = (workdir / f"out-{script}-evalonly" / "log.jsonl").read_bytes()
    log = train_in_process(script, workdir, monkeypatch, capsys, "--max_iters=4", "--eval_interval=4", out,
                           "--init_from=resume", "--eval_only=True")
    assert re.search(r"step 4: train loss [0-9.]+, val loss [0-9.]+", log), log
    assert (workdir / f"out-{script}-evalonly" / "ckpt.pt").read_bytes() == before
    assert (workdir / f"out-{script}-evalonly" / "log.jsonl").read_bytes() == log_before  # eval_only logs nothing
    assert [r["kind"] for r in run_log(workdir / f"out-{script}-evalonly")] == ["start", "eval", "train", "train", "eval"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_across_float32_and_float16(workdir, monkeypatch, capsys, script):
    # A float32 checkpoint has an empty GradScaler state; a float16 run must still resume from it, and
    # a float16 checkpoint (with a scaler state) must resume in float32.
    out = f"--out_dir=out-{script}-dtypes"
    train_in_process(script, workdir, monkeypatch, capsys, "--max_iters=2", "--eval_interval=2", out)
    train_in_process(script, workdir, monkeypatch, capsys, "--max_iters=4", "--eval_interval=2", out,
                     "--init_from=resume", "--dtype=float16")
    assert load(workdir / f"out-{script}-dtypes" / "ckpt.pt")["scaler"]  # float16 saved its scale
    train_in_process(script, workdir, monkeypatch, capsys, "--max_iters=6", "--eval_interval=2", out,
                     "--init_from=resume", "--dtype=float32")
    assert load(workdir / f"out-{script}-dtypes" / "ckpt.pt")["iter_num"] == 6


@pytest.mark.parametrize("script", SCRIPTS)
def test_damaged_checkpoint_is_a_one_line_error_and_stays_untouched(workdir, script):
    out_dir = workdir / f"out-{script}-damaged"
    assert run_script(script, *args_for(script, "--max_iters=2", "--eval_interval=2", f"--out_dir={out_dir}"),
                      cwd=workdir).returncode == 0
    path = out_dir / "ckpt.pt"
    damaged = path.read_bytes()[:5000]  # a copy cut short, as by a full disk
    path.write_bytes(damaged)
    result = run_script(script, *args_for(script, "--max_iters=4", f"--out_dir={out_dir}", "--init_from=resume"),
                        cwd=workdir)
    assert result.returncode == 1
    assert "is not a readable checkpoint of this repository" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert path.read_bytes() == damaged


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_continues_the_checkpoints_run_and_refuses_changing_its_dataset_or_architecture(workdir, script):
    out_dir = workdir / f"out-{script}-settings"
    assert run_script(script, *args_for(script, "--max_iters=2", "--eval_interval=2", f"--out_dir={out_dir}"),
                      cwd=workdir).returncode == 0
    # Only init_from and out_dir: the run continues on the checkpoint's dataset ('tiny', not the script's
    # default) with its settings (batch size, evaluation interval, device, ...), not the defaults.
    resumed = run_script(script, "--init_from=resume", f"--out_dir={out_dir}", "--max_iters=4", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    checkpoint = load(out_dir / "ckpt.pt")
    assert checkpoint["iter_num"] == 4 and checkpoint["config"] == {**checkpoint["config"], "dataset": "tiny",
                                                                    "batch_size": 4, "eval_interval": 2}
    # The dataset and the architecture cannot change in a resumed run: one line naming the key.
    changes = [("dataset", "numbers")] + ([("n_layer", 6)] if script != "bigram" else [])
    for key, value in changes:
        result = run_script(script, "--init_from=resume", f"--out_dir={out_dir}", "--max_iters=6", f"--{key}={value}",
                            cwd=workdir)
        assert result.returncode == 1
        assert result.stderr.startswith(f"error: {key}={value!r} conflicts with the checkpoint in {out_dir}, trained "
                                        f"with {key}="), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert load(out_dir / "ckpt.pt")["iter_num"] == 4  # untouched


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_resolves_the_machine_settings_again(script):
    # A checkpoint written on a GPU holds device='cuda' and dtype='bfloat16' ('auto' resolved there); a
    # resume on another machine must resolve 'auto' again, not inherit them, while the run's own settings
    # (here the batch size) come from the checkpoint.
    module = importlib.import_module(script)
    defaults = {k: getattr(module, k) for k in module.config_keys}
    saved = defaults | {"device": "cuda", "dtype": "bfloat16", "backend": "nccl", "batch_size": 7}
    cfg = module.resumed_config(["--init_from=resume"], defaults, {"config": saved}, fixed=("dataset",))
    assert (cfg["device"], cfg["dtype"], cfg["backend"], cfg["batch_size"]) == ("auto", "auto", "auto", 7)


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_refuses_a_dataset_whose_ids_the_model_cannot_read(workdir, script):
    # The dataset's name is the checkpoint's, but it was prepared again from a text with more characters:
    # its ids run past the model's table, which must be said before the first batch (not an IndexError).
    root = workdir / f"regrown-{script}"
    root.mkdir()
    (root / "input.txt").write_text("the king doth speak " * 400)
    data_root = workdir / "data"
    prepare_data.prepare(f"regrown_{script}", input_path=str(root / "input.txt"), tokenizer="char",
                         data_root=str(data_root))
    out = f"--out_dir=out-{script}-regrown"
    assert run_script(script, *args_for(script, "--max_iters=2", "--eval_interval=2", out,
                                        f"--dataset=regrown_{script}"), cwd=workdir).returncode == 0
    (root / "input.txt").write_text("THE QUEEN ANSWERS, MY LORD! " * 400)
    prepare_data.prepare(f"regrown_{script}", input_path=str(root / "input.txt"), tokenizer="char",
                         data_root=str(data_root))
    result = run_script(script, "--init_from=resume", out, "--max_iters=4", cwd=workdir)
    assert result.returncode == 1
    assert re.fullmatch(rf"error: dataset 'regrown_{script}' has \d+ tokens but the .*\n", result.stderr), result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_best_only_checkpoint_says_what_resume_continues_from(workdir, monkeypatch, capsys, script):
    # With always_save_checkpoint=False the checkpoint is the best evaluation's; when that is not the last
    # iteration, the run's last words say so (a user resumed from 1250 expecting 2000).
    module = importlib.import_module(script)
    out_dir = workdir / f"out-{script}-bestonly"
    out_dir.mkdir()
    torch.save({"iter_num": 1250}, out_dir / "ckpt.pt")
    cfg = {"out_dir": str(out_dir), "eval_only": False, "always_save_checkpoint": False}
    runtime = module.Runtime(False, 0, 0, 1, "cpu", "cpu", None, None)
    module.end_run(cfg, runtime, 2000, 1.4567, None)
    assert capsys.readouterr().out == (f"note: {out_dir / 'ckpt.pt'} holds iteration 1250, the best val loss (1.4567); "
                                       f"--init_from=resume continues from there, not from iteration 2000\n")
    module.end_run(cfg, runtime, 1250, 1.4567, None)  # the checkpoint is the last iteration's: nothing to say
    module.end_run(cfg | {"always_save_checkpoint": True}, runtime, 2000, 1.4567, None)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_gradient_norm_is_logged_before_clipping(workdir, monkeypatch, capsys, script, run_log):
    # The norm in every log line and log.jsonl record is the one clipping looks at: the same whether or
    # not a run clips (at iteration 0 both runs have the same weights and batch), and above the threshold
    # that a tiny grad_clip then forces the update down to (so the next loss differs).
    logs = {}
    for clip in (0.0, 1e-3):
        out = f"--out_dir=out-{script}-norm-{clip}"
        printed = train_in_process(script, workdir, monkeypatch, capsys, "--max_iters=2", "--eval_interval=2",
                                   "--log_interval=1", f"--grad_clip={clip}", out)
        logs[clip] = [r for r in run_log(workdir / out[10:]) if r["kind"] == "train"]
        assert [f"{r['grad_norm']:.3g}" for r in logs[clip]] == re.findall(r", grad norm ([0-9.e+-]+)\n", printed)
    free, clipped = logs[0.0], logs[1e-3]
    assert free[0]["grad_norm"] == clipped[0]["grad_norm"] > 1e-3 and math.isfinite(free[0]["grad_norm"])
    assert free[1]["loss"] != clipped[1]["loss"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_busy_cpu_gets_one_warning_about_threads(script, monkeypatch, capsys):
    module = importlib.import_module(script)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))  # another job keeps about one core busy
    module.warn_if_cpu_is_busy(1)
    assert capsys.readouterr().out == ("warning: this CPU is busy (load 1.2 on 2 cores) and torch runs 2 thread(s); "
                                       "with OMP_NUM_THREADS=1 it may train several times faster\n")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    module.warn_if_cpu_is_busy(1)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("argument, message", [
    ("--max_iter=10", "unknown config key 'max_iter' (from --max_iter=10); did you mean 'max_iters'?"),
    ("--compile=false", "config key 'compile' must be bool, got 'false' (from --compile=false); use False"),
    ("--eval_only=true", "config key 'eval_only' must be bool, got 'true' (from --eval_only=true); use True"),
])
def test_config_mistakes_suggest_what_was_meant(script, argument, message):
    result = run_script(script, argument, cwd=REPO)
    assert result.returncode == 1 and result.stderr == f"error: {message}\n", result.stderr


# -----------------------------------------------------------------------------
# Numeric settings


@pytest.mark.parametrize("setting, message", [
    ("--max_iters=-1", "'max_iters' must be >= 0"),
    ("--eval_iters=0", "'eval_iters' must be >= 1"),
    ("--batch_size=0", "'batch_size' must be >= 1"),
    ("--block_size=0", "'block_size' must be >= 1"),
    ("--learning_rate=-0.001", "'learning_rate' must be > 0"),
    ("--dropout=1.0", "'dropout' must be in [0, 1)"),
    ("--dropout=-0.1", "'dropout' must be in [0, 1)"),
    ("--grad_clip=-1.0", "'grad_clip' must be >= 0"),
    ("--gradient_accumulation_steps=0", "'gradient_accumulation_steps' must be >= 1"),
    ("--beta2=1.0", "'beta2' must be in [0, 1)"),
])
@pytest.mark.parametrize("script", SCRIPTS)
def test_meaningless_numbers_are_refused_naming_the_key(script, setting, message):
    module = importlib.import_module(script)
    if setting.split("=")[0][2:] not in module.config_keys:
        pytest.skip(f"{script}.py has no such key")
    defaults = {k: getattr(module, k) for k in module.config_keys}
    with pytest.raises(SystemExit) as exit_info:
        module.check_config(module.parse_config([setting], defaults))
    assert str(exit_info.value).startswith("error: config key ") and message in str(exit_info.value)


@pytest.mark.parametrize("script", SCRIPTS)
def test_max_iters_zero_evaluates_once_and_trains_nothing(workdir, monkeypatch, capsys, script):
    log = train_in_process(script, workdir, monkeypatch, capsys, "--max_iters=0", "--eval_interval=2",
                           f"--out_dir=out-{script}-zero")
    assert len(val_losses(log)) == 1 and "iter 0:" not in log


# -----------------------------------------------------------------------------
# Generation


def tiny_model(script, vocab_size=80):
    torch.manual_seed(0)
    module = importlib.import_module(script)
    if script == "gpt":
        model = module.GPT(module.GPTConfig(block_size=16, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16))
    elif script == "llama":
        model = module.Llama(module.LlamaConfig(block_size=16, vocab_size=vocab_size, n_layer=2, n_head=2,
                                                n_kv_head=1, n_embd=16, hidden_dim=32))
    else:
        model = module.Bigram(module.BigramConfig(vocab_size=vocab_size, block_size=16))
    return model.eval()


@pytest.mark.parametrize("script", ["gpt", "llama"])
def test_last_only_logits_equal_the_full_forwards_last_row(script):
    model = tiny_model(script)
    idx = torch.randint(0, 80, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, 80)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("script", SCRIPTS)
def test_generate_runs_one_forward_per_new_token(script, monkeypatch):
    model = tiny_model(script)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    model.generate(torch.zeros((1, 3), dtype=torch.long), 5, temperature=0)
    assert len(calls) == 5  # the prompt, then one per new token but the last: its logits are never used


@pytest.mark.parametrize("script", SCRIPTS)
def test_generate_never_samples_ids_past_vocab_size(script):
    model = tiny_model(script)
    head = model.token_embedding_table.weight if script == "bigram" else model.lm_head.weight
    with torch.no_grad():  # make the padded ids 65..79 overwhelmingly likely
        if script == "bigram":
            head[:, 65:] += 100.0
        else:
            model.lm_head.bias = None
            head[65:] = 0.0
            head[65:, 0] = 1e4
    out = model.generate(torch.ones((4, 2), dtype=torch.long), 20, top_k=None, vocab_size=65)
    assert int(out.max()) < 65
    unlimited = model.generate(torch.ones((4, 2), dtype=torch.long), 20, top_k=None)
    assert int(unlimited.max()) >= 65  # the test would catch sampling past the limit


@pytest.mark.parametrize("script", SCRIPTS)
def test_generate_stops_at_the_end_of_sequence_token(script):
    model = tiny_model(script)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    greedy = model.generate(prompt, 8, temperature=0)
    eos = int(greedy[0, 5])  # the third new token of row 0 becomes the end-of-sequence token
    stopped = model.generate(prompt, 8, temperature=0, eos_token_id=eos)
    row0 = greedy[0, 3:].tolist()
    end = row0.index(eos)
    assert stopped[0, 3:3 + end + 1].tolist() == row0[:end + 1]
    assert (stopped[0, 3 + end:] == eos).all()  # a finished row is padded with its end token
    if eos not in greedy[1, 3:].tolist():
        assert stopped.size(1) == greedy.size(1) and torch.equal(stopped[1], greedy[1])
    # A list of ids (Llama 3 ends with either of two) works the same, and every row stops early
    # once all have finished.
    both = model.generate(prompt, 8, temperature=0, eos_token_id=[int(greedy[0, 3]), int(greedy[1, 3])])
    assert both.size(1) == 4


@pytest.mark.parametrize("options, message", [
    (dict(top_k=0), "top_k must be None or an integer >= 1"),
    (dict(top_p=0.0), "top_p must be None or in (0, 1]"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
])
@pytest.mark.parametrize("script", SCRIPTS)
def test_sampling_options_are_checked_through_the_api(script, options, message):
    model = tiny_model(script)
    with pytest.raises(ValueError, match=re.escape(message)):
        model.generate(torch.zeros((1, 2), dtype=torch.long), 3, **options)


@pytest.mark.parametrize("script", ["gpt", "llama"])
def test_read_safetensors_accepts_zero_element_tensors(tmp_path, script):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"empty": torch.zeros(0, 4), "also_empty": torch.zeros(3, 0, dtype=torch.bfloat16), "x": torch.ones(2)}
    safetensors_torch.save_file(tensors, str(tmp_path / "t.safetensors"))
    loaded = importlib.import_module(script).read_safetensors(str(tmp_path / "t.safetensors"))
    for name, tensor in tensors.items():
        assert loaded[name].shape == tensor.shape and loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    safetensors_torch.save_file({"only": torch.zeros(0)}, str(tmp_path / "only_empty.safetensors"))
    assert importlib.import_module(script).read_safetensors(str(tmp_path / "only_empty.safetensors"))["only"].numel() == 0


# -----------------------------------------------------------------------------
# sample.py


@pytest.fixture(scope="module")
def trained(workdir):
    """A briefly trained tiny GPT on the 'tiny' dataset."""
    result = run_script("gpt", *args_for("gpt", "--max_iters=20", "--eval_interval=20", "--out_dir=out-sample"),
                        cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir / "out-sample"


def run_sample(*args, cwd, stdin=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, input=stdin, env=os.environ | {"OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("args, message", [
    (["--num_samples=0"], "option 'num_samples' must be a positive integer, got 0"),
    (["--max_new_tokens=-5"], "option 'max_new_tokens' must be a positive integer, got -5"),
    (["--max_new_tokens=0"], "option 'max_new_tokens' must be a positive integer, got 0"),
    (["--top_k=0"], "top_k must be >= 1"),
    (["--temperature=-1"], "temperature must be >= 0"),
])
def test_sample_refuses_meaningless_numbers(trained, args, message):
    result = run_sample(f"--out_dir={trained}", *args, cwd=trained.parent)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_sample_streams_one_sample_exactly_as_the_batch_prints_it(trained, monkeypatch, capsys):
    import sample

    printed = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append((a, k.get("end", "\n"))))
    sample.main([f"--out_dir={trained}", "--start=the king", "--num_samples=1", "--max_new_tokens=30",
                 "--temperature=0", "--device=cpu"])
    monkeypatch.undo()
    streamed = "".join("".join(map(str, a)) + end for a, end in printed)
    assert len(printed) > 10  # token by token, not one print at the end
    checkpoint = load(trained / "ckpt.pt")
    gpt = importlib.import_module("gpt")
    model = gpt.GPT(gpt.GPTConfig(**checkpoint["model_args"])).eval()
    model.load_state_dict(checkpoint["model"])
    tokenizer = prepare_data.load_tokenizer(checkpoint["tokenizer"])
    expected = tokenizer.decode(model.generate(torch.tensor([tokenizer.encode("the king")]), 30, temperature=0)[0].tolist())
    assert streamed == expected + "\n---------------\n"


def test_sample_stops_at_the_tokenizers_end_token(trained, monkeypatch, capsys):
    # A char tokenizer has no end token; give this one the newline's id as its end-of-text token.
    import sample

    checkpoint = load(trained / "ckpt.pt")
    newline = checkpoint["tokenizer"]["stoi"]["\n"]
    original = prepare_data.load_tokenizer

    def with_end_token(meta):
        tokenizer = original(meta)
        tokenizer.eot_token = newline
        return tokenizer

    monkeypatch.setattr(prepare_data, "load_tokenizer", with_end_token)
    outputs = {}
    for stop in (True, False):
        sample.main([f"--out_dir={trained}", "--start=the", "--num_samples=2", "--max_new_tokens=200",
                     "--temperature=1.0", "--seed=5", "--device=cpu", f"--stop_at_eos={stop}"])
        outputs[stop] = capsys.readouterr().out.split("---------------\n")[:-1]
    for stopped, full in zip(outputs[True], outputs[False]):
        assert "\n" not in stopped.rstrip("\n")  # cut before the end token, which is not printed
        assert full.startswith(stopped.rstrip("\n")) and len(full) > len(stopped)


# -----------------------------------------------------------------------------
# Fine-tuning a pretrained model: the dataset must come from the model's own tokenizer


def test_finetune_pretrained_llama_on_text_tokenized_with_its_tokenizer(workdir, tmp_path):
    transformers = pytest.importorskip("transformers")
    text = (workdir / "input.txt").read_text()
    model_dir = tmp_path / "hf-llama"
    model_dir.mkdir()
    tok = byte_level_tokenizer_json(model_dir / "tokenizer.json", text)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=None, eos_token_id=None)
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    data_root = workdir / "data"
    # The dataset's ids are HF tokenizers' own ids for the text.
    prepare_data.prepare("tiny_llama", input_path=str(workdir / "input.txt"), tokenizer=str(model_dir),
                         data_root=str(data_root))
    import numpy as np

    meta = prepare_data.load_meta(str(data_root / "tiny_llama"))
    train_text, _ = prepare_data.split_text(text)
    assert np.fromfile(data_root / "tiny_llama" / "train.bin", dtype=meta["dtype"]).tolist() == tok.encode(train_text).ids
    common = ["--device=cpu", "--compile=False", "--dtype=float32", "--block_size=32", "--batch_size=4",
              "--eval_iters=2", "--eval_interval=10", "--learning_rate=1e-3", f"--init_from={model_dir}"]
    refused = run_script("llama", *common, "--dataset=tiny", "--max_iters=10", "--out_dir=out-ft-refused", cwd=workdir)
    assert refused.returncode == 1 and "was not tokenized with" in refused.stderr and "--tokenizer=" in refused.stderr
    tuned = run_script("llama", *common, "--dataset=tiny_llama", "--max_iters=10", "--out_dir=out-ft", cwd=workdir)
    assert tuned.returncode == 0, tuned.stderr
    losses = val_losses(tuned.stdout)
    assert losses[-1] < losses[0]
    # sample.py decodes the fine-tuned model's output with the same tokenizer, read from the checkpoint.
    result = run_sample(f"--out_dir={workdir / 'out-ft'}", "--start=the king", "--num_samples=1",
                        "--max_new_tokens=10", "--temperature=0", cwd=workdir)
    assert result.returncode == 0, result.stderr
    llama = importlib.import_module("llama")
    checkpoint = load(workdir / "out-ft" / "ckpt.pt")
    model = llama.Llama(llama.LlamaConfig(**checkpoint["model_args"])).eval()
    model.load_state_dict(checkpoint["model"])
    ids = model.generate(torch.tensor([tok.encode("the king").ids]), 10, temperature=0)[0].tolist()
    assert result.stdout == tok.decode(ids) + "\n---------------\n"


def test_dataset_keeps_the_models_end_of_sequence_ids(workdir, tmp_path):
    # A Llama 3-style model ends a text at either of two ids, neither of them "<|endoftext|>":
    # generation_config.json's list wins over config.json's single id, and travels with the dataset
    # into the checkpoint's tokenizer, where sample.py reads it.
    text = (workdir / "input.txt").read_text()
    byte_level_tokenizer_json(tmp_path / "tokenizer.json", text)
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 7}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 9]}))
    prepare_data.prepare("tiny_eos", input_path=str(workdir / "input.txt"), tokenizer=str(tmp_path),
                         data_root=str(tmp_path / "data"))
    meta = prepare_data.load_meta(str(tmp_path / "data" / "tiny_eos"))
    assert meta["eos_token_id"] == [5, 9]
    assert prepare_data.load_tokenizer(meta).eot_token == [5, 9]
    (tmp_path / "generation_config.json").unlink()
    assert prepare_data.hf_tokenizer_meta(str(tmp_path / "tokenizer.json"))["eos_token_id"] == 7


def test_finetune_gpt2_refuses_a_dataset_of_another_tokenizer(workdir, tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    result = run_script("gpt", *args_for("gpt", f"--init_from={tmp_path}", "--max_iters=2"), cwd=workdir)
    assert result.returncode == 1
    assert "tokenized with the 'char' tokenizer, but GPT-2's weights read GPT-2's tokens" in result.stderr
