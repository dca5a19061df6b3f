"""Load, validate, merge and look up the hardware database.

Layout: any ``*.yaml`` below the database folder is one item whose ``id`` equals
its file name; files under a ``sources/`` folder hold mappings of source id ->
:class:`~capsim.hardware.schema.Source`. A user folder (``--hardware-db DIR``
or ``CAPSIM_HARDWARE_DB``) is merged over the built-in one: same id replaces,
new ids add.

Every problem is reported as ``file: field: what was expected``; :func:`check`
collects all of them, :func:`load` stops at the first.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from capsim import data
from capsim.errors import CapsimError

if TYPE_CHECKING:  # pydantic, yaml and the schema are imported when the database is read
    from pydantic import ValidationError

    from capsim.hardware.schema import Item, Source

BUILTIN_DB = data.path("hardware_db")  # the shipped database (capsim.data: package data, or the checkout's)
ENV_VAR = "CAPSIM_HARDWARE_DB"


@cache
def _adapters():
    from pydantic import TypeAdapter

    from capsim.hardware.schema import AnyItem, Source

    return TypeAdapter(AnyItem), TypeAdapter(dict[str, Source])


@dataclass(frozen=True)
class Problem:
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}" if self.field else f"{self.file}: {self.message}"


class HardwareDB:
    """Items by id, the sources they cite and the file each came from. :func:`load` makes one that reads its
    folders on first use (a prediction whose scenario is cached never reads them); ``fingerprint`` hashes
    their files' contents."""

    def __init__(self, items: dict | None = None, sources: dict | None = None, files: dict | None = None,
                 roots: tuple[Path, ...] = ()):
        self.roots = tuple(roots)
        self._loaded = items is not None or not self.roots
        self._items, self._sources, self._files = items or {}, sources or {}, files or {}
        self._fingerprint: str | None = None

    def _load(self) -> None:
        if not self._loaded:
            db, problems = check(*self.roots)
            if problems:
                more = f" (and {len(problems) - 1} more problems; run 'capsim hw check')" if len(problems) > 1 else ""
                raise CapsimError(str(problems[0]) + more)
            self._items, self._sources, self._files, self._loaded = db.items, db.sources, db.files, True

    @property
    def items(self) -> dict[str, Item]:
        self._load()
        return self._items

    @property
    def sources(self) -> dict[str, Source]:
        self._load()
        return self._sources

    @property
    def files(self) -> dict[str, Path]:
        self._load()
        return self._files

    def fingerprint(self) -> str:
        """sha256 over the path and contents of every YAML file of the database's folders (in-memory
        databases: over their items)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            if self.roots:
                for root in self.roots:
                    for path in _yaml_files(Path(root)):
                        h.update(str(path.relative_to(root) if path != root else path.name).encode() + b"\0")
                        h.update(path.read_bytes() + b"\0")
            else:
                h.update(repr(sorted((k, v.model_dump_json()) for k, v in self._items.items())).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def list(self, kind: str | None = None) -> list[Item]:
        return [it for _, it in sorted(self.items.items()) if kind is None or it.kind == kind]

    def get(self, name: str, kind: str | None = None) -> Item:
        """The item called ``name`` (id or alias); a clear error when unknown or ambiguous."""
        return self.items[resolve_id(self, name, kind)]


def iter_quantities(obj: object, path: str = "") -> Iterator[tuple[str, object]]:
    """Every numeric leaf (a Quantity) of an item, with its dotted field path."""
    from pydantic import BaseModel

    from capsim.hardware.quantity import Quantity

    if isinstance(obj, Quantity):
        yield path, obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from iter_quantities(getattr(obj, name), f"{path}.{name}" if path else name)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from iter_quantities(v, f"{path}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from iter_quantities(v, f"{path}.{i}")


def _pydantic_problems(file: str, err: ValidationError, strip_tag: bool) -> list[Problem]:
    from capsim.hardware.schema import ITEM_KINDS

    out = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        if strip_tag and loc and loc[0] in ITEM_KINDS:
            loc = loc[1:]
        loc = [x for x in loc if not x.startswith("function-after")]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field (not in the schema)"
        elif e["type"] == "model_type" and "Quantity" in e["msg"]:
            msg = (f"got {e.get('input')!r}; a number needs its text and source: {{as_published: \"3.35 TB/s\", "
                   "source: SOURCE-ID, kind: vendor-spec} ('capsim hw new --like ID' writes a template)")
        elif e["type"] == "model_type":
            msg = f"got {e.get('input')!r}; expected a mapping of fields"
        elif e["type"] == "literal_error":
            msg = f"got {e.get('input')!r}; {msg[0].lower() + msg[1:]}"
        out.append(Problem(file, ".".join(loc), msg))
    return out


def _read_yaml(path: Path) -> tuple[object, list[Problem]]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        return None, [Problem(str(path), "", f"cannot read file: {err.strerror}")]
    except UnicodeDecodeError as err:
        return None, [Problem(str(path), "", f"not UTF-8 text (byte {err.start})")]
    try:
        return yaml.load(text, Loader=loader), []
    except RecursionError:
        return None, [Problem(str(path), "", "YAML nested too deeply")]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "syntax error"
        return None, [Problem(str(path), "", f"malformed YAML{where}: {problem}")]


def _yaml_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.yaml") if not any(part.startswith(".") for part in p.parts))


def _is_sources_file(path: Path) -> bool:
    return "sources" in path.parts[:-1] or path.name == "sources.yaml"


def read_folder(root: Path) -> tuple[HardwareDB, list[Problem]]:
    """Parse every file below ``root`` (or one file) without cross-checks."""
    from pydantic import ValidationError

    item_adapter, sources_adapter = _adapters()
    db, problems = HardwareDB(), []
    if not root.exists():
        return db, [Problem(str(root), "", "no such file or directory")]
    for path in _yaml_files(root):
        data, errs = _read_yaml(path)
        problems += errs
        if errs:
            continue
        if _is_sources_file(path):
            try:
                db.sources.update(sources_adapter.validate_python(data or {}))
            except ValidationError as err:
                problems += _pydantic_problems(str(path), err, strip_tag=False)
            continue
        if not isinstance(data, dict):
            problems.append(Problem(str(path), "", "expected a mapping with id, kind, name, ... at the top"))
            continue
        try:
            item = item_adapter.validate_python(data)
        except ValidationError as err:
            problems += _pydantic_problems(str(path), err, strip_tag=True)
            continue
        if item.id != path.stem:
            problems.append(Problem(str(path), "id", f"id {item.id!r} must equal the file name {path.stem!r}"))
            continue
        if item.id in db.items:
            problems.append(Problem(str(path), "id", f"duplicate id, also in {db.files[item.id]}"))
            continue
        db.items[item.id] = item
        db.files[item.id] = path
    return db, problems


def cross_check(db: HardwareDB) -> list[Problem]:
    """References between items: sources, links, memory types, system components."""
    problems: list[Problem] = []

    def ref(item: Item, fld: str, target: str | None, kind: str) -> None:
        if target is None:
            return
        other = db.items.get(target)
        if other is None:
            close = difflib.get_close_matches(target, [i.id for i in db.list(kind)], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(Problem(str(db.files[item.id]), fld, f"no {kind} with id {target!r}{hint}"))
        elif other.kind != kind:
            problems.append(Problem(str(db.files[item.id]), fld, f"{target!r} is a {other.kind}, expected a {kind}"))

    for item in db.items.values():
        f = str(db.files[item.id])
        for path, q in iter_quantities(item):
            if q.source not in db.sources:
                problems.append(Problem(f, f"{path}.source", f"unknown source {q.source!r} (not in any sources file)"))
        for fld, kind in (
            ("host_link", "link"),
            ("scale_up_link", "link"),
            ("pcie_link", "link"),
            ("socket_link", "link"),
            ("interface", "link"),
            ("memory_type", "memory"),
            ("scale_out_link", "link"),
        ):
            if fld in type(item).model_fields:
                ref(item, fld, getattr(item, fld), kind)
        if item.kind == "system":
            if item.composition_source not in db.sources:
                problems.append(Problem(f, "composition_source", f"unknown source {item.composition_source!r}"))
            role_kind = {"accelerator": "accelerator", "cpu": "cpu", "dram": "memory", "storage": "storage", "nic": "link"}
            for i, comp in enumerate(item.components):
                if comp.role == "switch":
                    continue
                if comp.item is None:
                    problems.append(Problem(f, f"components.{i}.item", f"a {comp.role} needs an item id"))
                else:
                    ref(item, f"components.{i}.item", comp.item, role_kind[comp.role])
            for i, conn in enumerate(item.connections):
                ref(item, f"connections.{i}.link", conn.link, "link")
    return problems


def check(*roots: Path) -> tuple[HardwareDB, list[Problem]]:
    """Read and merge folders in order (later wins), then cross-check. Returns all problems."""
    merged, problems = HardwareDB(), []
    for root in roots:
        db, errs = read_folder(Path(root))
        problems += errs
        merged.items.update(db.items)
        merged.files.update(db.files)
        merged.sources.update(db.sources)
    problems += cross_check(merged)
    return merged, problems


def user_folder(option: str | None = None) -> Path | None:
    value = option or os.environ.get(ENV_VAR)
    return Path(value) if value else None


def load(user_db: str | Path | None = None, lazy: bool = False) -> HardwareDB:
    """The built-in database merged with the user's folder; raises on the first problem. ``lazy``: read and
    check the folders on first use instead (what a prediction whose scenario is cached may never need)."""
    roots = [BUILTIN_DB]
    user = user_folder(str(user_db) if user_db else None)
    if user is not None:
        if not user.exists():
            raise CapsimError(f"--hardware-db {user}: no such folder")
        roots.append(user)
    db = HardwareDB(roots=tuple(roots))
    if not lazy:
        db._load()
    return db


def resolve_id(db: HardwareDB, name: str, kind: str | None = None) -> str:
    """Map an id or alias (exact, then unique substring) to an item id."""
    q = name.strip().lower()
    pool = {i: it for i, it in db.items.items() if kind is None or it.kind == kind}
    if q in pool:
        return q
    by_alias = sorted(i for i, it in pool.items() if q in it.aliases)
    if len(by_alias) == 1:
        return by_alias[0]
    cands = by_alias or sorted(i for i, it in pool.items() if q in i or any(q in a for a in it.aliases))
    what = kind or "hardware"
    if len(cands) == 1:
        return cands[0]
    if cands:
        raise CapsimError(f"{what} id {name!r} is ambiguous: it matches {', '.join(cands)}")
    names = list(pool) + [a for it in pool.values() for a in it.aliases]
    close = difflib.get_close_matches(q, names, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; 'capsim hw list' shows them all"
    raise CapsimError(f"unknown {what} id {name!r}{hint}")
