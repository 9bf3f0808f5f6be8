"""Docstrings name things that exist: every ``tokshift_cli.x.y`` and every Sphinx-style :mod:/:func:/:class:/...
reference in the package's docstrings resolves to a module, or to a name defined in one (read with ``ast``,
nothing imported). Code moves; docstrings that still point at the old place are caught here."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tokshift_cli"
ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|exc|obj):`~?([\w.]+)`")
DOTTED = re.compile(r"\btokshift_cli(?:\.[A-Za-z_]\w*)+")


def module_of(name: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


@functools.lru_cache(maxsize=None)
def names_in(path: Path) -> frozenset[str]:
    """Top-level names of a module, its classes' members, and (for a package) its submodules and lazy names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            names |= {t.attr for t in node.targets if isinstance(t, ast.Attribute)}
        elif isinstance(node, ast.AnnAssign):
            if isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node.target, ast.Attribute):
                names.add(node.target.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if path.name == "__init__.py":
        names |= {p.stem for p in path.parent.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
        m = re.search(r"_LAZY\s*=\s*\{(.*?)\}", path.read_text(encoding="utf-8"), re.S)
        if m:
            names |= set(re.findall(r'"(\w+)"\s*:', m.group(1)))
    return frozenset(names)


def problem(ref: str) -> str | None:
    """None when ``ref`` (absolute, ``tokshift_cli.``...) is a module or a name under one."""
    parts = ref.split(".")
    for k in range(len(parts), 0, -1):
        mod = module_of(".".join(parts[:k]))
        if mod is not None:
            rest = parts[k:]
            if rest and rest[0] not in names_in(mod):
                return f"{'.'.join(parts[:k])} has no {rest[0]}"
            return None
    return "no such module"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def docstrings(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node, doc


def test_docstring_references_resolve():
    bad = []
    anywhere = frozenset().union(*(names_in(p) for p in PACKAGE.rglob("*.py")))  # members of base classes too
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        own = names_in(path)
        for node, doc in docstrings(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 1)}"
            refs = set(DOTTED.findall(doc))
            for ref in ROLE.findall(doc):
                if ref.startswith("."):  # relative to the module's package, as in an import
                    dots = len(ref) - len(ref.lstrip("."))
                    base = package.split(".")[:len(package.split(".")) - (dots - 1)]
                    refs.add(".".join(base + [ref.lstrip(".")]))
                elif ref.startswith("tokshift_cli"):
                    refs.add(ref)
                elif "." not in ref and ref not in own and ref not in anywhere:
                    bad.append(f"{where}: :{ref}: is not defined in {mod}")
            bad += [f"{where}: `{ref}`: {why}" for ref in sorted(refs) if (why := problem(ref))]
    assert not bad, "docstrings name things that do not exist:\n" + "\n".join(bad)


def test_module_docstrings_are_short():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if len(doc.splitlines()) > 30:
            long.append(f"{path.relative_to(PACKAGE.parent)}: {len(doc.splitlines())} lines")
    assert not long, "module docstrings over 30 lines (history and measurements go to docs/):\n" + "\n".join(long)
