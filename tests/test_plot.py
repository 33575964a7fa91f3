"""plot.py: run logs read and drawn (synthetic log.jsonl files), the positions figure's data equal to what
the model scripts compute, and the one-line errors, including a missing matplotlib.

The drawing tests need matplotlib (an optional dependency) and are skipped without it; the missing-matplotlib
test runs everywhere, since it hides matplotlib itself.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_log(out_dir, records, tail=""):
    """out_dir/log.jsonl with one JSON line per record, then `tail` verbatim (e.g. a cut-off line)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.write(tail)


def run_records(learning_rate=1e-3, tokens_per_iter=100, iters=(0, 10, 20, 30, 40), metric=None, model_type="gpt",
                config=()):
    """A plausible run: a start record, a train record at each of iters, an eval record every other one
    (with `metric` at iter / 100, a fraction, when given). config: keys added to or replacing the defaults."""
    config = {"out_dir": "ignored", "learning_rate": learning_rate, "n_layer": 2, "batch_size": 4} | dict(config)
    records = [{"kind": "start", "iter": 0, "model_type": model_type, "tokens_per_iter": tokens_per_iter,
                "config": config}]
    for i in iters:
        tokens = i * tokens_per_iter
        records.append({"kind": "train", "iter": i, "tokens": tokens, "loss": 4.0 - i / 20 - learning_rate,
                        "lr": learning_rate, "ms_per_iter": 10.0, "tokens_per_sec": 1e4, "mfu": None})
        if i % 20 == 0:
            record = {"kind": "eval", "iter": i, "tokens": tokens, "train_loss": 3.9 - i / 20,
                      "val_loss": 4.1 - i / 25, "lr": learning_rate}
            if metric:
                record[metric] = i / 100
            records.append(record)
    return records


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def legend_labels(fig):
    return [t.get_text() for t in fig.legends[0].get_texts()]


def line_data(line):
    return list(line.get_xdata()), list(line.get_ydata())


def test_two_runs_two_axes_legend_names_the_differing_key(tmp_path, monkeypatch, mpl):
    monkeypatch.chdir(tmp_path)
    write_log("out-a", run_records(learning_rate=1e-3))
    write_log("out-b", run_records(learning_rate=3e-3))
    fig = plot.runs_figure(["out-a", "out-b"])
    assert len(fig.axes) == 2
    labels = legend_labels(fig)
    assert labels == ["out-a (learning_rate=0.001)", "out-b (learning_rate=0.003)"]
    # Train loss: the thin line is every train record; val: every eval record, against iterations.
    train_line, train_dots = fig.axes[0].lines[0], fig.axes[0].lines[1]
    assert line_data(train_line) == ([0, 10, 20, 30, 40], [r["loss"] for r in run_records() if r["kind"] == "train"])
    assert line_data(train_dots) == ([0, 20, 40], [3.9, 2.9, 1.9])
    assert line_data(fig.axes[1].lines[1]) == ([0, 20, 40], [4.1, 4.1 - 20 / 25, 4.1 - 40 / 25])
    assert fig.axes[0].get_xlabel() == "iterations"


def test_keys_of_one_model_only_are_not_compared_but_the_model_type_is(tmp_path, monkeypatch, mpl):
    monkeypatch.chdir(tmp_path)
    gpt_run = run_records()
    llama_run = run_records(model_type="llama")
    gpt_run[0]["config"]["wandb_run_name"] = "gpt"  # names (out_dir, wandb's) are not compared
    llama_run[0]["config"] |= {"rope_theta": 10000.0, "n_layer": 3, "wandb_run_name": "llama"}
    write_log("out-gpt", gpt_run)
    write_log("out-llama", llama_run)
    runs = [plot.read_run("out-gpt"), plot.read_run("out-llama")]
    assert plot.differing_keys(runs) == ["model_type", "n_layer"]
    assert plot.run_label(runs[1], plot.differing_keys(runs)) == "out-llama (model_type=llama, n_layer=3)"
    # One run alone: nothing differs, the label is the out_dir.
    assert plot.run_label(runs[0], plot.differing_keys(runs[:1])) == "out-gpt"


