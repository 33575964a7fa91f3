"""Tests for olmo.py: agreement with Hugging Face's OlmoForCausalLM, Olmo2ForCausalLM and
Olmo3ForCausalLM, YaRN and ALiBi against independent references, the KV cache (sliding windows and
ALiBi included), the two attention paths, error messages, sample.py, and the training loop."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import olmo
import prepare_data
from conftest import byte_level_tokenizer_json
import sample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 8, "beta_slow": 1}


def small_config(**overrides):
    args = dict(block_size=48, vocab_size=71, n_layer=4, n_head=4, n_kv_head=2, n_embd=32, hidden_dim=48,
                rope_theta=500.0)
    return olmo.OLMoConfig(**(args | overrides))


def random_model(**overrides):
    torch.manual_seed(0)
    model = olmo.OLMo(small_config(**overrides)).eval()
    with torch.no_grad():  # gains away from 1, so a norm that ignored them would be caught
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.2 * torch.randn_like(param))
    return model


def save_hf_olmo(directory, version, n_kv_head=2, tie=False, **extra):
    """A random tiny transformers OLMo (version 1, 2 or 3) saved as a checkpoint directory; returns it."""
    transformers = pytest.importorskip("transformers")
    classes = {1: (transformers.OlmoConfig, transformers.OlmoForCausalLM),
               2: (transformers.Olmo2Config, transformers.Olmo2ForCausalLM),
               3: (transformers.Olmo3Config, transformers.Olmo3ForCausalLM)}
    config_class, model_class = classes[version]
    if version == 3:
        # OLMo 3's config keeps RoPE settings per layer type (rope scaling only in the full layers). Given
        # them explicitly, because Olmo3Config(rope_theta=...) sets only the full layers' theta.
        plain = {"rope_type": "default", "rope_theta": 500.0}
        extra["rope_parameters"] = {"full_attention": dict(extra.pop("rope_scaling", None) or plain, rope_theta=500.0),
                                    "sliding_attention": plain}
    else:
        extra["rope_theta"] = 500.0
    config = config_class(vocab_size=97, hidden_size=32, intermediate_size=72, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=n_kv_head, max_position_embeddings=64,
                          tie_word_embeddings=tie, pad_token_id=None, eos_token_id=None, **extra)
    torch.manual_seed(1)
    hf = model_class(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    hf.save_pretrained(directory)
    return hf


def logits_of(model, idx):
    with torch.no_grad():
        return model(idx)[0]


# ---------------------------------------------------------------------------------------------
# Agreement with Hugging Face


HF_CASES = {
    "olmo1-mha-untied-clip": (1, 4, False, dict(clip_qkv=0.05)),
    "olmo1-gqa-tied": (1, 2, True, {}),
    "olmo2-gqa-untied": (2, 2, False, {}),
    "olmo2-mqa-tied": (2, 1, True, {}),
    "olmo3-gqa-sliding": (3, 2, False, dict(sliding_window=7)),
    "olmo3-sliding-yarn": (3, 2, True, dict(sliding_window=7, rope_scaling=YARN)),
}


@pytest.mark.parametrize("case", HF_CASES)
def test_logits_match_transformers(tmp_path, case):
    version, n_kv_head, tie, extra = HF_CASES[case]
    hf = save_hf_olmo(tmp_path, version, n_kv_head, tie, **extra)
    model = olmo.OLMo.from_pretrained(str(tmp_path)).eval()
    config = model.config
    assert (config.block_type, config.n_kv_head, config.tie_embeddings, config.block_size) == (
        "olmo1" if version == 1 else "olmo2", n_kv_head, tie, 64)
    idx = torch.randint(0, 97, (2, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(idx).logits
    logits = logits_of(model, idx)
    assert logits.shape == (2, 60, 97)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    # Each feature under test must matter, or the agreement above would prove nothing about it.
    for feature, off in [("clip_qkv", dict(clip_qkv=0.0)), ("sliding_window", dict(sliding_window=0, layer_types=None)),
                         ("rope_scaling", dict(rope_scaling=None))]:
        if feature in extra:
            plain = olmo.OLMo(dataclasses.replace(config, **off)).eval()
            plain.load_state_dict(model.state_dict())
            assert (logits_of(plain, idx) - expected).abs().max() > 1e-2, feature
    if version == 3:  # OLMo 3's pattern: three sliding layers, then a full one
        assert config.layer_types == ["sliding"] * 3 + ["full"] and config.sliding_window == 7
        assert config.sliding_window < 60


def test_yarn_frequencies_equal_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = transformers.Olmo2Config(hidden_size=64, num_attention_heads=2, rope_theta=500.0, rope_scaling=dict(YARN),
                                         max_position_embeddings=64)
    expected, expected_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_config)
    inv_freq, factor = olmo.yarn_inverse_frequencies(32, 500.0, YARN)
    assert factor == pytest.approx(expected_factor) and factor == pytest.approx(0.1 * math.log(4.0) + 1)
    torch.testing.assert_close(inv_freq, expected, atol=0, rtol=1e-6)
    plain = olmo.rope_inverse_frequencies(32, 500.0)
    assert inv_freq[0] == plain[0]  # fast rotations kept
    torch.testing.assert_close(inv_freq[-1], plain[-1] / 4)  # slow ones interpolated
    assert ((inv_freq < plain) & (inv_freq > plain / 4)).any()  # and a blended band in between


def test_sharded_checkpoint_with_old_style_rope_keys(tmp_path):
    """Released OLMo 3 config.json files carry rope_theta and rope_scaling at the top level."""
    hf = save_hf_olmo(tmp_path, 3, sliding_window=7, rope_scaling=YARN)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    del config["rope_parameters"]
    config |= {"rope_theta": 500.0, "rope_scaling": YARN}
    path.write_text(json.dumps(config))
    model = olmo.OLMo.from_pretrained(str(tmp_path)).eval()
    assert model.config.rope_scaling == YARN and model.config.rope_theta == 500.0
    idx = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(logits_of(model, idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_generate_equals_transformers_generate_with_sliding_window(tmp_path):
    """Greedy decoding past the window, with our SlidingWindowKVCache against HF's own cache."""
    hf = save_hf_olmo(tmp_path, 3, sliding_window=5)
    model = olmo.OLMo.from_pretrained(str(tmp_path)).eval()
    prompt = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    ours = model.generate(prompt, 30, temperature=0.0)
    expected = hf.generate(prompt, max_new_tokens=30, min_new_tokens=30, do_sample=False)
    assert torch.equal(ours, expected)


