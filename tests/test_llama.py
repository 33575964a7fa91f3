"""Tests for llama.py: agreement with Hugging Face's LlamaForCausalLM, the KV cache, attention paths,
error messages, and the training loop (end to end, and exact resume)."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import llama
import prepare_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# With head_dim 8 and rope_theta 500 the wavelengths are 6.3, 30, 140 and 660 positions: one pair in
# each of llama3 scaling's bands (kept: < 64/8, blended: 8..64, divided by 8: > 64).
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 8.0,
                  "original_max_position_embeddings": 64}


def small_config(**overrides):
    args = dict(block_size=32, vocab_size=71, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, hidden_dim=48)
    return llama.LlamaConfig(**(args | overrides))


def random_model(**overrides):
    torch.manual_seed(0)
    model = llama.Llama(small_config(**overrides)).eval()
    with torch.no_grad():  # gains away from 1, so a norm that ignored them would be caught
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(0.2 * torch.randn_like(param))
    return model


def save_hf_llama(directory, n_kv_head, tie, rope_scaling=None, **save_kwargs):
    """A random tiny transformers LlamaForCausalLM saved as a checkpoint directory; returns the model."""
    transformers = pytest.importorskip("transformers")
    kwargs = dict(vocab_size=97, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=n_kv_head, max_position_embeddings=64, tie_word_embeddings=tie,
                  rms_norm_eps=1e-5, rope_theta=500.0)
    if rope_scaling is not None:
        kwargs["rope_scaling"] = rope_scaling
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    hf.save_pretrained(directory, **save_kwargs)
    return hf


# ---------------------------------------------------------------------------------------------
# Agreement with Hugging Face


@pytest.mark.parametrize("n_kv_head, tie, rope_scaling", [
    (4, False, None),            # multi-head attention, separate output head
    (2, True, None),             # grouped-query attention, tied embeddings
    (1, False, None),            # multi-query attention
    (2, False, LLAMA3_SCALING),  # Llama 3.1 rope scaling
], ids=["mha-untied", "gqa-tied", "mqa", "gqa-llama3-rope"])
def test_logits_match_transformers(tmp_path, n_kv_head, tie, rope_scaling):
    hf = save_hf_llama(tmp_path, n_kv_head, tie, rope_scaling)
    model = llama.Llama.from_pretrained(str(tmp_path)).eval()
    assert model.config.n_kv_head == n_kv_head and model.config.tie_embeddings == tie
    assert model.config.block_size == 64
    idx = torch.randint(0, 97, (2, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = model(idx)
    assert logits.shape == (2, 60, 97)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_llama3_scaling_changes_the_frequencies():
    # Guards the test above: the settings there must exercise all three bands.
    plain = llama.rope_inverse_frequencies(small_config(rope_theta=500.0))
    scaled = llama.rope_inverse_frequencies(small_config(rope_theta=500.0, rope_scaling=LLAMA3_SCALING))
    assert scaled[0] == plain[0]  # fast rotations untouched
    assert plain[1] / 8 < scaled[1] < plain[1]  # blended
    torch.testing.assert_close(scaled[2:], plain[2:] / 8)  # slow rotations interpolated


def test_sharded_checkpoint_loads_identically(tmp_path):
    save_hf_llama(tmp_path / "single", 2, False)
    save_hf_llama(tmp_path / "sharded", 2, False, max_shard_size="50KB")
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    with open(tmp_path / "sharded" / "model.safetensors.index.json") as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1
    single = llama.Llama.from_pretrained(str(tmp_path / "single")).state_dict()
    sharded = llama.Llama.from_pretrained(str(tmp_path / "sharded")).state_dict()
    assert single.keys() == sharded.keys()
    for name in single:
        assert torch.equal(single[name], sharded[name]), name


# ---------------------------------------------------------------------------------------------
# Attention, cache, causality


def test_hidden_dim_derivation():
    assert llama.LlamaConfig(n_embd=4096, n_head=32, n_kv_head=32).hidden_dim == 11008  # LLaMA 7B
    assert llama.LlamaConfig(n_embd=4096, n_head=32, n_kv_head=8, ffn_dim_multiplier=1.3,
                             multiple_of=1024).hidden_dim == 14336  # Llama 3 8B


def test_manual_attention_equals_sdpa():
    model = random_model()
    manual = llama.Llama(small_config(attention="manual")).eval()
    manual.load_state_dict(model.state_dict())
    idx = torch.randint(0, 71, (3, 32))
    with torch.no_grad():
        torch.testing.assert_close(manual(idx)[0], model(idx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_cached_forward_equals_full_forward(attention):
    model = random_model(attention=attention)
    idx = torch.randint(0, 71, (2, 20))
    with torch.no_grad():
        full, _ = model(idx)
        cache = llama.KVCache(model.config.n_layer, model.config.block_size)
        # a prompt, a chunk of several tokens (whose mask is neither full nor plain causal), then
        # one token at a time
        pieces = [model(idx[:, :7], cache=cache)[0], model(idx[:, 7:12], cache=cache)[0]]
        pieces += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    # GQA: the cache holds n_kv_head heads, not n_head
    assert cache.keys.shape == (2, 2, 2, model.config.block_size, 8)


def test_generate_same_with_and_without_cache_past_block_size():
    model = random_model()
    prompt = torch.randint(0, 71, (2, 5))
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(42)
        runs.append(model.generate(prompt, 50, temperature=1.0, top_k=20, use_cache=use_cache))
    assert runs[0].shape == (2, 55)  # beyond block_size=32: the window slides
    assert torch.equal(runs[0], runs[1])


def test_causal_masking():
    model = random_model()
    idx = torch.randint(0, 71, (1, 32))
    changed = idx.clone()
    changed[0, 20] = (idx[0, 20] + 1) % 71
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.equal(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_rope_makes_scores_depend_on_relative_position():
    head_dim = 8
    inv_freq = llama.rope_inverse_frequencies(small_config(n_head=4))
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)

    def score(m, n):
        return (llama.apply_rope(q, *llama.rope_cos_sin(inv_freq, m, 1))
                * llama.apply_rope(k, *llama.rope_cos_sin(inv_freq, n, 1))).sum()

    torch.testing.assert_close(score(3, 1), score(13, 11))
    assert not torch.isclose(score(3, 1), score(3, 2))


def test_loss_is_cross_entropy():
    model = random_model()
    idx = torch.randint(0, 71, (2, 16))
    with torch.no_grad():
        logits, loss = model(idx, targets=idx)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 71), idx.reshape(-1))
    torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------------------------------------
# Errors name the offending value


@pytest.mark.parametrize("overrides, message", [
    (dict(n_head=4, n_kv_head=3), "n_kv_head=3"),
    (dict(n_embd=36, n_head=4, n_kv_head=4), "9 must be even"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn'"),
    (dict(attention="flash"), "'flash'"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        small_config(**overrides)


def edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="gpt2"), "'gpt2'"),
    (dict(attention_bias=True), "attention_bias=True"),
    (dict(mlp_bias=True), "mlp_bias=True"),
    (dict(head_dim=16), "head_dim=16"),
    (dict(intermediate_size=80), "shape mismatch for model.layers.0.mlp."),  # names the tensor
])
def test_from_pretrained_errors(tmp_path, changes, message):
    save_hf_llama(tmp_path, 2, False)
    edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        llama.Llama.from_pretrained(str(tmp_path))


def test_from_pretrained_missing_directory_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        llama.Llama.from_pretrained(str(tmp_path))
    save_hf_llama(tmp_path, 2, False)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        llama.Llama.from_pretrained(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Training through the command line


TINY = ["--dataset=tiny", "--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=2", "--n_head=4",
        "--n_kv_head=2", "--n_embd=32", "--multiple_of=16", "--block_size=32", "--batch_size=8",
        "--gradient_accumulation_steps=1", "--eval_iters=4", "--log_interval=5", "--learning_rate=1e-2", "--warmup_iters=2",
        "--always_save_checkpoint=True"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory with a small character dataset 'tiny' prepared under data/."""
    root = tmp_path_factory.mktemp("llama_train")
    words = ["the", "king", "doth", "speak", "and", "queen", "answers", "thee", "my", "lord"]
    generator = torch.Generator().manual_seed(0)
    text = " ".join(words[i] for i in torch.randint(0, len(words), (8000,), generator=generator).tolist())
    (root / "input.txt").write_text(text)
    prepare_data.prepare("tiny", input_path=str(root / "input.txt"), tokenizer="char", data_root=str(root / "data"))
    return root


