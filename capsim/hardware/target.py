"""The hardware a prediction runs on: N identical compute devices, their memory and the links between them.

``resolve_target`` turns a system id (its accelerators, or its CPU sockets when it
has none) or a bare device id (accelerator or CPU) into per-device figures in SI
units plus the collective bandwidths of the topology graph. Prices and power are
pro-rated to the devices used. ``nodes`` > 1 takes that many copies of a system
joined over its scale-out link (:func:`capsim.hardware.topology.build_cluster`);
``n_devices`` is then per node. :func:`for_layout` prices the collectives of a
parallel layout (TP rings, EP all-to-all) and :func:`stage` cuts a pipeline stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from capsim.errors import CapsimError

if TYPE_CHECKING:  # the database, its schema and the topology graph are imported when a target is resolved
    from capsim.hardware.db import HardwareDB
    from capsim.hardware.schema import Accelerator, Cpu, System

IOPS_REQUEST_BYTES = 4096  # Storage.random_read_4k_iops counts 4 KiB reads


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
    ssd_id: str | None = None  # the first drive's item
    ssd_to_dram_bytes_per_s: float | None = None  # the drive's sequential read rate, bounded by its link to DRAM
    ssd_random_4k_bytes_per_s: float | None = None  # datasheet 4 KiB random-read IOPS x 4 KiB (None: not published)
    cpu_paths: dict[str, float] = field(default_factory=dict)  # peak per ISA path over every socket
    cores_per_socket: int = 0


@dataclass(frozen=True)
class PageFaults:
    """What the machine's OS charges per byte an allocator maps afresh (the CPU item's measured memory_faults;
    zero where none is measured: a GPU's caching allocator reuses its memory)."""

    first_touch_s_per_byte: float = 0.0
    refault_s_per_byte: float = 0.0  # beyond retained_free_bytes, on a machine that takes freed memory back
    retained_free_bytes: float = 0.0


def page_faults(cpu: Cpu) -> PageFaults:
    mf = cpu.memory_faults
    if mf is None:
        return PageFaults()
    return PageFaults(mf.first_touch_s_per_byte.value, mf.refault_s_per_byte.value if mf.refault_s_per_byte else 0.0,
                      mf.retained_free_bytes.value if mf.retained_free_bytes else 0.0)


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
    host_dram_bytes: float | None = None  # host memory of the system (one node's), when known
    power_w: float | None = None  # pro-rated
    notes: list[str] = field(default_factory=list)
    host: HostTier | None = None  # accelerator systems with CPUs and DRAM (offload); None otherwise
    nodes: int = 1  # copies of the system joined by its scale-out link
    devices_per_node: int | None = None  # None for a bare device
    ring_latency_s: float = 0.0  # link latencies along the slowest ring hop (0 where the database has none)
    alltoall_latency_s: float = 0.0  # along the longest all-to-all route
    ring_bottleneck: str = ""  # the link that sets the ring bandwidth
    alltoall_bottleneck: str = ""
    page_faults: PageFaults = PageFaults()  # a CPU device's measured page-fault costs
    graph: object = field(default=None, repr=False, compare=False)  # the topology graph (None for a bare device)
    used: tuple[str, ...] = field(default=(), repr=False)  # graph nodes of the devices used, node by node
    cpu_paths: dict[str, float] = field(default_factory=dict)  # a CPU device: peak per ISA path (capsim.hardware.isa)
    cores: int = 0  # a CPU device: cores per socket (0 elsewhere)
    threads: int = 0  # a CPU device: threads of one engine instance (0: one per core of one socket)
    # an accelerator's measured maximum achievable matmul FLOP/s per dtype (capsim.sim.peaks.achievable)
    achievable_matmul_flop_per_s: dict[str, float] = field(default_factory=dict)


