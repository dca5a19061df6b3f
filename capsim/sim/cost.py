"""The records a step's costs are written in: one per operator, each adding up (after tinygrad's ``Estimates``).

A :class:`Cost` is what an operator costs ONE device in one step: FLOPs, bytes of weights, KV cache and
activations it moves, kernel launches, and for a collective the bytes it sends over a link and its calls.
Costs add (``a + b``), so an operator family (attention, routed experts, shared/dense FFN, collectives,
head) or a whole step is the sum of its operators: one table explains a step, and a total is never
computed a second way. An :class:`OpCost` adds what the roofline needs to time it (which peak, the rows a
GEMM multiplies, its weight matrices); :class:`Step` is a step's operators by name, with what the
utilisation metrics need beside them.

Every field may be a numpy array of scenarios (the formulas broadcast). The records are not changed after they
are made (``dataclasses.replace`` makes a changed copy); they are not frozen only because a frozen dataclass
is several times slower to create, and a prediction creates dozens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# Which peak FLOP/s an operator runs at ("matmul", "attention", "vector"), or "link" for a collective.
LINK = "link"
# Which link a collective crosses: the TP ring, the EP all-to-all, or the hop between pipeline stages.
LINKS = ("ring", "alltoall", "hop")
FAMILIES = ("head", "attention", "experts", "ffn", "collectives")


@dataclass(slots=True)
class Cost:
    flops: np.ndarray | float = 0.0
    weight_bytes: np.ndarray | float = 0.0
    kv_bytes: np.ndarray | float = 0.0
    act_bytes: np.ndarray | float = 0.0
    kernels: np.ndarray | float = 0.0
    link_bytes: np.ndarray | float = 0.0  # collectives: bytes one device sends in the step
    calls: np.ndarray | float = 0.0  # collectives: calls in the step (each waits on the link's latency)

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Cost)))

    @property
    def bytes(self) -> np.ndarray | float:
        """Memory traffic (weights, KV cache, activations); a collective's link bytes are not memory traffic."""
        return self.weight_bytes + self.kv_bytes + self.act_bytes


@dataclass(slots=True)
class OpCost(Cost):
    compute: str = "matmul"  # "matmul", "attention", "vector" or LINK
    family: str = "head"  # one of FAMILIES
    link: str = ""  # collectives: one of LINKS
    activated_per_layer: np.ndarray | float = 0.0  # routed experts: activated experts summed over MoE layers
    rows: np.ndarray | float = np.inf  # matmuls: rows (tokens) each weight multiplies; inf for other work
    # matmuls: (K, N, share of the op's FLOPs) of each weight matrix as one device holds it
    gemms: tuple[tuple[np.ndarray | float, np.ndarray | float, float], ...] = ()
    sixteen_bit_share: float = 0.0  # matmuls: share of the FLOPs on weights stored in 16 bit (GGUF fallback)
    # What an engine mechanism adds (capsim.sim.eager_cpu): FLOPs the kernel executes when it does more than the
    # useful work (None: flops), time after the roofline in no bound category (unfused element-wise work), and
    # fixed time in the overhead category (page faults)
    executed_flops: np.ndarray | float | None = None
    serial_s: np.ndarray | float = 0.0
    overhead_s: np.ndarray | float = 0.0

    @property
    def cost(self) -> Cost:
        return Cost(*(getattr(self, f.name) for f in fields(Cost)))


@dataclass(slots=True)
class Step:
    """One step's operators on one device, and what the dense utilisation figures need beside them."""

    ops: dict[str, OpCost]
    activated_experts: np.ndarray  # distinct routed experts per MoE layer, over the tokens one expert group sees
    all_expert_weight_bytes: np.ndarray  # per device, if every expert were read (for dense MBU)
    all_expert_flops: np.ndarray  # per device, if every token ran every expert (for dense MFU)
    local: object = None  # the step's work on one device (capsim.sim.ops.Local), for engine mechanisms

    def family(self, name: str) -> Cost:
        """The summed cost of one operator family."""
        return sum((op.cost for op in self.ops.values() if op.family == name), Cost())

    @property
    def total(self) -> Cost:
        return sum((op.cost for op in self.ops.values()), Cost())

    def collectives(self) -> dict[str, OpCost]:
        return {k: op for k, op in self.ops.items() if op.compute == LINK}
