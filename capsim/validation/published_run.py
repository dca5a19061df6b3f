"""``capsim validate --published``: fit each engine profile on its declared rows, predict every supported row.

The ``published`` section of validation/config.yaml names, per engine profile, the rows it is fitted
to (``fit_rows``), the parameters fitted (``fit``) and the parameters set from a source instead
(``fixed``, with ``fixed_sources`` saying where each value comes from). Every other supported row
is held out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from capsim import engines
from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB
from capsim.validation.fit import fit_parameters
from capsim.validation.published import PublishedRow, load_rows, predict_row, rows_table


def _engines_config(cfg: dict[str, Any], config_path: Path) -> dict[str, dict[str, Any]]:
    pub = cfg.get("published")
    if not isinstance(pub, dict) or not isinstance(pub.get("engines"), dict):
        raise CapsimError(f"{config_path}: published.engines: expected a mapping of engine profile to its fit")
    return pub["engines"]


def fit_engines(rows: list[PublishedRow], db: HardwareDB, cfg: dict[str, Any], config_path: Path) -> list[str]:
    """Refit every engine profile named in the config on its fit rows; write the profiles; return lines."""
    by_id = {r.id: r for r in rows}
    lines = []
    for name, spec in _engines_config(cfg, config_path).items():
        fit_ids = list(spec.get("fit_rows") or [])
        bad = [i for i in fit_ids if i not in by_id or by_id[i].scenario is None]
        if bad:
            raise CapsimError(f"{config_path}: published.engines.{name}.fit_rows: {', '.join(bad)} not a supported row")
        wrong = [i for i in fit_ids if by_id[i].scenario["engine"] != name]
        if wrong:
            raise CapsimError(f"{config_path}: published.engines.{name}.fit_rows: {', '.join(wrong)} use another engine")
        fixed = dict(spec.get("fixed") or {})
        # what the shipped profile states about the engine rather than fits (its kernels, its domain) carries over
        kept = {}
        if name in engines.available():
            shipped = engines.load(name)
            kept = {k: getattr(shipped, k) for k in ("cpu_kernels", "domain_devices", "domain_offload",
                                                        "domain_fitted_devices", "domain_fitted_on")}
        base = dataclasses.replace(engines.load("roofline"), id=name, version=int(spec.get("version", 1)),
                                   description=spec["description"], fitted_to="", **kept)
        base = engines.with_values(base, fixed, f"{config_path}: published.engines.{name}.fixed")
        names = list(spec.get("fit") or [])
        fit_rows = [by_id[i] for i in fit_ids]
        if names and not fit_rows:
            raise CapsimError(f"{config_path}: published.engines.{name}: parameters to fit but no fit_rows")
        published = np.array([r.value_si for r in fit_rows])

        def residuals(prof, fit_rows=fit_rows, published=published):
            return np.log(np.array([predict_row(r, db, prof) for r in fit_rows]) / published)

        if names:
            prof, info = fit_parameters(residuals, base, names)
            how = (f"{', '.join(names)} fitted (least squares on log error, rms {info['rms_log_error']:.3f}) to "
                   f"published rows {', '.join(fit_ids)}")
        else:
            prof, how = base, "nothing fitted"
        tied = spec.get("tied") or {}
        bad_tie = [f"{k}: {v}" for k, v in tied.items() if k not in engines.PARAMETERS or v not in engines.PARAMETERS]
        if bad_tie:
            raise CapsimError(f"{config_path}: published.engines.{name}.tied: unknown {', '.join(bad_tie)}")
        prof = dataclasses.replace(prof, **{k: getattr(prof, v) for k, v in tied.items()})
        if tied:
            how += "; " + ", ".join(f"{k} = {v}" for k, v in tied.items())
        prof = dataclasses.replace(prof, fitted_to=how, fitted_cases=tuple(fit_ids))
        extra = {"not_fitted": {k: (spec.get("fixed_sources") or {}).get(k, "set in validation/config.yaml")
                                for k in fixed}}
        path = engines.write(prof, extra, command="capsim validate --published --fit")
        lines.append(f"wrote {path.name}: {how}")
    return lines


def validate_published(db: HardwareDB, cfg: dict[str, Any], root: Path, config_path: Path,
                       fit: bool) -> dict[str, Any]:
    pub = cfg.get("published") or {}
    if not isinstance(pub, dict):
        raise CapsimError(f"{config_path}: published: expected a mapping (csv, scenarios, engines)")
    for key in ("csv", "scenarios"):
        if not isinstance(pub.get(key), str):
            raise CapsimError(f"{config_path}: published.{key}: expected a file path, got {pub.get(key)!r}")
    csv_path, scen_path = root / pub["csv"], root / pub["scenarios"]
    rows = load_rows(csv_path, scen_path)
    log = fit_engines(rows, db, cfg, config_path) if fit else []
    supported = [r for r in rows if r.scenario is not None]
    fitted: set[str] = set()
    for r in supported:
        prof = engines.load(r.scenario["engine"])
        fitted |= set(prof.fitted_cases)
    predicted = {r.id: predict_row(r, db) for r in supported}
    table = rows_table(rows, predicted, fitted)
    agg = {}
    groups = {"all": lambda t: True, "held-out": lambda t: t["subset"] == "held-out",
              "fit": lambda t: t["subset"] == "fit",
              # the offload and multi-GPU rows (memory tiers and parallelism)
              "offload + multi-device": lambda t: t["kind"] in ("offload", "multi-device"),
              "offload + multi-device, held-out": lambda t: t["kind"] in ("offload", "multi-device")
              and t["subset"] == "held-out"}
    for name, keep in groups.items():
        err = [abs(t["error_pct"]) for t in table if keep(t)]
        if err:
            agg[name] = {"rows": len(err), "median_abs_pct": float(np.median(err)), "max_abs_pct": float(np.max(err))}
    unsupported = [{"row": r.id, "engine": r.engine_text, "metric": r.metric, "reason": " ".join(r.unsupported.split())}
                   for r in rows if r.scenario is None]
    return {"rows": table, "aggregates": agg, "unsupported": unsupported, "log": log,
            "assumptions": {r.id: r.scenario.get("assumptions", []) for r in supported}}


def markdown(result: dict[str, Any], command: str) -> str:
    lines = ["# Validation against published results", "",
             f"Command: `{command}`. Rows: validation/published/published_measurements.csv (sources in its "
             "`source` column); scenarios: validation/published/scenarios.yaml.", "",
             "| subset | rows | median abs error | max abs error |", "|---|---|---|---|"]
    for k, v in result["aggregates"].items():
        lines.append(f"| {k} | {v['rows']} | {v['median_abs_pct']:.1f}% | {v['max_abs_pct']:.1f}% |")
    lines += ["", "| row | engine | model | hardware | metric | subset | kind | predicted | published | error |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for t in result["rows"]:
        lines.append(f"| {t['row']} | {t['engine']} | {t['model']} | {t['hardware']} | {t['metric']} | {t['subset']} "
                     f"| {t['kind']} | {t['predicted']:.4g} {t['unit']} | {t['published']:.4g} {t['unit']} | "
                     f"{t['error_pct']:+.1f}% |")
    lines += ["", "Assumptions where the source is silent:", ""]
    for rid, items in result["assumptions"].items():
        for a in items:
            lines.append(f"- {rid}: {' '.join(str(a).split())}")
    lines += ["", f"## Rows not supported yet ({len(result['unsupported'])})", "", "| row | engine | metric | reason |",
              "|---|---|---|---|"]
    for u in result["unsupported"]:
        lines.append(f"| {u['row']} | {u['engine']} | {u['metric']} | {u['reason']} |")
    return "\n".join(lines) + "\n"
