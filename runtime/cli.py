"""What every ``python -m ...`` command shares: help built from the module docstring, one-line errors.

Commands are thin: ``make_parser()`` plus ``run(args) -> exit code``; :func:`run_cli` turns a
:class:`UserError` into ``error: ...`` on stderr and exit 2 (``../shared/reference/contracts.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.atomic_write import write_text_atomic
from runtime.errors import EXIT_BAD_INPUT, UserError
from runtime.image_io import quiet_decoder_logs

MODEL_HELP = "checkpoint (.pth, ours or mmdet's), ONNX file (.onnx) or TensorRT engine (.plan)"


def parser_from_doc(prog: str, doc: str | None, extra: str = "") -> argparse.ArgumentParser:
    """A parser whose description is the docstring's first paragraph and whose epilog is the rest (examples)."""
    parts = (doc or "").strip().split("\n\n")
    return argparse.ArgumentParser(
        prog=prog,
        description=(parts[0] + (" " + extra if extra else "")).strip(),
        epilog="\n\n".join(parts[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run_cli(
    run: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str] | None
) -> int:
    """Parse ``argv`` and run; bad input becomes one ``error:`` line and exit 2, never a traceback."""
    args = parser.parse_args(argv)
    quiet_decoder_logs()  # unreadable images are reported in one line of ours, not OpenCV's
    warnings.formatwarning = _one_line_warning  # how shown warnings read; recording them is unaffected
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Warnings from library code (e.g. classes a checkpoint loader skipped) as one ``warning:`` line."""
    return f"warning: {' '.join(str(message).split())}\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Write a JSON file atomically (creating its folder); an unwritable path is a one-line ``UserError``."""
    write_text_atomic(path, json.dumps(obj, indent=1))
