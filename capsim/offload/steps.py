"""Decode steps of a served batch, composed from a routing trace: which experts each step touches.

A server decodes B sequences side by side (continuous batching); one decode step runs one
token of each. :func:`decode_steps` rebuilds that schedule from the trace's decode tokens:

* **Sequences** with at least one decode token are queued in trace order (the order of
  their first decode token in the trace, not their sequence id). A sequence's decode tokens
  run in trace order, which is the order the model produced them.
* **Slots**: the first B sequences take slots 0..B-1 at step 0. A slot whose sequence has
  run all its decode tokens takes the next queued sequence at the very next step; when
  several slots free up at the same step, the lowest slot takes the next sequence first.
* **End**: the schedule stops at the first step where a slot has no sequence left to run
  (the queue is empty). Every step therefore holds exactly B tokens, the steady state of a
  full server; the drain at the end of the trace, with fewer than B sequences, is dropped.
  ``steps`` truncates further. A batch larger than the number of sequences with decode
  tokens is refused (no step would be full).

Step t of layer l touches the UNION of the experts the B tokens of step t chose in layer
l: the experts that must be in GPU memory for that step. Prefill tokens are not replayed.

Cost: one Python loop over sequences (a heap of slot free times, cheap next to the
tokens) and a chunked scatter of expert ids; no per-token Python. The result takes one
byte per (step, layer, expert), refused above ``max_bytes``. Pure numpy, no torch.
"""

from __future__ import annotations

import heapq

import numpy as np

from capsim.errors import CapsimError
from capsim.traces.format import DECODE, Trace
from capsim.traces.replay import _sequence_index

# The touched array is 1 byte per (step, layer, expert): 2 GiB is e.g. 350,000 steps of a 48-layer,
# 128-expert model, and keeps a replay within the memory of an ordinary workstation.
MAX_TOUCHED_BYTES = 2 << 30
_CHUNK_TOKENS = 1 << 14  # tokens scattered at once: (chunk x layers x top-k) int64 indices, ~50 MB at 48 x 8


def _schedule(counts: np.ndarray, batch: int) -> tuple[np.ndarray, int]:
    """First step of each queued sequence (decode lengths ``counts``, in queue order) and the full steps."""
    free = [(0, slot) for slot in range(batch)]  # (step the slot is free from, slot): a min-heap
    first = np.empty(len(counts), dtype=np.int64)
    for i, n in enumerate(counts.tolist()):
        step, slot = heapq.heappop(free)
        first[i] = step
        heapq.heappush(free, (step + n, slot))
    return first, free[0][0]  # the earliest slot to run dry ends the full steps


def decode_step_rows(trace: Trace, batch: int) -> tuple[np.ndarray, int]:
    """Step of every trace row in the schedule (-1: not replayed) and the number of full steps."""
    if batch < 1:
        raise CapsimError(f"--batch {batch}: must be >= 1")
    rows, _, start, count = _sequence_index(trace, DECODE)  # grouped by sequence id, trace order within
    if len(count) < batch:
        raise CapsimError(f"--batch {batch}: the trace {trace.path} has only {len(count)} sequences with decode "
                          "tokens, fewer than the batch")
    queue = np.argsort(rows[start], kind="stable")  # sequences in the order of their first decode token
    first = np.empty(len(count), dtype=np.int64)
    first[queue], n_steps = _schedule(count[queue], batch)
    rank = np.arange(len(rows)) - np.repeat(start, count)  # index of the token within its sequence
    step_of_row = np.full(len(trace), -1, dtype=np.int64)
    step_of_row[rows] = np.repeat(first, count) + rank
    step_of_row[step_of_row >= n_steps] = -1
    return step_of_row, int(n_steps)


def decode_steps(trace: Trace, batch: int, steps: int | None = None,
                 max_bytes: int = MAX_TOUCHED_BYTES) -> np.ndarray:
    """Bool (n_steps, layers, num_experts): the experts each decode step of ``batch`` sequences touches.

    See the module docstring for how steps are composed. ``steps`` keeps only the first steps.
    """
    if steps is not None and steps < 1:
        raise CapsimError(f"--steps {steps}: must be >= 1")
    step_of_row, n_steps = decode_step_rows(trace, batch)
    if steps is not None:
        n_steps = min(n_steps, steps)
        step_of_row[step_of_row >= n_steps] = -1
    ids_all = trace.expert_ids
    layers, e = ids_all.shape[1], trace.num_experts
    need = n_steps * layers * e
    if need > max_bytes:
        fit = max(1, max_bytes // (layers * e))
        raise CapsimError(f"--steps: {n_steps} decode steps x {layers} layers x {e} experts need {need / 1e9:.1f} GB "
                          f"(limit {max_bytes / 1e9:.1f} GB); pass --steps {fit} or fewer")
    out = np.zeros((n_steps, layers, e), dtype=bool)
    flat_out = out.reshape(-1)
    layer_base = (np.arange(layers, dtype=np.int64) * e)[None, :, None]
    for lo in range(0, len(trace), _CHUNK_TOKENS):
        st = step_of_row[lo:lo + _CHUNK_TOKENS]
        keep = st >= 0
        if not keep.any():
            continue
        ids = np.asarray(ids_all[lo:lo + _CHUNK_TOKENS])[keep].astype(np.int64)
        flat_out[(st[keep][:, None, None] * (layers * e) + layer_base + ids).ravel()] = True
    return out
