"""
plot.py — pictures for learners: training runs side by side, and what each position scheme looks like.

Reading numbers scrolling past is a poor way to compare two training runs, and a paragraph about
rotary embeddings is a poor way to see them. This script draws three figures, each into one PNG:

  1. Runs. Every training script in this repository appends a line of JSON to <out_dir>/log.jsonl at
     each log and eval step. Given several out_dirs, plot.py draws their train loss and val loss
     against iterations (or tokens seen) on shared axes, one colour per run (on a log scale when the
     loss spans more than a decade), then one panel for each kind of metric the runs log (bert.py's
     masked-token accuracy, t5.py's exact match, ...) in percent, holding the runs that log it; the
     runs left out of a panel are named. The legend names each run by its out_dir and by the config
     keys whose values differ between the runs, which is usually the one thing the comparison is
     about: what was trained and how (dataset, learning rate, size) before bookkeeping (eval_interval).

  2. Positions. A Transformer's attention is blind to order until something tells it where each
     token is. This repository shows four answers, and the figure puts them side by side:
       - gpt.py learns a table of one vector per position (GPT-2's wpe), added to the tokens, or
         with --pos_emb=sinusoidal adds the fixed sine/cosine table of Vaswani et al. 2017;
       - llama.py rotates queries and keys by position-dependent angles (RoPE, Su et al. 2021);
       - olmo.py --pos_emb=alibi adds a per-head penalty proportional to distance (ALiBi, Press
         et al. 2022) to the attention scores.
     Each panel is computed by the model scripts' own functions (imported, not re-implemented), so
     the picture shows exactly what the models compute.

  3. Experts. A mixture of experts (olmo.py --n_experts=8, config/olmoe_shakespeare_char_cpu.py) logs
     at each evaluation the fraction of tokens its router sent to each expert, per layer. plot.py
     --experts draws one bar chart per layer: the load of each expert at the last evaluation, the
     first evaluation's as an outline behind it, and the balanced load 1 / n_experts as a dashed line.
     A bar near zero is an expert the router has abandoned (a dead expert, which stops learning);
     the load-balancing loss is there to prevent it.

Run it:
    python gpt.py config/shakespeare_char_cpu.py --out_dir=out-a
    python gpt.py config/shakespeare_char_cpu.py --out_dir=out-b --learning_rate=1e-3
    python plot.py out-a out-b                            # -> runs.png: loss against iterations
    python plot.py out-a out-b --x=tokens --out=cmp.png   # against tokens seen (fair across batch sizes)
    python plot.py out-a out-b --log_scale=False          # linear loss axes (default auto; True: log)
    python plot.py --positions --checkpoint=out-a         # -> positions.png, with out-a's learned table
    python plot.py --experts out-moe                      # -> experts.png: a mixture of experts' routing

matplotlib draws the pictures. It is an optional dependency: the model scripts never import it, and
plot.py imports it only when it draws, saying how to install it when it is missing.

The log format (written by the training scripts; one JSON object per line, in order):
    {"kind": "start", "iter": N, "model_type": "gpt", "tokens_per_iter": ..., "config": {...}}
        at the start of each run and of each resume;
    {"kind": "train", "iter": N, "tokens": ..., "loss": ..., "lr": ..., "ms_per_iter": ..., ...}
        every log_interval (the loss of optimizer step N);
    {"kind": "eval", "iter": N, "tokens": ..., "train_loss": ..., "val_loss": ..., "lr": ..., ...}
        every eval_interval, with the model's own metric as extra keys starting with "val_", and for a
        mixture of experts "expert_load": [[fraction per expert] per layer].
"""

import argparse
import difflib
import json
import math
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
    training scripts' start_run_log marks those lines "superseded": true when they resume (they
    are kept, not deleted), and they are skipped here; the rule above keeps a log put together any
    other way (files concatenated) correct too.
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
        if record.get("superseded"):
            continue  # trained and logged again by a resumed run
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


