"""Pydantic models of hardware database items (one YAML file each in ``hardware_db/``).

Every number is a :class:`~capsim.hardware.quantity.Quantity` whose type fixes
its unit. Peak FLOP/s are DENSE per dtype; a vendor's 2:4-sparse figure is
stored halved as a derived value (the Quantity validator enforces it).
Structure (ids of other items, component counts of a system) are plain
values; a system cites where its composition comes from.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capsim.checks import MAX_COMPONENT_COUNT
from capsim.hardware.quantity import (
    Bytes,
    BytesPerS,
    Count,
    FlopPerS,
    Hertz,
    IoPerS,
    Seconds,
    SecondsPerByte,
    TransfersPerS,
    Usd,
    UsdPerH,
    Watts,
)

# Structural counts (components of a system, parallel links, channels, lanes, bus bits): whole numbers from 1 to
# MAX_COMPONENT_COUNT, so that expanding a system into graph nodes stays proportional to a real machine.
Units = Annotated[int, Field(ge=1, le=MAX_COMPONENT_COUNT, strict=True)]

KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

# Compute dtypes whose dense peak a device may publish. fp64 is the vector rate
# unless fp64-tensor is given; int8 and int4 are integer OP/s (1 multiply-add = 2 ops).
Dtype = Literal["fp64", "fp64-tensor", "fp32", "tf32", "fp16", "bf16", "fp8", "fp6", "int8", "fp4", "int4"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    purchase_usd: Usd | None = None  # list or street price of one unit
    cloud_usd_per_h: UsdPerH | None = None  # on-demand cloud price of one unit (or of the whole system)


class Item(_Strict):
    id: str
    kind: str
    name: str
    vendor: str
    aliases: list[str] = Field(default_factory=list)
    description: str | None = None
    price: Price | None = None
    notes: str | None = None

    @field_validator("id")
    @classmethod
    def _kebab(cls, v: str) -> str:
        if not KEBAB.match(v):
            raise ValueError(f"id {v!r} must be kebab-case (lower-case letters, digits and '-')")
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: list[str]) -> list[str]:
        for a in v:
            if a != a.lower() or " " in a:
                raise ValueError(f"alias {a!r} must be lower-case without spaces")
        return v


class DeviceMemory(_Strict):
    type: str  # "HBM3", "GDDR6X", "LPDDR5X"
    capacity_bytes: Bytes
    bandwidth_bytes_per_s: BytesPerS
    unified: bool = False  # shared with the CPU (Apple silicon, Ryzen AI Max, GH200's Grace side is separate)


class Accelerator(Item):
    kind: Literal["accelerator"]
    memory: DeviceMemory
    peak_flop_per_s: dict[Dtype, FlopPerS]  # DENSE
    # measured: the matmul rate its best GEMM reaches (maximum achievable matmul FLOP/s, dense), per dtype
    achievable_matmul_flop_per_s: dict[Dtype, FlopPerS] = Field(default_factory=dict)
    tdp_w: Watts
    host_link: str | None = None  # link id (e.g. pcie-gen5-x16, nvlink-c2c)
    scale_up_link: str | None = None  # link id of the per-device scale-up bundle (e.g. nvlink-4)
    compute_units: Count | None = None  # SMs / CUs / GPU cores
    l2_cache_bytes: Bytes | None = None
    boost_clock_hz: Hertz | None = None
    form_factor: str | None = None

    @model_validator(mode="after")
    def _has_a_peak(self) -> Accelerator:
        if not self.peak_flop_per_s:
            raise ValueError("peak_flop_per_s needs at least one dtype")
        for dt, q in self.achievable_matmul_flop_per_s.items():
            if dt not in self.peak_flop_per_s or q.value > self.peak_flop_per_s[dt].value:
                raise ValueError(f"achievable_matmul_flop_per_s.{dt}: expected at most the {dt} peak "
                                 "(peak_flop_per_s)")
        return self


class MemoryFaults(_Strict):
    """How this machine's OS backs fresh memory (measured by ``capsim probe``: cpu.memory.first_touch and
    cpu.memory.reclaim): what an engine on the CPU allocator pays per byte it maps afresh
    (:mod:`capsim.sim.eager_cpu`)."""

    first_touch_s_per_byte: SecondsPerByte  # fresh-page minus mapped-page write time per byte
    # a machine whose hypervisor takes freed memory back: refilling it beyond the retained bytes costs more
    refault_s_per_byte: SecondsPerByte | None = None
    retained_free_bytes: Bytes | None = None


# x86 and Arm ISA extensions an ISA path needs (Linux /proc/cpuinfo flag names; capsim.hardware.isa)
IsaExtension = Literal["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                       "avx_vnni", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimddp", "i8mm", "sve", "sve2",
                       "bf16"]


class Simd(_Strict):
    """A core's vector units, as its vendor (or a cited microarchitecture reference) states them: the ISA
    extensions, the FMA pipes per core and their datapath width (Zen 4 runs a 512-bit instruction on 256-bit
    pipes). :mod:`capsim.hardware.isa` turns them, the cores and the all-core clock into a peak per ISA path."""

    extensions: list[IsaExtension]
    fma_units: Units  # vector FMA pipes per core
    datapath_bits: Literal[128, 256, 512]
    source: str  # source id stating the extensions and the pipes
    note: str | None = None


class Cpu(Item):
    """A CPU socket. Base clock, memory type, channels and TDP may be left out (None) only in a
    measured entry of a machine whose parts are unknown (a cloud VM probed with ``capsim probe``)."""

    kind: Literal["cpu"]
    cores: Count
    threads: Count
    base_clock_hz: Hertz | None = None
    boost_clock_hz: Hertz | None = None
    memory_type: str | None = None  # memory item id (ddr5-4800)
    memory_channels: Count | None = None
    memory_bandwidth_bytes_per_s: BytesPerS  # peak per socket
    max_memory_bytes: Bytes | None = None
    peak_flop_per_s: dict[Dtype, FlopPerS] = Field(default_factory=dict)  # DENSE; AVX-512 / AMX where published
    l3_cache_bytes: Bytes | None = None
    pcie_lanes: Count | None = None
    pcie_link: str | None = None  # link id of its x16 slots
    socket_link: str | None = None  # link id between sockets (UPI, xGMI)
    tdp_w: Watts | None = None
    memory_faults: MemoryFaults | None = None  # measured entries: page-fault costs of this machine
    simd: Simd | None = None  # vector units: the ISA paths' peaks (capsim.hardware.isa)
    all_core_clock_hz: Hertz | None = None  # sustained all-core clock of vector code [default: the base clock]
    numa_nodes: Units = 1  # NUMA nodes per socket in the vendor's default mode (SNC / NPS)

    @model_validator(mode="after")
    def _unknown_parts_only_when_measured(self) -> Cpu:
        missing = [f for f in ("base_clock_hz", "memory_type", "memory_channels", "tdp_w") if getattr(self, f) is None]
        if missing and self.memory_bandwidth_bytes_per_s.kind != "measured":
            raise ValueError(
                f"{', '.join(missing)} may be left out only when memory_bandwidth_bytes_per_s is measured "
                "(a probed machine whose parts are unknown)"
            )
        return self


class Memory(Item):
    kind: Literal["memory"]
    standard: str  # DDR5, LPDDR5X
    transfer_rate_transfers_per_s: TransfersPerS
    bus_width_bits: Units = 64  # per channel (DDR5: 2 x 32-bit subchannels)
    bandwidth_per_channel_bytes_per_s: BytesPerS
    latency_s: Seconds | None = None


LinkFamily = Literal["pcie", "nvlink", "c2c", "infiniband", "ethernet", "upi", "xgmi", "infinity-fabric", "dmi"]


class Link(Item):
    kind: Literal["link"]
    family: LinkFamily
    bandwidth_per_direction_bytes_per_s: BytesPerS
    signalling_rate_transfers_per_s: TransfersPerS | None = None
    lanes: Units | None = None
    latency_s: Seconds | None = None


class Storage(Item):
    kind: Literal["storage"]
    interface: str  # link id (pcie-gen4-x4)
    capacity_bytes: Bytes | None = None
    sequential_read_bytes_per_s: BytesPerS
    sequential_write_bytes_per_s: BytesPerS | None = None
    random_read_4k_iops: IoPerS | None = None
    random_write_4k_iops: IoPerS | None = None
    read_latency_s: Seconds | None = None


# ------------------------------------------------------------------- systems

ComponentRole = Literal["accelerator", "cpu", "dram", "storage", "switch", "nic"]


class Component(_Strict):
    name: str  # graph nodes are name0, name1, ...
    role: ComponentRole
    item: str | None = None  # item id (none for a switch)
    count: Units = 1
    channels: Units | None = None  # dram: channels per instance
    capacity_bytes: Bytes | None = None  # dram: capacity per instance; storage: per drive
    bandwidth_bytes_per_s: BytesPerS | None = None  # dram: when not channels x per-channel


class Connection(_Strict):
    a: str  # component name (all its instances) or one instance ("cpu0")
    b: str
    link: str  # link id
    count: Units = 1  # parallel links (bandwidth adds)
    map: Literal["auto", "one-to-one", "blocked", "all-to-one", "all-pairs"] = "auto"


class System(Item):
    kind: Literal["system"]
    composition_source: str  # source id that states what the system contains
    components: list[Component]
    connections: list[Connection] = Field(default_factory=list)
    scale_out_link: str | None = None  # NIC link id for multi-node (per NIC)
    power_w: Watts | None = None

    @model_validator(mode="after")
    def _names(self) -> System:
        names = [c.name for c in self.components]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"component names must be unique, repeated: {sorted(dup)}")
        for i, conn in enumerate(self.connections):
            for end in (conn.a, conn.b):
                if self.instances(end) is None:
                    raise ValueError(f"connections.{i}: no component or instance named {end!r} (have {names})")
        return self

    def instances(self, end: str) -> list[str] | None:
        """Graph node names for a connection end: a component (all instances) or one instance."""
        for c in self.components:
            if end == c.name:
                return [f"{c.name}{i}" for i in range(c.count)]
            m = re.fullmatch(re.escape(c.name) + r"(\d+)", end)
            if m and int(m.group(1)) < c.count:
                return [end]
        return None


AnyItem = Annotated[Accelerator | Cpu | Memory | Link | Storage | System, Field(discriminator="kind")]
ITEM_KINDS = ("accelerator", "cpu", "memory", "link", "storage", "system")


class Source(_Strict):
    title: str
    url: str | None = None
    document: str | None = None
    tier: Literal["vendor", "vendor-via-copy", "device-log", "secondary", "measured", "derived"] = "vendor"
    note: str | None = None

    @model_validator(mode="after")
    def _where(self) -> Source:
        if not (self.url or self.document):
            raise ValueError("a source needs a url or a document")
        return self
