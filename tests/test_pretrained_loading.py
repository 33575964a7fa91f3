"""Loading Hugging Face checkpoints in bounded memory: built on the meta device, weights taken from the
memory-mapped safetensors files, in float32 or kept in 16 bits."""
import json

import pytest
import torch

import gpt
import llama

transformers = pytest.importorskip("transformers")


def save_llama(directory, tie, dtype):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=tie, rope_theta=500.0)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.to(dtype).save_pretrained(directory)
    return hf.float()


@pytest.mark.parametrize("tie", [False, True])
def test_llama_loads_in_bfloat16_with_float32_rope(tmp_path, tie):
    hf = save_llama(tmp_path, tie, torch.bfloat16)
    model = llama.Llama.from_pretrained(str(tmp_path), dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.inv_freq.dtype == torch.float32 and model.inv_freq.device.type == "cpu"
    torch.testing.assert_close(model.inv_freq, llama.rope_inverse_frequencies(model.config))
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        ours = model(idx)[0].float()
        reference = hf.to(torch.bfloat16)(idx).logits.float()
    torch.testing.assert_close(ours, reference, atol=2e-2, rtol=0)
    # A float32 load of the same bfloat16 file gives the float32 model of those weights.
    as_float = llama.Llama.from_pretrained(str(tmp_path)).eval()
    assert {p.dtype for p in as_float.parameters()} == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(as_float(idx)[0], hf.float()(idx).logits, atol=1e-4, rtol=0)


def test_same_dtype_weights_are_views_of_the_file_not_copies(tmp_path):
    # A float32 file loaded as float32: no parameter owns fresh memory until it is written to.
    save_llama(tmp_path, False, torch.float32)
    model = llama.Llama.from_pretrained(str(tmp_path))
    path = tmp_path / "model.safetensors"
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    # Every parameter sits at its own byte offset of one mapping of the file: address - offset is the
    # same for all of them (the mapping's start).
    params = dict(model.named_parameters())
    bases = {params[name].data_ptr() - info["data_offsets"][0] for name, info in header.items() if name in params}
    assert len(bases) == 1 and len(params) == len(header) - ("__metadata__" in header)
    file_views = llama.read_safetensors(str(path))
    with torch.no_grad():  # and training (writing) them changes memory, never the file
        model.lm_head.weight.add_(1.0)
    reread = llama.read_safetensors(str(tmp_path / "model.safetensors"))
    assert torch.equal(reread["lm_head.weight"], file_views["lm_head.weight"])


def test_gpt2_loads_tied_and_transposed_in_bfloat16(tmp_path):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                                              vocab_size=101)).eval()
    hf.save_pretrained(tmp_path)
    model = gpt.GPT.from_pretrained(str(tmp_path), dtype=torch.bfloat16).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(p.is_contiguous() for p in model.parameters())
    idx = torch.randint(0, 101, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0].float(), hf.to(torch.bfloat16)(idx).logits.float(), atol=2e-2, rtol=0)


def test_sample_reads_a_hub_models_type_before_downloading_weights(tmp_path, monkeypatch, capsys):
    # An architecture sample.py cannot load is refused after fetching config.json alone.
    import requests

    import sample

    requested = []

    class Response:
        def raise_for_status(self):
            pass

        def json(self):
            return {"model_type": "mamba"}

    monkeypatch.setattr(requests, "get", lambda url, **kwargs: requested.append(url) or Response())
    monkeypatch.setenv("NANO_MODELS_CACHE", str(tmp_path))
    with pytest.raises(SystemExit, match="holds a 'mamba' model"):
        sample.main(["--init_from=someone/some-mamba", "--device=cpu"])
    assert requested == ["https://huggingface.co/someone/some-mamba/resolve/main/config.json"]