def test_tokens_on_the_x_axis(tmp_path, monkeypatch, mpl):
    monkeypatch.chdir(tmp_path)
    write_log("out-a", run_records(tokens_per_iter=100))
    write_log("out-b", run_records(tokens_per_iter=300, learning_rate=3e-3))
    fig = plot.runs_figure(["out-a", "out-b"], x="tokens")
    assert line_data(fig.axes[0].lines[0])[0] == [0, 1000, 2000, 3000, 4000]
    assert line_data(fig.axes[0].lines[2])[0] == [0, 3000, 6000, 9000, 12000]  # out-b: lines 2 (train), 3 (dots)
    assert line_data(fig.axes[1].lines[1])[0] == [0, 6000, 12000]
    assert fig.axes[1].get_xlabel() == "tokens seen"


def test_runs_figure_checks_x_before_reading_logs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # out-none has no log, and matplotlib is not needed: the axis is refused first
    with pytest.raises(plot.PlotError, match=r"^--x=epochs must be iters or tokens$"):
        plot.runs_figure(["out-none"], x="epochs")


def metric_panels(fig):
    """{first line of the title: (y label, the labels of the runs drawn)} for each panel after the two losses."""
    return {ax.get_title().splitlines()[0]: (ax.get_ylabel(), [line.get_label() for line in ax.lines])
            for ax in fig.axes[2:]}


def test_one_panel_per_kind_of_metric_in_percent(tmp_path, monkeypatch, capsys, mpl):
    """t5 (exact match), bert (masked-token accuracy) and gpt (none): each metric in its own panel with the
    runs that log it; the others are named in the panel and on stdout, not silently dropped."""
    monkeypatch.chdir(tmp_path)
    write_log("out-t5", run_records(metric="val_exact_match", model_type="t5", config={"dataset": "numbers"}))
    write_log("out-bert", run_records(metric="val_accuracy", model_type="bert", config={"task": "mlm"}))
    write_log("out-gpt", run_records())
    fig = plot.runs_figure(["out-t5", "out-bert", "out-gpt"])
    assert len(fig.axes) == 4  # two by two
    assert [ax.get_title() for ax in fig.axes[:2]] == ["train loss (line: each logged step; dots: eval average)",
                                                         "val loss"]
    assert metric_panels(fig) == {
        "val exact match, greedy decoding": ("exact match (%)", ["out-t5 (model_type=t5)"]),
        "val masked-token accuracy (MLM)": ("masked-token accuracy (%)", ["out-bert (model_type=bert)"]),
    }
    assert fig.axes[2].get_title().splitlines()[1] == "not logged by out-bert, out-gpt"
    assert fig.axes[3].get_title().splitlines()[1] == "not logged by out-t5, out-gpt"
    for ax in fig.axes:
        assert ax.get_xlabel() == "iterations" and ax.get_ylabel()
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["loss (nats/token)"] * 2
    # Logged as fractions 0, 0.2, 0.4; drawn as percentages.
    for ax in fig.axes[2:]:
        x, y = line_data(ax.lines[0])
        assert x == [0, 20, 40] and y == pytest.approx([0, 20, 40])
    assert capsys.readouterr().out.splitlines()[1:] == [
        "val exact match, greedy decoding: not logged by out-bert, out-gpt (left out of that panel)",
        "val masked-token accuracy (MLM): not logged by out-t5, out-gpt (left out of that panel)",
    ]


