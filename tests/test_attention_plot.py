"""sample.py --attention_plot: the attention weights it draws are the ones the model computes.

sample.keep_attention_weights runs every attention layer on its manual path and keeps the weights
its attention-weights function returns. Here they are checked against softmax(Q K^T / sqrt(d))
recomputed from the model's own projections of the layer's input (GPT-2; Llama with RoPE and grouped
key/value heads; OLMo with ALiBi's distance bias; T5's cross-attention, unscaled, over the encoder
output); the model's logits must
not change; and everything is put back afterwards. Then the command line: a PNG for a trained
gpt.py and t5.py checkpoint, and the one-line errors.
"""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import gpt
import llama
import olmo
import prepare_data
import sample
import t5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layer_input(module, run):
    """The positional and keyword arguments module was called with during run()."""
    seen = {}

    def hook(_, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen["args"], seen["kwargs"]


def causal_softmax(q, k):
    T_q, T_k = q.size(-2), k.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    mask = torch.ones(T_q, T_k, dtype=torch.bool).tril(diagonal=T_k - T_q)
    return F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def test_gpt_weights_equal_softmax_of_its_own_queries_and_keys():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50)).eval()
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        expected_logits, _ = model(idx)
        with sample.keep_attention_weights(model) as kept:
            logits, _ = model(idx)
        (x, *_), _ = layer_input(model.transformer.h[1], lambda: model(idx))
        attn = model.transformer.h[1].attn
        q, k, _ = attn.c_attn(model.transformer.h[1].ln_1(x)).split(32, dim=2)
        q, k = (t.view(2, 12, 4, 8).transpose(1, 2) for t in (q, k))
    assert list(kept) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert kept["transformer.h.1.attn"].shape == (2, 4, 12, 12)
    torch.testing.assert_close(kept["transformer.h.1.attn"], causal_softmax(q, k), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)  # the manual path, same numbers
    # Everything is put back: the fused path and the script's own function.
    assert all(block.attn.attention == "sdpa" for block in model.transformer.h)
    assert gpt.attention_weights.__name__ == "attention_weights"


def test_llama_weights_with_rope_and_grouped_heads():
    torch.manual_seed(0)
    config = llama.LlamaConfig(block_size=32, vocab_size=71, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, hidden_dim=48)
    model = llama.Llama(config).eval()
    idx = torch.randint(0, 71, (1, 10))
    block = model.model.layers[0]
    with torch.no_grad():
        with sample.keep_attention_weights(model) as kept:
            model(idx)
        (x, cos, sin, *_), _ = layer_input(block, lambda: model(idx))
        attn = block.self_attn
        h = block.input_layernorm(x)
        q = attn.q_proj(h).view(1, 10, 4, 8).transpose(1, 2)
        k = attn.k_proj(h).view(1, 10, 2, 8).transpose(1, 2)
        q, k = llama.apply_rope(q, cos, sin), llama.apply_rope(k, cos, sin)
        k = k.repeat_interleave(2, dim=1)  # key head j serves query heads 2j and 2j + 1
    name = [n for n in kept if n.endswith("0.self_attn")][0]
    torch.testing.assert_close(kept[name], causal_softmax(q, k), atol=1e-6, rtol=1e-5)


