"""Accuracy for the CAP analysis: the cited table of published benchmark scores (capsim/catalogue/accuracy.yaml).

Only numbers read in a cited source are in the table. :func:`score` returns a cited number or a result whose
``value`` is None with the reason; it never makes one up. A precision with no published score (a quantised
format, say) gets the score of another precision only when ``allow_other_precision`` and then says so:
``precision_of_score`` differs from ``precision_requested`` and ``exact_precision`` is False.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from capsim.errors import CapsimError
from capsim.model import catalogue
from capsim.precision import PRECISIONS

TABLE = catalogue.CATALOGUE / "accuracy.yaml"
ALIASES = catalogue.CATALOGUE / "aliases.yaml"
AUTHORS = "authors"
_REQUIRED = ("model", "checkpoint", "precision", "precision_basis", "benchmark", "metric", "value", "as_published",
             "source", "evaluator")
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Score:
    model: str  # catalogue id (or, for imported results, the model name the file gives)
    checkpoint: str
    precision: str
    precision_basis: str  # "stated", "checkpoint", or how an imported file gave it
    benchmark: str
    metric: str
    value: float  # fraction: 0.706 for 70.6%
    as_published: str
    source: str  # id in the table's sources, or the path of an imported file
    evaluator: str
    shots: int | None = None
    stderr: float | None = None
    note: str | None = None

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ScoreResult:
    model: str
    benchmark: str
    precision_requested: str
    value: float | None  # None: no published score
    score: Score | None = None
    precision_of_score: str | None = None
    exact_precision: bool = False
    reason: str | None = None  # why there is no value, or what to keep in mind about it
    alternatives: list[Score] = field(default_factory=list)  # other published rows for the same benchmark


def normalise(benchmark: str) -> str:
    """Key for matching benchmark names: 'ARC-Challenge', 'arc_challenge' and 'ARC Challenge' are the same."""
    return re.sub(r"[^a-z0-9]", "", benchmark.lower())


def _published_fraction(text: str) -> float | None:
    m = _NUMBER.match(str(text))
    return None if m is None else float(m.group(1)) / 100.0


def _check_row(i: int, row: Any, sources: dict[str, Any], ids: set[str]) -> Score:
    where = f"{TABLE}: scores.{i}"
    if not isinstance(row, dict):
        raise CapsimError(f"{where}: expected a mapping with {', '.join(_REQUIRED)}")
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        raise CapsimError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(row) - set(Score.__dataclass_fields__))
    if unknown:
        raise CapsimError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if row["model"] not in ids:
        raise CapsimError(f"{where}.model: {row['model']!r} is not a catalogue id")
    if row["source"] not in sources:
        raise CapsimError(f"{where}.source: unknown source {row['source']!r}")
    if row["precision"] not in PRECISIONS:
        raise CapsimError(f"{where}.precision: unknown precision {row['precision']!r}")
    published = _published_fraction(row["as_published"])
    if published is None or not math.isclose(published, float(row["value"]), abs_tol=1e-9):
        raise CapsimError(f"{where}.value: {row['value']!r} does not match as_published {row['as_published']!r} "
                          "(value is the published percentage / 100)")
    return Score(**row)


@cache
def load_table(path: Path = TABLE) -> tuple[tuple[Score, ...], dict[str, dict[str, Any]]]:
    """The published scores and their sources, checked (catalogue ids, sources, value vs as_published)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise CapsimError(f"{path}: cannot read the accuracy table ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("scores"), list) or not isinstance(data.get("sources"), dict):
        raise CapsimError(f"{path}: expected top-level 'sources' (mapping) and 'scores' (list)")
    ids = set(catalogue.entries())
    rows = tuple(_check_row(i, r, data["sources"], ids) for i, r in enumerate(data["scores"]))
    return rows, data["sources"]


@cache
def _same_shape() -> dict[str, str]:
    """Names of models that share a catalogue entry's shape but are different models (DeepSeek-R1)."""
    out = {}
    for _mid, entry in (yaml.safe_load(ALIASES.read_text(encoding="utf-8")) or {}).items():
        names = (entry or {}).get("same_shape", [])
        canonical = next((n for n in names if "/" in n), names[0] if names else None)
        for n in names:
            out[n.lower()] = canonical
    return out


def model_key(name: str) -> str:
    """The table's model key for ``name``: a catalogue id; a same-shape model keeps its own name; else ``name``."""
    q = name.strip()
    if q.lower() in _same_shape():
        return _same_shape()[q.lower()]
    try:
        return catalogue.resolve(q)
    except CapsimError:
        return q


def native_precision(model: str) -> str | None:
    e = catalogue.entries().get(model)
    return e["native_precision"] if e else None


def rows_for(model: str | None = None, benchmark: str | None = None, rows=None) -> list[Score]:
    """Published rows, optionally of one model (any name that resolves) and one benchmark."""
    rows = load_table()[0] if rows is None else rows
    key = model_key(model) if model else None
    b = normalise(benchmark) if benchmark else None
    return [r for r in rows if (key is None or r.model == key) and (b is None or normalise(r.benchmark) == b)]


def _rank(key: str, precision: str):
    return lambda r: (r.precision != precision, r.checkpoint != key, r.evaluator != AUTHORS)


def score(model: str, benchmark: str, precision: str | None = None, rows=None,
          allow_other_precision: bool = True) -> ScoreResult:
    """The published score of ``model`` on ``benchmark`` at ``precision`` (default: the checkpoint's own).

    Preference: the precision asked for, then the catalogue checkpoint itself (not its base/instruct sibling),
    then the model authors' own evaluation. No row: ``value`` None and ``reason`` says so.
    """
    key = model_key(model)
    prec = (precision or native_precision(key) or "bf16").lower()
    cands = rows_for(model, benchmark, rows)
    if not cands:
        table = TABLE.name if rows is None else "the rows given"
        return ScoreResult(key, benchmark, prec, None, reason=f"no published score for {key} on {benchmark} in {table} "
                           "(only cited numbers are kept; none was found for this model and benchmark)")
    ordered = sorted(cands, key=_rank(key, prec))
    best = ordered[0]
    exact = best.precision == prec
    if not exact and not allow_other_precision:
        have = ", ".join(sorted({r.precision for r in cands}))
        return ScoreResult(key, benchmark, prec, None, reason=f"no published score for {key} on {benchmark} at {prec} "
                           f"(published at: {have})", alternatives=ordered)
    notes = []
    if not exact:
        notes.append(f"no published score at {prec}; this is the {best.precision} score")
    if best.checkpoint != key:
        notes.append(f"score of the checkpoint {best.checkpoint}")
    if best.evaluator != AUTHORS:
        notes.append(f"evaluated by {best.evaluator}, not the model's authors")
    return ScoreResult(key, benchmark, prec, best.value, best, best.precision, exact, "; ".join(notes) or None,
                       ordered[1:])