def is_number(value):
    """Whether a value read from JSON is a number to draw (JSON's true and false are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        if not (isinstance(record.get(key), dict) if key == "config" else is_number(record.get(key))):
            return None
    return record


# The legend has room for a few config keys per run, so the differing keys are ordered by how much
# they say about the comparison. First the keys that define the experiment, in this order: what was
# trained, on what, then the optimisation and the model's size. Last the bookkeeping keys, which
# change how a run is watched, saved or executed but not what it learns; a legend that leads with
# eval_interval hides the learning rate behind "+N more". Other keys come between, in config order.
DEFINING_KEYS = ("model_type", "task", "dataset", "init_from", "learning_rate", "n_layer", "n_decoder_layer",
                 "n_head", "n_kv_head", "n_embd", "batch_size", "gradient_accumulation_steps", "block_size",
                 "max_iters")
BOOKKEEPING_KEYS = ("eval_interval", "log_interval", "eval_iters", "eval_only", "eval_exact_match", "eval_beam_size",
                    "always_save_checkpoint", "wandb_log", "compile", "device", "backend", "attention")
# Keys that only name things: out_dir names the run already, and wandb_project and wandb_run_name
# default to the script's name.
NAME_KEYS = ("out_dir", "wandb_project", "wandb_run_name")


def differing_keys(runs):
    """The config keys (and the model type) whose values differ between the runs, most telling first.

    Only keys every run has are compared: a key only llama.py has (rope_theta) says nothing more
    than the model type does, which is included as "model_type". NAME_KEYS are left out.
    """
    configs = [{"model_type": run["model_type"]} | run["config"] for run in runs]
    shared = [key for key in configs[0] if key not in NAME_KEYS and all(key in c for c in configs)]
    differing = [key for key in shared if any(c[key] != configs[0][key] for c in configs)]

    def importance(key):
        if key in DEFINING_KEYS:
            return 0, DEFINING_KEYS.index(key)
        return (2 if key in BOOKKEEPING_KEYS else 1), 0

    return sorted(differing, key=importance)  # stable: config order within a tier


# At most this many config keys in a run's legend entry: the legend is for telling colours apart.
LEGEND_KEYS = 4


def run_label(run, keys, max_keys=LEGEND_KEYS):
    """'out-a (learning_rate=0.001, n_layer=4)': the out_dir, then the values of the first max_keys keys."""
    config = {"model_type": run["model_type"]} | run["config"]

    def show(value):
        return f"{value:g}" if isinstance(value, float) else str(value)

    shown = [f"{key}={show(config[key])}" for key in keys[:max_keys]]
    if len(keys) > max_keys:
        shown.append(f"+{len(keys) - max_keys} more")
    return f"{run['name']} ({', '.join(shown)})" if shown else run["name"]


# The metrics the training scripts log beside the loss, all fractions (printed as percentages):
# eval key -> (the quantity, for the y label; the panel's title).
KNOWN_METRICS = {
    "val_accuracy": ("accuracy", "val accuracy"),
    "val_exact_match": ("exact match", "val exact match, greedy decoding"),
    # t5.py decodes with beam search only at the last evaluation (it costs several greedy decodings).
    "val_beam_exact_match": ("exact match", "val exact match, beam search (last eval only)"),
    "val_dropped_token_accuracy": ("dropped-token accuracy", "val dropped-token accuracy (span corruption)"),
    # The decoders' hellaswag_interval: a fixed subset of HellaSwag's validation set (chance is 25%).
    "val_hellaswag_acc": ("accuracy", "HellaSwag acc (summed log-likelihood)"),
    "val_hellaswag_acc_norm": ("accuracy", "HellaSwag acc_norm (per-token log-likelihood)"),
}
# bert.py logs val_accuracy for both its tasks, but the numbers measure different things: the share of
# masked tokens guessed (near 0 at first) or of sentences classified right (near chance at first).
BERT_ACCURACY = {"mlm": ("masked-token accuracy", "val masked-token accuracy (MLM)"),
                 "classify": ("classification accuracy", "val classification accuracy")}


def describe_metric(key, run):
    """(title, y label, scale) of the run's metric `key`; scale turns a logged value into a plotted one.

    The title names the kind of metric: runs are drawn in one panel exactly when their titles match.
    A key plot.py does not know is named after itself and drawn as logged.
    """
    if key == "val_accuracy" and run["model_type"] == "bert":
        quantity, title = BERT_ACCURACY.get(run["config"].get("task"), KNOWN_METRICS[key])
    elif key in KNOWN_METRICS:
        quantity, title = KNOWN_METRICS[key]
    else:
        name = key.removeprefix("val_").replace("_", " ")
        return f"val {name}", name, 1
    return title, f"{quantity} (%)", 100


def metric_keys(run):
    """The run's own metrics: the eval keys starting with "val_" other than val_loss, in logged order.

    Only keys with a number count: a null or a string is nothing to draw.
    """
    keys = {}  # a dict: ordered and without repeats
    for record in run["eval"]:
        keys |= {key: None for key, value in record.items()
                 if key.startswith("val_") and key != "val_loss" and is_number(value)}
    return list(keys)


def loss_scale(losses, log_scale):
    """(True for a log axis, the sentence that says which and why) for the loss values drawn.

    log_scale None chooses: log when the loss spans more than a decade. Early training sits near
    ln(vocab_size) and a well-trained small task far below 1; on a linear axis everything after the
    first drop is then a flat line near 0, while a log axis shows equal ratios as equal heights.
    """
    if log_scale is not None:
        return log_scale, f"loss axes: {'log' if log_scale else 'linear'} scale (--log_scale={log_scale})"
    finite = [loss for loss in losses if math.isfinite(loss)]
    if not finite:
        return False, "loss axes: linear scale (no finite loss to draw)"
    low, high = min(finite), max(finite)
    if low <= 0:  # a log axis cannot show a loss of 0
        return False, f"loss axes: linear scale (a loss of {low:g} cannot be drawn on a log scale)"
    if high / low > 10:
        return True, (f"loss axes: log scale (the loss spans {low:.3g} to {high:.3g}, more than a decade; "
                      f"--log_scale=False for linear)")
    return False, (f"loss axes: linear scale (the loss spans {low:.3g} to {high:.3g}, less than a decade; "
                   f"--log_scale=True for log)")


def label_log_ticks(ax):
    """Label a log y axis with plain numbers (0.2, 0.5, 1, 2, 4), as many as its range has room for.

    matplotlib writes 10^0 and 3 x 10^0, and labels no tick at all between two powers of ten: a
    val loss from 4.2 down to 1.9 would have a single label, or none.
    """
    from matplotlib import ticker  # present: pyplot() has imported matplotlib

    def minor_label(value, _):
        low, high = ax.get_ylim()
        decades = math.log10(high / low)
        leading_digit = round(value / 10 ** math.floor(math.log10(value)))
        # Within a decade every tick (2, 3, ..., 9) fits; over a few, 2 and 5 of each; beyond, none.
        return f"{value:g}" if decades < 1 or (decades < 3 and leading_digit in (2, 5)) else ""

    ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:g}"))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(minor_label))


# -----------------------------------------------------------------------------
# Figure 1: training runs compared


def runs_figure(out_dirs, x="iters", log_scale=None):
    """One figure of the runs in out_dirs (their log.jsonl, read with read_run): train loss | val loss,
    then one panel per kind of metric the runs log, then the gradient norm before clipping where a run
    logs it (fig.axes in that order), against iterations or
    tokens seen. log_scale: True or False for the loss axes, None to choose (see loss_scale). Prints
    the scale chosen, and which runs each metric panel leaves out, to stdout.

    What to look at:
      - Train loss (thin line, every log_interval) is one batch's loss: noisy. The dots on it are
        the eval's train loss, averaged over eval_iters batches, which is what to compare with val.
      - Val loss is the honest number. When a run's val loss turns up while its train loss keeps
        falling, it has started to memorise the training text (overfitting).
      - Against iterations, a run with bigger batches looks better per step simply because each step
        sees more text; --x=tokens compares runs by the data they have consumed instead.
      - A learning rate too high shows as spikes or a plateau early; too low as a slow, steady slope.
      - The metric says what the loss means for the task: a t5.py run can lower its loss for a
        while before a single answer comes out exactly right.
    """
    # Bad options and a missing matplotlib are reported before any log is read; main() relies on it.
    if x not in ("iters", "tokens"):
        raise PlotError(f"--x={x} must be iters or tokens")
    if log_scale not in (None, True, False):
        raise PlotError(f"--log_scale={log_scale} must be True, False or auto")
    plt = pyplot()
    runs = [read_run(out_dir) for out_dir in out_dirs]
    x_key = "iter" if x == "iters" else "tokens"

    # Panels for metrics: one per kind (title), in the order the runs first log them.
    panels = {}  # title -> (y label, {run index: (eval key, scale)})
    for i, run in enumerate(runs):
        for key in metric_keys(run):
            title, y_label, scale = describe_metric(key, run)
            panels.setdefault(title, (y_label, {}))[1][i] = (key, scale)

    # The gradient norm before clipping (in the train records of runs that log it) gets the last panel.
    with_grad_norm = {i for i, run in enumerate(runs) if any(is_number(r.get("grad_norm")) for r in run["train"])}

    # Rows of at most three panels, as even as they come (four: two by two), so the figure stays
    # legible at a README's width; cells left over at the end are removed.
    n_panels = 2 + len(panels) + (1 if with_grad_norm else 0)
    n_cols = math.ceil(n_panels / math.ceil(n_panels / 3))
    n_rows = math.ceil(n_panels / n_cols)
    fig, grid = plt.subplots(n_rows, n_cols, figsize=(5.2 * n_cols, 4.0 * n_rows + 0.2 * len(runs)),
                             layout="constrained", squeeze=False)
    axes = list(grid.flat)
    for spare in axes[n_panels:]:
        fig.delaxes(spare)
    train_ax, val_ax, metric_axes = axes[0], axes[1], axes[2:2 + len(panels)]
    grad_ax = axes[2 + len(panels)] if with_grad_norm else None
    for ax in axes[1:n_panels]:
        # One x range for all: a metric logged only at the last eval (a single point) still sits where
        # that eval is, not alone in the middle of an axis of its own.
        ax.sharex(train_ax)

    keys = differing_keys(runs)
    losses = []
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"  # matplotlib's default cycle of ten distinguishable colours
        label = run_label(run, keys)
        # Train: every logged step as a thin line, the evals' averaged train loss as dots.
        evals = [r for r in run["eval"] if "train_loss" in r]
        train_ax.plot([r[x_key] for r in run["train"]], [r["loss"] for r in run["train"]],
                      color=colour, linewidth=0.8, alpha=0.8, label=label)
        train_ax.plot([r[x_key] for r in evals], [r["train_loss"] for r in evals], "o", color=colour, markersize=3)
        val_ax.plot([r[x_key] for r in run["eval"]], [r["val_loss"] for r in run["eval"]],
                    "o-", color=colour, markersize=3, label=label)
        losses += [r["loss"] for r in run["train"]] + [r["train_loss"] for r in evals]
        losses += [r["val_loss"] for r in run["eval"]]
        for ax, (_, drawn) in zip(metric_axes, panels.values()):
            if i in drawn:
                key, scale = drawn[i]
                with_metric = [r for r in run["eval"] if is_number(r.get(key))]
                ax.plot([r[x_key] for r in with_metric], [scale * r[key] for r in with_metric],
                        "o-", color=colour, markersize=3, label=label)
        if i in with_grad_norm:
            steps = [r for r in run["train"] if is_number(r.get("grad_norm"))]
            grad_ax.plot([r[x_key] for r in steps], [r["grad_norm"] for r in steps], color=colour, linewidth=0.8,
                         label=label)

    use_log, scale_note = loss_scale(losses, log_scale)
    print(scale_note)
    loss_label = "loss (nats/token, log scale)" if use_log else "loss (nats/token)"
    for ax, title in ((train_ax, "train loss (line: each logged step; dots: eval average)"), (val_ax, "val loss")):
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(loss_label)
        ax.set_yscale("log" if use_log else "linear")
        if use_log:
            label_log_ticks(ax)
    for ax, (title, (y_label, drawn)) in zip(metric_axes, panels.items()):
        # A run without this metric is named, not silently missing: in the panel (briefly) and on stdout.
        absent = [run["name"] for i, run in enumerate(runs) if i not in drawn]
        if absent:
            print(f"{title}: not logged by {', '.join(absent)} (left out of that panel)")
            who = ", ".join(absent) if len(absent) <= 2 else f"{len(absent)} runs (listed on stdout)"
            title += f"\nnot logged by {who}"
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(y_label)
    if grad_ax:
        # Log scale: early in training the norm falls by orders of magnitude, and a spike of 10x is what
        # to spot (it comes before a loss spike); a norm pinned at grad_clip means every step is clipped.
        title = "gradient norm before clipping"
        absent = [run["name"] for i, run in enumerate(runs) if i not in with_grad_norm]
        if absent:
            print(f"{title}: not logged by {', '.join(absent)} (left out of that panel)")
            title += f"\nnot logged by {', '.join(absent) if len(absent) <= 2 else f'{len(absent)} runs'}"
        grad_ax.set_title(title, fontsize=10)
        grad_ax.set_ylabel("L2 norm of all gradients (log scale)")
        grad_ax.set_yscale("log")
        label_log_ticks(grad_ax)
    for ax in axes[:n_panels]:
        ax.set_xlabel("iterations" if x == "iters" else "tokens seen")
        ax.grid(alpha=0.3)
    if len(keys) > LEGEND_KEYS:
        print(f"runs differ in {len(keys)} config keys, the legend shows the first {LEGEND_KEYS}: {', '.join(keys)}")
    # One legend for all the axes, below them: the labels can be long, and the colours are shared.
    fig.legend(*train_ax.get_legend_handles_labels(), loc="outside lower center", fontsize=8)
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


def sinusoidal_table(n_positions, n_embd):
    """gpt.py's sinusoidal positions (its own function) for positions 0 .. n_positions - 1, in float64."""
    import torch

    import gpt

    return gpt.sinusoidal_positions(torch.arange(n_positions, dtype=torch.float64), n_embd)


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
    """One figure, five panels: learned table, sinusoidal table, ALiBi biases, RoPE frequencies, RoPE decay
    (fig.axes in that order, then the two tables' colorbars)."""
    plt = pyplot()
    # Two rows, so the figure stays legible at a README's width: the two tables added to the tokens
    # side by side, then the three schemes that act inside attention (ALiBi, RoPE's two panels).
    fig, panels = plt.subplot_mosaic([["learned"] * 3 + ["sinusoidal"] * 3,
                                      ["alibi"] * 2 + ["rope_speed"] * 2 + ["rope_decay"] * 2],
                                     figsize=(14, 8.6), layout="constrained")
    learned, sinusoidal, alibi = panels["learned"], panels["sinusoidal"], panels["alibi"]
    rope_speed, rope_decay = panels["rope_speed"], panels["rope_decay"]

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

    # (b) Sinusoidal positions, beside it and of the same shape. Row p . row q is a sum of
    # cos((p - q) * frequency) over the channel pairs, so the picture depends only on the distance
    # p - q: the same band down every diagonal, at every position, with no special row 0. It is the
    # band a learned table has to discover, built in; and the rows go on past any block_size. Nothing
    # is negative at these sizes: the slow pairs barely turn within a block, so all rows agree there.
    n_positions, n_embd = table.shape
    image = sinusoidal.imshow(cosine_similarity_matrix(sinusoidal_table(n_positions, n_embd)).numpy(),
                              cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=sinusoidal, shrink=0.8)
    sinusoidal.set_title(f"sinusoidal table (gpt.py --pos_emb=sinusoidal): cosine similarity of its rows\n"
                         f"sin/cos(pos / 10000^(2i/d)), same shape: {n_positions} positions x {n_embd} channels",
                         fontsize=9)
    sinusoidal.set_xlabel("position")
    sinusoidal.set_ylabel("position")

    # (c) RoPE, the bottom row's right two panels. Left: each of the 64 channel pairs of a head rotates at its own speed, a geometric
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

    # (d) ALiBi, bottom left. Each head adds -m_h * distance to its attention scores, so after the softmax a
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


