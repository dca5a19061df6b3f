"""An engine's scheduler defaults by device (the profile YAML's ``scheduler``): engines pick their token budget per
step and their running-sequence limit from the device they run on, and ``capsim serve`` must use the same::

    scheduler:
      tiers:                       # the first that matches the device wins
      - {min_device_memory_gib: 160, max_batched_tokens: 16384, max_running_seqs: 1024}
      - {min_device_memory_gib: 70, not_device: a100, max_batched_tokens: 8192, max_running_seqs: 1024}
      - {min_device_memory_gib: 0, max_batched_tokens: 2048, max_running_seqs: 256}
      prefix_caching: true         # optional (default false): a preempted request's cached blocks survive
      startup_sampler_bytes_per_logit: 14  # optional (default 0): see below
      source: where the rule was read (the engine's code)

``not_device``: the tier does not apply to a device whose id contains this text. Without the section the profile's
own ``max_batched_tokens`` and ``max_running_seqs`` hold everywhere.

``startup_sampler_bytes_per_logit``: an engine that sizes its KV cache from a profiling run at start-up (vLLM:
``gpu_worker.determine_available_memory`` leaves the run's torch peak out of the cache) and samples, in that run,
min(max_running_seqs, max_batched_tokens) dummy requests over the whole vocabulary on every tensor-parallel rank
(``gpu_model_runner._dummy_sampler_run``) peaks at this many bytes per (request, vocabulary entry); the KV cache
loses that peak where it exceeds the forward pass's activations (:func:`startup_peak_bytes`, applied by
``capsim.capacity.per_device`` for ``predict``, ``serve`` and ``provision`` alike).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from capsim.errors import CapsimError

GIB = 2**30
KEYS = {"min_device_memory_gib", "not_device", "max_batched_tokens", "max_running_seqs"}


@dataclass(frozen=True)
class Tier:
    min_memory_bytes: float
    not_device: str
    max_batched_tokens: float
    max_running_seqs: float


@dataclass(frozen=True)
class SchedulerTiers:
    tiers: tuple[Tier, ...]
    source: str
    prefix_caching: bool = False  # the engine keeps freed blocks' K/V for prefix hits (capsim.serve.blocks)
    startup_sampler_bytes_per_logit: float = 0.0  # B per (dummy request, vocabulary entry) at start-up's peak

    def pick(self, memory_bytes: float, device_id: str) -> Tier | None:
        """The first tier the device meets (None: none does)."""
        for t in self.tiers:
            if memory_bytes >= t.min_memory_bytes and not (t.not_device and t.not_device in device_id.lower()):
                return t
        return None

    def to_yaml(self) -> dict:
        return {"tiers": [{"min_device_memory_gib": t.min_memory_bytes / GIB,
                           **({"not_device": t.not_device} if t.not_device else {}),
                           "max_batched_tokens": t.max_batched_tokens, "max_running_seqs": t.max_running_seqs}
                          for t in self.tiers], **({"prefix_caching": True} if self.prefix_caching else {}),
                **({"startup_sampler_bytes_per_logit": self.startup_sampler_bytes_per_logit}
                   if self.startup_sampler_bytes_per_logit else {}),
                "source": self.source}


def limits(prof, memory_bytes: float, device_id: str) -> tuple[float, float]:
    """(running sequences, batched tokens per step) of the engine profile ``prof`` on a device: its scheduler
    tier for the device, else the profile's own values (0 or unset: no limit, inf)."""
    tier = prof.scheduler.pick(memory_bytes, device_id) if prof.scheduler else None
    seqs = (tier.max_running_seqs if tier else prof.max_running_seqs) or math.inf
    tokens = (tier.max_batched_tokens if tier else prof.max_batched_tokens) or math.inf
    return float(seqs), float(tokens)


def startup_peak_bytes(prof, memory_bytes: float, device_id: str, vocab: int, rows: float | None = None) -> float:
    """Bytes per device the engine's start-up profiling peaks at in its dummy sampler (0: none modelled):
    ``rows`` requests (default min(sequences, tokens) of the device's defaults) over the whole vocabulary at
    ``startup_sampler_bytes_per_logit``."""
    per_logit = prof.scheduler.startup_sampler_bytes_per_logit if prof.scheduler else 0.0
    if not per_logit:
        return 0.0
    return per_logit * (rows if rows is not None else min(limits(prof, memory_bytes, device_id))) * vocab


def parse(raw, path: Path) -> SchedulerTiers | None:
    if raw is None:
        return None
    where = f"{path}: scheduler"
    if not isinstance(raw, dict) or not isinstance(raw.get("tiers"), list) or not raw["tiers"]:
        raise CapsimError(f"{where}: expected a mapping with a non-empty list 'tiers' and a 'source'")
    if not isinstance(raw.get("source"), str) or not raw["source"].strip():
        raise CapsimError(f"{where}.source: expected the text saying where the defaults were read")
    known = {"tiers", "source", "prefix_caching", "startup_sampler_bytes_per_logit"}
    if set(raw) - known:
        raise CapsimError(f"{where}: unknown key(s) {sorted(set(raw) - known)}; expected tiers, source and "
                          "optionally prefix_caching, startup_sampler_bytes_per_logit")
    if not isinstance(raw.get("prefix_caching", False), bool):
        raise CapsimError(f"{where}.prefix_caching: expected true or false")
    sampler = raw.get("startup_sampler_bytes_per_logit", 0.0)
    if isinstance(sampler, bool) or not isinstance(sampler, (int, float)) or not math.isfinite(sampler) or sampler < 0:
        raise CapsimError(f"{where}.startup_sampler_bytes_per_logit: expected a number of bytes >= 0")
    tiers = []
    for k, t in enumerate(raw["tiers"]):
        if not isinstance(t, dict) or set(t) - KEYS or not {"min_device_memory_gib", "max_batched_tokens",
                                                            "max_running_seqs"} <= set(t):
            raise CapsimError(f"{where}.tiers[{k}]: expected min_device_memory_gib, max_batched_tokens, "
                              "max_running_seqs (and optionally not_device)")
        try:
            mem, tokens, seqs = (float(t[x]) for x in ("min_device_memory_gib", "max_batched_tokens",
                                                        "max_running_seqs"))
        except (TypeError, ValueError):
            raise CapsimError(f"{where}.tiers[{k}]: expected numbers") from None
        if mem < 0 or tokens < 1 or seqs < 1:
            raise CapsimError(f"{where}.tiers[{k}]: expected memory >= 0 and positive token and sequence limits")
        tiers.append(Tier(mem * GIB, str(t.get("not_device", "")).lower(), tokens, seqs))
    return SchedulerTiers(tuple(tiers), raw["source"], bool(raw.get("prefix_caching", False)), float(sampler))
