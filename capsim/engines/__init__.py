"""Engine profiles: the few parameters that turn a roofline into a forecast for one engine.

One YAML file per profile in this folder (``<id>.yaml``): id, version, description,
``fitted_to`` (what data fitted it) and ``parameters`` (names in :data:`PARAMETERS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from capsim.errors import CapsimError

FOLDER = Path(__file__).parent
GLIBC_MMAP_THRESHOLD_MAX_BYTES = 32 * 2**20  # mallopt(3), M_MMAP_THRESHOLD: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
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
    "mla_absorbed": (0.0, 1.0),
    "host_memory_efficiency": (0.0, 1.0),
    "host_compute_efficiency": (0.0, 1.0),
    "offload_overlap": (0.0, 1.0),
    "first_touch_s_per_byte": (0.0, 1e-6),
    "fresh_alloc_threshold_bytes": (0.0, 1e12),
    "activation_overlap": (0.0, 1.0),
    "expert_hidden_tensors": (0.0, 20.0),
    "expert_intermediate_tensors": (0.0, 20.0),
    "math_attention_unequal_head_dims": (0.0, 1.0),
    "ssd_read_request_bytes": (0.0, 1e12),
    "math_attention_s_per_score": (0.0, 1e-6),
    "eager_layer_tensors": (0.0, 1.0),
    "refault_s_per_byte": (0.0, 1e-6),
    "retained_free_bytes": (0.0, 1e15),
}


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
    # Fraction of the memory bandwidth the attention kernel reaches on its K/V (and expanded-MLA) traffic:
    # decode attention is a batched GEMV per head over the cache, not a streaming read.
    attention_efficiency: float = 1.0
    # Rows (tokens) at which a GEMM reaches half the compute peak: the kernel library's efficiency curve
    # rows / (rows + gemm_half_rows) (Hockney's n_1/2, applied per weight matrix); 0 = every GEMM at peak.
    gemm_half_rows: float = 0.0
    # 1: MLA decode attends over the cached latent (W_UK/W_UV absorbed, vLLM/SGLang); 0: the engine
    # re-expands every cached latent through kv_b_proj each step (transformers' DeepseekV2/V3 attention).
    mla_absorbed: float = 1.0
    # Offloaded experts (capsim.sim.offload): the CPU's fraction of its DRAM bandwidth and of its peak FLOP/s
    # when it computes experts, and the fraction of the shorter of device / offload time hidden under the other.
    host_memory_efficiency: float = 1.0
    host_compute_efficiency: float = 1.0
    offload_overlap: float = 0.0
    # Engines on the CPU allocator (torch CPU: malloc): every tensor above the allocator's mmap threshold is
    # mapped afresh and unmapped on free, so each step's large tensors fault in and zero their pages on first
    # touch: fresh bytes x first_touch_s_per_byte (``capsim probe`` measures it). 0 = no such cost (caching
    # allocators: CUDA, preallocated engine buffers). The threshold defaults to glibc's largest dynamic mmap
    # threshold, DEFAULT_MMAP_THRESHOLD_MAX = 4 x 1024 x 1024 x sizeof(long) = 32 MiB on 64-bit (mallopt(3)).
    first_touch_s_per_byte: float = 0.0
    fresh_alloc_threshold_bytes: float = GLIBC_MMAP_THRESHOLD_MAX_BYTES
    # 1: the engine writes every intermediate of a layer to a tensor of its own (transformers eager: norms,
    # projections, rotary embedding, residual adds; :mod:`capsim.model.eager`), and those above the threshold
    # fault in fresh too. 0: only the cache, expert and attention tensors named by the other parameters.
    eager_layer_tensors: float = 0.0
    # A machine whose hypervisor takes freed guest memory back (virtio-balloon free page reporting) keeps only
    # about retained_free_bytes of it backed after seconds of compute; the part of a fresh tensor beyond that
    # faults in at refault_s_per_byte more (``capsim probe`` measures both: cpu.memory.reclaim). 0: no reclaim.
    refault_s_per_byte: float = 0.0
    retained_free_bytes: float = 0.0
    # Fraction of an operator's activation traffic (inputs, outputs, intermediates) hidden under its GEMM or
    # weight reads: 1 for fused kernels (epilogues, fused MoE: the roofline's max of compute and memory);
    # 0 for an eager engine, where each element-wise step (gather, activation, gating product, routing-weight
    # scaling, un-permute) is its own kernel that runs after the GEMM.
    activation_overlap: float = 1.0
    # Tensors an unfused expert block allocates per token-expert assignment, per MoE layer, in units of the
    # hidden width and of the expert intermediate width (0 for fused engines); with first_touch_s_per_byte,
    # those above the allocator's mmap threshold fault in fresh each step.
    expert_hidden_tensors: float = 0.0
    expert_intermediate_tensors: float = 0.0
    # 1: when the query/key head dim differs from the value's (MLA prefill, expanded MLA decode) the engine's
    # attention materialises its scores: torch's CPU SDPA then takes its math path (flash attention needs equal
    # head dims: aten/src/ATen/native/transformers/sdp_utils_cpp.cpp, check_head_dim_size_cpp), which writes a
    # copy of K scaled by sqrt(scale), the Q K^T scores and their softmax, each read once after. 0: fused.
    math_attention_unequal_head_dims: float = 0.0
    # Such a math-path attention's element-wise work (scale, causal mask, softmax, safe-softmax checks) in
    # seconds per score element (``capsim probe`` times torch's math SDPA beyond its two matmuls); 0: counted as
    # the score tensors' memory traffic instead.
    math_attention_s_per_score: float = 0.0
    # Offloaded experts on a drive (``--expert-tier ssd``): bytes per read request (capsim.sim.ssd prices a
    # read by its size). 0: one expert weight matrix per request (an engine that reads whole experts); an
    # engine that maps its weight file (llama.cpp's default mmap) reads a miss by page faults, one read-around
    # window per request: 128 KiB by default (include/linux/mm.h, VM_READAHEAD_PAGES).
    ssd_read_request_bytes: float = 0.0
    # Measured GEMM efficiency curves, one per weight shape: ((K, N, ((rows, fraction of the peak), ...)), ...);
    # the engine's kernels on the hardware it was fitted for (``capsim probe --gemm-shapes-of`` measures them).
    # A matmul uses the curve of the nearest shape. Used instead of gemm_half_rows when present.
    gemm_curves: tuple[tuple[float, float, tuple[tuple[float, float], ...]], ...] = ()
    fitted_cases: tuple[str, ...] = ()  # ids of the validation cases the parameters were fitted to


def available() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def load(name: str) -> EngineProfile:
    path = FOLDER / f"{name}.yaml"
    if not path.is_file():
        raise CapsimError(f"--engine {name!r}: unknown engine profile (available: {', '.join(available())})")
    data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    params = data.get("parameters") or {}
    for key, value in params.items():
        if key not in PARAMETERS:
            raise CapsimError(f"{path}: parameters.{key}: unknown parameter (expected {', '.join(PARAMETERS)})")
        lo, hi = PARAMETERS[key]
        if not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise CapsimError(f"{path}: parameters.{key}: expected a number in [{lo}, {hi}], got {value!r}")
    eff = {k: params.get(k, 1.0) for k in ("compute_efficiency", "memory_efficiency", "link_efficiency",
                                            "attention_efficiency", "host_memory_efficiency",
                                            "host_compute_efficiency")}
    if min(eff.values()) <= 0:
        raise CapsimError(f"{path}: efficiencies must be > 0")
    return EngineProfile(
        id=data["id"], version=int(data["version"]), description=data["description"],
        fitted_to=data["fitted_to"], fitted_cases=tuple(data.get("fitted_cases") or ()),
        gemm_curves=_curves(data.get("gemm_curves"), path),
        **{k: float(v) for k, v in params.items()},
    )


def _curves(raw, path: Path) -> tuple[tuple[float, float, tuple[tuple[float, float], ...]], ...]:
    if raw is None:
        return ()
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
    return tuple(sorted(out))


def write(profile: EngineProfile, extra: dict | None = None, folder: Path = FOLDER,
          command: str = "capsim validate --fit") -> Path:
    """Write ``<folder>/<id>.yaml`` atomically (parameters rounded to 4 significant digits)."""
    import os

    params = {k: float(f"{getattr(profile, k):.4g}") for k in PARAMETERS}
    for k in PARAMETERS:
        if k.endswith("_bytes"):  # byte counts are kept exact
            params[k] = float(getattr(profile, k))
    data = {"id": profile.id, "version": profile.version, "description": profile.description,
            "fitted_to": profile.fitted_to, "parameters": params, "fitted_cases": list(profile.fitted_cases),
            **(extra or {})}
    if profile.gemm_curves:
        data["gemm_curves"] = [{"k": int(k), "n": int(n), "points": [[int(r), float(f"{f:.4g}")] for r, f in pts]}
                               for k, n, pts in profile.gemm_curves]
    path = folder / f"{profile.id}.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(f"# Written by '{command}'; edit the fitting subset in validation/config.yaml.\n"
                   + yaml.safe_dump(data, sort_keys=False, width=110))
    os.replace(tmp, path)
    return path
