"""The capsim trace format (version 1): token-level routing, readable in chunks without torch.

A trace is a folder::

    NAME/
      meta.json          format, version, model id, config hash, counts, provenance, content hash
      expert_ids.npy     (tokens, moe_layers, top_k)  uint8 if num_experts <= 256 else uint16
      weights.npy        (tokens, moe_layers, top_k)  float16 routing weights as the router returned them
      sequence.npy       (tokens,) uint32             which sequence the token belongs to
      position.npy       (tokens,) uint32             position of the token in its sequence (0-based)
      phase.npy          (tokens,) uint8              0 = prefill, 1 = decode

Tokens are stored in the order the model processed them. ``.npy`` files open
memory-mapped, so a reader slices any token range without loading the rest.
``content_sha256`` hashes the arrays' bytes in the order above; ``verify`` checks it.
Writes go to a temporary sibling folder that replaces the target in one rename, so a
failed or interrupted write never leaves a half-written trace and the previous one
stays intact until the new one is complete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capsim import __version__
from capsim.errors import CapsimError

FORMAT = "capsim-trace"
VERSION = 1
ARRAYS = ("expert_ids", "weights", "sequence", "position", "phase")
PREFILL, DECODE = 0, 1
REQUIRED_META = ("format", "version", "model_id", "num_experts", "top_k", "moe_layers", "synthetic",
                 "content_sha256")


def _dtypes(num_experts: int) -> dict[str, np.dtype]:
    ids = np.uint8 if num_experts <= 256 else np.uint16
    return {"expert_ids": np.dtype(ids), "weights": np.dtype(np.float16), "sequence": np.dtype(np.uint32),
            "position": np.dtype(np.uint32), "phase": np.dtype(np.uint8)}


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
        for start in range(0, len(a), 1 << 16):  # chunked: works on memory-mapped arrays too
            h.update(np.ascontiguousarray(a[start:start + (1 << 16)]).tobytes())
    return h.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the config with sorted keys: the same architecture gives the same hash."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def is_trace(path: Path) -> bool:
    """Whether ``path`` is a capsim trace folder (a meta.json of this format), not a link."""
    meta = path / "meta.json"
    if path.is_symlink() or not path.is_dir() or not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_destination(path: str | Path, flag: str = "--out") -> None:
    """A trace may be written to a path that does not exist, an empty folder, or a capsim trace (replaced);
    anything else (a file, a link, a folder with other contents) is refused: capsim never removes what it did
    not write."""
    path = Path(path)
    if path.is_symlink():
        raise CapsimError(f"{flag} {path}: is a symbolic link; refusing to replace it (choose another {flag})")
    if not path.exists():
        return
    if path.is_dir() and (is_trace(path) or not any(path.iterdir())):
        return
    what = "a folder that is not a capsim trace" if path.is_dir() else "a file"
    raise CapsimError(f"{flag} {path}: exists and is {what}; refusing to replace it (choose another {flag})")


def write_trace(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write a trace folder atomically; ``meta`` needs model_id, num_experts, top_k, synthetic and provenance.
    The destination must be new, an empty folder or a capsim trace (:func:`check_destination`)."""
    path = Path(path)
    check_destination(path)
    for key in ("model_id", "num_experts", "top_k", "synthetic"):
        if key not in meta:
            raise ValueError(f"trace meta needs {key!r}")
    dt = _dtypes(int(meta["num_experts"]))
    ids = np.asarray(arrays["expert_ids"])
    if ids.ndim != 3:
        raise ValueError("expert_ids must be (tokens, moe_layers, top_k)")
    n = ids.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= meta["num_experts"]):
        raise ValueError(f"expert ids must lie in [0, {meta['num_experts']})")
    out = {name: np.asarray(arrays[name]).astype(dt[name], copy=False) for name in ARRAYS}
    for name in ARRAYS[1:]:
        if len(out[name]) != n:
            raise ValueError(f"{name} has {len(out[name])} rows, expected {n}")
    if out["weights"].shape != ids.shape:
        raise ValueError("weights must have the shape of expert_ids")
    phase = out["phase"]
    full = {
        "format": FORMAT, "version": VERSION, "collector_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "moe_layers": int(ids.shape[1]),
        "tokens": int(n),
        "prefill_tokens": int(np.sum(phase == PREFILL)),
        "decode_tokens": int(np.sum(phase == DECODE)),
        "sequences": int(len(np.unique(out["sequence"]))) if n else 0,
        "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in out.items()},
        "content_sha256": content_hash(out),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for name, a in out.items():
            np.save(tmp / f"{name}.npy", a)
        (tmp / "meta.json").write_text(json.dumps(full, indent=1) + "\n")
        old = None
        check_destination(path)  # again, just before replacing: it may have changed while writing
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "trace")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@dataclass
class Trace:
    """An open trace: metadata plus memory-mapped arrays."""

    path: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def expert_ids(self) -> np.ndarray:
        return self.arrays["expert_ids"]

    @property
    def weights(self) -> np.ndarray:
        return self.arrays["weights"]

    @property
    def sequence(self) -> np.ndarray:
        return self.arrays["sequence"]

    @property
    def position(self) -> np.ndarray:
        return self.arrays["position"]

    @property
    def phase(self) -> np.ndarray:
        return self.arrays["phase"]

    @property
    def num_experts(self) -> int:
        return int(self.meta["num_experts"])

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    def __len__(self) -> int:
        return len(self.expert_ids)

    def chunks(self, tokens: int = 1 << 16) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive token ranges, each a dict of array slices (read from disk on access)."""
        for start in range(0, len(self), tokens):
            yield {k: v[start:start + tokens] for k, v in self.arrays.items()}

    def verify(self) -> None:
        """Check the arrays against meta.json's content hash. A trace whose files (path, size, modification
        time, inode) are as they were when it last passed is not hashed again: in this process, nor in
        another one (a stamp in capsim's cache folder, :mod:`capsim.scenario_cache`)."""
        stamp = _file_stamp(self)
        if stamp in _VERIFIED or _stamp_file(stamp, check=True):
            return
        if content_hash(self.arrays) != self.meta["content_sha256"]:
            raise CapsimError(f"{self.path}: content hash does not match meta.json (corrupted or edited trace)")
        check_values(self)
        _VERIFIED.add(stamp)
        _stamp_file(stamp, check=False)


_VERIFIED: set[str] = set()


def file_stamp(path: str | Path, content_sha256: str = "") -> str:
    """A digest of a trace folder's files' identity (resolved path, size, modification time, inode)."""
    parts = [str(Path(path).resolve()), content_sha256]
    for name in ("meta.json", *(f"{a}.npy" for a in ARRAYS)):
        st = os.stat(Path(path) / name)
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _file_stamp(trace: Trace) -> str:
    return file_stamp(trace.path, trace.meta["content_sha256"])


def _stamp_file(stamp: str, check: bool) -> bool:
    """Whether the stamp of a verified trace is on disk (check), or write it; never an error."""
    from capsim.scenario_cache import folder

    where = folder()
    if where is None:
        return False
    f = where / "verified-traces" / stamp
    if check:
        return f.is_file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("content hash checked\n")
    except OSError:
        pass
    return False


def open_trace(path: str | Path, verify: bool = False) -> Trace:
    """Open a trace folder; CapsimError naming the file (and field) on anything missing or malformed. The
    arrays' shapes and types are checked here; their values (expert ids in range) and the content hash by
    ``verify``."""
    from capsim import checks

    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise CapsimError(f"{path}: not a capsim trace (no meta.json)")
    meta = checks.mapping(checks.read_json(meta_file, "trace meta.json"), str(meta_file), "a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CapsimError(f"{meta_file}: missing field(s) {', '.join(missing)}")
    if meta["format"] != FORMAT or meta["version"] != VERSION:
        raise CapsimError(f"{meta_file}: format {meta['format']!r} v{meta['version']} (this capsim reads "
                          f"{FORMAT} v{VERSION})")
    e = checks.integer(meta["num_experts"], f"{meta_file}: num_experts", low=1, high=checks.MAX_EXPERTS)
    checks.integer(meta["top_k"], f"{meta_file}: top_k", low=1, high=e)
    checks.integer(meta["moe_layers"], f"{meta_file}: moe_layers", low=1, high=checks.MAX_LAYERS)
    if not isinstance(meta["content_sha256"], str):
        raise CapsimError(f"{meta_file}: content_sha256 {meta['content_sha256']!r}: expected a hex digest")
    arrays = {}
    for name in ARRAYS:
        f = path / f"{name}.npy"
        try:
            arrays[name] = np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError, TypeError) as err:
            raise CapsimError(f"{f}: unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                              ) from None
    _check_arrays(path, meta, arrays)
    trace = Trace(path, meta, arrays)
    if verify:
        trace.verify()
    return trace


def _check_arrays(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Shapes and element types: (tokens, moe_layers, top_k) ids and weights, one value per token otherwise."""
    ids = arrays["expert_ids"]
    want = (int(meta["moe_layers"]), int(meta["top_k"]))
    for name in ("expert_ids", "weights"):
        a = arrays[name]
        if a.ndim != 3 or tuple(a.shape[1:]) != want:
            raise CapsimError(f"{path / (name + '.npy')}: shape {tuple(a.shape)}, expected (tokens, "
                              f"{want[0]} moe_layers, {want[1]} top_k)")
    for name in ("sequence", "position", "phase"):
        if arrays[name].ndim != 1:
            raise CapsimError(f"{path / (name + '.npy')}: shape {tuple(arrays[name].shape)}, expected (tokens,)")
    kinds = {"expert_ids": "ui", "weights": "f", "sequence": "ui", "position": "ui", "phase": "ui"}
    for name, kind in kinds.items():
        if arrays[name].dtype.kind not in kind:
            raise CapsimError(f"{path / (name + '.npy')}: element type {arrays[name].dtype}, expected "
                              f"{'floats' if kind == 'f' else 'integers'}")
    if any(len(a) != len(ids) for a in arrays.values()):
        raise CapsimError(f"{path}: arrays disagree on the number of tokens")


def check_values(trace: Trace) -> None:
    """Expert ids in [0, num_experts) and phases prefill/decode, read once in chunks (memory-mapped)."""
    e = trace.num_experts
    for chunk in trace.chunks(1 << 18):
        ids = chunk["expert_ids"]
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= e):
            raise CapsimError(f"{trace.path / 'expert_ids.npy'}: expert ids from {int(ids.min())} to "
                              f"{int(ids.max())}, expected 0 to {e - 1} (num_experts {e})")
        ph = chunk["phase"]
        if len(ph) and int(ph.max()) > DECODE:
            raise CapsimError(f"{trace.path / 'phase.npy'}: phase {int(ph.max())}, expected {PREFILL} (prefill) "
                              f"or {DECODE} (decode)")
