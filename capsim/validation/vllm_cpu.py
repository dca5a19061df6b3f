"""vLLM's own engine, measured on this project's CPU (validation/measured/vllm-cpu/), predicted by the
``vllm-cpu`` profile with leave-one-shape-out cross-validation (``capsim validate --vllm-cpu``).

The campaign (``capsim measure --engine vllm``, format capsim-vllm-cpu-run v1) ran vLLM's CPU build on random-
initialised MoE models of four shapes: batch 1-64, prompts 128 and 512, 32 output tokens. Cases per point:

- ``decode``: the pure decode step at the full batch, decode_phase_s / (output - 1) (every prefill done), at the
  mean context of the decode steps (prompt + output / 2);
- ``prefill``: the prefill phase (first request queued to last first token) where the whole batch's prompt tokens
  fit in one engine step (batch x prompt <= max_num_batched_tokens): one prefill pass of the batch. Larger
  batches are prefilled in chunks mixed with the first requests' decode steps, which one pass does not describe:
  they are not cases (README of the campaign).

Both are priced with the pure simulator on the probed hardware entry of the machine the campaign ran on
(validation/measured/vllm-cpu/hardware/, ``capsim probe --threads 1``: vLLM bound its model worker to one core),
in bf16, with uniform routing (random weights route near-uniformly). FIT_NAMES are fitted by least squares on the
log error; each shape's cases are predicted by the profile fitted to the other shapes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from capsim import engines, precision
from capsim.errors import CapsimError
from capsim.model.spec import spec_from_config
from capsim.sim.shape import shape_of
from capsim.validation import run_files
from capsim.validation.cases import Case, predict_case
from capsim.validation.fit import fit_parameters
from capsim.validation.report import summary_by

RUNS = "measured/vllm-cpu"  # under validation/
HARDWARE_DB = "measured/vllm-cpu/hardware"
HARDWARE = "epyc-genoa-1t"
DTYPE = "bf16"
ENGINE = "vllm-cpu"
FORMAT = "capsim-vllm-cpu-run"
# The engine-side parameters (host time per step and per sequence, per kernel) and the CPU kernels' reach of the
# probed peaks; GEMM efficiency against rows (a CPU GEMM of one row reaches ~1% of the bf16 peak: the probe's curve)
FIT_NAMES = ("compute_efficiency", "memory_efficiency", "kernel_overhead_s", "step_overhead_s",
             "per_sequence_overhead_s", "gemm_half_rows")
TARGET_MEDIAN = 0.15  # the held-out target


def load_cases(root: Path) -> list[Case]:
    """Every case of every run file in validation/measured/vllm-cpu/."""
    prec = precision.get(DTYPE)
    out: list[Case] = []
    for path, run in run_files.read(root / RUNS, FORMAT, "'capsim measure --engine vllm'"):
        try:
            shape = shape_of(spec_from_config(run["config"], run["shape"]), prec)
            budget = int(run["engine_config"]["max_num_batched_tokens"])
            for p in run["points"]:
                b, n, o = int(p["batch"]), int(p["prompt_len"]), int(p["output_len"])
                ctx = n + o // 2
                out.append(Case(f"{run['shape']}/decode/b{b}/{n}", run["shape"], "decode", b, ctx,
                                float(p["decode_phase_s"]) / (o - 1), (np.nan, np.nan), None, shape))
                if b * n <= budget:
                    out.append(Case(f"{run['shape']}/prefill/b{b}/{n}", run["shape"], "prefill", b, n,
                                    float(p["prefill_phase_s"]), (np.nan, np.nan), None, shape))
        except (KeyError, TypeError, ValueError) as err:
            raise CapsimError(f"{path}: a point or field is missing or malformed ({err!r})") from None
    return out


def _residuals(cases: list[Case], target):
    measured = np.array([c.measured_s for c in cases])
    return lambda prof: np.log(np.array([predict_case(c, target, prof, DTYPE) for c in cases]) / measured)


def fit(cases: list[Case], target) -> tuple[engines.EngineProfile, dict[str, Any]]:
    return fit_parameters(_residuals(cases, target), engines.load(ENGINE), FIT_NAMES, tolerance=1e-4)


def run(root: Path, *, refit: bool) -> dict[str, Any]:
    """Fit (when ``refit``: and write capsim/engines/vllm-cpu.yaml) and cross-validate over the shapes."""
    from capsim.hardware import db as hwdb
    from capsim.hardware.target import resolve_target

    target = resolve_target(hwdb.load(root / HARDWARE_DB), HARDWARE)
    cases = load_cases(root)
    if refit:
        prof, info = fit(cases, target)
        shapes = sorted({c.run for c in cases})
        prof = dataclasses.replace(prof, fitted_to=(
            f"{', '.join(FIT_NAMES)} fitted (least squares on log error, rms {info['rms_log_error']:.3f}) to "
            f"{len(cases)} measured cases of vLLM's CPU build ({', '.join(shapes)}; validation/measured/vllm-cpu/) "
            f"on the probed entry {HARDWARE}"), fitted_cases=tuple(c.id for c in cases))
        engines.write(prof, {"not_fitted": {"every other parameter": "the ideal value (roofline)"}},
                      command="capsim validate --vllm-cpu --fit")
    prof = engines.load(ENGINE)
    fitted = {c.id: predict_case(c, target, prof, DTYPE) / c.measured_s - 1.0 for c in cases}
    held: dict[str, float] = {}
    for shape in sorted({c.run for c in cases}):
        p, _ = fit([c for c in cases if c.run != shape], target)
        held.update({c.id: predict_case(c, target, p, DTYPE) / c.measured_s - 1.0 for c in cases if c.run == shape})
    return {"cases": {c.id: {"shape": c.run, "phase": c.phase, "batch": c.batch, "length": c.length,
                             "measured_s": c.measured_s, "error_fit": fitted[c.id], "error_held_out": held[c.id]}
                      for c in cases},
            "parameters": {n: getattr(prof, n) for n in FIT_NAMES},
            "summary": _summary(cases, held), "summary_fit": _summary(cases, fitted)}


def _summary(cases: list[Case], errors: dict[str, float]) -> dict[str, dict[str, float]]:
    return summary_by(cases, errors, ("phase", ("decode", "prefill")), ("run", None))


def markdown(result: dict[str, Any], command: str) -> str:
    lines = ["# vLLM's CPU build on this machine: the vllm-cpu profile, leave-one-shape-out", "",
             f"Written by `{command}`. Cases: validation/measured/vllm-cpu/*.json (how they were measured: its "
             f"README); hardware: the probe of the same machine ({HARDWARE_DB}/cpus/{HARDWARE}.yaml). "
             f"Parameters fitted: {', '.join(FIT_NAMES)}. Held out: each shape's cases predicted by the profile "
             f"fitted to the other shapes. Target: held-out median <= {TARGET_MEDIAN:.0%}.", "",
             "| cases | n | held-out median abs error | worst held out | fit median |", "|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['cases']} | {s['median_abs']:.1%} | {s['worst']:+.0%} | "
                     f"{result['summary_fit'][name]['median_abs']:.1%} |")
    lines += ["", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in result["parameters"].items()]
    lines += ["", "| case | measured (s) | error (fit) | error (held out) |", "|---|---|---|---|"]
    lines += [f"| {cid} | {c['measured_s']:.4g} | {c['error_fit']:+.1%} | {c['error_held_out']:+.1%} |"
              for cid, c in result["cases"].items()]
    return "\n".join(lines) + "\n"
