"""Resolved scenarios kept on disk, so that a cold ``capsim predict`` need not read and check the hardware
database, build its topology graph, or parse the catalogue and the engine profile again.

A scenario is stored under a key hashed from everything it is made of: the question's configuration
(:data:`capsim.scenario.PER_REQUEST` fields aside), the contents of the hardware database's YAML files
(:meth:`capsim.hardware.db.HardwareDB.fingerprint`), a local model config's contents, and capsim's own
package files (size and modification time of each: the catalogue, the engine profiles and the code). Change
any of them and the key changes. Entries are pickles written atomically (a temporary file renamed into
place); one that cannot be read is ignored and written again. The folder is ``$CAPSIM_CACHE_DIR``, else
``$XDG_CACHE_HOME/capsim``, else ``~/.cache/capsim``; ``CAPSIM_CACHE=off`` turns the cache off. A folder
that cannot be written only makes predictions slower.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capsim.scenario import Query, Scenario

FORMAT = 1  # bump when the pickled records change shape in a way the code stamp would not catch
PACKAGE = Path(__file__).resolve().parent


def folder() -> Path | None:
    if os.environ.get("CAPSIM_CACHE", "").lower() in ("0", "off", "no", "false"):
        return None
    base = os.environ.get("CAPSIM_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "capsim"


@cache
def code_stamp() -> str:
    """Size and modification time of every file of the package (code, catalogue, engine profiles) and of the
    shipped routing data."""
    from capsim import data

    h = hashlib.sha256(str(FORMAT).encode())
    for top in (PACKAGE, data.path("routing")):  # the code, and the shipped routing data a scenario chooses from
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                h.update(f"{os.path.relpath(os.path.join(root, name), top)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _model_stamp(model: str) -> str:
    """A local config's contents (a catalogue name is part of the package)."""
    for path in (Path(model), Path(model) / "config.json"):
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    return ""


def key(q: Query, db, per_request: tuple[str, ...]) -> str | None:
    """The cache key of ``q``'s scenario on ``db``; None when ``db`` is not read from folders."""
    if not getattr(db, "roots", ()):
        return None
    config = tuple((f.name, getattr(q, f.name)) for f in fields(q) if f.name not in per_request)
    text = repr((config, db.fingerprint(), code_stamp(), _model_stamp(q.model), _model_stamp(q.routing)))
    return hashlib.sha256(text.encode()).hexdigest()


def get(k: str | None) -> Scenario | None:
    where = folder()
    if k is None or where is None:
        return None
    try:
        with open(where / "scenarios" / f"{k}.pickle", "rb") as fh:
            return pickle.load(fh)
    except Exception:  # noqa: BLE001 - absent, unreadable or from another version: resolve again
        return None


def put(k: str | None, sc: Scenario) -> None:
    where = folder()
    if k is None or where is None:
        return
    tmp = None
    try:
        target = where / "scenarios"
        target.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(sc, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target / f"{k}.pickle")
        tmp = None
    except OSError:
        return
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
