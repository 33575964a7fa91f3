"""activation_checkpointing=True: each block's activations are recomputed in backward, not stored.

Checkpointing changes what is kept in memory, never what is computed: the loss and every parameter's
gradient must equal those of the ordinary path, with dropout too (the non-reentrant checkpoint
restores the RNG state before its rerun, so the rerun draws the same masks). And the training key
must reach the model: a short run must go through torch.utils.checkpoint and log the same losses.
"""
import re

import pytest
import torch

import bert
import gpt
import llama
import olmo
import prepare_data
import t5

TINY_MODELS = {
    "gpt": lambda dropout: gpt.GPT(gpt.GPTConfig(block_size=16, vocab_size=50, n_layer=3, n_head=2, n_embd=32,
                                                 dropout=dropout)),
    "llama": lambda dropout: llama.Llama(llama.LlamaConfig(block_size=16, vocab_size=50, n_layer=3, n_head=4,
                                                           n_kv_head=2, n_embd=32, hidden_dim=48, dropout=dropout)),
    # Sliding-window layers among full ones: the masks and both RoPE tables pass through checkpoint.
    "olmo": lambda dropout: olmo.OLMo(olmo.OLMoConfig(block_size=16, vocab_size=50, n_layer=4, n_head=4, n_kv_head=2,
                                                      n_embd=32, hidden_dim=48, sliding_window=4, dropout=dropout)),
    # The encoders: bert.py's blocks see a padding mask; t5.py checkpoints its encoder and decoder blocks.
    "bert": lambda dropout: bert.Bert(bert.BertConfig(block_size=16, vocab_size=50, n_layer=3, n_head=2, n_embd=32,
                                                      n_inner=64, pooler=False, dropout=dropout)),
    "t5": lambda dropout: t5.T5(t5.T5Config(block_size=16, target_block_size=16, vocab_size=50, n_layer=2,
                                            n_decoder_layer=2, n_head=2, n_embd=32, head_dim=16, n_ff=64,
                                            dropout=dropout)),
}
TINY_RUNS = {
    "gpt": (gpt, ["--n_layer=2", "--n_head=2", "--n_embd=32"]),
    "llama": (llama, ["--n_layer=2", "--n_head=4", "--n_kv_head=2", "--n_embd=32", "--multiple_of=16"]),
    "olmo": (olmo, ["--n_layer=2", "--n_head=4", "--n_kv_head=2", "--n_embd=32", "--multiple_of=16"]),
    "bert": (bert, ["--n_layer=2", "--n_head=2", "--n_embd=32"]),
    # One encoder and one decoder block: two checkpointed blocks per forward, as the others' two layers.
    "t5": (t5, ["--dataset=numbers", "--n_layer=1", "--n_decoder_layer=1", "--n_head=2", "--n_embd=32",
                "--head_dim=16", "--n_ff=64"]),
}
COMMON_RUN = ["--dataset=tiny", "--device=cpu", "--compile=False", "--dtype=float32", "--block_size=32",
              "--batch_size=4", "--gradient_accumulation_steps=1", "--eval_interval=1000", "--eval_iters=1",
              "--log_interval=1", "--max_iters=2", "--dropout=0.1"]


def loss_and_gradients(model, checkpointing, seed):
    """One forward and backward in training mode: (loss, {parameter name: gradient})."""
    torch.manual_seed(0)
    idx = torch.randint(0, 50, (2, 16))
    targets = torch.randint(0, 50, (2, 16))
    model.train()
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing = checkpointing
    torch.manual_seed(seed)  # the dropout masks of both paths start from the same state
    if isinstance(model, t5.T5):  # an encoder-decoder: the input, the decoder's input, its targets
        attention_mask = torch.ones_like(idx)
        attention_mask[1, 12:] = 0  # padding in one row: the mask goes through the checkpoint too
        _, loss = model(idx, targets, attention_mask=attention_mask, targets=targets)
    elif isinstance(model, bert.Bert):
        attention_mask = torch.ones_like(idx)
        attention_mask[1, 12:] = 0
        _, loss = model(idx, targets, attention_mask=attention_mask)
    else:
        _, loss = model(idx, targets)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_checkpointed_gradients_equal_stored_ones(name, dropout):
    torch.manual_seed(1)
    model = TINY_MODELS[name](dropout)
    stored_loss, stored = loss_and_gradients(model, checkpointing=False, seed=7)
    recomputed_loss, recomputed = loss_and_gradients(model, checkpointing=True, seed=7)
    torch.testing.assert_close(recomputed_loss, stored_loss, rtol=1.3e-6, atol=1e-5)
    assert set(recomputed) == set(stored)
    for parameter, gradient in stored.items():
        assert gradient is not None, parameter
        torch.testing.assert_close(recomputed[parameter], gradient, rtol=1.3e-6, atol=1e-5, msg=parameter)
    if dropout > 0:  # the masks were really random: another seed gives another loss
        other_loss, _ = loss_and_gradients(model, checkpointing=True, seed=8)
        assert not torch.equal(other_loss, stored_loss)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_text_path):
    root = tmp_path_factory.mktemp("activation_checkpointing")
    prepare_data.prepare("tiny", input_path=small_text_path, tokenizer="char", data_root=str(root / "data"))
    prepare_data.prepare("numbers", data_root=str(root / "data"))  # t5.py's task: digits in, words out
    return root


@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_the_training_key_reaches_the_model_and_keeps_the_losses(name, workdir, monkeypatch, capsys):
    script, architecture = TINY_RUNS[name]
    monkeypatch.chdir(workdir)
    checkpointed_blocks = []
    checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(block, *args, **kwargs):
        checkpointed_blocks.append(block)
        return checkpoint(block, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    losses = {}
    for checkpointing in (False, True):
        script.main(COMMON_RUN + architecture + [f"--out_dir=out-{name}-{checkpointing}",
                                                  f"--activation_checkpointing={checkpointing}"])
        log = capsys.readouterr().out
        assert f'"activation_checkpointing": {str(checkpointing).lower()}' in log  # parse_config took it
        losses[checkpointing] = re.findall(r"iter \d+: loss ([0-9.]+)", log)
        # Off: no block is checkpointed. On: every block of both iterations' forwards is.
        assert len(checkpointed_blocks) == (2 * 2 if checkpointing else 0)
    assert len(losses[True]) == 2 and losses[True] == losses[False]
