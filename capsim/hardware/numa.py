"""How one engine instance uses the CPU sockets of a system: threads per socket, and one instance spanning
two sockets (``--socket-layout span``) with its weight pages interleaved over their DRAM.

Spanning two sockets (llama.cpp ``--numa distribute``, ``numactl --interleave=all``): every matmul is split over
the threads of both sockets, so each socket reads half of the weight rows, B/2 of a step's B bytes; with pages
interleaved, half of those are in its own DRAM and half in the other socket's. Each DRAM then serves
B/4 + B/4 = B/2 (at D per socket) and the socket link carries B/4 each way (at L per direction):

    t = max(B / (2 D), B / (4 L))   ->   an effective bandwidth of min(2 D, 4 L)

A dual Xeon 6980P with DDR5-6400 (D = 614.4 GB/s) and six UPI 2.0 links (L = 288 GB/s): min(1228.8, 1152) =
1152 GB/s, link-bound: 6% short of the two sockets' DRAM. Compute adds up over both sockets.

Threads: an instance on T threads of a socket of C cores computes at min(T, C) / C of its peak (one thread per
core; hyper-threads share a core's vector pipes). Its DRAM bandwidth is left as it is: no per-core bandwidth
figure is in the database.
"""

from __future__ import annotations

import math
from dataclasses import replace

from capsim.errors import CapsimError
from capsim.hardware.target import Target

SPAN_SOCKETS = 2  # the interleaved two-socket case derived above
DRAM_SHARE, LINK_SHARE = 2.0, 4.0  # B / (2 D) and B / (4 L)


def span(t: Target) -> Target:
    """The two sockets of ``t`` (a CPU target of 2 devices, its ring over the socket link) as one device."""
    if t.device_role != "cpu" or t.n_devices != SPAN_SOCKETS or t.nodes != 1:
        raise CapsimError(f"--socket-layout span: needs the {SPAN_SOCKETS} CPU sockets of one system "
                          f"(--sockets {SPAN_SOCKETS}), got {t.n_devices} {t.device_role} device(s)")
    link = t.ring_bandwidth_bytes_per_s
    if not math.isfinite(link):
        raise CapsimError(f"--socket-layout span: {t.hardware_id}'s sockets have no socket link in the database")
    bw = min(DRAM_SHARE * t.memory_bandwidth_bytes_per_s, LINK_SHARE * link)
    bound = "the socket link" if LINK_SHARE * link < DRAM_SHARE * t.memory_bandwidth_bytes_per_s else "DRAM"
    n = SPAN_SOCKETS
    return replace(t, n_devices=1, devices_per_node=1, memory_capacity_bytes=t.memory_capacity_bytes * n,
                   threads=(t.threads or t.cores) * n,
                   memory_bandwidth_bytes_per_s=bw, peak_flop_per_s={k: v * n for k, v in t.peak_flop_per_s.items()},
                   cpu_paths={k: v * n for k, v in t.cpu_paths.items()}, ring_bandwidth_bytes_per_s=math.inf,
                   alltoall_bandwidth_bytes_per_s=math.inf, collective_link="none",
                   notes=[*t.notes, f"one instance over {n} sockets, pages interleaved: {bw / 1e9:.4g} GB/s = "
                          f"min(2 x DRAM, 4 x socket link per direction), bound by {bound} (capsim.hardware.numa)"])


def with_threads(t: Target, threads: int) -> Target:
    """``t``'s CPU sockets computing on ``threads`` threads each."""
    if t.device_role != "cpu":
        raise CapsimError(f"--threads: {t.device_id} is not a CPU (threads apply to CPU sockets)")
    if not isinstance(threads, int) or threads < 1:
        raise CapsimError(f"--threads {threads}: expected a positive number of threads per socket")
    cores = t.cores or threads
    share = min(threads, cores) / cores
    return replace(t, peak_flop_per_s={k: v * share for k, v in t.peak_flop_per_s.items()}, threads=threads,
                   cpu_paths={k: v * share for k, v in t.cpu_paths.items()},
                   notes=[*t.notes, f"{threads} threads per socket of {cores} cores: {share:.3g} of its compute peak"])
