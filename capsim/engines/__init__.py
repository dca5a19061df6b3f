"""Engine profiles: the few parameters that turn a roofline into a forecast for one engine.

One YAML file per profile in this folder (``<id>.yaml``)::

    id, version, description, fitted_to        what it is and what data fitted it
    parameters:                                general parameters (names in PARAMETERS, switches in SWITCHES)
    eager_cpu:                                 only for an eager engine on the CPU allocator (EAGER_CPU;
                                               capsim.sim.eager_cpu); absent for every other engine
    gemm_curves: curves/<id>.json              measured GEMM efficiency curves (a data file in this folder)
    fitted_cases: [...]                        the validation cases the parameters were fitted to

Numbers are floats in SI units; switches are booleans. Facts about the machine (how its OS backs fresh
memory) live in the hardware entry, not here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from capsim.atomic import write_text
from capsim.engines import frontend, scheduler
from capsim.engines.kernels import CpuKernels, parse
from capsim.errors import CapsimError

FOLDER = Path(__file__).parent
CURVES_FOLDER = "curves"  # GEMM curve data files, relative to the profile's folder
GLIBC_MMAP_THRESHOLD_MAX_BYTES = 32 * 2**20  # mallopt(3), M_MMAP_THRESHOLD: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
# name -> (lower, upper) bound of each general parameter (floats)
PARAMETERS = {
    "compute_efficiency": (0.0, 1.0),
    "memory_efficiency": (0.0, 1.0),
    "link_efficiency": (0.0, 1.0),
    "kernel_overhead_s": (0.0, 1.0),
    "step_overhead_s": (0.0, 10.0),
    "collective_latency_s": (0.0, 1.0),
    "transfer_overlap": (0.0, 1.0),
    "memory_reserve_fraction": (0.0, 0.9),
    "kernels_per_activated_expert": (0.0, 20.0),
    "kv_traffic_factor": (1.0, 4.0),
    "gemm_half_rows": (0.0, 4096.0),
    "attention_efficiency": (0.0, 1.0),
    "host_memory_efficiency": (0.0, 1.0),
    "host_compute_efficiency": (0.0, 1.0),
    "offload_overlap": (0.0, 1.0),
    "activation_overlap": (0.0, 1.0),
    "ssd_read_request_bytes": (0.0, 1e12),
    "memory_half_bytes": (0.0, 1e10),
    "per_sequence_overhead_s": (0.0, 1.0),
    "host_launch_s": (0.0, 1e-2),
    "cuda_graph_max_batch": (0.0, 1e6),
    "max_batched_tokens": (0.0, 1e9),
    "expert_fetch_s": (0.0, 1.0),
    "host_op_offload_min_tokens": (0.0, 1e9),
    "sync_s_per_thread": (0.0, 1e-3),
    "cpu_attention_share": (0.0, 1.0),
    "max_running_seqs": (0.0, 1e7),
    "kv_block_tokens": (0.0, 1e6),
}
SWITCHES = ("mla_absorbed", "kv_on_host", "achievable_matmul")  # booleans
EFFICIENCIES = ("compute_efficiency", "memory_efficiency", "link_efficiency", "attention_efficiency",
                "host_memory_efficiency", "host_compute_efficiency")
# the eager_cpu section: name -> (lower, upper) for numbers, None for switches
EAGER_CPU = {
    "fresh_alloc_threshold_bytes": (0.0, 1e12),
    "layer_tensors": None,
    "expert_hidden_tensors": (0.0, 20.0),
    "expert_intermediate_tensors": (0.0, 20.0),
    "math_attention_unequal_head_dims": None,
    "math_attention_s_per_score": (0.0, 1e-6),
}
# where parameters of an earlier profile format went
MOVED = {"first_touch_s_per_byte": "the hardware entry (cpu memory_faults, measured by capsim probe)",
         "refault_s_per_byte": "the hardware entry (cpu memory_faults, measured by capsim probe)",
         "retained_free_bytes": "the hardware entry (cpu memory_faults, measured by capsim probe)",
         "eager_layer_tensors": "eager_cpu.layer_tensors",
         **{k: f"eager_cpu.{k}" for k in EAGER_CPU if k != "layer_tensors"}}


@dataclass(frozen=True)
class EagerCpu:
    """An eager engine on the CPU allocator (:mod:`capsim.sim.eager_cpu`)."""

    # glibc maps an allocation at or above this afresh each time; its largest dynamic value, 32 MiB (mallopt(3))
    fresh_alloc_threshold_bytes: float = GLIBC_MMAP_THRESHOLD_MAX_BYTES
    # True: every intermediate of a layer is a tensor of its own (transformers eager; capsim.model.eager)
    layer_tensors: bool = False
    # tensors an unfused expert block allocates per token-expert assignment, per MoE layer, in units of the
    # hidden width and of the expert intermediate width
    expert_hidden_tensors: float = 0.0
    expert_intermediate_tensors: float = 0.0
    # True: attention whose query/key head dim differs from the value's takes torch's CPU math path
    math_attention_unequal_head_dims: bool = False
    # that math path's element-wise work per score element (s; capsim probe); 0: counted as tensor traffic
    math_attention_s_per_score: float = 0.0


@dataclass(frozen=True)
class EngineProfile:
    id: str
    version: int
    description: str
    fitted_to: str
    compute_efficiency: float = 1.0
    memory_efficiency: float = 1.0
    link_efficiency: float = 1.0
    kernel_overhead_s: float = 0.0
    step_overhead_s: float = 0.0
    collective_latency_s: float = 0.0
    transfer_overlap: float = 0.0
    memory_reserve_fraction: float = 0.0
    kernels_per_activated_expert: float = 0.0  # engines that loop over experts (HF eager) launch per expert
    # KV-cache bytes moved per byte attention reads: 1 for paged / preallocated caches; 3 for a cache grown
    # by concatenation (transformers DynamicLayer.update: torch.cat([keys, new]) reads and rewrites the whole
    # cache each step, then attention reads it).
    kv_traffic_factor: float = 1.0
    # Fraction of the memory bandwidth the attention kernel reaches on its K/V (and expanded-MLA) traffic.
    attention_efficiency: float = 1.0
    # Rows (tokens) at which a GEMM reaches half the compute peak: rows / (rows + gemm_half_rows) (Hockney's
    # n_1/2, applied per weight matrix); 0 = every GEMM at peak.
    gemm_half_rows: float = 0.0
    # True: MLA decode attends over the cached latent (W_UK/W_UV absorbed, vLLM/SGLang); False: the engine
    # re-expands every cached latent through kv_b_proj each step (transformers' DeepseekV2/V3 attention).
    mla_absorbed: bool = True
    # True: matmuls run at the device's measured achievable matmul rate (capsim.sim.peaks.achievable), which
    # compute_efficiency then scales; False: at the datasheet peaks (the ideal bound, CPU engines)
    achievable_matmul: bool = False
    # Offloaded experts (capsim.sim.offload): the CPU's fraction of its DRAM bandwidth and of its peak FLOP/s
    # when it computes experts, and the fraction of the shorter of device / offload time hidden under the other.
    host_memory_efficiency: float = 1.0
    host_compute_efficiency: float = 1.0
    offload_overlap: float = 0.0
    # Fraction of an operator's activation traffic hidden under its GEMM or weight reads: 1 for fused kernels;
    # 0 for an eager engine, where each element-wise step is its own kernel that runs after the GEMM.
    activation_overlap: float = 1.0
    # Offloaded experts on a drive: bytes per read request (capsim.sim.ssd). 0: one expert weight matrix; an
    # engine that maps its weight file (llama.cpp's default mmap) reads a miss by page faults, one read-around
    # window per request: 128 KiB by default (include/linux/mm.h, VM_READAHEAD_PAGES).
    ssd_read_request_bytes: float = 0.0
    # GPU serving mechanisms (capsim.sim.roofline; 0 = off, the ideal machine):
    # bytes at which a memory-bound kernel reaches half of the sustained bandwidth (Hockney's n_1/2 in bytes:
    # the bytes in flight needed to cover the memory latency, Little's law); each kernel pays this many bytes'
    # time, so small kernels (decode GEMVs at high TP) fall short of the bandwidth and S-MBU moves with batch
    memory_half_bytes: float = 0.0
    # host time per sequence of the batch per step (the scheduler, input preparation, sampling, output handling
    # are loops over the running requests), added to step_overhead_s
    per_sequence_overhead_s: float = 0.0
    # a CPU engine whose threads meet at a barrier after every kernel (ggml's graph: ggml_barrier, an atomic
    # counter all threads increment and spin on): seconds per kernel per thread taking part
    sync_s_per_thread: float = 0.0
    # the KV cache lives in host memory (MoE-Gen, offload gpu-fetch): decode K/V cross the host link, and the CPU
    # computes this share of the attention from DRAM (capsim.sim.offload)
    kv_on_host: bool = False
    cpu_attention_share: float = 0.0
    # the serving scheduler (capsim serve): sequences a step may carry (0: as many as the KV cache holds) and
    # tokens per KV-cache block (0: one)
    max_running_seqs: float = 0.0
    kv_block_tokens: float = 0.0
    # host time to launch one kernel outside a captured CUDA graph; launches are asynchronous, so an uncaptured
    # step takes at least its kernels x host_launch_s
    host_launch_s: float = 0.0
    # decode steps of at most this many sequences (per data-parallel group) replay a captured CUDA graph: no
    # host launches (0: no graphs)
    cuda_graph_max_batch: float = 0.0
    # the scheduler's token budget per step: prompts are prefilled in chunks of at most this many tokens, so the
    # activations held are one chunk's (capsim.sim.memory; 0: a batch's prompts in one pass)
    max_batched_tokens: float = 0.0
    # an engine that fetches missed experts on demand (gpu-fetch): host time per expert fetched (the copy's issue
    # and synchronisation, MoE-Infinity's per-fetch work), paid for each miss of each MoE layer
    expert_fetch_s: float = 0.0
    # experts computed by the CPU (offload cpu) go to the GPU instead in a step of at least this many tokens: their
    # weights cross the host link and the GPU multiplies them (llama.cpp's scheduler op offload; 0 = never)
    host_op_offload_min_tokens: float = 0.0
    eager_cpu: EagerCpu | None = None  # an eager engine on the CPU allocator; None for every other engine
    # The domain the profile was fitted on (the YAML's ``domain``): device roles ("accelerator", "cpu") and
    # expert placements ("none", "cpu", "gpu-fetch"); empty = any. Outside it capsim warns; a CPU-only or
    # offload-only profile asked for an accelerator without offload is refused (scenario.check_domain).
    domain_devices: tuple[str, ...] = ()
    domain_offload: tuple[str, ...] = ()
    domain_fitted_devices: tuple[str, ...] = ()  # where its parameters came from (a warning elsewhere)
    domain_fitted_on: str = ""
    # Measured GEMM efficiency curves, one per weight shape: ((K, N, ((rows, fraction of the peak), ...)), ...);
    # the engine's kernels on the hardware it was fitted for. Used instead of gemm_half_rows when present.
    gemm_curves: tuple[tuple[float, float, tuple[tuple[float, float], ...]], ...] = ()
    gemm_curves_file: str | None = None  # where they were read from, relative to the profile's folder
    fitted_cases: tuple[str, ...] = ()  # ids of the validation cases the parameters were fitted to
    cpu_kernels: CpuKernels | None = None  # on a CPU: the ISA paths its kernels take (capsim.engines.kernels)
    scheduler: scheduler.SchedulerTiers | None = None  # its scheduler defaults by device (capsim.engines.scheduler)
    frontend: frontend.FrontEnd | None = None  # its API server in front of the scheduler (capsim.engines.frontend)

    def parameters(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (*PARAMETERS, *SWITCHES)}

    def describe(self) -> dict[str, Any]:
        """The profile as the report shows it (JSON-ready; a new dict each call): what it is, its parameters,
        its eager_cpu section, and its GEMM curves as the weight shapes (K, N) they were measured at and the
        data file that holds them."""
        eager = self.eager_cpu
        return {"id": self.id, "version": self.version, "description": self.description, "fitted_to": self.fitted_to,
                **self.parameters(),
                "eager_cpu": None if eager is None else {k: getattr(eager, k) for k in EAGER_CPU},
                "gemm_curves": {"file": self.gemm_curves_file, "shapes": [[k, n] for k, n, _ in self.gemm_curves]},
                "fitted_cases": list(self.fitted_cases)}


KEBAB_NAME = re.compile(r"[a-z0-9]+(?:[-_.][a-z0-9]+)*")  # a profile's file stem: no folders, no dots first


ALIASES = {"tensorrt-llm": "trt-llm", "trtllm": "trt-llm"}  # other names the engines go by
# A forecast of an engine people deploy, not the ideal bound (roofline, reported beside it by capsim predict):
# vLLM, fitted to the published GPU corpus (capsim validate --gpu; held-out error in validation/GPU.md).
DEFAULT_ENGINE = "vllm"


def available() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def load(name: str) -> EngineProfile:
    """A shipped profile by its name (``capsim/engines/<name>.yaml``) or an alias (ALIASES); a path or any other
    name is refused."""
    name = ALIASES.get(name, name) if isinstance(name, str) else name
    path = FOLDER / f"{name}.yaml"
    try:
        if not isinstance(name, str) or not KEBAB_NAME.fullmatch(name):
            raise OSError
        st = path.stat()
    except OSError:
        raise CapsimError(f"--engine {name!r}: unknown engine profile (available: {', '.join(available())})") from None
    return _load(str(path), st.st_mtime_ns, st.st_size)


def _number(value, lo, hi, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise CapsimError(f"{where}: expected a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _switch(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise CapsimError(f"{where}: expected true or false, got {value!r}")
    return value


def values(raw: dict, where: str) -> dict[str, Any]:
    """Typed general parameters from a mapping (unknown names are one-line errors naming where they went)."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if key in PARAMETERS:
            out[key] = _number(value, *PARAMETERS[key], f"{where}.{key}")
        elif key in SWITCHES:
            out[key] = _switch(value, f"{where}.{key}")
        elif key in MOVED:
            raise CapsimError(f"{where}.{key}: moved to {MOVED[key]}")
        else:
            raise CapsimError(f"{where}.{key}: unknown parameter (expected {', '.join((*PARAMETERS, *SWITCHES))})")
    return out


