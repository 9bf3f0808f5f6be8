"""The package layout shows the data path: nothing low imports something high, and no module imports itself back.

Layers, low to high: ``errors``/``outputs`` -> ``video/`` (frames) and ``models/`` (network, weights), which never
import each other -> the tasks (``engine``, ``features``, ``jobs`` and the packages ``train/``, ``timeline/``,
``evaluate/``, ``bench/``) -> ``cli/``. Every import counts, also those inside functions (they run too, just later).
No class is over 300 lines and no function over 100, except the Typer commands in ``cli/``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tokshift_cli"
BASE = {"tokshift_cli", "tokshift_cli.errors", "tokshift_cli.outputs"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every tokshift_cli module ``path`` imports (absolute names), wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("tokshift_cli"):
                continue
            for alias in node.names:  # `from . import zoo` imports a module, `from .x import y` a name of x
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tokshift_cli")}
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(mod: str) -> str:
    if mod in BASE:
        return "base"
    for sub in ("video", "models", "cli"):
        if mod == f"tokshift_cli.{sub}" or mod.startswith(f"tokshift_cli.{sub}."):
            return sub
    return "tasks"


ALLOWED = {
    "base": {"base"},
    "video": {"base", "video"},
    "models": {"base", "models"},
    "tasks": {"base", "video", "models", "tasks"},
    "cli": {"base", "video", "models", "tasks", "cli"},
}


def test_nothing_low_imports_something_high():
    bad = []
    for mod, deps in graph().items():
        if mod in ("tokshift_cli", "tokshift_cli.__main__"):  # the lazy public API and `python -m`
            continue
        for dep in deps:
            if layer(dep) not in ALLOWED[layer(mod)]:
                bad.append(f"{mod} ({layer(mod)}) imports {dep} ({layer(dep)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circles():
    full = graph()
    g = {m: {d for d in deps if d in full} for m, deps in full.items()}
    g.pop("tokshift_cli", None)
    for deps in g.values():
        deps.discard("tokshift_cli")  # `from .. import __version__` reads the root package's constant
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_each_folder_is_one_idea():
    names = {p.parent.name for p in PACKAGE.rglob("*.py")}
    assert {"cli", "video", "models", "train", "timeline", "evaluate", "bench"} <= names
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 12, f"{len(root)} modules at the package root (at most 12; give a family a package): {root}"
    prefixed = [n for n in root if n.split("_")[0] + "/" in {f"{d.name}/" for d in PACKAGE.iterdir() if d.is_dir()}]
    assert not prefixed, f"name-prefix families belong in their package: {prefixed}"
    assert not (PACKAGE / "video.py").exists() and not (PACKAGE / "model.py").exists()


def test_public_api_still_works():
    code = ("import tokshift_cli as t, timm; import tokshift_cli.models.tokshift\n"
            "assert callable(t.load_model) and callable(t.extract_features) and callable(t.open_video)\n"
            "from tokshift_cli.features import extract_features\n"
            "m = timm.create_model('tokshift_base_patch16_224', num_frames=8, depth=1, num_classes=3)\n"
            "print(type(m).__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "TokShiftViT"


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, time; t = time.perf_counter(); from tokshift_cli.cli import app; "
            "print(time.perf_counter() - t, 'torch' in sys.modules, 'av' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seconds, torch_loaded, av_loaded = r.stdout.split()
    assert torch_loaded == "False" and av_loaded == "False"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tokshift_cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "classify" in r.stdout
    print(f"[layout] import of the CLI {float(seconds):.3f} s, `tokshift --help` {time.perf_counter() - t0:.2f} s")


def test_explain_is_a_task_that_only_its_command_uses():
    """explain/ sits with the tasks (it may use engine, jobs, video, models); only `tokshift explain` imports it."""
    g = graph()
    assert {layer(m) for m in g if m.startswith("tokshift_cli.explain")} == {"tasks"}
    users = {m for m, deps in g.items() if not m.startswith("tokshift_cli.explain")
             and any(d.startswith("tokshift_cli.explain") for d in deps)}
    assert users <= {"tokshift_cli.cli.explain"}, sorted(users)


def test_every_relative_import_names_a_module_that_exists():
    """Code written against an old layout (``from .models...`` in a module that moved into a package) fails here,
    not at run time in one command."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            first = node.module.split(".")[0] if node.module else None
            if first and not ((base / f"{first}.py").exists() or (base / first / "__init__.py").exists()):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: from {'.' * node.level}{node.module}")
    assert not bad, "relative imports of modules that do not exist:\n" + "\n".join(bad)


MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 100


def is_typer_command(path: Path, node: ast.AST) -> bool:
    """A function in cli/ decorated ``@app.command(...)``: its signature is the command's option list."""
    if path.parent.name != "cli" or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Attribute) and target.attr == "command" and \
                isinstance(target.value, ast.Name) and target.value.id == "app":
            return True
    return False


def test_no_class_over_300_lines_no_function_over_100():
    """Sizes from the ``def``/``class`` line to the last line (methods count in their class, nested functions on
    their own too); only the Typer commands in cli/, whose signatures are their option lists, may be longer."""
    over, commands = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {lines} lines"
            if isinstance(node, ast.ClassDef):
                if lines > MAX_CLASS_LINES:
                    over.append(f"class {where} (at most {MAX_CLASS_LINES})")
            elif is_typer_command(path, node):
                commands.append(where)
            elif lines > MAX_FUNCTION_LINES:
                over.append(f"function {where} (at most {MAX_FUNCTION_LINES})")
    assert commands, "no @app.command found in cli/: the exemption names nothing"
    assert not over, "split these (a helper, or a collaborator with an explicit constructor):\n" + "\n".join(over)
