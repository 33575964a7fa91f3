"""Shared pytest set-up: the repository on sys.path, and the data tests need, found the same way everywhere.

The tests import the model scripts as modules (`import gpt`), so the repository root goes on sys.path.

Data. The suite must behave the same on every machine: a fresh clone with no internet, a user's laptop
with internet, and the development machine with a `../shared` folder of offline copies. So no test
looks for data files itself; it uses one of these, and a test that cannot have its data is skipped
with a message that says what is missing and how to provide it, never failed.

    small_text, small_text_path   (fixtures; also the constant SMALL_TEXT_PATH)
        tests/data/tinyshakespeare_excerpt.txt: the first 40 KB of tiny Shakespeare (the opening of
        Coriolanus; Shakespeare is public domain), committed with the tests. For tests that only
        need "some text": always present, so their assertions hold everywhere. Prompts given to
        models trained on it must come from it, e.g. "MENENIUS:" (it has 58 distinct characters and
        lacks K, Q, X, Z, $, & and 3, which the full text has).
    tiny_shakespeare              (session fixture) path to the full tiny Shakespeare input.txt
        Found as the scripts find it: ../shared/data/tinyshakespeare/input.txt (an offline copy
        beside the checkout), else data/shakespeare*/input.txt in the repository (what
        prepare_data.py downloaded before), else downloaded there by prepare_data.py; else skip,
        as when the copy found is only the excerpt above (or any text but the full one).
    gpt2_bpe_files                (session fixture) (encoder.json path, vocab.bpe path) of GPT-2
        The files tiktoken's "gpt2" encoding is built from, read through tiktoken's own cache
        (TIKTOKEN_CACHE_DIR, else DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache), which downloads
        them when they are missing; else skip.
    gpt2_encoding                 (session fixture) tiktoken.get_encoding("gpt2"), or skip.

When ../shared/data/tiktoken_cache exists and TIKTOKEN_CACHE_DIR is unset, TIKTOKEN_CACHE_DIR points
there, so tiktoken (in the tests and in the scripts they start) finds GPT-2's files offline.

Tiny T5 runs. TINY_T5 (arguments) and train_tiny_t5 (a function), imported by tests/test_t5.py and
tests/test_t5_span.py (`from conftest import ...`): the model and optimiser settings their training runs
share; each file adds its own data's lengths, evaluation and dataset.

byte_level_tokenizer_json(path, text) trains and saves a small byte-level BPE tokenizer.json, the kind
Llama and OLMo checkpoints carry, for the tests that build such a checkpoint (`from conftest import ...`).
"""
import contextlib
import io
import json
import os
import sys

import pytest

# One OpenMP thread per process, set before torch is imported. The suite's models are tiny, so a
# second thread buys little; but when processes overlap (a training subprocess while pytest's own
# threads still spin, or torchrun's two ranks) oversubscribed spinning threads can make each step
# tens of times slower on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
SMALL_TEXT_PATH = os.path.join(REPO, "tests", "data", "tinyshakespeare_excerpt.txt")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

_tiktoken_cache = os.path.join(SHARED_DATA, "tiktoken_cache")
if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(_tiktoken_cache):
    os.environ["TIKTOKEN_CACHE_DIR"] = _tiktoken_cache

# Where tiktoken's "gpt2" encoding downloads its two files from (tiktoken_ext/openai_public.py);
# read_file_cached keys its cache by these URLs.
GPT2_FILE_URLS = {
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
}
GPT2_HOW_TO_PROVIDE = ("connect to the internet once (tiktoken caches them), or set TIKTOKEN_CACHE_DIR to a "
                       "folder that holds tiktoken's cached GPT-2 files")


@pytest.fixture(scope="session")
def small_text_path():
    return SMALL_TEXT_PATH


@pytest.fixture(scope="session")
def small_text():
    # newline="" keeps the file's characters exactly (it has only "\n" line ends anyway).
    with open(SMALL_TEXT_PATH, encoding="utf-8", newline="") as f:
        return f.read()


@pytest.fixture(scope="session")
def tiny_shakespeare():
    return find_tiny_shakespeare(SHARED_DATA, os.path.join(REPO, "data"))


def find_tiny_shakespeare(shared_data, data_root):
    """The fixture's search, a function so that a test can run it in a temp dir: the path of the full
    text, or pytest.skip. A copy that is only the 40 KB excerpt (prepared from, offline) skips too: the
    tests that ask for the full text assert what only the full text gives (65 characters, its speakers)."""
    import prepare_data

    shared_copy = os.path.join(shared_data, "tinyshakespeare", "input.txt")
    if os.path.isfile(shared_copy):
        path = shared_copy
    else:
        # prepare_data.py's own search: any data/shakespeare*/input.txt, a full one first, else a download
        # into data/shakespeare_char/input.txt (so a later `python prepare_data.py shakespeare_char` reuses it).
        try:
            path = prepare_data.shakespeare_input("shakespeare_char", data_root)
        except prepare_data.DataError as e:
            cause = e.__context__.__class__.__name__ if e.__context__ else str(e)  # requests' long message aside
            pytest.skip(f"needs tiny Shakespeare, which is neither in {shared_copy} nor in "
                        f"{data_root}/shakespeare*/input.txt and could not be downloaded ({cause}); save "
                        f"{prepare_data.SHAKESPEARE_URL} as {os.path.join(data_root, 'shakespeare_char', 'input.txt')}")
    kind = prepare_data.shakespeare_text_kind(path)
    if kind != "full":
        what = "the 40 KB excerpt" if kind == "excerpt" else "another text"
        pytest.skip(f"needs the full tiny Shakespeare (1.1 MB), but {path} is {what}; replace it with "
                    f"{prepare_data.SHAKESPEARE_URL}")
    return path