def test_runs_of_one_script_with_different_metrics(tmp_path, monkeypatch, capsys, mpl):
    """t5 numbers (exact match, with beam search at the last eval) beside t5 span corruption (dropped-token
    accuracy); bert MLM beside bert classification: each kind its own panel, a run in the panels of its own."""
    monkeypatch.chdir(tmp_path)
    numbers = run_records(metric="val_exact_match", model_type="t5", config={"dataset": "numbers"})
    numbers[-1]["val_beam_exact_match"] = 0.5  # the last eval (iteration 40)
    numbers[-1]["val_note"] = None  # not a number: no panel
    write_log("out-numbers", numbers)
    write_log("out-span", run_records(metric="val_dropped_token_accuracy", model_type="t5",
                                      config={"dataset": "shakespeare_char"}))
    write_log("out-mlm", run_records(metric="val_accuracy", model_type="bert", config={"task": "mlm"}))
    write_log("out-sst", run_records(metric="val_accuracy", model_type="bert", config={"task": "classify"}))
    fig = plot.runs_figure(["out-numbers", "out-span", "out-mlm", "out-sst"])
    panels = metric_panels(fig)
    assert list(panels) == ["val exact match, greedy decoding", "val exact match, beam search (last eval only)",
                            "val dropped-token accuracy (span corruption)", "val masked-token accuracy (MLM)",
                            "val classification accuracy"]
    assert [labels[0].split(" ")[0] for _, labels in panels.values()] == \
        ["out-numbers", "out-numbers", "out-span", "out-mlm", "out-sst"]
    assert all(len(labels) == 1 for _, labels in panels.values())
    assert panels["val dropped-token accuracy (span corruption)"][0] == "dropped-token accuracy (%)"
    assert panels["val classification accuracy"][0] == "classification accuracy (%)"
    assert line_data(fig.axes[3].lines[0]) == ([40], [50.0])
    assert fig.axes[3].get_title().splitlines()[1] == "not logged by 3 runs (listed on stdout)"
    # Seven panels in rows of three; the two cells left over are removed.
    assert len(fig.axes) == 7 and fig.axes[6].get_subplotspec().get_geometry()[:2] == (3, 3)
    assert "val classification accuracy: not logged by out-numbers, out-span, out-mlm (left out of that panel)" \
        in capsys.readouterr().out.splitlines()


def test_a_metric_plot_py_does_not_know_is_named_after_its_key_and_drawn_as_logged(tmp_path, monkeypatch, mpl):
    monkeypatch.chdir(tmp_path)
    write_log("out-a", run_records(metric="val_bits_per_byte"))
    fig = plot.runs_figure(["out-a"])
    assert metric_panels(fig) == {"val bits per byte": ("bits per byte", ["out-a"])}
    assert line_data(fig.axes[2].lines[0])[1] == [0.0, 0.2, 0.4]


def write_decade_run(out_dir):
    """A run whose loss falls from 4.1 to 0.1: more than a decade."""
    records = run_records()
    for record in records:
        if record["kind"] == "train" and record["iter"] == 40:
            record["loss"] = 0.1
    write_log(out_dir, records)


def test_loss_axes_log_scale_when_the_loss_spans_a_decade(tmp_path, monkeypatch, capsys, mpl):
    monkeypatch.chdir(tmp_path)
    write_decade_run("out-long")
    write_log("out-short", run_records(learning_rate=3e-3))  # 1.9 to 4.1
    fig = plot.runs_figure(["out-long", "out-short"])
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "log"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss (nats/token, log scale)"] * 2
    fig.canvas.draw()  # tick labels are made when drawn: plain numbers, 2 and 5 between the powers of ten
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels() + fig.axes[0].get_yticklabels(minor=True)]
    assert {"0.1", "0.2", "0.5", "1", "2"} <= set(ticks) and "3" not in ticks
    assert capsys.readouterr().out == ("loss axes: log scale (the loss spans 0.1 to 4.1, more than a decade; "
                                       "--log_scale=False for linear)\n")
    fig = plot.runs_figure(["out-short"])
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "linear"]
    assert capsys.readouterr().out == ("loss axes: linear scale (the loss spans 1.9 to 4.1, less than a decade; "
                                       "--log_scale=True for log)\n")
    # Asked for on the command line, either way.
    assert plot.main(["out-long", "--log_scale=False"]) == 0
    assert capsys.readouterr().out == "loss axes: linear scale (--log_scale=False)\nwrote runs.png\n"
    assert [ax.get_yscale() for ax in plot.runs_figure(["out-short"], log_scale=True).axes] == ["log", "log"]
    assert [ax.get_yscale() for ax in plot.runs_figure(["out-long"], log_scale=False).axes] == ["linear", "linear"]
    assert plot.main(["out-short", "--log_scale=auto"]) == 0


