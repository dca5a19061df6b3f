"""The assumptions of the CAP cost model: every default named, with its unit and its source.

Defaults live in ``capsim/cap/cost_defaults.yaml`` (see its header); :func:`load` reads them and
:meth:`CostAssumptions.with_overrides` replaces any of them, recording the override as the source.
SI inside: seconds, watts, USD, bytes; fractions are plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from capsim.errors import CapsimError
from capsim.hardware.quantity import evaluate_formula

DEFAULTS_FILE = Path(__file__).with_name("cost_defaults.yaml")
FIELDS = ("lifetime_s", "utilisation", "pue", "usd_per_kwh", "idle_power_fraction", "dram_usd_per_byte",
          "ssd_usd_per_byte", "standard_host_dram_bytes_per_accelerator")
SECONDS_PER_YEAR = 365.25 * 86400.0


@dataclass(frozen=True)
class Provenance:
    """Where one assumption comes from."""

    source: str  # id in cost_defaults.yaml 'sources', a hardware_db source id, or "user override"
    kind: str  # vendor-spec | derived | estimate | assumption | user
    unit: str
    as_published: str | None = None
    note: str | None = None
    title: str | None = None  # of the source
    url: str | None = None


@dataclass(frozen=True)
class CostAssumptions:
    lifetime_s: float  # capital is written off evenly over this time
    utilisation: float  # fraction of the lifetime spent serving, in (0, 1]
    pue: float  # facility power / IT power (>= 1)
    usd_per_kwh: float
    idle_power_fraction: float  # idle draw / full-load draw, in [0, 1]
    dram_usd_per_byte: float | None
    ssd_usd_per_byte: float | None  # used for drives whose own item has no price
    # a system is priced per GPU on the cloud basis only with at most this host DRAM per accelerator
    standard_host_dram_bytes_per_accelerator: float | None
    provenance: dict[str, Provenance] = field(default_factory=dict, compare=False)

    def with_overrides(self, flags: dict[str, str] | None = None, **values: float | None) -> CostAssumptions:
        """These assumptions with some replaced (None leaves one as it is); each checked and marked as user input.
        ``flags`` names the command-line flag of a field, for error messages."""
        given = {k: v for k, v in values.items() if v is not None}
        for k in given:
            if k not in FIELDS:
                raise CapsimError(f"unknown cost assumption {k!r} (have {', '.join(FIELDS)})")
        new = replace(self, **given)
        _check(new, flags or {})
        prov = dict(self.provenance)
        for k in given:
            prov[k] = Provenance(source="user override", kind="user", unit=self.provenance[k].unit)
        return replace(new, provenance=prov)

    def table(self) -> dict[str, dict[str, Any]]:
        """Every assumption with its value, unit and source (the report's ``assumptions``)."""
        return {k: {"value": getattr(self, k), **{a: b for a, b in vars(self.provenance[k]).items() if b is not None}}
                for k in FIELDS}


_LIMITS = {  # field: (low, high, low inclusive, what is expected)
    "lifetime_s": (0.0, math.inf, False, "a positive time"),
    "utilisation": (0.0, 1.0, False, "a fraction in (0, 1]"),
    "pue": (1.0, math.inf, True, "a number >= 1"),
    "usd_per_kwh": (0.0, math.inf, True, "a price >= 0"),
    "idle_power_fraction": (0.0, 1.0, True, "a fraction in [0, 1]"),
    "dram_usd_per_byte": (0.0, math.inf, True, "a price >= 0"),
    "ssd_usd_per_byte": (0.0, math.inf, True, "a price >= 0"),
    "standard_host_dram_bytes_per_accelerator": (0.0, math.inf, True, "a size >= 0 in bytes"),
}


def _check(a: CostAssumptions, flags: dict[str, str] | None = None) -> None:
    for k, (low, high, incl, what) in _LIMITS.items():
        v = getattr(a, k)
        if v is None and k in ("dram_usd_per_byte", "ssd_usd_per_byte", "standard_host_dram_bytes_per_accelerator"):
            continue
        ok = isinstance(v, int | float) and math.isfinite(v) and (v >= low if incl else v > low) and v <= high
        if not ok:
            where = f"{flags[k]}: {k}" if flags and k in flags else k
            raise CapsimError(f"{where} {v!r}: expected {what}")


def _item_value(db, spec: dict[str, Any]) -> tuple[float, Provenance]:
    """A per-byte price derived from a hardware_db item (its purchase price over its capacity)."""
    item_id = spec["from_item"]
    item = db.items.get(item_id)
    price = getattr(getattr(item, "price", None), "purchase_usd", None)
    cap = getattr(item, "capacity_bytes", None)
    if price is None or cap is None or cap.value <= 0:
        raise CapsimError(f"{DEFAULTS_FILE}: from_item {item_id!r}: the item needs a purchase price and a capacity")
    src = db.sources.get(price.source)
    prov = Provenance(source=price.source, kind=spec.get("kind", "derived"), unit=spec.get("unit", ""),
                      as_published=f"{price.as_published} for {cap.as_published} ({item_id})",
                      note=spec.get("reason"), title=getattr(src, "title", None),
                      url=getattr(src, "url", None) or getattr(src, "document", None))
    return price.value / cap.value, prov


@cache
def _read_defaults() -> dict[str, Any]:
    try:
        data = yaml.safe_load(DEFAULTS_FILE.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise CapsimError(f"{DEFAULTS_FILE}: cannot read the cost defaults ({err})") from None
    if not isinstance(data, dict) or not {"sources", "defaults"} <= set(data):
        raise CapsimError(f"{DEFAULTS_FILE}: expected top-level 'sources' and 'defaults'")
    return data


def load(db=None) -> CostAssumptions:
    """The defaults of cost_defaults.yaml; ``db`` (a HardwareDB) resolves ``from_item`` entries (None: they stay unset)."""
    data = _read_defaults()
    sources, defaults = data["sources"], data["defaults"]
    values: dict[str, float | None] = {}
    prov: dict[str, Provenance] = {}
    for k in FIELDS:
        spec = defaults.get(k)
        if not isinstance(spec, dict):
            raise CapsimError(f"{DEFAULTS_FILE}: defaults.{k}: missing")
        if "from_item" in spec:
            if db is None:
                values[k], prov[k] = None, Provenance(source="none", kind="unset", unit=spec.get("unit", ""),
                                                      note="needs the hardware database")
            else:
                values[k], prov[k] = _item_value(db, spec)
            continue
        src_id = spec.get("source")
        if src_id not in sources:
            raise CapsimError(f"{DEFAULTS_FILE}: defaults.{k}.source: unknown source {src_id!r}")
        src = sources[src_id]
        values[k] = float(spec["value"])
        prov[k] = Provenance(source=src_id, kind=spec["kind"], unit=spec.get("unit", ""),
                             as_published=spec.get("as_published"), note=spec.get("reason") or spec.get("note"),
                             title=src.get("title"), url=src.get("url") or src.get("document"))
    a = CostAssumptions(**values, provenance=prov)
    _check(a)
    return a


def formula_problems() -> list[str]:
    """Defaults whose value does not follow from their published figure through their formula (should be none)."""
    out = []
    for k, spec in _read_defaults()["defaults"].items():
        if "x" in spec and "formula" in spec:
            expected = evaluate_formula(spec["formula"], float(spec["x"]))
            if not math.isclose(expected, float(spec["value"]), rel_tol=1e-9):
                out.append(f"{k}: {spec['formula']} with x = {spec['x']} gives {expected!r}, value is {spec['value']!r}")
    return out
