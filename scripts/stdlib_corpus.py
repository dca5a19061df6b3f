"""The training corpus of scripts/train_tiny_moe.py: the Python standard library's *.py sources as a byte
stream, split into training and validation by file (also read by scripts/make_stdlib_prompts.py)."""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from pathlib import Path

import numpy as np
import torch

EXCLUDED_DIRS = {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        if p.is_file():
            files.append(p)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, files


def load_corpus(val_every: int) -> tuple[np.ndarray, np.ndarray, dict]:
    root, files = stdlib_files()
    sha = hashlib.sha256()
    train_parts, val_parts = [], []
    n_train = n_val = 0
    for i, p in enumerate(files):
        data = p.read_bytes() + b"\n"  # one newline separates files in the byte stream
        sha.update(data)
        if val_every > 0 and i % val_every == val_every - 1:
            val_parts.append(data)
            n_val += 1
        else:
            train_parts.append(data)
            n_train += 1
    train = np.frombuffer(b"".join(train_parts), dtype=np.uint8)
    val = np.frombuffer(b"".join(val_parts), dtype=np.uint8)
    facts = {
        "source": "Python standard library *.py sources of the interpreter that ran the script",
        "stdlib_path": str(root),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "excluded_directories": sorted(EXCLUDED_DIRS),
        "file_order": "sorted by path relative to stdlib; each file followed by one b'\\n'",
        "n_files": len(files),
        "total_bytes": int(train.size + val.size),
        "sha256_concatenated": sha.hexdigest(),
        "validation_split": f"by file: every {val_every}th file in sorted order (index % {val_every} == {val_every - 1})",
        "n_train_files": n_train,
        "n_val_files": n_val,
        "train_bytes": int(train.size),
        "val_bytes": int(val.size),
    }
    return train, val, facts


def sample_batch(data: np.ndarray, batch: int, seq: int, gen: np.random.Generator) -> torch.Tensor:
    starts = gen.integers(0, data.size - seq, size=batch)
    rows = np.stack([data[s : s + seq] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows)