def expert_load_figure(out_dir):
    """One bar chart per layer of a mixture of experts' run: each expert's share of the routed
    (token, choice) pairs at the last evaluation (bars), at the first (outline), and balanced (dashed)."""
    run = read_run(out_dir)
    evals = [r for r in run["eval"] if isinstance(r.get("expert_load"), list) and r["expert_load"]]
    if not evals:
        raise PlotError(f"{os.path.join(out_dir, 'log.jsonl')} has no expert_load: it is logged by a mixture of "
                        f"experts (python olmo.py config/olmoe_shakespeare_char_cpu.py) at each evaluation")
    first, last = evals[0], evals[-1]
    n_layer = len(last["expert_load"])
    plt = pyplot()
    columns = min(n_layer, 4)
    rows = (n_layer + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False,
                             sharey=True, layout="constrained")
    for layer, ax in enumerate(axes.flat):
        if layer >= n_layer:
            ax.set_visible(False)
            continue
        load = last["expert_load"][layer]
        experts = range(len(load))
        ax.bar(experts, load, color="C0", label=f"iter {last['iter']}")
        if first is not last:
            ax.bar(experts, first["expert_load"][layer], fill=False, edgecolor="C1", linewidth=1.2,
                   label=f"iter {first['iter']}")
        # Balanced routing: every expert gets the same share of the (token, choice) pairs.
        ax.axhline(1 / len(load), color="gray", linestyle="--", linewidth=1, label="balanced")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("expert")
        ax.set_xticks(list(experts))
        ax.grid(alpha=0.3, axis="y")
    axes.flat[0].set_ylabel("share of routed tokens")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{run['name']}: expert load per layer (last validation batch of each evaluation)", fontsize=10)
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
    parser.add_argument("--x", help="iters (default) or tokens: the horizontal axis of the runs")
    parser.add_argument("--log_scale", help="True, False or auto (default): a log axis for the losses; auto "
                                            "chooses log when they span more than a decade")
    parser.add_argument("--positions", action="store_true", help="draw learned, sinusoidal, rotary and ALiBi positions instead")
    parser.add_argument("--checkpoint", metavar="OUT_DIR", help="with --positions: a gpt.py run whose learned "
                                                                "position table to draw")
    parser.add_argument("--experts", action="store_true", help="draw the expert load of one mixture-of-experts run")
    try:
        # Intermixed: options may come between the out_dirs (plot.py out-a --x=tokens out-b).
        args, unknown = parser.parse_known_intermixed_args(argv)
        options = [name for action in parser._actions for name in action.option_strings]
        for arg in unknown:
            if arg.startswith("-"):
                name = arg.split("=")[0]
                nearest = difflib.get_close_matches(name, options, n=1)
                hint = f"did you mean {nearest[0]}?" if nearest else f"the options are {', '.join(options)}"
                raise PlotError(f"unknown option {arg}: {hint} (see python plot.py --help)")
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        out = args.out or ("positions.png" if args.positions else "experts.png" if args.experts else "runs.png")
        if not out.endswith(".png"):
            raise PlotError(f"--out={out} must end in .png: plot.py writes PNG images")
        if os.path.dirname(out) and not os.path.isdir(os.path.dirname(out)):
            raise PlotError(f"--out={out}: directory {os.path.dirname(out)} does not exist")
        if args.positions:
            if args.experts:
                raise PlotError("--positions and --experts draw different figures: choose one")
            if args.out_dirs:
                raise PlotError("--positions draws no runs: drop the out_dirs, or drop --positions")
            for option in ("x", "log_scale"):
                if getattr(args, option) is not None:
                    raise PlotError(f"--{option} goes with runs, not with --positions")
            fig = positions_figure(args.checkpoint)
        elif args.experts:
            if len(args.out_dirs) != 1:
                raise PlotError(f"--experts draws one run: give one out_dir, not {len(args.out_dirs)}")
            for option in ("x", "log_scale", "checkpoint"):
                if getattr(args, option) is not None:
                    raise PlotError(f"--{option} goes with runs or --positions, not with --experts")
            fig = expert_load_figure(args.out_dirs[0])
        else:
            if args.checkpoint:
                raise PlotError("--checkpoint goes with --positions")
            if not args.out_dirs:
                raise PlotError("give the out_dirs of the runs to compare (python plot.py out-a out-b), "
                                "or --positions")
            # Spelled as the training scripts' booleans are (--decay_lr=False); auto is the default.
            log_scale = {None: None, "auto": None, "True": True, "False": False}.get(args.log_scale, args.log_scale)
            fig = runs_figure(args.out_dirs, args.x or "iters", log_scale)
        save(fig, out)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
