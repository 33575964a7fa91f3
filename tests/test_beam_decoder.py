"""Beam search for decoders (sample.py's decoder_beam_search and --beam_size > 1), checked against transformers.

Small random Hugging Face GPT-2, Llama and OLMo 3 (with sliding-window layers, so the reordered cache includes
olmo.py's SlidingWindowKVCache) are saved and loaded with our scripts' from_pretrained. Their end-of-sequence
token's output row is scaled up so that some beams finish before max_new_tokens: the hypotheses, the length
penalty and the early-stopping heuristic are then all exercised. The best beams must equal transformers'
generate(num_beams=N, do_sample=False, early_stopping=False) token for token, with the same scores.
"""
import pytest
import torch

import gpt
import llama
import olmo
import sample
from test_olmo import save_hf_olmo

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

VOCAB, EOS, MAX_NEW = 97, 5, 12


def make_eos_likely(hf, eos, scale):
    with torch.no_grad():
        hf.lm_head.weight[eos] *= scale


def save_hf_gpt2(directory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=EOS)
    hf = transformers.GPT2LMHeadModel(config).eval()
    # GPT-2's small initial weights make every logit near 0; point EOS's (tied) embedding along the final
    # norm's bias, which every position's output carries, so that EOS stands out but not always.
    with torch.no_grad():
        hf.transformer.ln_f.bias.normal_()
        hf.transformer.wte.weight[EOS] = 0.1 * hf.transformer.ln_f.bias
    hf.save_pretrained(directory)
    return hf


def save_hf_llama(directory, vocab_size=VOCAB, eos=EOS):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=None, eos_token_id=eos)
    hf = transformers.LlamaForCausalLM(config).eval()
    make_eos_likely(hf, eos, 1.8)
    hf.save_pretrained(directory)
    return hf


def save_hf_olmo3_sliding(directory):
    hf = save_hf_olmo(directory, 3, sliding_window=5)
    make_eos_likely(hf, EOS, 4.0)
    hf.save_pretrained(directory)
    return hf


MODELS = {"gpt2": (save_hf_gpt2, gpt.GPT), "llama": (save_hf_llama, llama.Llama),
          "olmo3-sliding": (save_hf_olmo3_sliding, olmo.OLMo)}


@pytest.fixture(scope="module", params=list(MODELS))
def models(request, tmp_path_factory):
    save, our_class = MODELS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    hf = save(directory)
    return hf, our_class.from_pretrained(str(directory)).eval()


def cut_at_eos(row, prompt_length):
    new = row[prompt_length:]
    return row[:prompt_length + new.index(EOS) + 1] if EOS in new else row


@pytest.mark.parametrize("beam_size, length_penalty, num_return_sequences", [(2, 1.0, 2), (4, 0.6, 3), (4, 1.5, 1)])
def test_beam_search_equals_transformers(models, beam_size, length_penalty, num_return_sequences):
    hf, ours = models
    prompt = torch.randint(6, VOCAB, (1, 7), generator=torch.Generator().manual_seed(2))
    expected = hf.generate(prompt, max_new_tokens=MAX_NEW, num_beams=beam_size, do_sample=False,
                           length_penalty=length_penalty, early_stopping=False,
                           num_return_sequences=num_return_sequences, eos_token_id=EOS, pad_token_id=EOS,
                           return_dict_in_generate=True, output_scores=True)
    sequences, scores = sample.decoder_beam_search(ours, prompt, MAX_NEW, beam_size, length_penalty=length_penalty,
                                                   eos_token_id=EOS, num_return_sequences=num_return_sequences)
    got = [cut_at_eos(row, 7) for row in sequences.tolist()]
    assert got == [cut_at_eos(row, 7) for row in expected.sequences.tolist()]
    torch.testing.assert_close(scores, expected.sequences_scores.float(), rtol=1e-4, atol=1e-4)


def test_some_beams_finish_early(models):
    """The comparison above means something only if hypotheses end at EOS before max_new_tokens."""
    _, ours = models
    prompt = torch.randint(6, VOCAB, (1, 7), generator=torch.Generator().manual_seed(2))
    sequences, _ = sample.decoder_beam_search(ours, prompt, MAX_NEW, 4, eos_token_id=EOS, num_return_sequences=4)
    assert any(len(cut_at_eos(row, 7)) < 7 + MAX_NEW for row in sequences.tolist())


