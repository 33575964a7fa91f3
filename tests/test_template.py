"""The functions every model script shares by convention stay identical, so a fix reaches them all.

Each model script is a complete file on its own (the repository's design: one file, one lesson), so
functions such as parse_config or sample_next_token exist once per script. This test compares their
code (the AST with docstrings removed: comments and docstrings may be worded for each script) and
names the script that drifted from gpt.py, the template the others are copied from. A script that
needs a different version of a shared function must give it another name.
"""
import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_SCRIPTS = [name for name in ("bigram.py", "gpt.py", "llama.py", "olmo.py", "bert.py", "t5.py")
                 if os.path.exists(os.path.join(REPO, name))]
TEMPLATE = "gpt.py"
MODEL_SCRIPTS_IN_ORDER = ["bigram.py", "gpt.py", "llama.py", "olmo.py", "bert.py", "t5.py"]

# Every training script has these: the config system and the training loop's helpers (Part 3, plumbing).
REQUIRED = ["parse_config", "resumed_config", "check_config", "fail", "first_error", "local_rank0_first", "Runtime",
            "start_processes", "warn_if_cpu_is_busy", "_GPU_PEAK_FLOPS", "gpu_peak_flops", "load_checkpoint",
            "check_vocabulary_fits", "restore_training_state", "every_rank_rng_state", "restore_rng_state",
            "compile_model", "compile_or_warn", "start_wandb", "learning_rate_at", "mean_over_processes",
            "check_finite", "IterationTimer", "log_train_step", "log_eval", "save_checkpoint", "start_run_log",
            "append_run_log", "leave_process_group", "end_run"]
# Scripts that need these (sampling text, attention, Hugging Face checkpoints, a next-token loss) have them
# exactly as gpt.py does. An encoder (bert.py) does not sample; t5.py's attention is unscaled, so it has its
# own t5_attention; bert.py and t5.py evaluate with their own metrics, not estimate_loss.
OPTIONAL = ["check_sampling_options", "sample_next_token", "attention_weights", "manual_attention", "read_safetensors",
            "load_hf_weights", "download_hf_checkpoint", "estimate_loss",
            "LoRALinear", "add_lora", "lora_state_dict", "load_lora_state_dict", "merge_lora"]
# Shared definitions that are part of the lesson (attention, sampling, LoRA) stay in Part 1, where the model
# uses them; every other shared definition stands below Part 3's "Shared by convention" banner.
LESSON = {"check_sampling_options", "sample_next_token", "attention_weights", "manual_attention",
          "LoRALinear", "add_lora", "lora_state_dict", "load_lora_state_dict", "merge_lora"}
BANNERS = ["# Part 1: the model", "# Part 2: training", "# Part 3: plumbing", "# Shared by convention:"]
MAIN_MAX_LINES = 150


