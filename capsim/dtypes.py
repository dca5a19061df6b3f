"""Storage size of numeric formats, in bits per element (bytes = bits / 8, never integer division).

Sub-byte formats are where peer simulators lose weights (int4 stored as 0 bytes);
here every format has a positive size and ``bytes_per_element`` is a float.
Block-scaled formats (int4 with group scales, GGUF K-quants, MXFP4, NVFP4) add
their scale overhead in :mod:`capsim.precision` (model-spec issue), not here.
"""

from __future__ import annotations

from capsim.errors import CapsimError

BITS_PER_ELEMENT: dict[str, int] = {
    "fp64": 64,
    "fp32": 32,
    "tf32": 32,  # stored as fp32; tf32 is a compute mode (19 significant bits)
    "fp16": 16,
    "bf16": 16,
    "fp8": 8,
    "int8": 8,
    "fp6": 6,
    "fp4": 4,
    "int4": 4,
}


def bytes_per_element(dtype: str) -> float:
    try:
        return BITS_PER_ELEMENT[dtype] / 8.0
    except KeyError:
        raise CapsimError(f"unknown dtype {dtype!r} (expected one of {', '.join(BITS_PER_ELEMENT)})") from None
