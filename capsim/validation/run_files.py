"""Reading the JSON run files of a measurement campaign (validation/measured/<engine>/*.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError


def read(folder: Path, fmt: str, how: str) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``*.json`` in ``folder`` whose ``format`` is ``fmt``, in name order; ``how`` says how to record them
    (the error when there are none)."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise CapsimError(f"{folder}: no run files (*.json); record them with {how}")
    out = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CapsimError(f"{path}: not a readable JSON run file ({err})") from None
        if not isinstance(data, dict) or data.get("format") != fmt:
            raise CapsimError(f"{path}: field format: expected {fmt!r}")
        out.append((path, data))
    return out
