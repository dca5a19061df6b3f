"""llama.cpp measured on this project's CPU (validation/measured/llama.cpp/) against capsim's `llama.cpp` profile
(``capsim validate --llama-cpp``): the shipped profile's error on runs it never saw, and what the same few
parameters reach when fitted on the campaign, each shape held out in turn.

Cases per shape and quantisation (format capsim-llama-cpp-run v1, `capsim measure --engine llama.cpp`):

- ``prefill``: llama-bench pp<P>, one sequence of P tokens (P x (P + 1) / 2 causal attention pairs per layer);
- ``decode``: llama-bench tg<N>, one sequence, N steps from an empty cache (mean context N / 2);
- ``batched``: llama-batched-bench, B sequences decoded together after a prompt of P tokens each (mean context
  P + N / 2); measured step = T_TG / N.

Priced with the pure simulator on the probe of the machine the runs came from
(validation/measured/llama.cpp/hardware/, 2 threads, as the runs), at the peak of the kernel path the weight format
takes on it (the profile's ``cpu_kernels``: GGUF Q8_0 / Q4_K matmuls run int8 dot products on AVX-512 VNNI here,
tensors llama-quantize left in F16 and the F16 K/V cache at the fp32 FMA rate; :mod:`capsim.hardware.isa`), with
uniform routing (random weights). Nothing here is
written into the shipped profile: the per-backend, per-ISA profiles are still to be fitted across machines.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from capsim import engines, precision
from capsim.errors import CapsimError
from capsim.model.spec import spec_from_config
from capsim.sim.ops import Work
from capsim.sim.request import simulate_step
from capsim.sim.shape import Shape, shape_of
from capsim.validation.fit import fit_parameters
from capsim.validation.report import summary_by

RUNS = "measured/llama.cpp"
HARDWARE_DB = "measured/llama.cpp/hardware"
HARDWARE = "epyc-genoa-2t"
ENGINE = "llama.cpp"
FORMAT = "capsim-llama-cpp-run"
QUANTS = {"Q8_0": "gguf-q8_0", "Q4_K_M": "gguf-q4_k_m"}  # llama-quantize type -> capsim precision
# compute and memory efficiency; the GEMM rows at half the peak (decode GEMVs against prefill GEMMs); time per step and
# per sequence per step (the per-sequence term: llama.cpp's work per sequence stream outside the matmuls, not
# isolated further)
FIT_NAMES = ("compute_efficiency", "memory_efficiency", "gemm_half_rows", "step_overhead_s", "per_sequence_overhead_s")


@dataclasses.dataclass(frozen=True)
class Case:
    id: str  # "<shape>/<quant>/<kind>/b<B>/<P or N>"
    shape_name: str
    kind: str  # "prefill", "decode", "batched"
    work: Work
    measured_s: float
    shape: Shape
    prec: precision.Precision


def load_cases(root: Path) -> list[Case]:
    files = sorted((root / RUNS).glob("*.json"))
    if not files:
        raise CapsimError(f"{root / RUNS}: no run files; record them with 'capsim measure --engine llama.cpp'")
    out: list[Case] = []
    for path in files:
        try:
            run = json.loads(path.read_text())
            if run.get("format") != FORMAT:
                raise CapsimError(f"{path}: field format: expected {FORMAT!r}")
            name = run["shape"]
            for quant, res in run["quants"].items():
                if quant not in QUANTS:
                    raise CapsimError(f"{path}: quants.{quant}: expected one of {', '.join(QUANTS)}")
                prec = precision.get(QUANTS[quant])
                shape = shape_of(spec_from_config(run["config"], name), prec)
                for t in res["bench"]:
                    p, n, ts = int(t["n_prompt"]), int(t["n_gen"]), float(t["avg_ts"])
                    if n == 0:
                        out.append(Case(f"{name}/{quant}/prefill/b1/{p}", name, "prefill",
                                        Work(p, 1, p * (p + 1) / 2, 0.0, False), p / ts, shape, prec))
                    elif p == 0:
                        out.append(Case(f"{name}/{quant}/decode/b1/{n}", name, "decode",
                                        Work(1, 1, n / 2 + 1, n / 2, True), 1.0 / ts, shape, prec))
                for r in res["batched"]:
                    b, p, n = int(r["b"]), int(r["pp"]), int(r["tg"])
                    ctx = p + n / 2
                    out.append(Case(f"{name}/{quant}/batched/b{b}/{p}", name, "batched",
                                    Work(b, b, b * (ctx + 1), b * ctx, True), float(r["t_tg_s"]) / n, shape, prec))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise CapsimError(f"{path}: not a readable {FORMAT} file ({err!r})") from None
    return out


def for_scenario(case: Case, target, profile: engines.EngineProfile):
    from capsim.hardware import isa
    from capsim.scenario import for_device

    peaks, _ = isa.engine_peaks(target.cpu_paths, target.peak_flop_per_s, profile.cpu_kernels)
    dtype = precision.choose_compute(case.prec, peaks, target.device_id)
    return for_device(case.shape, target, profile, dtype, kv_bytes=2.0, name=case.shape_name)


def predict(case: Case, target, profile: engines.EngineProfile) -> float:
    return float(simulate_step(for_scenario(case, target, profile), case.work)[1].step_s)


def _errors(cases: list[Case], target, prof) -> dict[str, float]:
    return {c.id: predict(c, target, prof) / c.measured_s - 1.0 for c in cases}


def run(root: Path) -> dict[str, Any]:
    from capsim.hardware import db as hwdb
    from capsim.hardware.target import resolve_target

    target = resolve_target(hwdb.load(root / HARDWARE_DB), HARDWARE)
    cases = load_cases(root)
    shipped = engines.load(ENGINE)
    held: dict[str, float] = {}
    fitted: dict[str, dict[str, float]] = {}
    for shape in sorted({c.shape_name for c in cases}):
        train = [c for c in cases if c.shape_name != shape]
        measured = np.array([c.measured_s for c in train])
        prof, _ = fit_parameters(lambda p, t=train, m=measured: np.log(
            np.array([predict(c, target, p) for c in t]) / m), shipped, FIT_NAMES, tolerance=1e-4)
        fitted[shape] = {n: getattr(prof, n) for n in FIT_NAMES}
        held.update(_errors([c for c in cases if c.shape_name == shape], target, prof))
    path = for_scenario(cases[0], target, shipped).kernel_path
    return {"hardware": HARDWARE, "kernel_path": path, "shipped": _summary(cases, _errors(cases, target, shipped)),
            "held_out": _summary(cases, held), "fitted_without": fitted,
            "cases": {c.id: {"measured_s": c.measured_s, "error_held_out": held[c.id]} for c in cases}}


def _summary(cases: list[Case], errors: dict[str, float]) -> dict[str, dict[str, float]]:
    return summary_by(cases, errors, ("kind", ("prefill", "decode", "batched")), ("shape_name", None))


def markdown(result: dict[str, Any], command: str) -> str:
    lines = ["# llama.cpp on this machine: the shipped profile, and a fit held out by shape", "",
             f"Written by `{command}`. Runs: validation/measured/llama.cpp/*.json (its README says how they were "
             f"measured); hardware: the probe of the same machine at 2 threads ({HARDWARE}); matmuls on its "
             f"{result['kernel_path']} path (capsim.hardware.isa). Shipped: capsim/engines/llama.cpp.yaml as it is (fitted to the "
             f"published CPU corpus, capsim validate --cpu-corpus; none of these runs). Held out: {', '.join(FIT_NAMES)} fitted to the other "
             "shapes' cases, reported, not written into the profile.", "",
             "| cases | n | shipped profile: median abs error | worst | fitted, held out by shape: median | worst |",
             "|---|---|---|---|---|---|"]
    for name, s in result["shipped"].items():
        h = result["held_out"][name]
        lines.append(f"| {name} | {s['cases']} | {s['median_abs']:.1%} | {s['worst']:+.0%} | {h['median_abs']:.1%} | "
                     f"{h['worst']:+.0%} |")
    lines += ["", "| held-out shape | " + " | ".join(FIT_NAMES) + " |", "|---|" + "---|" * len(FIT_NAMES)]
    lines += [f"| {shape} | " + " | ".join(f"{v:.4g}" for v in p.values()) + " |"
              for shape, p in result["fitted_without"].items()]
    return "\n".join(lines) + "\n"
