"""A system as a networkx graph of devices, memory tiers and links.

Nodes are component instances (``gpu0``, ``cpu1``, ``dram0``, ``nvme0``,
``nvswitch0``); an accelerator node is also its own memory tier (HBM, GDDR or
unified memory). Edges are directed, one per direction of a full-duplex link,
carrying ``bandwidth_bytes_per_s`` (per direction, x the number of parallel
links) and ``latency_s``. Each DRAM instance is joined to the CPU of the same
index by an edge of the DRAM's own bandwidth (channels x per-channel rate).

Questions the graph answers (pure functions, no I/O):

* :func:`path` - bandwidth and latency between two memory tiers, optionally via
  waypoints (NVMe -> DRAM -> PCIe -> HBM is bounded by its slowest hop, tier
  bandwidths included);
* :func:`ring_bandwidth` - per-direction bandwidth of a ring among devices,
  with links that several ring hops share divided among them;
* :func:`alltoall_bandwidth` - bytes per second each device can send to all
  others at once, set by the most loaded link.

:func:`build_cluster` joins ``nodes`` copies of a system (node names prefixed
``n0/``, ``n1/``, ...) through one non-blocking fabric switch over the system's
``scale_out_link``, so the same questions span nodes (:func:`ring_collective`,
:func:`alltoall_collective`, :func:`transfer_collective` also name the bottleneck
link and the latency along the routes).
"""

from __future__ import annotations

import heapq
import math
import weakref
from collections import Counter
from dataclasses import dataclass

import networkx as nx

from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB
from capsim.hardware.schema import Accelerator, Component, Link, Memory, Storage, System

TIER_ROLES = ("accelerator", "dram", "storage")  # nodes that hold data; never routed through
FABRIC = "fabric"  # the scale-out switch joining the nodes of a cluster (modelled non-blocking)


def _instances(comp: Component) -> list[str]:
    return [f"{comp.name}{i}" for i in range(comp.count)]


