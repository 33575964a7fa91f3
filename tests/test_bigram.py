"""Tests for bigram.py: the table is the logits, training recovers bigram counts, generation, and the
training script end to end (checkpoint format, exact resume, error messages).

Everything runs on CPU on small texts in tmp_path; the end-to-end runs are a few dozen iterations.
"""
import math
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

import bigram
import prepare_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bigram.py")
# One thread: on a small, busy CPU the tiny ops of a bigram run many times slower split over threads
# that wait for one another (measured: 10 s instead of 0.3 s for the frequency test on 2 loaded cores).
ENV = os.environ | {"OMP_NUM_THREADS": "1"}
CKPT_KEYS = {"model_type", "model_args", "model", "optimizer", "iter_num", "best_val_loss", "config",
             "tokenizer", "rng_state"}


def markov_text(n_chars, seed=0):
    """Text from a fixed random character Markov chain: a corpus whose best model is exactly a bigram."""
    gen = torch.Generator().manual_seed(seed)
    alphabet = "abcde \n"
    transitions = torch.softmax(3 * torch.randn(len(alphabet), len(alphabet), generator=gen), dim=-1)
    ids = [0]
    for _ in range(n_chars - 1):
        ids.append(torch.multinomial(transitions[ids[-1]], 1, generator=gen).item())
    return "".join(alphabet[i] for i in ids)


# ----------------------------------------------------------------------------------------------------
# The model


def test_logits_are_table_rows_and_loss_is_cross_entropy():
    torch.manual_seed(0)
    model = bigram.Bigram(bigram.BigramConfig(vocab_size=5, block_size=4))
    table = model.token_embedding_table.weight
    assert table.shape == (5, 5)
    idx = torch.tensor([[0, 3, 3, 1], [4, 2, 0, 0]])
    targets = torch.tensor([[3, 3, 1, 2], [2, 0, 0, -1]])  # -1: ignored
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 4, 5)
    for b in range(2):
        for t in range(4):
            assert torch.equal(logits[b, t], table[idx[b, t]])  # exactly the row, no arithmetic
    # Hand-computed mean of -log softmax(row)[target] over the 7 non-ignored positions.
    terms = [-(table[i] - torch.logsumexp(table[i], dim=0))[j]
             for i, j in zip(idx.flatten().tolist(), targets.flatten().tolist()) if j != -1]
    assert len(terms) == 7
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    _, no_loss = model(idx)
    assert no_loss is None


def test_initial_loss_is_ln_vocab_size():
    torch.manual_seed(0)
    model = bigram.Bigram(bigram.BigramConfig(vocab_size=65, block_size=8))
    idx = torch.randint(65, (16, 8))
    _, loss = model(idx, torch.randint(65, (16, 8)))
    assert abs(loss.item() - math.log(65)) < 0.02


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_recovers_bigram_frequencies(one_thread):
    """Gradient descent on cross-entropy converges to the count-based (maximum likelihood) bigram."""
    torch.manual_seed(0)
    vocab = 6
    transitions = torch.softmax(2 * torch.randn(vocab, vocab), dim=-1)
    ids = [0]
    for _ in range(4000):
        ids.append(torch.multinomial(transitions[ids[-1]], 1).item())
    data = torch.tensor(ids)
    x, y = data[:-1].view(1, -1), data[1:].view(1, -1)
    counts = torch.zeros(vocab, vocab)
    counts.index_put_((x.flatten(), y.flatten()), torch.ones(x.numel()), accumulate=True)
    assert (counts.sum(1) > 0).all()  # every row is seen, so every row has an empirical distribution
    empirical = counts / counts.sum(1, keepdim=True)

    model = bigram.Bigram(bigram.BigramConfig(vocab_size=vocab, block_size=x.size(1)))
    optimizer = model.configure_optimizer(0.0, 0.1, (0.9, 0.99), "cpu")
    for _ in range(400):  # the whole corpus as one batch: plain (deterministic) gradient descent
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    learned = F.softmax(model.token_embedding_table.weight.detach(), dim=-1)
    assert (learned - empirical).abs().max() < 0.02
    # ... and the loss is then the empirical conditional entropy, the best any bigram can do.
    log_empirical = torch.log(empirical.clamp_min(1e-12))
    best = -(counts * log_empirical).sum() / counts.sum()
    assert abs(loss.item() - best.item()) < 2e-3


def test_generate_greedy_follows_table_argmax():
    torch.manual_seed(0)
    model = bigram.Bigram(bigram.BigramConfig(vocab_size=11, block_size=4))
    prompt = torch.tensor([[3], [7]])
    out = model.generate(prompt, max_new_tokens=10, temperature=0)  # past block_size: cropping too
    assert out.shape == (2, 11)
    assert torch.equal(out[:, :1], prompt)
    best_next = model.token_embedding_table.weight.argmax(dim=-1)
    for row in out.tolist():
        for prev, nxt in zip(row, row[1:]):
            assert nxt == best_next[prev].item()