def _peaks(item: Accelerator | Cpu) -> dict[str, float]:
    """Dense peak per dtype: the entry's own figures, and for a CPU the fastest ISA path of each dtype it
    publishes none for (:func:`cpu_paths`)."""
    own = {dt: q.value for dt, q in item.peak_flop_per_s.items()}
    if item.kind != "cpu":
        return own
    from capsim.hardware import isa

    paths = cpu_paths(item)
    derived = {dt: paths[name] for dt in isa.DTYPES if (name := isa.best(paths, dt)) is not None}
    return {**derived, **own}


def cpu_paths(cpu: Cpu) -> dict[str, float]:
    """Peak FLOP/s of each ISA path one socket has (:mod:`capsim.hardware.isa`): cores x clock x operations per
    cycle, at the sustained all-core clock, else the base clock; a probed machine with neither (a cloud VM) at
    the clock its measured fp32 peak implies on its fastest fp32 path."""
    from capsim.hardware import isa

    if cpu.simd is None:
        return {}
    sd = cpu.simd
    clock = cpu.all_core_clock_hz or cpu.base_clock_hz
    if clock is not None:
        hz = clock.value
    elif "fp32" in cpu.peak_flop_per_s:
        fp32 = isa.best(isa.path_peaks(sd.extensions, sd.fma_units, sd.datapath_bits, cpu.cores.value, 1.0), "fp32")
        if fp32 is None:
            return {}
        hz = cpu.peak_flop_per_s["fp32"].value / (cpu.cores.value * isa.ops_per_cycle(
            isa.PATHS[fp32], sd.fma_units, sd.datapath_bits))
    else:
        return {}
    return isa.path_peaks(sd.extensions, sd.fma_units, sd.datapath_bits, cpu.cores.value, hz)


def _bare_accelerator(db: HardwareDB, acc: Accelerator, n: int) -> Target:
    notes = []
    link_id = acc.scale_up_link or acc.host_link
    if n > 1 and link_id is None:
        raise CapsimError(f"--devices {n}: {acc.id} has no scale-up or host link to join devices; name a system")
    bw, lat = math.inf, 0.0
    if n > 1:
        link = db.items[link_id]
        assert link.kind == "link"
        bw = link.bandwidth_per_direction_bytes_per_s.value
        lat = link.latency_s.value if link.latency_s else 0.0
        if acc.scale_up_link is None:
            link_id = f"{link_id} via host"
            notes.append(f"{n}x {acc.id} joined through the host ({link_id}); no switch modelled")
    host = None
    if acc.host_link is not None:  # an unknown host behind the device's own host link: enough for gpu-fetch
        hl = db.items[acc.host_link]
        assert hl.kind == "link"
        host = HostTier(cpu_id="", sockets=0, cpu_peak_flop_per_s={}, dram_bandwidth_bytes_per_s=math.inf,
                        dram_capacity_bytes=None, to_device_bytes_per_s=hl.bandwidth_per_direction_bytes_per_s.value,
                        to_device_path=f"host DRAM -> {acc.host_link} -> {acc.id} (host not in the database)")
    return Target(
        host=host,
        hardware_id=acc.id, device_id=acc.id, device_role="accelerator", n_devices=n, n_available=None,
        memory_capacity_bytes=acc.memory.capacity_bytes.value,
        memory_bandwidth_bytes_per_s=acc.memory.bandwidth_bytes_per_s.value, memory_type=acc.memory.type,
        peak_flop_per_s=_peaks(acc), ring_bandwidth_bytes_per_s=bw, alltoall_bandwidth_bytes_per_s=bw,
        achievable_matmul_flop_per_s={dt: q.value for dt, q in acc.achievable_matmul_flop_per_s.items()},
        collective_link=link_id or "none", power_w=acc.tdp_w.value * n, notes=notes, ring_latency_s=lat, alltoall_latency_s=lat,
        ring_bottleneck=link_id or "", alltoall_bottleneck=link_id or "",
    )


