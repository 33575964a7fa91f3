"""LoRA (lora_rank > 0) in gpt.py, llama.py and olmo.py: a frozen base plus trainable low-rank adapters.

Checked here: the adapted model's logits equal Hugging Face peft's LoRA on the same base weights with the
same A and B (peft is a test-only dependency: those tests skip without it); with B at zero (a fresh
adapter) the logits are the base's; merging folds the adapter into the weights without changing the
function; training moves A and B and nothing else; main() saves the adapter alone (a small fraction of
the base) with the name of its base, resumes from it exactly, and sample.py samples from it; mistakes
are one-line errors.
"""
import os
import re
import shutil

import pytest
import torch

import gpt
import llama
import olmo
import prepare_data
from conftest import byte_level_tokenizer_json
import sample

transformers = pytest.importorskip("transformers")

ALL_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hf_llama(directory, vocab_size=97, tie=False):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=tie, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(directory)
    return hf


def hf_olmo2(directory):
    torch.manual_seed(0)
    config = transformers.Olmo2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=None, bos_token_id=None, eos_token_id=None)
    hf = transformers.Olmo2ForCausalLM(config).eval()
    hf.save_pretrained(directory)
    return hf


def hf_gpt2(directory):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                                              vocab_size=101)).eval()
    hf.save_pretrained(directory)
    return hf


def randomize_adapters(model, seed=3):
    """A trained-looking adapter: B non-zero (a fresh one is zero, which would test nothing)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".lora_B"):
                p.normal_(0, 0.1)


def peft_logits(hf, ours, target_modules, rank, alpha, fan_in_fan_out=False):
    """(tokens, the logits of peft's LoRA on hf (the same base weights as ours) with ours' A and B copied in,
    hf's own logits)."""
    peft = pytest.importorskip("peft")
    idx = torch.randint(0, hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = hf(idx).logits  # before peft adds its layers to hf, in place
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules,
                             fan_in_fan_out=fan_in_fan_out)
    wrapped = peft.get_peft_model(hf, config).eval()
    adapter = llama.lora_state_dict(ours)
    copied = 0
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                # peft: base_model.model.<module>.lora_A.default.weight; ours: <module>.lora_A
                ours_name = re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1", name.removeprefix("base_model.model."))
                p.copy_(adapter[ours_name])
                copied += 1
    assert copied == len(adapter) > 0
    with torch.no_grad():
        return idx, wrapped(idx).logits, base


@pytest.mark.parametrize("targets, hf_targets", [("q,v", ["q_proj", "v_proj"]), ("all", ALL_LLAMA)])
def test_llama_lora_equals_peft(tmp_path, targets, hf_targets):
    hf = hf_llama(tmp_path)
    model = llama.Llama.from_pretrained(str(tmp_path)).eval()
    assert llama.add_lora(model, 4, 8.0, 0.0, targets) == 2 * len(hf_targets)
    randomize_adapters(model)
    idx, reference, base = peft_logits(hf, model, hf_targets, rank=4, alpha=8)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reference, base, atol=1e-3)  # the adapter mattered


def test_olmo2_lora_equals_peft(tmp_path):
    hf = hf_olmo2(tmp_path)
    model = olmo.OLMo.from_pretrained(str(tmp_path)).eval()
    olmo.add_lora(model, 4, 16.0, 0.0, "q,k_proj,down")
    randomize_adapters(model)
    idx, reference, _ = peft_logits(hf, model, ["q_proj", "k_proj", "down_proj"], rank=4, alpha=16)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference, atol=1e-5, rtol=1e-5)


def test_gpt2_lora_on_the_fused_c_attn_equals_peft_on_conv1d(tmp_path):
    # HF's GPT-2 stores c_attn as a Conv1D, weight (in, out); peft's fan_in_fan_out=True handles that
    # transpose, and its A and B are the same (r, in) and (out, r) as ours.
    hf = hf_gpt2(tmp_path)
    model = gpt.GPT.from_pretrained(str(tmp_path)).eval()
    assert gpt.add_lora(model, 2, 4.0, 0.0, "attn") == 2
    randomize_adapters(model)
    idx, reference, _ = peft_logits(hf, model, ["c_attn"], rank=2, alpha=4, fan_in_fan_out=True)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference, atol=1e-5, rtol=1e-5)


