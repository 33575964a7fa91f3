"""
evaluate.py — measure a language model: HellaSwag accuracy, or its mean loss on a prepared dataset.

    python evaluate.py --init_from=out-shakespeare --task=hellaswag --limit=200   # out_dir with ckpt.pt
    python evaluate.py --init_from=path/to/SmolLM2-135M --task=hellaswag          # a Hugging Face directory
    python evaluate.py --init_from=gpt2 --task=hellaswag --dtype=bfloat16         # a hub id (downloaded once)
    python evaluate.py --init_from=gpt2 --task=hellaswag --data=my_set.jsonl --output=results.json
    python evaluate.py --init_from=gpt2 --task=loss --dataset=shakespeare         # mean validation loss

--init_from names the model as sample.py reads it: a folder holding ckpt.pt (written by gpt.py,
llama.py, olmo.py or bigram.py; its own tokenizer is in the checkpoint), else a Hugging Face
directory (a GPT-2, Llama or OLMo; its tokenizer.json, or tiktoken's GPT-2 encoding for a GPT-2
without one), else a hub id, downloaded once into $NANO_MODELS_CACHE (default
~/.cache/single-file-lms). Encoders (bert.py) and T5 are refused: neither assigns a probability to
a text read left to right, which is what both tasks measure.

--task=hellaswag: multiple choice by likelihood. Each example (one JSON object per line, HellaSwag's
own format: "ctx" (or "ctx_a" and "ctx_b"), "endings", a list of strings, and "label", the index of
the right one) is a context and candidate endings; the model never sees the choices side by side, it
only scores each ending as a continuation of the context, and the likeliest one is its answer. The
file is --data=FILE, or HellaSwag's 10,042-example validation set, downloaded once into the same
cache. --limit=N scores the first N examples; --batch_size=B examples go through the model at a time
(each as one sequence per ending). The last line printed is

    hellaswag acc=0.xxxx acc_norm=0.xxxx n=N

and --output=FILE writes the same figures as JSON, with each example's scores and predictions.

--task=loss: the mean cross-entropy on the validation split of a dataset prepared by prepare_data.py
(--dataset=NAME, in data/NAME; a known dataset is prepared first if it is not there yet), over
--eval_iters random batches of --batch_size sequences of --block_size tokens (default: the model's
context length), drawn with --seed as the training scripts draw them. The dataset must have been
tokenized with the model's own tokenizer (ids of another tokenizer are other words), or it is
refused. The last line printed is

    loss val=x.xxxx n_tokens=N

Options (all --key=value): init_from, task, data, limit, batch_size, device, dtype, output; for
--task=loss also dataset, eval_iters, block_size, seed. --dtype=bfloat16 (or float16) loads a
pretrained model's weights in that type and runs a checkpoint under autocast, as sample.py does;
log-probabilities are always summed in float32.
"""
import difflib
import json
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import prepare_data
import sample

DEFAULTS = {
    "init_from": "",  # an out_dir with ckpt.pt, a Hugging Face directory, or a hub id
    "task": "hellaswag",
    "data": "",  # a HellaSwag-format .jsonl file; empty: HellaSwag's validation set, downloaded once
    "limit": None,  # score only the first N examples; None: all of them
    "batch_size": 4,  # hellaswag: examples per forward pass (each one sequence per ending); loss: sequences
    "device": "auto",
    "dtype": "auto",
    "output": "",  # a .json file for the results; empty: print only
    "dataset": "",  # --task=loss: a dataset prepared by prepare_data.py, in data/NAME
    "eval_iters": 200,  # --task=loss: batches averaged, as the training scripts' eval_iters
    "block_size": None,  # --task=loss: tokens per sequence; None: the model's context length
    "seed": 1337,  # --task=loss: which random batches are drawn
}
# Keys that may also be None, and the type of their non-None value.
OPTIONAL = {"limit": int, "block_size": int}
TASKS = ("hellaswag", "loss")
# Models that give a probability to each next token; bert.py (an encoder) and t5.py (encoder-decoder) do not.
LANGUAGE_MODELS = ("bigram", "gpt", "llama", "olmo")
GPT2_HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # sample.py's short names for OpenAI's weights
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


