"""A published corpus fitted per engine and cross-validated by leaving one source out (``capsim validate --gpu``,
``--cpu-corpus``).

Corpus: every ``NAME.csv`` + ``NAME.scenarios.yaml`` pair in the spec's folder (the format of
``validation/published/``: each row verbatim from its source, each scenario with the assumptions made where the
source is silent), plus named rows of other files. Per engine a few parameters are fitted by least squares
(robust soft-L1 loss) on log(predicted / measured) over every supported row of that engine, shared across
hardware: a device enters only through the hardware database.

Cross-validation: a source is a row's URL (a PR, a blog post, a results table); each source's rows are predicted
by the profile fitted to every other source of the same engine. An engine whose rows all come from one source is
held out by model instead (each model's rows predicted by the fit to the others), then by hardware setup, then row
by row; the report says which.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from capsim import engines
from capsim.errors import CapsimError
from capsim.validation.fit import fit_parameters
from capsim.validation.published import PublishedRow, load_rows, predict_row

WITHIN = 0.25  # the share of rows within 25% is reported
FIT_TOLERANCE = 1e-4  # relative change of the cost or the parameters at which a fit stops (0.01% of an error)
# Robust loss on the log error: beyond a factor of 2 (ln 2) a row counts about linearly, not quadratically, so
# the few rows no mechanism explains do not set every parameter
FIT_LOSS, FIT_LOSS_SCALE = "soft_l1", 0.6931471805599453


@dataclasses.dataclass(frozen=True)
class Spec:
    title: str
    folder: str  # relative to validation/
    engines: tuple[str, ...]
    fit_names: dict[str, tuple[str, ...]]  # per engine, the parameters fitted
    command: str  # the command that fits (written into the profiles)
    regime: Callable[[PublishedRow], str]
    facts: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # per engine, set not fitted
    facts_note: str = "the ideal value (roofline)"
    extra: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (csv, scenarios, row ids) of other files
    ties: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # per engine, name -> fitted name

    def min_rows(self, engine: str) -> int:
        """Fewer rows than parameters + 1: a fit would be under-determined."""
        return len(self.fit_names[engine]) + 1


def load_corpus(root: Path, spec: Spec) -> list[PublishedRow]:
    """Every row of every corpus file pair, and the spec's rows of other files (ids unique across files)."""
    folder = root / spec.folder
    rows: list[PublishedRow] = []
    for csv_path in sorted(folder.glob("*.csv")):
        scen = csv_path.with_suffix(".scenarios.yaml")
        if not scen.is_file():
            raise CapsimError(f"{csv_path}: no {scen.name} beside it (every corpus CSV needs its scenarios)")
        rows += load_rows(csv_path, scen)
    for csv_name, scen_name, ids in spec.extra:
        rows += [r for r in load_rows(root / csv_name, root / scen_name) if r.id in ids]
    seen: set[str] = set()
    for r in rows:
        if r.id in seen:
            raise CapsimError(f"{folder}: row id {r.id} appears twice")
        seen.add(r.id)
    return rows


def first_url(text: str) -> str:
    """The first URL in ``text`` without fragment, query or trailing punctuation (``text`` itself if none)."""
    m = re.search(r"https?://\S+", text)
    return (m.group(0) if m else text).split("#")[0].split("?")[0].rstrip(").,;")


def source_key(row: PublishedRow) -> str:
    """The source a row came from: its first URL (rows of one PR, post or table share it)."""
    return first_url(row.source)


def _residuals(rows: list[PublishedRow], db):
    measured = np.array([r.value_si for r in rows])

    def fn(prof: engines.EngineProfile) -> np.ndarray:
        return np.log(np.array([predict_row(r, db, prof) for r in rows]) / measured)
    return fn


def fit(rows: list[PublishedRow], db, spec: Spec, engine: str) -> tuple[engines.EngineProfile, dict[str, Any]]:
    """The engine's profile with its fitted parameters fitted to ``rows`` (its supported rows)."""
    base = dataclasses.replace(engines.load(engine), **spec.facts.get(engine, {}))
    names = spec.fit_names[engine]
    ties = spec.ties.get(engine, {})
    resid = _residuals(rows, db)
    prof, info = fit_parameters(lambda p: resid(_tied(p, ties)), base, names, tolerance=FIT_TOLERANCE,
                                loss=FIT_LOSS, loss_scale=FIT_LOSS_SCALE)
    return _tied(prof, ties), info


def _not_fitted(engine: str) -> dict[str, str]:
    """The shipped profile's notes on the parameters set from a source (kept when it is refitted)."""
    import yaml

    path = engines.FOLDER / f"{engine}.yaml"
    notes = (yaml.safe_load(path.read_text()) or {}).get("not_fitted") if path.is_file() else None
    return {k: v for k, v in (notes or {}).items() if k != "every other parameter"}


def _tied(prof: engines.EngineProfile, ties: dict[str, str]) -> engines.EngineProfile:
    return dataclasses.replace(prof, **{k: getattr(prof, v) for k, v in ties.items()}) if ties else prof


