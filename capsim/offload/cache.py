"""Expert caches replayed over decode steps: hit rates of LRU, LFU and a static hot set.

Engines that offload experts (MoE-Infinity, llama.cpp expert offload, KTransformers) keep
``capacity`` experts of each MoE layer in GPU memory and fetch the rest from host DRAM or
SSD. :func:`simulate` replays a policy over ``touched`` (steps, layers, experts), the
experts each decode step needs (:func:`capsim.offload.steps.decode_steps`), one independent
cache per layer.

Rules, per layer and step:

* Every expert the step touches is one **request**: a **hit** if resident, else a **miss**,
  and the miss loads it. A step needs all its experts at once, so an expert the step
  touches is never evicted to make room for another of the same step.
* **Overflow**: a step touching more experts than ``capacity`` keeps its hits, fills the rest
  of the cache with its misses in the policy's keep order (below), and streams the other
  misses without caching them (they are still misses).
* **Keep order**: the cache keeps the ``capacity`` best of (resident | touched), ranked by:
  touched and resident (hits) first, then touched and not resident (misses), then the
  untouched residents; within a rank, LRU prefers the more recent last use, LFU the higher
  frequency then the more recent last use; last ties keep the HIGHER expert id, i.e. evict
  (or stream) the lowest expert id first.
* **lru** evicts the least recently used expert (recency = last step it was touched).
* **lfu** evicts the least frequently used expert; frequency counts every step that touched
  the expert since the start of the replay (warm-up included), and is not reset when the
  expert is evicted (full-history LFU). Ties: least recently used, then lowest expert id.
* **static** keeps a fixed hot set per layer and never loads or evicts: a request hits iff
  its expert is in the set. Without ``hot_set`` the set is the ``capacity`` most touched
  experts of each layer over the WHOLE ``touched`` array (ties: lower expert id): it uses the
  future, like a profile from a calibration run on the same workload, so it is an
  optimistic, profile-guided bound rather than an online policy.
* lru and lfu start **cold** (empty cache); static starts with its hot set loaded.
  ``warmup_steps``: the first steps update the cache but are not counted in the stats.

Speed: one Python iteration per step; each is a few numpy operations on (layers, experts)
arrays, and a partition only for the layers that must evict. Pure numpy, no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.errors import CapsimError

POLICIES = ("lru", "lfu", "static")
_HIT, _MISS, _KEPT = 2, 1, 0  # keep rank: a step's hits, then its misses, then untouched residents


@dataclass(frozen=True)
class CacheStats:
    """Per-layer request, hit and miss counts of one replay (warm-up steps excluded)."""

    policy: str
    capacity: int
    requests: np.ndarray  # (layers,) experts touched per step, summed over the counted steps
    hits: np.ndarray  # (layers,)
    misses: np.ndarray  # (layers,) requests - hits

    @property
    def hit_rate_per_layer(self) -> np.ndarray:
        """hits / requests per layer; NaN for a layer without requests."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.requests > 0, self.hits / np.maximum(self.requests, 1), np.nan)

    @property
    def hit_rate(self) -> float:
        """All hits over all requests (layers weighted by their requests); NaN without requests."""
        total = int(self.requests.sum())
        return float(self.hits.sum() / total) if total else float("nan")


def _check(touched: np.ndarray, capacity: int, policy: str, warmup_steps: int) -> np.ndarray:
    touched = np.asarray(touched)
    if touched.ndim != 3 or touched.dtype != bool:
        raise CapsimError(f"touched: expected a bool array (steps, layers, experts), got {touched.dtype} "
                          f"shape {touched.shape}")
    e = touched.shape[2]
    if not 0 <= capacity <= e:
        raise CapsimError(f"--capacity {capacity}: expected 0..{e} experts per layer")
    if policy not in POLICIES:
        raise CapsimError(f"--policy {policy}: expected one of {', '.join(POLICIES)}")
    if warmup_steps < 0 or (warmup_steps and warmup_steps >= len(touched)):
        raise CapsimError(f"--warmup-steps {warmup_steps}: expected 0..{max(len(touched) - 1, 0)} "
                          f"(the replay has {len(touched)} steps)")
    return touched


def profile_hot_set(touched: np.ndarray, capacity: int) -> np.ndarray:
    """Bool (layers, experts): each layer's ``capacity`` most touched experts over all steps (ties: lower id)."""
    counts = touched.sum(axis=0, dtype=np.int64)  # (layers, experts)
    e = counts.shape[1]
    order = np.argsort(-(counts * e) + np.arange(e), axis=1, kind="stable")  # most touched first, then lower id
    hot = np.zeros(counts.shape, dtype=bool)
    np.put_along_axis(hot, order[:, :capacity], True, axis=1)
    return hot


