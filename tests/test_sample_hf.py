"""sample.py with pretrained models' tokenizers, checked against transformers: the BOS token a tokenizer.json's
template puts before a prompt, and --chat=True.

Chat: a small random Hugging Face Llama is saved with a byte-level tokenizer.json trained here (with ChatML's
<|im_start|> and <|im_end|> as special tokens, the latter the model's eos_token_id) and a tokenizer_config.json
holding ChatML's template, as SmolLM2-Instruct ships them. Each turn's prompt ids must equal transformers'
apply_chat_template on the conversation so far, each reply must be HF generate()'s greedy continuation up to
<|im_end|>, and the replies must carry into the next turn's prompt.
"""
import importlib.util
import json

import pytest
import torch

import llama
import sample
from test_bpe_hf import SENTENCEPIECE_DECODER, train_sentencepiece_style

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, small_text):
    directory = tmp_path_factory.mktemp("chat_model")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([small_text], trainer)
    tok.save(str(directory / "tokenizer.json"))
    im_end = tok.token_to_id("<|im_end|>")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML, "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}), encoding="utf-8")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, bos_token_id=None, eos_token_id=im_end)
    hf = transformers.LlamaForCausalLM(config).eval()
    # A random model rarely ends its turn by itself: make <|im_end|> likely enough that some replies do.
    with torch.no_grad():
        hf.lm_head.weight[im_end] *= 1.5
    hf.save_pretrained(directory)
    return directory, hf


def run_chat(monkeypatch, directory, lines, *options):
    """Run sample.py --chat=True on typed lines; return the prompt ids of each turn."""
    typed = iter(lines)

    def fake_input(prompt=""):
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None
    monkeypatch.setattr("builtins.input", fake_input)
    prompts = []
    original = llama.Llama.generate

    def recording_generate(self, idx, *args, **kwargs):
        prompts.append(idx[0].tolist())
        return original(self, idx, *args, **kwargs)
    monkeypatch.setattr(llama.Llama, "generate", recording_generate)
    sample.main([f"--init_from={directory}", "--chat=True", "--temperature=0", "--max_new_tokens=12",
                 "--device=cpu", *options])
    return prompts


def test_chat_matches_transformers(chat_model, monkeypatch, capsys):
    pytest.importorskip("jinja2")
    directory, hf = chat_model
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    im_end = hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    turns = ["First Citizen: speak, speak.", "You are all resolved rather to die than to famish? 1234", "Resolved."]
    prompts = run_chat(monkeypatch, directory, turns + [""])
    assert len(prompts) == 3
    messages, replies, ended = [], [], []
    for turn, prompt in zip(turns, prompts):
        messages.append({"role": "user", "content": turn})
        expected = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
        assert prompt == list(expected)
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=im_end,
                          pad_token_id=0)[0, len(prompt):].tolist()
        ended.append(out[-1] == im_end)
        reply = hf_tokenizer.decode(out, skip_special_tokens=True)
        replies.append(reply)
        messages.append({"role": "assistant", "content": reply})
    printed = capsys.readouterr().out
    for reply in replies:
        assert reply + "\n---------------\n" in printed
    assert "<|im_start|>" not in printed  # only the replies are shown
    assert any(ended), "no reply ended at <|im_end|>: the test does not check stopping there"


def test_chat_errors(chat_model, tmp_path, monkeypatch):
    directory, _ = chat_model
    with pytest.raises(SystemExit, match="one reply at a time"):
        sample.main([f"--init_from={directory}", "--chat=True", "--num_samples=2"])
    with pytest.raises(SystemExit, match="--init_from"):
        sample.main(["--chat=True"])
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    with pytest.raises(SystemExit, match="neither chat_template.jinja nor a chat_template"):
        run_chat(monkeypatch, tmp_path, ["hi"])
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('only system messages, please') }}")
    if importlib.util.find_spec("jinja2") is not None:
        with pytest.raises(SystemExit, match="refused the conversation: only system messages"):
            run_chat(monkeypatch, tmp_path, ["hi"])
    monkeypatch.setitem(__import__("sys").modules, "jinja2", None)  # as if jinja2 were not installed
    with pytest.raises(SystemExit, match="pip install jinja2"):
        run_chat(monkeypatch, tmp_path, ["hi"])