def train(cwd, *args):
    # One thread: a model this small gains nothing from more, and on a busy 2-core machine OpenMP
    # threads waiting for each other made each step 50x slower.
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(REPO, "llama.py"), *TINY, *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_training_reduces_loss_and_checkpoint_loads(workdir):
    out = train(workdir, "--out_dir=out-e2e", "--max_iters=40", "--lr_decay_iters=40", "--eval_interval=20")
    val = [float(v) for v in re.findall(r"val loss ([\d.]+)", out)]
    assert len(val) == 3 and val[-1] < val[0] - 1.0, out
    checkpoint = torch.load(workdir / "out-e2e" / "ckpt.pt", weights_only=True)
    assert checkpoint["model_type"] == "llama" and checkpoint["iter_num"] == 40
    assert checkpoint["model_args"]["n_kv_head"] == 2 and checkpoint["model_args"]["hidden_dim"] == 96
    model = llama.Llama(llama.LlamaConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    assert "tokenizer" in checkpoint and checkpoint["config"]["n_kv_head"] == 2


def test_resume_is_exact(workdir):
    # Dropout on, so the resumed run must also restore the RNG state to match.
    common = ["--dropout=0.1", "--lr_decay_iters=20", "--eval_interval=10"]
    train(workdir, "--out_dir=out-straight", "--max_iters=20", *common)
    train(workdir, "--out_dir=out-resumed", "--max_iters=10", *common)
    train(workdir, "--out_dir=out-resumed", "--max_iters=20", "--init_from=resume", *common)
    straight = torch.load(workdir / "out-straight" / "ckpt.pt", weights_only=True)
    resumed = torch.load(workdir / "out-resumed" / "ckpt.pt", weights_only=True)
    assert straight["iter_num"] == resumed["iter_num"] == 20
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_download_from_hub_sharded(tmp_path, local_hub):
    """A hub id is fetched with requests into $NANO_MODELS_CACHE/owner--name: config.json,
    tokenizer.json when the repository has one, and the shard index plus every shard it names
    (conftest's local_hub serves tmp_path/hub as huggingface.co)."""
    repository = tmp_path / "hub" / "someone" / "tiny-llama" / "resolve" / "main"
    hf = save_hf_llama(repository, 2, True, max_shard_size="50KB")
    (repository / "tokenizer.json").write_text("{}")
    model = llama.Llama.from_pretrained("someone/tiny-llama").eval()
    cached = tmp_path / "cache" / "someone--tiny-llama"
    assert (cached / "tokenizer.json").exists() and (cached / "model.safetensors.index.json").exists()
    requested = [url.rsplit("/", 1)[-1] for url in local_hub]
    assert "model.safetensors" in requested and not (cached / "model.safetensors").exists()  # 404, then the index
    assert len([name for name in requested if name.startswith("model-")]) >= 2  # every shard the index names
    assert not list(cached.glob("*.part"))
    idx = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)
    local_hub.clear()
    llama.Llama.from_pretrained("someone/tiny-llama")  # second time: everything comes from the cache
    assert local_hub == []