def test_olmo_alibi_weights_include_its_distance_bias():
    # olmo.py builds its masks for the path its config names, so the capture switches the config too;
    # with ALiBi the mask is the per-head distance bias itself (-inf where a query may not look).
    torch.manual_seed(0)
    config = olmo.OLMoConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, vocab_size=30, block_size=16, pos_emb="alibi")
    model = olmo.OLMo(config).eval()
    idx = torch.randint(0, 30, (1, 9))
    attn = model.model.layers[1].self_attn
    with torch.no_grad():
        expected_logits, _ = model(idx)
        with sample.keep_attention_weights(model) as kept:
            logits, _ = model(idx)
        (x, rope, bias, *_), _ = layer_input(attn, lambda: model(idx))
        q, k = attn.q_proj(x), attn.k_proj(x)
        if attn.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = q.view(1, 9, 4, 8).transpose(1, 2)
        k = k.view(1, 9, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
        expected = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(8) + bias, dim=-1)
    assert rope is None and bias.dtype != torch.bool
    torch.testing.assert_close(kept["model.layers.1.self_attn"], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    assert model.config.attention == "sdpa" and attn.attention == "sdpa"


def test_t5_cross_attention_weights_over_the_encoder_output():
    torch.manual_seed(0)
    config = t5.T5Config(block_size=64, target_block_size=48, vocab_size=53, n_layer=2, n_decoder_layer=2, n_head=4,
                         n_embd=32, head_dim=8, n_ff=64, num_buckets=8, max_distance=20, dropout=0.0)
    model = t5.T5(config).eval()
    source, target = torch.randint(2, 53, (1, 9)), torch.randint(2, 53, (1, 5))
    cross = model.decoder.blocks[1].cross_attn
    with torch.no_grad():
        with sample.keep_attention_weights(model) as kept:
            model(source, target)
        (x, bias), kwargs = layer_input(cross, lambda: model(source, target))
        q, k = cross.heads(cross.q(x)), cross.heads(cross.k(kwargs["source"]))
        expected = F.softmax(q @ k.transpose(-2, -1) + bias, dim=-1)  # T5: no 1/sqrt(d)
    assert kept["decoder.blocks.1.cross_attn"].shape == (1, 4, 5, 9)
    torch.testing.assert_close(kept["decoder.blocks.1.cross_attn"], expected, atol=1e-6, rtol=1e-5)
    assert t5.t5_attention_weights.__name__ == "t5_attention_weights"


# -----------------------------------------------------------------------------
# The command line

TINY_GPT = ["--dataset=tiny", "--device=cpu", "--compile=False", "--n_layer=2", "--n_head=4", "--n_embd=32",
            "--block_size=32", "--batch_size=8", "--gradient_accumulation_steps=1", "--eval_iters=2",
            "--max_iters=10", "--eval_interval=10", "--out_dir=out-gpt"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_text_path):
    """A briefly trained gpt.py and t5.py (on the numbers task) under one directory."""
    root = tmp_path_factory.mktemp("attention")
    prepare_data.prepare("tiny", input_path=small_text_path, tokenizer="char", data_root=str(root / "data"))
    prepare_data.prepare_numbers(str(root / "data" / "numbers"), n_train=500, n_val=50)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        gpt.main(TINY_GPT)
        t5.main(["--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=1", "--n_decoder_layer=2",
                 "--n_head=2", "--n_embd=32", "--head_dim=16", "--n_ff=64", "--block_size=16",
                 "--target_block_size=16", "--batch_size=8", "--eval_iters=1", "--eval_exact_match=0",
                 "--max_iters=4", "--eval_interval=4", "--out_dir=out-t5"])
    finally:
        os.chdir(cwd)
    return root


def run_sample(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=120)


def png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_plot_of_a_gpt_checkpoint_and_of_a_t5_cross_attention(workdir, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(workdir)
    drawn = []
    original = sample.draw_attention
    monkeypatch.setattr(sample, "draw_attention", lambda weights, *rest: (drawn.append(weights), original(weights, *rest)))
    sample.main(["--out_dir=out-gpt", "--start=ROMEO: But soft", "--attention_plot=attn.png", "--layer=0",
                 "--device=cpu"])
    assert "wrote attn.png" in capsys.readouterr().out
    assert drawn[-1].shape == (4, 15, 15)  # every head, every prompt character
    assert torch.all(drawn[-1].triu(diagonal=1) == 0)  # causal: nothing above the diagonal
    torch.testing.assert_close(drawn[-1].sum(-1), torch.ones(4, 15))
    width, height = png_size(workdir / "attn.png")
    assert width > 300 and height > 300
    # T5: the output the model decodes, over the input's characters and its </s>.
    sample.main(["--out_dir=out-t5", "--start=4321", "--attention_plot=cross.png", "--device=cpu"])
    assert "wrote cross.png" in capsys.readouterr().out
    n_head, _, T_k = drawn[-1].shape
    assert n_head == 2 and T_k == len("4,321") + 1
    png_size(workdir / "cross.png")


def test_attention_plot_errors_are_one_line(workdir):
    for args, message in [
        (["--layer=2", "--attention_plot=a.png"], "error: --layer=2: this model has 2 attention layers, 0 to 1"),
        (["--layer=1"], "error: --layer chooses the layer --attention_plot draws"),
        (["--attention_plot=a.txt"], "name a .png (or .svg, .pdf) file"),
    ]:
        result = run_sample("--out_dir=out-gpt", "--start=ROMEO", "--device=cpu", *args, cwd=workdir)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (workdir / "a.png").exists()


def test_missing_matplotlib_is_a_clear_message(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--out_dir=out-gpt", "--start=ROMEO", "--attention_plot=b.png", "--device=cpu"])
    assert str(exit_info.value) == ("error: --attention_plot draws with matplotlib, which is not installed: "
                                    "pip install matplotlib")
    assert not (workdir / "b.png").exists()
