"""The priced parts of a hardware entry: a system's components, or a bare accelerator / CPU x count.

Prices and TDPs come from the hardware database with the item's own source; DRAM is priced by capacity x
$/byte and a drive without its own price by capacity x $/byte (capsim/cap/cost_defaults.yaml). A part with no
price anywhere keeps ``unit_usd = None`` and is listed as unpriced by :func:`capsim.cap.cost.system_capex_usd`.
``prices`` (``--price NAME=USD``, by component name or item id) sets a unit price by hand.

Cloud price, like with like (:func:`cloud_prices`): an accelerator's ``price.cloud_usd_per_h`` in hardware_db is
an on-demand price of ONE device with the host share of its provider's instance (vCPUs, RAM) included, all from
one dated snapshot. A bare device costs devices x that price. A system costs (accelerators) x (its accelerator's
per-device price) when it is a *standard host*: host DRAM per accelerator at most
``standard_host_dram_bytes_per_accelerator`` (256 GiB: AWS p5.48xlarge, 2048 GiB for 8 GPUs), or its
accelerators carry their host on the module (:data:`PACKAGE_HOST_LINKS`, the GH200 superchip, whose price is the
whole module). Otherwise (an offload box with 1 TB of DRAM behind one GPU, or a DRAM capacity not stated) or when
an accelerator has no per-device price, the system's own whole-instance price is used if it has one. A system's
instance price (a different provider and date) is kept as the alternative and shown, not used, when the
per-device rule applies. CPU-only systems: their instance price, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from capsim.cap.assumptions import CostAssumptions
from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB
from capsim.hardware.schema import Accelerator, Cpu, System

USER = "--price"
# host links of accelerators whose host (CPU and its memory) is on the priced module itself: a GH200's Grace CPU
# and LPDDR5X are joined to the GPU by NVLink-C2C, and its per-device price is the whole superchip
PACKAGE_HOST_LINKS = frozenset({"nvlink-c2c"})
HOST_SHARE = "the per-GPU price includes the host share (vCPUs, RAM) of the provider's instance"
OWNED_BARE = "bare device: the host (CPU, DRAM, SSD, network) is not included; give a system for all parts"


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
    cloud: CloudPrice | None = None  # the price of the cloud basis (None: no cloud price)
    instance: CloudPrice | None = None  # the system's own whole-instance price (used only when cloud is it)
    host: dict | None = None  # the standard-host check of a system with accelerators
    notes: list[str] = field(default_factory=list)  # on every basis
    cloud_notes: list[str] = field(default_factory=list)  # on the cloud basis only
    owned_notes: list[str] = field(default_factory=list)  # on the owned basis only

    @property
    def cloud_price(self) -> tuple[float, str] | None:
        """(USD/h, source id) of the cloud basis."""
        return None if self.cloud is None else (self.cloud.usd_per_h, self.cloud.source)


@dataclass(frozen=True)
class CloudPrice:
    """An on-demand price per hour, with where and when it comes from."""

    usd_per_h: float  # of the whole system, or of all the bare devices
    source: str  # hardware_db source id
    basis: str  # "per-device": devices x the accelerator's per-GPU price | "instance": the system's own price
    as_published: str | None = None
    note: str | None = None  # the price's note in hardware_db
    per_device_usd_per_h: float | None = None  # per-device basis: the per-GPU price
    devices: int | None = None  # per-device basis: how many
    item: str | None = None  # per-device basis: the accelerator priced
    date: str | None = None  # ISO date of the price (see price_date)
    date_from: str | None = None  # where the date was read


_AS_OF = re.compile(r"\bas of (\d{4}-\d{2}-\d{2})\b")
_ISO = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")


def _iso(text: str | None) -> str | None:
    try:
        return date.fromisoformat(text).isoformat() if text else None
    except ValueError:
        return None


def price_date(note: str | None, source_id: str, source_title: str | None) -> tuple[str | None, str]:
    """The date of a price, by the first rule that gives a valid ISO date (YYYY-MM-DD):

    1. the price's own note, "as of YYYY-MM-DD" (the first such phrase);
    2. the title of its source, the last ISO date in it (a snapshot's "collected 2026-08-23");
    3. its source id's suffix "-YYYY-MM-DD";
    else (None, "undated").
    """
    m = _AS_OF.search(note or "")
    if m and _iso(m.group(1)):
        return _iso(m.group(1)), "price note's 'as of'"
    found = [d for d in _ISO.findall(source_title or "") if _iso(d)]
    if found:
        return _iso(found[-1]), "source title"
    m = re.search(r"-(\d{4}-\d{2}-\d{2})$", source_id)
    if m and _iso(m.group(1)):
        return _iso(m.group(1)), "source id"
    return None, "undated"


def _cloud(db: HardwareDB, quantity, basis: str, usd: float, **kw) -> CloudPrice:
    src = db.sources.get(quantity.source)
    when, where = price_date(quantity.note, quantity.source, getattr(src, "title", None))
    return CloudPrice(usd, quantity.source, basis, quantity.as_published, quantity.note, date=when, date_from=where,
                      **kw)


def _per_gpu(item):
    return getattr(getattr(item, "price", None), "cloud_usd_per_h", None)


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


def _host_check(db: HardwareDB, s: System, accel: list, limit: float | None) -> dict:
    """Is ``s`` a standard GPU host, i.e. may it be priced per accelerator like a cloud instance?"""
    n = sum(c.count for c in accel)
    out: dict = {"accelerators": n, "limit_bytes_per_accelerator": limit, "dram_bytes_per_accelerator": None}
    links = {getattr(db.items.get(c.item), "host_link", None) for c in accel}
    if links <= PACKAGE_HOST_LINKS:
        return out | {"standard": True, "why": "the host (CPU and its memory) is on the priced module ("
                      + ", ".join(sorted(links)) + "): the per-device price covers it"}
    drams = [c for c in s.components if c.role == "dram"]
    if any(c.capacity_bytes is None for c in drams):
        return out | {"standard": False, "why": "host DRAM capacity not stated in the system entry, so it cannot be "
                      "checked against the standard host"}
    per = sum(c.capacity_bytes.value * c.count for c in drams) / n
    out["dram_bytes_per_accelerator"] = per
    if limit is None:
        return out | {"standard": True, "why": "no standard-host limit set: every host counts as standard"}
    if per <= limit:
        return out | {"standard": True, "why": f"host DRAM {per / 2**30:,.0f} GiB per accelerator <= "
                      f"{limit / 2**30:,.0f} GiB (standard host)"}
    return out | {"standard": False, "why": f"host DRAM {per / 2**30:,.0f} GiB per accelerator > "
                  f"{limit / 2**30:,.0f} GiB of a standard host (the DRAM of an offload box is not in a per-GPU price)"}


def cloud_prices(db: HardwareDB, s: System, a: CostAssumptions) -> tuple[CloudPrice | None, CloudPrice | None,
                                                                          dict | None, list[str]]:
    """(price used on the cloud basis, the system's own instance price, the standard-host check, notes)."""
    q = s.price.cloud_usd_per_h if s.price else None
    instance = None if q is None else _cloud(db, q, "instance", q.value)
    accel = [c for c in s.components if c.role == "accelerator"]
    if not accel:  # a CPU-only system: its instance price, if any
        return instance, instance, None, []
    per = [(c, _per_gpu(db.items.get(c.item))) for c in accel]
    host = _host_check(db, s, accel, a.standard_host_dram_bytes_per_accelerator)
    why = [] if host["standard"] else [f"not a standard host: {host['why']}"]
    lacking = sorted({c.item for c, p in per if p is None})
    if lacking:
        why.append(f"no per-GPU cloud price for {', '.join(lacking)}")
    if why:
        fallback = ("its own instance price is used" if instance else
                    "and it has no instance price, so it has no cloud price (the owned basis prices its parts)")
        return instance, instance, host, [f"cloud: not priced per GPU: {'; '.join(why)}; {fallback}"]
    n = host["accelerators"]
    first = per[0][1]
    usd = sum(c.count * p.value for c, p in per)
    used = _cloud(db, first, "per-device", usd, per_device_usd_per_h=usd / n, devices=n,
                  item=", ".join(sorted({c.item for c in accel})))
    notes = [f"cloud: {n} x {usd / n:g} USD/h per GPU ({used.source}, {used.date or 'undated'}); {HOST_SHARE}; "
             + host["why"]]
    if instance:
        notes.append(f"cloud: the system's own instance price {instance.usd_per_h:g} USD/h ({instance.source}, "
                     f"{instance.date or 'undated'}) is shown, not used: another provider and date, not like with like")
    return used, instance, host, notes


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
        cloud, instance, host, notes = cloud_prices(db, item, a)
        return HardwareParts(item.id, "system", parts, units, _q(price.purchase_usd if price else None),
                             _q(item.power_w), cloud, instance, host, cloud_notes=notes)
    if isinstance(item, Accelerator | Cpu):
        n = devices or 1
        role = "accelerator" if isinstance(item, Accelerator) else "cpu"
        parts = _apply_prices(item.id, [_device_part(item.id, role, item, n)], prices)
        q = _per_gpu(item)
        cloud = None if q is None else _cloud(db, q, "per-device", q.value * n, per_device_usd_per_h=q.value,
                                              devices=n, item=item.id)
        cloud_notes = [] if cloud is None else [
            f"bare device, cloud basis: {n} x {q.value:g} USD/h per device ({cloud.source}, "
            f"{cloud.date or 'undated'}); {HOST_SHARE}"]
        return HardwareParts(item.id, "device", parts, n, None, None, cloud, cloud_notes=cloud_notes,
                             owned_notes=[OWNED_BARE])
    raise CapsimError(f"--hardware {name}: {item.id} is a {item.kind}; expected a system, an accelerator or a CPU")
