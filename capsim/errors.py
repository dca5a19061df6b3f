"""The one exception type users see: a one-line message, exit code 2, no traceback."""

from __future__ import annotations

USAGE_EXIT_CODE = 2  # bad input (file, field, flag); same code click uses for usage errors


class CapsimError(Exception):
    """Bad input. ``str(err)`` is a single line naming the file, field or flag and what was expected."""

    exit_code = USAGE_EXIT_CODE

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        text = f"{where}: {message}" if where else message
        super().__init__(" ".join(text.split()))  # one line, always
