"""``capsim validate``: predictions beside measured runs, errors per case and in aggregate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import yaml

from capsim import data, engines
from capsim.atomic import write_text
from capsim.cli.table import render
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.hardware.target import resolve_target

DEFAULT_CONFIG = data.path("validation") / "config.yaml"  # the shipped validation (capsim.data)


def _config(path: Path) -> dict:
    from capsim import checks

    return checks.mapping(checks.read_yaml(path, "validation config"), str(path), "a mapping (hardware_db, cpu, ...)")


CPU_FIELDS = {"hardware": str, "runs": str, "engine": str, "dtype": str, "fit": list}  # validate config: cpu.*


def _cpu(cfg: dict, path: Path) -> dict:
    """The config's cpu section, with every field the CPU and disk validations read checked."""
    if not isinstance(cfg.get("hardware_db"), str):
        raise CapsimError(f"{path}: field hardware_db: expected a folder path (relative to the checkout)")
    cpu = cfg.get("cpu")
    if not isinstance(cpu, dict):
        raise CapsimError(f"{path}: field cpu: expected a mapping ({', '.join(CPU_FIELDS)})")
    for key, kind in CPU_FIELDS.items():
        if not isinstance(cpu.get(key), kind):
            raise CapsimError(f"{path}: field cpu.{key}: expected a {'list' if kind is list else 'string'}, "
                              f"got {cpu.get(key)!r}")
    return cpu


def _fixed(cpu: dict, db_root: Path, config_path: Path) -> tuple[dict[str, object], dict[str, str]]:
    """The profile values the config sets by mechanism (not fitted), and how each was set: ``fixed`` (general
    parameters and switches) and ``eager_cpu`` (the eager engine's allocator model). ``gemm_curves:
    probe[:N,...]`` takes the probe's measured GEMM curves (those with N = K in the list) for the run's dtype;
    ``gemm_half_rows: probe`` its Hockney n_1/2; ``math_attention_s_per_score: probe`` its timing of torch's
    math SDPA. The machine's page-fault costs are not here: they are in the probed hardware entry."""
    from capsim.measure.gemm_curve import curves_from_probe, half_rows_from_probe

    values, how = {}, {}
    probe_file = db_root / "probe" / f"{cpu['hardware']}.json"
    sections = (("fixed", cpu.get("fixed") or {}), ("eager_cpu", cpu.get("eager_cpu") or {}))
    for section, items in sections:
        for name, value in items.items():
            where = f"{config_path}: cpu.{section}.{name}"
            if name == "gemm_curves" and section == "fixed":
                sizes = _probe_sizes(value)
                if sizes == ():
                    raise CapsimError(f"{where}: expected 'probe' or 'probe:N[,N...]' (the N = K of the curves to "
                                      f"use), got {value!r}")
                values[name] = curves_from_probe(probe_file, cpu["dtype"], sizes)
                how[name] = (f"the {cpu['dtype']} torch GEMM curves of {len(values[name])} weight shapes (K x N: "
                             f"{', '.join(f'{c[0]:.0f}x{c[1]:.0f}' for c in values[name])}) measured in "
                             f"{probe_file.name}")
            elif name == "gemm_half_rows" and value == "probe":
                got = half_rows_from_probe(probe_file, cpu["dtype"])
                values[name] = got["half_rows"]
                how[name] = (f"Hockney n_1/2 fitted to the {cpu['dtype']} torch.mm curve in {probe_file.name} "
                             f"(compute-bound points M = {', '.join(map(str, got['points']))})")
            elif name in PROBED and value == "probe":
                keys, field, describe = PROBED[name]
                values[name] = _probe_value(probe_file, keys, field)
                how[name] = (f"{describe(values[name], probe_file)}, measured in {probe_file.name} "
                             f"(cpu.{'.'.join(keys)})")
            else:
                allowed = engines.EAGER_CPU if section == "eager_cpu" else (*engines.PARAMETERS, *engines.SWITCHES)
                if name not in allowed:
                    moved = f" (moved to {engines.MOVED[name]})" if name in engines.MOVED else ""
                    raise CapsimError(f"{where}: unknown{moved} (expected {', '.join(allowed)})")
                values[name] = value
                how[name] = f"set in {config_path.name} (mechanism, not fitted)"
    return values, how


