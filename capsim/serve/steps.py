"""The time of one serving step: its mix of decode tokens and prefill chunks priced by the request pipeline.

A step is described by its counts over all the sequences it carries (``capsim.sim.ops.Work``): tokens
processed, sequences, attention (query, key) pairs per layer and cached tokens read per layer; a step with any
prefill chunk is not a decode step (no decode-only mechanisms such as captured CUDA graphs), and its cost is
that of the whole mix, not a prefill plus a decode. The routed experts it activates come from the scenario's
routing (trace, fitted model or prior) at that many tokens: the decode routing's activated experts, rank
activated experts and rank load, replayed once on a grid of token counts (up to ``GRID_MAX_TOKENS``) and
interpolated in log(tokens)
(every token of a step treated as an independent draw; a prefill chunk's tokens, one sequence's, share
experts a little more often, so its activated experts are slightly overstated). Uniform routing asks for none.

Steps repeat (a steady decode batch differs from the last step only in its context), so step times are cached
on counts rounded to ``BUCKET`` (0.5%) above ``EXACT`` (256): the cache turns tens of thousands of steps into a
few hundred pipeline evaluations, at an error of at most a quarter of a percent in each count.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from capsim.sim.ops import Work
from capsim.sim.request import simulate_step

if TYPE_CHECKING:
    from capsim.scenario import Scenario

EXACT = 256  # counts up to this are priced exactly
BUCKET = 1.005  # above it, counts are rounded to the nearest power of this
GRID_POINTS = 48  # token counts the routing is replayed at (geometric from 1 to the largest step)
# the grid stops here (or where the trace's decode tokens run out): a larger step activates what the top does (the
# interpolation holds the last value), and at 4,096 tokens top-k routing touches nearly every expert of a layer
GRID_MAX_TOKENS = 4096


def _q(x: float) -> float:
    if x <= EXACT:
        return float(round(x))
    return BUCKET ** round(math.log(x) / math.log(BUCKET))


class StepCost:
    """Seconds of a step of the scenario ``sc`` for its counts (cached)."""

    def __init__(self, sc: Scenario, max_tokens: int, exact: bool = False):
        self.sc, self.exact = sc, exact  # exact: no rounding of the counts (tests)
        self.cache: dict[tuple, float] = {}
        self.evaluations = 0
        self.curve = self._routing_curve(max(1, int(max_tokens)))

    def _routing_curve(self, max_tokens: int):
        from capsim.errors import CapsimError
        from capsim.routing import replay

        top = min(max_tokens, GRID_MAX_TOKENS)
        while True:
            grid = np.unique(np.geomspace(1, top, GRID_POINTS).round().astype(np.int64))
            try:
                r = replay(self.sc, grid, np.ones_like(grid), mean=True)
                break
            except CapsimError as err:  # a trace with fewer decode tokens than the grid's top: a smaller top
                if "fewer than --batch" not in str(err) or top <= 1:
                    raise
                top //= 2
        if r is None:
            return None
        return np.log(grid.astype(float)), {k: np.asarray(v, float)[:, 0] for k, v in r.decode.items()}

    def _routing(self, tokens: float) -> dict | None:
        if self.curve is None:
            return None
        x, arrays = self.curve
        lt = math.log(max(tokens, 1.0))
        return {k: float(np.interp(lt, x, v)) for k, v in arrays.items()}

    def __call__(self, tokens: float, seqs: float, pairs: float, kv_read: float, decode: bool,
                 dense_pairs: float | None = None) -> float:
        q = (lambda x: float(x)) if self.exact else _q
        key = (q(tokens), q(seqs), q(pairs), q(kv_read), bool(decode), None if dense_pairs is None else q(dense_pairs))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        t, s, p, k, d, dp = key
        _, timing = simulate_step(self.sc, Work(t, s, p, k, d, dp), self._routing(t))
        seconds = float(np.asarray(timing.step_s).ravel()[0])
        self.cache[key] = seconds
        self.evaluations += 1
        return seconds
