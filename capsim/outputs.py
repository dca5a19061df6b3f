"""What capsim may overwrite: an output path that exists is replaced only when it is capsim's own output of the
same kind; anything else (a user's file, a folder, a symbolic link) is refused with a one-line error, before any
work is done. The writes themselves go through :mod:`capsim.atomic` (temporary file, then one rename).

How an existing file is recognised as capsim's, per kind:

* ``figure``: capsim stamps ``capsim`` into the image metadata (PNG ``Software``, SVG/PDF ``Creator``);
* ``report``: a Markdown file whose first lines name the ``capsim`` command that wrote it;
* ``sweep``: a CSV (or .csv.gz) whose header, or a Parquet file whose columns, hold a sweep's key columns;
* ``run``: a JSON object whose ``format`` starts with ``capsim-`` (run files, disk runs, probe results), or whose
  ``command`` is a capsim command (probe results written before they had a format);
* ``entry``: a hardware YAML whose first line is ``# Written by: capsim ...`` (``capsim probe``, ``capsim hw new``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

from capsim import __version__
from capsim.errors import CapsimError

STAMP = f"capsim {__version__}"  # the mark written into capsim's figures
FIGURE_FORMATS = ("png", "svg", "pdf")
HEAD_BYTES = 1 << 22  # how much of a figure is searched for the stamp (PNG text chunks precede the image data)
SWEEP_KEY_COLUMNS = {"model", "hardware", "batch", "input_len", "output_len"}


def figure_metadata(fmt: str) -> dict[str, str]:
    """savefig metadata that stamps a figure as capsim's."""
    return {"Software": STAMP} if fmt == "png" else {"Creator": STAMP}


def _head(path: Path, n: int = HEAD_BYTES) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _figure(path: Path) -> bool:
    if path.suffix.lower() == ".pdf":  # the Info dictionary is near the end
        data = path.read_bytes() if path.stat().st_size <= 8 * HEAD_BYTES else _head(path)
        return b"capsim" in data
    return b"capsim" in _head(path)


def _report(path: Path) -> bool:
    return b"capsim " in _head(path, 4096)


def _sweep(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq

            cols = set(pq.read_schema(path).names)
        except Exception:  # not Parquet at all: not ours  # noqa: BLE001
            return False
    else:
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                cols = set(f.readline().strip().split(","))
        except (OSError, UnicodeDecodeError, EOFError):
            return False
    return SWEEP_KEY_COLUMNS <= cols


def _run(path: Path) -> bool:
    try:
        data = json.loads(_head(path, 1 << 26).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and (str(data.get("format", "")).startswith("capsim-")
                                       or str(data.get("command", "")).startswith("capsim "))


def _entry(path: Path) -> bool:
    return _head(path, 64).startswith(b"# Written by: capsim")


KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "figure": ("a plot capsim wrote", _figure),
    "report": ("a report capsim wrote", _report),
    "sweep": ("a sweep result capsim wrote", _sweep),
    "run": ("a capsim JSON result", _run),
    "entry": ("a hardware entry capsim wrote", _entry),
}


def check_replace(path: str | Path, kind: str, flag: str) -> Path:
    """``path`` when it may be written: new, or an existing capsim output of ``kind``. A folder, a symbolic link,
    or a file capsim did not write is refused (CapsimError naming ``flag``)."""
    path = Path(path)
    what, ours = KINDS[kind]
    if path.is_symlink():
        raise CapsimError(f"{flag} {path}: is a symbolic link; refusing to replace it (choose another {flag})")
    if not path.exists():
        return path
    if path.is_dir():
        raise CapsimError(f"{flag} {path}: is a folder; give a file name")
    try:
        mine = path.is_file() and ours(path)
    except OSError as err:
        raise CapsimError(f"{flag} {path}: cannot read it to check what it is ({err.strerror or err})") from None
    if not mine:
        raise CapsimError(f"{flag} {path}: exists and is not {what}; refusing to replace it (choose another {flag} "
                          "or remove the file)")
    return path


def check_output(path: str | Path, kind: str, flag: str) -> Path:
    """:func:`check_replace`, and the folder it goes in exists (or can be made) and is writable: called before
    any work, so that minutes of measuring never end in "cannot write"."""
    import os

    path = check_replace(path, kind, flag)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CapsimError(f"{flag} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CapsimError(f"{flag} {path}: folder {folder} is not writable")
    return path
