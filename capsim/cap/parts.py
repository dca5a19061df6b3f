"""The priced parts of a hardware entry: a system's components, or a bare accelerator / CPU x count.

Prices and TDPs come from the hardware database with the item's own source; DRAM is priced by capacity x
$/byte and a drive without its own price by capacity x $/byte (capsim/cap/cost_defaults.yaml). A part with no
price anywhere keeps ``unit_usd = None`` and is listed as unpriced by :func:`capsim.cap.cost.system_capex_usd`.
``prices`` (``--price NAME=USD``, by component name or item id) sets a unit price by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capsim.cap.assumptions import CostAssumptions
from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB
from capsim.hardware.schema import Accelerator, Cpu, System

USER = "--price"


@dataclass(frozen=True)
class Part:
    name: str  # component name of the system (or the item id of a bare device)
    role: str  # accelerator | cpu | dram | storage | nic | switch
    item: str | None
    count: int
    unit_usd: float | None  # None: no price known
    price_basis: str  # how unit_usd was obtained, or why there is none
    price_source: str | None = None  # hardware_db / cost-defaults source id, or "--price"
    unit_power_w: float | None = None  # TDP of one unit, None when the database has no figure
    power_source: str | None = None
    capacity_bytes: float | None = None  # per unit (DRAM, drives)

    @property
    def total_usd(self) -> float | None:
        return None if self.unit_usd is None else self.unit_usd * self.count


@dataclass(frozen=True)
class HardwareParts:
    hardware_id: str
    kind: str  # "system" or "device"
    parts: list[Part]
    units: int  # accelerators (else CPU sockets): what --devices counts
    system_price: tuple[float, str] | None = None  # (USD, source id) of the whole system
    system_power: tuple[float, str] | None = None  # (W, source id): published maximum power
    cloud_price: tuple[float, str] | None = None  # (USD/h, source id)
    notes: list[str] = field(default_factory=list)


def _q(quantity) -> tuple[float, str] | None:
    return None if quantity is None else (quantity.value, quantity.source)


def _price_of(item) -> tuple[float, str] | None:
    return _q(getattr(getattr(item, "price", None), "purchase_usd", None))


def _tdp(item) -> tuple[float | None, str | None]:
    q = getattr(item, "tdp_w", None)
    return (q.value, q.source) if q is not None else (None, None)


def _device_part(name: str, role: str, item, count: int) -> Part:
    price = _price_of(item)
    watts, wsrc = _tdp(item)
    if price:
        return Part(name, role, item.id, count, price[0], "item purchase price", price[1], watts, wsrc)
    return Part(name, role, item.id, count, None, f"no purchase price for {item.id} in hardware_db", None, watts, wsrc)


def _dram_part(comp, a: CostAssumptions) -> Part:
    cap = comp.capacity_bytes.value if comp.capacity_bytes is not None else None
    if cap is None:
        return Part(comp.name, "dram", comp.item, comp.count, None, "capacity not stated in the system entry")
    if a.dram_usd_per_byte is None:
        return Part(comp.name, "dram", comp.item, comp.count, None, "no DRAM $/byte", capacity_bytes=cap)
    return Part(comp.name, "dram", comp.item, comp.count, cap * a.dram_usd_per_byte, "capacity x DRAM $/byte",
                a.provenance["dram_usd_per_byte"].source, capacity_bytes=cap)


def _storage_part(comp, item, a: CostAssumptions) -> Part:
    own = item.capacity_bytes.value if item.capacity_bytes is not None else None
    cap = comp.capacity_bytes.value if comp.capacity_bytes is not None else own
    price = _price_of(item)
    if price and own and cap is not None and cap != own:
        return Part(comp.name, "storage", item.id, comp.count, price[0] / own * cap,
                    f"item price per byte x capacity ({item.id} is {own / 1e12:g} TB)", price[1], capacity_bytes=cap)
    if price:
        return Part(comp.name, "storage", item.id, comp.count, price[0], "item purchase price", price[1],
                    capacity_bytes=cap)
    if cap is None:
        return Part(comp.name, "storage", item.id, comp.count, None, "no price and no capacity")
    if a.ssd_usd_per_byte is None:
        return Part(comp.name, "storage", item.id, comp.count, None, "no SSD $/byte", capacity_bytes=cap)
    return Part(comp.name, "storage", item.id, comp.count, cap * a.ssd_usd_per_byte,
                f"capacity x SSD $/byte (no price for {item.id})", a.provenance["ssd_usd_per_byte"].source,
                capacity_bytes=cap)


def _system_parts(db: HardwareDB, s: System, a: CostAssumptions) -> list[Part]:
    parts = []
    for comp in s.components:
        item = db.items.get(comp.item) if comp.item else None
        if comp.role in ("accelerator", "cpu"):
            parts.append(_device_part(comp.name, comp.role, item, comp.count))
        elif comp.role == "dram":
            parts.append(_dram_part(comp, a))
        elif comp.role == "storage":
            parts.append(_storage_part(comp, item, a))
        elif comp.role == "nic":
            parts.append(_device_part(comp.name, "nic", item, comp.count))
        else:  # a switch: no item in the database
            parts.append(Part(comp.name, comp.role, comp.item, comp.count, None,
                              "no item (and no price) for the switch in hardware_db"))
    return parts


def _apply_prices(hw_id: str, parts: list[Part], prices: dict[str, float]) -> list[Part]:
    known = {p.name for p in parts} | {p.item for p in parts if p.item}
    for key, usd in prices.items():
        if key not in known:
            raise CapsimError(f"{USER} {key}={usd:g}: {hw_id} has no part named {key!r} (parts: {', '.join(sorted(known))})")
        if not usd >= 0:
            raise CapsimError(f"{USER} {key}={usd!r}: expected a price >= 0 in USD")
    out = []
    for p in parts:
        usd = prices.get(p.name, prices.get(p.item) if p.item else None)
        out.append(p if usd is None else Part(p.name, p.role, p.item, p.count, float(usd), "unit price given by hand",
                                              USER, p.unit_power_w, p.power_source, p.capacity_bytes))
    return out


def hardware_parts(db: HardwareDB, name: str, a: CostAssumptions, devices: int | None = None,
                   prices: dict[str, float] | None = None) -> HardwareParts:
    """The parts of system or device ``name`` (id or alias); a bare device counts ``devices`` (default 1)."""
    try:
        item = db.get(name)
    except CapsimError as err:
        raise CapsimError(f"--hardware: {err}") from None
    prices = prices or {}
    if isinstance(item, System):
        parts = _apply_prices(item.id, _system_parts(db, item, a), prices)
        accel = sum(p.count for p in parts if p.role == "accelerator")
        units = accel or sum(p.count for p in parts if p.role == "cpu")
        price = item.price
        return HardwareParts(item.id, "system", parts, units, _q(price.purchase_usd if price else None),
                             _q(item.power_w), _q(price.cloud_usd_per_h if price else None))
    if isinstance(item, Accelerator | Cpu):
        n = devices or 1
        role = "accelerator" if isinstance(item, Accelerator) else "cpu"
        parts = _apply_prices(item.id, [_device_part(item.id, role, item, n)], prices)
        cloud = _q(getattr(item.price, "cloud_usd_per_h", None) if item.price else None)
        if cloud:
            cloud = (cloud[0] * n, cloud[1])
        note = "bare device: the host (CPU, DRAM, SSD, network) is not included; give a system for all parts"
        return HardwareParts(item.id, "device", parts, n, None, None, cloud, [note])
    raise CapsimError(f"--hardware {name}: {item.id} is a {item.kind}; expected a system, an accelerator or a CPU")
