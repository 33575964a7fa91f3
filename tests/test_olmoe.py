"""Tests for olmo.py's mixture of experts (block_type='olmoe', n_experts > 0): logits and router logits
equal to Hugging Face's OlmoeForCausalLM (checkpoints written by save_pretrained, and its fused in-memory
expert layout), the KV cache, the expert loop against a token-by-token reference, the load-balancing loss
against Hugging Face's load_balancing_loss_func, the z-loss against its formula written out, the training
loss's composition, errors, and a short training run of the CPU preset that logs the expert load."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import olmo
from test_llama import workdir  # noqa: F401 (a fixture: data/tiny, a few words at character level)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
transformers = pytest.importorskip("transformers")
from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func  # noqa: E402


def save_hf_olmoe(directory, n_experts=4, top_k=2, norm_topk_prob=False, clip_qkv=None, n_kv_head=2):
    """A random tiny OlmoeForCausalLM saved with save_pretrained; returns the model (eval mode)."""
    config = transformers.OlmoeConfig(
        vocab_size=61, hidden_size=32, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=n_kv_head, max_position_embeddings=64, num_experts=n_experts, num_experts_per_tok=top_k,
        norm_topk_prob=norm_topk_prob, clip_qkv=clip_qkv, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        pad_token_id=None, eos_token_id=None)
    torch.manual_seed(1)
    hf = transformers.OlmoeForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:  # gains away from 1, so a norm that ignored them would be caught
                param.add_(0.2 * torch.randn_like(param))
            if name.endswith("mlp.gate.weight"):  # a router sure enough of itself that top-k matters
                param.mul_(20)
    hf.save_pretrained(directory)
    return hf


HF_VARIANTS = {
    "4-experts-top2": dict(n_experts=4, top_k=2),
    "8-experts-top3-normalised": dict(n_experts=8, top_k=3, norm_topk_prob=True),
    "5-experts-top1-mha": dict(n_experts=5, top_k=1, n_kv_head=4),
    "6-experts-top2-normalised-clip": dict(n_experts=6, top_k=2, norm_topk_prob=True, clip_qkv=0.3),
}


@pytest.mark.parametrize("variant", HF_VARIANTS, ids=list(HF_VARIANTS))
def test_logits_and_router_equal_hugging_face(tmp_path, variant):
    hf = save_hf_olmoe(tmp_path, **HF_VARIANTS[variant])
    model = olmo.OLMo.from_pretrained(str(tmp_path)).eval()
    cfg = model.config
    assert (cfg.block_type, cfg.n_experts, cfg.n_experts_per_token, cfg.hidden_dim) == (
        "olmoe", hf.config.num_experts, hf.config.num_experts_per_tok, 24)
    assert cfg.norm_topk_prob == hf.config.norm_topk_prob and cfg.clip_qkv == (hf.config.clip_qkv or 0.0)
    idx = torch.randint(0, 61, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(idx, output_router_logits=True)
        logits, _ = model(idx)
    assert torch.allclose(logits, expected.logits, atol=1e-4), (logits - expected.logits).abs().max()
    for block, hf_router in zip(model.model.layers, expected.router_logits):
        assert torch.allclose(block.mlp.router_logits, hf_router, atol=1e-5)
    # and the load-balancing loss of those router logits is HF's aux_loss
    ours = olmo.load_balancing_loss([b.mlp.router_logits for b in model.model.layers], cfg.n_experts_per_token)
    assert torch.allclose(ours, expected.aux_loss, atol=1e-6)


def test_the_fused_in_memory_layout_loads_the_same(tmp_path):
    # transformers 5 holds experts as gate_up_proj (E, 2 * hidden, C) and down_proj (E, C, hidden); files
    # written by save_pretrained (and the hub's) have one tensor per expert. Both give the same model.
    hf = save_hf_olmoe(tmp_path, n_experts=4, top_k=2)
    fused = hf.state_dict()
    assert "model.layers.0.mlp.experts.gate_up_proj" in fused
    stacked = olmo.stack_hf_experts(fused)
    loaded = olmo.OLMo.from_pretrained(str(tmp_path)).state_dict()
    assert set(stacked) == set(loaded)
    for name, tensor in loaded.items():
        assert torch.equal(stacked[name], tensor), name
    with pytest.raises(ValueError, match=r"experts for model.layers.0.mlp.experts.\w+_proj are not numbered 0 .. 2"):
        bad = {k: v for k, v in olmo.load_hf_weights(str(tmp_path)).items() if ".experts.1." not in k}
        olmo.stack_hf_experts(bad)


def test_cached_generation_equals_uncached_and_hugging_face(tmp_path):
    hf = save_hf_olmoe(tmp_path, n_experts=6, top_k=2, norm_topk_prob=True)
    model = olmo.OLMo.from_pretrained(str(tmp_path)).eval()
    prompt = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(3))
    cached = model.generate(prompt, 15, temperature=0.0)
    uncached = model.generate(prompt, 15, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=0)
    assert torch.equal(cached, expected)


def small_moe(**overrides):
    args = dict(block_size=32, vocab_size=53, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, multiple_of=16,
                block_type="olmoe", n_experts=5, n_experts_per_token=2)
    torch.manual_seed(0)
    return olmo.OLMo(olmo.OLMoConfig(**(args | overrides)))


@pytest.mark.parametrize("top_k, norm", [(1, False), (2, False), (3, True), (5, False)])
def test_expert_loop_equals_a_token_by_token_reference(top_k, norm):
    # The gather / run / scatter-add loop against the definition: each token alone, through its k experts.
    moe = small_moe(n_experts_per_token=top_k, norm_topk_prob=norm).model.layers[0].mlp
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        y = moe(x).view(-1, 32)
        experts = moe.experts
        for n, token in enumerate(x.view(-1, 32)):
            probs = F.softmax(moe.gate(token), dim=-1)
            top = sorted(range(len(probs)), key=lambda e: -probs[e].item())[:top_k]
            total = sum(probs[e] for e in top)
            expected = sum((probs[e] / total if norm else probs[e])
                           * (F.silu(experts.gate_proj[e] @ token) * (experts.up_proj[e] @ token)) @ experts.down_proj[e].T
                           for e in top)
            assert torch.allclose(y[n], expected, atol=1e-6), n
    load = moe.expert_load()
    assert load.shape == (5,) and math.isclose(load.sum().item(), 1.0, abs_tol=1e-6)
    counts = torch.bincount(moe.chosen.flatten(), minlength=5)
    assert torch.equal(load, counts / (21 * top_k))


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_load_balancing_loss_equals_hugging_face(top_k):
    generator = torch.Generator().manual_seed(top_k)
    # three layers routing differently (HF pools them before multiplying: so do we), one of them skewed
    layers = [torch.randn(40, 6, generator=generator) * scale + bias
              for scale, bias in [(1.0, 0.0), (3.0, 0.0), (1.0, torch.tensor([4.0, 0, 0, 0, 0, 0]))]]
    ours = olmo.load_balancing_loss(layers, top_k)
    assert torch.allclose(ours, load_balancing_loss_func(tuple(layers), 6, top_k), atol=1e-6)
    # balanced routing costs exactly k
    uniform = torch.zeros(12, 6)
    uniform[torch.arange(12), torch.arange(12) % 6] = 1e-3  # ties broken so each expert is chosen equally often
    assert math.isclose(olmo.load_balancing_loss([uniform], 1).item(), 1.0, rel_tol=1e-3)


def test_z_loss_is_the_mean_squared_log_partition_function():
    generator = torch.Generator().manual_seed(0)
    layers = [torch.randn(10, 4, generator=generator) * 5 for _ in range(3)]
    naive = 0.0
    for logits in layers:
        for row in logits.tolist():
            naive += math.log(sum(math.exp(v) for v in row)) ** 2
    naive /= 30
    assert math.isclose(olmo.router_z_loss(layers).item(), naive, rel_tol=1e-5)


def test_training_loss_adds_the_router_losses_and_eval_loss_does_not():
    model = small_moe(router_aux_loss_coef=0.5, router_z_loss_coef=0.25)
    idx = torch.randint(0, 53, (2, 16), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 53, (2, 16), generator=torch.Generator().manual_seed(1))
    model.train()
    logits, loss = model(idx, targets)
    router_logits = [block.mlp.router_logits for block in model.model.layers]
    cross_entropy = F.cross_entropy(logits.view(-1, 53), targets.view(-1))
    expected = (cross_entropy + 0.5 * olmo.load_balancing_loss(router_logits, 2)
                + 0.25 * olmo.router_z_loss(router_logits))
    assert torch.allclose(loss, expected) and not torch.allclose(loss, cross_entropy)
    loss.backward()  # the router learns from both the routing weights and the auxiliary losses
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0
    model.eval()
    assert torch.allclose(model(idx, targets)[1], cross_entropy)
    # the same with activation checkpointing: the recomputed blocks keep their router logits usable
    model.train()
    model.activation_checkpointing = True
    assert torch.allclose(model(idx, targets)[1], loss)


def test_equal_active_parameters_and_flops():
    dense = olmo.OLMo(olmo.OLMoConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_kv_head=4, n_embd=128,
                                      multiple_of=32))
    moe = olmo.OLMo(olmo.OLMoConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_kv_head=4, n_embd=128,
                                    multiple_of=32, block_type="olmoe", n_experts=8, n_experts_per_token=2))
    assert (dense.config.hidden_dim, moe.config.hidden_dim) == (352, 176)  # two experts as wide as the dense SwiGLU
    router = 4 * 8 * 128
    assert moe.num_active_params() == dense.num_params() + router
    assert moe.num_params() == dense.num_params() + router + 4 * 6 * 3 * 128 * 176  # plus the 6 idle experts
    assert moe.flops_per_token() == dense.flops_per_token() + 6 * router


@pytest.mark.parametrize("overrides, message", [
    (dict(n_experts=-1), "n_experts=-1 must be at least 1"),
    (dict(n_experts=4, n_experts_per_token=5), "n_experts_per_token=5 must be between 1 and n_experts=4"),
    (dict(n_experts=4, n_experts_per_token=0), "n_experts_per_token=0 must be between 1"),
    (dict(n_experts=4, router_z_loss_coef=-1.0), "router_z_loss_coef=-1.0 must be >= 0"),
    (dict(block_type="moe"), "block_type='moe' must be 'olmo1', 'olmo2' or 'olmoe'"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        small_moe(**overrides)


def test_a_dense_olmoe_block_and_experts_in_an_olmo2_block():
    # n_experts=0 keeps the dense SwiGLU in OLMoE's pre-norm block; n_experts works in OLMo 2's block too
    dense = small_moe(n_experts=0)
    assert isinstance(dense.model.layers[0].mlp, olmo.FeedForward) and dense.config.hidden_dim == 96
    post_norm = small_moe(block_type="olmo2")
    assert isinstance(post_norm.model.layers[0], olmo.OLMo2Block)
    assert isinstance(post_norm.model.layers[0].mlp, olmo.MoEFeedForward)
    post_norm(torch.zeros(1, 4, dtype=torch.long))




def test_preset_trains_and_logs_the_expert_load(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    olmo.main([os.path.join(REPO, "config", "olmoe_shakespeare_char_cpu.py"), "--dataset=tiny", "--out_dir=out-moe",
               "--n_layer=2", "--n_embd=32", "--multiple_of=16", "--block_size=32", "--batch_size=8",
               "--max_iters=30", "--lr_decay_iters=30", "--eval_interval=15", "--eval_iters=2", "--log_interval=5",
               "--learning_rate=1e-2", "--warmup_iters=2", "--always_save_checkpoint=True", "--dtype=float32"])
    out = capsys.readouterr().out
    with open(workdir / "out-moe" / "log.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 15, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5, out
    for record in evals:
        load = record["expert_load"]
        assert len(load) == 2 and all(len(layer) == 8 for layer in load)  # n_layer lists of n_experts shares
        assert all(math.isclose(sum(layer), 1.0, abs_tol=1e-3) for layer in load)
    checkpoint = torch.load(workdir / "out-moe" / "ckpt.pt", weights_only=True)
    args = checkpoint["model_args"]
    assert (args["block_type"], args["n_experts"], args["n_experts_per_token"], args["hidden_dim"]) == ("olmoe", 8, 2, 48)
    model = olmo.OLMo(olmo.OLMoConfig(**args))
    model.load_state_dict(checkpoint["model"])
    prompt = torch.zeros(1, 3, dtype=torch.long)
    model.eval()
    assert torch.equal(model.generate(prompt, 20, temperature=0.0), model.generate(prompt, 20, temperature=0.0,
                                                                                   use_cache=False))


def test_bad_expert_keys_are_one_line_errors(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    with pytest.raises(SystemExit) as exit_info:
        olmo.main(["--dataset=tiny", "--device=cpu", "--compile=False", "--n_layer=1", "--n_embd=32", "--n_head=4",
                   "--n_kv_head=4", "--max_iters=1", "--n_experts=4", "--n_experts_per_token=6"])
    message = str(exit_info.value)
    assert message.startswith("error: n_experts_per_token=6 must be between 1 and n_experts=4") and "\n" not in message
