"""parallelism='fsdp' (FSDP2): sharded training equals unsharded training, and its sharded checkpoints resume.

FSDP changes where weights, gradients and optimizer state live, not what is computed, so a run on 2
processes must match a run on 1 process with the same global batch, and match DDP. Those comparisons
need the same batches whatever the process count; the repository's loader draws them from each
process's own random stream (seed + rank), so these runs go through a small wrapper (GLOBAL_BATCHES,
below) that numbers the training micro-batches of a step globally, 0..gradient_accumulation_steps-1,
and draws micro-batch g of step s from seed s * accumulation + g on whichever process does it. One
process then computes exactly the micro-batches that two processes split between them.

Tolerances: 2 processes against 1 (or DDP) add the same gradients in another order, so float32
rounding differs (about 1e-7 relative per step); over 6 AdamW steps the weights agree to 1e-5 and the
losses to 1e-5. A resume on the same process count repeats the same operations in the same order on
the same bits: equal exactly.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import gpt
import prepare_data
import sample
from conftest import byte_level_tokenizer_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--dataset=tiny", "--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32",
        "--block_size=32", "--batch_size=4", "--gradient_accumulation_steps=2", "--eval_iters=2",
        "--log_interval=1", "--learning_rate=3e-3", "--warmup_iters=2", "--lr_decay_iters=20", "--min_lr=3e-4",
        "--eval_interval=3", "--grad_clip=0.5"]

GLOBAL_BATCHES = '''
import os, runpy, sys
import torch
import prepare_data

original, calls = prepare_data.BatchLoader.get_batch, {"train": 0, "eval": 0}

def get_batch(self, split):
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    accumulation = int(os.environ["GLOBAL_ACCUMULATION"])
    per_rank = accumulation // world
    if torch.is_grad_enabled():  # a training micro-batch: numbered globally
        step, i = divmod(calls["train"], per_rank)
        seed = (int(os.environ["START_STEP"]) + step) * accumulation + rank * per_rank + i
        calls["train"] += 1
    else:  # an evaluation (no_grad): the same few batches on every process, at every evaluation
        seed, calls["eval"] = 10**6 + calls["eval"] % 4, calls["eval"] + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return original(self, split)

prepare_data.BatchLoader.get_batch = get_batch
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_text_path):
    root = tmp_path_factory.mktemp("fsdp")
    prepare_data.prepare("tiny", input_path=small_text_path, tokenizer="char", data_root=str(root / "data"))
    (root / "global_batches.py").write_text(GLOBAL_BATCHES)
    return root


def train(workdir, processes, *args, start_step=0, check=True):
    """Run gpt.py (through the global-batch wrapper) on 1 process or under torchrun; return the result."""
    launcher = ([sys.executable] if processes == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"])
    env = dict(os.environ, PYTHONPATH=REPO, GLOBAL_ACCUMULATION="2", START_STEP=str(start_step))
    result = subprocess.run([*launcher, str(workdir / "global_batches.py"), os.path.join(REPO, "gpt.py"), *args],
                            capture_output=True, text=True, cwd=workdir, env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def losses(out_dir, run_log):
    """(iteration, kind) -> loss, from the run log (train loss, or val loss of an evaluation)."""
    return {(r["iter"], r["kind"]): r["loss"] if r["kind"] == "train" else r["val_loss"]
            for r in run_log(out_dir) if r["kind"] in ("train", "eval")}


def weights(out_dir):
    """The final weights, read as sample.py reads them (a sharded checkpoint without a process group)."""
    path = sample.checkpoint_file(str(out_dir))
    if path.endswith("ckpt.pt"):
        return torch.load(path, weights_only=True)["model"]
    return sample.read_sharded_weights(os.path.dirname(path))


def assert_close(a, b, rtol, atol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")


@pytest.fixture(scope="module")
def runs(workdir):
    """Six iterations of FSDP on 2 processes: straight, and stopped at 3 then resumed. The checkpoint at
    3 is kept for the resumes on another process count and parallelism."""
    fsdp = [*TINY, "--parallelism=fsdp"]
    train(workdir, 2, *fsdp, "--max_iters=6", "--out_dir=straight")
    train(workdir, 2, *fsdp, "--max_iters=3", "--out_dir=resumed")
    shutil.copytree(workdir / "resumed", workdir / "at3")
    assert sorted(os.listdir(workdir / "at3")) == ["ckpt_dcp", "log.jsonl"]  # no ckpt.pt, no temporary left
    train(workdir, 2, "--init_from=resume", "--out_dir=resumed", "--max_iters=6", start_step=3)
    return workdir


def test_fsdp_resume_on_the_same_process_count_is_exact(runs, run_log):
    assert losses(runs / "resumed", run_log) == losses(runs / "straight", run_log)
    assert_close(weights(runs / "resumed"), weights(runs / "straight"), rtol=0, atol=0)
    assert len(losses(runs / "straight", run_log)) == 6 + 3  # six train lines, evaluations at 0, 3 and 6


def test_fsdp_on_one_process_equals_two_processes(runs, run_log):
    train(runs, 1, *TINY, "--parallelism=fsdp", "--max_iters=6", "--out_dir=one")
    one, two = losses(runs / "one", run_log), losses(runs / "straight", run_log)
    assert one.keys() == two.keys()
    for key in one:
        assert one[key] == pytest.approx(two[key], rel=1e-5), key
    assert_close(weights(runs / "one"), weights(runs / "straight"), rtol=1e-5, atol=1e-5)


def test_fsdp_checkpoint_resumes_on_another_process_count_and_unsharded(runs, run_log):
    # Resharding: the 2 processes' shards are read into 1 process's (whole) tensors. With the global
    # batches the result equals the 2-process run; RNG streams are fresh (another process count).
    shutil.copytree(runs / "at3", runs / "at3-one")
    result = train(runs, 1, "--init_from=resume", "--out_dir=at3-one", "--max_iters=6", start_step=3)
    assert "written by 2 process(es) and this run has 1" in result.stdout
    assert_close(weights(runs / "at3-one"), weights(runs / "straight"), rtol=1e-5, atol=1e-5)
    # And into a plain, unsharded model (parallelism='ddp', no process group), which writes a ckpt.pt.
    shutil.copytree(runs / "at3", runs / "at3-plain")
    train(runs, 1, "--init_from=resume", "--out_dir=at3-plain", "--max_iters=6", "--parallelism=ddp", start_step=3)
    assert os.path.exists(runs / "at3-plain" / "ckpt.pt")
    assert_close(weights(runs / "at3-plain"), weights(runs / "straight"), rtol=1e-5, atol=1e-5)


def test_fsdp_equals_ddp_and_ddp_checkpoints_resume_sharded(runs, run_log):
    train(runs, 2, *TINY, "--max_iters=6", "--out_dir=ddp")  # parallelism='ddp', the default
    ddp, fsdp = losses(runs / "ddp", run_log), losses(runs / "straight", run_log)
    for key in fsdp:
        assert ddp[key] == pytest.approx(fsdp[key], rel=1e-5), key
    assert_close(weights(runs / "ddp"), weights(runs / "straight"), rtol=1e-5, atol=1e-5)
    # A parallelism change on resume: DDP's ckpt.pt into a sharded model (and its optimizer state).
    result = train(runs, 1, "--init_from=resume", "--out_dir=ddp", "--max_iters=7", "--eval_interval=1", "--parallelism=fsdp",
                   start_step=6)
    assert "saved checkpoint to ddp" in result.stdout and os.path.isdir(runs / "ddp" / "ckpt_dcp")
    assert sample.checkpoint_file(str(runs / "ddp")).endswith("training_state.pt")  # the newer one counts


def test_sample_reads_a_sharded_checkpoint(runs):
    result = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), "--out_dir=straight", "--device=cpu",
                             "--compile=False", "--start=MARCIUS", "--max_new_tokens=10", "--num_samples=1"],
                            capture_output=True, text=True, cwd=runs, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("MARCIUS")


@pytest.mark.parametrize("args, message", [
    (["--parallelism=zero3"], "error: parallelism='zero3' must be 'ddp' (each process holds the whole model) or 'fsdp'"),
    (["--parallelism=fsdp", "--dtype=float16"], "error: parallelism='fsdp' runs on CUDA or CPU in float32 or bfloat16, "
                                                "not float16 on cpu"),
])
def test_bad_parallelism_settings_are_one_line_errors(workdir, args, message, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    with pytest.raises(SystemExit) as exit_info:
        gpt.main([*TINY, "--out_dir=bad", *args])
    assert str(exit_info.value).startswith(message) and "\n" not in str(exit_info.value)


def test_pretrained_llama_streams_into_fsdp_shards(workdir, tmp_path):
    # A Hugging Face Llama saved in bfloat16 (as real ones are): under FSDP each process copies only its
    # slice of each memory-mapped tensor into its shards, then makes them float32. The loaded weights
    # must be the ones a plain (unsharded, float32) load gives: the same first evaluation, to rounding.
    transformers = pytest.importorskip("transformers")
    text = open(os.path.join(REPO, "tests", "data", "tinyshakespeare_excerpt.txt"), encoding="utf-8").read()
    model_dir = tmp_path / "hf-llama"
    model_dir.mkdir()
    tok = byte_level_tokenizer_json(model_dir / "tokenizer.json", text)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=None, eos_token_id=None)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir)
    prepare_data.prepare("tiny_llama", input_path=os.path.join(REPO, "tests", "data", "tinyshakespeare_excerpt.txt"),
                         tokenizer=str(model_dir), data_root=str(workdir / "data"))
    args = ["--dataset=tiny_llama", "--device=cpu", "--compile=False", "--block_size=32", "--batch_size=4",
            "--eval_iters=2", "--max_iters=0", f"--init_from={model_dir}", "--gradient_accumulation_steps=2"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = dict(os.environ, PYTHONPATH=REPO, GLOBAL_ACCUMULATION="2", START_STEP="0")
    evaluations = []
    for launcher, extra in (([sys.executable], []), (launch, ["--parallelism=fsdp"])):
        result = subprocess.run([*launcher, str(workdir / "global_batches.py"), os.path.join(REPO, "llama.py"), *args,
                                 *extra, f"--out_dir=hf{len(evaluations)}"],
                                capture_output=True, text=True, cwd=workdir, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        evaluations.append([float(v) for v in re.search(r"step 0: train loss ([0-9.]+), val loss ([0-9.]+)",
                                                         result.stdout).groups()])
    assert evaluations[1] == pytest.approx(evaluations[0], abs=2e-4)  # printed with 4 decimals
