"""An engine's CPU kernels (the profile YAML's ``cpu_kernels``): per dtype, the ISA paths it has kernels for in
the order it picks them, and the dtype its attention runs in (:mod:`capsim.hardware.isa`)::

    cpu_kernels:
      int8: [avx512-vnni-int8, avx-vnni-int8, avx2-int8]   # routed experts' quantised dot products
      fp16: [f16c-avx512-fp32, f16c-avx2-fp32]
      attention: fp16                                       # K/V cache dtype the attention kernel multiplies in
      source: where the order was read (the engine's code)

A dtype left out runs on the fastest path the CPU has; no section at all: every dtype on its fastest path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capsim.errors import CapsimError
from capsim.hardware import isa


@dataclass(frozen=True)
class CpuKernels:
    orders: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (dtype, paths in the engine's order)
    attention: str = ""  # dtype of the attention kernel ("" = the scenario's 16-bit dtype)
    source: str = ""

    def order(self) -> dict[str, tuple[str, ...]]:
        return dict(self.orders)

    def to_yaml(self) -> dict:
        out: dict = {dt: list(paths) for dt, paths in self.orders}
        if self.attention:
            out["attention"] = self.attention
        out["source"] = self.source
        return out


def parse(raw, path: Path) -> CpuKernels | None:
    if raw is None:
        return None
    where = f"{path}: cpu_kernels"
    if not isinstance(raw, dict):
        raise CapsimError(f"{where}: expected a mapping of dtype -> [ISA paths], attention, source")
    orders = []
    for key, value in raw.items():
        if key in ("attention", "source"):
            continue
        if key not in isa.DTYPES:
            raise CapsimError(f"{where}.{key}: expected a dtype ({', '.join(isa.DTYPES)}), attention or source")
        if not isinstance(value, list) or not value:
            raise CapsimError(f"{where}.{key}: expected a list of ISA paths")
        for name in value:
            p = isa.PATHS.get(name)
            if p is None or p.dtype != key:
                ok = ", ".join(n for n, q in isa.PATHS.items() if q.dtype == key)
                raise CapsimError(f"{where}.{key}: {name!r} is not a {key} ISA path (expected one of {ok})")
        orders.append((key, tuple(value)))
    att = raw.get("attention", "")
    if att and att not in isa.DTYPES:
        raise CapsimError(f"{where}.attention: expected one of {', '.join(isa.DTYPES)}, got {att!r}")
    if not isinstance(raw.get("source"), str) or not raw["source"].strip():
        raise CapsimError(f"{where}.source: expected the text saying where the kernel order was read")
    return CpuKernels(tuple(orders), att, raw["source"])
