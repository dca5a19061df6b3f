"""Building result frames: categorical and nullable columns filled block by block, scenario frames grouped
into configurations, frames of consecutive chunks combined (the same frame whatever the chunking)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from capsim.errors import CapsimError
from capsim.sweep.grid import CONFIG_COLUMNS

CHUNK_ROWS = 1 << 18  # rows per simulator call: about 0.5 GB of temporaries


class Text:
    """A categorical column filled by codes; its categories are the values that occur, sorted (the same
    whatever the chunking, and what reading a CSV file back gives)."""

    def __init__(self, rows: int, categories: tuple[str, ...] = ()):
        self.codes = np.full(rows, -1, np.int32)
        self.index = {c: i for i, c in enumerate(categories)}

    def put(self, where, value) -> None:
        if value is not None:
            self.codes[where] = self.index.setdefault(str(value), len(self.index))

    def build(self) -> pd.Categorical:
        names = list(self.index)
        used = np.bincount(self.codes + 1, minlength=len(names) + 1)[1:] > 0  # only values that occur
        order = sorted((i for i in range(len(names)) if used[i]), key=names.__getitem__)
        remap = np.full(len(names) + 1, -1, np.int32)  # code -1 (missing) stays -1
        remap[np.asarray(order, dtype=np.int64)] = np.arange(len(order), dtype=np.int32)
        return pd.Categorical.from_codes(remap[self.codes], categories=[names[i] for i in order])


class Masked:
    """A nullable Int64 or boolean column."""

    def __init__(self, rows: int, dtype):
        self.values, self.mask = np.zeros(rows, dtype), np.ones(rows, bool)

    def put(self, where, value) -> None:
        if value is not None:
            self.values[where] = value
            self.mask[where] = False

    def build(self):
        if self.values.dtype == bool:
            return pd.arrays.BooleanArray(self.values, self.mask)
        return pd.arrays.IntegerArray(self.values, self.mask)


def configurations(frame: pd.DataFrame) -> list[tuple[tuple, list]]:
    """[(key, [row blocks])]: the frame's rows grouped by CONFIG_COLUMNS, each block a slice (contiguous
    rows, as :func:`capsim.sweep.grid.expand` makes them) or an index array of at most CHUNK_ROWS rows."""
    rows = len(frame)
    if rows == 0:
        return []
    codes, values = [], []
    for c in CONFIG_COLUMNS:
        col = frame[c]
        if isinstance(col.dtype, pd.CategoricalDtype):
            k, u = col.cat.codes.to_numpy().astype(np.int64), col.cat.categories
        else:
            k, u = pd.factorize(col.to_numpy())
        if np.any(k < 0):
            raise CapsimError(f"column {c!r}: missing values")
        codes.append(k)
        values.append(u)
    combined, size = np.zeros(rows, np.int64), 1
    for k, u in zip(codes, values, strict=True):
        if size * max(len(u), 1) >= 1 << 62:
            combined, seen = pd.factorize(combined)
            size = len(seen)
        combined, size = combined * len(u) + k, size * max(len(u), 1)
    starts = np.flatnonzero(np.r_[True, combined[1:] != combined[:-1]])
    ends = np.r_[starts[1:], rows]
    out = []
    if len(np.unique(combined[starts])) == len(starts):  # every configuration is one run of rows
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            blocks = [slice(x, min(x + CHUNK_ROWS, b)) for x in range(a, b, CHUNK_ROWS)]
            out.append((_key(values, codes, a), blocks))
        return out
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(inverse))]
    for g, row in enumerate(first.tolist()):
        idx = order[bounds[g]:bounds[g + 1]]
        out.append((_key(values, codes, row), [idx[x:x + CHUNK_ROWS] for x in range(0, len(idx), CHUNK_ROWS)]))
    return out


def _key(values, codes, row: int) -> tuple:
    def py(v):
        return v.item() if hasattr(v, "item") else v

    return tuple(py(u[k[row]]) for u, k in zip(values, codes, strict=True))


def combine(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Result frames of consecutive chunks as one frame (index 0..n-1), categories merged and sorted: the
    same frame whatever the chunking."""
    if not parts:
        raise ValueError("combine: no parts")
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    cols = {}
    for c in parts[0].columns:
        if isinstance(parts[0][c].dtype, pd.CategoricalDtype):
            cols[c] = pd.api.types.union_categoricals([p[c] for p in parts], sort_categories=True)
        else:
            cols[c] = pd.concat([p[c] for p in parts], ignore_index=True)
    return pd.DataFrame(cols)


def iter_chunks(total: int, chunk_rows: int) -> Iterator[tuple[int, int]]:
    for a in range(0, total, chunk_rows):
        yield a, min(a + chunk_rows, total)
