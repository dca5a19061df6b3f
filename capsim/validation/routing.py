"""Activated experts predicted beside published measurements (``capsim validate --routing``).

Rows: ``validation/published/activated_experts.yaml`` (each copied verbatim from its source with the URL and
the place in it; ROUTING_SOURCES.md lists the sources checked). For a row whose model capsim knows, the
distinct routed experts per MoE layer of a decode step of ``batch`` sequences are predicted with the routing
``--routing real`` chooses for that model (a real trace, a fitted model or the prior: the ``routing`` column)
and with uniform routing; error = predicted / measured - 1. Rows whose model capsim cannot price say why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from capsim import checks
from capsim.errors import CapsimError

ROWS_FILE = "published/activated_experts.yaml"
SAMPLES = 200  # batch compositions per row (replay.DEFAULT_SAMPLES)
# A published model id capsim has under its base name: the same architecture (experts, top-k, layers); the
# Instruct-2507 release of Qwen3-30B-A3B changed the weights, not the config's shape.
SAME_SHAPE_SUFFIXES = ("-Instruct-2507",)


def _version() -> str:
    from capsim import __version__

    return __version__


def load_rows(root: Path) -> list[dict[str, Any]]:
    path = root / ROWS_FILE
    data = checks.mapping(checks.read_yaml(path, "published activated-experts file"), str(path))
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise CapsimError(f"{path}: rows: expected a list of measurements")
    for i, r in enumerate(rows):
        checks.mapping(r, f"{path}: rows[{i}]")
        for key in ("id", "model", "batch", "activated_per_layer", "url"):
            if key not in r:
                raise CapsimError(f"{path}: rows[{i}]: missing {key}")
    return rows


def _catalogue_id(model: str) -> tuple[str | None, str]:
    from capsim.model.catalogue import load_spec

    for name in (model, *(model[: -len(s)] for s in SAME_SHAPE_SUFFIXES if model.endswith(s))):
        try:
            load_spec(name)
            return name, "" if name == model else f"priced as {name} (same shape)"
        except CapsimError:
            continue
    return None, "not in capsim's catalogue"


def predict_row(row: dict[str, Any]) -> dict[str, Any]:
    from capsim.model.catalogue import load_spec
    from capsim.sim.experts import expected_activated
    from capsim.traces import replay, sources
    from capsim.traces.format import open_trace

    out = {"id": row["id"], "model": row["model"], "batch": row["batch"], "measured": row["activated_per_layer"],
           "phase": row.get("phase", "not stated"), "url": row["url"], "where": row.get("where", "")}
    name, note = _catalogue_id(str(row["model"]))
    if name is None or str(row.get("batch_unit", "sequences")) != "sequences" or not isinstance(row["batch"], int):
        return {**out, "skipped": note if name is None else "batch not a number of sequences"}
    spec, info = load_spec(name)
    choice = sources.choose(sources.REAL, None, info["id"], info.get("config_hash"), spec.num_experts, spec.top_k,
                            spec.num_moe_layers)
    trace = open_trace(sources.trace_of(choice), verify=True)
    stats, notes = replay.decode_routing(trace, row["batch"], samples=SAMPLES)
    act = np.asarray(stats["activated"], float)
    uniform = float(expected_activated(spec.num_experts, spec.top_k, row["batch"]))
    measured = float(row["activated_per_layer"])
    return {**out, "note": "; ".join([x for x in (note, *notes) if x]), "routing": choice.kind,
            "routing_label": choice.label, "real": float(act.mean()), "real_p10": float(np.percentile(act, 10)),
            "real_p90": float(np.percentile(act, 90)), "uniform": uniform,
            "error_real": float(act.mean()) / measured - 1.0, "error_uniform": uniform / measured - 1.0}


def table(root: Path) -> dict[str, Any]:
    rows = [predict_row(r) for r in load_rows(root)]
    priced = [r for r in rows if "skipped" not in r]
    med = {k: float(np.median(np.abs([r[f"error_{k}"] for r in priced]))) if priced else None
           for k in ("real", "uniform")}
    return {"rows": rows, "median_abs_error_real": med["real"], "median_abs_error_uniform": med["uniform"],
            "priced": len(priced), "skipped": len(rows) - len(priced)}


def markdown(t: dict[str, Any], command: str = "capsim validate --routing") -> str:
    lines = ["# Activated experts: predicted vs published", "", f"Written by `{command}` (capsim {_version()}).", "",
             "Distinct routed experts per MoE layer at decode batch B (mean over layers). `real`: the routing "
             "`--routing real` chooses (kind in the column); `uniform`: E (1 - (1 - k/E)^B). Error = predicted / "
             "measured - 1. Rows: validation/published/activated_experts.yaml.", "",
             "| id | model | B | measured | real (p10-p90) | routing | error | uniform | error | source |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['id']} | {r['model']} | {r['batch']} | {r['measured']} | - | skipped: "
                         f"{r['skipped']} | - | - | - | [{r['where'][:40]}]({r['url']}) |")
            continue
        lines.append(f"| {r['id']} | {r['model']} | {r['batch']} | {r['measured']:.1f} | {r['real']:.1f} "
                     f"({r['real_p10']:.1f}-{r['real_p90']:.1f}) | {r['routing']} | {r['error_real']:+.0%} | "
                     f"{r['uniform']:.1f} | {r['error_uniform']:+.0%} | [source]({r['url']}) |")
    lines += ["", f"Median absolute error over {t['priced']} rows: real routing "
              f"{t['median_abs_error_real']:.0%}, uniform {t['median_abs_error_uniform']:.0%}"
              + (f"; {t['skipped']} rows skipped (model not priced)." if t["skipped"] else "."), ""]
    return "\n".join(lines)
