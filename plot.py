"""
plot.py — pictures for learners: training runs side by side, and what each position scheme looks like.

Reading numbers scrolling past is a poor way to compare two training runs, and a paragraph about
rotary embeddings is a poor way to see them. This script draws two figures, each into one PNG:

  1. Runs. Every training script in this repository appends a line of JSON to <out_dir>/log.jsonl at
     each log and eval step. Given several out_dirs, plot.py draws their train loss and val loss
     against iterations (or tokens seen) on shared axes, one colour per run, plus the model's own
     metric (bert.py's masked-token accuracy, t5.py's exact match) on a third axis when the runs have
     one. The legend names each run by its out_dir and by the config keys whose values differ
     between the runs, which is usually the one thing the comparison is about.

  2. Positions. A Transformer's attention is blind to order until something tells it where each
     token is. This repository shows three answers, and the figure puts them side by side:
       - gpt.py learns a table of one vector per position (GPT-2's wpe), added to the tokens;
       - llama.py rotates queries and keys by position-dependent angles (RoPE, Su et al. 2021);
       - olmo.py --pos_emb=alibi adds a per-head penalty proportional to distance (ALiBi, Press
         et al. 2022) to the attention scores.
     Each panel is computed by the model scripts' own functions (imported, not re-implemented), so
     the picture shows exactly what the models compute.

Run it:
    python gpt.py config/shakespeare_char_cpu.py --out_dir=out-a
    python gpt.py config/shakespeare_char_cpu.py --out_dir=out-b --learning_rate=1e-3
    python plot.py out-a out-b                            # -> runs.png: loss against iterations
    python plot.py out-a out-b --x=tokens --out=cmp.png   # against tokens seen (fair across batch sizes)
    python plot.py --positions --checkpoint=out-a         # -> positions.png, with out-a's learned table

matplotlib draws the pictures. It is an optional dependency: the model scripts never import it, and
plot.py imports it only when it draws, saying how to install it when it is missing.

The log format (written by the training scripts; one JSON object per line, in order):
    {"kind": "start", "iter": N, "model_type": "gpt", "tokens_per_iter": ..., "config": {...}}
        at the start of each run and of each resume;
    {"kind": "train", "iter": N, "tokens": ..., "loss": ..., "lr": ..., "ms_per_iter": ..., ...}
        every log_interval (the loss of optimizer step N);
    {"kind": "eval", "iter": N, "tokens": ..., "train_loss": ..., "val_loss": ..., "lr": ..., ...}
        every eval_interval, with the model's own metric as extra keys starting with "val_".
"""

import argparse
import json
import os
import sys

# Run logs are plotted without torch (importing it takes seconds); the positions figure imports the
# model scripts, and with them torch, when it is drawn.

MISSING_MATPLOTLIB = "plot.py draws with matplotlib, which is not installed: pip install matplotlib"


