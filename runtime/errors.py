"""One exception type for problems the user can fix (bad file, wrong flag).

Command-line entry points catch :class:`UserError`, print its one-line message and exit 2
(`../shared/reference/contracts.md`), so users never see a traceback for bad input.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A problem with the user's input. The message is one line: what is wrong, with which file, and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