# ---------------------------------------------------------------------------------------------
# ALiBi


@pytest.mark.parametrize("n_head", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20])
def test_alibi_slopes_equal_bloom(n_head):
    pytest.importorskip("transformers")
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    torch.testing.assert_close(olmo.alibi_slopes(n_head), _get_alibi_slopes(n_head, "cpu").float())


def test_alibi_slopes_values():
    assert olmo.alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]  # the paper's 1/2 .. 1/256
    twelve = olmo.alibi_slopes(12).tolist()  # not a power of two: 8 slopes, then 4 in between
    assert twelve == pytest.approx([2.0 ** -i for i in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5])


def naive_attention(attn, x, slopes=None, window=None, cos_sin=None):
    """One Attention module's output written as loops over queries and keys (no masks, no GQA tricks)."""
    B, T, _ = x.shape
    hd = attn.head_dim
    q = attn.q_norm(attn.q_proj(x)).view(B, T, attn.n_head, hd)
    k = attn.k_norm(attn.k_proj(x)).view(B, T, attn.n_kv_head, hd)
    v = attn.v_proj(x).view(B, T, attn.n_kv_head, hd)
    out = torch.zeros(B, T, attn.n_head, hd)
    for h in range(attn.n_head):
        kv = h // (attn.n_head // attn.n_kv_head)
        for i in range(T):
            js = [j for j in range(i + 1) if window is None or i - j < window]
            scores = torch.stack([(q[:, i, h] * k[:, j, kv]).sum(-1) / math.sqrt(hd)
                                  - (slopes[h] * (i - j) if slopes is not None else 0) for j in js], dim=-1)
            weights = torch.softmax(scores, dim=-1)
            out[:, i, h] = sum(weights[:, n, None] * v[:, j, kv] for n, j in enumerate(js))
    return attn.o_proj(out.reshape(B, T, -1))


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("window", [0, 4])
def test_alibi_attention_equals_naive_loops(attention, window):
    model = random_model(pos_emb="alibi", attention=attention, sliding_window=window)
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 11, 32)
    with torch.no_grad():
        mask = model.attention_mask(0, 11, model.layer_windows[0], x.device)
        ours = attn(x, None, mask)
        expected = naive_attention(attn, x, slopes=olmo.alibi_slopes(4), window=model.layer_windows[0])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_alibi_sees_only_relative_positions():
    # No position signal besides distance: shifting where a text starts does not change what a single
    # sliding layer computes for it once the earlier tokens are out of its window.
    model = random_model(pos_emb="alibi", n_layer=1, sliding_window=3, layer_types=["sliding"])
    assert not hasattr(model, "inv_freq") and set(model.state_dict()) == set(olmo.OLMo(small_config(n_layer=1)).state_dict())
    text = torch.randint(0, 71, (1, 6))
    with torch.no_grad():
        alone = model(text)[0]
        shifted = model(torch.cat((torch.randint(0, 71, (1, 9)), text), dim=1))[0][:, 9:]
    torch.testing.assert_close(alone[:, 2:], shifted[:, 2:], atol=1e-5, rtol=1e-5)  # positions 2..: full windows


