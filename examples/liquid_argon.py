r"""Liquid argon after Rahman (1964): learned force fields against exact Lennard-Jones MD.

864 argon atoms in a periodic cube at 1.374 g/cm^3 and 94.4 K, Lennard-Jones with
eps/k_B = 120 K and sigma = 3.4 A (shifted-force, cut at 2.25 sigma = 7.65 A, Rahman's range),
velocity Verlet with dt = 1 fs (``--dt``; Rahman used 10 fs). The script

1. equilibrates exact-LJ MD at 94.4 K (velocity rescaling), then runs 10 ps of NVE and
   records frames;
2. trains two :class:`uenn_geo.models.UENNForceField` models on those frames' forces:
   ``direct`` (forces predicted directly) and ``conservative`` (forces = -dE/dr);
3. runs 10 ps of NVE MD with each learned model from the same equilibrated state, the direct
   model twice: with its net-force removal on (the default) and off;
4. compares the radial distribution function g(r) (first peak position and height), the
   self-diffusion coefficient D (Einstein relation; Rahman: 2.43e-5 cm^2/s) and the drift of
   the total energy (exact LJ energy + kinetic energy along every trajectory; the conservative
   model's own energy too) per atom per ns; prints a table, writes ``results.json`` and the
   g(r) plot ``gr.png`` into ``--out``.

Units: Angstrom, fs, eV, u, K. Run ``python examples/liquid_argon.py --threads 1`` (about
45 minutes on one CPU core) or ``--quick`` (a few minutes, shorter runs and training).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch_geometric.data import Data

from uenn_geo.constants import ARGON_MASS, ARGON_SIGMA, RAHMAN_DENSITY
from uenn_geo.data.lj import lennard_jones_pairs
from uenn_geo.data.structures import argon_fcc
from uenn_geo.dynamics import maxwell_boltzmann, temperature, velocity_verlet
from uenn_geo.edges import build_edges
from uenn_geo.files import atomic_write
from uenn_geo.models import UENNForceField, save_model
from uenn_geo.neighbors import RadiusGraph
from uenn_geo.train import TrainConfig, train

F64 = torch.float64
NUM_ATOMS = 864  # 6^3 fcc cells x 4
DENSITY = RAHMAN_DENSITY  # g/cm^3
TEMPERATURE = 94.4  # K
CUTOFF = 2.25 * ARGON_SIGMA  # 7.65 A
DT = 1.0  # fs
RAHMAN_D = 2.43e-5  # cm^2/s

#: Steps at dt = 1 fs (scaled by 1 fs / dt for other time steps) and training seconds.
PRESETS = {
    "default": {"equil": 2000, "ref": 10000, "record": 20, "train_s": 200.0, "md": 10000},
    "quick": {"equil": 400, "ref": 1000, "record": 10, "train_s": 30.0, "md": 1000},
}


def lattice() -> tuple[torch.Tensor, torch.Tensor]:
    """fcc positions (A) and the cubic cell for 864 atoms at Rahman's density."""
    return argon_fcc(NUM_ATOMS, density=DENSITY, displacement=0.0)