@pytest.mark.parametrize("options", [
    {},
    {"temperature": 0.7, "top_k": 4},
    {"temperature": 1.3, "top_p": 0.8, "repetition_penalty": 1.5},
])
def test_generate_same_tokens_with_and_without_cache(options):
    torch.manual_seed(0)
    model = bigram.Bigram(bigram.BigramConfig(vocab_size=13, block_size=5))
    with torch.no_grad():
        model.token_embedding_table.weight.normal_(0, 2)  # peaked rows: samples that differ by seed
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    results = []
    for use_cache in (True, False):
        torch.manual_seed(42)
        results.append(model.generate(prompt, 20, use_cache=use_cache, **options))
    assert results[0].shape == (2, 23)
    assert torch.equal(results[0], results[1])


def test_flops_per_token_is_small():
    model = bigram.Bigram(bigram.BigramConfig(vocab_size=65, block_size=8))
    assert model.flops_per_token() == 6 * 65


def test_preset_config_parses():
    """The config file must load through parse_config (its keys exist, with the right types)."""
    defaults = {k: getattr(bigram, k) for k in bigram.config_keys}
    cfg = bigram.parse_config([os.path.join(REPO, "config", "bigram_shakespeare_char.py"), "--max_iters=7"], defaults)
    assert cfg["dataset"] == "shakespeare_char" and cfg["out_dir"] == "out-bigram"
    assert cfg["compile"] is False and cfg["max_iters"] == 7 and cfg["learning_rate"] == 1e-2


# ----------------------------------------------------------------------------------------------------
# The training script, end to end


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory holding data/tiny: a character dataset from a Markov-chain text."""
    root = tmp_path_factory.mktemp("bigram_run")
    text_path = root / "tiny.txt"
    text_path.write_text(markov_text(20000))
    prepare_data.prepare("tiny", input_path=str(text_path), tokenizer="char", data_root=str(root / "data"))
    return root


def train(workdir, *args):
    command = [sys.executable, SCRIPT, "--dataset=tiny", "--device=cpu", "--compile=False", "--batch_size=16",
               "--block_size=8", "--eval_iters=5", "--log_interval=5", "--learning_rate=0.05", *args]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=120, env=ENV)


def val_losses(stdout):
    return [float(line.rsplit(" ", 1)[-1]) for line in stdout.splitlines() if line.startswith("step ")]


def test_train_checkpoint_and_exact_resume(workdir):
    common = ["--eval_interval=10", "--lr_decay_iters=30", "--min_lr=0.005"]
    # One run of 30 iterations ...
    straight = train(workdir, "--out_dir=out-straight", "--max_iters=30", *common)
    assert straight.returncode == 0, straight.stderr
    losses = val_losses(straight.stdout)
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5  # starts at ln(7) = 1.95, falls well below
    assert "parameters:" in straight.stdout and "iter 5: loss" in straight.stdout

    ckpt = torch.load(workdir / "out-straight" / "ckpt.pt", weights_only=True)
    assert CKPT_KEYS <= set(ckpt)
    assert ckpt["model_type"] == "bigram" and ckpt["iter_num"] == 30
    assert ckpt["model_args"] == asdict(bigram.BigramConfig(vocab_size=7, block_size=8))
    assert ckpt["tokenizer"]["tokenizer"] == "char" and ckpt["config"]["max_iters"] == 30
    assert list(ckpt["model"]) == ["token_embedding_table.weight"]  # no _orig_mod. prefix
    model = bigram.Bigram(bigram.BigramConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    assert not (workdir / "out-straight" / "ckpt.pt.tmp").exists()

    # ... equals 20 iterations, then a resumed run to 30: same batches, same optimizer state, same weights.
    first = train(workdir, "--out_dir=out-split", "--max_iters=20", *common)
    assert first.returncode == 0, first.stderr
    resumed = train(workdir, "--out_dir=out-split", "--max_iters=30", "--init_from=resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    assert "step 20:" not in resumed.stdout and "step 30:" in resumed.stdout
    split = torch.load(workdir / "out-split" / "ckpt.pt", weights_only=True)
    assert split["iter_num"] == 30
    assert torch.equal(split["model"]["token_embedding_table.weight"], ckpt["model"]["token_embedding_table.weight"])
    assert val_losses(resumed.stdout)[-1] == losses[-1]


@pytest.mark.parametrize("args, expected", [
    (["--init_from=gpt2"], "init_from='gpt2'"),
    (["--init_from=resume", "--out_dir=out-nothing-here"], "no checkpoint"),
    (["--n_layer=4"], "unknown config key 'n_layer'"),
    (["--learning_rate=fast"], "'learning_rate' must be float"),
    (["--dataset=no_such_dataset"], "no_such_dataset"),
])
def test_errors_are_one_line(workdir, args, expected):
    result = train(workdir, "--max_iters=1", *args)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_resume_refuses_another_scripts_checkpoint(workdir):
    out = workdir / "out-foreign"
    out.mkdir()
    torch.save({"model_type": "gpt"}, out / "ckpt.pt")
    result = train(workdir, "--out_dir=out-foreign", "--init_from=resume")
    assert result.returncode != 0 and "gpt.py, not bigram.py" in result.stderr