def _bare_cpu(cpu: Cpu, n: int) -> Target:
    if n != 1:
        raise CapsimError(f"--devices {n}: a bare CPU id is one socket; name a system for several sockets")
    cap = cpu.max_memory_bytes.value if cpu.max_memory_bytes else math.inf
    return Target(
        hardware_id=cpu.id, device_id=cpu.id, device_role="cpu", n_devices=1, n_available=1,
        memory_capacity_bytes=cap, memory_bandwidth_bytes_per_s=cpu.memory_bandwidth_bytes_per_s.value,
        memory_type=cpu.memory_type or "unknown", peak_flop_per_s=_peaks(cpu), ring_bandwidth_bytes_per_s=math.inf,
        alltoall_bandwidth_bytes_per_s=math.inf, collective_link="none",
        power_w=cpu.tdp_w.value if cpu.tdp_w else None,
        notes=[] if cpu.max_memory_bytes else ["no maximum memory published: capacity not checked"],
        page_faults=page_faults(cpu), cpu_paths=cpu_paths(cpu), cores=int(cpu.cores.value),
    )


def _system(db: HardwareDB, sysm: System, n: int | None, nodes: int = 1) -> Target:
    from capsim.hardware.topology import (
        alltoall_collective,
        build_cluster,
        build_graph,
        devices,
        ring_collective,
    )

    g = build_cluster(sysm, db, nodes)
    one = build_graph(sysm, db) if nodes > 1 else g  # one node's graph: per-node figures and host tier
    role = "accelerator" if devices(one, "accelerator") else "cpu"
    per_node = devices(one, role)
    if not per_node:
        raise CapsimError(f"--hardware {sysm.id}: the system has no accelerator or CPU to run on")
    if n is None and role == "cpu" and len(per_node) > 1:
        n = 1  # sockets work apart unless asked (NUMA); --devices joins them over the socket link
        notes_default = [f"using 1 of {len(per_node)} CPU sockets (--devices {len(per_node)} for all)"]
    else:
        notes_default = []
    n = n or len(per_node)
    if n > len(per_node):
        raise CapsimError(f"--devices {n}: system {sysm.id} has {len(per_node)} {role}s" +
                          (" per node" if nodes > 1 else ""))
    all_nodes = devices(g, role)
    used = [d for k in range(nodes) for d in all_nodes[k * len(per_node):k * len(per_node) + n]]
    item = db.items[g.nodes[used[0]]["item"]]
    notes: list[str] = list(notes_default)
    drams = devices(one, "dram")
    dram_total = sum(one.nodes[d]["capacity_bytes"] or 0.0 for d in drams) or None
    if role == "accelerator":
        assert item.kind == "accelerator"
        # the system's own memory where its component states one (a unified-memory SoC sold in several sizes),
        # else the device's
        cap = one.nodes[per_node[0]].get("capacity_bytes") or item.memory.capacity_bytes.value
        bw = item.memory.bandwidth_bytes_per_s.value
        mem_type = item.memory.type
    else:  # CPU-only system: each socket computes from its own DRAM tier
        assert item.kind == "cpu"
        socket_dram = [d for d in drams if one.has_edge(d, per_node[0])]
        if not socket_dram:
            raise CapsimError(f"--hardware {sysm.id}: {per_node[0]} has no DRAM attached")
        cap = one.nodes[socket_dram[0]]["capacity_bytes"] or math.inf
        bw = one.nodes[socket_dram[0]]["bandwidth_bytes_per_s"]
        mem_type = one.nodes[socket_dram[0]]["item"] or "dram"
        dram_total = None  # the DRAM is the device memory here
    ring = ring_collective(g, [used])
    a2a = alltoall_collective(g, used)
    links = sorted({g[u][v]["link"] for u in used for v in g.successors(u)} - {"memory-bus"})
    if nodes > 1:
        links = [*links, sysm.scale_out_link] if sysm.scale_out_link not in links else links
        notes.append(f"{nodes} nodes of {sysm.id} joined by {sysm.scale_out_link} through one non-blocking switch")
    share = n / len(per_node)  # power pro rata (prices: capsim.cap, through the scenario's Pricer)
    host = _host_tier(one, db, per_node[0]) if role == "accelerator" else None
    return Target(
        host=host,
        hardware_id=sysm.id, device_id=item.id, device_role=role, n_devices=n * nodes,
        n_available=len(per_node) * nodes, memory_capacity_bytes=cap, memory_bandwidth_bytes_per_s=bw,
        memory_type=mem_type, peak_flop_per_s=_peaks(item), ring_bandwidth_bytes_per_s=ring.bandwidth_bytes_per_s,
        achievable_matmul_flop_per_s={dt: q.value for dt, q in getattr(item, "achievable_matmul_flop_per_s", {}).items()},
        alltoall_bandwidth_bytes_per_s=a2a.bandwidth_bytes_per_s, collective_link=", ".join(links) or "none",
        host_dram_bytes=dram_total,
        power_w=sysm.power_w.value * share * nodes if sysm.power_w else None, notes=notes, nodes=nodes,
        devices_per_node=n, ring_latency_s=ring.latency_s, alltoall_latency_s=a2a.latency_s,
        ring_bottleneck=ring.bottleneck, alltoall_bottleneck=a2a.bottleneck, graph=g, used=tuple(used),
        page_faults=page_faults(item) if item.kind == "cpu" else PageFaults(),
        cpu_paths=cpu_paths(item) if item.kind == "cpu" else {},
        cores=int(item.cores.value) if item.kind == "cpu" else 0,
    )