class PlotError(Exception):
    """A mistake in what plot.py was given; main() prints it as one "error: ..." line."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported only now: the one place plot.py needs it.

    Agg renders to image files without a display, so plot.py works the same on a laptop, over ssh
    and in CI. The backend must be chosen before pyplot is first imported.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(MISSING_MATPLOTLIB) from None
    return plt


# -----------------------------------------------------------------------------
# Reading run logs


def read_run(out_dir):
    """Read <out_dir>/log.jsonl into {"name", "model_type", "config", "train": [...], "eval": [...]}.

    "train" and "eval" hold the records of those kinds in iteration order. The config is the last
    start record's: a run resumed with other settings (say a lower learning rate) is described by
    the settings it ended with, except init_from, which keeps the value the run began with ('scratch',
    'gpt2', ...): a resumed run compares with an uninterrupted one as the same kind of run.

    A resumed run starts again from its checkpoint's iteration N: the steps logged after N before
    the resume were lost with the process, and are trained and logged again. So a start record at N
    drops what came before it from N on, except the evaluation at N itself (the checkpoint was saved
    right after it, and the resumed run does not repeat it): each iteration is drawn once. The
    training scripts' start_run_log already rewrites log.jsonl this way when they resume; reading
    it with the same rule keeps a log put together any other way (files concatenated) correct.
    """
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise PlotError(f"{path} not found: train with gpt.py (or llama.py, olmo.py, ...) --out_dir={out_dir} "
                        f"first; runs trained before log.jsonl existed have none")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PlotError(f"cannot read {path}: {e}") from None
    run = {"name": os.path.normpath(out_dir), "model_type": None, "config": {}, "train": [], "eval": []}
    unreadable = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = parse_record(line)
        if record is None:
            # A process killed mid-write leaves a cut-off last line; that is expected and skipped
            # silently. An unreadable line anywhere else is worth a warning.
            if number != len(lines):
                unreadable.append(number)
            continue
        kind = record["kind"]
        if kind == "start":
            config = dict(record["config"])
            if config.get("init_from") == "resume" and "init_from" in run["config"]:
                config["init_from"] = run["config"]["init_from"]  # how the run began, not how it was continued
            run["model_type"], run["config"] = record.get("model_type"), config
            run["train"] = [r for r in run["train"] if r["iter"] < record["iter"]]
            run["eval"] = [r for r in run["eval"] if r["iter"] <= record["iter"]]
        else:
            run[kind].append(record)
    if unreadable:
        print(f"warning: {path}: skipped {len(unreadable)} unreadable line(s): {unreadable[:10]}", file=sys.stderr)
    if not run["train"] and not run["eval"]:
        raise PlotError(f"{path} has no train or eval records yet: let the run reach its first log_interval "
                        f"(or eval_interval) and try again")
    return run


def parse_record(line):
    """The record on one line of log.jsonl, or None when it is not one plot.py can draw.

    A record must be a JSON object of a known kind with the keys drawn from it: an integer "iter",
    numbers for the tokens and losses, a dict for a start record's config.
    """
    try:
        record = json.loads(line)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return None
    needed = {"start": ("config",), "train": ("tokens", "loss"), "eval": ("tokens", "val_loss")}
    if not isinstance(record, dict) or record.get("kind") not in needed or not isinstance(record.get("iter"), int):
        return None
    for key in needed[record["kind"]]:
        wanted = dict if key == "config" else (int, float)
        if not isinstance(record.get(key), wanted):
            return None
    return record


def differing_keys(runs):
    """The config keys (and the model type) whose values differ between the runs, in config order.

    Only keys every run has are compared: a key only llama.py has (rope_theta) says nothing more
    than the model type does, which is included as "model_type". Keys that only name things are left
    out: out_dir names the run already, and wandb_project and wandb_run_name default to the script's
    name.
    """
    names = ("out_dir", "wandb_project", "wandb_run_name")
    configs = [{"model_type": run["model_type"]} | run["config"] for run in runs]
    shared = [key for key in configs[0] if key not in names and all(key in c for c in configs)]
    return [key for key in shared if any(c[key] != configs[0][key] for c in configs)]


def run_label(run, keys, max_keys=4):
    """'out-a (learning_rate=0.001, n_layer=4)': the out_dir, then the values of the differing keys."""
    config = {"model_type": run["model_type"]} | run["config"]

    def show(value):
        return f"{value:g}" if isinstance(value, float) else str(value)

    shown = [f"{key}={show(config[key])}" for key in keys[:max_keys]]
    if len(keys) > max_keys:
        shown.append(f"+{len(keys) - max_keys} more")
    return f"{run['name']} ({', '.join(shown)})" if shown else run["name"]


def metric_key(run):
    """The run's own metric: the first eval key starting with "val_" other than val_loss, or None."""
    for record in run["eval"]:
        for key in record:
            if key.startswith("val_") and key != "val_loss":
                return key
    return None


# -----------------------------------------------------------------------------
# Figure 1: training runs compared