def test_legend_puts_the_keys_that_matter_before_bookkeeping(tmp_path, monkeypatch, capsys, mpl):
    """Config order puts eval_interval and log_interval first; the legend leads with dataset and learning rate."""
    monkeypatch.chdir(tmp_path)
    for name, value in (("a", 1), ("b", 2)):
        config = {"eval_interval": 100 * value, "log_interval": 10 * value, "dataset": f"data-{name}",
                  "n_layer": 2 * value, "compile": value == 1, "dropout": 0.1 * value}
        # Keys in config order: bookkeeping first, as in every training script.
        records = run_records(learning_rate=1e-3 * value, config=config)
        records[0]["config"] = {key: records[0]["config"][key] for key in
                                ("eval_interval", "log_interval", "out_dir", "compile", "dataset", "batch_size",
                                 "n_layer", "dropout", "learning_rate")}
        write_log(f"out-{name}", records)
    runs = [plot.read_run("out-a"), plot.read_run("out-b")]
    assert plot.differing_keys(runs) == ["dataset", "learning_rate", "n_layer", "dropout",
                                         "eval_interval", "log_interval", "compile"]
    fig = plot.runs_figure(["out-a", "out-b"])
    assert legend_labels(fig) == ["out-a (dataset=data-a, learning_rate=0.001, n_layer=2, dropout=0.1, +3 more)",
                                  "out-b (dataset=data-b, learning_rate=0.002, n_layer=4, dropout=0.2, +3 more)"]
    assert capsys.readouterr().out.splitlines()[-1] == ("runs differ in 7 config keys, the legend shows the first 4: "
                                                        "dataset, learning_rate, n_layer, dropout, eval_interval, "
                                                        "log_interval, compile")


