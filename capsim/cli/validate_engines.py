"""``capsim validate --gpu``, ``--vllm-cpu`` and ``--llama-cpp``: the serving engines' profiles fitted and cross-validated."""

from __future__ import annotations

import json
from pathlib import Path

import click

from capsim.atomic import write_text
from capsim.cli.table import render
from capsim.hardware import db as hwdb


def validate_gpu(ctx, root: Path, fit: bool, max_median_error, report_path, plot_path, as_json: bool) -> None:
    from capsim.validation import gpu

    db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None)
    result = gpu.run(root, db, refit=fit)
    if report_path:
        write_text(report_path, gpu.markdown(result, f"capsim validate --gpu --report {report_path}"))
    if plot_path:
        gpu.plot(result, plot_path)
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        click.echo(render(["engine", "regime", "rows", "held-out median", "within 25%", "worst"],
                          [[eng, name, str(cv["rows"]), f"{cv['median_abs']:.1%}", f"{cv['within_25']:.0%}",
                            f"{cv['worst_row']} {cv['worst_error']:+.0%}"]
                           for eng, e in result["engines"].items() for name, cv in e.get("cross_validated", {}).items()]))
    worst = [e["cross_validated"]["all"]["median_abs"] for e in result["engines"].values() if "cross_validated" in e]
    if max_median_error is not None and worst and max(worst) * 100 > max_median_error:
        click.echo(f"capsim: GPU engines' held-out median error above {max_median_error}%", err=True)
        raise SystemExit(1)


def validate_vllm_cpu(root: Path, fit: bool, max_median_error, report_path, as_json: bool) -> None:
    from capsim.validation import vllm_cpu

    result = vllm_cpu.run(root, refit=fit)
    if report_path:
        write_text(report_path, vllm_cpu.markdown(result, f"capsim validate --vllm-cpu --report {report_path}"))
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        click.echo(render(["cases", "n", "held-out median", "worst held out", "fit median"],
                          [[name, str(s["cases"]), f"{s['median_abs']:.1%}", f"{s['worst']:+.0%}",
                            f"{result['summary_fit'][name]['median_abs']:.1%}"]
                           for name, s in result["summary"].items()]))
    median = result["summary"]["all"]["median_abs"]
    if max_median_error is not None and median * 100 > max_median_error:
        click.echo(f"capsim: vllm-cpu held-out median error {median:.1%} above {max_median_error}%", err=True)
        raise SystemExit(1)


def validate_llama_cpp(root: Path, max_median_error, report_path, as_json: bool) -> None:
    from capsim.validation import llama_cpp

    result = llama_cpp.run(root)
    if report_path:
        write_text(report_path, llama_cpp.markdown(result, f"capsim validate --llama-cpp --report {report_path}"))
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        click.echo(render(["cases", "n", "shipped median", "shipped worst", "fitted, held out", "worst"],
                          [[name, str(s["cases"]), f"{s['median_abs']:.1%}", f"{s['worst']:+.0%}",
                            f"{result['held_out'][name]['median_abs']:.1%}", f"{result['held_out'][name]['worst']:+.0%}"]
                           for name, s in result["shipped"].items()]))
    median = result["shipped"]["all"]["median_abs"]
    if max_median_error is not None and median * 100 > max_median_error:
        click.echo(f"capsim: llama.cpp shipped-profile median error {median:.1%} above {max_median_error}%", err=True)
        raise SystemExit(1)