def runs_figure(out_dirs, x="iters"):
    """One figure of the runs in out_dirs (their log.jsonl, read with read_run): train loss | val loss
    [| the model's metric] against iterations or tokens seen.

    What to look at:
      - Train loss (thin line, every log_interval) is one batch's loss: noisy. The dots on it are
        the eval's train loss, averaged over eval_iters batches, which is what to compare with val.
      - Val loss is the honest number. When a run's val loss turns up while its train loss keeps
        falling, it has started to memorise the training text (overfitting).
      - Against iterations, a run with bigger batches looks better per step simply because each step
        sees more text; --x=tokens compares runs by the data they have consumed instead.
      - A learning rate too high shows as spikes or a plateau early; too low as a slow, steady slope.
    """
    # A wrong axis and a missing matplotlib are reported before any log is read; main() relies on it.
    if x not in ("iters", "tokens"):
        raise PlotError(f"--x={x} must be iters or tokens")
    plt = pyplot()  # matplotlib missing: said before reading the logs, not after
    runs = [read_run(out_dir) for out_dir in out_dirs]
    x_key = "iter" if x == "iters" else "tokens"
    metrics = [metric_key(run) for run in runs]
    # The first run's metric decides the axis; runs with another metric (or none) are not drawn on it.
    metric = next((m for m in metrics if m is not None), None)
    n_axes = 3 if metric else 2
    fig, axes = plt.subplots(1, n_axes, figsize=(5.2 * n_axes, 4.2 + 0.2 * len(runs)), layout="constrained")
    keys = differing_keys(runs)
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"  # matplotlib's default cycle of ten distinguishable colours
        label = run_label(run, keys)
        # Train: every logged step as a thin line, the evals' averaged train loss as dots.
        axes[0].plot([r[x_key] for r in run["train"]], [r["loss"] for r in run["train"]],
                     color=colour, linewidth=0.8, alpha=0.8, label=label)
        evals = [r for r in run["eval"] if "train_loss" in r]
        axes[0].plot([r[x_key] for r in evals], [r["train_loss"] for r in evals], "o", color=colour, markersize=3)
        axes[1].plot([r[x_key] for r in run["eval"]], [r["val_loss"] for r in run["eval"]],
                     "o-", color=colour, markersize=3, label=label)
        if metric and metrics[i] == metric:
            with_metric = [r for r in run["eval"] if r.get(metric) is not None]
            axes[2].plot([r[x_key] for r in with_metric], [r[metric] for r in with_metric],
                         "o-", color=colour, markersize=3, label=label)
    titles = ["train loss (line: each logged step; dots: eval average)", "val loss", metric]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration" if x == "iters" else "tokens seen")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy (nats per token)")
    # One legend for all the axes, below them: the labels can be long, and the colours are shared.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=8)
    return fig


# -----------------------------------------------------------------------------
# Figure 2: position schemes


def load_position_table(checkpoint):
    """(table (block_size, n_embd) float32, description) from a gpt.py or bert.py checkpoint.

    checkpoint: an out_dir (its ckpt.pt is read) or the path of a ckpt.pt. Only scripts with a
    learned position table have one to show: llama.py and olmo.py position tokens inside attention.
    """
    import torch

    path = os.path.join(checkpoint, "ckpt.pt") if os.path.isdir(checkpoint) else checkpoint
    if not os.path.isfile(path):
        raise PlotError(f"{path} not found: give --checkpoint an out_dir that a training run wrote ckpt.pt into")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: torch raises several kinds of errors
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PlotError(f"cannot read {path} as a checkpoint ({type(e).__name__}: {first_line}); give "
                        f"--checkpoint the out_dir of a gpt.py run") from None
    tables = {"gpt": "transformer.wpe.weight", "bert": "embeddings.wpe.weight"}
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise PlotError(f"{path} is not a checkpoint written by this repository's training scripts")
    model_type = saved.get("model_type")
    if model_type not in tables:
        raise PlotError(f"{path} is a {model_type} checkpoint, which has no learned position table; give one "
                        f"written by gpt.py (or bert.py)")
    if tables[model_type] not in saved["model"]:
        raise PlotError(f"{path} has no {tables[model_type]}: not a checkpoint written by {model_type}.py")
    table = saved["model"][tables[model_type]].float()
    return table, f"{model_type} {path}, iteration {saved.get('iter_num')}"


def untrained_position_table():
    """A gpt.py position table as training starts it (GPT-2's N(0, 0.02) init), for the CPU preset's shape.

    Drawn when no checkpoint is given, so the panel still teaches something: before training the
    table holds no notion of order at all, and everything a trained one shows was learned.
    """
    import torch

    import gpt

    with torch.random.fork_rng():  # a fixed picture, without touching the caller's random state
        torch.manual_seed(0)
        model = gpt.GPT(gpt.GPTConfig(block_size=64, vocab_size=65, n_layer=1, n_head=4, n_embd=128))
    about = "gpt.py at initialisation: UNTRAINED, random\n(--checkpoint=<gpt.py out_dir> shows a trained one)"
    return model.transformer.wpe.weight.detach(), about


def cosine_similarity_matrix(table):
    """(P, P) cosine similarity between every two rows of a (P, C) table: how alike two positions look."""
    unit = table / table.norm(dim=-1, keepdim=True)
    return unit @ unit.T