def main(argv):
    cfg = parse_args(argv)
    device, device_type, dtype = resolve_device(cfg)
    model, tokenizer, tokenizer_matches = load_language_model(cfg["init_from"], dtype)
    model.eval().to(device)
    autocast = nullcontext() if dtype == torch.float32 else torch.autocast(device_type=device_type, dtype=dtype)
    if cfg["task"] == "hellaswag":
        path = cfg["data"] or download_hellaswag()
        examples = read_hellaswag(path, cfg["limit"])
        print(f"scoring {len(examples)} examples of {path} ({len(examples[0]['endings'])} endings each)")
        results = evaluate_hellaswag(model, tokenizer, examples, cfg["batch_size"], device, autocast)
        line = f"hellaswag acc={results['acc']:.4f} acc_norm={results['acc_norm']:.4f} n={results['n']}"
        results |= {"data": os.path.abspath(path)}
    else:
        results = evaluate_loss(cfg, model, tokenizer_matches, device, autocast)
        line = f"loss val={results['loss']:.4f} n_tokens={results['n_tokens']}"
    if cfg["output"]:
        write_json(cfg["output"], {"task": cfg["task"], "init_from": cfg["init_from"], "dtype": str(dtype)[6:]} | results)
    print(line)


def resolve_device(cfg):
    """(device, device type, torch dtype) for --device and --dtype, 'auto' resolved as sample.py does."""
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device_type = "cuda" if device.startswith("cuda") else device.split(":")[0]
    if device_type == "cuda" and not torch.cuda.is_available():
        fail("device='cuda' but no CUDA GPU is available; use --device=cpu")
    name = cfg["dtype"]
    if name == "auto":
        name = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        fail(f"dtype={name!r} must be one of auto, {', '.join(dtypes)}")
    return device, device_type, dtypes[name]


# -----------------------------------------------------------------------------
# Loading: a checkpoint of this repository or Hugging Face weights, through sample.py's loaders


def load_language_model(init_from, dtype):
    """(model, tokenizer, tokenizer_matches) for --init_from, where tokenizer_matches(meta) says
    whether a prepared dataset's meta describes the model's own tokenizer. The architecture is read
    first (the checkpoint's model_type, or config.json) so that an encoder or a T5 is refused before
    its weights are loaded or downloaded."""
    if not init_from:
        fail("give the model to evaluate: --init_from=<out_dir with ckpt.pt | Hugging Face directory | hub id>")
    checkpoint_path = sample.checkpoint_file(init_from)  # ckpt.pt, or a sharded checkpoint's training_state.pt
    if os.path.isfile(checkpoint_path):
        try:  # mmap: the model_type and tokenizer meta without reading the weights (load_checkpoint does)
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
            model_type, checkpoint_meta = checkpoint["model_type"], checkpoint["tokenizer"]
        except Exception as e:  # not a torch file, or a dict without our keys
            fail(f"{checkpoint_path} is not a readable checkpoint of this repository ({type(e).__name__})")
        refuse_unless_language_model(model_type, checkpoint_path)
        model, tokenizer, _ = sample.load_checkpoint(init_from)
        return model, tokenizer, lambda meta: tokenizer_fields(meta) == tokenizer_fields(checkpoint_meta)
    if os.path.isdir(init_from):
        config_path = os.path.join(init_from, "config.json")
        if not os.path.isfile(config_path):
            fail(f"{init_from} has neither ckpt.pt (a checkpoint of this repository) nor config.json (a Hugging "
                 f"Face checkpoint)")
        with open(config_path) as f:
            hf_type = json.load(f).get("model_type")
        directory = init_from
    else:
        hub_id = "openai-community/" + init_from if init_from in GPT2_HUB_NAMES else init_from
        hf_type = sample.hub_model_type(hub_id)  # reads only config.json; fails in one line when offline
        directory = sample.hub_cache_directory(hub_id)  # where load_pretrained downloads the files
    refuse_unless_language_model(sample.HF_MODEL_TYPES.get(hf_type, hf_type), init_from)
    model, tokenizer, _ = sample.load_pretrained(init_from, dtype)

    def tokenizer_matches(meta):
        # A GPT-2 reads GPT-2's tokens whether a dataset was tokenized by tiktoken (meta "gpt2") or by
        # the model's own tokenizer.json (the same vocabulary and merges, as a "bpe" meta).
        return (hf_type == "gpt2" and meta.get("tokenizer") == "gpt2") or prepare_data.same_tokenizer(meta, directory)
    return model, tokenizer, tokenizer_matches


