"""``capsim hw``: list, show and check hardware database entries."""

from __future__ import annotations

import json
from pathlib import Path

import click

from capsim.cli.table import render
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.hardware.describe import brief, key_figures, quantity_rows, system_summary
from capsim.hardware.schema import ITEM_KINDS, System


def _load(ctx: click.Context) -> hwdb.HardwareDB:
    return hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None)


@click.group()
def hw() -> None:
    """The hardware database: devices, CPUs, memory, links, storage and systems."""


@hw.command("list")
@click.option("--kind", type=click.Choice(ITEM_KINDS), default=None, help="Only items of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (SI units) instead of a table.")
@click.pass_context
def list_cmd(ctx: click.Context, kind: str | None, as_json: bool) -> None:
    """List hardware items with their key figures."""
    db = _load(ctx)
    items = db.list(kind)
    if as_json:
        out = [
            {"id": it.id, "kind": it.kind, "name": it.name, "vendor": it.vendor, "aliases": it.aliases,
             **key_figures(it, db)}
            for it in items
        ]
        click.echo(json.dumps(out, indent=2))
        return
    rows = [[it.id, it.kind, it.name, brief(key_figures(it, db))] for it in items]
    click.echo(render(["id", "kind", "name", "key figures"], rows))
    click.echo(f"\n{len(items)} items. 'capsim hw show ID' gives every number with its source.")


@hw.command("show")
@click.argument("item_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: every field in SI with its source.")
@click.pass_context
def show_cmd(ctx: click.Context, item_id: str, as_json: bool) -> None:
    """Show one item (id or alias), each number with its unit and source."""
    db = _load(ctx)
    item = db.get(item_id)
    rows = quantity_rows(item)
    used = sorted({q.source for _, _, q in rows} | ({item.composition_source} if isinstance(item, System) else set()))
    if as_json:
        out = item.model_dump(mode="json", exclude_none=True)
        out["sources"] = {s: db.sources[s].model_dump(exclude_none=True) for s in used}
        if isinstance(item, System):
            out["topology"] = system_summary(item, db)
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"{item.id}: {item.name} ({item.kind}, {item.vendor})")
    if item.aliases:
        click.echo(f"aliases: {', '.join(item.aliases)}")
    for fld in ("memory_type", "host_link", "scale_up_link", "pcie_link", "socket_link", "interface", "family"):
        value = getattr(item, fld, None)
        if value:
            click.echo(f"{fld}: {value}")
    if isinstance(item, System):
        for c in item.components:
            extra = f" x{c.channels} channels" if c.channels else ""
            click.echo(f"component {c.name}: {c.count} x {c.item or c.role} ({c.role}){extra}")
        for c in item.connections:
            click.echo(f"connection {c.a} <-> {c.b}: {c.count} x {c.link}")
    click.echo("")
    table = []
    for path, text, q in rows:
        how = q.kind + (f" ({q.formula})" if q.formula else "")
        table.append([path, text, how, q.source, repr(q.as_published)])
    click.echo(render(["field", "value", "kind", "source", "as published"], table))
    if isinstance(item, System):
        click.echo("\ntopology: " + brief(system_summary(item, db)))
    click.echo("\nsources:")
    for s in used:
        src = db.sources[s]
        click.echo(f"  {s}: {src.title} <{src.url or src.document}>")
    if item.notes:
        click.echo(f"\nnotes: {item.notes}")


@hw.command("check")
@click.argument("path", type=click.Path(path_type=Path))
def check_cmd(path: Path) -> None:
    """Validate your own hardware YAML (a file or a folder) against the schema and the built-in database.

    Reports every problem, one line each (file: field: what was expected); exit code 2 if any.
    """
    if not path.exists():
        raise CapsimError(f"{path}: no such file or folder")
    db, problems = hwdb.check(hwdb.BUILTIN_DB, path)
    if problems:
        for p in problems:
            click.echo(f"capsim: error: {p}", err=True)
        raise click.exceptions.Exit(2)
    own = [i for i, f in db.files.items() if Path(f).resolve().is_relative_to(path.resolve())]
    click.echo(f"{path}: {len(own)} items OK")


@hw.command("new")
@click.option("--like", required=True, help="Item to copy (id or alias of an accelerator, CPU or system), e.g. h100.")
@click.option("--id", "new_id", required=True, help="Id of the new entry (kebab-case), e.g. my-gpu.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("my_hw"), show_default=True,
              help="Folder of your own hardware (use it with 'capsim --hardware-db FOLDER').")
@click.pass_context
def new_cmd(ctx: click.Context, like: str, new_id: str, out: Path) -> None:
    """Write a what-if entry to edit: a copy of LIKE whose numbers are estimates you change by editing their
    text (as_published, e.g. "3.35 TB/s" -> "5 TB/s"), with its source entry. Then:

    capsim hw check FOLDER; capsim --hardware-db FOLDER predict -m mixtral -H ID
    """
    from capsim import atomic, outputs
    from capsim.hardware import template
    from capsim.hardware.schema import KEBAB

    if not KEBAB.match(new_id):
        raise CapsimError(f"--id {new_id!r}: expected kebab-case (lower-case letters, digits and '-')")
    db = _load(ctx)
    item = db.get(like)
    if item.kind not in template.TEMPLATE_KINDS:
        raise CapsimError(f"--like {like}: {item.id} is a {item.kind}; expected one of {', '.join(template.TEMPLATE_KINDS)}")
    if new_id in db.items:
        raise CapsimError(f"--id {new_id}: already an item of the database ({db.files.get(new_id, 'built in')})")
    paths = template.destinations(out, item.kind, new_id)
    for path in paths.values():  # a template, once written, is the user's to edit: never replaced
        if path.exists() or path.is_symlink():
            raise CapsimError(f"--out {out}: {path} exists (edit it, or choose another --id or --out)")
        outputs.check_output(path, "entry", "--out")
    command = f"capsim hw new --like {like} --id {new_id} --out {out}"
    entry, sources = template.what_if(item, new_id, command)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the template must load before it is written
        for key, data in (("entry", entry), ("source", sources)):
            rel = paths[key].relative_to(out)
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / rel).write_text(template.render(data, command), encoding="utf-8")
        _, problems = hwdb.check(hwdb.BUILTIN_DB, Path(tmp))
        if problems:
            raise CapsimError(f"--like {like}: the template does not load ({problems[0]})")
    for key, data in (("entry", entry), ("source", sources)):
        atomic.write_text(paths[key], template.render(data, command))
    click.echo(f"wrote {paths['entry']} and {paths['source']}\nedit the as_published texts, then:\n"
               f"  capsim hw check {out}\n  capsim --hardware-db {out} predict -m mixtral -H {new_id}")
