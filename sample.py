"""
sample.py — generate text from a trained checkpoint or from pretrained Hugging Face weights.

    python sample.py --out_dir=out-shakespeare-char                 # from out-shakespeare-char/ckpt.pt
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --out_dir=out --start=FILE:prompt.txt          # the prompt is read from a file
    python sample.py --init_from=gpt2 --start="The meaning of life is" --top_p=0.9
    python sample.py --init_from=path/to/hf_checkpoint_dir          # a local GPT-2 or Llama checkpoint
    python sample.py --out_dir=out --interactive=True               # type prompts, get continuations
    python sample.py --out_dir=out-bert-shakespeare-char-cpu --start="To be, or not to b[MASK]"   # bert.py: fill-mask
    python sample.py --init_from=path/to/hf_bert_dir --start="Paris is the [MASK] of France."  # or a classifier

The checkpoint says which script wrote it (its "model_type"), the model's shape ("model_args") and the
tokenizer it was trained with, so this one file rebuilds any of the repository's models: it imports
that script as a module (the training loop sits behind `if __name__ == "__main__"`, so importing never
trains), builds the model, loads the weights and calls its generate().

Options (all --key=value): out_dir, init_from ('resume' reads out_dir/ckpt.pt; otherwise a Hugging
Face hub id or local directory), start, num_samples, max_new_tokens, temperature (0 = greedy), top_k,
top_p, repetition_penalty, seed, device, dtype, compile, interactive, fill_k. An encoder (bert.py)
does not generate: it prints the fill_k likeliest tokens for each [MASK] in the prompt, or, for a
classifier, the probability of each label.
"""

import importlib
import json
import os
import sys
from contextlib import nullcontext

import torch

import prepare_data

# model_type in a checkpoint -> (module, model class, config class)
MODELS = {
    "bigram": ("bigram", "Bigram", "BigramConfig"),
    "gpt": ("gpt", "GPT", "GPTConfig"),
    "llama": ("llama", "Llama", "LlamaConfig"),
    "bert": ("bert", "Bert", "BertConfig"),
}
# Hugging Face config.json "model_type" -> our model_type
HF_MODEL_TYPES = {"gpt2": "gpt", "llama": "llama", "bert": "bert"}

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
    "seed": 1337,
    "device": "auto",
    "dtype": "auto",
    "compile": False,
    "interactive": False,
    "fill_k": 5,  # encoders (bert.py): how many candidates to show for each [MASK]
}
# Keys that may also be None, and the type of their non-None value.
OPTIONAL = {"top_k": int, "top_p": float}


def fail(message):
    sys.exit(f"error: {message}")


def parse_args(argv):
    """--key=value arguments over DEFAULTS. Strings are taken verbatim (so --start=123 is the text
    "123"); other values are Python literals. Unknown keys and wrong types are errors."""
    import ast

    config = dict(DEFAULTS)
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        if not arg.startswith("--") or "=" not in arg:
            fail(f"argument {arg!r} must look like --key=value (see python sample.py --help)")
        key, text = arg[2:].split("=", 1)
        if key not in config:
            fail(f"unknown option {key!r}; valid options: {', '.join(DEFAULTS)}")
        if isinstance(DEFAULTS[key], str):
            config[key] = text
            continue
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            fail(f"option {key!r} needs a Python literal, got {text!r}")
        expected = OPTIONAL.get(key, type(DEFAULTS[key]))
        if expected is float and type(value) is int:
            value = float(value)  # --temperature=1 means 1.0
        if not (type(value) is expected or (key in OPTIONAL and value is None)):
            fail(f"option {key!r} must be {expected.__name__}{' or None' if key in OPTIONAL else ''}, got {text!r}")
        config[key] = value
    if config["temperature"] < 0:
        fail("temperature must be >= 0 (0 means greedy decoding)")
    if config["top_p"] is not None and not 0 < config["top_p"] <= 1:
        fail(f"top_p must be in (0, 1], got {config['top_p']}")
    if config["top_k"] is not None and config["top_k"] < 1:
        fail(f"top_k must be >= 1, got {config['top_k']}")
    if config["repetition_penalty"] <= 0:
        fail(f"repetition_penalty must be > 0, got {config['repetition_penalty']}")
    return config


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