def _setup(r: PublishedRow) -> str:
    sc = r.scenario
    return f"{sc['hardware']} x{sc.get('devices') or 1} sockets {sc.get('host_sockets') or '-'}"


HOLDOUT_KEYS = (("source", source_key), ("model", lambda r: str(r.scenario["model"])), ("hardware setup", _setup),
                ("row", lambda r: r.id))


def holdout_key(rows: list[PublishedRow]) -> tuple[str, Callable[[PublishedRow], str]]:
    """What is held out together: the source; where all rows share one, the model; then the hardware setup;
    last, each row."""
    return next((name, key) for name, key in HOLDOUT_KEYS if len({key(r) for r in rows}) > 1 or name == "row")


def cross_validate(rows: list[PublishedRow], db, spec: Spec, engine: str, progress=None) -> dict[str, float]:
    """Row id -> held-out error (predicted / measured - 1) from the profile fitted to the other groups."""
    _, key = holdout_key(rows)
    groups = sorted({key(r) for r in rows})
    out: dict[str, float] = {}
    for i, g in enumerate(groups):
        train = [r for r in rows if key(r) != g]
        if len(train) < len(spec.fit_names[engine]):  # at least as many rows as parameters (exactly determined)
            continue
        prof, _ = fit(train, db, spec, engine)
        for r in rows:
            if key(r) == g:
                out[r.id] = predict_row(r, db, prof) / r.value_si - 1.0
        if progress:
            progress(i + 1, len(groups))
    return out


def summary(errors: dict[str, float], rows: list[PublishedRow], regime) -> dict[str, dict[str, Any]]:
    """Per regime (and all): rows, median |error|, share within WITHIN, worst row and its error."""
    by_id = {r.id: r for r in rows}
    groups: dict[str, list[str]] = {"all": list(errors)} if errors else {}
    for rid in errors:
        groups.setdefault(regime(by_id[rid]), []).append(rid)
    out = {}
    for name, ids in groups.items():
        e = np.array([errors[i] for i in ids])
        worst = ids[int(np.argmax(np.abs(np.log1p(e))))]
        out[name] = {"rows": len(ids), "median_abs": float(np.median(np.abs(e))),
                     "within_25": float(np.mean(np.abs(e) <= WITHIN)), "worst_row": worst,
                     "worst_error": float(errors[worst]), "worst_factor": float(np.exp(np.max(np.abs(np.log1p(e)))))}
    return out


def run(root: Path, db, spec: Spec, *, refit: bool, progress=None) -> dict[str, Any]:
    """Fit (when ``refit``: and write the profiles) and cross-validate every engine of the corpus; ``progress``
    (engines done, engines) is called as each engine starts."""
    rows = load_corpus(root, spec)
    result: dict[str, Any] = {"engines": {}, "unsupported": [{"row": r.id, "reason": r.unsupported}
                                                              for r in rows if r.scenario is None], "rows": {}}
    for k, engine in enumerate(spec.engines):
        if progress:
            progress(k, len(spec.engines))
        mine = [r for r in rows if r.scenario is not None and r.scenario.get("engine") == engine]
        names = spec.fit_names[engine]
        if len(mine) < spec.min_rows(engine):
            result["engines"][engine] = {"rows": len(mine), "note": f"fewer than {spec.min_rows(engine)} rows: not fitted"}
            continue
        if refit:
            prof, info = fit(mine, db, spec, engine)
            ties = spec.ties.get(engine, {})
            tied = "; " + ", ".join(f"{k} = {v}" for k, v in ties.items()) if ties else ""
            prof = dataclasses.replace(prof, fitted_to=(
                f"{', '.join(names)} fitted (least squares on log error, rms {info['rms_log_error']:.3f}) to "
                f"{len(mine)} published rows of validation/{spec.folder}/ ({len({source_key(r) for r in mine})} "
                f"sources){tied}"), fitted_cases=tuple(r.id for r in mine))
            facts = ", ".join(spec.facts.get(engine, {}))
            engines.write(prof, {"not_fitted": {**_not_fitted(engine), **({facts: spec.facts_note} if facts else {}),
                                                "every other parameter": "as the profile states it"}},
                          command=spec.command)
        prof = engines.load(engine)
        fitted = {r.id: predict_row(r, db, prof) / r.value_si - 1.0 for r in mine}
        held = cross_validate(mine, db, spec, engine)
        by, _ = holdout_key(mine)
        result["engines"][engine] = {"rows": len(mine), "sources": len({source_key(r) for r in mine}), "held_out_by": by,
                                     "parameters": {n: getattr(prof, n) for n in names},
                                     "fit": summary(fitted, mine, spec.regime),
                                     "cross_validated": summary(held, mine, spec.regime)}
        for r in mine:
            result["rows"][r.id] = {"engine": engine, "model": r.scenario["model"], "hardware": r.scenario["hardware"],
                                    "metric": r.metric, "regime": spec.regime(r), "source": source_key(r),
                                    "published": r.value_si, "error_fit": fitted[r.id],
                                    "error_held_out": held.get(r.id)}
    return result
