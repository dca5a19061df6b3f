"""Atomic file output: write beside the destination, then rename over it, so that a reader (or a crash) never
sees a half-written file and a file the user had stays whole until the new one is complete."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file in ``path``'s folder, then rename it to ``path``. The file
    gets an ordinary file's mode (mkstemp makes 0600); on any error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str, fsync: bool = False) -> Path:
    """``text`` as UTF-8; ``fsync``: on disk before the rename (survives a power cut, not only a crash)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    return write_with(path, write)


def save_figure(fig, path: str | Path, **savefig_kw) -> Path:
    """A matplotlib figure, in the format of ``path``'s suffix (png, svg, pdf)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return write_with(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kw))
