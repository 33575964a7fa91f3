"""t5.py's span corruption: the noise mask's counts, inputs/targets that rebuild the text, sentinel ids,
training on a text dataset (loss falls, exact resume), sample.py filling a sentinel, bad input."""
import os
import re

import numpy as np
import pytest
import torch

import prepare_data
import sample
import t5
from conftest import TINY_T5, train_tiny_t5

DENSITY, MEAN_SPAN = 0.15, 3.0


def span_starts(mask):
    """Indices where a run of True begins."""
    m = mask.tolist()
    return [i for i, v in enumerate(m) if v and (i == 0 or not m[i - 1])]


@pytest.mark.parametrize("length", [20, 37, 64, 141, 568, 1000])
def test_noise_mask_has_t5s_counts(length):
    torch.manual_seed(length)
    num_noise = round(length * DENSITY)  # written out here, not through t5.noise_span_counts
    num_spans = round(num_noise / MEAN_SPAN)
    seen = set()
    for _ in range(50):
        mask = t5.random_spans_noise_mask(length, DENSITY, MEAN_SPAN)
        assert mask.shape == (length,) and mask.dtype == torch.bool
        assert int(mask.sum()) == num_noise
        assert len(span_starts(mask)) == num_spans
        assert not mask[0] and mask[-1]  # keep, noise, keep, ..., noise (T5's interleaving)
        seen.add(tuple(span_starts(mask)))
    # The spans move from draw to draw (a single span always ends the window, as in T5's code).
    assert len(seen) > (10 if num_spans > 1 else 0) and (num_spans > 1 or seen == {(length - num_noise,)})


def test_span_lengths_average_the_mean():
    torch.manual_seed(0)
    lengths = []
    for _ in range(200):
        mask = t5.random_spans_noise_mask(141, DENSITY, MEAN_SPAN).tolist()
        lengths += [len(run) for run in "".join("x" if v else " " for v in mask).split()]
    assert abs(np.mean(lengths) - 21 / 7) < 1e-9 and min(lengths) >= 1 and max(lengths) > 6


def test_window_length_reproduces_t5s_512_input_568_window_114_target():
    assert t5.span_window_length(512, DENSITY, MEAN_SPAN) == 568  # T5's random_spans_helper's numbers
    assert t5.noise_span_counts(568, DENSITY, MEAN_SPAN) == (85, 28)  # targets 85 + 28 + </s> = 114
    for block_size in (8, 33, 128, 300):
        window = t5.span_window_length(block_size, DENSITY, MEAN_SPAN)
        # input = kept tokens + one sentinel per span (at least one) + </s>
        corrupted = [n - round(n * DENSITY) + max(round(round(n * DENSITY) / MEAN_SPAN), 1) + 1
                     for n in (window, window + 1)]
        assert corrupted[0] <= block_size < corrupted[1]  # the longest window that fits


def reconstruct(inputs, targets, sentinel_ids):
    """Put each sentinel's tokens from the target back where the sentinel stands in the input."""
    fills, current = {}, None
    for token in targets:
        if token in sentinel_ids:
            current = token
            fills[current] = []
        else:
            fills[current].append(token)
    out = []
    for token in inputs:
        out += fills.pop(token) if token in sentinel_ids else [token]
    assert not fills  # every span was used once
    return out


def test_corrupt_spans_rebuilds_the_window_and_numbers_sentinels_down_from_the_top():
    torch.manual_seed(1)
    top = 999
    tokens = torch.randint(0, 50, (6, 80))
    mask = torch.stack([t5.random_spans_noise_mask(80, DENSITY, MEAN_SPAN) for _ in range(6)])
    inputs, targets = t5.corrupt_spans(tokens, mask, top)
    n_noise, n_spans = round(80 * DENSITY), round(round(80 * DENSITY) / MEAN_SPAN)
    assert inputs.shape == (6, 80 - n_noise + n_spans) and targets.shape == (6, n_noise + n_spans)
    sentinels = [top - k for k in range(n_spans)]
    for row in range(6):
        assert [t for t in inputs[row].tolist() if t >= 50] == sentinels  # <extra_id_0> = top, then down
        assert [t for t in targets[row].tolist() if t >= 50] == sentinels
        assert targets[row, 0] == top  # the target starts with a sentinel
        assert reconstruct(inputs[row].tolist(), targets[row].tolist(), set(sentinels)) == tokens[row].tolist()
    # A hand-made mask: spans "cd" and "g" of "abcdefgh".
    word = torch.arange(8)[None]
    mask = torch.tensor([[0, 0, 1, 1, 0, 0, 1, 0]], dtype=torch.bool)
    inputs, targets = t5.corrupt_spans(word, mask, 100)
    assert inputs.tolist() == [[0, 1, 100, 4, 5, 99, 7]] and targets.tolist() == [[100, 2, 3, 99, 6]]


