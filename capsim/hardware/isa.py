"""ISA paths: the kernel families a CPU engine can run a dtype's matmuls on, and each one's dense peak.

A CPU entry's ``simd`` (extensions, FMA pipes per core, datapath width) with its cores and sustained all-core
clock gives a peak per path; an engine profile's ``cpu_kernels`` lists, per dtype, the paths its kernels have in
the order it picks them (llama.cpp's routed experts: AVX-512 VNNI, else AVX-VNNI, else AVX2 ``maddubs``), so
the path a forecast runs on is the first one the CPU has.

Operations per cycle per core (1 multiply-add = 2 operations), with ``u`` FMA pipes of ``w`` datapath bits:

- fp32 FMA on a vector of v bits: u x min(v, w) / 32 lanes x 2 FLOP. An AVX-512 instruction on 256-bit pipes
  (AMD Zen 4) issues as two halves, so it counts at the datapath width.
- int8 dot products with VNNI (``vpdpbusd``: 4 u8 x s8 products summed into each 32-bit lane): 4x the fp32
  rate on the same pipes (Intel, "Introduction to Intel Deep Learning Boost", 2019: VNNI does in one
  instruction what took three). Code written on 256-bit registers (mainline llama.cpp's dot products) runs at
  that width: half a 512-bit datapath's rate (``avx512-vnni-256-int8``), all of a 256-bit one's.
- int8 without VNNI (``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` for the same 4 products per lane): 4/3 of the
  fp32 rate (Intel, "Lower Numerical Precision Deep Learning Inference and Training", 2018: "1.33x" the fp32
  operations).
- bf16 with AVX-512 BF16 (``vdpbf16ps``: 2 bf16 products per fp32 lane) and fp16 with AVX-512 FP16 (32 fp16
  lanes): 2x the fp32 rate. fp16 without AVX512-FP16 is converted to fp32 (F16C) and runs at the fp32 rate.
- AMX (Sapphire Rapids and later): 2,048 int8 and 1,024 bf16 operations per cycle per core (Intel, "Intel
  Advanced Matrix Extensions Overview": the TMUL's peak per core).
- Arm: NEON fp32 on 128-bit pipes; ``sdot`` (asimddp) 4 int8 products per 32-bit lane: 4x fp32; i8mm
  (``smmla``, a 2x8 by 8x2 product per 128 bits) 8x fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

AMX_INT8_OPS_PER_CYCLE = 2048  # per core: Intel AMX overview (TMUL peak)
AMX_BF16_OPS_PER_CYCLE = 1024
VNNI_OVER_FP32 = 4.0  # 4 int8 products per 32-bit lane in one instruction
INT8_3OP_OVER_FP32 = 4.0 / 3.0  # the same 4 products in three instructions
DOT2_OVER_FP32 = 2.0  # bf16 vdpbf16ps, fp16 avx512_fp16: 2 products per fp32 lane
I8MM_OVER_FP32 = 8.0  # smmla: 32 int8 products per 128 bits in one instruction (2x sdot)


@dataclass(frozen=True)
class Path:
    name: str
    dtype: str  # the dtype whose matmuls it runs
    needs: tuple[str, ...]  # cpuinfo flags, all required
    vector_bits: int  # the instruction's vector width (0: a matrix unit, fixed rate)
    over_fp32: float  # operations per fp32 FLOP on the same pipes (or the fixed ops per cycle per core)


PATHS: dict[str, Path] = {p.name: p for p in (
    Path("amx-int8", "int8", ("amx_int8",), 0, AMX_INT8_OPS_PER_CYCLE),
    Path("amx-bf16", "bf16", ("amx_bf16",), 0, AMX_BF16_OPS_PER_CYCLE),
    Path("avx512-vnni-int8", "int8", ("avx512_vnni",), 512, VNNI_OVER_FP32),
    Path("avx-vnni-int8", "int8", ("avx_vnni",), 256, VNNI_OVER_FP32),
    # vpdpbusd on 256-bit registers (EVEX, AVX512VL: every AVX512-VNNI CPU has VL): half the 512-bit rate on a
    # 512-bit datapath (Intel), the same on 256-bit pipes (Zen 4)
    Path("avx512-vnni-256-int8", "int8", ("avx512_vnni",), 256, VNNI_OVER_FP32),
    Path("avx512-int8", "int8", ("avx512bw",), 512, INT8_3OP_OVER_FP32),
    Path("avx2-int8", "int8", ("avx2",), 256, INT8_3OP_OVER_FP32),
    Path("neon-i8mm-int8", "int8", ("i8mm",), 128, I8MM_OVER_FP32),
    Path("neon-dot-int8", "int8", ("asimddp",), 128, VNNI_OVER_FP32),
    Path("avx512-bf16", "bf16", ("avx512_bf16",), 512, DOT2_OVER_FP32),
    Path("neon-bf16", "bf16", ("bf16",), 128, DOT2_OVER_FP32),
    Path("avx512-fp16", "fp16", ("avx512_fp16",), 512, DOT2_OVER_FP32),
    Path("avx512-fp32", "fp32", ("avx512f",), 512, 1.0),
    Path("avx2-fp32", "fp32", ("avx2", "fma"), 256, 1.0),
    Path("neon-fp32", "fp32", ("asimd",), 128, 1.0),
    # fp16 data converted to fp32 (F16C / NEON fcvt) and multiplied there: the fp32 rate of the widest path
    Path("f16c-avx512-fp32", "fp16", ("f16c", "avx512f"), 512, 1.0),
    Path("f16c-avx2-fp32", "fp16", ("f16c", "avx2", "fma"), 256, 1.0),
    Path("neon-fp16-fp32", "fp16", ("asimd",), 128, 1.0),
)}
# The dtypes ISA paths cover; an engine that names no path for one runs it on the CPU's fastest (best())
DTYPES = ("fp32", "fp16", "bf16", "int8")


def ops_per_cycle(path: Path, fma_units: int, datapath_bits: int) -> float:
    """Dense operations per cycle per core on ``path`` (FLOP, or integer OP for int8)."""
    if path.vector_bits == 0:
        return float(path.over_fp32)
    fp32 = fma_units * min(path.vector_bits, datapath_bits) / 32 * 2
    return fp32 * path.over_fp32


def has(path: Path, extensions) -> bool:
    return all(flag in extensions for flag in path.needs)


def path_peaks(extensions, fma_units: int, datapath_bits: int, cores: float, clock_hz: float) -> dict[str, float]:
    """Peak FLOP/s (OP/s for int8) of every path the CPU has: cores x clock x operations per cycle."""
    return {p.name: cores * clock_hz * ops_per_cycle(p, fma_units, datapath_bits)
            for p in PATHS.values() if has(p, extensions)}


def best(paths: dict[str, float], dtype: str) -> str | None:
    """The fastest path of ``dtype`` among ``paths`` (name -> peak), None if it has none."""
    cands = [(v, k) for k, v in paths.items() if PATHS[k].dtype == dtype]
    return max(cands)[1] if cands else None


def pick(paths: dict[str, float], dtype: str, engine_order: tuple[str, ...] | None) -> str | None:
    """The path ``dtype``'s matmuls run on: the first of the engine's own order the CPU has, else (an engine that
    states none) the fastest; None when the engine has no kernel the CPU can run."""
    if engine_order is None:
        return best(paths, dtype)
    return next((p for p in engine_order if p in paths), None)


def dtype_peaks(paths: dict[str, float], orders: dict[str, tuple[str, ...]] | None = None
                ) -> dict[str, tuple[str, float]]:
    """Per dtype, (path, peak) an engine runs at on a CPU with ``paths``: ``orders`` maps dtype -> the engine's
    path order (dtypes it leaves out take the fastest path)."""
    out = {}
    for dt in DTYPES:
        name = pick(paths, dt, (orders or {}).get(dt))
        if name is not None:
            out[dt] = (name, paths[name])
    return out


def engine_peaks(paths: dict[str, float], own: dict[str, float], kernels=None
                 ) -> tuple[dict[str, float], dict[str, str]]:
    """The dense peak per dtype an engine runs at on a CPU, and the path each dtype takes.

    ``paths``: the CPU's peak per ISA path; ``own``: its peak per dtype (a datasheet's or a probe's measurement,
    which stands for the dtype's fastest path); ``kernels``: the engine's CpuKernels (None: fastest paths).
    A dtype on its fastest path keeps the entry's own figure; an engine whose kernels stop short of it (no AMX
    kernel for routed experts) runs at its own path's derived peak. Without ``paths`` (an accelerator, or a CPU
    entry without ``simd``) the entry's figures stand and no path is named."""
    if not paths:
        return dict(own), {}
    chosen = dtype_peaks(paths, kernels.order() if kernels is not None else None)
    peaks = {dt: (own[dt] if dt in own and name == best(paths, dt) else rate) for dt, (name, rate) in chosen.items()}
    names = {dt: name for dt, (name, _) in chosen.items()}
    # a dtype the entry publishes but no ISA path covers (fp64) keeps its figure
    return {**{dt: v for dt, v in own.items() if dt not in DTYPES}, **peaks}, names