# Profile values a config may set to 'probe': (where in the probe result, which field or None for its per-unit
# time, how the value reads)
PROBED = {
    "math_attention_s_per_score": (("attention_math",), None, lambda v, _: (
        f"{v * 1e9:.2f} ns per score element: torch's math SDPA beyond its two matmuls")),
}


def _probe_value(path: Path, keys: tuple[str, ...], field: str | None = None) -> float:
    """The probe's value at cpu.<keys>: ``field``, or the per-unit time s_per_byte or s_per_score."""
    import json

    where = "cpu." + ".".join(keys)
    try:
        node = json.loads(path.read_text())["cpu"]
        for k in keys:
            node = node[k]
        if field is not None:
            return float(node[field])
        return float(node["s_per_byte"] if "s_per_byte" in node else node["s_per_score"])
    except (OSError, ValueError) as err:
        raise CapsimError(f"{path}: unreadable probe result ({err})") from None
    except (KeyError, TypeError):
        raise CapsimError(f"{path}: no {where} (run capsim probe again)") from None


def _probe_sizes(value) -> tuple[int, ...] | None:
    """'probe' -> None (every curve); 'probe:1024,4096' -> (1024, 4096); anything else -> ()."""
    text = str(value)
    if text == "probe":
        return None
    head, _, rest = text.partition(":")
    try:
        sizes = tuple(int(x) for x in rest.split(","))
    except ValueError:
        return ()
    return sizes if head == "probe" and sizes else ()


@click.command("validate")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG,
              show_default=True, help="What to validate and the fitting subset.")