@pytest.fixture(scope="session")
def gpt2_bpe_files(tmp_path_factory):
    tiktoken_load = pytest.importorskip("tiktoken.load")
    directory = tmp_path_factory.mktemp("gpt2_bpe")
    paths = []
    for name, url in GPT2_FILE_URLS.items():
        try:
            data = tiktoken_load.read_file_cached(url)
        except Exception as e:  # requests' errors when offline; OSError for an unreadable cache
            pytest.skip(f"needs GPT-2's BPE files (encoder.json, vocab.bpe), which are not in tiktoken's cache "
                        f"and could not be downloaded ({e.__class__.__name__}); {GPT2_HOW_TO_PROVIDE}")
        # A copy under its plain name, as GPT-2 ships it (tiktoken's cache names files by a hash).
        paths.append(directory / name)
        paths[-1].write_bytes(data)
    return tuple(str(path) for path in paths)


@pytest.fixture(scope="session")
def gpt2_encoding(gpt2_bpe_files):
    # After gpt2_bpe_files, tiktoken's cache holds both files (unless caching is off, when this
    # downloads them again, which worked a moment ago).
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        pytest.skip(f"tiktoken could not load GPT-2's encoding ({e.__class__.__name__}); {GPT2_HOW_TO_PROVIDE}")



def byte_level_tokenizer_json(path, text, vocab_size=300):
    """Train a byte-level BPE tokenizer.json (Llama's and OLMo's kind) of vocab_size on text, save it
    at path and return it (a tokenizers.Tokenizer); skips the test where tokenizers is missing."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    tok.save(str(path))
    return tok

def _read_run_log(out_dir, superseded=False):
    with open(os.path.join(out_dir, "log.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if superseded or not r.get("superseded")]


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A stand-in for huggingface.co: files put under tmp_path/"hub" (owner/name/resolve/main/...) are
    served by a local HTTP server, every requests.get to https://huggingface.co goes to it, and
    downloads are cached in tmp_path/"cache" ($NANO_MODELS_CACHE). Returns the list of URLs asked for,
    as the scripts wrote them."""
    import functools
    import http.server
    import threading

    requests = pytest.importorskip("requests")
    (tmp_path / "hub").mkdir(exist_ok=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "hub"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    real_get, requested = requests.get, []

    def local_get(url, **kwargs):
        requested.append(url)
        return real_get(url.replace("https://huggingface.co", f"http://127.0.0.1:{server.server_address[1]}"), **kwargs)

    monkeypatch.setattr(requests, "get", local_get)
    monkeypatch.setenv("NANO_MODELS_CACHE", str(tmp_path / "cache"))
    yield requested
    server.shutdown()
    server.server_close()


@pytest.fixture
def run_log():
    """A function: out_dir -> the records of its log.jsonl, in order, without those a resume marked
    superseded (superseded=True: all of them)."""
    return _read_run_log


@pytest.fixture
def run_log_values():
    """A function: out_dir -> its log.jsonl's eval and train records without timings (ms per iteration,
    tokens/s, MFU), which differ between two runs that compute the same thing."""
    def values(out_dir):
        timings = ("ms_per_iter", "tokens_per_sec", "mfu")
        return [{k: v for k, v in r.items() if k not in timings} for r in _read_run_log(out_dir) if r["kind"] != "start"]
    return values


# One encoder and one decoder layer of width 32 on the CPU, in float32 without compiling: a run of tens
# of iterations takes seconds, yet learns enough for the tests' "the loss falls" to be a real check.
TINY_T5 = ["--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=1", "--n_decoder_layer=1", "--n_head=2",
           "--n_embd=32", "--head_dim=16", "--n_ff=64", "--batch_size=16", "--log_interval=5",
           "--learning_rate=1e-2", "--warmup_iters=2"]


def train_tiny_t5(root, args):
    """Run t5.main(args) in the directory root (whose data/ holds the dataset, and where out_dir goes);
    return what it printed. Usable from module-scoped fixtures, which cannot take monkeypatch or capsys."""
    import t5

    log, cwd = io.StringIO(), os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(log):
            t5.main(args)
    finally:
        os.chdir(cwd)
    return log.getvalue()
