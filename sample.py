"""
sample.py — generate text from a trained checkpoint or from pretrained Hugging Face weights.

    python sample.py --out_dir=out-shakespeare-char                 # from out-shakespeare-char/ckpt.pt
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --out_dir=out --start=FILE:prompt.txt          # the prompt is read from a file
    python sample.py --init_from=gpt2 --start="The meaning of life is" --top_p=0.9
    python sample.py --init_from=path/to/hf_checkpoint_dir          # a local GPT-2, Llama or OLMo checkpoint
    python sample.py --out_dir=out --interactive=True               # type prompts, get continuations
    python sample.py --out_dir=out --start="ROMEO:" --beam_size=4 --num_samples=2 --max_new_tokens=40  # the 2 best beams
    python sample.py --out_dir=out-t5-numbers --start="123456" --beam_size=4   # a T5: input -> output
    python sample.py --init_from=path/to/flan-t5-small --start="translate English to German: Hello"
    python sample.py --out_dir=out-t5-shakespeare-char-cpu --start="ROMEO: But <extra_id_0> what light"   # T5 fills a span
    python sample.py --init_from=path/to/SmolLM2-135M-Instruct --chat=True   # talk to an instruct model
    python sample.py --out_dir=out-bert-shakespeare-char-cpu --start="To be, or not to b[MASK]"   # bert.py: fill-mask
    python sample.py --init_from=path/to/hf_bert_dir --start="Paris is the [MASK] of France."  # or a classifier

The checkpoint says which script wrote it (its "model_type"), the model's shape ("model_args") and the
tokenizer it was trained with, so this one file rebuilds any of the repository's models: it imports
that script as a module (the training loop sits behind `if __name__ == "__main__"`, so importing never
trains), builds the model, loads the weights and calls its generate().
A LoRA fine-tune's checkpoint (lora_rank > 0) holds only its adapter and the name of its base model:
the base is loaded from there (it must still be there), the adapter added and merged into its weights.

Options (all --key=value): out_dir, init_from ('resume' reads out_dir/ckpt.pt; otherwise a Hugging
Face hub id or local directory), start, num_samples, max_new_tokens, temperature (0 = greedy), top_k,
top_p, repetition_penalty, stop_at_eos, seed, device, dtype, compile, interactive, chat, beam_size
(> 1: beam search, for decoders and T5; num_samples then prints that many best beams, by default all
of them up to 3; no sampling option applies), length_penalty and quantize ('none' or 'int8': a
decoder's linear weights stored as int8 with a scale per output channel, the lesson at the end of
Part 1 of gpt.py, llama.py and olmo.py; one line on stderr gives the weights' bytes before and
after). A T5 reads --start as its input and prints its output for it. Decoder beam search stops at
the model's block_size.
For encoders (bert.py), fill_k: the candidates shown for each [MASK].

--attention_plot=attn.png [--layer=N] draws, instead of sampling, the attention weights of every head
of one layer (the last by default) over the prompt: for a decoder, which earlier tokens each token
reads (the causal triangle); for a T5, the decoder's cross-attention, which input tokens each output
token reads, over the output the model decodes greedily for the input. Drawing needs matplotlib.

A single sample (--num_samples=1) is printed token by token as it is generated; several samples are
generated side by side as one batch and printed when done. A sample ends at the tokenizer's
end-of-text token (the model's eos_token_id for Hugging Face checkpoints), which is not printed;
--stop_at_eos=False generates all max_new_tokens regardless. Only ids the tokenizer can decode are
ever sampled (a model's output layer may be padded past the tokenizer's vocabulary). A prompt gets
what the model's tokenizer.json puts before a text (Llama's BOS token), as in the model's training;
it is not printed.

--chat=True talks to an instruct model, one reply at a time: the conversation so far is rendered
with the model's own chat template (chat_template.jinja, or "chat_template" in tokenizer_config.json,
beside the weights; rendering it needs the optional jinja2 package), the model continues it, and the
reply, up to the model's end-of-turn token, joins the conversation.

An encoder (bert.py) does not generate: it prints the fill_k likeliest tokens for each [MASK] in the
prompt, or, for a classifier, the probability of each label.

Reading order. The options come first, then the plain path, a page that reads top to bottom: main()
loads a checkpoint (or Hugging Face weights), encodes the prompt, generates, decodes and prints; its
helpers (streaming one sample, cutting at the end-of-text token, the prompt loop) follow it, and then
the two loaders it calls. Each special case has its own section after that, under a banner: beam
search for decoders (--beam_size), T5 (input -> output, beam search), encoders (fill-mask, classifiers), chat (chat templates), attention
pictures (--attention_plot), and hub lookups. main() hands over to them in a few lines; parsing the
command line comes last.
"""
import difflib
import importlib
import json
import math
import os
import re
import sys
import warnings
from contextlib import contextmanager, nullcontext

import torch

import prepare_data

DEFAULTS = {
    "out_dir": "out",
    "init_from": "resume",
    "start": "\n",  # the prompt; "FILE:path" reads it from a file
    "num_samples": 3,  # generated side by side as one batch
    "max_new_tokens": 500,
    "temperature": 0.8,
    "top_k": 200,  # None disables
    "top_p": None,  # e.g. 0.9; None disables
    "repetition_penalty": 1.0,  # 1.0 disables; 1.1-1.3 discourages loops
    "stop_at_eos": True,  # end a sample at the end-of-text token
    "seed": 1337,
    "device": "auto",
    "dtype": "auto",
    "compile": False,
    "interactive": False,
    "beam_size": 1,  # 1 decodes token by token (greedy/sampled), > 1 beam search (decoders and T5)
    "length_penalty": 1.0,  # beam search ranks outputs by log-prob / length ** length_penalty
    "chat": False,  # talk to an instruct model through its chat template (one sample per reply)
    "fill_k": 5,  # encoders (bert.py): how many candidates to show for each [MASK]
    "attention_plot": "",  # a file (e.g. attn.png): draw one layer's attention over the prompt there, instead of sampling
    "layer": None,  # the layer --attention_plot draws, from 0; None: the last
    "quantize": "none",  # 'int8': store a decoder's linear weights as int8 (quantize_int8 in its script)
}
# Keys that may also be None, and the type of their non-None value.
OPTIONAL = {"top_k": int, "top_p": float, "layer": int}


# -----------------------------------------------------------------------------
# The plain path: load a model, encode the prompt, generate, decode, print


