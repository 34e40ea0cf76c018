r"""The results of ``uenn-geo bench`` summarised: speed ratios, scaling exponents, the table."""

from __future__ import annotations

import math
import statistics
from typing import Any

__all__ = ["RATES", "ratios", "scaling", "format_table"]

#: Rates compared in the ratios: wall clock and CPU time, without and with the neighbour list.
RATES = ("rate_model", "rate_total", "rate_model_cpu", "rate_total_cpu")

#: Our models, and the references they are compared with.
_OURS = ("uenn", "uenn_compiled", "uenn_calc", "uenn_cons", "uenn_cons_calc")
_SCHNETS = ("schnet", "schnet32", "schnet_acc", "mace")

#: Speed-up targets against the accuracy configuration of SchNet (issue 16): direct forces,
#: and forces from the energy.
_TARGETS = {"uenn_cons": 5.0, "uenn_cons_calc": 5.0}


def _ratio_entry(key: tuple, ours: str, by: dict[str, dict]) -> dict[str, Any]:
    system, device, dtype, atoms = key
    entry: dict[str, Any] = {"device": device, "dtype": dtype, "atoms": atoms, "model": ours}
    entry["system"] = system
    u = by[ours]
    for ref in _SCHNETS:
        if ref in by:
            for rate in RATES:
                entry[f"uenn_over_{ref}_{rate[5:]}"] = u[rate] / by[ref][rate]
            target = _TARGETS.get(ours, 10.0) if ref == "schnet_acc" else 10.0
            entry[f"target_10x_{ref}"] = entry[f"uenn_over_{ref}_total"] >= 10.0
            if ref == "schnet_acc":
                entry["target_schnet_acc"] = target
                entry["target_met_schnet_acc"] = entry[f"uenn_over_{ref}_total"] >= target
    if "lj" in by:
        for rate in RATES:
            entry["lj_over_uenn_" + rate[5:]] = by["lj"][rate] / u[rate]
        entry["target_within_5x_lj"] = entry["lj_over_uenn_total"] <= 5.0
    return entry


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our force field against SchNet (speed-up) and against the LJ floor (slow-down), per box."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in results:
        if r["status"] == "ok":
            key = (r.get("system", "argon"), r["device"], r["dtype"], r["atoms"])
            groups.setdefault(key, {})[r["model"]] = r
    return [
        _ratio_entry(key, ours, by) for key, by in groups.items() for ours in _OURS if ours in by
    ]


def _exponent(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``log t`` against ``log N``."""
    x = [math.log(n) for n, _ in points]
    y = [math.log(t) for _, t in points]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return sxy / sum((a - mx) ** 2 for a in x)


def scaling(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r"""Exponent :math:`p` of :math:`t \propto N^p` per model (model-only wall and CPU times)."""
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        if r["status"] == "ok":
            if r.get("system", "argon") == "argon":  # one size per other system
                series.setdefault((r["model"], r["device"], r["dtype"]), []).append(r)
    out = []
    for (model, device, dtype), rows in series.items():
        if len(rows) < 2:
            continue
        out.append(
            {
                "model": model,
                "device": device,
                "dtype": dtype,
                "exponent": _exponent([(r["atoms"], r["time_model_s"]) for r in rows]),
                "exponent_cpu": _exponent([(r["atoms"], r["cpu_time_model_s"]) for r in rows]),
                "atoms": [r["atoms"] for r in rows],
            }
        )
    return out


def _header(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    load = [f"{x:.1f}" for x in m["load_average_start"] or []]
    load_end = [f"{x:.1f}" for x in m["load_average_end"] or []]
    return [
        f"uenn-geo bench: cutoff {report['config']['cutoff']} A, {m['torch_threads']} torch "
        f"thread(s), torch-scatter {'yes' if m['torch_scatter'] else 'no'}, freed memory kept "
        f"{'yes' if m.get('freed_memory_kept') else 'no'}, load average "
        f"{'/'.join(load)} -> {'/'.join(load_end)}",
        "atoms/s = atoms / median wall time of one force evaluation; cpu = per CPU second; "
        "+NL = neighbour list built in the call",
        "calculator rows (uenn_calc, uenn_cons_calc): the ASE calculator as MD calls it, Verlet "
        "skin list inside; both columns are such calls",
        f"{'device':6} {'dtype':7} {'system':9} {'atoms':>6} {'edges':>9} {'model':14} "
        f"{'atoms/s':>10} "
        f"{'+NL':>10} {'cpu':>10} {'cpu +NL':>10} {'ms +NL':>9} {'NL ms':>7} {'peak MiB':>9}",
    ]


def _result_line(r: dict[str, Any]) -> str:
    system = r.get("system", "argon")
    head = (
        f"{r['device']:6} {r['dtype']:7} {system:9} {r['atoms']:>6} {r['edges']:>9} {r['model']:14}"
    )
    if r["status"] != "ok":
        return f"{head} skipped: {r['reason']}"
    rates = " ".join(f"{r[k]:>10,.0f}" for k in RATES)
    return (
        f"{head} {rates} {1e3 * r['time_total_s']:>9.1f} "
        f"{1e3 * r['time_neighbors_s']:>7.1f} {r['peak_memory_mib']:>9.1f}"
    )


def _ratio_lines(q: dict[str, Any]) -> list[str]:
    head = f"{q['device']} {q['dtype']} {q.get('system', 'argon')} {q['atoms']} atoms:"
    ours = q.get("model", "uenn")
    acc = f">= {q.get('target_schnet_acc', 10):g}"
    lines = []
    for key, what, target in (
        ("uenn_over_schnet", f"{ours}/schnet speed", ">= 10"),
        ("uenn_over_schnet32", f"{ours}/schnet32 speed", ">= 10"),
        ("uenn_over_schnet_acc", f"{ours}/schnet_acc speed", acc),
        ("uenn_over_mace", f"{ours}/mace speed", "none"),
        ("lj_over_uenn", f"lj/{ours} speed", "<= 5"),
    ):
        if key + "_total" in q:
            vals = ", ".join(f"{q[key + '_' + r[5:]]:.2f}" for r in RATES)
            lines.append(f"{head} {what} {vals} (as columns; target +NL {target})")
    return lines


def format_table(report: dict[str, Any]) -> str:
    """The results of :func:`~uenn_geo.experiments.bench.run_bench` as a plain-text table
    (rates in atoms per second)."""
    lines = _header(report)
    lines += [_result_line(r) for r in report["results"]]
    for q in report["ratios"]:
        lines += _ratio_lines(q)
    for s in report["scaling"]:
        lines.append(
            f"scaling {s['model']:13} {s['device']} {s['dtype']}: t ~ N^{s['exponent']:.2f} "
            f"(wall), N^{s['exponent_cpu']:.2f} (cpu) over {s['atoms']} atoms"
        )
    return "\n".join(lines)