def _host_tier(g, db: HardwareDB, device: str) -> HostTier | None:
    from capsim.hardware.topology import devices, path

    cpus, drams, drives = devices(g, "cpu"), devices(g, "dram"), devices(g, "storage")
    if not cpus or not drams:
        return None
    cpu = db.items[g.nodes[cpus[0]]["item"]]
    assert cpu.kind == "cpu"
    peaks = {dt: v * len(cpus) for dt, v in _peaks(cpu).items()}
    dram_bw = sum(g.nodes[d]["bandwidth_bytes_per_s"] for d in drams)
    caps = [g.nodes[d]["capacity_bytes"] for d in drams]
    to_dev = path(g, drams[0], device)
    ssd_bw = ssd_cap = ssd_id = ssd_dram = ssd_4k = None
    if drives:
        ssd_bw = path(g, drives[0], device, via=(drams[0],)).bandwidth_bytes_per_s
        ssd_dram = path(g, drives[0], drams[0]).bandwidth_bytes_per_s
        caps_ssd = [g.nodes[d]["capacity_bytes"] for d in drives]
        ssd_cap = sum(caps_ssd) if all(c is not None for c in caps_ssd) else None
        drive = db.items[g.nodes[drives[0]]["item"]]
        assert drive.kind == "storage"
        ssd_id = drive.id
        if drive.random_read_4k_iops is not None:
            ssd_4k = drive.random_read_4k_iops.value * IOPS_REQUEST_BYTES
    return HostTier(cpu_id=cpu.id, sockets=len(cpus), cpu_peak_flop_per_s=peaks, dram_bandwidth_bytes_per_s=dram_bw,
                    dram_capacity_bytes=sum(caps) if all(c is not None for c in caps) else None,
                    to_device_bytes_per_s=to_dev.bandwidth_bytes_per_s,
                    to_device_path=" -> ".join(to_dev.nodes) + f" (bound: {to_dev.bottleneck})",
                    ssd_to_device_bytes_per_s=ssd_bw, ssd_capacity_bytes=ssd_cap, ssd_id=ssd_id,
                    ssd_to_dram_bytes_per_s=ssd_dram, ssd_random_4k_bytes_per_s=ssd_4k,
                    cpu_paths={k: v * len(cpus) for k, v in cpu_paths(cpu).items()}, cores_per_socket=int(cpu.cores.value))