# ---------------------------------------------------------------------------------------------
# Attention paths, cache, masks

VARIANTS = {
    "olmo2-rope": {},
    "olmo1-rope-clip": dict(block_type="olmo1", clip_qkv=0.05, norm_eps=1e-5),
    "olmo3-sliding-yarn": dict(sliding_window=5, rope_scaling=YARN),
    "alibi": dict(pos_emb="alibi"),
    "alibi-sliding": dict(pos_emb="alibi", sliding_window=5),
    "all-sliding-window-1": dict(sliding_window=1, layer_types=["sliding"] * 4),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_manual_attention_equals_sdpa(variant):
    model = random_model(**VARIANTS[variant])
    manual = olmo.OLMo(small_config(**VARIANTS[variant], attention="manual")).eval()
    manual.load_state_dict(model.state_dict())
    idx = torch.randint(0, 71, (3, 48))
    torch.testing.assert_close(logits_of(manual, idx), logits_of(model, idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_forward_equals_full_forward(variant, attention):
    model = random_model(**VARIANTS[variant], attention=attention)
    idx = torch.randint(0, 71, (2, 30))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(model.config.block_size)
        # a prompt longer than the window, a chunk of several tokens (whose mask is neither full nor
        # plain causal), then one token at a time
        pieces = [model(idx[:, :9], cache=cache)[0], model(idx[:, 9:13], cache=cache)[0]]
        pieces += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(13, 30)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    window = model.config.sliding_window
    if window:  # sliding layers keep window - 1 positions, full layers everything
        assert isinstance(cache, olmo.SlidingWindowKVCache)
        for layer, kind in enumerate(model.config.layer_types):
            if kind == "sliding":
                assert cache.recent[layer][0].shape == (2, 2, window - 1, 8)
        assert cache.full.n_layer == model.config.layer_types.count("full")
    else:
        assert isinstance(cache, olmo.KVCache) and cache.keys.shape == (4, 2, 2, 48, 8)  # GQA: 2 kv heads


@pytest.mark.parametrize("variant", ["olmo2-rope", "olmo3-sliding-yarn", "alibi-sliding"])
def test_generate_same_with_and_without_cache_past_block_size(variant):
    model = random_model(**VARIANTS[variant])
    prompt = torch.randint(0, 71, (2, 5))
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(42)
        runs.append(model.generate(prompt, 60, temperature=1.0, top_k=20, use_cache=use_cache))
    assert runs[0].shape == (2, 65)  # beyond block_size=48: the window slides
    assert torch.equal(runs[0], runs[1])


def test_sliding_window_limits_what_a_layer_sees():
    # One sliding layer with window 4: changing token 10 changes outputs 10..13 and nothing else.
    model = random_model(n_layer=1, sliding_window=4, layer_types=["sliding"])
    idx = torch.randint(0, 71, (1, 20))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 71
    diff = (logits_of(model, idx) - logits_of(model, changed)).abs().amax(dim=-1)[0]
    assert (diff[:10] == 0).all() and (diff[14:] == 0).all() and (diff[10:14] > 0).all()


@pytest.mark.parametrize("variant", ["olmo2-rope", "alibi"])
def test_causal_masking(variant):
    model = random_model(**VARIANTS[variant])
    idx = torch.randint(0, 71, (1, 32))
    changed = idx.clone()
    changed[0, 20] = (idx[0, 20] + 1) % 71
    a, b = logits_of(model, idx), logits_of(model, changed)
    assert torch.equal(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_blocks_are_the_three_generations():
    one = olmo.OLMo(small_config(block_type="olmo1"))
    two = olmo.OLMo(small_config())
    names1, names2 = set(one.state_dict()), set(two.state_dict())
    # OLMo 1: no norm parameters at all; OLMo 2: QK-norm and the two output norms per block, a final norm
    assert not any("norm" in name for name in names1)
    assert {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight",
            "model.layers.0.post_attention_layernorm.weight", "model.layers.0.post_feedforward_layernorm.weight",
            "model.norm.weight"} <= names2
    assert two.model.layers[0].self_attn.k_norm.weight.shape == (16,)  # over all 2 kv heads x 8 channels
    x = torch.randn(2, 5, 32) * 3 + 1
    norm = olmo.ParameterFreeLayerNorm(1e-5)
    torch.testing.assert_close(norm(x), torch.nn.functional.layer_norm(x, (32,), eps=1e-5))
    assert olmo.OLMoConfig(n_layer=8, sliding_window=16).layer_types == (["sliding"] * 3 + ["full"]) * 2


def test_embedding_is_not_weight_decayed():
    model = olmo.OLMo(small_config())
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    decayed, undecayed = (group["params"] for group in optimizer.param_groups)
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    assert any(p is model.model.embed_tokens.weight for p in undecayed)
    assert any(p is model.lm_head.weight for p in decayed)
    assert len(decayed) + len(undecayed) == len(list(model.parameters()))


def test_loss_is_cross_entropy():
    model = random_model()
    idx = torch.randint(0, 71, (2, 16))
    with torch.no_grad():
        logits, loss = model(idx, targets=idx)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 71), idx.reshape(-1)))


# ---------------------------------------------------------------------------------------------
# Errors name the offending value


@pytest.mark.parametrize("overrides, message", [
    (dict(n_head=4, n_kv_head=3), "n_kv_head=3"),
    (dict(n_embd=36, n_head=4, n_kv_head=4), "9 must be even"),
    (dict(pos_emb="learned"), "'learned'"),
    (dict(block_type="olmo4"), "'olmo4'"),
    (dict(attention="flash"), "'flash'"),
    (dict(clip_qkv=-0.5), "clip_qkv=-0.5"),
    (dict(sliding_window=-1), "sliding_window=-1"),
    (dict(layer_types=["full"] * 3), "layer_types must list 4"),
    (dict(layer_types=["full_attention"] * 4), "each 'full' or 'sliding'"),
    (dict(layer_types=["sliding"] * 4), "sliding_window is 0"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "'llama3'"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 8.0}), "original_max_position_embeddings"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        small_config(**overrides)


def test_alibi_allows_odd_head_dim():
    model = olmo.OLMo(small_config(n_embd=36, n_head=4, n_kv_head=4, pos_emb="alibi"))
    assert logits_of(model, torch.randint(0, 71, (1, 5))).shape == (1, 5, 71)


def edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="llama"), "'llama'"),
    (dict(attention_bias=True), "attention_bias=True"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(head_dim=16), "head_dim=16"),
    (dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 500.0}), "'dynamic'"),
    (dict(intermediate_size=80), "shape mismatch for model.layers.0.mlp."),  # names the tensor
])
def test_from_pretrained_errors(tmp_path, changes, message):
    save_hf_olmo(tmp_path, 2)
    edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        olmo.OLMo.from_pretrained(str(tmp_path))


