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

from capsim import precision
from capsim.engines import EngineProfile
from capsim.errors import CapsimError
from capsim.hardware.target import Target
from capsim.model.spec import spec_from_config
from capsim.sim.ops import Work
from capsim.sim.request import simulate_step
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
    from capsim.measure.run_file import read_run  # torch-free module scope

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


def case_scenario(case: Case, target: Target, profile: EngineProfile, dtype: str = "fp32"):
    """The scenario of a case: its model shape on one device of ``target``, computing in ``dtype``."""
    from capsim.scenario import for_device

    return for_device(case.shape, target, profile, dtype, kv_bytes=case.shape.act_bytes, name=case.run)


def case_work(case: Case) -> Work:
    """What the case's step processes: a prefill pass of B prompts of n tokens, or a decode step of B sequences
    at context n (each new token attends to its n cached positions and itself)."""
    b, n = case.batch, case.length
    if case.phase == "prefill":
        return Work(tokens=b * n, seqs=b, pairs=b * n * (n + 1) / 2, kv_read_tokens=0.0, decode=False)
    return Work(tokens=b, seqs=b, pairs=b * (n + 1), kv_read_tokens=b * n, decode=True)


def predict_case(case: Case, target: Target, profile: EngineProfile, dtype: str = "fp32") -> float:
    """Predicted seconds of the case's step on one device of ``target``, with the routing the run recorded."""
    routing = None if case.activated is None else {"activated": case.activated}
    _, t = simulate_step(case_scenario(case, target, profile, dtype), case_work(case), routing)
    return float(t.step_s)