def load_checkpoint(out_dir):
    """Rebuild a model and its tokenizer from out_dir/ckpt.pt."""
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}; train a model first (e.g. python gpt.py config/shakespeare_char_cpu.py) "
             f"or pass --out_dir")
    try:
        # weights_only: a checkpoint is data; refuse anything that would run code while unpickling.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model_type = checkpoint["model_type"]
        model_args, state, meta = checkpoint["model_args"], checkpoint["model"], checkpoint["tokenizer"]
    except Exception as e:  # truncated file, not a torch file, or a dict without our keys
        fail(f"{path} is not a readable checkpoint of this repository ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    model_class, config_class = import_model(model_type)
    model = model_class(config_class(**model_args))
    model.load_state_dict(state)
    # A script whose checkpoints need more than a dataset tokenizer (bert.py's special tokens) has its own loader.
    return model, getattr(sys.modules[model_class.__module__], "load_tokenizer", prepare_data.load_tokenizer)(meta)


def load_pretrained(name_or_dir):
    """A Hugging Face checkpoint (hub id or local directory) and its tokenizer."""
    if os.path.isdir(name_or_dir):
        config_path = os.path.join(name_or_dir, "config.json")
        if not os.path.isfile(config_path):
            fail(f"{name_or_dir} has no config.json: not a Hugging Face checkpoint directory")
        with open(config_path) as f:
            hf_type = json.load(f).get("model_type")
        if hf_type not in HF_MODEL_TYPES:
            fail(f"{name_or_dir} holds a {hf_type!r} model; sample.py loads {', '.join(HF_MODEL_TYPES)} checkpoints")
        model_type = HF_MODEL_TYPES[hf_type]
    else:
        # Hub ids: GPT-2's are known by name; anything else is tried as a Llama-architecture model,
        # whose loader reads the downloaded config.json and refuses other architectures.
        model_type = "gpt" if name_or_dir.removeprefix("openai-community/").startswith("gpt2") else "llama"
    model_class, _ = import_model(model_type)
    module = sys.modules[model_class.__module__]
    try:
        # A hub id is downloaded once into a local cache directory; from then on it is a directory.
        directory = name_or_dir if os.path.isdir(name_or_dir) else module.download_hf_checkpoint(name_or_dir)
        model = model_class.from_pretrained(directory)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        fail(f"cannot load {name_or_dir!r}: {e}")
    if model_type == "bert":  # BERT's WordPiece vocabulary: vocab.txt (+ tokenizer_config.json)
        try:
            return model, module.WordPieceTokenizer.from_pretrained(directory)
        except (ValueError, FileNotFoundError) as e:
            fail(f"cannot use the tokenizer of {name_or_dir}: {e}")
    tokenizer_json = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(tokenizer_json):
        import bpe

        try:
            return model, bpe.Tokenizer.from_hf_tokenizer_json(tokenizer_json)
        except ValueError as e:
            fail(f"cannot use {tokenizer_json}: {e}")
    if model_type == "gpt":  # OpenAI's GPT-2 tokenizer, through tiktoken
        return model, prepare_data.load_tokenizer({"tokenizer": "gpt2"})
    fail(f"{name_or_dir} has no tokenizer.json; sample.py reads byte-level BPE tokenizer.json files "
         f"(SentencePiece .model files are not supported)")


def predict_with_encoder(cfg, model, tokenizer, autocast):
    """bert.py models: the fill_k likeliest tokens for each [MASK] in --start (with probabilities),
    or a sequence classifier's distribution over its labels. --start may be FILE:path."""
    module = sys.modules[type(model).__module__]
    head = model.config.head
    if head not in ("mlm", "sequence"):
        fail(f"this model has no fill-mask or classification head (head={head!r}); sample.py needs one of them")
    start = cfg["start"]
    if start.startswith("FILE:"):
        if not os.path.isfile(start[len("FILE:"):]):
            fail(f"prompt file {start[len('FILE:'):]!r} not found")
        with open(start[len("FILE:"):], encoding="utf-8") as f:
            start = f.read()
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

    if cfg["init_from"] == "resume":
        model, tokenizer = load_checkpoint(cfg["out_dir"])
    else:
        model, tokenizer = load_pretrained(cfg["init_from"])
    model.eval().to(cfg["device"])
    autocast = (nullcontext() if cfg["dtype"] == "float32"
                else torch.autocast(device_type=device_type, dtype=dtypes[cfg["dtype"]]))
    if not hasattr(model, "generate"):  # an encoder (bert.py) does not write text: it fills masks, classifies
        return predict_with_encoder(cfg, model, tokenizer, autocast)
    if cfg["compile"]:
        # Replace forward (which generate() calls) by its compiled version. Compiling is lazy, so try
        # a short generation now and fall back to the plain forward if this platform cannot compile.
        # dynamic=True: sequence lengths and the cache position change on every call, so compile one
        # shape-generic graph instead of recompiling for each new length.
        model.forward = torch.compile(model.forward, dynamic=True)
        try:
            with autocast:
                model.generate(torch.zeros((1, 1), dtype=torch.long, device=cfg["device"]), 2)
        except Exception as e:  # any compiler failure: sampling uncompiled is slower but correct
            del model.forward  # the class's forward again
            print(f"warning: torch.compile failed ({type(e).__name__}); sampling without compile", file=sys.stderr)
        torch.manual_seed(cfg["seed"])  # the trial must not change the samples

    def generate(prompt):
        try:
            ids = tokenizer.encode(prompt)
        except ValueError as e:  # e.g. characters a char-level model never saw
            fail(str(e))
        if not ids:
            fail("the prompt encodes to no tokens; give a non-empty --start")
        idx = torch.tensor([ids] * cfg["num_samples"], dtype=torch.long, device=cfg["device"])
        with autocast:
            out = model.generate(idx, cfg["max_new_tokens"], temperature=cfg["temperature"], top_k=cfg["top_k"],
                                 top_p=cfg["top_p"], repetition_penalty=cfg["repetition_penalty"])
        for row in out.tolist():
            print(tokenizer.decode(row))
            print("---------------")

    if cfg["interactive"]:
        print("type a prompt and press enter (an empty line or Ctrl-D quits)")
        while True:
            try:
                prompt = input("> ")
            except EOFError:
                break
            if not prompt:
                break
            generate(prompt)
        return
    start = cfg["start"]
    if start.startswith("FILE:"):
        path = start[len("FILE:"):]
        if not os.path.isfile(path):
            fail(f"prompt file {path!r} not found")
        with open(path, encoding="utf-8") as f:
            start = f.read()
    generate(start)


if __name__ == "__main__":
    main(sys.argv[1:])