def main(argv):
    cfg = parse_args(argv)
    if cfg["device"] == "auto":
        cfg["device"] = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device_type = "cuda" if cfg["device"].startswith("cuda") else cfg["device"].split(":")[0]
    if device_type == "cuda" and not torch.cuda.is_available():
        fail("device='cuda' but no CUDA GPU is available; use --device=cpu")
    if cfg["dtype"] == "auto":
        cfg["dtype"] = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg["dtype"] not in dtypes:
        fail(f"dtype={cfg['dtype']!r} must be one of auto, {', '.join(dtypes)}")
    torch.manual_seed(cfg["seed"])
    if cfg["chat"]:  # read the chat template first: a model without one need not be loaded at all
        render = load_chat_template(local_directory(cfg["init_from"]))

    if cfg["init_from"] == "resume":
        model, tokenizer, eos_token_id = load_checkpoint(cfg["out_dir"])
    else:
        model, tokenizer, eos_token_id = load_pretrained(cfg["init_from"], dtypes[cfg["dtype"]])
    if not cfg["stop_at_eos"]:
        eos_token_id = None
    model.eval().to(cfg["device"])
    if cfg["quantize"] == "int8":
        quantize(model)
    autocast = (nullcontext() if cfg["dtype"] == "float32"
                else torch.autocast(device_type=device_type, dtype=dtypes[cfg["dtype"]]))
    # The models that do not continue a prompt, and the pictures, have their own sections below.
    if type(model).__name__ == "T5":
        return sample_t5(cfg, model, tokenizer, autocast)
    if cfg["beam_size"] > 1 and type(model).__name__ not in BEAM_SEARCH_DECODERS:
        fail(f"--beam_size searches the outputs of a decoder (gpt.py, llama.py, olmo.py) or a T5; "
             f"this is a {type(model).__name__} model: drop --beam_size")
    if cfg["attention_plot"]:
        return plot_decoder_attention(cfg, model, tokenizer, autocast)
    if not hasattr(model, "generate"):  # an encoder (bert.py) does not write text: it fills masks, classifies
        return predict_with_encoder(cfg, model, tokenizer, autocast)
    if cfg["compile"]:
        compile_forward(cfg, model, autocast)

    # A tokenizer.json's template (bpe.Tokenizer's `template`) puts a BOS token before a prompt, as
    # the model saw before every document in training; chat templates write their own.
    template = getattr(tokenizer, "template", None)  # (ids before, ids after) or None

    def generate(prompt, chat=False):
        """Generate from a prompt and print it; return the single sample's new text."""
        try:
            ids = tokenizer.encode(prompt, add_special_tokens=not chat) if template is not None else tokenizer.encode(prompt)
        except ValueError as e:  # e.g. characters a char-level model never saw
            fail(str(e))
        if not ids:
            fail("the prompt encodes to no tokens; give a non-empty --start")
        hidden = len(template[0]) if template is not None and not chat else 0  # the BOS is not printed
        if cfg["beam_size"] > 1:
            return print_beam_search(cfg, model, tokenizer, autocast, ids, hidden, eos_token_id)
        idx = torch.tensor([ids] * cfg["num_samples"], dtype=torch.long, device=cfg["device"])
        # One sample streams to the terminal as it is generated; a batch prints when it is done. A chat
        # shows only the reply.
        shown = [] if chat else ids[hidden:]
        printer = TokenPrinter(tokenizer, shown, eos_token_id) if cfg["num_samples"] == 1 else None
        with autocast:
            out = model.generate(idx, cfg["max_new_tokens"], temperature=cfg["temperature"], top_k=cfg["top_k"],
                                 top_p=cfg["top_p"], repetition_penalty=cfg["repetition_penalty"],
                                 vocab_size=tokenizer.vocab_size, eos_token_id=eos_token_id, on_token=printer)
        if printer is not None:
            printer.show(final=True)
            print("---------------")
            return tokenizer.decode(printer.ids[len(shown):])
        for row in out.tolist():
            print(text_of(tokenizer, row[hidden:], len(ids) - hidden, eos_token_id))
            print("---------------")

    if cfg["chat"]:
        return chat_loop(generate, render)
    for_each_prompt(cfg, generate)


class TokenPrinter:
    """Prints a single sample as its tokens arrive (the on_token callback of generate()).

    Each call decodes the whole sequence so far and prints what is new. Decoding the sequence
    rather than each token alone matters: byte-level BPE tokens can end in the middle of a UTF-8
    character (an emoji spans several tokens), and some tokenizers decode a token differently at
    the start of a text. A text that ends in U+FFFD (the replacement character for an incomplete
    character) is held back until the next token completes it.
    """

    def __init__(self, tokenizer, prompt_ids, eos_token_id):
        self.tokenizer, self.ids, self.printed = tokenizer, list(prompt_ids), 0
        self.stop_ids = stop_ids(eos_token_id)
        self.show(final=False)

    def __call__(self, next_token):
        token = next_token[0, 0].item()
        if token not in self.stop_ids:  # the end-of-sequence token is the last one generate() makes
            self.ids.append(token)
            self.show(final=False)

    def show(self, final):
        text = self.tokenizer.decode(self.ids)
        if final or not text.endswith("\ufffd"):
            print(text[self.printed:], end="\n" if final else "", flush=True)
            self.printed = len(text)


def stop_ids(eos_token_id):
    """The set of ids that end a sample, from an id, a list of ids or None."""
    return set(eos_token_id) if isinstance(eos_token_id, list) else {eos_token_id}


def text_of(tokenizer, ids, prompt_length, eos_token_id):
    """Decode one generated row, cut at its first new end-of-sequence token (which is not shown)."""
    new_ids = ids[prompt_length:]
    end = next((i for i, token in enumerate(new_ids) if token in stop_ids(eos_token_id)), len(new_ids))
    return tokenizer.decode(ids[:prompt_length + end])


def read_start(start):
    """The --start text: as given, or read from a file when it is FILE:path."""
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    if not os.path.isfile(path):
        fail(f"prompt file {path!r} not found")
    with open(path, encoding="utf-8") as f:
        return f.read()


def for_each_prompt(cfg, handle, what="a prompt"):
    """Call handle(text) on --start, or, with --interactive=True, on every line the user types."""
    if not cfg["interactive"]:
        handle(read_start(cfg["start"]))
        return
    print(f"type {what} and press enter (an empty line or Ctrl-D quits)")
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            break
        if not prompt:
            break
        handle(prompt)


def compile_forward(cfg, model, autocast):
    """--compile=True: replace forward (which generate() calls) by its compiled version.

    Compiling is lazy, so try a short generation now and fall back to the plain forward if this
    platform cannot compile. dynamic=True: sequence lengths and the cache position change on every
    call, so compile one shape-generic graph instead of recompiling for each new length."""
    model.forward = torch.compile(model.forward, dynamic=True)
    try:
        with autocast:
            model.generate(torch.zeros((1, 1), dtype=torch.long, device=cfg["device"]), 2)
    except Exception as e:  # any compiler failure: sampling uncompiled is slower but correct
        del model.forward  # the class's forward again
        print(f"warning: torch.compile failed ({type(e).__name__}); sampling without compile", file=sys.stderr)
    torch.manual_seed(cfg["seed"])  # the trial must not change the samples


