"""int8 weight-only quantization (quantize_int8, Int8Linear and Int8Embedding at the end of Part 1 of gpt.py,
llama.py and olmo.py, identical in the three; sample.py --quantize=int8).

The quantized numbers are checked exactly against a per-row computation written out here; the layer's
output against the product with the dequantized weight it stands for; whole tiny models for the KV-cache
path (cached greedy generation equals an uncached argmax loop of the same quantized model) and for their
distance from float32 (KL divergence of the next-token distributions, bounded by measured values with
margin); sample.py end to end.
"""
import copy
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gpt
import llama
import olmo
import prepare_data
import sample


def naive_quantize(w):
    """Row by row, as the docstring of Int8Linear states it: s = max|row| / 127 (1 for a zero row),
    q = round(row / s), in float32 as Int8Linear computes them."""
    q_rows, scales = [], []
    for row in w.float():
        s = row.abs().max() / 127
        s = s if s > 0 else torch.tensor(1.0)
        q_rows.append(torch.round(row / s).clamp(-127, 127).to(torch.int8))
        scales.append(s)
    return torch.stack(q_rows), torch.stack(scales)


def test_quantized_weights_equal_the_per_row_computation_and_obey_the_error_bound():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    with torch.no_grad():
        linear.weight[3] = 0.0  # a zero row: scale 1, all q 0
        linear.weight[5, 7] = 3.0  # an outlier sets its row's scale alone
    layer = gpt.Int8Linear(linear)
    q, s = naive_quantize(linear.weight.detach())
    assert layer.weight.dtype == torch.int8 and layer.weight.shape == (40, 96)
    assert torch.equal(layer.weight, q) and torch.equal(layer.scale, s)
    assert layer.scale[3] == 1 and not layer.weight[3].any()
    nonzero = [i for i in range(40) if i != 3]
    assert (layer.weight[nonzero].abs().amax(dim=1) == 127).all()  # each row's largest weight maps to +-127
    # |w - q s| <= s / 2, in float64; the 1e-5 covers float32's rounding of w / s before round().
    error = (linear.weight.double() - layer.weight.double() * layer.scale.double()[:, None]).abs()
    assert (error <= layer.scale.double()[:, None] / 2 * (1 + 1e-5)).all()
    assert error[5].max() > error[6].max()  # the outlier's row is coarser, as the bound says
    assert layer.bias is linear.bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_multiplies_by_the_dequantized_weight(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48).to(dtype)
    layer = gpt.Int8Linear(linear)
    x = torch.randn(3, 5, 64, dtype=dtype)
    y = layer(x)
    assert y.shape == (3, 5, 48) and y.dtype == dtype
    # The CPU kernel rounds its input, the scales and its output to bfloat16 (see Int8Linear.forward):
    # against the product of the bfloat16 input with q * s in float64, the error is bfloat16's
    # rounding (2^-9 relative, per rounding; a bfloat16 bias adds one more) and nothing more.
    reference = x.bfloat16().double() @ layer.dequantized_weight(torch.float64).T + linear.bias.double()
    torch.testing.assert_close(y.double(), reference, rtol=2 ** -7, atol=2 ** -7 * reference.abs().max().item())
    # Against the float layer: within the weights' rounding. Measured: max error 0.011 (float32) and
    # 0.016 (bfloat16) on outputs of rms 0.33; bound 0.04.
    assert (y.double() - linear(x).double()).abs().max() < 0.04
    # A forgotten scale or bias would be far outside both.
    assert (F.linear(x.double(), layer.weight.double()) - reference).abs().max() > 1


