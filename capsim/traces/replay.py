"""Replay a token-level trace at any batch size: what a step's real routing costs.

A token's routing does not depend on the batch it runs in, so a batch of B
concurrent sequences is composed from the trace at replay time: for a decode
step, one decode token from each of B distinct sequences (or B distinct decode
tokens when the trace has fewer than B sequences); for the prefill pass, every
prompt token of B distinct sequences. Per MoE layer the step then touches the
UNION of the experts its tokens chose (weight bytes), puts tokens x top-k
assignments on experts (FLOPs), and, with expert parallelism over ``ep`` ranks
(expert e on rank e // (E / ep)), the slowest rank sets the step. Many random
compositions give the spread (p10 / p50 / p90) of a prediction.

Everything here is numpy on memory-mapped arrays: no torch.
"""

from __future__ import annotations

import numpy as np

from capsim.errors import CapsimError
from capsim.traces.format import DECODE, PREFILL, Trace

DEFAULT_SAMPLES = 200  # batch compositions drawn per prediction


def _routing_stats(ids: np.ndarray, num_experts: int, ep: int) -> dict[str, np.ndarray]:
    """ids: (samples, tokens, layers, k). Per sample, each averaged over layers."""
    s, _, layers, _ = ids.shape
    sample = np.arange(s)[:, None, None, None]
    layer = np.arange(layers)[None, None, :, None]
    flat = ((sample * layers + layer) * num_experts + ids.astype(np.int64)).ravel()
    counts = np.bincount(flat, minlength=s * layers * num_experts).reshape(s, layers, num_experts)
    used = counts > 0
    per_rank = counts.reshape(s, layers, ep, num_experts // ep)
    rank_tokens = per_rank.sum(-1)
    mean_rank = np.maximum(rank_tokens.mean(-1), 1e-12)
    return {
        "activated": used.sum(-1).mean(-1).astype(float),
        "rank_activated": (per_rank > 0).sum(-1).max(-1).mean(-1).astype(float),
        "rank_load": (rank_tokens.max(-1) / mean_rank).mean(-1),
    }


def check_compatible(trace: Trace, num_experts: int, top_k: int, ep: int) -> None:
    if trace.num_experts != num_experts or trace.top_k != top_k:
        raise CapsimError(
            f"--trace {trace.path}: recorded with {trace.num_experts} experts top-{trace.top_k}, "
            f"but the model has {num_experts} top-{top_k}"
        )
    if num_experts % ep:
        raise CapsimError(f"--ep {ep}: {num_experts} experts do not split evenly over {ep} ranks")


def decode_routing(trace: Trace, batch: int, ep: int = 1, samples: int = DEFAULT_SAMPLES, seed: int = 0):
    """Routing statistics of ``samples`` random decode batches of ``batch`` sequences."""
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(np.asarray(trace.phase) == DECODE)
    if idx.size == 0:
        raise CapsimError(f"--trace {trace.path}: no decode tokens to replay")
    seqs = np.asarray(trace.sequence)[idx]
    uniq, first, counts = np.unique(seqs, return_index=True, return_counts=True)
    notes = []
    if len(uniq) >= batch:
        pick = np.argsort(rng.random((samples, len(uniq))), axis=1)[:, :batch]  # B distinct sequences
        offset = (rng.random((samples, batch)) * counts[pick]).astype(np.int64)  # one of its decode tokens
        order = np.argsort(seqs, kind="stable")
        starts = np.searchsorted(seqs[order], uniq)
        rows = idx[order[starts[pick] + offset]]
    else:
        if idx.size < batch:
            raise CapsimError(f"--trace {trace.path}: {idx.size} decode tokens, fewer than --batch {batch}")
        rows = np.stack([rng.choice(idx, size=batch, replace=False) for _ in range(samples)])
        notes.append(f"trace has {len(uniq)} sequences < batch {batch}: a batch takes several tokens of one "
                     "sequence, which may understate the experts it activates")
    rows_sorted = np.sort(rows, axis=1)  # memory-mapped reads in order
    ids = np.asarray(trace.expert_ids)[rows_sorted.ravel()].reshape(samples, batch, -1, trace.top_k)
    return _routing_stats(ids, trace.num_experts, ep), notes


def prefill_routing(trace: Trace, batch: int, ep: int = 1, samples: int = DEFAULT_SAMPLES, seed: int = 1):
    """Routing statistics of prefill passes over the prompts of ``batch`` random sequences."""
    rng = np.random.default_rng(seed)
    phase, seq = np.asarray(trace.phase), np.asarray(trace.sequence)
    pre = np.flatnonzero(phase == PREFILL)
    if pre.size == 0:
        raise CapsimError(f"--trace {trace.path}: no prefill tokens to replay")
    uniq = np.unique(seq[pre])
    b = min(batch, len(uniq))
    out = {"activated": [], "rank_activated": [], "rank_load": []}
    for _ in range(min(samples, 50)):  # a prefill pass covers so many tokens that few samples suffice
        chosen = rng.choice(uniq, size=b, replace=False)
        rows = pre[np.isin(seq[pre], chosen)]
        st = _routing_stats(np.asarray(trace.expert_ids)[rows][None], trace.num_experts, ep)
        for k in out:
            out[k].append(float(st[k][0]))
    notes = [] if b == batch else [f"prefill replay uses all {b} traced prompts (fewer than batch {batch})"]
    # paired with the decode samples one to one (cycled: few prefill compositions suffice)
    return {k: np.resize(np.asarray(v), samples) for k, v in out.items()}, notes