@click.option("--fit", is_flag=True, help="Refit the engine profile on the fitting subset and write it.")
@click.option("--max-median-error", type=float, default=None,
              help="Exit 1 when a held-out phase's median absolute error (%) exceeds this.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, help="Write the log-log PNG.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Write a Markdown report.")
@click.option("--published", is_flag=True,
              help="Validate against the published results (validation/published/) instead of the CPU runs; "
                   "--max-median-error then applies to all supported rows.")
@click.option("--disk", is_flag=True,
              help="Validate the SSD path against the disk runs (validation/measured/disk/: experts memory-mapped "
                   "from a file, cold and warm page cache) instead of the CPU runs; --max-median-error then applies "
                   "to the cold modes.")
@click.option("--routing", "routing_mode", is_flag=True,
              help="Put the activated experts per layer that real routing (and uniform) predicts beside the published "
                   "measurements (validation/published/activated_experts.yaml); --max-median-error applies to real.")
@click.option("--gpu", is_flag=True,
              help="Fit (with --fit) and cross-validate the GPU serving engines (vllm, sglang, trt-llm) on the "
                   "published corpus (validation/published/gpu/): held-out error per engine and regime.")
@click.option("--cpu-corpus", "cpu_corpus", is_flag=True,
              help="Fit (with --fit) and cross-validate the CPU and hybrid engines per backend (llama.cpp, ik-llama.cpp, "
                   "llama.cpp-cuda/-metal/-rocm, ktransformers, ktransformers-amx, sglang-cpu, moe-infinity) on the "
                   "published corpus (validation/published/cpu/): held-out error per backend, prefill and decode.")
@click.option("--vllm-cpu", "vllm_cpu", is_flag=True,
              help="Fit (with --fit) and cross-validate (leave one shape out) the vllm-cpu profile on vLLM's CPU build "
                   "measured on this machine (validation/measured/vllm-cpu/, 'capsim measure --engine vllm').")
@click.option("--llama-cpp", "llama_cpp", is_flag=True,
              help="Predict llama.cpp measured on this machine (validation/measured/llama.cpp/, 'capsim measure "
                   "--engine llama.cpp') with the shipped llama.cpp profile, and with its parameters fitted to the "
                   "other shapes (reported, not written).")
@click.option("--serving", is_flag=True,
              help="Predict published serving-benchmark runs under load (validation/published/serving/) with capsim "
                   "serve: held-out error per statistic.")
@click.option("--vllm-serve", "vllm_serve", is_flag=True,
              help="Predict vLLM's CPU build serving under load on this machine (validation/measured/vllm-serve/) "
                   "with capsim serve and the vllm-cpu profile: held-out error per statistic.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def validate_cmd(ctx: click.Context, config_path: Path, fit: bool, max_median_error: float | None,
                 plot_path: Path | None, report_path: Path | None, published: bool, disk: bool, routing_mode: bool,
                 gpu: bool, cpu_corpus: bool, vllm_cpu: bool, llama_cpp: bool, vllm_serve: bool, serving: bool,
                 as_json: bool) -> None:
    """Predict every measured case and report the error (held-out cases separately from the fitting subset).

    Exit codes: 0 ok; 1 a median error above --max-median-error; 2 bad input (config, run file, CSV row).
    """
    from capsim import atomic, checks, outputs
    from capsim.validation import report
    from capsim.validation.cases import load_cases, predict_case
    from capsim.validation.fit import fit_profile, split

    if max_median_error is not None:
        checks.number(max_median_error, "--max-median-error", low=0.0, high=None)
    if plot_path is not None:
        atomic.figure_format(plot_path, "--plot")
        outputs.check_output(plot_path, "figure", "--plot")
    if report_path is not None:
        outputs.check_output(report_path, "report", "--report")
    if routing_mode:
        _routing(config_path.resolve().parent, max_median_error, report_path, as_json)
        return
    if gpu or cpu_corpus:
        from capsim.cli.validate_engines import validate_corpus

        validate_corpus(ctx, "gpu" if gpu else "cpu_corpus", config_path.resolve().parent, fit, max_median_error,
                        report_path, plot_path, as_json)
        return
    if llama_cpp:
        from capsim.cli.validate_engines import validate_llama_cpp

        validate_llama_cpp(config_path.resolve().parent, max_median_error, report_path, as_json)
        return
    if vllm_serve or serving:
        from capsim.cli.validate_engines import validate_serving

        validate_serving(ctx, "vllm_serve" if vllm_serve else "serving", config_path.resolve().parent,
                         max_median_error, report_path, as_json, fit)
        return
    if vllm_cpu:
        from capsim.cli.validate_engines import validate_vllm_cpu

        validate_vllm_cpu(config_path.resolve().parent, fit, max_median_error, report_path, as_json)
        return
    cfg = _config(config_path)
    root = config_path.resolve().parent.parent
    if published:
        # the published rows name catalogue hardware: the built-in database, or capsim --hardware-db's
        db_path = ctx.obj.get("hardware_db") if ctx.obj else None
        _published(hwdb.load(db_path), cfg, root, config_path, fit, max_median_error, report_path, as_json)
        return
    if disk:
        if fit:
            raise CapsimError("--disk: nothing is fitted to the disk runs (the CPU profile is used as committed)")
        _disk(cfg, root, max_median_error, report_path, as_json, config_path)
        return
    cpu = _cpu(cfg, config_path)
    db = hwdb.load(root / cfg["hardware_db"])
    target = resolve_target(db, cpu["hardware"])
    cases = load_cases(root / cpu["runs"])
    fit_set, held = split(cases, cpu["fit"])
    if not fit_set:
        raise CapsimError(f"{config_path}: cpu.fit matches no case")
    if fit:
        fixed, how = _fixed(cpu, root / cfg["hardware_db"], config_path)
        curves = fixed.pop("gemm_curves", ())
        base = dataclasses.replace(engines.load("roofline"), id=cpu["engine"], version=1,
                                   description="Hugging Face transformers, eager PyTorch (no compile), on the CPU",
                                   fitted_to="", gemm_curves=curves)
        base = engines.with_values(base, fixed, f"{config_path}: cpu")
        prof, info = fit_profile(fit_set, target, base, cpu["dtype"])
        prof = dataclasses.replace(prof, fitted_to=(
            f"{len(fit_set)} measured CPU cases ({', '.join(cpu['fit'])}) on {cpu['hardware']}, "
            f"least squares on log error, rms {info['rms_log_error']:.3f}"), fitted_cases=tuple(info["cases"]))
        path = engines.write(prof, {"not_fitted": how})
        click.echo(f"wrote {path} (rms log error {info['rms_log_error']:.3f} on {len(fit_set)} cases)",
                   err=True)
    prof = engines.load(cpu["engine"])
    leaked = set(prof.fitted_cases) & {c.id for c in held}
    if leaked:
        raise CapsimError(f"profile {prof.id} was fitted to held-out case(s) {', '.join(sorted(leaked))}: refit")
    predicted = [predict_case(c, target, prof, cpu["dtype"]) for c in cases]
    table = report.rows(cases, predicted, {c.id for c in held})
    agg = report.aggregates(table)
    if plot_path:
        report.plot(table, plot_path, f"capsim {prof.id} vs measured ({cpu['hardware']})")
    if report_path:
        head = (f"# Validation: {prof.id} on {cpu['hardware']}\n\nProfile: {prof.fitted_to}.\n"
                f"Command: `capsim validate --report {report_path}" + (f" --plot {plot_path}" if plot_path else "") + "`"
                + _profile_lines(prof) + _faults_line(target, cpu["hardware"]))
        write_text(report_path, report.markdown(table, agg, head))
    if as_json:
        click.echo(json.dumps({"profile": prof.describe(), "aggregates": agg, "cases": table}, indent=1))
    else:
        click.echo(render(["case", "subset", "predicted", "measured", "error"],
                          [[r["case"], r["subset"], f"{r['predicted_s'] * 1e3:.2f} ms", f"{r['measured_s'] * 1e3:.2f} ms",
                            f"{r['error_pct']:+.1f}%"] for r in table]))
        click.echo("")
        click.echo(_aggregates(["subset/phase", "cases"], agg, "cases"))
    if max_median_error is not None:
        worst = [k for k, v in agg.items() if k.startswith("held-out") and v["median_abs_pct"] > max_median_error]
        if worst:
            click.echo(f"capsim: held-out median error above {max_median_error}%: {', '.join(worst)}", err=True)
            raise SystemExit(1)


def _profile_lines(prof) -> str:
    """The fitted parameters and those set by mechanism (with how), for the report's header."""
    from capsim.validation.fit import FIT_PARAMETERS

    try:
        how = (yaml.safe_load((engines.FOLDER / f"{prof.id}.yaml").read_text()) or {}).get("not_fitted") or {}
    except (OSError, yaml.YAMLError):
        how = {}
    fitted = ", ".join(f"{n} {getattr(prof, n):.4g}" for n in FIT_PARAMETERS)
    lines = ["", "", f"Fitted (on the fitting subset only): {fitted}.", "", "Set by mechanism or measurement, not fitted:"]
    def value(name: str):
        if name == "gemm_curves":
            return len(prof.gemm_curves)
        return getattr(prof, name) if hasattr(prof, name) else getattr(prof.eager_cpu, name, "")

    lines += [f"- {name} = {value(name)}: {text}" for name, text in how.items()]
    return "\n".join(lines)


def _faults_line(target, hardware: str) -> str:
    """The machine's page-fault costs the eager engine pays, from the hardware entry (not the profile)."""
    f = target.page_faults
    if not f.first_touch_s_per_byte:
        return ""
    return (f"\n\nMachine facts from the hardware entry {hardware} (memory_faults, measured by capsim probe): first touch "
            f"{f.first_touch_s_per_byte * 1e9:.4g} ns/B; refault {f.refault_s_per_byte * 1e9:.4g} ns/B beyond "
            f"{f.retained_free_bytes / 1e9:.3g} GB of freed memory kept backed.")


def _aggregates(head: list[str], agg: dict, count: str) -> str:
    """The median / max absolute error table of a validation, one row per subset."""
    return render([*head, "median |error|", "max |error|"],
                  [[k, str(v[count]), f"{v['median_abs_pct']:.1f}%", f"{v['max_abs_pct']:.1f}%"] for k, v in agg.items()])


def _published(db, cfg: dict, root: Path, config_path: Path, fit: bool, max_median_error: float | None,
               report_path: Path | None, as_json: bool) -> None:
    from capsim.validation.published_run import markdown, validate_published

    result = validate_published(db, cfg, root, config_path, fit)
    for line in result["log"]:
        click.echo(line, err=True)
    if report_path:
        write_text(report_path, markdown(result, f"capsim validate --published --report {report_path}"))
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        click.echo(render(["row", "engine", "hardware", "metric", "subset", "kind", "predicted", "published", "error"],
                          [[t["row"], t["engine"], t["hardware"], t["metric"], t["subset"], t["kind"],
                            f"{t['predicted']:.4g} {t['unit']}", f"{t['published']:.4g} {t['unit']}",
                            f"{t['error_pct']:+.1f}%"] for t in result["rows"]]))
        click.echo("")
        click.echo(_aggregates(["subset", "rows"], result["aggregates"], "rows"))
        click.echo(f"\n{len(result['unsupported'])} rows not supported yet (reasons: --json or --report).")
    if max_median_error is not None and result["aggregates"]["all"]["median_abs_pct"] > max_median_error:
        click.echo(f"capsim: published median error above {max_median_error}%", err=True)
        raise SystemExit(1)


def _disk(cfg: dict, root: Path, max_median_error: float | None, report_path: Path | None, as_json: bool,
          config_path: Path) -> None:
    """The disk runs predicted with the CPU section's hardware, engine profile and dtype (``disk:`` in the
    config may name others, and ``runs``, default validation/measured/disk)."""
    from capsim.validation.disk import markdown, validate_disk

    cpu, disk = _cpu(cfg, config_path), cfg.get("disk") or {}
    hardware, engine, dtype = (disk.get(k, cpu[k]) for k in ("hardware", "engine", "dtype"))
    target = resolve_target(hwdb.load(root / cfg["hardware_db"]), hardware)
    prof = engines.load(engine)
    result = validate_disk(root / disk.get("runs", "validation/measured/disk"), target, prof, dtype)
    rows, agg = result["rows"], result["aggregates"]
    if report_path:
        command = "capsim validate --disk --report " + str(report_path)
        write_text(report_path, markdown(result, command, prof, hardware))
    if as_json:
        click.echo(json.dumps({"profile": prof.id, "hardware": hardware, "aggregates": agg, "cases": rows}, indent=1))
    else:
        click.echo(render(["case", "predicted", "of which read", "measured", "read MiB pred / meas", "error"],
                          [[r["case"], f"{r['predicted_s'] * 1e3:.1f} ms", f"{r['predicted_read_s'] * 1e3:.1f} ms",
                            f"{r['measured_s'] * 1e3:.1f} ms",
                            "-" if r["mode"] == "warm" or r["measured_read_bytes"] is None else
                            f"{r['predicted_read_bytes'] / 2**20:.0f} / {r['measured_read_bytes'] / 2**20:.0f}",
                            f"{r['error_pct']:+.1f}%"] for r in rows]))
        click.echo("")
        click.echo(_aggregates(["mode", "cases"], agg, "cases"))
    if max_median_error is not None:
        worst = [k for k in ("cold", "cold-4k") if k in agg and agg[k]["median_abs_pct"] > max_median_error]
        if worst:
            click.echo(f"capsim: disk median error above {max_median_error}%: {', '.join(worst)}", err=True)
            raise SystemExit(1)


def _routing(root: Path, max_median_error: float | None, report_path: Path | None, as_json: bool) -> None:
    from capsim.cli.validate_engines import finish
    from capsim.validation import routing

    t = routing.table(root)

    def table() -> str:
        rows = render(["id", "model", "batch", "measured", "real (p10-p90)", "routing", "error", "uniform", "error"],
                      [[r["id"], r["model"], str(r["batch"]), str(r["measured"]), "-", "skipped: " + r["skipped"],
                        "-", "-", "-"] if "skipped" in r else
                       [r["id"], r["model"], str(r["batch"]), f"{r['measured']:.1f}",
                        f"{r['real']:.1f} ({r['real_p10']:.1f}-{r['real_p90']:.1f})", r["routing"],
                        f"{r['error_real']:+.0%}", f"{r['uniform']:.1f}", f"{r['error_uniform']:+.0%}"]
                       for r in t["rows"]])
        return (f"{rows}\n\nmedian absolute error over {t['priced']} rows: real routing "
                f"{t['median_abs_error_real']:.0%}, uniform {t['median_abs_error_uniform']:.0%}")

    finish(t, report_path=report_path, as_json=as_json, max_median_error=max_median_error, table=table,
           markdown=lambda: routing.markdown(t, f"capsim validate --routing --report {report_path}"),
           median=t["median_abs_error_real"], what="routing median error")
