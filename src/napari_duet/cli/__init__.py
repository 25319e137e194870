"""The ``duet`` command line.

Each engine registers its sub-command from its own ``_cli`` module, so this
file only assembles the parser and turns user errors, running out of memory and
failing to write a result (no permission, disk full) into exit code 2 with a
one-line reason (never a traceback).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..core.distributed import launched
from ..core.errors import DuetError, first_line, is_out_of_memory, out_of_memory_message

# Modules exposing ``register(subparsers)``; each sets ``func`` on its parser.
_SUBCOMMAND_MODULES = (
    "napari_duet.cli._self2seg",
    "napari_duet.cli._nsn2n",
    "napari_duet.cli._split",
    "napari_duet.cli._export",
    "napari_duet.cli._n2f",
)

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + message and exits 2 on bad arguments; keep it one line."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="duet",
        description=(
            "Self-supervised denoising jointly with segmentation (self2seg), "
            "volume denoising from neighbouring slices (nsn2n) and image splitting (split)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"napari-duet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod_name in _SUBCOMMAND_MODULES:
        importlib.import_module(mod_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``duet``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    if launched() and not getattr(args, "distributed", False):
        # Every rank would compute the same thing and write the same files.
        print(f"duet {args.command}: error: this command does not run under torchrun "
              "(only training does: `duet nsn2n`, `duet split train`); run it with plain `duet`",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except DuetError as exc:
        print(f"duet {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"duet {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # Reading an input or writing a result failed (no permission, disk full,
        # read-only file system): one line naming which and where.  A
        # FileNotFoundError that gets this far is a bug: keep its traceback.
        if isinstance(exc, FileNotFoundError):
            raise
        print(f"duet {args.command}: error: {os_error_message(exc, args)}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, RuntimeError) as exc:
        # Running out of host or device memory is the user's to fix (smaller input or
        # tiles, another device): one line, no traceback.  Other RuntimeErrors are bugs.
        if not is_out_of_memory(exc):
            raise
        print(f"duet {args.command}: error: {out_of_memory_message(exc)}", file=sys.stderr)
        return EXIT_USAGE


# Options that name files a command writes; any other path option is read.
_OUTPUT_OPTIONS = {"output", "outdir", "save_model", "log_json", "uncertainty", "checkpoint"}


def _input_paths(args: argparse.Namespace | None) -> list[Path]:
    """The paths a command reads: its path-valued options other than outputs."""
    out: list[Path] = []
    for name, value in vars(args or argparse.Namespace()).items():
        if name in _OUTPUT_OPTIONS or callable(value):
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, str | os.PathLike) and v and os.path.lexists(v):
                out.append(Path(os.path.abspath(v)))
    return out


def os_error_message(exc: OSError, args: argparse.Namespace | None = None) -> str:
    """One line: what failed (reading an input, or writing a result), on which path, why,
    and what to change."""
    reason = exc.strerror or first_line(exc, 200)
    path = Path(os.path.abspath(exc.filename)) if exc.filename else None
    where = f" {exc.filename}" if exc.filename else ""
    if path is not None and any(path == p or p in path.parents for p in _input_paths(args)):
        return f"cannot read{where}: {reason}; check that the file is readable"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"cannot write{where}: {reason}; free disk space or choose another output"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where}: {reason}; choose another output folder"
    return f"input/output error on{where or ' a file'}: {reason}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
