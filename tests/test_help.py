"""Every command's help is readable at 80 columns (a pipe, a narrow terminal): no option name or default cut or
broken across lines, no line over 80 characters, flags without a value placeholder; usage errors are one line in
the tool's style; option values with a fixed set of choices fail before torch is imported; the global flags work
after the command too."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tokshift_cli.cli import app

GROUP = get_command(app)
COMMANDS = sorted(GROUP.commands)


def _help(*args: str) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_at_80_columns_cuts_nothing(name):
    text = _help(*([name] if name else []))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert "…" not in text and "<bool>" not in text
    cmd = GROUP.commands[name] if name else GROUP
    for param in cmd.params:
        if getattr(param, "hidden", False) or param.param_type_name != "option":
            continue
        for opt in (*param.opts, *param.secondary_opts):
            assert any(opt in line.split() or f"{opt}," in line.split() or f"{opt} " in line + " "
                       for line in lines), f"{name}: {opt} is missing or cut"
        default = param.default
        if param.show_default is not False and isinstance(default, (str, int, float)) and not isinstance(default, bool) \
                and str(default) and not getattr(param, "is_flag", False):
            assert any(str(default) in line for line in lines), f"{name}: {param.name}'s default {default!r} cut"


def test_long_option_lists_are_grouped():
    text = _help("train")
    for panel in ("Data:", "Model:", "Recipe:", "Checkpoints and logs:", "Hub:"):
        assert f"\n{panel}\n" in text


def test_usage_errors_are_one_line():
    r = CliRunner().invoke(app, ["classify", "--no-such-option"])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: No such option: --no-such-option"), r.output


def test_debug_and_quiet_after_the_command():
    r = CliRunner().invoke(app, ["models", "--json", "--debug", "-q"])
    assert r.exit_code == 0 and r.output.lstrip().startswith("[")


@pytest.mark.parametrize("args", [["train", "data/", "--out", "o", "--optimizer", "adam"],
                                  ["classify", "x.mp4", "--dtype", "float64"],
                                  ["evaluate", "data/", "--decoder", "opencv"]])
def test_bad_choices_fail_before_torch(args):
    code = ("import sys; from tokshift_cli.cli import main; sys.argv = ['tokshift', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            "    print('torch' in sys.modules, e.code, file=sys.stderr); raise")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "error: Invalid value for --" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "False 2", r.stderr


def test_models_lists_the_bundled_model_as_cached():
    import json

    r = CliRunner().invoke(app, ["models", "--json"])
    rows = json.loads(r.output)
    assert rows[0]["name"] == "tokshift-tiny-untrained" and rows[0]["cached"] is True
    assert all("cached" in row and row["img_size"] for row in rows)
