"""USD per hour of serving on a system (or part of one, or several nodes), from the CAP cost model
(:mod:`capsim.cap.report`); used by ``capsim provision`` and the cost columns of ``capsim sweep``.

Bases (``basis``):

* ``cloud``: the on-demand price over the utilisation assumed, like with like: devices x the accelerator's per-GPU
  price (host share included, one dated snapshot) for a bare device or a standard host, else the system's own
  instance price (:func:`capsim.cap.parts.cloud_prices`);
* ``owned``: capital over the lifetime plus energy at the facility, over the utilisation (every part priced;
  a system with an unpriced part has no owned price);
* ``auto`` (default): cloud where a price is listed, else owned;
* a price given per hardware id (``usd_per_h_given``) overrides both.

A part of a system (fewer devices than it has) is priced pro rata, as ``capsim cap cost --devices`` does.
N nodes cost N times one node; the fabric switch that joins them is not priced (no sourced price).
"""

from __future__ import annotations

from capsim.cap.assumptions import CostAssumptions
from capsim.cap.price import Price
from capsim.cap.report import cost_report
from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB, resolve_id
from capsim.hardware.target import resolve_target

BASES = ("auto", "cloud", "owned")
FABRIC_NOTE = "fabric switch between nodes not priced"


class Pricer:
    """Prices per (hardware, devices), cached: many layouts share one."""

    def __init__(self, db: HardwareDB, assumptions: CostAssumptions, basis: str = "auto",
                 prices: dict[str, float] | None = None, usd_per_h_given: dict[str, float] | None = None):
        if basis not in BASES:
            raise CapsimError(f"--cost-basis {basis}: expected one of {', '.join(BASES)}")
        self.db, self.a, self.basis = db, assumptions, basis
        self.prices, self.given = prices or {}, usd_per_h_given or {}
        self._cache: dict[tuple[str, int], Price] = {}

    def _one(self, hardware: str, devices: int, cloud: bool) -> Price:
        rep = cost_report(self.db, hardware, self.a, 1.0, devices=devices, cloud=cloud, prices=self.prices)
        per_h = rep["usd_per_h"]
        if per_h is None:
            missing = rep["cost_basis"].get("missing", "no price")
            return Price(None, "unpriced", missing.replace("pass --price NAME=USD for each",
                                                           "'capsim cap cost --price NAME=USD' prices a part"))
        if not cloud:
            return Price(per_h, "owned", str(rep["capex"].get("source") or "sum of parts"))
        b = rep["cost_basis"]
        what = (f"{b['devices']:g} x {b['per_device_usd_per_h']:g} USD/h per GPU, host share included"
                if b["price_basis"] == "per-device" else "the system's instance price")
        return Price(per_h, "cloud", f"{b['source']} ({b['price_date'] or 'undated'}): {what}")

    def node(self, hardware: str, devices: int) -> Price:
        key = (hardware, devices)
        if key not in self._cache:
            self._cache[key] = self._price(hardware, devices)
        return self._cache[key]

    def _price(self, hardware: str, devices: int) -> Price:
        for name in (hardware, resolve_id(self.db, hardware)):
            if name in self.given:
                units = _units(self.db, hardware)
                share = devices / units if units else devices  # a bare device: the price is per device
                return Price(self.given[name] * share, "given", f"--usd-per-hour {name}={self.given[name]:g}")
        if self.basis in ("auto", "cloud"):
            try:
                return self._one(hardware, devices, cloud=True)
            except CapsimError as err:
                if self.basis == "cloud":
                    return Price(None, "unpriced", str(err))
        return self._one(hardware, devices, cloud=False)

    def price(self, hardware: str, devices: int, nodes: int) -> Price:
        p = self.node(hardware, devices)
        if p.usd_per_h is None or nodes == 1:
            return p
        return Price(p.usd_per_h * nodes, p.basis, f"{p.detail}; {nodes} nodes, {FABRIC_NOTE}")


def _units(db: HardwareDB, hardware: str) -> int | None:
    """Devices in a system (None for a bare device: its given price is per device)."""
    return resolve_target(db, hardware).n_available


_DEFAULT: dict[int, tuple[HardwareDB, Pricer]] = {}  # id(db) -> (db, its Pricer with the default assumptions)


def default_pricer(db: HardwareDB) -> Pricer:
    """A Pricer with the default assumptions (capsim/cap/cost_defaults.yaml) and basis ``auto``, one per
    database (prices are cached inside it)."""
    from capsim.cap.assumptions import load

    held = _DEFAULT.get(id(db))
    if held is None or held[0] is not db:
        held = _DEFAULT[id(db)] = (db, Pricer(db, load(db)))
    return held[1]
