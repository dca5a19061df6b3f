"""Writing and reading sweep results: Parquet or CSV, written atomically.

The file is written to a temporary file in the destination folder and then moved over
the destination with ``os.replace``, so a reader never sees half a file and an
interrupted sweep leaves the previous file intact. :func:`read_results` restores the
column types (categories, nullable integers, booleans) that CSV does not keep.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from capsim import outputs
from capsim.atomic import write_with
from capsim.errors import CapsimError
from capsim.sweep.evaluate import DTYPES

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv.gz"}


def format_of(path: str | Path) -> str:
    name = Path(path).name.lower()
    for suffix, fmt in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    raise CapsimError(f"--out {path}: unknown format (expected a name ending in {', '.join(FORMATS)})")


def check_destination(path: str | Path) -> str:
    """The format of ``path``; a one-line error before any work when it cannot be written."""
    fmt = format_of(path)
    outputs.check_replace(path, "sweep", "--out")
    folder = Path(path).parent
    if not folder.is_dir():
        raise CapsimError(f"--out {path}: no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise CapsimError(f"--out {path}: folder {folder} is not writable")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise CapsimError(f"--out {path}: writing Parquet needs pyarrow (pip install 'capsim[sweep]'), "
                              "or name a .csv file") from None
    return fmt


def write_results(frame: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    fmt = check_destination(path)

    def write(tmp: str) -> None:
        if fmt == "parquet":
            frame.to_parquet(tmp, engine="pyarrow", index=False)
        else:
            frame.to_csv(tmp, index=False, compression="gzip" if fmt == "csv.gz" else None)

    write_with(path, write)
    return path


def read_results(path: str | Path) -> pd.DataFrame:
    """A results file back as the frame that was written (CSV: column types restored)."""
    fmt = format_of(path)
    if fmt == "parquet":
        return pd.read_parquet(path)
    head = pd.read_csv(path, nrows=0).columns
    frame = pd.read_csv(path, dtype={c: t for c, t in DTYPES.items() if c in head and t != "category"},
                        keep_default_na=False, na_values=[""])
    for c in head:
        if DTYPES.get(c) == "category":
            frame[c] = frame[c].astype("category")  # categories sorted, as evaluate() builds them
    return frame