def quantize(model):
    """--quantize=int8: replace the decoder's linear weights by int8 ones (its script's quantize_int8)
    and say on stderr how many bytes of weights that leaves; at batch 1 each is read once per token."""
    if type(model).__name__ not in BEAM_SEARCH_DECODERS:
        fail(f"--quantize=int8 applies to the decoders of gpt.py, llama.py and olmo.py; this is a "
             f"{type(model).__name__} model: drop --quantize")

    def weight_bytes():
        tensors = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
        return sum(tensors.values())

    before = weight_bytes()
    sys.modules[type(model).__module__].quantize_int8(model)
    print(f"int8: weights {before:,} bytes -> {weight_bytes():,} bytes", file=sys.stderr)


# -----------------------------------------------------------------------------
# Loading a model: a checkpoint of this repository, or Hugging Face weights

# model_type in a checkpoint -> (module, model class, config class)
MODELS = {
    "bigram": ("bigram", "Bigram", "BigramConfig"),
    "gpt": ("gpt", "GPT", "GPTConfig"),
    "llama": ("llama", "Llama", "LlamaConfig"),
    "olmo": ("olmo", "OLMo", "OLMoConfig"),
    "bert": ("bert", "Bert", "BertConfig"),
    "t5": ("t5", "T5", "T5Config"),
}
# Hugging Face config.json "model_type" -> our model_type
HF_MODEL_TYPES = {"gpt2": "gpt", "llama": "llama", "olmo": "olmo", "olmo2": "olmo", "olmo3": "olmo", "olmoe": "olmo",
                  "bert": "bert", "t5": "t5"}



def import_model(model_type):
    """The (model class, config class) of one of the repository's scripts."""
    if model_type not in MODELS:
        fail(f"unknown model_type {model_type!r}; sample.py knows {', '.join(MODELS)}")
    module_name, model_class, config_class = MODELS[model_type]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            fail(f"this checkpoint needs {module_name}.py, which is not in this repository")
        raise
    return getattr(module, model_class), getattr(module, config_class)


def checkpoint_file(out_dir):
    """The newest checkpoint in out_dir: ckpt.pt, or the training_state.pt of ckpt_dcp/, the sharded
    checkpoint a parallelism='fsdp' run writes (ckpt_dcp.old: one whose save was cut short between
    its two renames); ckpt.pt's path where there is neither. As the training scripts' load_checkpoint."""
    path = os.path.join(out_dir, "ckpt.pt")
    for sharded in ("ckpt_dcp", "ckpt_dcp.old"):
        state_path = os.path.join(out_dir, sharded, "training_state.pt")
        if os.path.isfile(state_path):
            newer = not os.path.isfile(path) or os.path.getmtime(state_path) > os.path.getmtime(path)
            return state_path if newer else path
    return path


def read_sharded_weights(directory):
    """The whole model's state dict from a sharded checkpoint directory (ckpt_dcp/), in this one process.

    torch.distributed.checkpoint reads without a process group: given a whole, empty tensor for each
    weight (their shapes and dtypes are in the directory's .metadata), it copies into it the slices
    that every training process wrote. The optimizer's moments beside them are not read: memory is
    the weights' size, as with ckpt.pt.
    """
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(directory).read_metadata()
    state = {name.removeprefix("model."): torch.empty(info.size, dtype=info.properties.dtype)
             for name, info in metadata.state_dict_metadata.items() if name.startswith("model.")}
    with warnings.catch_warnings():  # DCP warns that it "assumes a single process": that is the intent
        warnings.simplefilter("ignore")
        dcp.load({"model": state}, checkpoint_id=directory, no_dist=True)
    return state


