"""An engine's front end (the profile YAML's ``frontend``): the API server a request passes before the engine's
scheduler sees it, and that ``capsim serve`` puts in front of it::

    frontend:
      intake_s_per_request: 0.005   # front-end CPU seconds per request, shared by the requests in intake
      fitted_to: what the value was fitted to (or the measurement it comes from)

vLLM's OpenAI server (``vllm serve``) is one Python process on one asyncio event loop: every request is parsed,
validated, rendered through the chat template, tokenized and handed to the engine core there, in coroutines that
take turns (read in vLLM 0.10.2, the version of the published runs: serving_chat.py ``create_chat_completion``
awaits serving_engine.py ``_preprocess_chat``, which renders ``apply_hf_chat_template`` on the loop, then awaits
the tokenizer (``AsyncMicrobatchTokenizer``: one thread, batches of up to 32) before ``engine_client.generate``
hands the request on; every await sends the coroutine to the back of the loop's ready queue). So requests in
intake share one CPU: with k of them each gets 1/k of it (processor sharing), and a burst of N requests released
at once reaches the engine together, N x ``intake_s_per_request`` after they were sent (the published bursts
show it: DeepSeek-R1's 1,000 prompts of 128 tokens on 8x H200, gpustack G010, have a TTFT median of 19.0 s and
p99 21.4 s in a 22.1 s run). A request alone pays ``intake_s_per_request`` of TTFT. The engine and its steps are not slowed by it (in
vLLM's V1 the engine core is its own process). Without the section, or at 0, requests reach the scheduler the
moment they are sent (the engine alone, as before).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from capsim.errors import CapsimError


@dataclass(frozen=True)
class FrontEnd:
    intake_s_per_request: float = 0.0  # s of front-end CPU per request (processor-shared)
    fitted_to: str = ""

    def to_yaml(self) -> dict:
        return {"intake_s_per_request": float(f"{self.intake_s_per_request:.4g}"), "fitted_to": self.fitted_to}


def intake_s(prof) -> float:
    """Seconds of front-end CPU per request of an engine profile (0 without a ``frontend`` section)."""
    return prof.frontend.intake_s_per_request if prof.frontend is not None else 0.0


def parse(raw, path: Path) -> FrontEnd | None:
    if raw is None:
        return None
    where = f"{path}: frontend"
    if not isinstance(raw, dict) or set(raw) - {"intake_s_per_request", "fitted_to"}:
        raise CapsimError(f"{where}: expected a mapping with intake_s_per_request and fitted_to")
    value = raw.get("intake_s_per_request", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise CapsimError(f"{where}.intake_s_per_request: expected a number of seconds >= 0")
    fitted = raw.get("fitted_to", "")
    if not isinstance(fitted, str) or (value and not fitted.strip()):
        raise CapsimError(f"{where}.fitted_to: expected the text saying what the value was fitted to")
    return FrontEnd(float(value), fitted)
