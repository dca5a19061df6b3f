"""``capsim cap accuracy``: the cited table of published benchmark scores, and lm-eval result files."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from capsim.cap import accuracy
from capsim.cap.lm_eval import load_lm_eval
from capsim.cli.oneline import CapsimCommand
from capsim.cli.table import render
from capsim.errors import CapsimError


def _check_names(model: str | None, benchmark: str | None, precision: str | None, rows) -> None:
    """A model, benchmark or precision that names nothing is an error, not an empty answer."""
    from capsim import precision as precisions
    from capsim.model.catalogue import entries

    if model is not None:
        key = accuracy.model_key(model)
        if key not in entries() and key not in {r.model for r in rows}:
            raise CapsimError(f"--model {model!r}: unknown model (not in the catalogue, 'capsim model list', nor in "
                              "the accuracy table)")
    if benchmark is not None:
        names = {accuracy.normalise(r.benchmark): r.benchmark for r in rows}
        if accuracy.normalise(benchmark) not in names:
            raise CapsimError(f"--benchmark {benchmark!r}: no such benchmark in the accuracy table (known: "
                              f"{', '.join(sorted(names.values(), key=str.lower))})")
    if precision is not None:
        precisions.get(precision)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _rows_table(rows: list[accuracy.Score], published: bool = False) -> str:
    head = ["model", "checkpoint", "precision", "benchmark", "metric", "shots", "score", "evaluator", "source"]
    out = []
    for r in rows:
        line = [r.model, "-" if r.checkpoint == r.model else r.checkpoint, r.precision, r.benchmark, r.metric,
                "-" if r.shots is None else str(r.shots), _pct(r.value), r.evaluator, r.source]
        if published:
            res = accuracy.score(r.model, r.benchmark, r.precision)
            line.append(_pct(res.value) + (f" [{res.score.source}]" if res.score else " (none published)"))
        out.append(line)
    return render(head + (["published"] if published else []), out)


def _lookup_line(res: accuracy.ScoreResult) -> str:
    if res.value is None:
        return f"{res.model} {res.benchmark} at {res.precision_requested}: no published score ({res.reason})"
    s = res.score
    shots = f", {s.shots}-shot" if s.shots is not None else ""
    extra = f"; {res.reason}" if res.reason else ""
    return (f"{res.model} {res.benchmark} at {res.precision_requested}: {_pct(res.value)} ({s.metric}{shots}; "
            f"{s.checkpoint} at {res.precision_of_score}; source {s.source}: {s.as_published!r}{extra})")


@click.command("accuracy", cls=CapsimCommand)
@click.option("--model", "-m", default=None, help="Only this model (catalogue id or alias).")
@click.option("--benchmark", "-b", default=None, help="Only this benchmark (e.g. MMLU, GSM8K).")
@click.option("--precision", default=None, help="With --model and --benchmark: the precision to look up.")
@click.option("--import", "imports", multiple=True, type=click.Path(dir_okay=False),
              help="An lm-evaluation-harness results JSON to import (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def accuracy_cmd(model, benchmark, precision, imports, as_json) -> None:
    """Published benchmark scores per model and precision, each with its source (no score is ever made up).

    --import reads lm-evaluation-harness result files (top-level 'results' {task: {'acc,none': ...}}) and shows
    each imported score beside the published one. A file of another format is an error (exit code 2).
    """
    rows, sources = accuracy.load_table()
    imported = [r for path in imports for r in load_lm_eval(path)]
    _check_names(model, benchmark, precision, [*rows, *imported])
    shown = accuracy.rows_for(model, benchmark, rows)
    if model or benchmark:
        key = accuracy.model_key(model) if model else None
        b = accuracy.normalise(benchmark) if benchmark else None
        imported = [r for r in imported if (key is None or r.model == key)
                    and (b is None or accuracy.normalise(r.benchmark) == b)]
    if imports and not model:  # the table rows of the imported models only
        shown = [r for r in shown if r.model in {i.model for i in imported}]
    lookup = accuracy.score(model, benchmark, precision) if model and benchmark else None
    compared = [accuracy.score(r.model, r.benchmark, r.precision) for r in imported]
    used = {r.source for r in shown} | {c.score.source for c in [*compared, lookup] if c is not None and c.score}
    if as_json:
        out = {"rows": [r.row() for r in shown], "sources": {s: sources[s] for s in sorted(used) if s in sources},
               "imported": [r.row() | {"published": c.value, "published_source": c.score.source if c.score else None}
                            for r, c in zip(imported, compared, strict=True)]}
        if lookup is not None:
            out["lookup"] = asdict(lookup)
        click.echo(json.dumps(out, indent=2))
        return
    if lookup is not None:
        click.echo(_lookup_line(lookup) + "\n")
    if imports:
        click.echo(f"imported from {', '.join(imports)}:")
        click.echo(_rows_table(imported, published=True) if imported else "  (no rows for the filter given)")
        click.echo("")
    if shown:
        click.echo(_rows_table(shown))
    elif not imports:
        what = " on " + benchmark if benchmark else ""
        click.echo(f"no published score for {accuracy.model_key(model) if model else 'any model'}{what} in "
                   f"{accuracy.TABLE.name} (only cited numbers are kept)")
    if used:
        click.echo("\nsources:")
        for s in sorted(used):
            if s in sources:
                click.echo(f"  {s}: {sources[s]['title']} <{sources[s]['url']}>")