def load_checkpoint(out_dir):
    """Rebuild a model and its tokenizer from out_dir/ckpt.pt (or a sharded out_dir/ckpt_dcp/)."""
    path = checkpoint_file(out_dir)
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}; train a model first (e.g. python gpt.py config/shakespeare_char_cpu.py) "
             f"or pass --out_dir")
    try:
        # weights_only: a checkpoint is data; refuse anything that would run code while unpickling.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model_type = checkpoint["model_type"]
        model_args, meta = checkpoint["model_args"], checkpoint["tokenizer"]
        state = checkpoint["model"] if "model" in checkpoint else read_sharded_weights(os.path.dirname(path))
    except Exception as e:  # truncated file, not a torch file, or a dict without our keys
        fail(f"{path} is not a readable checkpoint of this repository ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    model_class, config_class = import_model(model_type)
    if checkpoint.get("lora"):  # a LoRA run saved its adapter alone: rebuild its base, then add it
        model = adapted_model(model_class, model_args, checkpoint["lora"], state, path)
    else:
        model = model_class(config_class(**model_args))
        model.load_state_dict(state)
    # A script whose checkpoints need more than a dataset tokenizer (bert.py's special tokens) has its own loader.
    try:
        tokenizer = getattr(sys.modules[model_class.__module__], "load_tokenizer", prepare_data.load_tokenizer)(meta)
    except prepare_data.DataError as e:  # e.g. a SentencePiece tokenizer without the sentencepiece package
        fail(str(e))
    return model, tokenizer, getattr(tokenizer, "eot_token", None)


def adapted_model(model_class, model_args, lora, adapter, path):
    """The model of a LoRA checkpoint (gpt.py, llama.py, olmo.py with lora_rank > 0), which holds only
    the adapter and the name of its base: load the base from there (the init_from it was trained from:
    a local directory or a hub id), cut its context to the trained one, add the adapter and merge it.

    Merging (the script's merge_lora: W + (alpha / r) B @ A, then plain Linear layers) is always done:
    it computes the same function up to float rounding (tests/test_lora.py) at the base model's speed,
    so there is no option to keep the adapter apart."""
    module = sys.modules[model_class.__module__]
    try:
        model = model_class.from_pretrained(lora["base"])  # a hub id is downloaded once, then cached
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        fail(f"{path} holds a LoRA adapter of {lora['base']!r}, which cannot be loaded ({e}); put the base model "
             f"back there")
    if model_args["block_size"] < model.config.block_size:
        model.crop_block_size(model_args["block_size"])
    try:
        module.add_lora(model, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"])
        module.load_lora_state_dict(model, adapter)
    except (ValueError, RuntimeError) as e:  # e.g. another model now stands where the base was
        fail(f"the adapter in {path} does not fit its base {lora['base']!r}: {str(e).splitlines()[0]}")
    return module.merge_lora(model)


def load_pretrained(name_or_dir, dtype):
    """A Hugging Face checkpoint (hub id or local directory), its tokenizer and its end-of-sequence id(s).

    The weights are loaded in `dtype`: with --dtype=bfloat16 a model takes half the memory of
    float32, and generating one token, which reads every weight once, is correspondingly faster."""
    if os.path.isdir(name_or_dir):
        config_path = os.path.join(name_or_dir, "config.json")
        if not os.path.isfile(config_path):
            fail(f"{name_or_dir} has no config.json: not a Hugging Face checkpoint directory")
        with open(config_path) as f:
            hf_type = json.load(f).get("model_type")
    else:
        if name_or_dir in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
            name_or_dir = "openai-community/" + name_or_dir  # where OpenAI's weights live on the hub
        hf_type = hub_model_type(name_or_dir)
    if hf_type not in HF_MODEL_TYPES:
        fail(f"{name_or_dir} holds a {hf_type!r} model; sample.py loads {', '.join(HF_MODEL_TYPES)} checkpoints")
    model_class, _ = import_model(HF_MODEL_TYPES[hf_type])
    module = sys.modules[model_class.__module__]
    if not os.path.isdir(name_or_dir) and not hasattr(module, "download_hf_checkpoint"):
        fail(f"{module.__name__}.py loads local directories only; download {name_or_dir} into a folder and pass that")
    try:
        # A hub id is downloaded once into a local cache directory; from then on it is a directory.
        directory = name_or_dir if os.path.isdir(name_or_dir) else module.download_hf_checkpoint(name_or_dir)
        model = model_class.from_pretrained(directory, dtype=dtype)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        fail(f"cannot load {name_or_dir!r}: {e}")
    if hf_type == "t5":  # T5 stops at its own </s>; sample_t5 needs no separate end-of-text id
        try:
            path = module.spiece_model_path(name_or_dir, directory)
        except FileNotFoundError as e:
            fail(f"cannot load {name_or_dir!r}: {e}")
        return model, t5_sentencepiece(path), None
    eos_token_id = prepare_data.hf_eos_token_id(directory)
    if hf_type == "bert":  # BERT's WordPiece vocabulary: vocab.txt (+ tokenizer_config.json)
        try:
            return model, module.WordPieceTokenizer.from_pretrained(directory), None
        except (ValueError, FileNotFoundError) as e:
            fail(f"cannot use the tokenizer of {name_or_dir}: {e}")
    tokenizer_json = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(tokenizer_json):
        import bpe

        try:
            return model, bpe.Tokenizer.from_hf_tokenizer_json(tokenizer_json), eos_token_id
        except ValueError as e:
            fail(f"cannot use {tokenizer_json}: {e}")
    if hf_type == "gpt2":  # OpenAI's GPT-2 tokenizer, through tiktoken
        return model, prepare_data.load_tokenizer({"tokenizer": "gpt2"}), eos_token_id
    fail(f"{name_or_dir} has no tokenizer.json; sample.py reads BPE tokenizer.json files, byte-level or "
         f"SentencePiece-style (SentencePiece's own tokenizer.model files are not supported)")


# -----------------------------------------------------------------------------
# Beam search for decoders (gpt.py, llama.py, olmo.py): --beam_size > 1

# The decoders whose forward takes a KV cache; a bigram model has none, an encoder does not generate.
BEAM_SEARCH_DECODERS = ("GPT", "Llama", "OLMo")


def print_beam_search(cfg, model, tokenizer, autocast, ids, hidden, eos_token_id):
    """--beam_size > 1 on a decoder: print the num_samples best beams for the prompt ids, best first.

    The beams are printed when the search ends, not streamed: which beam is best is known only then.
    The search stops at block_size (with a note) rather than sliding the window: past block_size
    every step would rerun every beam's whole window without a cache (see gpt.py's generate)."""
    room = model.config.block_size - len(ids)
    if room < 1:
        fail(f"the prompt has {len(ids)} tokens, which fills this model's block_size={model.config.block_size}; "
             f"beam search needs room for new tokens")
    if cfg["max_new_tokens"] > room:
        print(f"note: beam search stops at block_size={model.config.block_size}: at most {room} new tokens, "
              f"not max_new_tokens={cfg['max_new_tokens']}", file=sys.stderr)
    idx = torch.tensor([ids], dtype=torch.long, device=cfg["device"])
    with autocast:
        out, _ = decoder_beam_search(model, idx, cfg["max_new_tokens"], cfg["beam_size"], cfg["length_penalty"],
                                     eos_token_id, cfg["num_samples"], tokenizer.vocab_size)
    for row in out.tolist():
        print(text_of(tokenizer, row[hidden:], len(ids) - hidden, eos_token_id))
        print("---------------")


@torch.no_grad()
def decoder_beam_search(model, idx, max_new_tokens, beam_size, length_penalty=1.0, eos_token_id=None,
                        num_return_sequences=1, vocab_size=None):
    """Beam search over the continuations of one prompt idx (1, T) with a decoder of this repository.

    Greedy decoding commits to the likeliest token at every step, and a likely first token can lead
    into a continuation whose later tokens are all unlikely. Beam search keeps beam_size partial
    continuations ("beams") instead of one, extends each by every token, and keeps the beam_size
    best extensions by total log-probability. It is t5.py's beam_search for a decoder-only model,
    with one prompt, and makes the same choices as Hugging Face's generate(num_beams=beam_size,
    do_sample=False, early_stopping=False), which the tests compare it with token for token.

    Returns (sequences, scores): the num_return_sequences best hypotheses, best first, as rows of
    prompt + continuation (a row that ended early is padded with its end-of-sequence token, as
    generate() pads), and each one's score, sum(log p) / length ** length_penalty. Generation stops
    at block_size: at most block_size - T new tokens.
    """
    if idx.size(0) != 1:
        raise ValueError(f"beam search takes one prompt (idx of shape (1, T)), got {idx.size(0)}")
    if not 1 <= num_return_sequences <= beam_size:
        raise ValueError(f"num_return_sequences={num_return_sequences} must be between 1 and beam_size={beam_size}")
    prompt_length = idx.size(1)
    steps = min(max_new_tokens, model.config.block_size - prompt_length)
    if steps < 1:
        raise ValueError(f"no room to generate: the prompt has {prompt_length} tokens, block_size is "
                         f"{model.config.block_size} and max_new_tokens {max_new_tokens}")
    stops = stop_ids(eos_token_id) if eos_token_id is not None else set()
    # Each beam can end with at most one of the stop tokens, so among the best (1 + len(stops)) *
    # beam_size extensions (2 * beam_size with one end-of-sequence token) at least beam_size go on:
    # finished hypotheses never starve the beam of live candidates.
    candidates_per_step = max(2, 1 + len(stops)) * beam_size

    # The beams are a batch of beam_size rows: one forward call extends them all. The prompt is run
    # once, and its cached keys and values are copied into every row (row 0, beam_size times).
    cache = new_decoder_cache(model, prompt_length + steps)
    logits, _ = model(idx, cache=cache, last_only=True)
    logits = logits.expand(beam_size, -1, -1)
    reorder_cache(cache, torch.zeros(beam_size, dtype=torch.long, device=idx.device))
    beams = idx.expand(beam_size, -1)
    # A beam's score is the sum of its tokens' log-probabilities (the log of the product of their
    # probabilities). All rows start as the same prompt: giving all but the first -inf keeps the
    # first step from filling the beam with beam_size copies of the same extension.
    beam_scores = torch.full((beam_size,), float("-inf"), device=idx.device)
    beam_scores[0] = 0.0
    finished = []  # (score, token list), the best beam_size so far, best first

    for length in range(1, steps + 1):  # length: new tokens, this step's included
        log_probs = torch.log_softmax(logits[:, -1, :vocab_size].float(), dim=-1)  # (beam_size, vocab)
        vocab = log_probs.size(-1)
        totals, flat_ids = (beam_scores[:, None] + log_probs).view(-1).topk(candidates_per_step)
        last_step = length == steps
        live = []  # (source row, token, total log-prob) of the beams that go on, best first
        for rank, (total, flat_id) in enumerate(zip(totals.tolist(), flat_ids.tolist())):
            row, token = divmod(flat_id, vocab)
            if token in stops or last_step:
                # A hypothesis ends here. It counts only if it is among the beam_size best extensions:
                # the extra candidates exist to keep the beam full, not to be answers. Log-probs only
                # add negatives, so a plain sum would always prefer shorter outputs; dividing by
                # length ** length_penalty ranks by mean log-prob at 1.0, favours longer outputs
                # above 1 and is the plain sum at 0.
                if rank < beam_size:
                    finished.append((total / length ** length_penalty, beams[row].tolist() + [token]))
            elif len(live) < beam_size:
                live.append((row, token, total))
        finished = sorted(finished, key=lambda hypothesis: -hypothesis[0])[:beam_size]
        if last_step:
            break
        # Hugging Face's early_stopping=False heuristic: once beam_size hypotheses are finished, stop
        # when the best live beam, scored as if it ended now, would not beat the worst of them. A live
        # beam can only add negative log-probs, but a longer one divides by a larger length, so this
        # is a heuristic, not a proof that nothing better is left.
        if len(finished) == beam_size and finished[-1][0] >= live[0][2] / length ** length_penalty:
            break
        rows = torch.tensor([row for row, _, _ in live], device=idx.device)
        tokens = torch.tensor([token for _, token, _ in live], device=idx.device)
        beams = torch.cat((beams[rows], tokens[:, None]), dim=1)
        beam_scores = torch.tensor([total for _, _, total in live], device=idx.device)
        # Beam k now continues old row rows[k]: its cached keys and values must move with it.
        reorder_cache(cache, rows)
        logits, _ = model(tokens[:, None], cache=cache, last_only=True)

    best = finished[:num_return_sequences]
    pad = next(iter(stops), 0)  # only hypotheses that ended early are shorter, and they end with a stop token
    width = max(len(tokens) for _, tokens in best)
    sequences = torch.tensor([tokens + [pad] * (width - len(tokens)) for _, tokens in best], device=idx.device)
    return sequences, torch.tensor([score for score, _ in best])


def new_decoder_cache(model, max_len):
    """An empty KV cache for max_len positions, of the kind the model's own generate() makes."""
    if hasattr(model, "new_cache"):  # olmo.py: a SlidingWindowKVCache when some layers slide
        return model.new_cache(max_len)
    return sys.modules[type(model).__module__].KVCache(model.config.n_layer, max_len)


def reorder_cache(cache, rows):
    """Make row k of every cached tensor a copy of old row rows[k] (index_select along the batch).

    The scripts' caches have no method for this (sampling never reorders rows), so we do it from the
    outside, knowing their layout: a KVCache holds keys and values of shape (n_layer, B, heads,
    max_len, head_dim), batch at dim 1; olmo.py's SlidingWindowKVCache holds such a KVCache for its
    full-attention layers (`full`) and, per sliding layer, the (keys, values) of its last positions,
    (B, heads, window - 1, head_dim), batch at dim 0. Reordering the sliding layers is safe: every
    row holds the same positions (the beams advance in step), so a row's window moves as a whole.
    """
    if hasattr(cache, "recent"):  # olmo.py's SlidingWindowKVCache
        reorder_cache(cache.full, rows)
        cache.recent = [None if kept is None else tuple(t.index_select(0, rows) for t in kept) for kept in cache.recent]
    elif cache.keys is not None:  # None: no layer has stored anything (a model whose layers all slide)
        cache.keys = cache.keys.index_select(1, rows)
        cache.values = cache.values.index_select(1, rows)


# -----------------------------------------------------------------------------
# T5, an encoder-decoder: --start is its input, and it prints outputs for it (sampled, greedy or beam search)


def t5_sentencepiece(path):
    """The SentencePiece tokenizer of a Hugging Face T5 (its spiece.model, at path), through the optional
    sentencepiece package (prepare_data's SentencePieceTokenizer, which fine-tuning datasets use too)."""
    with open(path, "rb") as f:
        model_bytes = f.read()
    try:
        return prepare_data.SentencePieceTokenizer(model_bytes)
    except prepare_data.DataError as e:  # the sentencepiece package is not installed
        fail(str(e))
    except RuntimeError as e:  # sentencepiece's error for a file that is not a model
        fail(f"{path} is not a SentencePiece model ({str(e).strip().splitlines()[0] if str(e).strip() else 'unreadable'})")


def sample_t5(cfg, model, tokenizer, autocast):
    """An encoder-decoder model: --start is the input, and we print num_samples outputs for it.

    beam_size > 1 prints the num_samples best beams (beam search is deterministic); otherwise each
    output is decoded token by token with the sampling options (temperature=0: greedy). A checkpoint
    trained on the numbers task (its tokenizer meta says task="numbers") takes a number with or
    without thousands separators ("123456" or "123,456") and is given it in the training format."""
    meta = {}
    if cfg["init_from"] == "resume":  # mmap: read the tokenizer meta without loading the weights again
        meta = torch.load(os.path.join(cfg["out_dir"], "ckpt.pt"), map_location="cpu", weights_only=True, mmap=True)["tokenizer"]
    def run(prompt):
        if meta.get("task") == "numbers":
            digits = prompt.strip().replace(",", "").replace("_", "")
            if not digits.isdigit():
                fail(f"this model turns a whole number into words, like 4321 or 4,321; got {prompt!r}")
            if int(digits) > meta["max_number"]:
                fail(f"{int(digits):,} is outside the numbers task's range 0 to {meta['max_number']:,}")
            prompt = f"{int(digits):,}"
        try:
            ids = tokenizer.encode(prompt)
        except ValueError as e:  # characters the model's vocabulary does not have
            fail(str(e))
        if not ids:
            fail("the input encodes to no tokens; give a non-empty --start")
        ids.append(model.config.eos_token_id)  # T5 reads every input with </s> at its end
        if len(ids) > model.config.block_size:
            fail(f"the input has {len(ids)} tokens, more than this model's block_size={model.config.block_size}; shorten it")
        if cfg["attention_plot"]:
            return plot_t5_cross_attention(cfg, model, tokenizer, autocast, ids)
        idx = torch.tensor([ids], dtype=torch.long, device=cfg["device"])
        with autocast:
            if cfg["beam_size"] > 1:
                out, _ = model.beam_search(idx, cfg["max_new_tokens"], beam_size=cfg["beam_size"],
                                           length_penalty=cfg["length_penalty"], num_return_sequences=cfg["num_samples"])
            else:
                out = model.generate(idx.expand(cfg["num_samples"], -1), cfg["max_new_tokens"],
                                     temperature=cfg["temperature"], top_k=cfg["top_k"], top_p=cfg["top_p"],
                                     repetition_penalty=cfg["repetition_penalty"])
        for row in out[:, 1:].tolist():  # after the decoder start token, up to </s>
            if model.config.eos_token_id in row:
                row = row[:row.index(model.config.eos_token_id)]
            print(tokenizer.decode(row))
            if hasattr(tokenizer, "fill_spans"):  # span corruption (t5.py): the input with the spans filled in
                print("filled: " + tokenizer.fill_spans(ids[:-1], row))
            print("---------------")

    for_each_prompt(cfg, run, "an input")


# -----------------------------------------------------------------------------
# Encoders (bert.py): fill-mask or a classifier's labels instead of generated text


def predict_with_encoder(cfg, model, tokenizer, autocast):
    """bert.py models: the fill_k likeliest tokens for each [MASK] in --start (with probabilities),
    or a sequence classifier's distribution over its labels. --start may be FILE:path."""
    module = sys.modules[type(model).__module__]
    head = model.config.head
    if head not in ("mlm", "sequence"):
        fail(f"this model has no fill-mask or classification head (head={head!r}); sample.py needs one of them")
    start = read_start(cfg["start"])
    try:
        with autocast:
            if head == "sequence":
                for label, prob in module.classify(model, tokenizer, start):
                    print(f"{prob:8.4f}  {label}")
                return
            fills = module.fill_mask(model, tokenizer, start, cfg["fill_k"])
    except ValueError as e:  # no [MASK], too long, characters the vocabulary lacks
        fail(str(e))
    for n, candidates in enumerate(fills, 1):
        print(f"[MASK] {n}: " + ", ".join(f"{token!r} {prob:.4f}" for token, prob in candidates))


# -----------------------------------------------------------------------------
# Chat (--chat=True): a conversation rendered with the model's own chat template


def chat_loop(generate, render):
    """--chat=True: each typed line joins the conversation as a user message, and the model's reply,
    generate(rendered conversation, chat=True), joins it as the assistant's."""
    messages = []
    print("chat: type a message and press enter (an empty line or Ctrl-D quits)")
    while True:
        try:
            message = input("> ")
        except EOFError:
            break
        if not message:
            break
        messages.append({"role": "user", "content": message})
        # The whole conversation is rendered and encoded again each turn (no BOS: the template
        # writes what the model expects), so the reply sees every earlier turn.
        reply = generate(render(messages), chat=True)
        messages.append({"role": "assistant", "content": reply})


def load_chat_template(directory):
    """A function from a conversation (a list of {"role", "content"} dicts) to the text the model
    was trained to see for it, ending where the assistant's reply begins: the model's own chat
    template, a Jinja program written by its authors (ChatML's <|im_start|>user ... <|im_end|> for
    SmolLM2 and Qwen, Llama 3's <|start_header_id|> ... <|eot_id|>), rendered as transformers'
    apply_chat_template(add_generation_prompt=True) renders it."""
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = {}
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates (e.g. "default" and "tool_use")
        template = {entry.get("name"): entry.get("template") for entry in template}.get("default")
    jinja_path = os.path.join(directory, "chat_template.jinja")  # where newer checkpoints keep it
    if os.path.isfile(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            template = f.read()
    if not template:
        fail(f"--chat needs the model's chat template, but {directory} has neither chat_template.jinja nor a "
             f"chat_template in tokenizer_config.json (base models have none: use the instruct version; if the "
             f"model has one, copy its tokenizer_config.json or chat_template.jinja into that folder)")
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        fail("--chat renders the model's chat template with jinja2, which is not installed: pip install jinja2")
    from datetime import datetime

    def raise_exception(message):  # how templates refuse a conversation (e.g. roles that do not alternate)
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # The same environment as transformers': a sandbox (a template is code from the model's authors),
    # block tags that leave no blank lines, break/continue, the helpers templates call, and a tojson
    # that keeps non-ASCII text. Some templates mark the assistant's part with
    # {% generation %}...{% endgeneration %} (transformers uses it to find the tokens to train on);
    # here it is only text, so the tags become an always-true {% if %} with the same whitespace control.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    env.filters["tojson"] = tojson
    template = re.sub(r"\{%(-?)\s*generation\s*(-?)%\}", r"{%\1 if true \2%}", template)
    template = re.sub(r"\{%(-?)\s*endgeneration\s*(-?)%\}", r"{%\1 endif \2%}", template)
    try:
        compiled = env.from_string(template)
    except TemplateError as e:
        fail(f"cannot read the chat template of {directory}: {e}")
    # Templates spell some special tokens through variables ({{ bos_token }}); tokenizer_config.json
    # gives each as a string or as an added-token dict.
    tokens = {name: value.get("content") if isinstance(value, dict) else value
              for name in ("bos_token", "eos_token", "unk_token", "pad_token") if (value := config.get(name))}

    def render(messages):
        try:
            return compiled.render(messages=messages, add_generation_prompt=True, **tokens)
        except TemplateError as e:
            fail(f"the chat template refused the conversation: {e}")
    return render


# -----------------------------------------------------------------------------
# Attention maps (--attention_plot)

# The functions through which each script's attention='manual' path computes its attention weights:
# gpt.py, llama.py, bert.py and olmo.py's attention_weights, olmo.py's ALiBi variant, t5.py's own.
ATTENTION_WEIGHT_FUNCTIONS = ("attention_weights", "biased_attention_weights", "t5_attention_weights")


@contextmanager
def keep_attention_weights(model):
    """Within the block, every attention layer of model runs its manual path and keeps its weights:
    yields a dict, attention module name (e.g. "transformer.h.0.attn") -> the weights
    (B, n_head, T_q, T_k) it computed last, as float32 on the CPU.

    The fused kernel (SDPA) never holds the weights as a tensor: that is where its speed comes from.
    The manual path computes the same numbers step by step (each script tests it equal to the
    kernel), through the script's attention-weights function; for the duration of the block we swap
    that function, in the script's module, for one that also stores what it returns, and a hook
    on each attention module notes which one is running. Nothing the model computes changes, and
    everything is put back on leaving the block.
    """
    script = sys.modules[type(model).__module__]
    layers = {name: m for name, m in model.named_modules() if getattr(m, "attention", None) in ("sdpa", "manual")}
    if not layers:
        fail(f"a {type(model).__name__} model has no attention layers to draw")
    kept, running = {}, [None]

    def note_running(name):
        def hook(module, args):
            running[0] = name
        return hook

    def keeping(compute):
        def compute_and_keep(*args):
            weights = compute(*args)
            kept[running[0]] = weights.detach().float().cpu()
            return weights
        return compute_and_keep

    originals = {name: getattr(script, name) for name in ATTENTION_WEIGHT_FUNCTIONS if hasattr(script, name)}
    modes = {name: m.attention for name, m in layers.items()}
    # The model's config says 'manual' too: olmo.py builds its masks for the path its config names.
    config_mode = model.config.attention
    hooks = [m.register_forward_pre_hook(note_running(name)) for name, m in layers.items()]
    try:
        for name, compute in originals.items():
            setattr(script, name, keeping(compute))
        for m in layers.values():
            m.attention = "manual"
        model.config.attention = "manual"
        yield kept
    finally:
        for name, compute in originals.items():
            setattr(script, name, compute)
        for name, m in layers.items():
            m.attention = modes[name]
        model.config.attention = config_mode
        for hook in hooks:
            hook.remove()


def token_labels(tokenizer, ids):
    """One short, printable label per token: its own text, with newlines and spaces made visible."""
    labels = []
    for i in ids:
        try:
            text = tokenizer.decode([i])
        except (KeyError, IndexError, ValueError):  # an id this tokenizer cannot show on its own
            text = f"<{i}>"
        labels.append(text.replace("\n", "\\n").replace(" ", "\u2423")[:12] or f"<{i}>")
    return labels


def draw_attention(weights, query_labels, key_labels, title, path):
    """Save a grid of heatmaps, one per head, of weights (n_head, T_q, T_k) to path."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # draw to files; no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--attention_plot draws with matplotlib, which is not installed: pip install matplotlib")
    file_format = os.path.splitext(path)[1].lstrip(".").lower()
    n_head, T_q, T_k = weights.shape
    cols = math.ceil(math.sqrt(n_head))
    rows = math.ceil(n_head / cols)
    size = min(2.2 + 0.12 * max(T_q, T_k), 6.0)  # inches per head: room for the token labels
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1.2, size * rows + 0.8), squeeze=False,
                             layout="constrained")
    if file_format not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        fail(f"--attention_plot={path!r}: name a .png (or .svg, .pdf) file")
    # One colour scale for all heads (0 to the largest weight), so heads compare at a glance.
    top = float(weights.max())
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.axis("off")
            continue
        image = ax.imshow(weights[h].numpy(), cmap="viridis", vmin=0.0, vmax=top)
        ax.set_title(f"head {h}", fontsize=9)
        if max(T_q, T_k) <= 48:  # labels only while they can be read
            ax.set_xticks(range(T_k), key_labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T_q), query_labels, fontsize=6)
        else:
            ax.set_xlabel("key position", fontsize=8)
            ax.set_ylabel("query position", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    try:  # write then rename: an interrupted save never leaves half a picture under the name
        fig.savefig(path + ".tmp", format=file_format, dpi=100)
        os.replace(path + ".tmp", path)
    except OSError as e:
        fail(f"could not write {path} ({e})")
    finally:
        plt.close(fig)
    print(f"wrote {path}")


def pick_layer(cfg, names, what):
    """The attention module that --layer names, among names (one per layer, in order)."""
    layer = len(names) - 1 if cfg["layer"] is None else cfg["layer"]
    if not 0 <= layer < len(names):
        fail(f"--layer={cfg['layer']}: this model has {len(names)} {what} layers, 0 to {len(names) - 1}")
    return layer, names[layer]


def plot_decoder_attention(cfg, model, tokenizer, autocast):
    """--attention_plot for a decoder: one layer's self-attention over the prompt."""
    template = getattr(tokenizer, "template", None)
    prompt = read_start(cfg["start"])
    try:
        ids = tokenizer.encode(prompt, add_special_tokens=True) if template is not None else tokenizer.encode(prompt)
    except ValueError as e:
        fail(str(e))
    if not ids:
        fail("the prompt encodes to no tokens; give a non-empty --start")
    if len(ids) > model.config.block_size:
        fail(f"the prompt has {len(ids)} tokens, more than the model's block_size={model.config.block_size}")
    idx = torch.tensor([ids], dtype=torch.long, device=cfg["device"])
    with keep_attention_weights(model) as kept, torch.no_grad(), autocast:
        model(idx)
    layer, name = pick_layer(cfg, list(kept), "attention")
    labels = token_labels(tokenizer, ids)
    draw_attention(kept[name][0], labels, labels,
                   f"layer {layer} ({name}):\nhow much each token (row) reads each token of the prompt (column)",
                   cfg["attention_plot"])


def plot_t5_cross_attention(cfg, model, tokenizer, autocast, input_ids):
    """--attention_plot for a T5: one decoder layer's cross-attention, output tokens over input tokens.

    The output is the model's own greedy decoding of the input; one teacher-forced forward pass over
    it (decoder input = start token + output) then gives every output position's cross-attention."""
    idx = torch.tensor([input_ids], dtype=torch.long, device=cfg["device"])
    with torch.no_grad(), autocast:
        out = model.generate(idx, cfg["max_new_tokens"], temperature=0.0)
    output = out[0, 1:].tolist()
    if model.config.eos_token_id in output:  # keep the </s> itself: it reads the input too
        output = output[:output.index(model.config.eos_token_id) + 1]
    decoder_input = out[:, :len(output)]  # the start token and all but the last output token
    with keep_attention_weights(model) as kept, torch.no_grad(), autocast:
        model(idx, decoder_input)
    cross = [name for name in kept if "cross" in name]
    layer, name = pick_layer(cfg, cross, "decoder cross-attention")
    draw_attention(kept[name][0], token_labels(tokenizer, output), token_labels(tokenizer, input_ids),
                   f"decoder layer {layer} cross-attention:\nwhich input tokens (columns) each output token (row) reads",
                   cfg["attention_plot"])


# -----------------------------------------------------------------------------
# Hub lookups: a hub id's type before any download, and where its files are cached


def hub_model_type(repo):
    """The model_type in a hub repository's config.json, read before any weights are downloaded, so
    that an architecture sample.py cannot load is refused at once, not after gigabytes."""
    if repo.count("/") != 1:
        fail(f"{repo!r} is neither a local directory nor a hub id of the form owner/name")
    cached = os.path.join(hub_cache_directory(repo), "config.json")
    if os.path.isfile(cached):
        with open(cached) as f:
            return json.load(f).get("model_type")
    import requests  # only needed for downloads

    url = f"https://huggingface.co/{repo}/resolve/main/config.json"
    token = os.environ.get("HF_TOKEN")
    try:
        response = requests.get(url, timeout=30, headers={"Authorization": f"Bearer {token}"} if token else {})
        response.raise_for_status()
        return response.json().get("model_type")
    except (requests.RequestException, ValueError) as e:
        fail(f"could not read {url} ({e}); download the checkpoint's files by hand into a folder and pass that folder")


def hub_cache_directory(repo):
    """The folder the scripts download a hub id's files into."""
    cache_root = os.environ.get("NANO_MODELS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "single-file-lms"))
    return os.path.join(cache_root, repo.replace("/", "--"))


def local_directory(init_from):
    """Where --init_from's files are on this machine: the directory itself, or a hub id's cache folder."""
    return init_from if os.path.isdir(init_from) else hub_cache_directory(init_from)


# -----------------------------------------------------------------------------
# The command line: --key=value options over DEFAULTS, one-line errors


def fail(message):
    sys.exit(f"error: {message}")


def parse_options(argv, defaults, optional, doc, program):
    """--key=value arguments over defaults (a dict of option -> default; optional: option -> the type
    of its value where None is allowed too). Strings are taken verbatim (so --start=123 is the text
    "123"); other values are Python literals. Unknown keys and wrong types are one-line errors, which
    suggest the nearest option name for a typo and True / False / None for other spellings of them.
    -h or --help prints doc. evaluate.py reads its options with this function too."""
    import ast

    config = dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            print(doc)
            sys.exit(0)
        if not arg.startswith("--") or "=" not in arg:
            fail(f"argument {arg!r} must look like --key=value (see python {program} --help)")
        key, text = arg[2:].split("=", 1)
        if key not in config:
            close = difflib.get_close_matches(key, defaults, n=1)  # a typo names the option it meant
            hint = f" (did you mean --{close[0]}?)" if close else ""
            fail(f"unknown option {key!r}{hint}; valid options: {', '.join(defaults)}")
        if isinstance(defaults[key], str):
            config[key] = text
            continue
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            # Other command lines spell True, False and None in other cases; name the Python spelling.
            spellings = {"true": "True", "false": "False"} if type(defaults[key]) is bool else {}
            if key in optional:
                spellings["none"] = "None"
            hint = f"; use {spellings[text.lower()]}" if text.lower() in spellings else ""
            fail(f"option {key!r} needs a Python literal, got {text!r}{hint}")
        expected = optional.get(key, type(defaults[key]))
        if expected is float and type(value) is int:
            value = float(value)  # --temperature=1 means 1.0
        if not (type(value) is expected or (key in optional and value is None)):
            fail(f"option {key!r} must be {expected.__name__}{' or None' if key in optional else ''}, got {text!r}")
        config[key] = value
    return config


def parse_args(argv):
    """sample.py's options (DEFAULTS), read by parse_options, then checked for meaning."""
    config = parse_options(argv, DEFAULTS, OPTIONAL, __doc__, "sample.py")
    for key in ("num_samples", "max_new_tokens"):
        if config[key] < 1:
            fail(f"option {key!r} must be a positive integer, got {config[key]}")
    if config["temperature"] < 0:
        fail("temperature must be >= 0 (0 means greedy decoding)")
    if config["top_p"] is not None and not 0 < config["top_p"] <= 1:
        fail(f"top_p must be in (0, 1], got {config['top_p']}")
    if config["top_k"] is not None and config["top_k"] < 1:
        fail(f"top_k must be >= 1, got {config['top_k']}")
    if config["repetition_penalty"] <= 0:
        fail(f"repetition_penalty must be > 0, got {config['repetition_penalty']}")
    if config["beam_size"] < 1:
        fail(f"beam_size must be >= 1, got {config['beam_size']}")
    given = {arg[2:].split("=", 1)[0] for arg in argv}  # the options set on the command line
    if config["beam_size"] > 1:
        # Beam search is deterministic: it ranks continuations by probability and samples none, so a
        # sampling option would be silently ignored.
        for key in ("temperature", "top_k", "top_p", "repetition_penalty"):
            if key in given:
                fail(f"--{key} shapes sampling, and beam search (--beam_size > 1) does not sample: drop --{key}")
        if config["chat"]:
            fail("--chat samples each reply; it does not run beam search: drop --beam_size")
        if config["attention_plot"]:
            fail("--attention_plot draws attention over the prompt (a T5: its greedy output); drop --beam_size")
        if config["num_samples"] > config["beam_size"]:
            if "num_samples" in given:
                fail(f"num_samples={config['num_samples']} must be at most beam_size={config['beam_size']} "
                     f"(beam search returns its best beams)")
            config["num_samples"] = config["beam_size"]  # the default asks for a few; there are only this many
    elif "length_penalty" in given:
        fail("--length_penalty ranks the outputs of beam search: give --beam_size > 1 too")
    if config["quantize"] not in ("none", "int8"):
        fail(f"quantize={config['quantize']!r} must be 'none' or 'int8'")
    if config["layer"] is not None and not config["attention_plot"]:
        fail("--layer chooses the layer --attention_plot draws; give --attention_plot=FILE.png too")
    if config["chat"]:
        if config["init_from"] == "resume":
            fail("--chat needs a pretrained instruct model with a chat template: pass --init_from=<its folder or "
                 "hub id>")
        if "num_samples" in given and config["num_samples"] != 1:
            fail("--chat generates one reply at a time; drop --num_samples")
        config["num_samples"] = 1
    return config


if __name__ == "__main__":
    main(sys.argv[1:])
