"""The `tokshift` command line: one module per command; each parses its options, calls the library and renders.
No logic lives here.

Heavy imports (torch, timm, PyAV) happen inside the commands, so `tokshift --help` stays instant. Exit codes:
:mod:`tokshift_cli.cli.app`.
"""

from __future__ import annotations

from importlib import import_module

from .app import app, state
from typer.core import TyperCommand

from .group import TokshiftCommand

#: Command modules, in the order `tokshift --help` lists them; each registers its commands on ``app``. Every one
#: must exist: a missing module is an import error, never a command that silently disappears.
COMMAND_MODULES = ("classify", "evaluate", "train", "timeline", "live", "features", "merge", "explain", "models",
                   "bench", "export")

for _name in COMMAND_MODULES:
    import_module(f".{_name}", __name__)
for _info in app.registered_commands:  # plain help in panels, nothing cut at 80 columns (cli/group.py)
    if _info.cls in (None, TyperCommand):
        _info.cls = TokshiftCommand


def main() -> None:
    """Console-script entry point (also `python -m tokshift_cli`): this process is ours to end."""
    state["owns_process"] = True
    app()


if __name__ == "__main__":
    main()
