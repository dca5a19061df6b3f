"""``capsim validate --gpu``, ``--cpu-corpus``, ``--vllm-cpu``, ``--vllm-serve``, ``--serving`` and ``--llama-cpp``: the serving engines' profiles fitted and
cross-validated; :func:`finish` is how every ``validate`` mode reports (report file, JSON or table, the
--max-median-error exit)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from capsim.atomic import write_text
from capsim.cli.table import render
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb


def finish(result, *, report_path, markdown: Callable[[], str], as_json: bool, table: Callable[[], str],
           median: float | None, max_median_error, what: str) -> None:
    """Write the Markdown report (if asked), print the JSON or the table, and exit 1 when ``median`` (a fraction)
    is above --max-median-error (a percentage); ``what`` names the error in that message."""
    if report_path:
        write_text(report_path, markdown())
    click.echo(json.dumps(result, indent=1) if as_json else table())
    if max_median_error is not None and median is not None and median * 100 > max_median_error:
        click.echo(f"capsim: {what} above {max_median_error}%", err=True)
        raise SystemExit(1)


def validate_corpus(ctx, which: str, root: Path, fit: bool, max_median_error, report_path, plot_path,
                    as_json: bool) -> None:
    """``--gpu`` (capsim.validation.gpu) or ``--cpu-corpus`` (capsim.validation.cpu_corpus)."""
    import importlib

    mod = importlib.import_module(f"capsim.validation.{which}")
    flag = "--" + which.replace("_", "-")
    from capsim.cli import progress as bars

    db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None)
    with bars.Progress(len(mod.ENGINES), "fitting and holding out" if fit else "holding out",
                       enabled=bars.wanted(None, as_json), unit="engines") as bar:
        result = mod.run(root, db, refit=fit, progress=lambda done, total: bar.set(done, total))
        bar.set(len(mod.ENGINES))
    if plot_path:
        mod.plot(result, plot_path)
    worst = [e["cross_validated"]["all"]["median_abs"] for e in result["engines"].values()
             if e.get("cross_validated")]
    finish(result, report_path=report_path, as_json=as_json, max_median_error=max_median_error,
           markdown=lambda: mod.markdown(result, f"capsim validate {flag} --report {report_path}"),
           table=lambda: render(["engine", "regime", "rows", "held-out median", "within 25%", "worst"],
                                [[eng, name, str(cv["rows"]), f"{cv['median_abs']:.1%}", f"{cv['within_25']:.0%}",
                                  f"{cv['worst_row']} {cv['worst_error']:+.0%}"]
                                 for eng, e in result["engines"].items()
                                 for name, cv in e.get("cross_validated", {}).items()]),
           median=max(worst) if worst else None, what=f"{flag} engines' held-out median error")


def validate_vllm_cpu(root: Path, fit: bool, max_median_error, report_path, as_json: bool) -> None:
    from capsim.validation import vllm_cpu

    result = vllm_cpu.run(root, refit=fit)
    median = result["summary"]["all"]["median_abs"]
    finish(result, report_path=report_path, as_json=as_json, max_median_error=max_median_error,
           markdown=lambda: vllm_cpu.markdown(result, f"capsim validate --vllm-cpu --report {report_path}"),
           table=lambda: render(["cases", "n", "held-out median", "worst held out", "fit median"],
                                [[name, str(s["cases"]), f"{s['median_abs']:.1%}", f"{s['worst']:+.0%}",
                                  f"{result['summary_fit'][name]['median_abs']:.1%}"]
                                 for name, s in result["summary"].items()]),
           median=median, what=f"vllm-cpu held-out median error {median:.1%}")


def validate_llama_cpp(root: Path, max_median_error, report_path, as_json: bool) -> None:
    from capsim.validation import llama_cpp

    result = llama_cpp.run(root)
    held, median = result["held_out"], result["shipped"]["all"]["median_abs"]
    finish(result, report_path=report_path, as_json=as_json, max_median_error=max_median_error,
           markdown=lambda: llama_cpp.markdown(result, f"capsim validate --llama-cpp --report {report_path}"),
           table=lambda: render(["cases", "n", "shipped median", "shipped worst", "fitted, held out", "worst"],
                                [[name, str(s["cases"]), f"{s['median_abs']:.1%}", f"{s['worst']:+.0%}",
                                  f"{held[name]['median_abs']:.1%}", f"{held[name]['worst']:+.0%}"]
                                 for name, s in result["shipped"].items()]),
           median=median, what=f"llama.cpp shipped-profile median error {median:.1%}")


def validate_serving(ctx, which: str, root: Path, max_median_error, report_path, as_json: bool,
                     fit: bool = False) -> None:
    """``--vllm-serve`` (measured here, capsim.validation.vllm_serve) or ``--serving`` (published,
    capsim.validation.serving; with ``--fit`` the vllm profile's front-end intake is fitted first and written):
    held-out error per statistic; --max-median-error applies to the worst mean."""
    import importlib

    from capsim.cli import progress as bars

    mod = importlib.import_module(f"capsim.validation.{which}")
    flag = "--" + which.replace("_", "-")
    if fit and which != "serving":
        raise CapsimError(f"--fit: {flag} fits nothing (its profile is fitted by 'capsim validate --vllm-cpu --fit')")
    if which == "vllm_serve":
        result = mod.run(root)
    else:
        db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None)
        if fit:
            a, path = mod.fit_shipped(root, db)
            click.echo(f"front-end intake {a * 1e3:.3g} ms per request written to {path}", err=True)
        with bars.Progress(1, "holding out by page", enabled=bars.wanted(None, as_json), unit="steps") as bar:
            result = mod.run(root, db, progress=lambda done, total: bar.set(done, total))
    means = [s["median_abs"] for k, s in result["summary"].items() if k.endswith("_mean")]
    median = max(means) if means else None
    finish(result, report_path=report_path, as_json=as_json, max_median_error=max_median_error,
           markdown=lambda: mod.markdown(result, f"capsim validate {flag} --report {report_path}"),
           table=lambda: render(["statistic", "runs", "held-out median", "within 25%", "worst"],
                                [[k, str(s["runs"]), f"{s['median_abs']:.1%}", f"{s['within_25']:.0%}",
                                  f"{s['worst_run']} {s['worst_error']:+.0%}"] for k, s in result["summary"].items()]),
           median=median, what=f"{flag}: the worst mean statistic's held-out median error")
