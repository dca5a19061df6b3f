"""The layouts a provisioning query tries: where the model runs and how it is split.

A layout is a system (or a bare device) with a device count and a number of nodes, a tensor-parallel (TP) and
expert-parallel (EP) split, a weight format and an expert placement. The batch is chosen later
(:mod:`capsim.provision.search`). Enumerated, for each hardware id:

* device counts: powers of two up to the system's devices, and the system's own count (a part of a system is
  priced pro rata); for a bare device, powers of two up to ``MAX_BARE_DEVICES``;
* nodes: 1 to ``max_nodes`` copies of a whole system joined by its scale-out link (systems that have one);
* TP: 1 (attention data parallel), all devices of a node (data parallel across nodes), or all devices; EP: 1,
  or all devices;
* weight formats: those asked for (default: the checkpoint's own);
* placement: all weights on the devices, and, where asked, routed experts offloaded to host DRAM (one whole
  node: offload is priced for a single system).

Layouts the model cannot take (heads or experts that do not split, a format the device cannot compute in) are
dropped when they are resolved, with the reason counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB
from capsim.hardware.schema import System
from capsim.hardware.target import resolve_target

MAX_BARE_DEVICES = 8  # a bare device is tried 1, 2, 4, 8 at a time (one scale-up domain)
OFFLOAD_MODES = ("none", "cpu", "gpu-fetch")  # capsim.placement's modes, and "none" (all on the devices)


@dataclass(frozen=True)
class Layout:
    hardware: str
    devices: int  # per node
    nodes: int
    tp: int
    ep: int
    precision: str | None  # None: the checkpoint's own
    offload: str | None  # None, "cpu" or "gpu-fetch"

    @property
    def devices_total(self) -> int:
        return self.devices * self.nodes

    def label(self) -> str:
        where = f"{self.nodes}x {self.hardware}" if self.nodes > 1 else self.hardware
        split = f"TP{self.tp}" + (f" EP{self.ep}" if self.ep > 1 else "")
        prec = f", {self.precision}" if self.precision else ""
        off = f", experts {'on CPU' if self.offload == 'cpu' else 'fetched from host'}" if self.offload else ""
        return f"{where} ({self.devices_total} dev, {split}{prec}{off})"


def _powers_of_two_upto(n: int) -> list[int]:
    out, k = [], 1
    while k <= n:
        out.append(k)
        k *= 2
    return out


def device_counts(db: HardwareDB, hardware: str) -> tuple[list[int], bool, bool]:
    """(device counts to try, whether it can span nodes, whether it has a host tier for offload)."""
    t = resolve_target(db, hardware)
    item = db.items.get(t.hardware_id)
    if isinstance(item, System):
        full = t.n_available or t.n_devices
        counts = sorted(set(_powers_of_two_upto(full)) | {full})
        return counts, bool(item.scale_out_link), t.host is not None
    return _powers_of_two_upto(MAX_BARE_DEVICES), False, False


def enumerate_layouts(db: HardwareDB, hardware: list[str], precisions: list[str | None], max_nodes: int,
                      offloads: list[str]) -> list[Layout]:
    """Every layout of :mod:`this module's <capsim.provision.candidates>` rules, in a fixed order."""
    if max_nodes < 1:
        raise CapsimError(f"--max-nodes {max_nodes}: expected a positive integer")
    bad = [o for o in offloads if o not in OFFLOAD_MODES]
    if bad:
        raise CapsimError(f"--offload {bad[0]}: expected one of {', '.join(OFFLOAD_MODES)}")
    out: list[Layout] = []
    seen: set[Layout] = set()
    for hw in hardware:
        try:
            counts, multi_node, has_host = device_counts(db, hw)
        except CapsimError as err:
            raise CapsimError(f"--hardware {hw}: {err}") from None
        for prec in precisions:
            for devices in counts:
                node_range = range(1, max_nodes + 1) if multi_node and devices == counts[-1] else range(1, 2)
                for nodes in node_range:
                    n = devices * nodes
                    for tp in sorted({1, devices, n}):
                        for ep in sorted({1, n}):
                            for off in offloads:
                                mode = None if off == "none" else off
                                if mode and (not has_host or nodes > 1 or devices != counts[-1]):
                                    continue
                                lay = Layout(hw, devices, nodes, tp, ep, prec, mode)
                                if lay not in seen:
                                    seen.add(lay)
                                    out.append(lay)
    return out


def system_ids(db: HardwareDB) -> list[str]:
    """Every system in the database (the default candidates), sorted."""
    return sorted(k for k, v in db.items.items() if isinstance(v, System))
