"""gpt.py's model: shapes, causality, attention paths, KV cache, sampling, and parity with HF GPT-2."""
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import gpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    args = dict(block_size=32, vocab_size=61, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)
    return gpt.GPTConfig(**(args | overrides))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return gpt.GPT(tiny_config()).eval()


def test_shapes_and_initial_loss(model):
    idx = torch.randint(61, (3, 20))
    logits, loss = model(idx, torch.randint(61, (3, 20)))
    assert logits.shape == (3, 20, 61)
    # With weights drawn at std 0.02 the initial prediction is nearly uniform: loss ~ ln(vocab_size).
    assert abs(loss.item() - math.log(61)) < 0.1
    assert model(idx)[1] is None


def test_loss_is_cross_entropy_and_ignores_minus_one(model):
    idx = torch.randint(61, (2, 10))
    targets = torch.randint(61, (2, 10))
    targets[0, 3] = -1
    logits, loss = model(idx, targets)
    log_probs = torch.log_softmax(logits, dim=-1)
    kept = targets != -1
    expected = -log_probs[kept].gather(1, targets[kept].unsqueeze(1)).mean()
    torch.testing.assert_close(loss, expected)


def test_weights_are_tied(model):
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_causal_masking(model):
    idx = torch.randint(61, (1, 24))
    changed = idx.clone()
    changed[0, 15:] = (changed[0, 15:] + 7) % 61  # change only the future of position 14
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=1e-6)
    assert (a[:, 15:] - b[:, 15:]).abs().max() > 1e-3  # and the changed positions do change


@pytest.mark.parametrize("bias", [True, False])
def test_manual_attention_equals_sdpa(bias):
    torch.manual_seed(1)
    fused = gpt.GPT(tiny_config(bias=bias)).eval()
    manual = gpt.GPT(tiny_config(bias=bias, attention="manual")).eval()
    manual.load_state_dict(fused.state_dict())
    idx = torch.randint(61, (2, 32))
    torch.testing.assert_close(manual(idx)[0], fused(idx)[0], rtol=1e-5, atol=1e-5)
    # Also with a cache, where the mask is the bottom-right block of the causal mask.
    for m in (fused, manual):
        cache = gpt.KVCache(m.config.n_layer, 32)
        m(idx[:, :10], cache=cache)
        m.cached_tail = m(idx[:, 10:17], cache=cache)[0]
    torch.testing.assert_close(manual.cached_tail, fused.cached_tail, rtol=1e-5, atol=1e-5)


def test_kv_cache_matches_full_forward(model):
    idx = torch.randint(61, (2, 30))
    full, _ = model(idx)
    cache = gpt.KVCache(model.config.n_layer, model.config.block_size)
    pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 11), (11, 12), (12, 20), (20, 30)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 30


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.9, top_k=20),
                                      dict(temperature=1.0, top_p=0.8, repetition_penalty=1.3)])
def test_generate_cached_equals_uncached(model, sampling):
    prompt = torch.randint(61, (3, 5))
    # 40 new tokens run past block_size=32, where the window starts sliding.
    torch.manual_seed(7)
    cached = model.generate(prompt, 40, use_cache=True, **sampling)
    torch.manual_seed(7)
    uncached = model.generate(prompt, 40, use_cache=False, **sampling)
    assert cached.shape == (3, 45)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :5], prompt)


def test_generate_greedy_follows_argmax(model):
    prompt = torch.randint(61, (1, 4))
    out = model.generate(prompt, 6, temperature=0.0)
    for t in range(4, 10):
        logits, _ = model(out[:, :t])
        assert out[0, t] == logits[0, -1].argmax()


def test_sampling_filters_match_hf_processors():
    transformers = pytest.importorskip("transformers")
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    context = torch.randint(50, (4, 12))
    # Recover which tokens our sampler allows by sampling many times from each filtered distribution.
    def allowed(**kw):
        torch.manual_seed(0)
        seen = torch.zeros(4, 50, dtype=torch.bool)
        for _ in range(400):
            tok = gpt.sample_next_token(logits, context, **kw)
            seen.scatter_(1, tok, True)
        return seen

    ref = TopKLogitsWarper(top_k=5)(context, logits.clone())
    assert torch.equal(allowed(top_k=5), ref > float("-inf"))
    ref = TopPLogitsWarper(top_p=0.6)(context, logits.clone())
    assert torch.equal(allowed(top_p=0.6), ref > float("-inf"))
    # Repetition penalty: greedy choice must equal the argmax of HF's penalised logits.
    penalised = RepetitionPenaltyLogitsProcessor(penalty=1.8)(context, logits.clone())
    ours = gpt.sample_next_token(logits, context, temperature=0.0, repetition_penalty=1.8)
    assert torch.equal(ours.squeeze(1), penalised.argmax(-1))


def test_crop_block_size(model):
    idx = torch.randint(61, (1, 16))
    before, _ = model(idx)
    model.crop_block_size(16)
    after, _ = model(idx)
    torch.testing.assert_close(after, before)
    with pytest.raises(ValueError, match="longer than block_size=16"):
        model(torch.randint(61, (1, 17)))


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by n_head"):
        gpt.GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="attention='flash'"):
        gpt.GPTConfig(attention="flash")