def test_from_pretrained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        olmo.OLMo.from_pretrained(str(tmp_path))
    save_hf_olmo(tmp_path, 1)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        olmo.OLMo.from_pretrained(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# sample.py


def test_sample_from_hf_olmo2_directory_with_tokenizer_json(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    # OLMo's tokenizers are byte-level BPE tokenizer.json files; train a tiny one here.
    text = "the quick brown fox jumps over the lazy dog. " * 50 + "Shall I compare thee to a summer's day?"
    tok = byte_level_tokenizer_json(tmp_path / "tokenizer.json", text)
    torch.manual_seed(0)
    config = transformers.Olmo2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, pad_token_id=None, eos_token_id=None)
    hf = transformers.Olmo2ForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    prompt = "Shall I compare thee"
    ids = tok.encode(prompt).ids
    expected = hf.generate(torch.tensor([ids]), max_new_tokens=15, do_sample=False, pad_token_id=0)[0].tolist()
    sample.main([f"--init_from={tmp_path}", f"--start={prompt}", "--num_samples=1", "--max_new_tokens=15",
                 "--temperature=0", "--device=cpu"])
    assert capsys.readouterr().out == tok.decode(expected) + "\n---------------\n"


# ---------------------------------------------------------------------------------------------
# Training through the command line


TINY = ["--dataset=tiny", "--device=cpu", "--gradient_accumulation_steps=1", "--compile=False", "--dtype=float32", "--n_layer=2", "--n_head=4",
        "--n_kv_head=2", "--n_embd=32", "--multiple_of=16", "--block_size=32", "--batch_size=8",
        "--eval_iters=4", "--log_interval=5", "--learning_rate=1e-2", "--warmup_iters=2",
        "--always_save_checkpoint=True"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory with a small character dataset 'tiny' prepared under data/."""
    root = tmp_path_factory.mktemp("olmo_train")
    words = ["the", "king", "doth", "speak", "and", "queen", "answers", "thee", "my", "lord"]
    generator = torch.Generator().manual_seed(0)
    text = " ".join(words[i] for i in torch.randint(0, len(words), (8000,), generator=generator).tolist())
    (root / "input.txt").write_text(text)
    prepare_data.prepare("tiny", input_path=str(root / "input.txt"), tokenizer="char", data_root=str(root / "data"))
    return root


def train(workdir, monkeypatch, capsys, *args):
    """Run olmo.py's main in-process (no interpreter start-up per run, as tests/test_train.py does)."""
    monkeypatch.chdir(workdir)
    olmo.main(TINY + list(args))
    return capsys.readouterr().out


@pytest.mark.parametrize("variant", [[], ["--pos_emb=alibi", "--sliding_window=8", "--block_type=olmo1", "--clip_qkv=2.0"]],
                         ids=["olmo2-rope", "olmo1-alibi-sliding-clip"])
def test_training_reduces_loss_and_checkpoint_loads(workdir, monkeypatch, capsys, variant):
    out_dir = "out-" + "-".join(v.split("=")[1] for v in variant) if variant else "out-plain"
    out = train(workdir, monkeypatch, capsys, f"--out_dir={out_dir}", "--max_iters=40", "--lr_decay_iters=40",
                "--eval_interval=20", *variant)
    val = [float(v) for v in re.findall(r"val loss ([\d.]+)", out)]
    assert len(val) == 3 and val[-1] < val[0] - 1.0, out
    checkpoint = torch.load(workdir / out_dir / "ckpt.pt", weights_only=True)
    assert checkpoint["model_type"] == "olmo" and checkpoint["iter_num"] == 40
    args = checkpoint["model_args"]
    assert args["n_kv_head"] == 2 and args["hidden_dim"] == 96 and checkpoint["config"]["n_kv_head"] == 2
    if variant:
        assert (args["pos_emb"], args["sliding_window"], args["block_type"], args["clip_qkv"]) == ("alibi", 8, "olmo1", 2.0)
        assert args["layer_types"] == ["sliding", "sliding"]  # (the 4th layer would be full)
    # sample.py rebuilds the model from the checkpoint alone; greedy, it equals the model's own generate
    model = olmo.OLMo(olmo.OLMoConfig(**args))
    model.load_state_dict(checkpoint["model"])
    tokenizer = prepare_data.load_tokenizer(checkpoint["tokenizer"])
    expected = model.eval().generate(torch.tensor([tokenizer.encode("the")]), 40, temperature=0.0)[0].tolist()
    sample.main([f"--out_dir={out_dir}", "--start=the", "--num_samples=1", "--max_new_tokens=40", "--temperature=0",
                 "--device=cpu"])
    assert capsys.readouterr().out == tokenizer.decode(expected) + "\n---------------\n"


def test_resume_is_exact(workdir, monkeypatch, capsys, run_log_values):
    # Dropout on, so the resumed run must also restore the RNG state to match.
    common = ["--dropout=0.1", "--lr_decay_iters=20", "--eval_interval=10", "--pos_emb=alibi"]
    train(workdir, monkeypatch, capsys, "--out_dir=out-straight", "--max_iters=20", *common)
    train(workdir, monkeypatch, capsys, "--out_dir=out-resumed", "--max_iters=10", *common)
    train(workdir, monkeypatch, capsys, "--out_dir=out-resumed", "--max_iters=20", "--init_from=resume", *common)
    straight = torch.load(workdir / "out-straight" / "ckpt.pt", weights_only=True)
    resumed = torch.load(workdir / "out-resumed" / "ckpt.pt", weights_only=True)
    assert straight["iter_num"] == resumed["iter_num"] == 20
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    # log.jsonl: the same records, each iteration once (timings aside).
    assert run_log_values(workdir / "out-straight") == run_log_values(workdir / "out-resumed")


@pytest.mark.parametrize("args, message", [
    (["--pos_emb=learned"], "error: pos_emb='learned' must be 'rope' or 'alibi'"),
    (["--sliding_window=-2"], "error: sliding_window=-2 must be at least 1"),
    (["--block_type=olmo5"], "error: block_type='olmo5'"),
    (["--clip_qkv=-1.0"], "error: clip_qkv=-1.0 must be positive"),
    (["--init_from=resume", "--out_dir=nowhere"], "error: init_from='resume' but there is no checkpoint"),
])
def test_training_errors_are_one_line(workdir, monkeypatch, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        train(workdir, monkeypatch, capsys, "--max_iters=1", *args)
    assert str(exit_info.value).startswith(message) and "\n" not in str(exit_info.value)


def test_command_line_error_has_no_traceback(workdir):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(REPO, "olmo.py"), *TINY, "--pos_emb=learned"], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr == "error: pos_emb='learned' must be 'rope' or 'alibi'\n"


# ---------------------------------------------------------------------------------------------
# The template's generation options (tests/test_hardening.py checks them for gpt.py and llama.py)


@pytest.mark.parametrize("variant", ["olmo2-rope", "alibi-sliding"])
def test_last_only_and_one_forward_per_new_token(variant, monkeypatch):
    model = random_model(**VARIANTS[variant])
    idx = torch.randint(0, 71, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, 71)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-6)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    model.generate(torch.zeros((1, 3), dtype=torch.long), 5, temperature=0)
    assert len(calls) == 5  # the prompt, then one per new token but the last


def test_generate_vocab_limit_end_token_and_option_checks():
    model = random_model()
    with torch.no_grad():  # make the ids 65..70 overwhelmingly likely
        model.lm_head.weight[65:] = 0.0
        model.lm_head.weight[65:, 0] = 1e4
    assert int(model.generate(torch.ones((4, 2), dtype=torch.long), 10, vocab_size=65).max()) < 65
    assert int(model.generate(torch.ones((4, 2), dtype=torch.long), 10).max()) >= 65
    model = random_model()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    greedy = model.generate(prompt, 8, temperature=0)
    both = model.generate(prompt, 8, temperature=0, eos_token_id=[int(greedy[0, 3]), int(greedy[1, 3])])
    assert both.size(1) == 4 and torch.equal(both, greedy[:, :4])  # every row stopped at its end token
    with pytest.raises(ValueError, match=re.escape("top_k must be None or an integer >= 1")):
        model.generate(prompt, 3, top_k=0)


def test_finetune_pretrained_olmo2_on_text_tokenized_with_its_tokenizer(workdir, tmp_path, monkeypatch, capsys):
    transformers = pytest.importorskip("transformers")
    text = (workdir / "input.txt").read_text()
    model_dir = tmp_path / "hf-olmo2"
    model_dir.mkdir()
    tok = byte_level_tokenizer_json(model_dir / "tokenizer.json", text)
    torch.manual_seed(0)
    config = transformers.Olmo2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, pad_token_id=None, eos_token_id=None)
    transformers.Olmo2ForCausalLM(config).save_pretrained(model_dir)
    prepare_data.prepare("tiny_olmo", input_path=str(workdir / "input.txt"), tokenizer=str(model_dir),
                         data_root=str(workdir / "data"))
    common = ["--block_size=32", "--eval_interval=10", "--learning_rate=1e-3", f"--init_from={model_dir}",
              "--max_iters=10", "--lr_decay_iters=10"]
    with pytest.raises(SystemExit, match="was not tokenized with"):
        train(workdir, monkeypatch, capsys, *common, "--out_dir=out-ft-refused")  # the char-level dataset
    log = train(workdir, monkeypatch, capsys, *common, "--dataset=tiny_olmo", "--out_dir=out-ft")
    losses = [float(v) for v in re.findall(r"val loss ([\d.]+)", log)]
    assert len(losses) == 2 and losses[-1] < losses[0], log
    checkpoint = torch.load(workdir / "out-ft" / "ckpt.pt", weights_only=True)
    assert checkpoint["model_args"]["block_size"] == 32 and checkpoint["model_args"]["block_type"] == "olmo2"