def resolve_target(db: HardwareDB, hardware: str, n_devices: int | None = None, nodes: int = 1) -> Target:
    """A Target for a system, accelerator or CPU id (or alias); CapsimError with suggestions otherwise.
    ``nodes`` > 1: that many copies of a system over its scale-out link, ``n_devices`` per node."""
    if n_devices is not None and n_devices < 1:
        raise CapsimError(f"--devices {n_devices}: expected a positive integer")
    if not isinstance(nodes, int) or nodes < 1:
        raise CapsimError(f"--nodes {nodes}: expected a positive integer")
    from capsim.hardware.db import HardwareDB, resolve_id

    pool = HardwareDB({k: v for k, v in db.items.items() if v.kind in ("system", "accelerator", "cpu")})
    item = db.items[resolve_id(pool, hardware, None)]
    if nodes > 1 and not (item.kind == "system" and item.scale_out_link):
        have = sorted(k for k, v in db.items.items() if v.kind == "system" and v.scale_out_link)
        what = (f"system {item.id} has no scale_out_link (the NIC link that joins nodes)" if item.kind == "system"
                else f"{item.id} is a bare {item.kind}, not a system with a scale_out_link")
        raise CapsimError(f"--nodes {nodes}: {what}; name a system that has one "
                          f"({', '.join(have) or 'none in this database'})")
    if item.kind == "system":
        return _system(db, item, n_devices, nodes)
    if item.kind == "accelerator":
        return _bare_accelerator(db, item, n_devices or 1)
    assert item.kind == "cpu"
    return _bare_cpu(item, n_devices or 1)


def _priced(t: Target, used: list[str], rings: list[list[str]], alltoall: list[str]) -> Target:
    from capsim.hardware.topology import alltoall_collective, ring_collective

    ring, a2a = ring_collective(t.graph, rings), alltoall_collective(t.graph, alltoall)
    return replace(t, n_devices=len(used), used=tuple(used), ring_bandwidth_bytes_per_s=ring.bandwidth_bytes_per_s,
                   ring_latency_s=ring.latency_s, ring_bottleneck=ring.bottleneck,
                   alltoall_bandwidth_bytes_per_s=a2a.bandwidth_bytes_per_s, alltoall_latency_s=a2a.latency_s,
                   alltoall_bottleneck=a2a.bottleneck)


def for_layout(t: Target, tp: int, ep: int) -> Target:
    """``t`` with the collectives of a layout priced on its graph: a TP ring over each group of ``tp``
    consecutive devices (node by node, so a group of at most a node's devices stays inside it), all rings
    at once; the EP all-to-all over all devices used when ``ep`` > 1. Unused collectives are inf."""
    if t.graph is None:  # a bare device: every pair is joined by the same link
        return replace(t, ring_bandwidth_bytes_per_s=t.ring_bandwidth_bytes_per_s if tp > 1 else math.inf,
                       alltoall_bandwidth_bytes_per_s=t.alltoall_bandwidth_bytes_per_s if ep > 1 else math.inf)
    used = list(t.used)
    return _priced(t, used, [used[i:i + tp] for i in range(0, len(used), tp)], used if ep > 1 else [])


def stage(t: Target, pp: int) -> tuple[Target, float, str]:
    """The first of ``pp`` pipeline stages (``n / pp`` consecutive devices, node by node), the bandwidth of
    the hop between adjacent stages (B/s; every boundary sends at once, the slowest sets it) and what bounds
    it. A bare device's stages are joined by its link."""
    if pp == 1:
        return t, math.inf, ""
    from capsim.hardware.topology import transfer_collective

    size = t.n_devices // pp
    if t.graph is None:
        return replace(t, n_devices=size), t.ring_bandwidth_bytes_per_s, t.collective_link
    used = list(t.used)
    hop = transfer_collective(t.graph, [(used[k * size - 1], used[k * size]) for k in range(1, pp)])
    return _priced(t, used[:size], [used[:size]], used[:size]), hop.bandwidth_bytes_per_s, hop.bottleneck
