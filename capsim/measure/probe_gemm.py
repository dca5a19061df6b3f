"""GEMM efficiency curves of the probe: FLOP/s of ``M x K @ K x N`` per dtype as M grows from 1.

``torch.mm`` (``torch._int_mm`` for int8), N = K fixed, M = 1, 2, 4, ...: 2 M N K FLOP (or integer OP)
per call. By default the same weight is used at every call, so a cache that holds it may serve it;
``Settings.gemm_cold_bytes`` cycles through copies of the weight so that each call reads it from DRAM,
as a decode step over a model larger than the last-level cache does.

:func:`linear_curve` measures a given weight shape the way ``torch.nn.Linear`` runs it: the weight stored
N x K (out x in features) and multiplied transposed, ``x @ W.T``, always cold (weights cycled). On a CPU the
BLAS picks its kernel by shape and layout: a 1024 x 7168 weight at M = 2 runs at the memory read rate in this
layout and at 0.7 x that as a row-major K x N operand, and N = K = 4096 collapses to a quarter of the peak at
M = 64 where a 1024 x 7168 weight reaches 0.6 of it (measured with ``capsim probe`` on the project's Xeon,
2026-11-22). A model's GEMMs are therefore predicted from curves measured at its own weight shapes
(``capsim probe --gemm-shapes-of MODEL``), nearest shape first (:mod:`capsim.sim.roofline`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from capsim.measure.timing import Log, first_line, median_time, silent, timer_for

if TYPE_CHECKING:
    from capsim.measure.probe import Settings

CPU_DTYPES = ("fp32", "bf16", "fp16", "int8")
GPU_DTYPES = ("fp32", "tf32", "bf16", "fp16", "int8")
# A dtype that runs at under this fraction of the fp32 peak is on a slow (emulated) path: it is kept in the
# curves but left out of the entry's peaks, so a prediction does not assume an engine would use it.
SLOW_PATH_FRACTION = 0.5
# A generous CPU rate (a many-core AVX-512 server) used only to skip shape-curve points whose one call would
# exceed the point budget even at this rate; on a slower machine the points that run may take longer.
PEAK_GUESS_FLOP_PER_S = 1e12


def _matrix(dtype: str, rows: int, cols: int, device: str, seed: int):
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    if dtype == "int8":
        return torch.randint(-8, 8, (rows, cols), dtype=torch.int8, generator=gen).to(device)
    tdt = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return torch.randn(rows, cols, generator=gen).to(device=device, dtype=tdt)


def _gemm_fn(dtype: str, a, b) -> Callable[[], Any]:
    import torch

    if dtype == "int8":
        return lambda: torch._int_mm(a, b)
    return lambda: torch.mm(a, b)


def _gemm_op(dtype: str) -> str:
    if dtype == "int8":
        return "torch._int_mm(int8 M x K, int8 K x N) -> int32"
    return f"torch.mm({dtype} M x K, {dtype} K x N)" + (" with TF32 allowed" if dtype == "tf32" else "")


class _Tf32:
    """Allow TF32 in CUDA matmuls only for the 'tf32' dtype (fp32 is measured without it)."""

    def __init__(self, dtype: str, device: str):
        self.on = dtype == "tf32"
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> None:
        if self.cuda:
            import torch

            self.old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = self.on

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.backends.cuda.matmul.allow_tf32 = self.old


def gemm_curve(dtype: str, s: Settings, device: str = "cpu", log: Log = silent) -> dict[str, Any]:
    """FLOP/s (integer OP/s for int8) of an M x K by K x N GEMM as M grows; the peak is the max over M."""
    import torch

    gpu = device.startswith("cuda")
    nk = s.gpu_gemm_nk if gpu else s.gemm_nk
    ms = s.gpu_gemm_ms if gpu else s.gemm_ms
    out: dict[str, Any] = {"dtype": dtype, "device": device, "n": nk, "k": nk, "points": [], "skipped_points": []}
    if dtype == "tf32" and not gpu:
        out["skipped"] = "tf32 is a GPU tensor-core mode"
        return out
    if dtype == "int8" and not hasattr(torch, "_int_mm"):
        out["skipped"] = f"torch {torch.__version__} has no torch._int_mm"
        return out
    timer = timer_for(device)
    with _Tf32(dtype, device):
        try:  # does this dtype run at all?
            _gemm_fn(dtype, _matrix(dtype, 32, 32, device, 1), _matrix(dtype, 32, 32, device, 2))()
        except (RuntimeError, TypeError, NotImplementedError) as err:
            out["skipped"] = f"not supported by torch {torch.__version__} on {device}: {first_line(err)}"
            return out
        log(f"gemm {dtype} on {device}: N = K = {nk}, M = {', '.join(map(str, ms))}")
        out["op"] = _gemm_op(dtype)
        b = _matrix(dtype, nk, nk, device, 2)
        weights = [b]
        if not gpu and s.gemm_cold_bytes:  # copies of the weight, cycled so that each call streams it from DRAM
            weights += [b.clone() for _ in range(max(0, -(-s.gemm_cold_bytes // (b.numel() * b.element_size())) - 1))]
            out["weights_cycled"] = len(weights)
            out["weights_cycled_bytes"] = len(weights) * b.numel() * b.element_size()
        turn = [0]
        for m in ms:
            a = _matrix(dtype, m, nk, device, 1)
            calls = [_gemm_fn(dtype, a, w) for w in weights]

            def call(calls=calls):
                turn[0] += 1
                return calls[turn[0] % len(calls)]()

            try:
                t = median_time(call, timer, s)
            except (RuntimeError, TypeError, NotImplementedError) as err:  # e.g. CUDA _int_mm needs M > 16
                out["skipped_points"].append({"m": m, "reason": first_line(err)})
                continue
            rate = 2.0 * m * nk * nk / t["median_s"]
            out["points"].append({"m": m, "flop_per_s": rate, **t})
            if gpu:
                torch.cuda.empty_cache()
    del b, weights
    if not out["points"]:
        out["skipped"] = "no shape ran: " + "; ".join(p["reason"] for p in out["skipped_points"][:2])
        return out
    best = max(out["points"], key=lambda p: p["flop_per_s"])
    out["peak_flop_per_s"] = best["flop_per_s"]
    out["peak_m"] = best["m"]
    first = out["points"][0]
    out["smallest_m"] = first["m"]
    out["smallest_m_efficiency"] = first["flop_per_s"] / best["flop_per_s"]
    elem = 1 if dtype == "int8" else (4 if dtype in ("fp32", "tf32") else 2)
    out["weight_bytes"] = nk * nk * elem
    out["weight_bytes_per_s_at_smallest_m"] = nk * nk * elem / first["median_s"]
    return out


def linear_curve(dtype: str, k: int, n: int, s: Settings, log: Log = silent) -> dict[str, Any]:
    """FLOP/s of ``x @ W.T`` (``W`` stored ``n x k``, as ``torch.nn.Linear`` holds it) as the rows M of ``x`` grow,
    cycling through copies of ``W`` totalling at least ``s.memory_bytes`` so that each call reads its weight from
    DRAM, as one step of a model larger than the last-level cache does. Points past ``s.point_budget_s`` of one
    call are skipped (the curve is flat there)."""
    import torch

    out: dict[str, Any] = {"dtype": dtype, "device": "cpu", "k": k, "n": n, "points": [], "skipped_points": [],
                           "op": f"torch.mm({dtype} M x K, W.T) with W stored N x K (torch.nn.Linear's layout)"}
    if dtype == "int8":
        out["skipped"] = "int8 weights are not run through torch.nn.Linear"
        return out
    w = _matrix(dtype, n, k, "cpu", 2)
    nbytes = w.numel() * w.element_size()
    weights = [w] + [w.clone() for _ in range(max(0, -(-s.memory_bytes // nbytes) - 1))]
    out["weights_cycled"] = len(weights)
    out["weights_cycled_bytes"] = len(weights) * nbytes
    log(f"gemm {dtype} x @ W.T, W {n} x {k} ({len(weights)} copies, cold): M = {', '.join(map(str, s.gemm_ms))}")
    turn = [0]
    for m in s.gemm_ms:
        if 2.0 * m * n * k / PEAK_GUESS_FLOP_PER_S > s.point_budget_s:
            out["skipped_points"].append({"m": m, "reason": f"one call would take over {s.point_budget_s:g} s"})
            continue
        a = _matrix(dtype, m, k, "cpu", 1)
        calls = [(lambda a=a, wt=wt: torch.mm(a, wt)) for wt in (x.t() for x in weights)]

        def call(calls=calls):
            turn[0] += 1
            return calls[turn[0] % len(calls)]()

        t = median_time(call, timer_for("cpu"), s)
        out["points"].append({"m": m, "flop_per_s": 2.0 * m * n * k / t["median_s"], **t})
    del w, weights
    out["weight_bytes"] = nbytes
    if out["points"]:
        out["peak_flop_per_s"] = max(p["flop_per_s"] for p in out["points"])
    return out


def _mark_slow_paths(curves: dict[str, dict[str, Any]]) -> None:
    ref = curves.get("fp32", {}).get("peak_flop_per_s")
    for dt, c in curves.items():
        if "peak_flop_per_s" not in c:
            c["in_entry"] = False
            continue
        slow = ref is not None and dt not in ("fp32", "tf32") and c["peak_flop_per_s"] < SLOW_PATH_FRACTION * ref
        c["in_entry"] = not slow
        if slow:
            c["note"] = (f"peak under {SLOW_PATH_FRACTION:g} x the fp32 peak: torch runs {dt} on a slow path here; "
                         "left out of the entry's peaks")
