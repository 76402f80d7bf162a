"""``python -m ane_diffusion``: one subcommand per module in this package.

Each subcommand module has ``register(subparsers)`` and ``run(args) -> int``. Expected failures
(bad input, missing models, unwritable outputs) print one ``error:`` line and exit 2; warnings
print one ``warning:`` line each.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

SUBCOMMANDS = ("generate", "edit", "inpaint", "distill", "convert", "verify", "bench")


def _available():
    for name in SUBCOMMANDS:
        try:
            yield importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the command's --help has the rest)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m ane_diffusion",
        description="Guidance-distilled 1-4 step text-to-image diffusion for the Apple Neural Engine.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"ane-diffusion {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _available():
        module.register(subparsers)
    return parser


def expected_errors() -> tuple:
    from ..atomic import OutputError
    from ..bundle import ModelLoadError
    from ..card import CardError
    from ..pipeline import GenerationError

    errors = [OutputError, ModelLoadError, CardError, GenerationError, ValueError, FileNotFoundError]
    return tuple(errors)


def close_progress_bars() -> None:
    """Close every tqdm bar still on screen, so an error line starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    from ..memory import keep_freed_memory

    keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    warnings.showwarning = _one_line_warning
    try:
        return int(args.run(args) or 0)
    except expected_errors() as exc:
        close_progress_bars()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close_progress_bars()
        print("error: interrupted", file=sys.stderr)
        return 130
