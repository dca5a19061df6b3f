"""Where the routed experts live when they do not all fit in device memory, and how often a step finds them.

``--offload gpu-fetch|cpu`` keeps ``--expert-cache N`` experts of every MoE layer resident on each
device (default: as many as fit beside the rest of the model, the KV cache and activations) and
the rest in host DRAM (``--expert-tier dram``) or on an NVMe drive (``ssd``: a miss is read from the drive,
then sent on to the device (``gpu-fetch``) or computed by the CPU from the pages read (``cpu``); the read is
priced by request size, :mod:`capsim.sim.ssd`). The hit rate of a step is the fraction of its activated
experts that are resident:

- without a trace, routing is uniform and every expert equally likely, so any policy (LRU, LFU
  or a static set) hits N / E of the time in the long run;
- with ``--trace``, the policy (``--cache-policy lru|lfu|static``) is replayed over the trace's
  decode steps at the batch (:mod:`capsim.offload.cache`).

The prefill pass touches nearly every expert, so its hit rate is the resident fraction N / E.

:func:`setup_offload` checks what does not depend on the batch (when the scenario is resolved);
:func:`residency` finds the resident experts and hit rates for arrays of batches and lengths at once, and
:func:`problems` says, per row, why a placement cannot run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from capsim import precision
from capsim.capacity import host_kv_bytes, per_device
from capsim.errors import CapsimError
from capsim.hardware import isa
from capsim.sim.offload import MODES
from capsim.sim.shape import weight_bytes
from capsim.sim.ssd import SsdRead

if TYPE_CHECKING:
    from capsim.scenario import Scenario

TIERS = ("dram", "ssd")
POLICIES = ("lru", "lfu", "static")
TRACE_CACHE_STEPS = 400  # decode steps replayed through the cache: LRU hit rates at 400 and 2000 steps differ by
# <= 0.004 (DeepSeek-V3 prior, DeepSeek-V2-Lite trace, Mixtral fitted; batch 1, 16, 64; E/4 and E/2 resident)
TRACE_CACHE_WARMUP = 100  # steps that fill the cache before hits are counted


@dataclass(frozen=True)
class OffloadSetup:
    """What an offload placement needs that does not depend on the batch."""

    mode: str  # "gpu-fetch" or "cpu"
    tier: str  # "dram" or "ssd"
    policy: str
    expert_cache: int | None  # experts per MoE layer asked to be resident (None: as many as fit)
    link_bytes_per_s: float  # host tier -> device
    link_path: str
    host_bandwidth_bytes_per_s: float  # the sockets computing experts (cpu mode)
    host_peak_flop_per_s: float  # their peak in the dtype they compute in (inf for gpu-fetch)
    ssd: SsdRead | None  # how misses come off the drive (tier ssd)
    tier_capacity_bytes: float | None  # DRAM or drive capacity (None: not known)
    host_threads: int = 0  # cpu mode: the threads computing experts, one per core of the sockets used


@dataclass(frozen=True)
class Residency:
    """Per row (arrays of the batch's shape): resident experts per MoE layer (-1: nothing fits) and hit rates."""

    experts_resident: np.ndarray
    num_experts: int
    hit_rate_decode: np.ndarray
    hit_rate_prefill: np.ndarray
    hit_rate_source: str
    host_expert_bytes: np.ndarray  # routed-expert bytes kept off the device

    @property
    def expert_fraction(self) -> np.ndarray:
        return np.maximum(self.experts_resident, 0) / self.num_experts


def setup_offload(q, shape, target, prec, profile) -> OffloadSetup:
    if q.offload not in MODES:
        raise CapsimError(f"--offload {q.offload}: expected one of {', '.join(MODES)}")
    if q.expert_tier not in TIERS:
        raise CapsimError(f"--expert-tier {q.expert_tier}: expected one of {', '.join(TIERS)}")
    if q.cache_policy not in POLICIES:
        raise CapsimError(f"--cache-policy {q.cache_policy}: expected one of {', '.join(POLICIES)}")
    if not shape.num_experts:
        raise CapsimError(f"--offload: {q.model} has no routed experts to offload")
    t, host = target, target.host
    if t.nodes > 1:
        raise CapsimError(f"--offload: expert offload is modelled on one node; drop --nodes {t.nodes} or --offload")
    if host is None:
        raise CapsimError(f"--offload: {t.hardware_id} has no host CPU and DRAM in the database; name a system "
                          "(e.g. workstation-rtx-4090, ktransformers-testbed, dgx-h100)")
    if q.offload == "cpu" and host.sockets == 0:
        raise CapsimError(f"--offload cpu: {t.hardware_id} is a bare device with no host CPU in the database; name a "
                          "system (e.g. workstation-rtx-4090, ktransformers-testbed)")
    if q.expert_cache is not None and not 0 <= q.expert_cache <= shape.num_experts:
        raise CapsimError(f"--expert-cache {q.expert_cache}: expected 0..{shape.num_experts} experts per MoE layer")
    if q.expert_tier == "ssd" and host.ssd_to_device_bytes_per_s is None:
        raise CapsimError(f"--expert-tier ssd: {t.hardware_id} has no drive in the database; name a system with "
                          "one (e.g. workstation-rtx-4090, dgx-h100) or use --expert-tier dram")
    if q.expert_tier == "ssd" and q.offload == "gpu-fetch":
        link, link_path = host.ssd_to_device_bytes_per_s, f"{host.ssd_id} -> DRAM -> device"
    else:  # experts fetched from DRAM, or computed by the CPU (hidden states cross this link)
        link, link_path = host.to_device_bytes_per_s, host.to_device_path
        if q.expert_tier == "ssd":
            link_path = f"{host.ssd_id} -> DRAM (the CPU computes the experts it reads); hidden states: {link_path}"
    host_peak, share, threads = math.inf, 1.0, 0
    if q.offload == "cpu" or profile.cpu_attention_share > 0:  # the CPU computes experts, or attention
        host_peaks, _ = isa.engine_peaks(host.cpu_paths, host.cpu_peak_flop_per_s, profile.cpu_kernels)
        dt = precision.choose_compute(prec, host_peaks, host.cpu_id)
        sockets = q.host_sockets or host.sockets
        if not 1 <= sockets <= host.sockets:
            raise CapsimError(f"--host-sockets {sockets}: {t.hardware_id} has {host.sockets} CPU socket(s)")
        share = sockets / host.sockets  # each socket computes from its own DRAM
        host_peak = host_peaks[dt] * share
        threads = sockets * host.cores_per_socket
    ssd = None
    if q.expert_tier == "ssd":  # the drive's rates and the engine's request size (default: one expert matrix)
        seq = host.ssd_to_dram_bytes_per_s
        request = profile.ssd_read_request_bytes or shape.hidden * shape.expert_intermediate * shape.expert_weight_bytes
        ssd = SsdRead(sequential_bytes_per_s=seq, random_4k_bytes_per_s=host.ssd_random_4k_bytes_per_s or seq,
                      request_bytes=request)
    cap = host.dram_capacity_bytes if q.expert_tier == "dram" else host.ssd_capacity_bytes
    return OffloadSetup(q.offload, q.expert_tier, q.cache_policy, q.expert_cache, link, link_path,
                        host.dram_bandwidth_bytes_per_s * share, host_peak, ssd, cap, threads)


def _fits(sc: Scenario, batch, input_len, output_len, resident) -> np.ndarray:
    return np.asarray(per_device(sc, batch, input_len, output_len, resident / sc.shape.num_experts).fits)


def most_resident(sc: Scenario, batch, input_len, output_len) -> np.ndarray:
    """Per row, the largest expert cache (experts per MoE layer) that fits beside everything else; -1 if none.
    Memory grows with the cache: a binary search over all rows at once."""
    shape = np.broadcast(np.asarray(batch), np.asarray(input_len), np.asarray(output_len)).shape
    lo, hi = np.full(shape, -1), np.full(shape, sc.shape.num_experts)
    while np.any(lo < hi):
        mid = (lo + hi + 1) // 2
        ok = _fits(sc, batch, input_len, output_len, mid)
        lo, hi = np.where(lo < hi, np.where(ok, mid, lo), lo), np.where(lo < hi, np.where(ok, hi, mid - 1), hi)
    return lo


def residency(sc: Scenario, batch, input_len, output_len, steps: int = TRACE_CACHE_STEPS) -> Residency:
    """Resident experts and hit rates for arrays of batches and lengths (the scenario's trace, if any, is
    replayed through the cache policy once per distinct batch and cache size, over ``steps`` decode steps)."""
    off, e = sc.offload, sc.shape.num_experts
    b = np.asarray(batch)
    if off.expert_cache is None:
        resident = most_resident(sc, batch, input_len, output_len)
    else:
        resident = np.full(np.broadcast(b, np.asarray(input_len), np.asarray(output_len)).shape, off.expert_cache)
    frac = np.maximum(resident, 0) / e
    h_dec, source = np.array(frac, dtype=float), "uniform routing: resident / experts"
    from capsim.routing import trace_path

    trace = trace_path(sc)
    if trace is not None:
        bb = np.broadcast_to(b, resident.shape)
        seqs = _decode_sequences(trace)
        for batch_i, res_i in sorted({(int(x), int(r)) for x, r in zip(bb.ravel(), resident.ravel(), strict=True)
                                      if 0 < r < e}):
            if batch_i > seqs:  # a batch larger than the trace's sequences: the uniform rate (every expert near)
                source = (f"uniform routing: resident / experts at batches above the trace's {seqs} sequences; "
                          "the trace's cache replay below")
                continue
            rate, source = _trace_hit_rate(trace, off.policy, batch_i, res_i, steps)
            h_dec[(bb == batch_i) & (resident == res_i)] = rate
    host = weight_bytes(sc.shape)["routed_experts"] * (1 - frac)
    return Residency(resident, e, h_dec, frac, source, host)


def _decode_sequences(trace_path: str) -> int:
    """Sequences with decode tokens in the trace (the largest batch its cache replay can compose)."""
    from capsim.traces.format import DECODE, open_trace
    from capsim.traces.replay import _sequence_index

    return len(_sequence_index(open_trace(trace_path), DECODE)[1])


def _trace_hit_rate(trace_path: str, policy: str, batch: int, resident: int,
                    steps: int = TRACE_CACHE_STEPS) -> tuple[float, str]:
    """The cache policy replayed over the trace's decode steps (kept per process: provision asks the same trace,
    batch and cache size for many systems)."""
    from capsim.traces.format import file_stamp

    return _replayed_hit_rate(trace_path, file_stamp(trace_path), policy, batch, resident, steps)


@lru_cache(maxsize=1024)
def _replayed_hit_rate(trace_path: str, stamp: str, policy: str, batch: int, resident: int,
                       steps: int) -> tuple[float, str]:
    from capsim.offload.cache import simulate
    from capsim.offload.steps import decode_steps
    from capsim.traces.format import open_trace

    trace = open_trace(trace_path)
    key = f"{policy}|{batch}|{resident}|{steps}|{TRACE_CACHE_WARMUP}"
    kept = _kept_hit_rates(trace)
    if key in kept:
        return kept[key][0], kept[key][1]
    touched = decode_steps(trace, batch, steps=steps + TRACE_CACHE_WARMUP)
    warm = min(TRACE_CACHE_WARMUP, max(0, len(touched) - 1))
    stats = simulate(touched, resident, policy, warmup_steps=warm)
    out = float(stats.hit_rate), (f"{policy} cache of {resident} experts per layer replayed over "
                                  f"{len(touched) - warm} decode steps of the trace at batch {batch}")
    _keep_hit_rate(trace, key, out)
    return out


def _hit_rate_file(trace):
    """Hit rates replayed over a trace, kept between processes in capsim's cache folder: named by the trace's
    content hash and capsim's code stamp (a changed trace or policy code is replayed again)."""
    from capsim.scenario_cache import code_stamp, folder

    where = folder()
    sha = trace.meta.get("content_sha256")
    return None if where is None or not sha else where / "hit-rates" / f"{sha[:32]}-{code_stamp()[:16]}.json"


def _kept_hit_rates(trace) -> dict:
    import json

    f = _hit_rate_file(trace)
    try:
        return json.loads(f.read_text()) if f is not None and f.is_file() else {}
    except (OSError, ValueError):
        return {}


def _keep_hit_rate(trace, key: str, value: tuple[float, str]) -> None:
    import json

    from capsim import atomic

    f = _hit_rate_file(trace)
    if f is None:
        return
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(f, json.dumps({**_kept_hit_rates(trace), key: list(value)}))
    except (OSError, CapsimError):
        pass  # a cache that cannot be written is only slower


def problems(sc: Scenario, res: Residency, batch, input_len, output_len) -> list[str | None]:
    """Per row (flattened), why the placement cannot run (None: it can): nothing fits, the asked cache does
    not fit, or the experts off the device exceed the tier."""
    off, t = sc.offload, sc.target
    resident = np.asarray(res.experts_resident)
    fits = _fits(sc, batch, input_len, output_len, np.maximum(resident, 0))
    rows = np.broadcast_arrays(resident, fits, np.asarray(batch), np.asarray(input_len), np.asarray(output_len),
                               np.asarray(res.host_expert_bytes))
    out: list[str | None] = []
    for r, ok, b, i, o, host in zip(*(a.ravel() for a in rows), strict=True):
        msg = None
        if r < 0:
            msg = _no_room(sc, b, i, o)
        elif not ok:
            best = int(most_resident(sc, b, i, o))
            hint = f"at most --expert-cache {best} fits" if best >= 0 else _no_room(sc, b, i, o)
            msg = f"--expert-cache {r}: the placement does not fit in {t.device_id} memory; {hint}"
        elif off.tier_capacity_bytes is not None and host > off.tier_capacity_bytes:
            msg = (f"--expert-tier {off.tier}: {host / 1e9:.1f} GB of experts off the device, but {t.hardware_id} "
                   f"has {off.tier_capacity_bytes / 1e9:.1f} GB of {off.tier}")
        elif off.tier == "dram" and off.tier_capacity_bytes is not None and (
                kv := float(host_kv_bytes(sc, b, i, o))) and host + kv > off.tier_capacity_bytes:
            msg = (f"--batch {int(b)}: {host / 1e9:.1f} GB of experts and {kv / 1e9:.1f} GB of KV cache in host memory "
                   f"({sc.profile.id} keeps it there), but {t.hardware_id} has {off.tier_capacity_bytes / 1e9:.1f} GB")
        out.append(msg)
    return out


def _no_room(sc: Scenario, batch, input_len, output_len) -> str:
    need = float(np.asarray(per_device(sc, batch, input_len, output_len, 0.0).total))
    return (f"even with every routed expert off the device, {need / 1e9:.1f} GB is needed per device and "
            f"{sc.target.device_id} has {sc.target.memory_capacity_bytes / 1e9:.1f} GB; try a smaller --batch or "
            f"context, or a lower --precision")


def report(sc: Scenario, res: Residency) -> dict[str, Any]:
    """The placement of a single prediction (the residency of its one row)."""
    off = sc.offload

    def one(x):
        return float(np.asarray(x).ravel()[0])

    return {"mode": off.mode, "expert_tier": off.tier, "cache_policy": off.policy, "kv_on_host": sc.profile.kv_on_host,
            "experts_resident_per_layer": int(one(res.experts_resident)), "num_experts": res.num_experts,
            "hit_rate_decode": one(res.hit_rate_decode), "hit_rate_prefill": one(res.hit_rate_prefill),
            "hit_rate_source": res.hit_rate_source, "host_expert_bytes": one(res.host_expert_bytes),
            "link_bytes_per_s": off.link_bytes_per_s if math.isfinite(off.link_bytes_per_s) else None,
            "link_path": off.link_path}