def test_beam_size_one_is_greedy(models):
    _, ours = models
    prompt = torch.randint(6, VOCAB, (1, 7), generator=torch.Generator().manual_seed(4))
    sequences, _ = sample.decoder_beam_search(ours, prompt, MAX_NEW, 1, eos_token_id=EOS)
    greedy = ours.generate(prompt, MAX_NEW, temperature=0.0, eos_token_id=EOS)
    assert cut_at_eos(sequences[0].tolist(), 7) == cut_at_eos(greedy[0].tolist(), 7)


def test_beam_search_stops_at_block_size(models):
    _, ours = models
    block_size = ours.config.block_size
    prompt = torch.randint(6, VOCAB, (1, block_size - 3), generator=torch.Generator().manual_seed(5))
    sequences, _ = sample.decoder_beam_search(ours, prompt, 50, 2)  # no EOS: every beam runs to the end
    assert sequences.shape == (1, block_size)
    with pytest.raises(ValueError, match="no room to generate"):
        sample.decoder_beam_search(ours, torch.zeros((1, block_size), dtype=torch.long), 5, 2)


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def llama_with_tokenizer(tmp_path_factory, small_text):
    """A random HF Llama with a byte-level tokenizer.json, its end-of-text token made likely."""
    directory = tmp_path_factory.mktemp("llama_cli")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([small_text], trainer)
    tok.save(str(directory / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    hf = save_hf_llama(directory, tok.get_vocab_size(), eos)
    return directory, hf, tok, eos


def test_command_line_prints_the_best_beams(llama_with_tokenizer, capsys):
    directory, hf, tok, eos = llama_with_tokenizer
    prompt = "First Citizen:"
    ids = tok.encode(prompt).ids
    out = hf.generate(torch.tensor([ids]), max_new_tokens=10, num_beams=3, do_sample=False, length_penalty=0.8,
                      early_stopping=False, num_return_sequences=2, eos_token_id=eos, pad_token_id=eos)
    expected = ""
    for row in out.tolist():
        new = row[len(ids):]
        new = new[:new.index(eos)] if eos in new else new
        expected += tok.decode(ids + new) + "\n---------------\n"
    sample.main([f"--init_from={directory}", f"--start={prompt}", "--beam_size=3", "--num_samples=2",
                 "--length_penalty=0.8", "--max_new_tokens=10", "--device=cpu"])
    assert capsys.readouterr().out == expected


def test_command_line_notes_the_block_size_limit(llama_with_tokenizer, capsys):
    directory = llama_with_tokenizer[0]
    sample.main([f"--init_from={directory}", "--start=Hi", "--beam_size=2", "--max_new_tokens=500", "--device=cpu"])
    captured = capsys.readouterr()
    assert "note: beam search stops at block_size=64" in captured.err
    assert captured.out.count("---------------") == 2  # the default num_samples=3, lowered to beam_size


@pytest.mark.parametrize("args, message", [
    (["--beam_size=4", "--temperature=0.7"], "--temperature shapes sampling"),
    (["--beam_size=4", "--top_k=50"], "--top_k shapes sampling"),
    (["--beam_size=4", "--top_p=0.9"], "--top_p shapes sampling"),
    (["--beam_size=4", "--repetition_penalty=1.2"], "--repetition_penalty shapes sampling"),
    (["--beam_size=4", "--chat=True", "--init_from=x"], "--chat samples each reply"),
    (["--beam_size=2", "--num_samples=3"], "num_samples=3 must be at most beam_size=2"),
    (["--beam_size=2", "--attention_plot=a.png"], "--attention_plot draws"),
    (["--length_penalty=0.5"], "--length_penalty ranks the outputs of beam search"),
])
def test_options_that_do_not_apply_are_one_line_errors(args, message):
    with pytest.raises(SystemExit) as exit_info:
        sample.parse_args(args)
    assert message in str(exit_info.value) and "\n" not in str(exit_info.value)


def test_beam_size_on_a_model_without_beam_search_is_an_error(tmp_path):
    import bigram

    model = bigram.Bigram(bigram.BigramConfig(vocab_size=5))
    torch.save({"model_type": "bigram", "model_args": {"vocab_size": 5}, "model": model.state_dict(),
                "tokenizer": {"tokenizer": "char", "stoi": {c: i for i, c in enumerate("abcde")},
                              "itos": dict(enumerate("abcde"))}}, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit, match="this is a Bigram model: drop --beam_size"):
        sample.main([f"--out_dir={tmp_path}", "--start=ab", "--beam_size=2", "--device=cpu"])