# -----------------------------------------------------------------------------
# Sinusoidal positions (pos_emb='sinusoidal')


@pytest.mark.parametrize("n_embd", [32, 33])  # an odd width: the last pair has a sine and no cosine
def test_sinusoidal_table_is_the_papers_formula(n_embd):
    n_positions = 100
    expected = torch.zeros(n_positions, n_embd, dtype=torch.float64)
    for pos in range(n_positions):
        for channel in range(n_embd):
            i = channel // 2  # channels 2i and 2i + 1 share the angle pos / 10000^(2i/d)
            angle = pos / 10000 ** (2 * i / n_embd)
            expected[pos, channel] = math.sin(angle) if channel % 2 == 0 else math.cos(angle)
    table = gpt.sinusoidal_positions(torch.arange(n_positions, dtype=torch.float64), n_embd)
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-6)
    # The model computes it in float32 and scales it to the rms of GPT-2's N(0, 0.02) init.
    model = gpt.GPT(tiny_config(n_embd=n_embd, n_head=1, pos_emb="sinusoidal"))
    added = model.position_embeddings(0, n_positions, torch.device("cpu")).double()
    torch.testing.assert_close(added, 0.02 * math.sqrt(2) * expected, rtol=0, atol=1e-6)
    assert abs(added[:, : n_embd // 2 * 2].pow(2).mean().sqrt().item() - 0.02) < 1e-3


def test_sinusoidal_model_has_no_position_parameters():
    torch.manual_seed(0)
    learned = gpt.GPT(tiny_config())
    torch.manual_seed(0)
    sinusoidal = gpt.GPT(tiny_config(pos_emb="sinusoidal"))
    assert not any("wpe" in name for name in sinusoidal.state_dict())
    assert learned.num_params() - sinusoidal.num_params() == 32 * 32  # block_size x n_embd
    assert learned.flops_per_token() == sinusoidal.flops_per_token()  # the table was never counted
    with pytest.raises(ValueError, match="pos_emb='bogus' must be 'learned' or 'sinusoidal'"):
        tiny_config(pos_emb="bogus")


def test_sinusoidal_runs_past_block_size_and_its_cache_matches(model):
    torch.manual_seed(0)
    sinusoidal = gpt.GPT(tiny_config(pos_emb="sinusoidal")).eval()
    idx = torch.randint(61, (2, 64))  # twice block_size
    with pytest.raises(ValueError, match="length 64 is longer than block_size=32"):
        model(idx)  # a learned table has no row 32
    full, _ = sinusoidal(idx)
    assert full.shape == (2, 64, 61) and torch.isfinite(full).all()
    cache = gpt.KVCache(sinusoidal.config.n_layer, 64)
    pieces = [sinusoidal(idx[:, a:b], cache=cache)[0] for a, b in [(0, 20), (20, 21), (21, 40), (40, 64)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    # Generation still keeps to the newest block_size tokens, cached or not.
    torch.manual_seed(1)
    cached = sinusoidal.generate(idx[:, :10], 40, temperature=0.0)
    uncached = sinusoidal.generate(idx[:, :10], 40, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 50) and torch.equal(cached, uncached)
    sinusoidal.crop_block_size(16)
    assert sinusoidal.config.block_size == 16 and sinusoidal(idx)[0].shape == (2, 64, 61)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, small_text_path):
    """A directory holding data/tiny: the committed Shakespeare excerpt at character level."""
    import prepare_data

    root = tmp_path_factory.mktemp("sinusoidal")
    prepare_data.prepare("tiny", input_path=small_text_path, tokenizer="char", data_root=str(root / "data"))
    return root


TINY_RUN = ["--dataset=tiny", "--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32",
            "--block_size=32", "--batch_size=8", "--gradient_accumulation_steps=1", "--eval_iters=4",
            "--log_interval=5", "--learning_rate=3e-3", "--warmup_iters=5", "--lr_decay_iters=30", "--min_lr=3e-4",
            "--pos_emb=sinusoidal", "--eval_interval=15", "--always_save_checkpoint=True", "--dropout=0.1"]


def test_sinusoidal_gpt_trains_and_resumes_exactly(tiny_data, monkeypatch, capsys):
    monkeypatch.chdir(tiny_data)
    gpt.main(TINY_RUN + ["--max_iters=30", "--out_dir=out-straight"])
    straight = [float(v) for v in re.findall(r"val loss ([0-9.]+)", capsys.readouterr().out)]
    assert len(straight) == 3 and straight[-1] < straight[0] - 0.5, straight  # iterations 0, 15, 30
    gpt.main(TINY_RUN + ["--max_iters=15", "--out_dir=out-resumed"])
    gpt.main(TINY_RUN + ["--max_iters=30", "--out_dir=out-resumed", "--init_from=resume"])
    resumed = [float(v) for v in re.findall(r"val loss ([0-9.]+)", capsys.readouterr().out)]
    assert resumed[-1] == straight[-1]
    a, b = (torch.load(tiny_data / out / "ckpt.pt", weights_only=True) for out in ("out-straight", "out-resumed"))
    assert a["model_args"]["pos_emb"] == "sinusoidal" and not any("wpe" in name for name in a["model"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    with pytest.raises(SystemExit, match="pos_emb='learned' conflicts with the checkpoint"):
        gpt.main(TINY_RUN + ["--out_dir=out-resumed", "--init_from=resume", "--pos_emb=learned"])
    with pytest.raises(SystemExit, match="GPT-2's weights were trained with learned positions"):
        gpt.main(TINY_RUN + ["--init_from=gpt2"])


# -----------------------------------------------------------------------------
# Hugging Face parity


def save_random_hf_gpt2(directory, safe=True, **overrides):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(**(dict(n_positions=64, n_embd=48, n_layer=3, n_head=4, vocab_size=99,
                                              bos_token_id=0, eos_token_id=0) | overrides))
    hf = transformers.GPT2LMHeadModel(config).eval()
    # Random init leaves biases and LayerNorms at 0/1; perturb them so the test would notice them
    # being dropped or misplaced.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(directory, safe_serialization=safe)
    return hf


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_bin"])
def test_logits_match_hf_gpt2(tmp_path, safe):
    hf = save_random_hf_gpt2(tmp_path, safe=safe)
    ours = gpt.GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(99, (2, 50))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_layer_norm_epsilon_comes_from_the_config(tmp_path):
    # GPT-2 uses 1e-5; a checkpoint with another value must be run with it (at 1e-2 the logits differ
    # from 1e-5's by far more than the tolerance).
    hf = save_random_hf_gpt2(tmp_path, layer_norm_epsilon=1e-2)
    ours = gpt.GPT.from_pretrained(str(tmp_path)).eval()
    assert ours.config.norm_eps == 1e-2
    idx = torch.randint(99, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=0, atol=1e-4)


def test_greedy_generation_matches_hf(tmp_path):
    hf = save_random_hf_gpt2(tmp_path)
    ours = gpt.GPT.from_pretrained(str(tmp_path)).eval()
    prompt = torch.randint(99, (1, 6))
    expected = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 30, temperature=0.0), expected)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        gpt.GPT.from_pretrained(str(tmp_path))
    save_random_hf_gpt2(tmp_path, activation_function="relu")
    with pytest.raises(ValueError, match="activation_function='relu'"):
        gpt.GPT.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="neither a local directory nor"):
        gpt.GPT.from_pretrained("not-a-model")


def test_read_safetensors_matches_library(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "c": torch.arange(6).view(2, 3),
               "d": torch.randn(2, 2).half(), "e": torch.tensor([True, False])}
    path = str(tmp_path / "t.safetensors")
    safetensors_torch.save_file(tensors, path)
    loaded = gpt.read_safetensors(path)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)


# -----------------------------------------------------------------------------
# The config system


def run_gpt(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "gpt.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_parse_config_files_and_overrides(tmp_path):
    defaults = {"batch_size": 12, "learning_rate": 6e-4, "device": "auto", "compile": True}
    config_file = tmp_path / "c.py"
    config_file.write_text("batch_size = 32\ncompile = False\nimport math\nlearning_rate = math.sqrt(1e-6)\n")
    cfg = gpt.parse_config([str(config_file), "--batch_size=64", "--device=cpu", "--learning_rate=1"], defaults)
    assert cfg == {"batch_size": 64, "learning_rate": 1.0, "device": "cpu", "compile": False}


@pytest.mark.parametrize("args, message", [
    (["--batch_szie=3"], "unknown config key 'batch_szie'"),
    (["--batch_size=0.5"], "config key 'batch_size' must be int"),
    (["--compile=1"], "config key 'compile' must be bool"),
    (["--batch_size"], "must look like --key=value"),
    (["missing_config.py"], "config file 'missing_config.py' not found"),
])
def test_config_errors(args, message):
    defaults = {k: getattr(gpt, k) for k in gpt.config_keys}
    with pytest.raises(SystemExit) as exit_info:
        gpt.parse_config(args, defaults)
    assert message in str(exit_info.value) and str(exit_info.value).startswith("error: ")


def test_config_errors_on_the_command_line_are_one_line(tmp_path):
    (tmp_path / "bad.py").write_text("batch_size = undefined_name\n")
    result = run_gpt("bad.py", cwd=tmp_path)
    assert result.returncode != 0 and "NameError" in result.stderr and "Traceback" not in result.stderr
    result = run_gpt("--batch_szie=3", cwd=tmp_path)
    assert result.returncode != 0 and "unknown config key 'batch_szie'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bogus_pos_emb_is_a_one_line_error(tiny_data):
    result = run_gpt(*TINY_RUN, "--pos_emb=bogus", cwd=tiny_data)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: pos_emb='bogus' must be 'learned' or 'sinusoidal'"
