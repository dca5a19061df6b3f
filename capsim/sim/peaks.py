"""The dense peak FLOP/s a scenario's operators run at, per operator class."""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_DTYPES = ("bf16", "fp16", "fp32")  # attention runs in a 16-bit dtype (fp32 where that is all there is)
MATRIX_DTYPES = ("tf32", "fp16", "bf16", "fp8", "fp6", "int8", "fp4", "int4")  # tensor / matrix-core dtypes
# An accelerator without a measured achievable matmul rate reaches this fraction of its matrix peaks: the median of
# the 12 efficiencies (MAMF / theory) of the BF16 "Maximum Achievable Matmul FLOPS comparison table" of
# stas00/ml-engineering (compute/accelerator/README.md at 744d01e): 51.4% (MI300X) to 96.9% (Gaudi 2), median
# (77.6% + 78.6%) / 2
UNMEASURED_MATMUL_FRACTION = 0.781


def achievable(peaks: dict[str, float], measured: dict[str, float]) -> dict[str, float]:
    """The rates an accelerator's best GEMMs reach per dtype: a dtype's measured rate (the hardware database's
    achievable_matmul_flop_per_s); another matrix dtype at the measured fraction of bf16 (else of the first
    dtype measured); on a device measured in none, UNMEASURED_MATMUL_FRACTION of the peak. Vector dtypes (fp32,
    fp64) keep their peak."""
    frac = next((measured[d] / peaks[d] for d in ("bf16", *measured) if d in measured and peaks.get(d)),
                UNMEASURED_MATMUL_FRACTION)
    return {d: (measured[d] if d in measured else v * frac) if d in MATRIX_DTYPES else v for d, v in peaks.items()}


@dataclass(frozen=True)
class Peaks:
    """Dense peak FLOP/s per operator class: matmuls in the compute dtype, attention in a 16-bit dtype (the
    compute dtype when it is one, ATTENTION_DTYPES), vector work (norms) in fp32; ``sixteen``: matmuls on
    weights a block format left in 16 bit (GGUF fallback tensors), in fp16 (0: at the matmul peak)."""

    matmul: float
    attention: float
    vector: float
    sixteen: float = 0.0
    reach: Peaks | None = None  # the same classes at the achievable matmul rates (an accelerator's; None: CPU)

    def __getitem__(self, compute: str) -> float:
        return getattr(self, compute)

    @classmethod
    def of(cls, peak_flop_per_s: dict[str, float], compute: str, attention: str = "",
           reach: dict[str, float] | None = None) -> Peaks:
        """``attention``: the dtype an engine's attention kernel multiplies in (its CPU kernels), when given;
        ``reach``: the achievable rates per dtype (:func:`achievable`), kept as :attr:`reach`."""
        p = peak_flop_per_s
        attn = attention if attention in p else compute if compute in ATTENTION_DTYPES else next(
            (d for d in ATTENTION_DTYPES if d in p), compute)
        inner = cls.of(reach, compute, attention) if reach is not None else None
        return cls(p[compute], p[attn], p.get("fp32", p[compute]), p.get("fp16", p.get("bf16", p[compute])), inner)

    def run_at(self, achievable_matmul: bool) -> Peaks:
        """The peaks an engine's kernels run at: the achievable rates where the engine profile asks for them
        (``achievable_matmul``) and the device has them, else the datasheet peaks."""
        return self.reach if achievable_matmul and self.reach is not None else self