def _static(touched: np.ndarray, capacity: int, hot_set, warmup_steps: int) -> tuple[np.ndarray, np.ndarray]:
    layers, e = touched.shape[1:]
    if hot_set is None:
        hot = profile_hot_set(touched, capacity)
    else:
        hot = np.asarray(hot_set)
        if hot.shape != (layers, e) or hot.dtype != bool:
            raise CapsimError(f"hot_set: expected a bool array (layers, experts) = ({layers}, {e}), got "
                              f"{hot.dtype} shape {hot.shape}")
        size = hot.sum(axis=1)
        if size.max(initial=0) > capacity:
            layer = int(np.argmax(size))
            raise CapsimError(f"hot_set: layer {layer} holds {int(size[layer])} experts, more than --capacity "
                              f"{capacity}")
    counted = touched[warmup_steps:]
    return counted.sum(axis=(0, 2), dtype=np.int64), (counted & hot).sum(axis=(0, 2), dtype=np.int64)


def _dynamic(touched: np.ndarray, capacity: int, lfu: bool, warmup_steps: int) -> tuple[np.ndarray, np.ndarray]:
    n, layers, e = touched.shape
    requests = touched[warmup_steps:].sum(axis=(0, 2), dtype=np.int64)
    hits = np.zeros(layers, dtype=np.int64)
    if capacity == 0:
        return requests, hits
    resident = np.zeros((layers, e), dtype=bool)
    last_used = np.full((layers, e), -1, dtype=np.int64)
    freq = np.zeros((layers, e), dtype=np.int64)
    ids = np.arange(e, dtype=np.int64)
    # keep key = ((rank * (n + 1) + freq) * (n + 1) + last_used + 1) * e + id: a unique integer per
    # (layer, expert), higher = kept; freq is 0 for LRU. Below 2**63 for n up to ~1e8 steps at e = 128.
    span = n + 1
    if (_HIT + 1) * span * span * e >= 2**63:
        raise CapsimError(f"--steps: {n} steps overflow the int64 keep key at {e} experts; replay fewer steps")
    for t in range(n):
        now = touched[t]
        hit = now & resident
        if t >= warmup_steps:
            hits += hit.sum(axis=1)
        last_used[now] = t
        if lfu:
            freq += now
        cand = resident | now
        over = np.flatnonzero(cand.sum(axis=1) > capacity)  # layers that must evict (or stream)
        resident = cand
        if over.size == 0:
            continue
        rank = np.where(hit[over], _HIT, np.where(now[over], _MISS, _KEPT))
        key = ((rank * span + freq[over]) * span + last_used[over] + 1) * e + ids
        key[~cand[over]] = -1  # never kept: neither resident nor touched
        top = np.argpartition(key, e - capacity, axis=1)[:, e - capacity:]
        keep = np.zeros((over.size, e), dtype=bool)
        np.put_along_axis(keep, top, True, axis=1)
        resident[over] = keep & cand[over]
    return requests, hits


def simulate(touched: np.ndarray, capacity: int, policy: str, hot_set=None, warmup_steps: int = 0) -> CacheStats:
    """Replay ``policy`` with ``capacity`` experts per layer over ``touched`` (steps, layers, experts) bools.

    ``hot_set`` (static only): bool (layers, experts), at most ``capacity`` per layer; None profiles
    it from ``touched`` (see the module docstring). CapsimError naming the argument on bad input.
    """
    touched = _check(touched, capacity, policy, warmup_steps)
    if hot_set is not None and policy != "static":
        raise CapsimError(f"hot_set: applies to --policy static only (policy is {policy})")
    if policy == "static":
        requests, hits = _static(touched, capacity, hot_set, warmup_steps)
    else:
        requests, hits = _dynamic(touched, capacity, policy == "lfu", warmup_steps)
    return CacheStats(policy=policy, capacity=capacity, requests=requests, hits=hits, misses=requests - hits)


def hit_rate_curve(touched: np.ndarray, capacities, policy: str, warmup_steps: int = 0) -> np.ndarray:
    """Overall hit rate at each capacity (float array of len(capacities)); static profiles its own hot sets."""
    return np.array([simulate(touched, int(c), policy, warmup_steps=warmup_steps).hit_rate for c in capacities])
