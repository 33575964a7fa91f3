"""torch.compile must see each model as one graph: in training and in generation with the KV cache.

A graph break is not an error: torch.compile silently runs the rest of the function eagerly, and
per-layer frames then recompile for every layer index until the recompile limit, after which
compiled code is not used at all. So `--compile=True` would quietly be slower than not compiling
(this happened: `is_causal` computed from the cache length was a symbolic bool under
dynamic=True, which the attention kernel refuses). fullgraph=True turns any break into an error.

The "eager" backend runs dynamo's tracing (where graph breaks happen) without inductor's code
generation, so these tests need no C++ compiler and take seconds.
"""
import pytest
import torch

import bert
import gpt
import llama
import olmo
import t5

DECODERS = {
    "gpt": lambda: gpt.GPT(gpt.GPTConfig(n_layer=2, n_head=4, n_embd=32, vocab_size=97, block_size=64)),
    "llama": lambda: llama.Llama(llama.LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, vocab_size=97,
                                                   block_size=64)),
    "olmo-rope": lambda: olmo.OLMo(olmo.OLMoConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, vocab_size=97,
                                                   block_size=64)),
    "olmo-alibi": lambda: olmo.OLMo(olmo.OLMoConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, vocab_size=97,
                                                    block_size=64, pos_emb="alibi")),
}


def one_graph(function, dynamic):
    torch._dynamo.reset()  # no graphs cached from another test
    return torch.compile(function, backend="eager", fullgraph=True, dynamic=dynamic)


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_training_forward_is_one_graph(name):
    torch.manual_seed(0)
    model = DECODERS[name]()
    idx = torch.randint(0, 97, (2, 16))
    _, expected_loss = model(idx, targets=idx)
    _, loss = one_graph(model, dynamic=False)(idx, targets=idx)
    torch.testing.assert_close(loss, expected_loss)
    loss.backward()  # the backward pass is traced too
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", DECODERS)
def test_cached_generation_is_one_graph_per_step_kind(name):
    """sample.py --compile=True compiles forward with dynamic=True and generate() calls it: once
    for the prompt (empty cache) and then once per new token (a growing cache)."""
    torch.manual_seed(0)
    model = DECODERS[name]().eval()
    prompt = torch.randint(0, 97, (2, 9))
    expected = model.generate(prompt, 12, temperature=0.0)
    model.forward = one_graph(model.forward, dynamic=True)
    assert torch.equal(model.generate(prompt, 12, temperature=0.0), expected)


def test_bert_forward_is_one_graph():
    torch.manual_seed(0)
    model = bert.Bert(bert.BertConfig(n_layer=2, n_head=4, n_embd=32, n_inner=64, vocab_size=97, block_size=32))
    idx = torch.randint(0, 97, (2, 16))
    attention_mask = torch.ones(2, 16, dtype=torch.long)
    attention_mask[1, 11:] = 0  # a padded row
    expected = model.eval()(idx, attention_mask=attention_mask)[0]
    torch.testing.assert_close(one_graph(model, dynamic=False)(idx, attention_mask=attention_mask)[0], expected)


def test_t5_forward_is_one_graph():
    """t5.py trains compiled with dynamic=True: padded pairs change shape from batch to batch."""
    torch.manual_seed(0)
    model = t5.T5(t5.T5Config(n_layer=2, n_decoder_layer=2, n_head=4, n_embd=32, head_dim=8, n_ff=64,
                              vocab_size=97, block_size=32, target_block_size=32)).eval()
    source, target = torch.randint(2, 97, (2, 12)), torch.randint(2, 97, (2, 7))
    decoder_input = torch.cat((torch.zeros(2, 1, dtype=torch.long), target[:, :-1]), dim=1)
    expected = model(source, decoder_input, targets=target)[1]
    compiled = one_graph(model, dynamic=True)
    torch.testing.assert_close(compiled(source, decoder_input, targets=target)[1], expected)
    # another shape through the same graph
    compiled(source[:, :9], decoder_input[:, :5], targets=target[:, :5])