def test_options_between_the_out_dirs(tmp_path, monkeypatch, capsys, mpl):
    monkeypatch.chdir(tmp_path)
    write_log("out-a", run_records())
    write_log("out-b", run_records(learning_rate=3e-3))
    assert plot.main(["out-a", "--x=tokens", "out-b", "--out=both.png"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "wrote both.png"


def test_command_line_writes_a_png(tmp_path, monkeypatch, capsys, mpl):
    monkeypatch.chdir(tmp_path)
    write_log("out-a", run_records())
    assert plot.main(["out-a", "--out=cmp.png", "--x=tokens"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "wrote cmp.png"
    with open("cmp.png", "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert not os.path.exists("cmp.png.tmp")


def test_resume_and_damaged_lines(tmp_path, monkeypatch, capsys, mpl):
    """A resume from iteration 20 replaces what was logged after its checkpoint (train records from 20 on,
    evals after 20: the eval at 20 came just before the checkpoint, and a resume does not repeat it); the
    last start's config counts; a cut-off last line is skipped silently, a bad line elsewhere with a warning."""
    monkeypatch.chdir(tmp_path)
    first = run_records(iters=(0, 10, 20, 30, 40))  # its checkpoint was saved at 20, then it crashed
    resumed = [r for r in run_records(learning_rate=5e-4, iters=(20, 30, 40)) if r["kind"] != "eval" or r["iter"] > 20]
    resumed[0]["iter"] = 20
    damaged = ["not a record", "[1, 2]", '{"kind": "start", "iter": 0, "config": "lr=1"}',
               '{"kind": "train", "iter": "5", "tokens": 500, "loss": 1.0}', '{"kind": "checkpoint", "iter": 5}']
    records = first + damaged + resumed
    os.makedirs("out-r")
    with open("out-r/log.jsonl", "w") as f:
        for r in records:
            f.write((json.dumps(r) if isinstance(r, dict) else r) + "\n")
        f.write('{"kind": "train", "iter": 50, "tok')  # the crash
    run = plot.read_run("out-r")
    assert [r["iter"] for r in run["train"]] == [0, 10, 20, 30, 40]
    assert [r["lr"] for r in run["train"]] == [1e-3, 1e-3, 5e-4, 5e-4, 5e-4]
    assert [(r["iter"], r["lr"]) for r in run["eval"]] == [(0, 1e-3), (20, 1e-3), (40, 5e-4)]
    assert run["config"]["learning_rate"] == 5e-4
    bad_lines = list(range(len(first) + 1, len(first) + 1 + len(damaged)))
    assert capsys.readouterr().err == f"warning: out-r/log.jsonl: skipped 5 unreadable line(s): {bad_lines}\n"


def test_the_gradient_norm_gets_its_own_log_scale_panel(tmp_path, monkeypatch, capsys, mpl):
    """Runs that log grad_norm in their train records get a last panel of it, on a log scale; a run
    without it (logs from before it existed) is named, not silently missing."""
    monkeypatch.chdir(tmp_path)
    with_norm = run_records(iters=(0, 10, 20))
    for r in with_norm:
        if r["kind"] == "train":
            r["grad_norm"] = 10.0 / (1 + r["iter"])
    for name, records in (("out-norm", with_norm), ("out-old", run_records(iters=(0, 10, 20)))):
        os.makedirs(name)
        with open(f"{name}/log.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    fig = plot.runs_figure(["out-norm", "out-old"])
    grad_ax = fig.axes[-1]
    assert len(fig.axes) == 3 and grad_ax.get_yscale() == "log"
    assert grad_ax.get_title() == "gradient norm before clipping\nnot logged by out-old"
    assert [line_data(line) for line in grad_ax.lines] == [([0, 10, 20], [10.0, 10.0 / 11, 10.0 / 21])]
    assert "gradient norm before clipping: not logged by out-old" in capsys.readouterr().out


def test_superseded_records_are_skipped(tmp_path, monkeypatch, mpl):
    """The training scripts keep a resumed run's lines past its checkpoint, marked "superseded": they
    are not drawn, even where no later start record would drop them."""
    monkeypatch.chdir(tmp_path)
    records = run_records(iters=(0, 10, 20))
    for r in records:
        if r["kind"] != "start" and r["iter"] == 20:
            r["superseded"] = True
    os.makedirs("out-s")
    with open("out-s/log.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    run = plot.read_run("out-s")
    assert [r["iter"] for r in run["train"]] == [0, 10] and [r["iter"] for r in run["eval"]] == [0]


@pytest.mark.parametrize("args, setup, message", [
    (["out-none"], None, "error: out-none/log.jsonl not found: train with gpt.py (or llama.py, olmo.py, ...) "
                         "--out_dir=out-none first; runs trained before log.jsonl existed have none"),
    (["out-empty"], "empty", "error: out-empty/log.jsonl has no train or eval records yet: let the run reach its "
                             "first log_interval (or eval_interval) and try again"),
    (["out-none", "--x=epochs"], None, "error: --x=epochs must be iters or tokens"),  # before any log is read
    ([], None, "error: give the out_dirs of the runs to compare (python plot.py out-a out-b), or --positions"),
    (["out-a", "--out=runs.jpg"], "a", "error: --out=runs.jpg must end in .png: plot.py writes PNG images"),
    (["out-a", "--out=nowhere/runs.png"], "a", "error: --out=nowhere/runs.png: directory nowhere does not exist"),
    (["out-a", "--positions"], "a", "error: --positions draws no runs: drop the out_dirs, or drop --positions"),
    (["--positions", "--checkpoint=out-a"], "a", "error: out-a/ckpt.pt not found: give --checkpoint an out_dir "
                                                 "that a training run wrote ckpt.pt into"),
    (["out-a", "--log-scale=True"], "a", "error: unknown option --log-scale=True: did you mean --log_scale? "
                                         "(see python plot.py --help)"),
    (["out-a", "--colour", "red"], "a", "error: unknown option --colour: did you mean --out? (see python plot.py --help)"),
    (["out-a", "--size=2"], "a", "error: unknown option --size=2: the options are -h, --help, --out, --x, --log_scale, "
                                 "--positions, --checkpoint, --experts (see python plot.py --help)"),
    (["out-a", "--log_scale=maybe"], "a", "error: --log_scale=maybe must be True, False or auto"),
    (["out-none", "--log_scale=true"], None, "error: --log_scale=true must be True, False or auto"),  # no log read
    (["--positions", "--x=tokens"], None, "error: --x goes with runs, not with --positions"),
    (["--positions", "--log_scale=True"], None, "error: --log_scale goes with runs, not with --positions"),
    (["out-a", "--experts"], "a", "error: out-a/log.jsonl has no expert_load: it is logged by a mixture of experts "
                                  "(python olmo.py config/olmoe_shakespeare_char_cpu.py) at each evaluation"),
    (["out-a", "out-a", "--experts"], "a", "error: --experts draws one run: give one out_dir, not 2"),
    (["out-a", "--experts", "--x=tokens"], "a", "error: --x goes with runs or --positions, not with --experts"),
    (["--positions", "--experts"], None, "error: --positions and --experts draw different figures: choose one"),
])
def test_one_line_errors(tmp_path, monkeypatch, capsys, mpl, args, setup, message):
    monkeypatch.chdir(tmp_path)
    if setup == "empty":
        write_log("out-empty", run_records()[:1])  # a start record only: nothing logged yet
    elif setup == "a":
        write_log("out-a", run_records())
    assert plot.main(args) == 1
    captured = capsys.readouterr()
    assert captured.err == message + "\n" and captured.out == ""
    assert not [name for name in os.listdir(".") if name.endswith(".png")]


def test_expert_load_bars_per_layer_last_eval_first_outlined(tmp_path, monkeypatch, capsys, mpl):
    monkeypatch.chdir(tmp_path)
    records = run_records(iters=(0, 20, 40))
    evals = [r for r in records if r["kind"] == "eval"]
    loads = [[[0.7, 0.1, 0.1, 0.1], [0.25] * 4, [0.4, 0.4, 0.1, 0.1]],
             [[0.3, 0.2, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4], [0.25] * 4],
             [[0.25] * 4, [0.5, 0.5, 0.0, 0.0], [0.2, 0.3, 0.2, 0.3]]]
    for record, load in zip(evals, loads):
        record["expert_load"] = load
    write_log("out-moe", records)
    fig = plot.expert_load_figure("out-moe")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3  # one panel per layer
    for layer, ax in enumerate(axes):
        bars = [p for p in ax.patches if p.get_fill()]
        outlines = [p for p in ax.patches if not p.get_fill()]
        assert [b.get_height() for b in bars] == pytest.approx(loads[-1][layer])  # the last evaluation
        assert [b.get_height() for b in outlines] == pytest.approx(loads[0][layer])  # the first
        assert list(ax.lines[0].get_ydata()) == [0.25, 0.25]  # balanced: 1 / n_experts
    assert plot.main(["--experts", "out-moe"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "wrote experts.png"
    with open("experts.png", "rb") as f:
        assert f.read(8) == PNG_SIGNATURE


@pytest.mark.parametrize("args", [["out-a"], ["--positions"]])
def test_without_matplotlib_one_clear_line(tmp_path, args):
    write_log(tmp_path / "out-a", run_records())
    code = ("import sys; sys.modules['matplotlib'] = None; import plot; sys.exit(plot.main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "error: plot.py draws with matplotlib, which is not installed: pip install matplotlib\n"
    assert not os.path.exists(tmp_path / "runs.png") and not os.path.exists(tmp_path / "positions.png")


# -----------------------------------------------------------------------------
# The positions figure


@pytest.fixture(scope="module")
def positions(mpl_module):
    return plot.positions_figure()


@pytest.fixture(scope="module")
def mpl_module():
    return pytest.importorskip("matplotlib")


def test_alibi_panel_is_olmo_slopes_times_distance(positions):
    import olmo

    slopes = olmo.alibi_slopes(8)
    assert torch.equal(slopes, torch.tensor([2.0 ** (-h) for h in range(1, 9)]))  # 2^(-8h/H), H = 8
    lines = positions.axes[2].lines  # axes: learned, sinusoidal, ALiBi, RoPE frequencies, RoPE decay, colorbars
    assert len(lines) == 8
    for h, line in enumerate(lines):
        x, y = line_data(line)
        assert x == list(range(64))
        assert y == (-slopes[h] * torch.arange(64).float()).tolist()


def test_rope_panels_are_llamas_frequencies_and_the_mean_cosine(positions):
    frequencies, decay = positions.axes[3], positions.axes[4]
    head_dim = 128
    for line, theta in zip(frequencies.lines[:2], (10000.0, 500000.0)):
        expected = [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]
        assert line_data(line)[1] == pytest.approx(expected, rel=1e-6)
    # q = k = ones: the score at distance r is the mean over pairs of cos(r * theta^(-2i/d)).
    y = line_data(decay.lines[0])[1]
    for r in (0, 1, 7, 100, 511):
        naive = sum(math.cos(r * 10000.0 ** (-2 * i / head_dim)) for i in range(head_dim // 2)) / (head_dim // 2)
        assert y[r] == pytest.approx(naive, abs=2e-4)  # float32 angles: ~1e-4 radians off at r = 511
    # Llama 3.1's scaling leaves the fast pairs alone and slows the slowest ones eightfold.
    llama3, scaled = line_data(frequencies.lines[1])[1], line_data(frequencies.lines[2])[1]
    assert scaled[0] == llama3[0] and scaled[-1] == pytest.approx(llama3[-1] / 8, rel=1e-6)


def test_sinusoidal_panel_is_the_formulas_cosine_similarity(positions):
    assert len(positions.axes) == 7 and "sinusoidal" in positions.axes[1].get_title()
    drawn = torch.tensor(positions.axes[1].images[0].get_array())
    assert drawn.shape == (64, 64)  # the learned panel's shape: 64 positions x 128 channels
    n_embd = 128
    table = torch.tensor([[math.sin(p / 10000 ** (c // 2 * 2 / n_embd)) if c % 2 == 0 else
                           math.cos(p / 10000 ** (c // 2 * 2 / n_embd)) for c in range(n_embd)] for p in range(64)],
                         dtype=torch.float64)
    # Every row has norm sqrt(d/2) and row p . row q = sum over pairs of cos((p - q) * frequency).
    naive = table @ table.T / (n_embd / 2)
    torch.testing.assert_close(drawn, naive, rtol=0, atol=1e-6)
    assert torch.allclose(drawn.diagonal(offset=5), drawn[5, 0])  # it depends on the distance alone


def test_learned_panel_untrained_and_from_a_checkpoint(positions, tmp_path, mpl_module):
    untrained = positions.axes[0].images[0].get_array()
    assert untrained.shape == (64, 64) and "UNTRAINED" in positions.axes[0].get_title()
    assert abs(untrained[3, 40]) < 0.5 and untrained[5, 5] == pytest.approx(1.0)
    table = torch.randn(16, 8)
    torch.save({"model_type": "gpt", "iter_num": 7, "model": {"transformer.wpe.weight": table}},
               tmp_path / "ckpt.pt")
    fig = plot.positions_figure(str(tmp_path))
    drawn = torch.tensor(fig.axes[0].images[0].get_array())
    naive = torch.nn.functional.cosine_similarity(table[:, None, :], table[None, :, :], dim=-1)
    assert torch.allclose(drawn, naive, atol=1e-6)
    assert "iteration 7" in fig.axes[0].get_title()
    assert fig.axes[1].images[0].get_array().shape == (16, 16)  # the sinusoidal table takes the learned one's shape
    torch.save({"model_type": "llama", "model": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(plot.PlotError, match="is a llama checkpoint, which has no learned position table"):
        plot.positions_figure(str(tmp_path))
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    one_line = r"^cannot read .*ckpt.pt as a checkpoint \(\w+: [^\n]*\); give --checkpoint the out_dir of a gpt.py run$"
    with pytest.raises(plot.PlotError, match=one_line):
        plot.positions_figure(str(tmp_path))


# -----------------------------------------------------------------------------
# End to end: the log gpt.py writes, drawn


def test_gpt_runs_drawn_end_to_end(tmp_path, monkeypatch, capsys, small_text_path, mpl):
    """Two 4-iteration gpt.py runs (one stopped at 2 and resumed), then plot.py on their out_dirs."""
    import gpt
    import prepare_data

    monkeypatch.chdir(tmp_path)
    prepare_data.prepare("tiny", input_path=small_text_path, tokenizer="char", data_root="data")
    tiny = ["--dataset=tiny", "--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=16",
            "--block_size=16", "--batch_size=4", "--gradient_accumulation_steps=1", "--eval_iters=2",
            "--log_interval=1", "--eval_interval=2", "--always_save_checkpoint=True"]
    gpt.main(tiny + ["--max_iters=4", "--out_dir=out-a"])
    gpt.main(tiny + ["--max_iters=2", "--out_dir=out-b", "--learning_rate=1e-3"])
    gpt.main(tiny + ["--max_iters=4", "--out_dir=out-b", "--learning_rate=1e-3", "--init_from=resume"])
    capsys.readouterr()
    assert plot.main(["out-a", "out-b", "--out=runs.png"]) == 0
    with open("runs.png", "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    runs = [plot.read_run("out-a"), plot.read_run("out-b")]
    for run in runs:
        assert [r["iter"] for r in run["train"]] == [0, 1, 2, 3]  # the resumed run too: no iteration twice
        assert [r["iter"] for r in run["eval"]] == [0, 2, 4]
    fig = plot.runs_figure(["out-a", "out-b"], x="tokens")
    assert legend_labels(fig) == \
        ["out-a (learning_rate=0.0006)", "out-b (learning_rate=0.001)"]
    assert line_data(fig.axes[0].lines[0])[0] == [64, 128, 192, 256]  # tokens after each step: 4 x 16 per step
    assert line_data(fig.axes[1].lines[1])[0] == [0, 128, 256]
