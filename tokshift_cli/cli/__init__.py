"""The `tokshift` command line: one module per command; each parses its options, calls the library and renders.
No logic lives here.

Heavy imports (torch, timm, PyAV) happen inside the commands, so `tokshift --help` stays instant. Exit codes:
:mod:`tokshift_cli.cli.app`.
"""

from __future__ import annotations

from importlib import import_module

from .app import app, _state

#: Command modules, in the order `tokshift --help` lists them; each registers its commands on ``app``.
COMMAND_MODULES = ("classify", "evaluate", "train", "timeline", "features", "models", "bench", "export")

for _name in COMMAND_MODULES:
    try:
        import_module(f".{_name}", __name__)
    except ModuleNotFoundError as _e:  # a command module not written yet (development); never hide other errors
        if _e.name != f"{__name__}.{_name}":
            raise


def main() -> None:
    """Console-script entry point (also `python -m tokshift_cli`): this process is ours to end."""
    _state["owns_process"] = True
    app()


if __name__ == "__main__":
    main()