def pair_distances(pos: torch.Tensor, cell: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Distances (A) of every ordered pair within ``cutoff``, periodic images included."""
    edges = build_edges(pos, cutoff, cell=cell.unsqueeze(0))
    return edges.vectors(pos).norm(dim=1)


def lj(pos: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    edges = build_edges(pos, CUTOFF, cell=cell.unsqueeze(0))
    energy, forces = lennard_jones_pairs(pos, edges.index, edges.shifts, cutoff=CUTOFF, check=False)
    return energy[0], forces


def model_forces(model: UENNForceField, cell: torch.Tensor):
    """The MD force function of ``model`` (with its energy for a conservative model)."""
    cell = cell.to(model.dtype).unsqueeze(0)

    def forces(pos: torch.Tensor):
        x = pos.to(model.dtype)
        edges = build_edges(x, model.cutoff, cell=cell)
        out = model.energy_forces(Data(pos=x), edges)
        if out["energy"] is None:
            return out["forces"].detach().to(F64)
        return out["energy"][0].detach().to(F64), out["forces"].detach().to(F64)

    return forces


def rdf(frames: torch.Tensor, cell: torch.Tensor, r_max: float = 10.0, dr: float = 0.05):
    """g(r) averaged over frames :obj:`(T, N, 3)`; returns bin centres and g."""
    num = frames.shape[1]
    volume = torch.linalg.det(cell).item()
    bins = int(r_max / dr)
    hist = torch.zeros(bins, dtype=F64)
    for pos in frames:
        hist += torch.histc(pair_distances(pos, cell, r_max), bins=bins, min=0.0, max=r_max)
    edges = torch.arange(bins + 1, dtype=F64) * dr
    shell = 4.0 / 3.0 * math.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = hist / (frames.shape[0] * num * (num / volume) * shell)
    return 0.5 * (edges[1:] + edges[:-1]), g


def msd_curve(positions: torch.Tensor) -> torch.Tensor:
    """Mean squared displacement (A^2) at every lag (in frames), averaged over all time origins
    and atoms, from unwrapped positions :obj:`(T, N, 3)`."""
    num = positions.shape[0]
    msd = torch.zeros(num, dtype=F64)
    for lag in range(1, num):
        msd[lag] = (positions[lag:] - positions[:-lag]).square().sum(-1).mean()
    return msd


def diffusion(positions: torch.Tensor, times: torch.Tensor, blocks: int = 4) -> tuple[float, float]:
    """Einstein D in cm^2/s and its standard error.

    D = slope / 6 of the MSD (averaged over all time origins) against the lag, fitted over lags
    from 1 ps (past the ballistic regime) to a quarter of the run. The error is the standard
    error of the mean of the same estimate on ``blocks`` consecutive blocks of the run (lags
    up to a quarter of a block).
    """

    def estimate(pos: torch.Tensor, t: torch.Tensor) -> float:
        dt = float(t[1] - t[0])
        msd = msd_curve(pos)
        lo = min(max(1, round(1000.0 / dt)), len(t) // 8)
        hi = max(lo + 2, len(t) // 4)
        lag = torch.arange(len(t), dtype=F64)[lo:hi] * dt
        m = msd[lo:hi]
        slope = ((lag - lag.mean()) * (m - m.mean())).sum() / (lag - lag.mean()).square().sum()
        return slope.item() / 6.0 * 0.1  # A^2/fs -> cm^2/s

    whole = estimate(positions, times)
    size = len(times) // blocks
    parts = [estimate(positions[k * size : (k + 1) * size], times[:size]) for k in range(blocks)]
    mean = sum(parts) / blocks
    var = sum((x - mean) ** 2 for x in parts) / (blocks - 1)
    return whole, math.sqrt(var / blocks)


def drift_per_atom_ns(energy: torch.Tensor, times: torch.Tensor, num: int) -> float:
    t = times - times.mean()
    slope = (t * (energy - energy.mean())).sum() / t.square().sum()
    return slope.item() * 1e6 / num  # eV/fs -> eV/atom/ns


def analyse(name, traj, cell, masses, lj_energy_fn):
    num = traj.positions.shape[1]
    r, g = rdf(traj.positions[:: max(1, len(traj) // 20)], cell)
    peak = int(g.argmax())
    exact_total = torch.stack([lj_energy_fn(p) for p in traj.positions]) + traj.kinetic_energy
    closest = 4.0  # A, the search radius
    for x in traj.positions:
        r_pair = pair_distances(x, cell, closest)
        if r_pair.numel():
            closest = min(closest, r_pair.min().item())
    d_value, d_error = diffusion(traj.positions, traj.time)
    row = {
        "model": name,
        "gr_peak_A": r[peak].item(),
        "gr_peak_height": g[peak].item(),
        "D_cm2_s": d_value,
        "D_err_cm2_s": d_error,
        "mean_T_K": traj.temperature().mean().item(),
        "min_pair_A": closest,
        "drift_lj_eV_atom_ns": drift_per_atom_ns(exact_total, traj.time, num),
        "drift_own_eV_atom_ns": None,
    }
    if traj.potential_energy is not None:
        own = traj.potential_energy + traj.kinetic_energy
        row["drift_own_eV_atom_ns"] = drift_per_atom_ns(own, traj.time, num)
    return row, (r, g)


def reference_md(pos, cell, masses, p, dt, gen):
    """Exact LJ: melt and equilibrate with velocity rescaling, then NVE with recording.

    Returns the equilibrated positions and velocities and the recorded NVE trajectory."""
    exact = lambda x: lj(x, cell)  # noqa: E731
    vel = maxwell_boltzmann(masses, 2 * TEMPERATURE, generator=gen)
    for _ in range(p["equil"] // 20):
        traj = velocity_verlet(pos, vel, masses, exact, dt, 20, record_every=20)
        pos, vel = traj.positions[-1], traj.velocities[-1]
        vel = vel * (TEMPERATURE / temperature(vel, masses)).sqrt()
    ref = velocity_verlet(pos, vel, masses, exact, dt, p["ref"], record_every=p["record"])
    return pos.clone(), vel.clone(), ref


def training_graphs(ref, cell) -> list[Data]:
    """Every recorded frame with its forces, energy and neighbour list (float32)."""
    neighbours = RadiusGraph(CUTOFF)
    return [
        neighbours(
            Data(
                pos=x.float(),
                forces=f.float(),
                energy=e.float().view(1),
                cell=cell.float().unsqueeze(0),
            )
        )
        for x, f, e in zip(ref.positions, ref.forces, ref.potential_energy, strict=True)
    ]


def train_model(mode: str, train_set, val_set, p, seed: int):
    """A small force field of ``mode`` (direct or conservative), trained for p["train_s"]."""
    model = UENNForceField(
        cutoff=CUTOFF,
        num_basis=32,
        hidden_channels=16,
        mlp_channels=[32],
        num_blocks=2,
        interaction_channels=4,
        r_min=2.5,
        dtype="float32",
        conservative=mode == "conservative",
    )
    model.fit_scales(train_set)
    config = TrainConfig(
        lr=5e-3,
        lr_final=0.05,
        batch_size=2,
        time_limit=p["train_s"],
        eval_batch_size=4,
        ema_decay=0.99,
        progress=False,
        seed=seed,
    )
    result = train(model, train_set, val_set, config)
    return model.eval(), result


def learned_rows(mode, model, result, start, masses, cell, p, dt, curves, t_start):
    """MD with a learned model from the equilibrated state; the direct model runs with its
    net-force removal on (as trained) and off."""
    variants = [(mode, True)]
    if mode == "direct":
        variants.append(("direct, net F kept", False))
    lj_energy = lambda x: lj(x, cell)[0]  # noqa: E731
    rows = []
    for name, remove in variants:
        model.remove_net_force = remove
        traj = velocity_verlet(
            *start, masses, model_forces(model, cell), dt, p["md"], record_every=p["record"]
        )
        row, curves[name] = analyse(name, traj, cell, masses, lj_energy)
        row["val_force_rmse_eV_A"] = result.best_val_rmse
        row["train_steps"] = result.steps
        row["remove_net_force"] = remove if mode == "direct" else None
        rows.append(row)
        print(
            f"{name}: val force RMSE {result.best_val_rmse:.2e} eV/A after {result.steps} "
            f"steps; MD done ({time.perf_counter() - t_start:.0f} s)"
        )
    return rows


def compare(rows) -> None:
    """Add each row's figures relative to exact-LJ MD of the same run (the first row)."""
    rows[0]["val_force_rmse_eV_A"] = 0.0
    lj_row = rows[0]
    for r in rows:
        r["gr_peak_height_vs_lj"] = r["gr_peak_height"] / lj_row["gr_peak_height"] - 1
        r["D_vs_lj"] = r["D_cm2_s"] / lj_row["D_cm2_s"] - 1
        r["D_vs_lj_err"] = math.hypot(r["D_err_cm2_s"], lj_row["D_err_cm2_s"]) / lj_row["D_cm2_s"]
        r["drift_lj_eV_atom_10ps"] = r["drift_lj_eV_atom_ns"] * 0.01
        own = r["drift_own_eV_atom_ns"]
        r["drift_own_eV_atom_10ps"] = own * 0.01 if own is not None else None


def print_table(rows, p, dt) -> None:
    header = (
        f"{'model':<20}{'min r A':>8}"
        f"{'g(r) peak A':>12}{'height':>9}{'vs LJ':>8}{'D 1e-5 cm2/s':>14}{'vs LJ':>8}"
        f"{'<T> K':>8}{'drift LJ+K':>12}{'drift own':>11}{'force RMSE':>12}"
    )
    print("\n" + header)
    print(
        f"{'Rahman 1964':<20}{'':>8}{3.7:>12.2f}{3.0:>9.2f}{'':>8}{RAHMAN_D * 1e5:>14.2f}"
        f"{'':>8}{94.4:>8.1f}"
    )
    for r in rows:
        own = r["drift_own_eV_atom_ns"]
        own_s = f"{own:>11.2e}" if own is not None else f"{'-':>11}"
        print(
            f"{r['model']:<20}{r['min_pair_A']:>8.2f}{r['gr_peak_A']:>12.2f}"
            f"{r['gr_peak_height']:>9.2f}{r['gr_peak_height_vs_lj']:>8.1%}"
            f"{r['D_cm2_s'] * 1e5:>8.2f}+-{r['D_err_cm2_s'] * 1e5:<4.2f}"
            f"{r['D_vs_lj']:>8.1%}{r['mean_T_K']:>8.1f}"
            f"{r['drift_lj_eV_atom_ns']:>12.2e}{own_s}{r['val_force_rmse_eV_A']:>12.2e}"
        )
    print("(min r: closest pair in the run; drifts in eV/atom/ns, LJ+K = exact LJ energy plus")
    print(" kinetic energy along the run, own = the model's energy; force RMSE: held-out frames,")
    print(f" eV/A; dt {dt} fs, {p['md'] * dt / 1000:.1f} ps per run)")


def plot(curves, num: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (r, g) in curves.items():
        ax.plot(r.numpy(), g.numpy(), label=name)
    ax.set_xlabel("r (A)")
    ax.set_ylabel("g(r)")
    ax.set_title(f"Liquid argon, {num} atoms, {TEMPERATURE} K, {DENSITY} g/cm$^3$")
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "gr.png", lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    parser.add_argument("--out", default="runs/liquid_argon")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dt", type=float, default=DT, help="time step in fs (default: 1)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dt = args.dt
    p = dict(PRESETS["quick" if args.quick else "default"])
    for key in ("equil", "ref", "record", "md"):
        p[key] = max(1, round(p[key] * DT / dt))
    p["dt_fs"] = dt
    out = Path(args.out)
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.perf_counter()

    pos, cell = lattice()
    num = pos.shape[0]
    masses = torch.full((num,), ARGON_MASS, dtype=F64)
    print(f"{num} atoms, box {cell[0, 0]:.3f} A, {DENSITY} g/cm^3, {TEMPERATURE} K, dt {dt} fs")
    *start, ref = reference_md(pos, cell, masses, p, dt, gen)
    print(f"exact LJ MD done ({time.perf_counter() - t_start:.0f} s)")

    graphs = training_graphs(ref, cell)
    # Every fourth frame to train, a few others held out (cheap epochs).
    train_set, val_set = graphs[0::4], graphs[2::20]
    curves = {}
    row, curves["exact LJ"] = analyse("exact LJ", ref, cell, masses, lambda x: lj(x, cell)[0])
    rows = [row]
    for mode in ("direct", "conservative"):
        model, result = train_model(mode, train_set, val_set, p, args.seed)
        save_model(model, out / f"{mode}.pt")
        rows += learned_rows(mode, model, result, start, masses, cell, p, dt, curves, t_start)

    compare(rows)
    print_table(rows, p, dt)
    seconds = time.perf_counter() - t_start
    report = {"preset": p, "threads": args.threads, "seconds": seconds, "rows": rows}
    atomic_write(out / "results.json", lambda f: json.dump(report, f, indent=2), mode="w")
    plot(curves, num, out)
    print(f"\nwrote {out}/results.json and {out}/gr.png ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