def _pairs(a: list[str], b: list[str], how: str, same: bool) -> list[tuple[str, str]]:
    if how == "auto":
        if same:
            how = "all-pairs"
        elif len(a) == len(b):
            how = "one-to-one"
        elif len(b) == 1 or len(a) == 1:
            how = "all-to-one"
        elif len(a) % len(b) == 0 or len(b) % len(a) == 0:
            how = "blocked"
        else:
            raise ValueError(f"cannot map {len(a)} onto {len(b)} instances automatically; set map")
    if how == "one-to-one":
        if len(a) != len(b):
            raise ValueError(f"one-to-one needs equal counts, got {len(a)} and {len(b)}")
        return list(zip(a, b, strict=True))
    if how == "all-to-one":
        if len(b) == 1:
            return [(x, b[0]) for x in a]
        if len(a) == 1:
            return [(a[0], y) for y in b]
        raise ValueError("all-to-one needs one instance on one side")
    if how == "blocked":
        if len(a) < len(b):
            return [(y, x) for x, y in _pairs(b, a, "blocked", same)]
        per = len(a) // len(b)
        return [(x, b[i // per]) for i, x in enumerate(a)]
    if how == "all-pairs":
        return [(x, y) for i, x in enumerate(a) for y in (b[i + 1 :] if same else b) if x != y]
    raise ValueError(f"unknown map {how!r}")


def tier_bandwidth(comp: Component, db: HardwareDB) -> float:
    """Peak bandwidth of the memory tier a component holds (inf for cpu, switch, nic)."""
    item = db.items.get(comp.item) if comp.item else None
    if comp.role == "accelerator" and isinstance(item, Accelerator):
        return item.memory.bandwidth_bytes_per_s.value
    if comp.role == "dram":
        if comp.bandwidth_bytes_per_s is not None:
            return comp.bandwidth_bytes_per_s.value
        if isinstance(item, Memory) and comp.channels:
            return comp.channels * item.bandwidth_per_channel_bytes_per_s.value
        raise ValueError(f"dram component {comp.name!r} needs channels or bandwidth_bytes_per_s")
    if comp.role == "storage" and isinstance(item, Storage):
        return item.sequential_read_bytes_per_s.value
    return math.inf


def tier_capacity(comp: Component, db: HardwareDB) -> float | None:
    item = db.items.get(comp.item) if comp.item else None
    if comp.capacity_bytes is not None:
        return comp.capacity_bytes.value
    if isinstance(item, Accelerator):
        return item.memory.capacity_bytes.value
    if isinstance(item, Storage) and item.capacity_bytes is not None:
        return item.capacity_bytes.value
    return None


def _add_edge(g: nx.DiGraph, u: str, v: str, bw: float, lat: float, link: str) -> None:
    for x, y in ((u, v), (v, u)):
        if g.has_edge(x, y):  # parallel links between the same pair add up
            g[x][y]["bandwidth_bytes_per_s"] += bw
        else:
            g.add_edge(x, y, bandwidth_bytes_per_s=bw, latency_s=lat, link=link)


def build_graph(system: System, db: HardwareDB) -> nx.DiGraph:
    """The system's topology graph; raises CapsimError naming the system and component on bad structure."""
    g = nx.DiGraph(system=system.id)
    try:
        for comp in system.components:
            for node in _instances(comp):
                g.add_node(
                    node,
                    role=comp.role,
                    item=comp.item,
                    component=comp.name,
                    bandwidth_bytes_per_s=tier_bandwidth(comp, db),
                    capacity_bytes=tier_capacity(comp, db),
                )
        cpus = [c for c in system.components if c.role == "cpu"]
        for comp in system.components:
            if comp.role == "dram" and cpus:
                bw = tier_bandwidth(comp, db)
                for d, c in _pairs(_instances(comp), _instances(cpus[0]), "auto", same=False):
                    _add_edge(g, d, c, bw, 0.0, "memory-bus")
        for i, conn in enumerate(system.connections):
            link = db.items[conn.link]
            assert isinstance(link, Link)
            bw = link.bandwidth_per_direction_bytes_per_s.value * conn.count
            lat = link.latency_s.value if link.latency_s else 0.0
            a, b = system.instances(conn.a), system.instances(conn.b)
            try:
                pairs = _pairs(a, b, conn.map, same=conn.a == conn.b)
            except ValueError as err:
                raise CapsimError(f"system {system.id}: connections.{i} ({conn.a}-{conn.b}): {err}") from None
            for u, v in pairs:
                _add_edge(g, u, v, bw, lat, conn.link)
        _join_sockets(g, system, db, cpus)
    except ValueError as err:
        raise CapsimError(f"system {system.id}: {err}") from None
    return g


def _join_sockets(g: nx.DiGraph, system: System, db: HardwareDB, cpus: list[Component]) -> None:
    """The CPU sockets of a system joined pairwise by their item's ``socket_link`` (UPI, xGMI) where the system
    states no connection between them: cross-socket reads and collectives between sockets run over it."""
    if not cpus or cpus[0].count < 2:
        return
    item = db.items.get(cpus[0].item or "")
    link_id = getattr(item, "socket_link", None)
    sockets = _instances(cpus[0])
    if link_id is None or any(g.has_edge(a, b) for a in sockets for b in sockets if a != b):
        return
    link = db.items[link_id]
    assert isinstance(link, Link)
    lat = link.latency_s.value if link.latency_s else 0.0
    for i, a in enumerate(sockets):
        for b in sockets[i + 1:]:
            _add_edge(g, a, b, link.bandwidth_per_direction_bytes_per_s.value, lat, link_id)


def node_prefix(k: int) -> str:
    """Prefix of node ``k``'s names in a cluster graph ("n0/gpu3")."""
    return f"n{k}/"


def _nic_host_link(system: System, db: HardwareDB, nic: Component) -> tuple[float, float, str]:
    """Bandwidth, latency and id of the link that joins a NIC to its node (its PCIe slot)."""
    for conn in system.connections:
        ends = (system.instances(conn.a) or []) + (system.instances(conn.b) or [])
        if any(e.startswith(nic.name) and e[len(nic.name):].isdigit() for e in ends):
            link = db.items[conn.link]
            assert isinstance(link, Link)
            lat = link.latency_s.value if link.latency_s else 0.0
            return link.bandwidth_per_direction_bytes_per_s.value * conn.count, lat, conn.link
    raise CapsimError(f"system {system.id}: NIC component {nic.name!r} has no connection to its node")


def build_cluster(system: System, db: HardwareDB, nodes: int = 1) -> nx.DiGraph:
    """``nodes`` copies of the system joined by its ``scale_out_link`` (one graph; the system's own for 1).

    Node ``k``'s components are named ``n{k}/gpu0`` ...; every NIC joins the switch :data:`FABRIC` over
    the scale-out link (per direction, as one port; a non-blocking fabric, so only the NIC links are
    shared). Each accelerator reaches the fabric through the NIC mapped to it (one-to-one when the counts
    match, in blocks otherwise) over a link of the NIC's own host link (its PCIe slot): GPUDirect RDMA
    through the PCIe switch a GPU shares with its NIC, which the single-node graph leaves out. Collectives
    between nodes therefore run over each GPU's own NIC, as NCCL rings and DeepEP do on rail-optimised
    DGX clusters.
    """
    one = build_graph(system, db)
    if nodes == 1:
        return one
    if system.scale_out_link is None:
        raise CapsimError(f"system {system.id} has no scale_out_link to join nodes")
    link = db.items[system.scale_out_link]
    assert isinstance(link, Link)
    nic_comps = [c for c in system.components if c.role == "nic"]
    if not nic_comps:
        raise CapsimError(f"system {system.id}: scale_out_link is set but no component has role nic")
    bw = link.bandwidth_per_direction_bytes_per_s.value
    lat = link.latency_s.value if link.latency_s else 0.0
    g = nx.union_all([one] * nodes, rename=[node_prefix(k) for k in range(nodes)])
    g.graph.update(system=system.id, nodes=nodes)
    g.add_node(FABRIC, role="switch", item=None, component=FABRIC, bandwidth_bytes_per_s=math.inf,
               capacity_bytes=None)
    accs = [n for n, d in one.nodes(data=True) if d["role"] == "accelerator"]
    nics = [n for c in nic_comps for n in _instances(c)]
    rails: list[tuple[str, str]] = []
    if accs:
        try:
            rails = _pairs(accs, nics, "auto", same=False)
        except ValueError as err:
            raise CapsimError(f"system {system.id}: accelerators to NICs: {err}") from None
    rail_bw = {c.name: _nic_host_link(system, db, c) for c in nic_comps}
    for k in range(nodes):
        pre = node_prefix(k)
        for nic in nics:
            _add_edge(g, pre + nic, FABRIC, bw, lat, system.scale_out_link)
        for acc, nic in rails:
            rbw, rlat, rlink = rail_bw[g.nodes[pre + nic]["component"]]
            _add_edge(g, pre + acc, pre + nic, rbw, rlat, rlink)
    return g


@dataclass(frozen=True)
class Path:
    nodes: tuple[str, ...]
    bandwidth_bytes_per_s: float  # bottleneck over hops and memory tiers on the path
    latency_s: float  # sum of link latencies
    bottleneck: str  # the hop or tier that sets the bandwidth


def _node(g: nx.DiGraph, name: str) -> str:
    if name in g:
        return name
    if f"{name}0" in g:
        return f"{name}0"
    raise CapsimError(f"system {g.graph.get('system')}: no node {name!r} (have {', '.join(sorted(g))})")


_TREES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {source: {node: route}}


def _widest_tree(g: nx.DiGraph, src: str) -> dict[str, list[str]]:
    """Max-bottleneck routes from ``src`` to every node (fewest hops among equals, then node names), routed
    only through non-tier nodes. Cached per graph: graphs are not changed after they are built."""
    trees = _TREES.setdefault(g, {})
    if src in trees:
        return trees[src]
    best = {src: math.inf}
    done: dict[str, list[str]] = {}
    heap: list[tuple[float, int, str, list[str]]] = [(-math.inf, 0, src, [src])]
    while heap:
        neg_bw, hops, u, nodes = heapq.heappop(heap)
        if u in done:
            continue
        done[u] = nodes
        if u != src and g.nodes[u]["role"] in TIER_ROLES:
            continue
        for v, data in g[u].items():
            bw = min(-neg_bw, data["bandwidth_bytes_per_s"])
            if bw > best.get(v, -1.0):
                best[v] = bw
                heapq.heappush(heap, (-bw, hops + 1, v, [*nodes, v]))
    trees[src] = done
    return done


def _widest(g: nx.DiGraph, src: str, dst: str) -> list[str]:
    """Max-bottleneck path (fewest hops among equals) that routes only through non-tier nodes."""
    route = _widest_tree(g, src).get(dst)
    if route is None:
        raise CapsimError(f"system {g.graph.get('system')}: no path from {src} to {dst}")
    return route


def path(g: nx.DiGraph, src: str, dst: str, via: tuple[str, ...] | list[str] = ()) -> Path:
    """Bandwidth and latency from memory tier ``src`` to ``dst`` through the ``via`` tiers, in order."""
    stops = [_node(g, n) for n in (src, *via, dst)]
    nodes: list[str] = [stops[0]]
    for a, b in zip(stops, stops[1:], strict=False):
        nodes += _widest(g, a, b)[1:]
    limits: list[tuple[float, str]] = []
    for n in dict.fromkeys(stops):  # tiers on the path: endpoints and waypoints
        limits.append((g.nodes[n]["bandwidth_bytes_per_s"], n))
    latency = 0.0
    for u, v in zip(nodes, nodes[1:], strict=False):
        e = g[u][v]
        limits.append((e["bandwidth_bytes_per_s"], f"{u}->{v} ({e['link']})"))
        latency += e["latency_s"]
    bw, where = min(limits, key=lambda t: t[0])
    return Path(tuple(nodes), bw, latency, where)


@dataclass(frozen=True)
class Collective:
    bandwidth_bytes_per_s: float  # see the function that made it (inf: nothing to send)
    latency_s: float  # link latencies summed along the slowest route (0 where the database has none)
    bottleneck: str  # the directed link that sets the bandwidth, "u->v (link) shared by k" ("" if none)


def _flows(g: nx.DiGraph, flows: list[tuple[str, str]]) -> tuple[Counter, float]:
    """Directed-link loads (routes per link) and the largest route latency of concurrent ``flows``."""
    load: Counter = Counter()
    latency = 0.0
    for a, b in flows:
        nodes = _widest(g, a, b)
        hops = list(zip(nodes, nodes[1:], strict=False))
        for hop in hops:
            load[hop] += 1
        latency = max(latency, sum(g[u][v]["latency_s"] for u, v in hops))
    return load, latency


def _where(g: nx.DiGraph, edge: tuple[str, str], k: int) -> str:
    u, v = edge
    return f"{u}->{v} ({g[u][v]['link']})" + (f" shared by {k}" if k > 1 else "")


def transfer_collective(g: nx.DiGraph, flows: list[tuple[str, str]]) -> Collective:
    """Point-to-point sends all at once (``(src, dst)`` pairs): each gets the bandwidth of its most shared
    link divided among the routes on it; the answer is the slowest send's (B/s)."""
    pairs = [(_node(g, a), _node(g, b)) for a, b in flows if a != b]
    if not pairs:
        return Collective(math.inf, 0.0, "")
    load, latency = _flows(g, pairs)
    edge = min(load, key=lambda e: g[e[0]][e[1]]["bandwidth_bytes_per_s"] / load[e])
    return Collective(g[edge[0]][edge[1]]["bandwidth_bytes_per_s"] / load[edge], latency,
                      _where(g, edge, load[edge]))


def ring_collective(g: nx.DiGraph, groups: list[list[str]]) -> Collective:
    """Rings over each group (devices in the given order), all running at once: per-direction bandwidth
    of the slowest ring hop, a link carried by k hops giving each 1/k (B/s); latency of the slowest hop."""
    flows = [(a, b) for grp in groups if len(grp) > 1 for a, b in zip(grp, grp[1:] + grp[:1], strict=True)]
    return transfer_collective(g, flows)


def alltoall_collective(g: nx.DiGraph, devices: list[str]) -> Collective:
    """Bytes/s each device sends in an all-to-all where every device sends M bytes to every other.

    Time for the exchange is max over directed links of (flows on it x M / bandwidth);
    each device sends (n - 1) x M in that time. Latency: the longest route's.
    """
    devs = [_node(g, d) for d in devices]
    n = len(devs)
    if n < 2:
        return Collective(math.inf, 0.0, "")
    load, latency = _flows(g, [(a, b) for a in devs for b in devs if a != b])
    edge = max(load, key=lambda e: load[e] / g[e[0]][e[1]]["bandwidth_bytes_per_s"])
    worst = load[edge] / g[edge[0]][edge[1]]["bandwidth_bytes_per_s"]
    return Collective((n - 1) / worst, latency, _where(g, edge, load[edge]))


def ring_bandwidth(g: nx.DiGraph, devices: list[str]) -> float:
    """Per-direction bandwidth of a ring over ``devices`` in the given order (B/s).

    Each ring hop is routed on its widest path; a directed link carried by k hops
    gives each 1/k of its bandwidth; the ring runs at its slowest hop.
    """
    return ring_collective(g, [list(devices)]).bandwidth_bytes_per_s


def alltoall_bandwidth(g: nx.DiGraph, devices: list[str]) -> float:
    """Bytes/s each device sends in an all-to-all (:func:`alltoall_collective`)."""
    return alltoall_collective(g, devices).bandwidth_bytes_per_s


def devices(g: nx.DiGraph, role: str = "accelerator") -> list[str]:
    return [n for n, d in g.nodes(data=True) if d["role"] == role]