@pytest.fixture(scope="module")
def text_root(tmp_path_factory, small_text_path):
    """<root>/data/excerpt: the committed 40 KB Shakespeare excerpt as a char dataset (58 characters)."""
    root = tmp_path_factory.mktemp("t5_span")
    prepare_data.prepare("excerpt", input_path=small_text_path, tokenizer="char", data_root=str(root / "data"))
    return root


def test_loader_batches_rebuild_windows_of_the_text(text_root):
    data_dir = str(text_root / "data" / "excerpt")
    meta = prepare_data.load_meta(data_dir)
    V = meta["vocab_size"]
    torch.manual_seed(0)
    loader = t5.SpanCorruptionLoader(data_dir, meta, 8, "cpu", 64, 16)
    # 70 * 0.15 = 10.5 rounds (to even) to 10 noise tokens in 3 spans: 70 - 10 + 3 + </s> = 64 input tokens,
    # 10 + 3 + </s> = 14 target tokens; 71 would give 11 in 4 spans and 65 input tokens.
    window, n_spans = 70, 3
    assert (loader.window, loader.input_length, loader.target_length) == (window, 64, 14)
    assert (loader.pad, loader.eos, loader.vocab_size, loader.top_id) == (V, V + 1, V + 2 + n_spans, V + 1 + n_spans)
    sentinels = [loader.top_id - k for k in range(n_spans)]
    assert loader.meta["t5_special_tokens"] == {"<pad>": V, "</s>": V + 1,
                                                 **{f"<extra_id_{k}>": s for k, s in enumerate(sentinels)}}
    stream = np.fromfile(os.path.join(data_dir, "train.bin"), dtype=np.uint16).tobytes()
    x, mask, decoder_x, y = loader.get_batch("train")
    assert x.shape == (8, 64) and y.shape == decoder_x.shape == (8, 14) and bool(mask.all())
    for row in range(8):
        assert x[row, -1] == V + 1 and y[row, -1] == V + 1  # both end with </s>
        assert decoder_x[row, 0] == V and torch.equal(decoder_x[row, 1:], y[row, :-1])  # teacher forcing
        original = reconstruct(x[row, :-1].tolist(), y[row, :-1].tolist(), set(sentinels))
        assert len(original) == window
        found = stream.find(np.array(original, dtype=np.uint16).tobytes())
        assert found >= 0 and found % 2 == 0  # a real window of the training text
    # The tokenizer reads and writes the special tokens by name.
    tokenizer = t5.load_tokenizer(loader.meta)
    ids = tokenizer.encode("But <extra_id_0> what</s>")
    assert ids == prepare_data.load_tokenizer(meta).encode("But ") + [loader.top_id] + \
        prepare_data.load_tokenizer(meta).encode(" what") + [V + 1]
    assert tokenizer.decode(ids) == "But <extra_id_0> what</s>"
    # sample.py's filled text: each sentinel of the input replaced by its span from the output; spans
    # for sentinels the input lacks (<extra_id_1>) dropped.
    char = prepare_data.load_tokenizer(meta).encode
    output = [loader.top_id] + char("is it") + [loader.top_id - 1] + char("xyz")
    assert tokenizer.fill_spans(ids[:-1], output) == "But is it what"
    assert tokenizer.fill_spans(tokenizer.encode("a <extra_id_1> b"), output) == "a xyz b"
    assert tokenizer.fill_spans(ids[:-1], []) == "But <extra_id_0> what"  # nothing filled
    assert tokenizer.decode(y[0].tolist()).startswith("<extra_id_0>")


# conftest's tiny T5 on the excerpt: windows of 34 characters, short targets (a few dropped spans).
TINY = TINY_T5 + ["--block_size=32", "--target_block_size=8", "--eval_iters=4", "--dataset=excerpt"]


@pytest.fixture(scope="module")
def trained(text_root):
    """(training log, out_dir) of a 60-iteration span-corruption run on the excerpt."""
    log = train_tiny_t5(text_root, TINY + ["--out_dir=out-span", "--max_iters=60", "--lr_decay_iters=60",
                                           "--eval_interval=30", "--dropout=0.0"])
    return log, text_root / "out-span"