def test_gpt_targets_tell_the_two_c_proj_layers_apart(tmp_path):
    model = gpt.GPT(gpt.GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    gpt.add_lora(model, 2, 4.0, 0.0, "proj")
    adapted = {name for name, m in model.named_modules() if isinstance(m, gpt.LoRALinear)}
    assert adapted == {"transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"}
    model = gpt.GPT(gpt.GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    assert gpt.add_lora(model, 2, 4.0, 0.0, "all") == 8 and not isinstance(model.lm_head, gpt.LoRALinear)


@pytest.mark.parametrize("script", [llama, olmo])
def test_fresh_adapter_is_the_base_and_merging_keeps_the_function(tmp_path, script):
    (hf_llama if script is llama else hf_olmo2)(tmp_path)
    cls = llama.Llama if script is llama else olmo.OLMo
    base = cls.from_pretrained(str(tmp_path)).eval()
    model = cls.from_pretrained(str(tmp_path)).eval()
    script.add_lora(model, 4, 16.0, 0.1, "all")
    idx = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], base(idx)[0])  # B = 0: step 0 is exactly the base model
        randomize_adapters(model)
        unmerged = model(idx)[0]
        # The KV cache path (generation's) goes through the adapters too: a prompt then one token at a time.
        cache = script.KVCache(model.config.n_layer, 10)
        cached = [model(idx[:, :6], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(6, 10)]
        torch.testing.assert_close(torch.cat(cached, dim=1), unmerged, atol=1e-5, rtol=1e-5)
        script.merge_lora(model)
        assert not any(isinstance(m, script.LoRALinear) for m in model.modules())
        assert set(model.state_dict()) == set(base.state_dict())  # the base's names and shapes, nothing more
        torch.testing.assert_close(model(idx)[0], unmerged, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(unmerged, base(idx)[0], atol=1e-3)


def test_training_moves_only_the_adapters_and_checkpointing_keeps_their_gradients(tmp_path):
    hf_llama(tmp_path, tie=True)
    model = llama.Llama.from_pretrained(str(tmp_path))
    llama.add_lora(model, 4, 16.0, 0.1, "q,v,down")
    base = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" not in name}
    adapters = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}
    optimizer = model.configure_optimizer(0.1, 1e-2, (0.9, 0.95), "cpu")
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(adapters) == 2 * 2 * 3
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    model.train()
    grads = {}
    for checkpointing in (False, True):  # activation checkpointing: the same gradients reach A and B
        model.activation_checkpointing = checkpointing
        torch.manual_seed(5)
        model(idx, targets)[1].backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
    assert set(grads[False]) == set(adapters)
    for name in adapters:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1.3e-6, atol=1e-6)
    model.activation_checkpointing = False
    for _ in range(3):
        model(idx, targets)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]) and not p.requires_grad, name
        else:
            assert not torch.equal(p, adapters[name]), name
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied


def test_unknown_targets_and_meaningless_settings_are_refused():
    model = llama.Llama(llama.LlamaConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_kv_head=1, n_embd=16,
                                          hidden_dim=32))
    with pytest.raises(ValueError, match=r"^unknown LoRA target 'qkv'; lora_targets takes a comma-separated list of "
                                         r"q, k, v, o, gate, up, down, or all$"):
        llama.add_lora(model, 4, 16.0, 0.0, "q,qkv")
    with pytest.raises(ValueError, match="unknown LoRA target 'c_proj'; .*attn, proj, fc, mlp_proj, or all"):
        gpt.add_lora(gpt.GPT(gpt.GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8)), 2, 1.0, 0.0,
                     "c_proj")
    with pytest.raises(ValueError, match="rank >= 1"):
        llama.add_lora(model, 4, 16.0, 1.5, "q")


# ---- training through main(), resuming, sampling ----


@pytest.fixture(scope="module")
def finetune(tmp_path_factory, small_text):
    """A tiny HF Llama with its own byte-level BPE tokenizer.json, and a dataset tokenized with it."""
    root = tmp_path_factory.mktemp("lora")
    model_dir = root / "hf-llama"
    model_dir.mkdir()
    tok = byte_level_tokenizer_json(model_dir / "tokenizer.json", small_text)
    hf_llama(model_dir, vocab_size=tok.get_vocab_size(), tie=True)
    (root / "input.txt").write_text(small_text)
    prepare_data.prepare("tiny_bpe", input_path=str(root / "input.txt"), tokenizer=str(model_dir),
                         data_root=str(root / "data"))
    return root, model_dir


def train(root, monkeypatch, capsys, *args):
    monkeypatch.chdir(root)
    llama.main(["--dataset=tiny_bpe", "--device=cpu", "--compile=False", "--dtype=float32", "--block_size=32",
                "--batch_size=4", "--gradient_accumulation_steps=1", "--eval_iters=2", "--log_interval=1",
                "--learning_rate=1e-2", "--warmup_iters=0", *args])
    return capsys.readouterr().out