def refuse_unless_language_model(model_type, source):
    if model_type not in LANGUAGE_MODELS:
        kind = {"bert": "an encoder (bert)", "t5": "an encoder-decoder (T5)"}.get(model_type, repr(model_type))
        fail(f"{source} holds {kind} model, which gives no probability to a text read left to right; "
             f"evaluate.py scores language models ({', '.join(LANGUAGE_MODELS)})")


def tokenizer_fields(meta):
    """The parts of a tokenizer meta that decide which ids a text becomes: the kind, and the char
    vocabulary, the BPE merges and specials, or the SentencePiece model. (A meta also records things
    that do not, such as the dataset's size or whether it is an excerpt.)"""
    return {key: meta.get(key) for key in ("tokenizer", "stoi", "bpe", "sentencepiece_model")}


# -----------------------------------------------------------------------------
# HellaSwag: the data


def download_hellaswag():
    """The path of HellaSwag's validation set in the cache, downloaded first if it is not there."""
    path, error = hellaswag_file()
    if error:
        fail(error)
    return path


def hellaswag_file():
    """(path of HellaSwag's validation set in the cache, None), downloading it first if it is not there;
    or (None, what to do) when the download fails. (The training scripts' hellaswag_interval uses this
    form: one process downloads while the others wait, and all must learn of a failure.)

    prepare_data.download writes the bytes as name.part and renames the file when complete, so the
    cached name always means a whole file (and a rerun resumes an interrupted download)."""
    import requests  # only needed for the download

    cache_root = os.environ.get("NANO_MODELS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "single-file-lms"))
    path = os.path.join(cache_root, "hellaswag", os.path.basename(HELLASWAG_URL))
    try:
        return prepare_data.download(HELLASWAG_URL, path), None
    except requests.RequestException as e:
        return None, (f"could not download {HELLASWAG_URL} ({type(e).__name__}); save that file as {path}, or pass "
                      f"any HellaSwag-format file with --data=FILE")


def read_hellaswag(path, limit):
    """The examples of a HellaSwag .jsonl file: a list of {"line", "ctx", "endings", "label"}.

    HellaSwag's own files give the context twice: split in two ("ctx_a", a full sentence, and "ctx_b",
    the start of the next one that each ending completes) and joined ("ctx"); ctx_a + " " + ctx_b
    stands in when "ctx" is missing. Each malformed line is refused with its line number."""
    if not os.path.isfile(path):
        fail(f"data file {path!r} not found")
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if limit is not None and len(examples) == limit:
                break
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{where} is not valid JSON ({e.msg} at column {e.colno})")
            if not isinstance(example, dict):
                fail(f"{where} must be a JSON object with ctx, endings and label")
            ctx = example.get("ctx")
            if ctx is None and isinstance(example.get("ctx_a"), str):
                ctx = " ".join(part for part in (example["ctx_a"], example.get("ctx_b") or "") if part)
            endings, label = example.get("endings"), example.get("label")
            if not isinstance(ctx, str):
                fail(f"{where} has no context: it needs a string 'ctx' (or 'ctx_a' and 'ctx_b')")
            if not (isinstance(endings, list) and len(endings) >= 2 and all(isinstance(e, str) and e for e in endings)):
                fail(f"{where}: 'endings' must be a list of at least two non-empty strings")
            if type(label) is not int or not 0 <= label < len(endings):
                fail(f"{where}: 'label' must be the index of the right ending, 0 to {len(endings) - 1}; got {label!r}")
            examples.append({"line": line_number, "ctx": ctx, "endings": endings, "label": label})
    if not examples:
        fail(f"{path} holds no examples")
    return examples


# -----------------------------------------------------------------------------
# HellaSwag: scoring each ending by its likelihood


def ending_rows(tokenizer, example, block_size):
    """One (token ids, number of ending tokens) per ending: the ids are those of context + ending,
    and the ending's tokens are its last ones, those whose probabilities score it.

    The ending is tokenized as it follows the context, not on its own: we encode ctx + " " + ending
    whole and take as the ending's tokens those after the context's (as lm-evaluation-harness and
    build-nanogpt's evaluation do). A BPE tokenizer splits text at word starts, and a word's token
    includes the space before it (" jumped", not "jumped"): the ending's first word is a different
    token after a context than at the start of a text, and the model would be asked about a
    spelling it rarely saw in that place. Taking the whole text's ids also feeds the model exactly
    the tokens it would read in a document. (For a character tokenizer every way agrees.)

    A tokenizer.json's template (Llama's BOS) goes before the context, as before every training
    document; its suffix, if any, does not go after the ending, whose tokens alone are scored.
    A row longer than the model's context (block_size + 1 tokens: block_size inputs, each
    predicting the next) keeps its last block_size + 1 tokens, the context cut on the left: the
    ending and the context nearest to it matter most, and the model cannot read more anyway.
    """
    template = getattr(tokenizer, "template", None)
    prefix = list(template[0]) if template is not None else []
    context_length = len(tokenizer.encode(example["ctx"]))
    rows = []
    for ending in example["endings"]:
        ids = prefix + tokenizer.encode(example["ctx"] + " " + ending)
        n_ending = len(ids) - len(prefix) - context_length
        where = f"line {example['line']}"
        if n_ending < 1:  # BPE merged the whole ending into the context's last token
            fail(f"{where}: the ending {ending!r} adds no tokens after the context")
        if n_ending == len(ids):  # the first token is never predicted: something must come before it
            fail(f"{where}: the context is empty and this tokenizer puts no BOS token first, so nothing "
                 f"predicts the ending's first token")
        if n_ending > block_size:
            fail(f"{where}: an ending of {n_ending} tokens does not fit the model's block_size={block_size}")
        rows.append((ids[-(block_size + 1):], n_ending))
    return rows


@torch.no_grad()
def score_rows(model, rows, device, autocast):
    """(summed, mean) log-likelihood of each row's ending tokens, given the tokens before them.

    Rows of different lengths go through the model as one batch, padded on the right. In a causal
    model a position reads only the positions before it, so the padding after a row's last token
    changes none of its logits, and the padded positions are left out of the sums: a row scores the
    same alone as in any batch (tests/test_evaluate.py checks it)."""
    longest = max(len(ids) for ids, _ in rows)
    tokens = torch.zeros((len(rows), longest), dtype=torch.long)  # id 0 pads: any id would do
    scored = torch.zeros((len(rows), longest - 1), dtype=torch.bool)
    for r, (ids, n_ending) in enumerate(rows):
        tokens[r, :len(ids)] = torch.tensor(ids)
        scored[r, len(ids) - 1 - n_ending:len(ids) - 1] = True  # the targets that are ending tokens
    tokens, scored = tokens.to(device), scored.to(device)
    with autocast:
        logits, _ = model(tokens[:, :-1])  # position t predicts token t + 1
    log_probs = F.log_softmax(logits.float(), dim=-1)  # float32: a bfloat16 sum of 20 terms loses digits
    target_log_probs = log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (rows, longest - 1)
    sums = (target_log_probs * scored).sum(dim=1)
    return sums.cpu(), (sums / scored.sum(dim=1)).cpu()


def evaluate_hellaswag(model, tokenizer, examples, batch_size, device, autocast, progress=True):
    """Accuracy two ways, with each example's scores: acc picks the ending with the highest summed
    log-likelihood, log p(ending | context); acc_norm the highest mean per token.

    The sum is the probability of the whole ending, which favours short endings: every token
    multiplies in one more probability below 1, so a long right answer loses to a short wrong one.
    Dividing by the ending's length compares the endings' typical per-token fit instead. The
    GPT-2/GPT-3-era papers report this length-normalised accuracy for HellaSwag because its endings
    differ in length and small models are fooled by that more than by meaning; both are printed
    here, as lm-evaluation-harness does. (lm-evaluation-harness divides by the ending's length in
    bytes; this divides by its tokens, as build-nanogpt does, so acc_norm can differ slightly.)

    progress: a line on stderr with the examples done, the rate and the time left (training turns it off).
    """
    block_size = model.config.block_size
    scored, started = [], time.monotonic()
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        rows = []
        for example in batch:
            try:
                rows += ending_rows(tokenizer, example, block_size)
            except ValueError as e:  # a character-level tokenizer meets a character it never saw
                fail(f"line {example['line']}: {e}")
        sums, means = score_rows(model, rows, device, autocast)
        offset = 0
        for example in batch:
            n = len(example["endings"])
            example_sums, example_means = sums[offset:offset + n], means[offset:offset + n]
            offset += n
            scored.append({"line": example["line"], "label": example["label"],
                           "pred": int(example_sums.argmax()), "pred_norm": int(example_means.argmax()),
                           "sum_logprobs": example_sums.tolist(), "mean_logprobs": example_means.tolist()})
        if progress:
            rate = len(scored) / (time.monotonic() - started)
            left = prepare_data.duration((len(examples) - len(scored)) / rate)
            print(f"\r{len(scored)}/{len(examples)} examples, {rate:.1f} examples/s, {left} left", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    n = len(scored)
    return {"acc": sum(s["pred"] == s["label"] for s in scored) / n,
            "acc_norm": sum(s["pred_norm"] == s["label"] for s in scored) / n, "n": n, "examples": scored}


# -----------------------------------------------------------------------------
# --task=loss: the validation loss on a prepared dataset


@torch.no_grad()
def evaluate_loss(cfg, model, tokenizer_matches, device, autocast):
    """Mean validation loss over eval_iters random batches, drawn as the training scripts' estimate_loss
    draws them (prepare_data.BatchLoader after torch.manual_seed(seed))."""
    if not cfg["dataset"]:
        fail("--task=loss needs --dataset=NAME, a dataset prepared by prepare_data.py")
    try:
        data_dir = prepare_data.ensure_prepared(cfg["dataset"])
        meta = prepare_data.load_meta(data_dir)
    except prepare_data.DataError as e:
        fail(str(e))
    if not tokenizer_matches(meta):
        fail(f"dataset {cfg['dataset']!r} was not tokenized with {cfg['init_from']}'s tokenizer (its ids would be "
             f"other words to this model); prepare it with the model's tokenizer")
    block_size = cfg["block_size"] or model.config.block_size
    if block_size > model.config.block_size:
        fail(f"block_size={block_size} is longer than the model's context, {model.config.block_size} tokens")
    try:
        loader = prepare_data.BatchLoader(data_dir, block_size, cfg["batch_size"], device)
    except prepare_data.DataError as e:
        fail(str(e))
    torch.manual_seed(cfg["seed"])
    total = 0.0
    for _ in range(cfg["eval_iters"]):
        x, y = loader.get_batch("val")
        with autocast:
            _, loss = model(x, y)
        total += loss.item()
    return {"loss": total / cfg["eval_iters"], "n_tokens": cfg["eval_iters"] * cfg["batch_size"] * block_size,
            "dataset": cfg["dataset"]}


def write_json(path, results):
    """Write results to path, under a temporary name first: an interrupted write leaves no half file."""
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)
    except OSError as e:
        fail(f"could not write {path} ({e})")
    print(f"wrote {path}")


# -----------------------------------------------------------------------------
# The command line: --key=value options over DEFAULTS, one-line errors


def fail(message):
    sys.exit(f"error: {message}")


def parse_args(argv):
    """--key=value arguments over DEFAULTS, read as sample.py reads its own (sample.parse_options:
    one-line errors, the nearest option name for a typo), then checked for meaning."""
    config = sample.parse_options(argv, DEFAULTS, OPTIONAL, __doc__, "evaluate.py")
    if config["task"] not in TASKS:
        close = difflib.get_close_matches(config["task"], TASKS, n=1)
        hint = f" (did you mean --task={close[0]}?)" if close else ""
        fail(f"unknown task {config['task']!r}{hint}; tasks: {', '.join(TASKS)}")
    for key in ("limit", "batch_size", "eval_iters", "block_size"):
        if config[key] is not None and config[key] < 1:
            fail(f"option {key!r} must be a positive integer, got {config[key]}")
    return config


if __name__ == "__main__":
    main(sys.argv[1:])