def test_span_corruption_training_reduces_loss(trained):
    log, out_dir = trained
    val = [float(v) for v in re.findall(r"val loss ([0-9.]+)", log)]
    accuracy = [float(v) for v in re.findall(r"dropped token accuracy ([0-9.]+)%", log)]
    assert len(val) == 3 and val[-1] < val[0] - 1.5, log
    assert len(accuracy) == 3 and accuracy[-1] > accuracy[0], log
    assert "exact match" not in log  # a translation metric, not span corruption's
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)
    meta = checkpoint["tokenizer"]
    # block_size 32: windows of 34 characters, 5 dropped in 2 spans; 58 + <pad> + </s> + 2 sentinels.
    assert checkpoint["model_args"]["vocab_size"] == 62 == meta["vocab_size"] + 4
    assert meta["t5_special_tokens"]["<extra_id_0>"] == 61 and meta["t5_special_tokens"]["<extra_id_1>"] == 60
    assert (checkpoint["model_args"]["pad_token_id"], checkpoint["model_args"]["eos_token_id"]) == (58, 59)


def test_span_corruption_resume_is_exact(text_root):
    common = TINY + ["--eval_interval=10", "--dropout=0.1", "--lr_decay_iters=20"]
    straight = train_tiny_t5(text_root, common + ["--max_iters=20", "--out_dir=out-straight"])
    train_tiny_t5(text_root, common + ["--max_iters=10", "--out_dir=out-resumed"])
    resumed = train_tiny_t5(text_root, common + ["--max_iters=20", "--out_dir=out-resumed", "--init_from=resume"])
    a = torch.load(text_root / "out-straight" / "ckpt.pt", weights_only=True)
    b = torch.load(text_root / "out-resumed" / "ckpt.pt", weights_only=True)
    assert b["iter_num"] == 20
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert re.findall(r"val loss ([0-9.]+)", straight)[-1] == re.findall(r"val loss ([0-9.]+)", resumed)[-1]


def test_sample_fills_a_sentinel_like_generate(trained, capsys):
    out_dir = trained[1]
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)
    model = t5.T5(t5.T5Config(**checkpoint["model_args"])).eval()
    model.load_state_dict(checkpoint["model"])
    tokenizer = t5.load_tokenizer(checkpoint["tokenizer"])
    prompt = "MENENIUS: What <extra_id_0> the matter?"
    ids = torch.tensor([tokenizer.encode(prompt) + [model.config.eos_token_id]])
    out = model.generate(ids, 10, temperature=0.0)[0, 1:].tolist()
    out = out[:out.index(model.config.eos_token_id)] if model.config.eos_token_id in out else out
    capsys.readouterr()
    sample.main([f"--out_dir={out_dir}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
                 "--max_new_tokens=10", "--device=cpu"])
    printed = capsys.readouterr().out
    filled = tokenizer.fill_spans(ids[0, :-1].tolist(), out)
    assert printed == tokenizer.decode(out) + "\nfilled: " + filled + "\n---------------\n"
    assert printed.startswith("<extra_id_0>")  # the model has learned that a target opens with the sentinel
    fill, in_span = [], False  # the tokens after <extra_id_0> (61) up to the next special token (ids >= 58)
    for token in out:
        if token >= 58:
            in_span = token == 61
        elif in_span:
            fill.append(token)
    assert filled == prompt.replace("<extra_id_0>", tokenizer.decode(fill))


def test_bad_span_corruption_settings_give_one_line_errors(text_root, trained, monkeypatch):
    monkeypatch.chdir(text_root)
    cases = [
        (["--out_dir=o", *TINY, "--target_block_size=7"], "makes targets of 8 tokens, more than target_block_size=7; "
                                                          "raise it to 8"),
        (["--out_dir=o", *TINY, "--block_size=2"], "block_size=2 is too short for span corruption"),
        (["--out_dir=o", *TINY, "--noise_density=1.5"], "span corruption needs 0 < noise_density < 1"),
        # A longer block_size has windows with 3 spans, so one sentinel more than the checkpoint knows.
        ([f"--out_dir={trained[1]}", *TINY, "--init_from=resume", "--block_size=64", "--target_block_size=16"],
         "the checkpoint's vocabulary has 62 ids and this dataset and block_size need 63"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            t5.main(args)
        text = str(exit_info.value)
        assert text.startswith("error: ") and message in text and "\n" not in text, (args, text)
    # The dataset chooses the loader; a PairLoader given plain text by hand still says what it needs.
    data_dir = str(text_root / "data" / "excerpt")
    with pytest.raises(prepare_data.DataError, match="is not a pairs dataset"):
        t5.PairLoader(data_dir, prepare_data.load_meta(data_dir), 4, "cpu", 16, 16)