def test_main_trains_an_adapter_saves_it_alone_resumes_exactly_and_samples(finetune, monkeypatch, capsys):
    root, model_dir = finetune
    common = [f"--init_from={model_dir}", "--lora_rank=4", "--lora_dropout=0.1", "--lora_targets=q,v,up",
              "--eval_interval=5", "--lr_decay_iters=10", "--weight_decay=0.1"]
    straight = train(root, monkeypatch, capsys, *common, "--max_iters=10", "--out_dir=out-straight")
    assert re.search(r"parameters: 0\.\d\dM \(0\.00M trainable\)", straight), straight
    train(root, monkeypatch, capsys, *common, "--max_iters=5", "--out_dir=out-resumed")
    resumed = train(root, monkeypatch, capsys, "--init_from=resume", "--max_iters=10", "--out_dir=out-resumed")
    a = torch.load(root / "out-straight" / "ckpt.pt", weights_only=True)
    b = torch.load(root / "out-resumed" / "ckpt.pt", weights_only=True)
    assert a["lora"] == b["lora"] == {"base": str(model_dir), "rank": 4, "alpha": 16.0, "dropout": 0.1,
                                      "targets": "q,v,up"}
    assert set(a["model"]) == set(b["model"]) and all(name.endswith((".lora_A", ".lora_B")) for name in a["model"])
    assert len(a["model"]) == 2 * 2 * 3 and b["iter_num"] == 10
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name  # bit for bit: the same run, interrupted or not
    last_loss = r"step 10: train loss ([\d.]+), val loss ([\d.]+)"
    assert re.findall(last_loss, straight) == re.findall(last_loss, resumed) != []
    losses = [float(v) for v in re.findall(r"val loss ([\d.]+)", straight)]
    assert losses[-1] < losses[0], straight
    # The adapter is a small fraction of the base: 2 layers x (q, v, up) at rank 4 against every weight.
    base_bytes = os.path.getsize(model_dir / "model.safetensors")
    adapter_bytes = sum(t.numel() * t.element_size() for t in a["model"].values())
    assert adapter_bytes < 0.1 * base_bytes, (adapter_bytes, base_bytes)

    # sample.py: the base from the recorded path, the adapter merged in; the greedy text of the unmerged model.
    # (A larger random adapter than 10 steps make, so that its text differs from the base's.)
    torch.manual_seed(0)
    os.makedirs(root / "out-sample", exist_ok=True)
    adapter = {name: torch.randn_like(t) * 0.5 for name, t in a["model"].items()}
    torch.save(a | {"model": adapter}, root / "out-sample" / "ckpt.pt")
    monkeypatch.chdir(root)
    sample.main(["--out_dir=out-sample", "--start=ROMEO:", "--temperature=0", "--max_new_tokens=12",
                 "--num_samples=1", "--device=cpu", "--compile=False", "--stop_at_eos=False"])
    printed = capsys.readouterr().out.split("\n---------------")[0].strip()
    model = llama.Llama.from_pretrained(str(model_dir))
    model.crop_block_size(32)
    llama.add_lora(model, 4, 16.0, 0.1, "q,v,up")
    llama.load_lora_state_dict(model, adapter)
    tokenizer = prepare_data.load_tokenizer(a["tokenizer"])
    ids = torch.tensor([tokenizer.encode("ROMEO:")])
    expected = tokenizer.decode(model.eval().generate(ids, 12, temperature=0.0)[0].tolist())
    base = llama.Llama.from_pretrained(str(model_dir)).eval()
    assert printed == expected.strip() != tokenizer.decode(base.generate(ids, 12, temperature=0.0)[0].tolist()).strip()

    # Without its base the adapter cannot be used: one line saying where the base was expected.
    moved = root / "hf-llama-moved"
    shutil.move(model_dir, moved)
    try:
        with pytest.raises(SystemExit) as error:
            sample.main(["--out_dir=out-straight", "--start=ROMEO:", "--device=cpu", "--compile=False"])
        assert str(error.value).startswith(f"error: {os.path.join('out-straight', 'ckpt.pt')} holds a LoRA adapter "
                                           f"of {str(model_dir)!r}, which cannot be loaded")
        assert "\n" not in str(error.value)
    finally:
        shutil.move(moved, model_dir)


@pytest.mark.parametrize("args, message", [
    (["--lora_rank=4"], "error: lora_rank=4 adapts a pretrained model, but init_from='scratch'"),
    (["--lora_rank=-1"], "error: config key 'lora_rank' must be >= 0"),
    (["--lora_rank=4", "--lora_targets=q,qkv", "INIT"], "error: LoRA: unknown LoRA target 'qkv'; lora_targets takes"),
])
def test_bad_lora_settings_are_one_line_errors(finetune, monkeypatch, capsys, args, message):
    root, model_dir = finetune
    args = [f"--init_from={model_dir}" if a == "INIT" else a for a in args]
    with pytest.raises(SystemExit) as error:
        train(root, monkeypatch, capsys, *args, "--max_iters=1", "--out_dir=out-bad")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_resumed_lora_run_keeps_its_lora_keys(finetune, monkeypatch, capsys):
    root, model_dir = finetune
    train(root, monkeypatch, capsys, f"--init_from={model_dir}", "--lora_rank=2", "--max_iters=2", "--eval_interval=2",
          "--out_dir=out-keys")
    with pytest.raises(SystemExit, match="lora_rank=8 conflicts with the checkpoint"):
        train(root, monkeypatch, capsys, "--init_from=resume", "--lora_rank=8", "--max_iters=4", "--out_dir=out-keys")
