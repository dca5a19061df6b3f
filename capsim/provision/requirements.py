"""What a provisioning query asks for, and how close a predicted operating point comes to it.

Each limit becomes a ratio that is <= 1 when the limit holds (``use`` of the limit): output tokens/s needed over
tokens/s predicted, users needed over the batch served, TTFT over its limit, TPOT over its limit, device memory
used over capacity, accuracy needed over the published score. A point qualifies when every ratio is <= 1; the
largest ratio names the binding (tightest, or most violated) constraint, and its value says by how much.

TTFT under continuous batching (``ttft_mode="arrival"``, the default): a request that arrives at a running server
waits for the decode step in flight, then its prompt is prefilled alone:
TTFT = prefill(batch 1, input_len) + one decode step of the running batch (its mean step time, TPOT). This is how
vLLM and SGLang schedule a new prefill ahead of the next decode iteration (prefill-first scheduling); the time a
request queues behind other arrivals is not modelled. ``ttft_mode="batch"`` is ``capsim predict``'s TTFT: the
whole batch's prompts prefilled together (every user arriving at once), an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.errors import CapsimError

CONSTRAINTS = ("tokens_per_s", "users", "ttft", "tpot", "memory", "accuracy")
TTFT_MODES = ("arrival", "batch")


@dataclass(frozen=True)
class Requirements:
    tokens_per_s: float | None = None  # output tokens/s over all users (decode)
    users: int | None = None  # concurrent sequences served (the batch)
    ttft_s: float | None = None
    tpot_s: float | None = None
    min_accuracy: float | None = None  # fraction, on ``benchmark``
    benchmark: str | None = None
    ttft_mode: str = "arrival"

    def check(self) -> Requirements:
        from capsim import checks

        for flag, v in (("--tokens-per-s", self.tokens_per_s), ("--ttft", self.ttft_s), ("--tpot", self.tpot_s)):
            if v is not None:
                checks.number(v, flag, positive=True)
        if self.users is not None:
            checks.integer(self.users, "--users", low=1, high=checks.MAX_SEQUENCES)
        if self.min_accuracy is not None:
            if not (isinstance(self.min_accuracy, (int, float)) and 0 < self.min_accuracy <= 1):
                raise CapsimError(f"--min-accuracy {self.min_accuracy}: expected a fraction in (0, 1], e.g. 0.85")
            if not self.benchmark:
                raise CapsimError("--min-accuracy needs --benchmark (e.g. mmlu, gsm8k)")
        if self.ttft_mode not in TTFT_MODES:
            raise CapsimError(f"--ttft-mode {self.ttft_mode}: expected one of {', '.join(TTFT_MODES)}")
        if self.tokens_per_s is None and self.users is None:
            raise CapsimError("give what must be served: --tokens-per-s and/or --users")
        return self

    def describe(self) -> str:
        parts = []
        if self.tokens_per_s is not None:
            parts.append(f">= {self.tokens_per_s:,.0f} output tokens/s")
        if self.users is not None:
            parts.append(f">= {self.users:,} concurrent users")
        if self.ttft_s is not None:
            parts.append(f"TTFT <= {self.ttft_s * 1e3:,.0f} ms ({self.ttft_mode})")
        if self.tpot_s is not None:
            parts.append(f"TPOT <= {self.tpot_s * 1e3:,.0f} ms")
        if self.min_accuracy is not None:
            parts.append(f"{self.benchmark} >= {self.min_accuracy:.1%}")
        return ", ".join(parts)


def ratios(req: Requirements, batch, ttft_s, tpot_s, memory_use, accuracy: float | None) -> dict[str, np.ndarray]:
    """{constraint: use of its limit} over arrays of operating points (NaN where no limit is set).

    ``memory_use`` is device memory needed / capacity; ``accuracy`` the published score (None: unknown, which
    fails an accuracy limit: the ratio is infinite).
    """
    batch = np.asarray(batch, float)
    tpot = np.asarray(tpot_s, float)  # may be inf where a batch cannot run: tokens/s 0, ratio inf
    nan = np.full(batch.shape, np.nan)
    out = {c: nan for c in CONSTRAINTS}
    if req.tokens_per_s is not None:
        with np.errstate(divide="ignore"):
            out["tokens_per_s"] = req.tokens_per_s / (batch / tpot)
    if req.users is not None:
        out["users"] = req.users / batch
    if req.ttft_s is not None:
        out["ttft"] = np.asarray(ttft_s, float) / req.ttft_s
    if req.tpot_s is not None:
        out["tpot"] = tpot / req.tpot_s
    out["memory"] = np.broadcast_to(np.asarray(memory_use, float), batch.shape)
    if req.min_accuracy is not None:
        out["accuracy"] = np.full(batch.shape, np.inf if accuracy is None else req.min_accuracy / accuracy)
    return out


def worst(r: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(largest ratio, index into CONSTRAINTS of that ratio) per point; a point qualifies when the first is <= 1.
    Ties go to the earlier constraint in CONSTRAINTS."""
    stack = np.stack([np.nan_to_num(np.asarray(r[c], float), nan=-np.inf) for c in CONSTRAINTS])
    return stack.max(axis=0), stack.argmax(axis=0)
