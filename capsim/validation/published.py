"""Published results as validation cases: each CSV row mapped to a scenario, or listed as unsupported with why.

The CSV (``validation/published/published_measurements.csv``) is a verbatim copy of the project's
reference table; ``scenarios.yaml`` beside it maps every row id. A row missing from the mapping, a
metric or unit this module does not know, or a scenario with an unknown key is an error (exit 2),
so no row is dropped silently.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capsim.engines import EngineProfile
from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB

SCENARIOS_FORMAT = "capsim-published-scenarios"
# Units the CSV uses -> (dimension, factor to SI). "per node" rows are rates of one node.
UNITS = {
    "tokens/s": ("rate", 1.0),
    "tokens/s per node (8 GPUs)": ("rate", 1.0),
    "ms": ("time", 1e-3),
    "s": ("time", 1.0),
    "s/token": ("time", 1.0),
}
# CSV metric -> (key of the prediction, dimension). Metrics without a key have no single-request
# prediction (max-load or per-node serving throughput) and can only sit in unsupported rows.
METRICS = {
    "prefill_tokens_per_s": ("prefill_tokens_per_s", "rate"),
    "decode_tokens_per_s_per_user": ("decode_tokens_per_s_per_user", "rate"),
    "decode_tokens_per_s_total": ("decode_tokens_per_s", "rate"),
    "ttft": ("ttft_s", "time"),
    "tpot_mean": ("tpot_s", "time"),
    "time_per_output_token": ("tpot_s", "time"),
    "output_tokens_per_s_total": ("output_tokens_per_s_total", "rate"),
    "prefill_input_tokens_per_s_per_node": ("prefill_tokens_per_s_per_node", "rate"),
    "decode_output_tokens_per_s_per_node": ("decode_tokens_per_s_per_node", "rate"),
}
SCENARIO_KEYS = {"model", "precision", "compute_dtype", "kv_precision", "hardware", "devices", "engine", "batch",
                 "input_len", "output_len", "tp", "ep", "offload", "expert_cache", "cache_policy", "expert_tier",
                 "host_sockets", "nodes", "dp", "pp", "socket_layout", "threads", "assumptions"}
REQUIRED_KEYS = {"model", "hardware", "engine", "batch", "input_len", "output_len"}


@dataclass(frozen=True)
class PublishedRow:
    id: str
    source: str
    metric: str
    value_si: float  # the published value in SI (tokens/s or s)
    value: float  # as published
    unit: str
    engine_text: str
    scenario: dict[str, Any] | None  # None when unsupported
    unsupported: str | None
    raw: dict[str, str] = field(repr=False, default_factory=dict)


def load_rows(csv_path: Path, scenarios_path: Path) -> list[PublishedRow]:
    try:
        with open(csv_path, newline="") as f:
            table = list(csv.DictReader(f))
    except OSError as err:
        raise CapsimError(f"{csv_path}: unreadable published table ({err})") from None
    need = {"id", "source", "metric", "value", "unit", "engine"}
    if not table or not need <= set(table[0]):
        raise CapsimError(f"{csv_path}: expected a CSV with columns {', '.join(sorted(need))}")
    mapping = _load_scenarios(scenarios_path)
    out = []
    for line, r in enumerate(table, start=2):
        rid = r["id"]
        where = f"{csv_path}:{line} ({rid})"
        if r["unit"] not in UNITS:
            raise CapsimError(f"{where}: unit {r['unit']!r} unknown (expected one of: {', '.join(UNITS)})")
        if r["metric"] not in METRICS:
            raise CapsimError(f"{where}: metric {r['metric']!r} unknown (expected one of: {', '.join(METRICS)})")
        dim, factor = UNITS[r["unit"]]
        key, metric_dim = METRICS[r["metric"]]
        if dim != metric_dim:
            raise CapsimError(f"{where}: unit {r['unit']!r} is a {dim}, but metric {r['metric']} is a {metric_dim}")
        try:
            value = float(r["value"])
        except ValueError:
            raise CapsimError(f"{where}: value {r['value']!r} is not a number") from None
        if rid not in mapping:
            raise CapsimError(f"{scenarios_path}: rows.{rid}: missing (every CSV row needs a scenario or "
                              f"'unsupported: <reason>')")
        entry = mapping[rid]
        unsupported = entry.get("unsupported")
        scenario = None if unsupported else _scenario(entry, f"{scenarios_path}: rows.{rid}")
        if scenario is not None and key is None:
            raise CapsimError(f"{scenarios_path}: rows.{rid}: metric {r['metric']} has no single-request "
                              f"prediction; mark the row unsupported")
        out.append(PublishedRow(rid, r["source"], r["metric"], value * factor, value, r["unit"], r["engine"],
                                scenario, unsupported, r))
    extra = set(mapping) - {r.id for r in out}
    if extra:
        raise CapsimError(f"{scenarios_path}: rows {', '.join(sorted(extra))} are not in {csv_path.name}")
    return out


def _load_scenarios(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CapsimError(f"{path}: unreadable scenarios file ({err})") from None
    if not isinstance(data, dict) or data.get("format") != SCENARIOS_FORMAT or data.get("version") != 1:
        raise CapsimError(f"{path}: expected format: {SCENARIOS_FORMAT}, version: 1")
    rows = data.get("rows")
    if not isinstance(rows, dict):
        raise CapsimError(f"{path}: rows: expected a mapping of row id to scenario")
    return rows


def _scenario(entry: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = set(entry) - SCENARIO_KEYS
    if unknown:
        raise CapsimError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (expected {', '.join(sorted(SCENARIO_KEYS))})")
    missing = REQUIRED_KEYS - set(entry)
    if missing:
        raise CapsimError(f"{where}: missing {', '.join(sorted(missing))}")
    return dict(entry)


def predict_row(row: PublishedRow, db: HardwareDB, profile: EngineProfile | None = None) -> float:
    """The row's metric predicted for its scenario, in SI (tokens/s or s)."""
    from capsim.predict import Query, predict

    sc = {k: v for k, v in row.scenario.items() if k != "assumptions"}
    try:
        # a published run fitted in its machine's memory; capsim prefills a batch's prompts at once, so an
        # engine that chunks its prefill (vLLM, SGLang) can hold batches whose unchunked activations would not
        result = predict(Query(**sc, check_memory=False), db, profile)
    except CapsimError as err:
        raise CapsimError(f"published row {row.id}: {err}") from None
    return float(result[METRICS[row.metric][0]])


def row_kind(scenario: dict[str, Any]) -> str:
    """"offload" (experts off the device), "multi-device" (more than one device or node) or "single-device"."""
    if scenario.get("offload"):
        return "offload"
    return "multi-device" if (scenario.get("devices") or 1) > 1 or (scenario.get("nodes") or 1) > 1 else "single-device"


def rows_table(rows: list[PublishedRow], predicted: dict[str, float], fitted: set[str]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r.scenario is None:
            continue
        p = predicted[r.id]
        dim, factor = UNITS[r.unit]
        out.append({"row": r.id, "engine": r.scenario["engine"], "model": r.scenario["model"],
                    "hardware": r.scenario["hardware"], "metric": r.metric, "unit": r.unit,
                    "subset": "fit" if r.id in fitted else "held-out", "kind": row_kind(r.scenario),
                    "predicted": p / factor, "published": r.value,
                    "error_pct": 100.0 * (p - r.value_si) / r.value_si})
    return out
