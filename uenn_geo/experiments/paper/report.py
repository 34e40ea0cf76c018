"""Figures and the markdown report of the paper experiment (Ma & Chan, sec. 4, Figs. 2-7).

The report depends on a run only through its numbers (the ``metrics`` dictionary that also
goes into ``metrics.json``), never on the code that ran it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uenn_geo.experiments.paper.published import PAPER_RESULTS, paper_md_energy_claim
from uenn_geo.experiments.paper.summary import run_label
from uenn_geo.files import atomic_write

__all__ = ["write_paper_report", "paper_figures"]

FIGURES = {
    "fig2_loss.png": "Fig. 2: training loss and validation force RMSD",
    "fig3_parity.png": "Fig. 3: predicted vs exact test forces",
    "fig4_position_rmsd.png": "Fig. 4: MD position RMSD vs step",
    "fig5_x_atom1.png": "Fig. 5: x coordinate of atom 1, sample 1",
    "fig6_energy_rmsd.png": "Fig. 6: MD total-energy RMSD vs step",
    "fig7_energy_sample1.png": "Fig. 7: total energy of sample 1",
}


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the paper report draws figures with matplotlib: pip install 'uenn-geo[plot]'"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def paper_figures(out: Path, metrics: dict[str, Any], md: dict[str, Any], parity: dict) -> None:
    """Write the six PNG figures into ``out``."""
    plt = _pyplot()
    _fig_loss(plt, out, metrics)
    _fig_parity(plt, out, metrics, parity)
    _fig_md(plt, out, md)


def _fig_loss(plt, out: Path, metrics: dict[str, Any]) -> None:
    """Fig. 2: training loss per epoch, validation error over time (FIRE runs beside)."""
    hist = metrics["train"]["history"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.semilogy([h["epoch"] for h in hist], [h["train_loss"] for h in hist], label="train")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (MSE, scaled units)")
    ax1.set_title(f"{metrics['config']['optimizer']}, {metrics['config']['sampling']} sampling")
    ax2.semilogy(
        [h["elapsed_s"] for h in hist], [h["val_force_rmse"] for h in hist], label="Adam (ours)"
    )
    for name, run in (metrics.get("fire") or {}).items():
        ax2.semilogy(
            [h["elapsed_s"] for h in run["history"]],
            [h["val_force_rmse"] for h in run["history"]],
            label=name.replace("_", " "),
        )
    ax2.axhline(metrics["paper"]["test_force_rmsd"], color="k", ls="--", label="paper (test)")
    ax2.set_xlabel("training time (s)")
    ax2.set_ylabel("validation force RMSD (eV/A)")
    ax2.legend(fontsize=8)
    _save(fig, out / "fig2_loss.png")
    plt.close(fig)


def _fig_parity(plt, out: Path, metrics: dict[str, Any], parity: dict) -> None:
    """Fig. 3: predicted against exact test force components."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(parity["exact"], parity["predicted"], ".", ms=1, alpha=0.4)
    lim = max(abs(min(parity["exact"])), abs(max(parity["exact"])))
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax.set_xlabel("exact force component (eV/A)")
    ax.set_ylabel("predicted (eV/A)")
    ax.set_title(f"test RMSD {metrics['test_force_rmsd']:.2e} eV/A")
    _save(fig, out / "fig3_parity.png")
    plt.close(fig)


