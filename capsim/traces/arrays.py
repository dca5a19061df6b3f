"""How the trace statistics read a trace: open traces or dicts of arrays, in token chunks.

Pure numpy. Every statistics pass (:mod:`capsim.traces.popularity`, :mod:`capsim.traces.activated`,
:mod:`capsim.traces.affinity`) reads the trace in token chunks, so a trace larger than memory is
never loaded whole: only the small per-token columns (sequence, position, phase: 9 bytes a
token) are held in full, and ``expert_ids`` is read chunk by chunk or by row for the sampled
batches. Functions take an open :class:`~capsim.traces.format.Trace` or a dict of arrays
(see :func:`from_arrays`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from capsim.traces.format import DECODE, PREFILL, Trace

PHASES = {"prefill": PREFILL, "decode": DECODE}
CHUNK_ELEMS = 1 << 24  # expert-id elements read at once (16 Mi: 16 MiB as uint8)

TraceLike = Trace | Mapping[str, np.ndarray]


def from_arrays(arrays: Mapping[str, np.ndarray], num_experts: int | None = None,
                top_k: int | None = None) -> Trace:
    """An in-memory :class:`Trace` over ``arrays`` (at least ``expert_ids`` (tokens, layers, k)).

    Missing columns are filled as one prefill sequence: ``sequence`` 0, ``position`` 0..n-1,
    ``phase`` prefill, ``weights`` 1/k. ``num_experts`` defaults to the largest id + 1.
    """
    ids = np.asarray(arrays["expert_ids"])
    if ids.ndim != 3:
        raise ValueError("expert_ids must be (tokens, moe_layers, top_k)")
    n, layers, k = ids.shape
    e = int(num_experts) if num_experts is not None else (int(ids.max()) + 1 if ids.size else 1)
    out = {
        "expert_ids": ids,
        "weights": np.asarray(arrays["weights"]) if "weights" in arrays else np.full(ids.shape, 1.0 / k, np.float16),
        "sequence": np.asarray(arrays["sequence"]) if "sequence" in arrays else np.zeros(n, np.uint32),
        "position": np.asarray(arrays["position"]) if "position" in arrays else np.arange(n, dtype=np.uint32),
        "phase": np.asarray(arrays["phase"]) if "phase" in arrays else np.full(n, PREFILL, np.uint8),
    }
    meta = {"model_id": "<arrays>", "num_experts": e, "top_k": int(top_k or k), "moe_layers": layers,
            "synthetic": None, "tokens": n}
    return Trace(Path("<memory>"), meta, out)


def as_trace(trace: TraceLike) -> Trace:
    """``trace`` itself if it is a :class:`Trace`, else :func:`from_arrays` of the dict."""
    if isinstance(trace, Trace):
        return trace
    if isinstance(trace, Mapping):
        return from_arrays(trace)
    raise TypeError(f"expected a Trace or a dict of arrays, got {type(trace).__name__}")


def dims(t: Trace) -> tuple[int, int, int]:
    """(E experts, L MoE layers, k = top-k) of a trace."""
    _, layers, k = t.expert_ids.shape
    return t.num_experts, layers, k


def chunk_tokens(t: Trace, per_token: int | None = None) -> int:
    """Tokens per chunk so that a chunk holds about ``CHUNK_ELEMS`` elements (``per_token`` each,
    L k by default)."""
    e, layers, k = dims(t)
    return max(1, CHUNK_ELEMS // max(1, per_token or layers * k))


def column(t: Trace, name: str) -> np.ndarray:
    """A small per-token column read in full (chunk by chunk, so memory maps stay cheap)."""
    a = t.arrays[name]
    step = 1 << 22
    return np.concatenate([np.asarray(a[i:i + step]) for i in range(0, len(a), step)]) if len(a) else np.asarray(a[:0])
