"""``capsim hw new``: a what-if hardware entry to edit, copied from an existing one.

Every number of the copied item becomes an ``estimate`` whose ``as_published`` is the number with its unit
(``value`` is left out: the loader computes it from the text), citing one source entry written beside it, so
the user edits only the text (``"3.35 TB/s"`` -> ``"5 TB/s"``) and the entry still loads. Links to other items
(host link, memory type) keep their ids, which resolve against the built-in database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from capsim.hardware.quantity import Quantity
from capsim.units import DIMENSIONS, format_quantity

TEMPLATE_KINDS = ("accelerator", "cpu", "system")


# Field-name suffix -> dimension (capsim names every quantity field by its SI unit), longest suffix first.
_SUFFIX_DIMENSIONS = (("_bytes_per_s", "B/s"), ("flop_per_s", "FLOP/s"), ("transfers_per_s", "T/s"),
                      ("_s_per_byte", "s/B"), ("usd_per_h", "USD/h"), ("_iops", "IO/s"), ("_bytes", "B"),
                      ("_usd", "USD"), ("_hz", "Hz"), ("_w", "W"), ("_s", "s"))


def _dimension(path: str, q: Quantity) -> str:
    """The dimension of the stored value: the text's, or (derived, whose formula may change it) the field's."""
    if not q.formula:
        return q.parsed().dimension
    for part in reversed(path.split(".")):
        for suffix, dim in _SUFFIX_DIMENSIONS:
            if part.endswith(suffix):
                return dim
    return "1"


def _text(q: Quantity, path: str) -> str:
    """The stored SI value as text that parses back to it."""
    dim = _dimension(path, q)
    if dim in ("USD", "USD/h"):
        return f"{q.value:.6g} {dim}"
    if dim not in DIMENSIONS:
        dim = "1"
    return format_quantity(q.value, dim, digits=6)


def _rewrite(obj: Any, source: str, like: str, path: str) -> Any:
    if isinstance(obj, Quantity):
        return {"as_published": _text(obj, path), "source": source, "kind": "estimate",
                "reason": f"what-if; {like}: {obj.as_published}"}
    if hasattr(obj, "model_fields"):
        out = {}
        for name in type(obj).model_fields:
            v = getattr(obj, name)
            if v is not None and v != [] and v != {}:
                out[name] = _rewrite(v, source, like, f"{path}.{name}" if path else name)
        return out
    if isinstance(obj, dict):
        return {k: _rewrite(v, source, like, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rewrite(v, source, like, f"{path}.{i}") for i, v in enumerate(obj)]
    return obj


def what_if(item, new_id: str, command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(entry, sources) of a what-if copy of ``item`` named ``new_id``."""
    source = f"{new_id}-what-if"
    entry = _rewrite(item, source, item.id, "")
    entry.update(id=new_id, name=f"What-if {new_id} (from {item.name})", vendor=entry.get("vendor", "what-if"))
    entry.pop("aliases", None)
    entry.pop("description", None)
    price = entry.pop("price", None)
    if price is not None:
        entry["price"] = price  # after the physical figures
    entry.pop("notes", None)
    entry["notes"] = (f"What-if entry written by '{command}': every number is an estimate copied from {item.id}. "
                      "Edit as_published (the number with its unit); value is computed from it.")
    sources = {source: {"title": f"What-if {item.kind} {new_id}, numbers copied from {item.id} and edited by hand",
                        "document": f"{command}", "tier": "derived"}}
    return entry, sources


def render(data: dict[str, Any], command: str) -> str:
    header = (f"# Written by: {command}\n# A what-if entry: edit as_published of each number (value follows it), "
              "then 'capsim hw check' this folder.\n")
    # one line per number (flow style for mappings of scalars), as the built-in files are written
    return header + yaml.safe_dump(data, sort_keys=False, width=1000, allow_unicode=True, default_flow_style=None)


def destinations(out: str | Path, kind: str, new_id: str) -> dict[str, Path]:
    folder = {"accelerator": "accelerators", "cpu": "cpus", "system": "systems"}[kind]
    return {"entry": Path(out) / folder / f"{new_id}.yaml", "source": Path(out) / "sources" / f"{new_id}.yaml"}