def _fig_md(plt, out: Path, md: dict[str, Any]) -> None:
    """Figs. 4-7: the MD test's position and energy RMSD, atom 1's x and sample 1's energy."""
    steps = list(range(len(md["position_rmsd"])))
    claim, claim_step = PAPER_RESULTS["md_energy_rmsd"], PAPER_RESULTS["md_energy_rmsd_step"]
    for name, key, ylabel in (
        ("fig4_position_rmsd.png", "position_rmsd", "position RMSD (A)"),
        ("fig6_energy_rmsd.png", "energy_rmsd", "total-energy RMSD (eV)"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.semilogy(steps[1:], md[key][1:])
        ax.set_xlabel("MD step (1 fs)")
        ax.set_ylabel(ylabel)
        if key == "energy_rmsd":
            label = f"paper: {claim:g} eV at {claim_step}"
            ax.axhline(claim, color="k", ls="--", lw=0.8, label=label)
            ax.legend(fontsize=8)
        _save(fig, out / name)
        plt.close(fig)

    for name, key, ylabel in (
        ("fig5_x_atom1.png", "x_atom1", "x of atom 1 (A)"),
        ("fig7_energy_sample1.png", "energy_sample1", "total energy (eV)"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(steps, md[key]["exact"], label="exact LJ")
        ax.plot(steps, md[key]["learned"], "--", label="learned")
        ax.set_xlabel("MD step (1 fs)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        _save(fig, out / name)
        plt.close(fig)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def _comparison_table(metrics: dict[str, Any]) -> list[str]:
    """The paper's figures, the compared runs and this run side by side (markdown lines)."""
    this = {
        "label": "this run: " + run_label(metrics["config"]),
        "test_force_rmsd": metrics["test_force_rmsd"],
        "train_force_rmsd": metrics["train_force_rmsd"],
        "train_seconds": metrics["train"]["seconds"],
        "training_steps": metrics["train"]["steps"],
        "md": metrics["md"],
    }
    runs = [*metrics["compare"].values(), this]
    paper = metrics["paper"]
    head = ["quantity", "paper", *[r["label"] for r in runs]]
    rows = [
        ("Test force RMSD (eV/A)", paper["test_force_rmsd"], "test_force_rmsd"),
        ("Train force RMSD (eV/A)", None, "train_force_rmsd"),
        ("Training time (s)", None, "train_seconds"),
        ("Training steps", paper["training_steps"], "training_steps"),
    ]
    lines = ["## Side by side", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, p, key in rows:
        vals = [_fmt(round(r[key], 1) if key == "train_seconds" else r[key]) for r in runs]
        lines.append(f"| {name} | {_fmt(p)} | " + " | ".join(vals) + " |")
    steps = sorted({s for r in runs for s in r["md"]["position_rmsd_at"]}, key=int)
    for kind, unit, key in (
        ("position", "A", "position_rmsd_at"),
        ("energy", "eV", "energy_rmsd_at"),
    ):
        for step in steps:
            p = paper_md_energy_claim(step) if kind == "energy" else None
            vals = [_fmt(r["md"][key].get(step)) for r in runs]
            lines.append(
                f"| MD {kind} RMSD at step {step} ({unit}) | {_fmt(p)} | " + " | ".join(vals) + " |"
            )
    vals = [_fmt(r["md"]["bounded"]) for r in runs]
    lines.append("| MD bounded | - | " + " | ".join(vals) + " |")
    dirs = "; ".join(
        f"`{r['dir']}` ({r['threads']} thread(s))" for r in metrics["compare"].values()
    )
    return [*lines, "", f"Compared runs: {dirs}.", ""]


def _summary_rows(metrics: dict[str, Any], md_steps: int) -> list[tuple[str, Any, Any]]:
    """(quantity, paper, this run) rows of the report's first table."""
    cfg, tr, mdm, paper = metrics["config"], metrics["train"], metrics["md"], metrics["paper"]
    net = metrics.get("test_force_rmsd_network")
    compiled = ", torch.compile" if tr.get("compiled") else ""
    rows = [
        ("Test force RMSD (eV/A)", paper["test_force_rmsd"], metrics["test_force_rmsd"]),
        ("Train force RMSD (eV/A)", None, metrics["train_force_rmsd"]),
        *(
            [("Test force RMSD, network before averaging (eV/A)", None, net)]
            if net is not None
            else []
        ),
        (
            "Optimiser",
            paper["optimizer"],
            f"{cfg['optimizer']} (batch {cfg['batch_size']}, "
            f"lr {tr.get('lr', float('nan')):g}{compiled})",
        ),
        ("Training steps", paper["training_steps"], tr["steps"]),
        ("Training time (s)", None, round(tr["seconds"], 1)),
        (
            "Training data",
            paper.get("training_data", "-"),
            f"{cfg['sampling']} ({metrics['data']['train']}/epoch)",
        ),
    ]
    for s, v in mdm["energy_rmsd_at"].items():
        rows.append((f"MD energy RMSD at step {s} (eV)", paper_md_energy_claim(s), v))
    for s, v in mdm["position_rmsd_at"].items():
        rows.append((f"MD position RMSD at step {s} (A)", None, v))
    rows.append((f"MD bounded for {md_steps} steps", None, mdm["bounded"]))
    rows.append(("Force RMS on the exact MD states (eV/A)", None, mdm["md_states_force_rms"]))
    rows.append(("Force RMSD on the exact MD states (eV/A)", None, mdm["md_states_force_rmsd"]))
    if "md_states_jacobian_asymmetry" in mdm:
        curl = "Curl of the forces on the MD states, norm(J - J^T) / norm(J + J^T)"
        rows.append((curl, None, mdm["md_states_jacobian_asymmetry"]))
    return rows


def _changes_paragraph(metrics: dict[str, Any]) -> list[str]:
    """What the online protocol changes from the paper's (empty for the faithful one)."""
    cfg = metrics["config"]
    if cfg["sampling"] != "online":
        return []
    averaged = (
        "The trained network is averaged over the 24 orderings of the 4 identical "
        "atoms (permutation symmetry; the network alone tells atoms apart by their "
        "slot): test, MD and `model.pt` use the averaged model. "
        if metrics.get("symmetrized")
        else ""
    )
    return [
        "Changed from the paper: the training set is drawn afresh from the paper's sampling "
        "recipe every epoch (online sampling) instead of being a fixed 60,000 "
        "configurations; validation and test are the paper's fixed 20 % splits. "
        f"A fraction {cfg['augment']} of each epoch are compact thermal 4-atom clusters "
        "(5-40 K, the regime of the MD test, which the paper's recipe almost never "
        "samples: 0.1 % of its configurations have all pairs closer than 5 A). "
        f"Net-force removal: {cfg['remove_net_force']}. "
        + averaged
        + "The faithful protocol is `uenn-geo paper --faithful`.",
        "",
    ]


def _fire_table(metrics: dict[str, Any]) -> list[str]:
    """Adam's run beside the short FIRE runs (empty where there were none)."""
    if not metrics.get("fire"):
        return []
    cfg, tr = metrics["config"], metrics["train"]
    lines = [
        "## FIRE beside Adam",
        "",
        "| run | steps | s/step | best val RMSD (eV/A) |",
        "|---|---|---|---|",
        f"| Adam, batch {cfg['batch_size']} | {tr['steps']} | "
        f"{tr['seconds_per_step']:.3g} | {_fmt(tr['best_val_force_rmsd'])} |",
    ]
    for name, run in metrics["fire"].items():
        lines.append(
            f"| {name.replace('_', ' ')} (batch {run['batch_size'] or 'all'}) | "
            f"{run['steps']} | {run['seconds_per_step']:.3g} | "
            f"{_fmt(run['best_val_force_rmsd'])} |"
        )
    return [*lines, ""]


def write_paper_report(out: Path, metrics: dict[str, Any], md: dict, parity: dict) -> None:
    """Write the figures and ``report.md`` (the paper's numbers beside ours) into ``out``."""
    paper_figures(out, metrics, md, parity)
    cfg, data, machine = metrics["config"], metrics["data"], metrics["machine"]
    lines = [
        "# Reproduction of Ma & Chan, sec. 4: argon forces and dynamics",
        "",
        f"Model `{cfg['model']}`, {data['num_configs']} configurations "
        f"(seed {cfg['seed']}, r_min {cfg['r_min']} A, sigma {cfg['sigma']} A), "
        f"split {data['train']}/{data['val']}/{data['test']}. "
        f"Total wall time {metrics['total_seconds']:.0f} s on {machine['threads']} "
        f"thread(s) ({machine['platform']}, torch {machine['torch']}).",
        "",
        "| quantity | paper | this run |",
        "|---|---|---|",
        *[
            f"| {name} | {_fmt(p)} | {_fmt(o)} |"
            for name, p, o in _summary_rows(metrics, md["steps"])
        ],
        "",
        *_changes_paragraph(metrics),
        *(_comparison_table(metrics) if metrics.get("compare") else []),
        *_fire_table(metrics),
        "## Figures",
        "",
        *[f"![{title}]({name})" for name, title in FIGURES.items()],
        "",
    ]
    atomic_write(out / "report.md", lambda f: f.write("\n".join(lines)), mode="w")