def test_sample_llama2_style_prompt_gets_bos(tmp_path, capsys, small_text):
    # A Llama 2 / TinyLlama-style model: SentencePiece-style tokenizer.json whose template puts <s> (id 1)
    # before a text; the model must see it, the printout must not show it.
    tok = train_sentencepiece_style(small_text.splitlines(keepends=True))
    tok.normalizer = tokenizers.normalizers.Sequence([tokenizers.normalizers.Prepend("\u2581"),
                                                      tokenizers.normalizers.Replace(" ", "\u2581")])
    tok.decoder = tokenizers.decoders.Sequence(SENTENCEPIECE_DECODER)
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    prompt = "MENENIUS: Take my cap, Jupiter"
    ids = tok.encode(prompt).ids
    assert ids[0] == 1 and 1 not in tok.encode(prompt, add_special_tokens=False).ids
    out = hf.generate(torch.tensor([ids]), max_new_tokens=15, do_sample=False, eos_token_id=2,
                      pad_token_id=0)[0].tolist()
    end = out.index(2, len(ids)) if 2 in out[len(ids):] else len(out)
    expected = tok.decode(out[1:end], skip_special_tokens=False)
    assert expected.startswith(prompt)
    sample.main([f"--init_from={tmp_path}", f"--start={prompt}", "--num_samples=1", "--max_new_tokens=15",
                 "--temperature=0", "--device=cpu"])
    assert capsys.readouterr().out == expected + "\n---------------\n"
    # Several samples are printed the same way (greedy: identical rows).
    sample.main([f"--init_from={tmp_path}", f"--start={prompt}", "--num_samples=2", "--max_new_tokens=15",
                 "--temperature=0", "--device=cpu"])
    assert capsys.readouterr().out == 2 * (expected + "\n---------------\n")


TEMPLATES = {
    "chatml": CHATML,
    # Llama 3's shape: the BOS written by the template, a date from strftime_now, trimmed contents.
    "llama3_like": ("{{- bos_token }}{%- set today = strftime_now('%d %b %Y') %}"
                    "{{- '<|im_start|>system\\nToday: ' + today + '<|im_end|>\\n' }}"
                    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim"
                    " + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
                    "{%- endif %}"),
    # {% generation %} tags, tojson with options, namespace, loop controls, whitespace control.
    "generation_tags": ("{% set ns = namespace(turns=0) %}{% for message in messages %}\n"
                        "  {% if message['role'] == 'assistant' %}{%- generation -%}\n  {{ message['content'] | tojson(indent=2) }}"
                        "\n{%- endgeneration %}\n{% else %}{% set ns.turns = ns.turns + 1 %}{{ ns.turns }}: "
                        "{{ message | tojson(sort_keys=true) }}\n{% endif %}{% if loop.index > 4 %}{% break %}{% endif %}"
                        "{% endfor %}{{ eos_token }}"),
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_chat_template_renders_as_transformers(name, chat_model, tmp_path):
    pytest.importorskip("jinja2")
    directory, _ = chat_model
    (tmp_path / "tokenizer.json").write_bytes((directory / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": TEMPLATES[name],
        "bos_token": "<|endoftext|>",  # and a token written as an added-token dict, as older files do:
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "special": True}}), encoding="utf-8")
    messages = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": " café 🤖 \"quoted\" "},
                {"role": "assistant", "content": "Oui.\n"}, {"role": "user", "content": "1234?"},
                {"role": "assistant", "content": "No"}, {"role": "user", "content": "last"}]
    expected = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert sample.load_chat_template(str(tmp_path))(messages) == expected
