"""The input-validation layer: every number and file a user hands capsim is checked here, where it is read.

Each check raises :class:`~capsim.errors.CapsimError` with one line naming the input (``--batch``,
``config.json: sliding_window``, ``traces/x/meta.json: n_tokens``) and what was expected, so the CLI exits 2
without a traceback. Bounds are named below with the reason each is where it is: they keep every loop and
allocation capsim makes proportional to something a real deployment has, so no input can hang it or
exhaust memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError

# Tokens in one sequence (prompt or output): 2**24 = 16.8 M, above the longest published context window
# (10 M tokens, Llama 4 Scout, https://ai.meta.com/blog/llama-4-multimodal-intelligence/).
MAX_TOKENS = 2**24
# Concurrent sequences: 2**24, far beyond any one serving instance (vLLM's max_num_seqs defaults to 256-1024).
MAX_SEQUENCES = 2**24
# Devices in one scenario (nodes x devices per node) and any one parallel degree: 2**16 = 65 536 accelerators,
# above the largest single training clusters announced to 2026; inference instances are far smaller.
MAX_DEVICES = 2**16
# Copies of one component in one system (a scale-up domain; larger machines are --nodes copies): 4096, above
# the 576 GPUs of NVIDIA's largest announced NVLink domain (Vera Rubin NVL576).
MAX_COMPONENT_COUNT = 4096
# Decoder layers, heads, experts and widths of a model config: no published model comes within a factor of
# 10 of these (DeepSeek-V3: 61 layers, 256 experts; Llama-3.1-405B: hidden 16384, 128 heads).
MAX_LAYERS = 10_000
MAX_EXPERTS = 1 << 20
MAX_WIDTH = 1 << 24  # hidden, intermediate, vocabulary, head dimension, windows (elements or tokens)
# A physical quantity in SI: 1e30 (a 10^12-exaFLOP/s machine, a yottabyte x 10^6) bounds every datasheet value
# and keeps products of a few of them finite in float64.
MAX_SI = 1e30
# The slowest rate a part may have: 1 per second (B/s, FLOP/s, transfers/s, IO/s, Hz). Below it a part does
# nothing in a human lifetime per gigabyte, and 1 / rate products overflow toward infinity.
MIN_RATE = 1.0
# Prices: 1e9 USD per hour or per unit is beyond any cluster's list price.
MAX_USD = 1e9


def integer(value: Any, where: str, *, low: int = 1, high: int | None = None, strict: bool = False) -> int:
    """``value`` as an int in [low, high]; a float that is a whole number is accepted (1e3 -> 1000) unless
    ``strict`` (an API argument that must already be an int)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (strict and not isinstance(value, int)):
        raise CapsimError(f"{where} {value!r}: expected an integer")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise CapsimError(f"{where} {value!r}: expected an integer")
    v = int(value)
    if v < low:
        raise CapsimError(f"{where} {v}: expected an integer >= {low}")
    if high is not None and v > high:
        raise CapsimError(f"{where} {v}: expected an integer <= {high}")
    return v


def number(value: Any, where: str, *, low: float | None = 0.0, high: float | None = MAX_SI,
           positive: bool = False) -> float:
    """``value`` as a finite float in [low, high] (> 0 too when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CapsimError(f"{where} {value!r}: expected a number")
    v = float(value)
    if not math.isfinite(v):
        raise CapsimError(f"{where} {value!r}: expected a finite number")
    if positive and not v > 0:
        raise CapsimError(f"{where} {value!r}: expected a number > 0")
    if low is not None and v < low:
        raise CapsimError(f"{where} {value!r}: expected a number >= {low:g}")
    if high is not None and v > high:
        raise CapsimError(f"{where} {value!r}: expected a number <= {high:g}")
    return v


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file's contents; one-line errors for a missing, unreadable or non-UTF-8 file."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CapsimError(f"{p}: no such {what}") from None
    except IsADirectoryError:
        raise CapsimError(f"{p}: is a folder, expected a {what}") from None
    except UnicodeDecodeError as err:
        raise CapsimError(f"{p}: not UTF-8 text (byte {err.start}); expected a {what}") from None
    except OSError as err:
        raise CapsimError(f"{p}: cannot read ({err.strerror or err})") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file, parsed; one-line errors naming the file (and the line of a syntax error)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CapsimError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise CapsimError(f"{path}: JSON nested too deeply") from None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """A YAML file, parsed with the safe loader; one-line errors naming the file and line."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CapsimError(f"{path}: malformed YAML{at}: {getattr(err, 'problem', None) or 'syntax error'}") from None
    except RecursionError:
        raise CapsimError(f"{path}: YAML nested too deeply") from None


def mapping(data: Any, where: str, what: str = "a mapping") -> dict:
    """``data`` when it is a dict; a one-line error naming ``where`` otherwise."""
    if not isinstance(data, dict):
        raise CapsimError(f"{where}: expected {what}, got {type(data).__name__}")
    return data
