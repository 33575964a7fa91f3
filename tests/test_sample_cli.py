"""sample.py's command line: --key=value options with one-line errors that say what was meant, a
typo's nearest option name and the Python spelling of True, False and None."""
import os
import subprocess
import sys

import pytest

import sample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def error_of(*args):
    with pytest.raises(SystemExit) as exit_info:
        sample.parse_args(list(args))
    return str(exit_info.value)


@pytest.mark.parametrize("arg, meant", [("--temprature=0.5", "--temperature"), ("--num_sample=2", "--num_samples"),
                                        ("--max_tokens=20", "--max_new_tokens"), ("--beamsize=4", "--beam_size")])
def test_an_unknown_option_suggests_the_nearest_name(arg, meant):
    key = arg[2:].split("=")[0]
    message = error_of(arg)
    assert message.startswith(f"error: unknown option {key!r} (did you mean {meant}?); valid options: out_dir, ")
    assert "\n" not in message


def test_an_option_nothing_like_any_name_gets_the_list_alone():
    assert error_of("--xyzzy=1") == f"error: unknown option 'xyzzy'; valid options: {', '.join(sample.DEFAULTS)}"


@pytest.mark.parametrize("arg, spelled", [("--compile=false", "False"), ("--chat=true", "True"),
                                          ("--stop_at_eos=FALSE", "False"), ("--interactive=True_", None),
                                          ("--top_k=none", "None"), ("--layer=NONE", "None"), ("--compile=none", None)])
def test_true_false_none_in_another_case_name_the_python_spelling(arg, spelled):
    key, text = arg[2:].split("=")
    expected = f"error: option {key!r} needs a Python literal, got {text!r}"
    assert error_of(arg) == expected + (f"; use {spelled}" if spelled else "")


def test_the_python_spellings_are_accepted():
    cfg = sample.parse_args(["--compile=True", "--stop_at_eos=False", "--top_k=None", "--temperature=1"])
    assert (cfg["compile"], cfg["stop_at_eos"], cfg["top_k"], cfg["temperature"]) == (True, False, None, 1.0)


def test_on_the_command_line_the_suggestion_is_one_line_on_stderr():
    result = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), "--compile=false"],
                            capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 1 and result.stderr == "error: option 'compile' needs a Python literal, got 'false'; use False\n"
