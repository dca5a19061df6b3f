"""Topology graph: path, ring and all-to-all bandwidths with exact, hand-derived answers."""

import math
from pathlib import Path

import pytest

from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.hardware.topology import alltoall_bandwidth, build_graph, devices, path, ring_bandwidth

TOY = Path(__file__).parent / "data" / "toy_db"


@pytest.fixture(scope="module")
def toy():
    db, problems = hwdb.check(hwdb.BUILTIN_DB, TOY)
    toy_problems = [p for p in problems if str(TOY) in p.file]
    assert toy_problems == []
    return db, build_graph(db.items["toy-box"], db)


def test_path_bounded_by_slowest_hop(toy):
    _, g = toy
    # nvme0 -> cpu0 (x4 link 8 GB/s) -> dram0 (8 ch x 40 GB/s = 320 GB/s) -> cpu0 -> gpu0 (PCIe 32 GB/s);
    # the drive itself reads at 7 GB/s, the slowest hop.
    p = path(g, "nvme0", "gpu0", via=["dram0"])
    assert p.nodes == ("nvme0", "cpu0", "dram0", "cpu0", "gpu0")
    assert p.bandwidth_bytes_per_s == 7e9
    assert p.bottleneck == "nvme0"
    # DRAM of the other socket: dram1 -> cpu1 (320) -> cpu0 (socket link 40) -> gpu0 (PCIe 32) = 32 GB/s,
    # latency = socket link 2 us + PCIe 1 us (the memory bus has none).
    p = path(g, "dram1", "gpu0")
    assert p.nodes == ("dram1", "cpu1", "cpu0", "gpu0")
    assert p.bandwidth_bytes_per_s == 32e9
    assert math.isclose(p.latency_s, 3e-6)


def test_ring_shares_links(toy):
    _, g = toy
    gpus = devices(g)
    # Ring 0->1->2->3->0: each GPU's PCIe uplink and downlink carry one hop; the socket link carries
    # one hop per direction (1->2 and 3->0). Slowest: PCIe 32 GB/s.
    assert ring_bandwidth(g, gpus) == 32e9


def test_alltoall_most_loaded_link(toy):
    _, g = toy
    gpus = devices(g)
    # 12 flows. gpu0 -> cpu0 carries gpu0's 3 flows: 3 / 32 GB/s. cpu0 -> cpu1 carries the
    # 2 x 2 = 4 flows from {gpu0, gpu1} to {gpu2, gpu3}: 4 / 40 GB/s = 0.1 s/GB, the worst.
    # Each GPU sends 3 messages in that time: 3 / 0.1 = 30 GB/s.
    assert math.isclose(alltoall_bandwidth(g, gpus), 30e9)


def test_unknown_node_is_clear_error(toy):
    _, g = toy
    with pytest.raises(CapsimError, match="no node 'gpu9'"):
        path(g, "gpu9", "gpu0")
