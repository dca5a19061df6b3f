"""Validation cases: one measured step time (or published figure) and the scenario that predicts it.

A case from a run file (``capsim measure``, format capsim-run v1) is one prefill pass or one
decode step of a given batch on a given model shape; it is predicted with the pure simulator
for exactly that shape, on the hardware entry the probe measured, using the routing the run
recorded (activated experts per layer), so routing is not a source of error here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capsim import precision
from capsim.engines import EngineProfile
from capsim.errors import CapsimError
from capsim.hardware.target import Target
from capsim.model.spec import spec_from_config
from capsim.sim.ops import step_costs
from capsim.sim.roofline import step_time
from capsim.sim.shape import Shape, shape_of

DTYPE_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class Case:
    id: str  # "<run>/<phase>/b<B>/<len>"
    run: str
    phase: str  # "prefill" or "decode"
    batch: int
    length: int  # prompt length (prefill) or context (decode)
    measured_s: float
    spread: tuple[float, float]  # p10, p90
    activated: float | None  # measured activated experts per MoE layer
    shape: Shape


def load_run(path: Path) -> dict[str, Any]:
    from capsim.measure.run import read_run  # torch-free module scope

    return read_run(path)


def cases_from_run(path: Path) -> list[Case]:
    run = load_run(path)
    name = Path(path).stem
    prec = precision.get(DTYPE_PRECISION.get(run.get("dtype", "float32"), "fp32"))
    try:
        shape = shape_of(spec_from_config(run["model"]["config"], name), prec)
    except CapsimError as err:
        raise CapsimError(f"{path}: model.config: {err}") from None
    out = []
    for m in run["measurements"]:
        length = int(m["input_len"] if m["phase"] == "prefill" else m["context"])
        out.append(Case(
            id=f"{name}/{m['phase']}/b{m['batch']}/{length}", run=name, phase=m["phase"], batch=int(m["batch"]),
            length=length, measured_s=float(m["median_s"]),
            spread=(float(m.get("p10_s", m["median_s"])), float(m.get("p90_s", m["median_s"]))),
            activated=m.get("activated_experts_per_layer"), shape=shape,
        ))
    return out


def load_cases(folder: Path) -> list[Case]:
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise CapsimError(f"{folder}: no run files (*.json)")
    return [c for f in files for c in cases_from_run(f)]


def peaks_for(target: Target, dtype: str) -> dict[str, float]:
    p = target.peak_flop_per_s
    if dtype not in p:
        raise CapsimError(f"{target.device_id}: no measured {dtype} peak (have {', '.join(p)})")
    return {"matmul": p[dtype], "attention": p[dtype], "vector": p.get("fp32", p[dtype])}


def predict_case(case: Case, target: Target, profile: EngineProfile, dtype: str = "fp32") -> float:
    """Predicted seconds of the case's step on one device of ``target``."""
    b, n = case.batch, case.length
    routing = {} if case.activated is None else {"activated": case.activated}
    kv = case.shape.act_bytes
    routing["mla_absorbed"] = profile.mla_absorbed >= 0.5
    if case.phase == "prefill":
        step = step_costs(case.shape, tokens=b * n, seqs=b, pairs=b * n * (n + 1) / 2, kv_read_tokens=0.0,
                          decode=False, kv_bytes_per_element=kv, **routing)
    else:
        step = step_costs(case.shape, tokens=b, seqs=b, pairs=b * (n + 1), kv_read_tokens=b * n, decode=True,
                          kv_bytes_per_element=kv, **routing)
    t = step_time(step, peak_flop_per_s=peaks_for(target, dtype),
                  bandwidth_bytes_per_s=target.memory_bandwidth_bytes_per_s,
                  ring_bandwidth_bytes_per_s=np.inf, alltoall_bandwidth_bytes_per_s=np.inf,
                  layers=case.shape.layers, moe_layers=case.shape.moe_layers, profile=profile)
    return float(t.step_s)
