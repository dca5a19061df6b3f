"""One cost report: parts, capex, power, $/h, $/1M output tokens and J/token with every assumption and source.

Reads the hardware database (through :mod:`capsim.cap.parts`); the arithmetic is :mod:`capsim.cap.cost`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from capsim.cap import cost
from capsim.cap.assumptions import CostAssumptions
from capsim.cap.parts import CloudPrice, HardwareParts, Part, hardware_parts
from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB

CAPEX_FROM = ("auto", "system", "parts")


def _share(hp: HardwareParts, devices: int | None) -> tuple[float, list[str]]:
    """Fraction of a system used when --devices is fewer than it has (price and power are pro-rated)."""
    if hp.kind != "system" or devices is None or devices == hp.units:
        return 1.0, []
    if not 1 <= devices <= hp.units:
        raise CapsimError(f"--devices {devices}: {hp.hardware_id} has {hp.units}")
    return devices / hp.units, [f"capex, power and cloud price pro-rated to {devices} of {hp.units} devices"]


def _capex(hp: HardwareParts, capex_from: str, share: float) -> dict[str, Any]:
    parts = cost.system_capex_usd(hp.parts)
    if capex_from not in CAPEX_FROM:
        raise CapsimError(f"--capex-from {capex_from}: expected one of {', '.join(CAPEX_FROM)}")
    if capex_from == "system" and hp.system_price is None:
        raise CapsimError(f"--capex-from system: no purchase price for the whole of {hp.hardware_id} in hardware_db")
    if capex_from != "parts" and hp.system_price is not None:
        usd, src = hp.system_price
        return {"usd": usd * share, "basis": "system purchase price (all parts included)", "source": src,
                "parts_priced_usd": parts.priced_usd * share, "unpriced_parts": list(parts.unpriced), "complete": True}
    return {"usd": None if parts.usd is None else parts.usd * share, "basis": "sum of parts (unit price x count)",
            "source": None, "parts_priced_usd": parts.priced_usd * share, "unpriced_parts": list(parts.unpriced),
            "complete": parts.complete}


def _power(hp: HardwareParts, share: float) -> dict[str, Any]:
    if hp.system_power is not None:
        w, src = hp.system_power
        return {"max_w": w * share, "basis": "system maximum power (published)", "source": src,
                "parts_without_power": [], "complete": True}
    missing = [p.name for p in hp.parts if p.unit_power_w is None]
    w = sum(p.unit_power_w * p.count for p in hp.parts if p.unit_power_w is not None)
    return {"max_w": w * share, "basis": "sum of part TDPs", "source": None, "parts_without_power": missing,
            "complete": not missing}


def _part_row(p: Part) -> dict[str, Any]:
    return asdict(p) | {"total_usd": p.total_usd}


def cost_report(db: HardwareDB, hardware: str, a: CostAssumptions, tokens_per_s: float, devices: int | None = None,
                cloud: bool = False, prices: dict[str, float] | None = None, capex_from: str = "auto") -> dict[str, Any]:
    """Capex, $/h, $/1M output tokens and J/token of ``hardware`` producing ``tokens_per_s`` output tokens/s."""
    if not (tokens_per_s > 0 and math.isfinite(tokens_per_s)):
        raise CapsimError(f"--tokens-per-s {tokens_per_s!r}: expected a positive rate")
    if devices is not None and devices < 1:
        raise CapsimError(f"--devices {devices}: expected a positive integer")
    hp = hardware_parts(db, hardware, a, devices, prices)
    share, notes = _share(hp, devices)
    capex, power = _capex(hp, capex_from, share), _power(hp, share)
    notes = list(hp.notes) + list(hp.cloud_notes if cloud else hp.owned_notes) + notes
    u, f = a.utilisation, a.idle_power_fraction
    p_avg = float(cost.average_power_w(power["max_w"], u, f))
    p_serving = float(cost.facility_power_per_serving_w(power["max_w"], u, f))
    out: dict[str, Any] = {
        "hardware": hp.hardware_id, "kind": hp.kind, "devices": devices if devices is not None else hp.units,
        "share_of_system": share, "output_tokens_per_s": tokens_per_s, "capex": capex,
        "power": power | {"average_w": p_avg, "idle_fraction": f, "utilisation": u},
        "joules_per_output_token": float(cost.joules_per_token(p_serving, tokens_per_s, a.pue)),
        "joules_per_output_token_basis": "facility: P_avg / u x PUE / tokens/s (PUE and idle hours included)",
        "joules_per_output_token_it": float(cost.joules_per_token(power["max_w"], tokens_per_s)),
    }
    if not power["complete"]:
        notes.append("no power figure for " + ", ".join(power["parts_without_power"]) + ": their draw is not counted")
    if cloud:
        if hp.cloud is None:
            raise CapsimError(f"--cloud: no cloud price for {hp.hardware_id} in hardware_db"
                              + "".join(f"; {n.removeprefix('cloud: ')}" for n in hp.cloud_notes))
        per_h = float(cost.cloud_hourly_cost_usd(hp.cloud.usd_per_h * share, u))
        out["cost_basis"] = _cloud_basis(db, hp, share)
    elif capex["usd"] is None:
        per_h = None
        out["cost_basis"] = {"basis": "owned", "missing": "capex: no price for " + ", ".join(capex["unpriced_parts"])
                             + "; pass --price NAME=USD for each" + (", or --cloud" if hp.cloud else "")}
    else:
        per_h = float(cost.hourly_cost_usd(capex["usd"], a.lifetime_s, u, p_avg, a.pue, a.usd_per_kwh))
        capital = capex["usd"] / (a.lifetime_s / cost.SECONDS_PER_HOUR) / u
        out["cost_basis"] = {"basis": "owned", "usd_per_h_capital": capital, "usd_per_h_energy": per_h - capital,
                             "formula": "(capex / lifetime_h + P_avg[kW] x PUE x $/kWh) / utilisation"}
    out["usd_per_h"] = per_h
    out["usd_per_million_output_tokens"] = (None if per_h is None
                                            else float(cost.usd_per_million_tokens(per_h, tokens_per_s)))
    out["cloud_prices"] = {"used": _price_row(db, hp.cloud, share), "instance": _price_row(db, hp.instance, share),
                           "standard_host": hp.host}
    out["parts"] = [_part_row(p) for p in hp.parts]
    out["assumptions"] = a.table()
    out["sources"] = _sources(db, out)
    out["notes"] = notes
    return out


def _price_row(db: HardwareDB, c: CloudPrice | None, share: float = 1.0) -> dict[str, Any] | None:
    """A cloud price with its source, title, URL and date; USD/h pro-rated by ``share``."""
    if c is None:
        return None
    src = db.sources.get(c.source)
    return {"usd_per_h": c.usd_per_h * share, "basis": c.basis, "source": c.source,
            "source_title": getattr(src, "title", None),
            "source_url": getattr(src, "url", None) or getattr(src, "document", None),
            "price_date": c.date, "price_date_from": c.date_from, "as_published": c.as_published, "note": c.note,
            "per_device_usd_per_h": c.per_device_usd_per_h,
            "devices": None if c.devices is None else c.devices * share, "item": c.item}


def _cloud_basis(db: HardwareDB, hp: HardwareParts, share: float) -> dict[str, Any]:
    used = _price_row(db, hp.cloud, share)
    out = {"basis": "cloud", "usd_per_h_listed": used["usd_per_h"], "source": used["source"],
           "source_title": used["source_title"], "source_url": used["source_url"], "price_date": used["price_date"],
           "price_date_from": used["price_date_from"], "price_basis": used["basis"],
           "formula": "cloud $/h / utilisation (energy included in the price)"}
    if hp.cloud.basis == "per-device":
        out |= {"per_device_usd_per_h": used["per_device_usd_per_h"], "devices": used["devices"],
                "item": used["item"], "formula": "devices x per-GPU cloud $/h (host share included) / utilisation"}
    if hp.instance is not None:
        inst = _price_row(db, hp.instance, share)
        out |= {"instance_usd_per_h": inst["usd_per_h"], "instance_source": inst["source"],
                "instance_price_date": inst["price_date"], "instance_used": hp.cloud.basis == "instance"}
    return out


def _sources(db: HardwareDB, out: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Title and URL of every hardware_db source the report cites."""
    ids = {p["price_source"] for p in out["parts"]} | {p["power_source"] for p in out["parts"]}
    ids |= {out["capex"].get("source"), out["power"].get("source"), out.get("cost_basis", {}).get("source")}
    ids |= {(out["cloud_prices"].get(k) or {}).get("source") for k in ("used", "instance")}
    res = {}
    for s in sorted(i for i in ids if i and i in db.sources):
        src = db.sources[s]
        res[s] = {"title": src.title, "url": src.url or src.document}
    return res
