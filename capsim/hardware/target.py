"""The hardware a prediction runs on: N identical compute devices, their memory and the links between them.

``resolve_target`` turns a system id (its accelerators, or its CPU sockets when it
has none) or a bare device id (accelerator or CPU) into per-device figures in SI
units plus the collective bandwidths of the topology graph. Prices and power are
pro-rated to the devices used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB, resolve_id
from capsim.hardware.schema import Accelerator, Cpu, Link, System
from capsim.hardware.topology import alltoall_bandwidth, build_graph, devices, path, ring_bandwidth


@dataclass(frozen=True)
class HostTier:
    """The host side of an accelerator system, where offloaded experts live or run.

    ``cpu_*`` and ``dram_bandwidth_bytes_per_s`` add up over every socket (KTransformers' dual-socket mode
    copies the experts to each NUMA node, so each socket reads its own DRAM); ``to_device_bytes_per_s`` is
    the widest path from socket 0's DRAM to the first accelerator (PCIe or C2C), ``ssd_*`` the path from the
    first drive through DRAM to it (None without storage).
    """

    cpu_id: str
    sockets: int
    cpu_peak_flop_per_s: dict[str, float]
    dram_bandwidth_bytes_per_s: float
    dram_capacity_bytes: float | None
    to_device_bytes_per_s: float
    to_device_path: str
    ssd_to_device_bytes_per_s: float | None = None
    ssd_capacity_bytes: float | None = None


@dataclass(frozen=True)
class Target:
    hardware_id: str  # what the user named (system or device id)
    device_id: str  # the compute device item
    device_role: str  # "accelerator" or "cpu"
    n_devices: int
    n_available: int | None  # devices in the system; None for a bare device
    memory_capacity_bytes: float  # per device
    memory_bandwidth_bytes_per_s: float  # per device, peak
    memory_type: str
    peak_flop_per_s: dict[str, float]  # per device, dense
    ring_bandwidth_bytes_per_s: float  # per device per direction among the devices used (inf for 1)
    alltoall_bandwidth_bytes_per_s: float
    collective_link: str  # what carries collectives ("nvlink-4", "pcie-gen4-x16 via host", ...)
    host_dram_bytes: float | None = None  # host memory of the system (offload room), when known
    usd_per_h: float | None = None  # pro-rated
    usd_per_h_basis: str = ""  # "cloud" or "purchase"
    purchase_usd: float | None = None  # pro-rated
    power_w: float | None = None  # pro-rated
    notes: list[str] = field(default_factory=list)
    host: HostTier | None = None  # accelerator systems with CPUs and DRAM (offload); None otherwise


def _peaks(item: Accelerator | Cpu) -> dict[str, float]:
    return {dt: q.value for dt, q in item.peak_flop_per_s.items()}


def _bare_accelerator(db: HardwareDB, acc: Accelerator, n: int) -> Target:
    notes = []
    link_id = acc.scale_up_link or acc.host_link
    if n > 1 and link_id is None:
        raise CapsimError(f"--devices {n}: {acc.id} has no scale-up or host link to join devices; name a system")
    bw = math.inf
    if n > 1:
        link = db.items[link_id]
        assert isinstance(link, Link)
        bw = link.bandwidth_per_direction_bytes_per_s.value
        if acc.scale_up_link is None:
            link_id = f"{link_id} via host"
            notes.append(f"{n}x {acc.id} joined through the host ({link_id}); no switch modelled")
    price = acc.price.purchase_usd.value * n if acc.price and acc.price.purchase_usd else None
    host = None
    if acc.host_link is not None:  # an unknown host behind the device's own host link: enough for gpu-fetch
        hl = db.items[acc.host_link]
        assert isinstance(hl, Link)
        host = HostTier(cpu_id="", sockets=0, cpu_peak_flop_per_s={}, dram_bandwidth_bytes_per_s=math.inf,
                        dram_capacity_bytes=None, to_device_bytes_per_s=hl.bandwidth_per_direction_bytes_per_s.value,
                        to_device_path=f"host DRAM -> {acc.host_link} -> {acc.id} (host not in the database)")
    return Target(
        host=host,
        hardware_id=acc.id, device_id=acc.id, device_role="accelerator", n_devices=n, n_available=None,
        memory_capacity_bytes=acc.memory.capacity_bytes.value,
        memory_bandwidth_bytes_per_s=acc.memory.bandwidth_bytes_per_s.value, memory_type=acc.memory.type,
        peak_flop_per_s=_peaks(acc), ring_bandwidth_bytes_per_s=bw, alltoall_bandwidth_bytes_per_s=bw,
        collective_link=link_id or "none", purchase_usd=price, usd_per_h_basis="purchase" if price else "",
        power_w=acc.tdp_w.value * n, notes=notes,
    )


def _bare_cpu(cpu: Cpu, n: int) -> Target:
    if n != 1:
        raise CapsimError(f"--devices {n}: a bare CPU id is one socket; name a system for several sockets")
    cap = cpu.max_memory_bytes.value if cpu.max_memory_bytes else math.inf
    price = cpu.price.purchase_usd.value if cpu.price and cpu.price.purchase_usd else None
    return Target(
        hardware_id=cpu.id, device_id=cpu.id, device_role="cpu", n_devices=1, n_available=1,
        memory_capacity_bytes=cap, memory_bandwidth_bytes_per_s=cpu.memory_bandwidth_bytes_per_s.value,
        memory_type=cpu.memory_type or "unknown", peak_flop_per_s=_peaks(cpu), ring_bandwidth_bytes_per_s=math.inf,
        alltoall_bandwidth_bytes_per_s=math.inf, collective_link="none", purchase_usd=price,
        usd_per_h_basis="purchase" if price else "", power_w=cpu.tdp_w.value if cpu.tdp_w else None,
        notes=[] if cpu.max_memory_bytes else ["no maximum memory published: capacity not checked"],
    )


def _system(db: HardwareDB, sysm: System, n: int | None) -> Target:
    g = build_graph(sysm, db)
    role = "accelerator" if devices(g, "accelerator") else "cpu"
    nodes = devices(g, role)
    if not nodes:
        raise CapsimError(f"--hardware {sysm.id}: the system has no accelerator or CPU to run on")
    if n is None and role == "cpu" and len(nodes) > 1:
        n = 1  # sockets work apart unless asked (NUMA); --devices joins them over the socket link
        notes_default = [f"using 1 of {len(nodes)} CPU sockets (--devices {len(nodes)} for all)"]
    else:
        notes_default = []
    n = n or len(nodes)
    if n > len(nodes):
        raise CapsimError(f"--devices {n}: system {sysm.id} has {len(nodes)} {role}s")
    used = nodes[:n]
    item = db.items[g.nodes[used[0]]["item"]]
    notes: list[str] = list(notes_default)
    drams = devices(g, "dram")
    dram_total = sum(g.nodes[d]["capacity_bytes"] or 0.0 for d in drams) or None
    if role == "accelerator":
        assert isinstance(item, Accelerator)
        cap, bw = item.memory.capacity_bytes.value, item.memory.bandwidth_bytes_per_s.value
        mem_type = item.memory.type
    else:  # CPU-only system: each socket computes from its own DRAM tier
        assert isinstance(item, Cpu)
        socket_dram = [d for d in drams if g.has_edge(d, used[0])]
        if not socket_dram:
            raise CapsimError(f"--hardware {sysm.id}: {used[0]} has no DRAM attached")
        cap = g.nodes[socket_dram[0]]["capacity_bytes"] or math.inf
        bw = g.nodes[socket_dram[0]]["bandwidth_bytes_per_s"]
        mem_type = g.nodes[socket_dram[0]]["item"] or "dram"
        dram_total = None  # the DRAM is the device memory here
    ring = ring_bandwidth(g, used) if n > 1 else math.inf
    a2a = alltoall_bandwidth(g, used) if n > 1 else math.inf
    links = sorted({g[u][v]["link"] for u in used for v in g.successors(u)} - {"memory-bus"})
    share = n / len(nodes)
    usd_h = basis = purchase = None
    if sysm.price and sysm.price.cloud_usd_per_h:
        usd_h, basis = sysm.price.cloud_usd_per_h.value * share, "cloud"
    elif sysm.price and sysm.price.purchase_usd:
        purchase, basis = sysm.price.purchase_usd.value * share, "purchase"
    if share < 1 and basis:
        notes.append(f"price and power pro-rated to {n} of {len(nodes)} {role}s")
    host = _host_tier(g, db, used[0]) if role == "accelerator" else None
    return Target(
        host=host,
        hardware_id=sysm.id, device_id=item.id, device_role=role, n_devices=n, n_available=len(nodes),
        memory_capacity_bytes=cap, memory_bandwidth_bytes_per_s=bw, memory_type=mem_type,
        peak_flop_per_s=_peaks(item), ring_bandwidth_bytes_per_s=ring, alltoall_bandwidth_bytes_per_s=a2a,
        collective_link=", ".join(links) or "none", host_dram_bytes=dram_total, usd_per_h=usd_h,
        usd_per_h_basis=basis or "", purchase_usd=purchase,
        power_w=sysm.power_w.value * share if sysm.power_w else None, notes=notes,
    )


def _host_tier(g, db: HardwareDB, device: str) -> HostTier | None:
    cpus, drams, drives = devices(g, "cpu"), devices(g, "dram"), devices(g, "storage")
    if not cpus or not drams:
        return None
    cpu = db.items[g.nodes[cpus[0]]["item"]]
    assert isinstance(cpu, Cpu)
    peaks = {dt: v * len(cpus) for dt, v in _peaks(cpu).items()}
    dram_bw = sum(g.nodes[d]["bandwidth_bytes_per_s"] for d in drams)
    caps = [g.nodes[d]["capacity_bytes"] for d in drams]
    to_dev = path(g, drams[0], device)
    ssd_bw = ssd_cap = None
    if drives:
        ssd_bw = path(g, drives[0], device, via=(drams[0],)).bandwidth_bytes_per_s
        caps_ssd = [g.nodes[d]["capacity_bytes"] for d in drives]
        ssd_cap = sum(caps_ssd) if all(c is not None for c in caps_ssd) else None
    return HostTier(cpu_id=cpu.id, sockets=len(cpus), cpu_peak_flop_per_s=peaks, dram_bandwidth_bytes_per_s=dram_bw,
                    dram_capacity_bytes=sum(caps) if all(c is not None for c in caps) else None,
                    to_device_bytes_per_s=to_dev.bandwidth_bytes_per_s,
                    to_device_path=" -> ".join(to_dev.nodes) + f" (bound: {to_dev.bottleneck})",
                    ssd_to_device_bytes_per_s=ssd_bw, ssd_capacity_bytes=ssd_cap)


def resolve_target(db: HardwareDB, hardware: str, n_devices: int | None = None) -> Target:
    """A Target for a system, accelerator or CPU id (or alias); CapsimError with suggestions otherwise."""
    if n_devices is not None and n_devices < 1:
        raise CapsimError(f"--devices {n_devices}: expected a positive integer")
    pool = HardwareDB({k: v for k, v in db.items.items() if v.kind in ("system", "accelerator", "cpu")})
    item = db.items[resolve_id(pool, hardware, None)]
    if isinstance(item, System):
        return _system(db, item, n_devices)
    if isinstance(item, Accelerator):
        return _bare_accelerator(db, item, n_devices or 1)
    assert isinstance(item, Cpu)
    return _bare_cpu(item, n_devices or 1)