def eager_cpu(raw: dict, where: str) -> EagerCpu:
    if not isinstance(raw, dict):
        raise CapsimError(f"{where}: expected a mapping of {', '.join(EAGER_CPU)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in EAGER_CPU:
            raise CapsimError(f"{where}.{key}: unknown (expected {', '.join(EAGER_CPU)})")
        bounds = EAGER_CPU[key]
        out[key] = _switch(value, f"{where}.{key}") if bounds is None else _number(value, *bounds, f"{where}.{key}")
    return EagerCpu(**out)


@lru_cache(maxsize=64)
def _load(path_text: str, mtime_ns: int, size: int) -> EngineProfile:
    from capsim import checks

    path = Path(path_text)
    data = checks.mapping(checks.read_yaml(path, "engine profile"), str(path))
    params = values(data.get("parameters") or {}, f"{path}: parameters")
    if min(params.get(k, 1.0) for k in EFFICIENCIES) <= 0:
        raise CapsimError(f"{path}: efficiencies must be > 0")
    raw_eager = data.get("eager_cpu")
    curves, curves_file = _curves(data.get("gemm_curves"), path)
    return EngineProfile(
        id=data["id"], version=int(data["version"]), description=data["description"],
        fitted_to=data["fitted_to"], fitted_cases=tuple(data.get("fitted_cases") or ()),
        eager_cpu=None if raw_eager is None else eager_cpu(raw_eager, f"{path}: eager_cpu"),
        gemm_curves=curves, gemm_curves_file=curves_file, **params, **_domain(data.get("domain"), path),
        cpu_kernels=parse(data.get("cpu_kernels"), path), scheduler=scheduler.parse(data.get("scheduler"), path),
        frontend=frontend.parse(data.get("frontend"), path),
    )


DOMAIN_DEVICES = ("accelerator", "cpu")
DOMAIN_OFFLOAD = ("none", "cpu", "gpu-fetch")


def _domain(raw, path: Path) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - {"devices", "offload", "fitted_devices", "fitted_on"}:
        raise CapsimError(f"{path}: domain: expected a mapping of devices, offload, fitted_devices, fitted_on")
    out: dict[str, Any] = {"domain_fitted_on": str(raw.get("fitted_on", ""))}
    for key, allowed in (("devices", DOMAIN_DEVICES), ("offload", DOMAIN_OFFLOAD),
                         ("fitted_devices", DOMAIN_DEVICES)):
        vals = raw.get(key) or []
        if not isinstance(vals, list) or any(v not in allowed for v in vals):
            raise CapsimError(f"{path}: domain.{key}: expected a list of {', '.join(allowed)}")
        out[f"domain_{key}"] = tuple(vals)
    return out


def _curves(raw, path: Path) -> tuple[tuple, str | None]:
    """The curves inline (a list) or from the data file a string names (JSON, relative to the profile)."""
    if raw is None:
        return (), None
    name = None
    if isinstance(raw, str):
        name, file = raw, path.parent / raw
        try:
            raw = json.loads(file.read_text())["curves"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CapsimError(f"{path}: gemm_curves: cannot read {file} ({err})") from None
    out = []
    try:
        for c in raw:
            pts = tuple((float(r), float(f)) for r, f in c["points"])
            rows = [r for r, _ in pts]
            if len(pts) < 2 or rows != sorted(set(rows)) or rows[0] < 1 or not all(0 < f <= 1 for _, f in pts):
                raise ValueError
            k, n = float(c["k"]), float(c["n"])
            if k < 1 or n < 1:
                raise ValueError
            out.append((k, n, pts))
    except (TypeError, ValueError, KeyError):
        raise CapsimError(f"{path}: gemm_curves: expected a list of {{k, n, points: [[rows, fraction], "
                          f"...]}} with >= 2 points, rows ascending from >= 1, fractions in (0, 1]") from None
    return tuple(sorted(out)), name


def with_values(profile: EngineProfile, raw: dict[str, Any], where: str) -> EngineProfile:
    """``profile`` with the values of a config mapping: general parameters and switches (typed and checked),
    and the eager_cpu section's names (which add an eager_cpu section)."""
    general = values({k: v for k, v in raw.items() if k not in EAGER_CPU}, where)
    eager = {k: v for k, v in raw.items() if k in EAGER_CPU}
    if eager:
        checked = eager_cpu(eager, f"{where} (eager_cpu)")  # typed and bound-checked
        general["eager_cpu"] = replace(profile.eager_cpu or EagerCpu(), **{k: getattr(checked, k) for k in eager})
    return replace(profile, **general)


def _round(x: float) -> float:
    """Four significant digits for a fitted value; a whole number (a token budget, a batch) as it is."""
    x = float(x)
    return x if x.is_integer() else float(f"{x:.4g}")


def write(profile: EngineProfile, extra: dict | None = None, folder: Path = FOLDER,
          command: str = "capsim validate --fit") -> Path:
    """Write ``<folder>/<id>.yaml`` atomically (parameters rounded to 4 significant digits, byte counts exact);
    its GEMM curves go to ``<folder>/curves/<id>.json``."""
    import yaml

    params: dict[str, Any] = {k: (float(getattr(profile, k)) if k.endswith("_bytes") else _round(getattr(profile, k)))
                              for k in PARAMETERS}
    params.update({k: bool(getattr(profile, k)) for k in SWITCHES})
    data: dict[str, Any] = {"id": profile.id, "version": profile.version, "description": profile.description,
                            "fitted_to": profile.fitted_to, "parameters": params}
    if profile.eager_cpu is not None:
        e = profile.eager_cpu
        data["eager_cpu"] = {k: (getattr(e, k) if EAGER_CPU[k] is None else
                                 float(getattr(e, k)) if k.endswith("_bytes") else _round(getattr(e, k)))
                             for k in EAGER_CPU}
    if profile.gemm_curves:
        name = f"{CURVES_FOLDER}/{profile.id}.json"
        write_text(folder / name, json.dumps({
            "profile": profile.id, "what": "fraction of the compute peak a GEMM of `rows` rows reaches, per weight "
            "shape (K in, N out); written by capsim validate --fit from the probe's measured curves",
            "curves": [{"k": int(k), "n": int(n), "points": [[int(r), _round(f)] for r, f in pts]}
                       for k, n, pts in profile.gemm_curves]}, indent=None, separators=(",", ":")) + "\n")
        data["gemm_curves"] = name
    if profile.domain_devices or profile.domain_offload or profile.domain_fitted_on:
        data["domain"] = {"devices": list(profile.domain_devices), "offload": list(profile.domain_offload),
                          "fitted_devices": list(profile.domain_fitted_devices), "fitted_on": profile.domain_fitted_on}
    for key in ("cpu_kernels", "scheduler", "frontend"):
        if getattr(profile, key) is not None:
            data[key] = getattr(profile, key).to_yaml()
    data["fitted_cases"] = list(profile.fitted_cases)
    data.update(extra or {})
    path = folder / f"{profile.id}.yaml"
    where = ("the corpus in validation/published/gpu/" if "--gpu" in command
             else "the fitting subset in validation/config.yaml")
    write_text(path, f"# Written by '{command}'; edit {where}.\n"
                  + yaml.safe_dump(data, sort_keys=False, width=110))
    return path
