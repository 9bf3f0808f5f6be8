"""The Click classes under the Typer app: help that is readable at any width (plain two-column lists, option names
and defaults never cut, flags without a value placeholder, long lists grouped by ``rich_help_panel``), usage
errors as one ``error:`` line (exit 2), and the global flags (``--debug``, ``-q/--quiet``) accepted after the
command too."""

from __future__ import annotations

import sys
import textwrap
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from typer import Abort
from typer.core import TyperCommand, TyperGroup

try:  # typer >= 0.29 carries its own copy of Click; older ones use the click package
    from typer._click.core import Command, Context
    from typer._click.exceptions import ClickException, UsageError
    from typer._click.formatting import HelpFormatter
except ImportError:  # pragma: no cover - typer < 0.29
    from click import ClickException, Command, Context, HelpFormatter, UsageError  # type: ignore[no-redef]

__all__ = ["TokshiftCommand", "TokshiftGroup", "GLOBAL_FLAGS", "hoist_global_flags", "fail_line", "errors"]

#: The one ``error:`` line that ends a command (printed also with -q, which silences the other stderr output).
errors = Console(stderr=True)


def fail_line(message: str) -> None:
    """The tool's one error line on stderr (``message`` is rich markup-escaped by the caller)."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)

#: Flags of the ``tokshift`` group that may also be written after the command (``tokshift classify x --debug``).
GLOBAL_FLAGS = ("--debug", "-q", "--quiet")
EXIT_USAGE = 2


def hoist_global_flags(args: Sequence[str]) -> list[str]:
    """``args`` with :data:`GLOBAL_FLAGS` written after the command moved in front of it (up to a ``--``)."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


def _panels(cmd: Command, ctx: Context) -> list[tuple[str, list[tuple[str, str]]]]:
    """The help records of ``cmd``'s parameters, grouped: Arguments, Options, then each ``rich_help_panel``."""
    order: list[str] = []
    groups: dict[str, list[tuple[str, str]]] = {}
    for param in cmd.get_params(ctx):
        rec = param.get_help_record(ctx)
        if rec is None:
            continue
        name = "Arguments" if param.param_type_name == "argument" else \
            (getattr(param, "rich_help_panel", None) or "Options")
        if name not in groups:
            order.append(name)
            groups[name] = []
        groups[name].append(rec)
    first = [n for n in ("Arguments", "Options") if n in groups]
    return [(n, groups[n]) for n in first + [n for n in order if n not in first]]


def write_records(formatter: HelpFormatter, rows: list[tuple[str, str]], col_max: int = 30) -> None:
    """Click's two-column list, except that words are never broken (``--no-overwrite``, ``tokshift-b16-8x224``,
    paths stay whole): a name longer than ``col_max`` gets its own line, the help wraps on spaces only."""
    indent = formatter.current_indent
    first = min(max((len(name) for name, _ in rows), default=0), col_max) + 2
    text_width = max(formatter.width - indent - first, 20)
    for name, help_text in rows:
        lines = textwrap.wrap(help_text or "", text_width, break_on_hyphens=False, break_long_words=False)
        if not lines:
            formatter.write(f"{' ' * indent}{name}\n")
            continue
        if len(name) + 2 <= first:
            formatter.write(f"{' ' * indent}{name.ljust(first)}{lines[0]}\n")
            lines = lines[1:]
        else:
            formatter.write(f"{' ' * indent}{name}\n")
        for line in lines:
            formatter.write(f"{' ' * (indent + first)}{line}\n")


def _format_panels(cmd: Command, ctx: Context, formatter: HelpFormatter) -> None:
    for name, records in _panels(cmd, ctx):
        with formatter.section(name):
            write_records(formatter, records)


class TokshiftCommand(TyperCommand):
    """A ``tokshift`` command: plain help grouped in panels."""

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        Command.format_help(self, ctx, formatter)

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        _format_panels(self, ctx, formatter)


class TokshiftGroup(TyperGroup):
    """The ``tokshift`` group: global flags anywhere, one-line usage errors, plain help."""

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        Command.format_help(self, ctx, formatter)

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        _format_panels(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        args = hoist_global_flags(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as e:
            sys.exit(usage_error(e))
        except ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except Abort:
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def usage_error(e: UsageError) -> int:
    """Print a Click usage error as one line in the tool's style; the exit code (2)."""
    if type(e).__name__ == "NoArgsIsHelpError":  # `tokshift` alone: the help, as before
        sys.stdout.write(e.format_message() + "\n")
        return EXIT_USAGE
    ctx = e.ctx
    where = ctx.command_path if ctx is not None else "tokshift"
    fail_line(escape(f"{e.format_message()} (see `{where} --help`)"))
    return EXIT_USAGE