def scaled_up(model, factor):
    """Weights std 0.02 * factor, so the logits are peaked enough for argmax and KL to mean something."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(factor)
    return model.eval()


def tiny(script):
    torch.manual_seed(0)
    if script == "gpt":
        model = gpt.GPT(gpt.GPTConfig(block_size=48, vocab_size=71, n_layer=2, n_head=4, n_embd=32))
    elif script == "llama":
        model = llama.Llama(llama.LlamaConfig(block_size=48, vocab_size=71, n_layer=2, n_head=4, n_kv_head=2,
                                              n_embd=32, hidden_dim=48, tie_embeddings=True))
    else:  # OLMo 2: untied embeddings, QK-norm
        model = olmo.OLMo(olmo.OLMoConfig(block_size=48, vocab_size=71, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                          hidden_dim=48, rope_theta=500.0))
    return scaled_up(model, 15)


MODULES = {"gpt": gpt, "llama": llama, "olmo": olmo}


@pytest.mark.parametrize("script", ["gpt", "llama", "olmo"])
def test_quantized_model_generates_with_the_cache_and_stays_close_to_float32(script):
    model = tiny(script)
    quantized = MODULES[script].quantize_int8(copy.deepcopy(model))
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert quantized.lm_head.weight.dtype == torch.int8
    embedding = quantized.transformer.wte if script == "gpt" else quantized.model.embed_tokens
    if script == "olmo":  # untied: the embedding is only looked up and stays float
        assert isinstance(embedding, nn.Embedding) and embedding.weight.dtype == torch.float32
    else:  # tied: the output layer's int8 matrix serves the lookup too
        assert type(embedding).__name__ == "Int8Embedding" and embedding.head is quantized.lm_head

    torch.manual_seed(1)
    prompt = torch.randint(0, 71, (2, 5))
    cached = quantized.generate(prompt, 30, temperature=0.0)
    idx = prompt
    with torch.no_grad():
        for _ in range(30):
            idx = torch.cat((idx, quantized(idx)[0][:, -1:].argmax(dim=-1)), dim=1)
    assert torch.equal(cached, idx)

    tokens = torch.randint(0, 71, (4, 48))
    with torch.no_grad():
        log_p = F.log_softmax(model(tokens)[0].double(), dim=-1)
        log_q = F.log_softmax(quantized(tokens)[0].double(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # KL(float32 || int8), one per position
    # Measured on these models (logits of std 1.7), in nats: max KL 0.0024 (gpt), 0.028 (llama), 0.0048
    # (olmo); mean 0.0005, 0.0029, 0.0007; the same argmax at 99%, 92%, 95% of positions. The float32
    # product with q * s instead of the bfloat16 kernel gave about the same (llama 0.028, 0.0024): the
    # weights' rounding, not the kernel's, dominates. Bounds at twice the largest.
    assert kl.max() < 0.06 and kl.mean() < 0.006, (kl.max(), kl.mean())
    assert (log_p.argmax(-1) == log_q.argmax(-1)).float().mean() > 0.85


def test_tied_embedding_lookup_is_the_dequantized_row():
    model = tiny("gpt")
    quantized = gpt.quantize_int8(copy.deepcopy(model))
    ids = torch.tensor([[0, 5, 70]])
    rows = quantized.lm_head.dequantized_weight()[ids]
    assert torch.equal(quantized.transformer.wte(ids), rows)
    assert (rows - model.transformer.wte(ids)).abs().max() <= quantized.lm_head.scale.max() / 2 * (1 + 1e-5)
    bf16 = gpt.quantize_int8(copy.deepcopy(model).to(torch.bfloat16))
    assert bf16.transformer.wte(ids).dtype == torch.bfloat16


# -----------------------------------------------------------------------------
# sample.py --quantize=int8


@pytest.fixture
def checkpoint(tmp_path, small_text):
    meta = prepare_data.char_meta(small_text)
    torch.manual_seed(0)
    config = llama.LlamaConfig(block_size=48, vocab_size=meta["vocab_size"], n_layer=2, n_head=4, n_kv_head=2,
                               n_embd=32, hidden_dim=48, tie_embeddings=True)
    model = scaled_up(llama.Llama(config), 15)
    torch.save({"model_type": "llama", "model_args": dataclasses.asdict(config), "model": model.state_dict(),
                "tokenizer": meta}, tmp_path / "ckpt.pt")
    return tmp_path, model, meta


def test_sample_py_quantizes(checkpoint, capsys):
    out_dir, model, meta = checkpoint
    options = [f"--out_dir={out_dir}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=20", "--temperature=0",
               "--device=cpu", "--stop_at_eos=False"]
    sample.main(options + ["--quantize=int8"])
    out, err = capsys.readouterr()
    # Every matrix (the tied one once) goes from 4 bytes a weight to 1, plus a float32 scale per row;
    # the norms' gains and RoPE's frequencies (a buffer) are unchanged.
    matrices = [p for p in model.parameters() if p.dim() == 2]
    rest = 4 * sum(p.numel() for p in model.parameters() if p.dim() < 2) + 4 * model.inv_freq.numel()
    before = 4 * sum(m.numel() for m in matrices) + rest
    after = sum(m.numel() + 4 * m.size(0) for m in matrices) + rest
    assert err == f"int8: weights {before:,} bytes -> {after:,} bytes\n"
    tokenizer = prepare_data.load_tokenizer(meta)
    quantized = llama.quantize_int8(copy.deepcopy(model))
    expected = quantized.generate(torch.tensor([tokenizer.encode("ROMEO:")]), 20, temperature=0.0)
    assert out == tokenizer.decode(expected[0].tolist()) + "\n---------------\n"
    sample.main(options + ["--quantize=int8", "--dtype=bfloat16"])  # autocast: the layers take bfloat16 inputs
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_sample_py_quantize_errors(tmp_path, small_text):
    with pytest.raises(SystemExit) as exit_info:
        sample.parse_args(["--quantize=int4"])
    assert str(exit_info.value) == "error: quantize='int4' must be 'none' or 'int8'"
    import bigram

    meta = prepare_data.char_meta(small_text)
    config = bigram.BigramConfig(vocab_size=meta["vocab_size"])
    torch.save({"model_type": "bigram", "model_args": dataclasses.asdict(config),
                "model": bigram.Bigram(config).state_dict(), "tokenizer": meta}, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit) as exit_info:
        sample.main([f"--out_dir={tmp_path}", "--quantize=int8", "--device=cpu"])
    assert str(exit_info.value) == ("error: --quantize=int8 applies to the decoders of gpt.py, llama.py and olmo.py; "
                                    "this is a Bigram model: drop --quantize")