# The RoPE settings compared: head_dim 128 as in LLaMA 7B and Llama 3 8B (4096 channels, 32 heads).
ROPE_SETTINGS = [
    ("LLaMA 1/2: theta=10000", dict(rope_theta=10000.0)),
    ("Llama 3: theta=500000", dict(rope_theta=500000.0)),
    ("Llama 3.1: theta=500000, llama3 scaling x8",
     dict(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
]


def rope_curves(max_distance=512):
    """For each of ROPE_SETTINGS: (label, inv_freq (64,), score by relative distance (max_distance,)).

    Computed with llama.py's own functions. The score is q.k / head_dim for q = k = a vector of
    ones, with q at position 0 and k rotated to positions 0 .. max_distance - 1: pair i contributes
    2 cos(distance * inv_freq[i]), so the score is the mean cosine over the 64 rotation frequencies.
    At distance 0 every cosine is 1; further away the fast pairs have spun to all angles and cancel
    out, and only the slow pairs still agree. This is the long-range decay Su et al. derive
    (RoFormer, section 3.4.3): RoPE by itself makes distant tokens weigh less, without learning it.
    """
    import torch

    import llama

    curves = []
    for label, settings in ROPE_SETTINGS:
        config = llama.LlamaConfig(n_embd=4096, n_head=32, **settings)
        inv_freq = llama.rope_inverse_frequencies(config)
        head_dim = config.n_embd // config.n_head
        cos, sin = llama.rope_cos_sin(inv_freq, 0, max_distance)
        ones = torch.ones(1, 1, max_distance, head_dim)  # (B, n_head, T, head_dim)
        keys = llama.apply_rope(ones, cos, sin)[0, 0]  # (T, head_dim): the same key at every position
        query = llama.apply_rope(ones[:, :, :1], cos[:1], sin[:1])[0, 0, 0]  # position 0: not rotated
        curves.append((label, inv_freq, keys @ query / head_dim))
    return curves


def alibi_biases(n_head=8, length=64):
    """(n_head, length) ALiBi bias of each head for keys 0 .. length - 1 tokens back, and the slopes.

    Computed by olmo.py itself: a one-layer OLMo with pos_emb='alibi' builds its attention mask for a
    sequence of `length` tokens, and the last query's row is read backwards (distance 0 first).
    """
    import torch

    import olmo

    config = olmo.OLMoConfig(block_size=length, vocab_size=16, n_layer=1, n_head=n_head, n_kv_head=n_head,
                             n_embd=8 * n_head, pos_emb="alibi")
    model = olmo.OLMo(config)
    bias = model.attention_mask(0, length, None, torch.device("cpu"))  # (n_head, T, T)
    return bias[:, -1, :].flip(-1), model.slopes


def positions_figure(checkpoint=None):
    """One figure, four panels: learned table, ALiBi biases, RoPE frequencies, RoPE decay (fig.axes in that order)."""
    plt = pyplot()
    # Two by two, so the figure stays legible at a README's width: learned | ALiBi, then RoPE's two.
    fig, ((learned, alibi), (rope_speed, rope_decay)) = plt.subplots(2, 2, figsize=(11, 7.8), layout="constrained")

    # (a) Learned positions. What to notice in a trained table: a bright band along the diagonal,
    # wider than one cell. Nobody told the model that position 10 is near position 11; it learned
    # vectors that are alike for nearby positions because nearby positions behave alike in text. The
    # band's width is how far "nearby" reaches; far apart, positions look unrelated (near 0) or
    # opposed. Row 0 is often an outlier: the first token has no context, unlike any other. The
    # catch: no table row exists beyond block_size, so a learned table cannot run longer contexts.
    if checkpoint:
        table, about = load_position_table(checkpoint)
    else:
        table, about = untrained_position_table()
    similarity = cosine_similarity_matrix(table)
    image = learned.imshow(similarity.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=learned, shrink=0.8)
    learned.set_title(f"learned position table (wpe): cosine similarity of its rows\n{about}", fontsize=9)
    learned.set_xlabel("position")
    learned.set_ylabel("position")

    # (b) RoPE, the bottom row. Left: each of the 64 channel pairs of a head rotates at its own speed, a geometric
    # ladder from 1 radian per token (pair 0: a full turn every 6 tokens, local order) down to about
    # 1/theta (a turn every ~60000 tokens at theta 10000: coarse, long-range position). A larger
    # theta stretches the slow end; Llama 3.1's scaling slows only the slowest pairs further, by 8x,
    # so a 128K context spans, for them, the angles an 8K one did in training.
    # Right: how much a query and an identical key agree as they move apart. The score falls with
    # distance (with ripples): RoPE alone makes far tokens count less. A larger theta decays more
    # slowly: part of why long-context models raised it. (The two Llama 3 curves all but coincide here:
    # the scaling changes only pairs too slow to turn noticeably within 512 tokens.)
    for label, inv_freq, score in rope_curves():
        rope_speed.plot(inv_freq.numpy(), label=label)
        rope_decay.plot(score.numpy(), label=label, linewidth=1)
    rope_speed.set_yscale("log")
    rope_speed.set_title("RoPE (llama.py): rotation speed of each channel pair\ntheta^(-2i/d), head_dim 128",
                         fontsize=9)
    rope_speed.set_xlabel("channel pair i")
    rope_speed.set_ylabel("radians per token")
    rope_decay.set_title("RoPE: q.k / head_dim for q = k = ones,\nk moved away by the distance (Su et al. 3.4.3)",
                         fontsize=9)
    rope_decay.set_xlabel("relative distance (tokens)")
    rope_speed.legend(fontsize=7)
    rope_decay.legend(fontsize=7)

    # (c) ALiBi, top right. Each head adds -m_h * distance to its attention scores, so after the softmax a
    # key d tokens back is weighted by a factor e^(-m_h d) less than it would be: head 1 (m = 1/2)
    # looks a few tokens back at most, head 8 (m = 1/256) across the whole context. Nothing is
    # learned and nothing is added to the tokens, and a line can be extended to any length: why
    # ALiBi models read contexts longer than they were trained on ("train short, test long").
    biases, slopes = alibi_biases()
    for h in range(len(slopes)):
        alibi.plot(biases[h].numpy(), label=f"head {h + 1}: m = 1/{1 / slopes[h].item():g}")
    alibi.set_title("ALiBi (olmo.py --pos_emb=alibi): bias added to scores\n-m_h x distance, m_h = 2^(-8h/H), H = 8",
                    fontsize=9)
    alibi.set_xlabel("distance to the key (tokens)")
    alibi.set_ylabel("bias (score units)")
    alibi.legend(fontsize=7)
    for ax in (alibi, rope_speed, rope_decay):
        ax.grid(alpha=0.3)
    return fig


# -----------------------------------------------------------------------------
# Command line


def save(fig, out):
    """Write the figure as a PNG to `out`, through a temporary file: a failed write leaves no half PNG."""
    plt = pyplot()
    tmp = out + ".tmp"
    try:
        fig.savefig(tmp, format="png", dpi=72)
        os.replace(tmp, out)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise PlotError(f"cannot write {out}: {e}") from None
    finally:
        plt.close(fig)  # pyplot keeps every figure alive until closed


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # argparse would print the usage and exit with 2; report it like every other mistake instead.
        raise PlotError(f"{message} (see python plot.py --help)")


def main(argv=None):
    parser = _ArgumentParser(description="Draw training runs (from out_dir/log.jsonl) or the position schemes.",
                             allow_abbrev=False)
    parser.add_argument("out_dirs", nargs="*", metavar="OUT_DIR", help="training runs to compare")
    parser.add_argument("--out", help="the PNG to write (default runs.png, or positions.png with --positions)")
    parser.add_argument("--x", default="iters", help="iters (default) or tokens: the horizontal axis of the runs")
    parser.add_argument("--positions", action="store_true", help="draw learned, rotary and ALiBi positions instead")
    parser.add_argument("--checkpoint", metavar="OUT_DIR", help="with --positions: a gpt.py run whose learned "
                                                                "position table to draw")
    try:
        args = parser.parse_args(argv)
        out = args.out or ("positions.png" if args.positions else "runs.png")
        if not out.endswith(".png"):
            raise PlotError(f"--out={out} must end in .png: plot.py writes PNG images")
        if os.path.dirname(out) and not os.path.isdir(os.path.dirname(out)):
            raise PlotError(f"--out={out}: directory {os.path.dirname(out)} does not exist")
        if args.positions:
            if args.out_dirs:
                raise PlotError("--positions draws no runs: drop the out_dirs, or drop --positions")
            fig = positions_figure(args.checkpoint)
        else:
            if args.checkpoint:
                raise PlotError("--checkpoint goes with --positions")
            if not args.out_dirs:
                raise PlotError("give the out_dirs of the runs to compare (python plot.py out-a out-b), "
                                "or --positions")
            fig = runs_figure(args.out_dirs, args.x)
        save(fig, out)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