def definitions(source):
    """Top-level functions, classes and assignments of a script: name -> AST dump without docstrings."""
    tree = ast.parse(source)
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                body = getattr(inner, "body", None)
                if (isinstance(inner, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and body
                        and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                        and isinstance(body[0].value.value, str)):
                    inner.body = body[1:] or [ast.Pass()]
            found[node.name] = ast.dump(node, include_attributes=False)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = ast.dump(node.value, include_attributes=False)
    return found


def read(filename):
    with open(os.path.join(REPO, filename), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def scripts():
    return {name: definitions(read(name)) for name in MODEL_SCRIPTS}


def test_comparison_ignores_docstrings_and_comments_but_not_code():
    one = definitions('class C:\n    """one"""\n    def f(self, x):\n        "a"\n        return x + 1  # a\n')
    two = definitions('class C:\n    """two"""\n    def f(self, x):\n        "b"\n        return x + 1  # b\n')
    changed = definitions('class C:\n    def f(self, x):\n        return x + 2\n')
    assert one == two and one != changed


@pytest.mark.parametrize("name", REQUIRED)
def test_required_shared_definitions_are_identical(scripts, name):
    template = scripts[TEMPLATE][name]
    for script, found in scripts.items():
        assert name in found, f"{script} lacks {name} (every model script has it, as {TEMPLATE} does)"
        assert found[name] == template, f"{name} in {script} differs from {TEMPLATE}'s: make the same change in both"


@pytest.mark.parametrize("name", OPTIONAL)
def test_optional_shared_definitions_are_identical_where_present(scripts, name):
    template = scripts[TEMPLATE][name]
    for script, found in scripts.items():
        if name in found:
            assert found[name] == template, f"{name} in {script} differs from {TEMPLATE}'s: make the same change in both"


def test_training_loops_keep_their_common_parts_in_order():
    # The loops differ on purpose (each model's own set-up), but the common parts come in gpt.py's order,
    # so that a reader who knows one loop finds the same thing in the same place in the next.
    markers = ["parse_config(argv", "resumed_config(", "check_config(cfg)", "# ---- devices, processes and precision",
               "start_processes(cfg)", "# ---- data", "local_rank0_first(prepare_dataset", "# ---- model",
               ("check_vocabulary_fits(", "build_model("), "configure_optimizer(", "restore_training_state(", "compile_or_warn(",
               "DistributedDataParallel(", "start_wandb(", "# ---- the training loop", "start_run_log(",
               "IterationTimer(", "learning_rate_at(", "log_eval(", "check_finite(", "every_rank_rng_state(",
               "save_checkpoint(", "scaler.scale(loss).backward()", "clip_grad_norm_", "scaler.step(optimizer)",
               "mean_over_processes([train_loss", "log_train_step(", "end_run("]
    for script in MODEL_SCRIPTS:
        source = read(script)
        main = source[source.index("def main(argv):"):]
        positions = []
        for marker in markers:
            # A tuple: one of these (gpt.py, llama.py and olmo.py build their model in build_model, which
            # checks the vocabulary; the other scripts check it inline).
            if isinstance(marker, tuple):
                marker = min((m for m in marker if m in main), key=main.index, default=marker[0])
            assert marker in main, f"{script}'s main() lacks {marker!r}"
            positions.append(main.index(marker))
        assert positions == sorted(positions), f"{script}'s main() has gpt.py's parts in another order"


@pytest.mark.parametrize("script", MODEL_SCRIPTS)
def test_layout_is_lesson_then_training_then_plumbing(script):
    # One layout in every script (../shared/CONVENTIONS.md): Part 1, the model, straight after the imports;
    # Part 2, the defaults and main(); Part 3, the plumbing, with every shared definition but the lesson's
    # own (attention, sampling) below its "Shared by convention" banner. main() stays short enough to read
    # like nanoGPT's train.py.
    source = read(script)
    lines = source.splitlines()
    positions = []
    for banner in BANNERS:
        found = [i for i, line in enumerate(lines) if line.startswith(banner)]
        assert len(found) == 1, f"{script} should have one line starting {banner!r}, has {len(found)}"
        positions.append(found[0] + 1)
    assert positions == sorted(positions), f"{script}'s banners are out of order: {BANNERS}"
    part1, part2, part3, shared = positions
    tree = ast.parse(source)
    top = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    assert top[0].lineno > part1, f"{script}: {top[0].name} stands before the Part 1 banner"
    assert isinstance(top[0], ast.ClassDef) and top[0].name.endswith("Config"), (
        f"{script}: the lesson should open with the model's config dataclass, not {top[0].name}")
    shared_names = set(REQUIRED) | set(OPTIONAL)
    for node in tree.body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [
            t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        for name in names:
            if name in LESSON:
                assert part1 < node.lineno < part2, f"{script}: {name} belongs to Part 1, the lesson"
            elif name in shared_names:
                assert node.lineno > shared, f"{script}: {name} is shared by convention: move it below Part 3's banner"
            elif name == "main":
                assert part2 < node.lineno < part3, f"{script}: main() belongs to Part 2"
                length = node.end_lineno - node.lineno + 1
                assert length <= MAIN_MAX_LINES, f"{script}: main() has {length} lines, more than {MAIN_MAX_LINES}"


CONFIG_DIR = os.path.join(REPO, "config")


def script_of(config_name):
    """The script a preset is for, by its name: llama_*.py and finetune_llama_*.py go to llama.py, ..."""
    for script in ("bigram", "llama", "olmo", "bert", "t5"):
        if config_name.startswith((f"{script}_", f"finetune_{script}_")):
            return script
    return "gpt"


@pytest.mark.parametrize("config_name", sorted(os.listdir(CONFIG_DIR)))
def test_every_preset_is_accepted_by_its_script(config_name, monkeypatch, capsys):
    # Every key of every file in config/ exists in its script with the right type, and passes the
    # script's own checks: a preset is what a reader runs first, so it must never fail on its keys.
    import importlib

    module = importlib.import_module(script_of(config_name))
    defaults = {k: getattr(module, k) for k in module.config_keys}
    cfg = module.parse_config([os.path.join(CONFIG_DIR, config_name)], defaults)
    module.check_config(cfg)
    with open(os.path.join(CONFIG_DIR, config_name)) as f:
        assert "out_dir" in f.read(), f"{config_name} should name its own out_dir"


def reading_guide():
    """The rows of the README's reading guide: (script, [names it says to read first])."""
    readme = read("README.md")
    start = readme.index("## How to read them")
    section = readme[start:readme.index("\n## ", start + 1)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`") and cells[1].endswith(".py`"):
            rows.append((cells[1].strip("`"), re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[2]), section))
    return rows


def test_readme_reading_guide_names_what_is_there():
    # The README's first screen says in which order to read the scripts and what to read first in each;
    # it names definitions, never line numbers, and this test keeps every name true: each exists in its
    # script, in Part 1 (the lesson), or in Part 2 for main.
    rows = reading_guide()
    assert [script for script, _, _ in rows] == MODEL_SCRIPTS_IN_ORDER + ["bpe.py"]
    assert not re.search(r"\.py:\d|\bline \d", rows[0][2]), "the reading guide should not cite line numbers"
    for script, names, _ in rows:
        assert names, f"the reading guide names nothing to read in {script}"
        source = read(script)
        tree = ast.parse(source)
        defined = {node.name: node.lineno for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        lines = source.splitlines()
        banners = [next((i + 1 for i, line in enumerate(lines) if line.startswith(b)), None) for b in BANNERS[:3]]
        for name in names:
            assert name in defined, f"the README's reading guide names {name}, which {script} does not define"
            if script == "bpe.py":
                continue
            part1, part2, part3 = banners
            where = (part2, part3) if name == "main" else (part1, part2)
            assert where[0] < defined[name] < where[1], f"{script}: {name} is not in the part the reading guide says"
