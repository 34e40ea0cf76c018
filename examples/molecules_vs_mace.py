r"""uenn-geo against a small MACE on the same molecule files, the same time budget, one thread.

MACE (mace-torch) is an optional extra, never a dependency: without it the script says so and
runs uenn-geo alone. Steps:

1. splits ``--train-file`` into training and validation files (``--val-frames`` random frames,
   seed 0) so that both models see exactly the same data;
2. trains uenn-geo with ``uenn-geo train`` (its defaults for molecules, ``--time-limit
   BUDGET``, ``--threads``);
3. trains a small MACE with MACE's own script ``mace_run_train``: 64x0e+64x1o (``--num_channels
   64 --max_L 1``), correlation 3, r_max 5 A, float64, E0s from ``--E0s``, EMA (0.99),
   batch 5, lr 0.01, energy and force weights 1 and 100 (MACE's defaults). ``mace_run_train``
   has an epoch budget but no time budget: it is stopped ``BUDGET`` seconds after it starts
   training, and run again with ``--restart_latest --max_num_epochs E`` (E: the epoch of its
   best checkpoint, saved with the EMA weights), which trains no further and writes the model;
4. evaluates both models with the same code (batches of 50 molecules) on every
   ``--test-file``: force RMSE and MAE over components (meV/A), energy MAE (meV per molecule
   and per atom), the median and worst frame's force RMSE;
5. times force evaluation (forces from the energy, model call only, neighbour lists built
   beforehand) on one molecule and on a batch of ``--batch`` molecules, in atoms/s, each model
   in the same process, one thread: both models eagerly (MACE's calculator default), and
   uenn-geo also under ``torch.compile`` (what ``uenn-geo md`` runs for long runs and the
   calculator on 256 atoms or more).

Example (rMD17 ethanol, 10 minutes each)::

    python examples/molecules_vs_mace.py --train-file ../shared/data/ethanol/train.xyz \
        --test-file ../shared/data/ethanol/test.xyz \
        --E0s ../shared/data/ethanol/isolated_atoms.xyz --budget 600 --out /tmp/vs_mace

``--skip-train`` re-evaluates the models already in ``--out``. Writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read, write


def have_mace() -> bool:
    try:
        import mace  # noqa: F401
    except ImportError:
        return False
    return True


def split(train_file: str, val_frames: int, out: Path) -> tuple[Path, Path]:
    """Training and validation files from ``train_file`` (random frames, seed 0)."""
    frames = read(train_file, index=":")
    order = np.random.default_rng(0).permutation(len(frames))
    val = set(order[:val_frames].tolist())
    train_path, val_path = out / "train_split.xyz", out / "valid_split.xyz"
    write(train_path, [a for k, a in enumerate(frames) if k not in val])
    write(val_path, [a for k, a in enumerate(frames) if k in val])
    return train_path, val_path


def e0s_of(path: str) -> dict[int, float]:
    """Isolated-atom energies: atomic number -> eV."""
    return {int(a.numbers[0]): float(a.get_potential_energy()) for a in read(path, index=":")}


def train_uenn(args, train_path: Path, val_path: Path, out: Path) -> dict:
    command = [
        "uenn-geo", "train", "--train-file", str(train_path), "--valid-file", str(val_path),
        "--E0s", args.E0s, "--time-limit", str(args.budget), "--threads", str(args.threads),
        "--root", str(out / "cache"), "--out", str(out), "--no-progress", "--restart",
    ]  # fmt: skip
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "epochs": metrics["epochs"],
        "train_s": metrics["seconds"],
        "wall_s": time.perf_counter() - start,
    }


def _mace_log(out: Path) -> str:
    logs = sorted((out / "logs").glob("*.log")) if (out / "logs").is_dir() else []
    return "".join(p.read_text(errors="replace") for p in logs)


def train_mace(args, train_path: Path, val_path: Path, out: Path) -> dict:
    # MACE wants the E0s of exactly the elements of the training data.
    present = {int(z) for a in read(train_path, index=":") for z in a.numbers}
    e0s = e0s_of(args.E0s)
    e0s = "{" + ", ".join(f"{z}: {e0s[z]!r}" for z in sorted(present)) + "}"
    base = [
        "mace_run_train", "--name", "mace", "--seed", "0", "--device", "cpu",
        "--train_file", str(train_path), "--valid_file", str(val_path), "--E0s", e0s,
        "--energy_key", args.energy_key, "--forces_key", args.forces_key,
        "--model", "MACE", "--num_channels", "64", "--max_L", "1", "--correlation", "3",
        "--r_max", "5.0", "--default_dtype", "float64", "--ema", "--ema_decay", "0.99",
        "--batch_size", "5", "--valid_batch_size", "10", "--lr", "0.01",
        "--energy_weight", "1", "--forces_weight", "100", "--eval_interval", "1",
        "--patience", "100000", "--error_table", "TotalMAE",
        "--work_dir", str(out), "--model_dir", str(out), "--log_dir", str(out / "logs"),
        "--checkpoints_dir", str(out / "checkpoints"), "--results_dir", str(out / "results"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    command = base + ["--max_num_epochs", "100000"]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env)
    train_start = None
    while proc.poll() is None:
        time.sleep(2.0)
        if train_start is None and "Started training" in _mace_log(out):
            train_start = time.perf_counter()
            print(f"MACE set-up took {train_start - start:.0f} s; budget starts", flush=True)
        if train_start is not None and time.perf_counter() - train_start > args.budget:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            break
    train_s = time.perf_counter() - (train_start or start)
    checkpoints = list((out / "checkpoints").glob("*_epoch-*.pt"))
    if not checkpoints:
        raise RuntimeError("MACE saved no checkpoint within the budget")
    epoch = max(int(re.search(r"_epoch-(\d+)", p.name).group(1)) for p in checkpoints)
    validated = [int(k) for k in re.findall(r"Epoch (\d+):", _mace_log(out))]
    epochs_run = max(validated) + 1 if validated else None
    # Write the model of the best checkpoint (EMA weights) without training further.
    command = base + ["--max_num_epochs", str(epoch), "--restart_latest"]
    print("writing the model:", " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True)
    return {
        "epochs_validated": epochs_run,
        "best_epoch": epoch,
        "train_s": train_s,
        "wall_s": time.perf_counter() - start,
    }


def _references(frames, energy_key: str, forces_key: str) -> list[tuple[float, np.ndarray]]:
    refs = []
    for atoms in frames:
        ref_e, ref_f = atoms.info.get(energy_key), atoms.arrays.get(forces_key)
        if ref_e is None or ref_f is None:  # read by ASE into its calculator
            ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces()
        refs.append((float(ref_e), np.asarray(ref_f)))
    return refs


def predict_uenn(path: Path, frames, batch: int = 50) -> list[tuple[float, np.ndarray]]:
    """Energies (eV, with the E0s) and forces of every frame, in batches."""
    from torch_geometric.data import Batch, Data

    from uenn_geo.models import load_model

    model = load_model(path).eval()
    out = []
    for k in range(0, len(frames), batch):
        group = frames[k : k + batch]
        data = Batch.from_data_list(
            [
                Data(
                    pos=torch.tensor(a.positions, dtype=model.dtype),
                    z=torch.tensor(a.numbers, dtype=torch.long),
                )
                for a in group
            ]
        )
        res = model.energy_forces(data)
        forces = res["forces"].detach().double().numpy()
        energy = res["energy"].detach().double().numpy()
        start = np.cumsum([0] + [len(a) for a in group])
        out += [(float(energy[i]), forces[start[i] : start[i + 1]]) for i in range(len(group))]
    return out


def _mace_batch(calc, group):
    from mace import data as mace_data
    from mace.tools import torch_geometric, torch_tools

    with torch_tools.default_dtype(calc.default_dtype):  # the model's dtype, not torch's
        graphs = [
            mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(a),
                z_table=calc.z_table,
                cutoff=calc.r_max,
                heads=calc.available_heads,
            )
            for a in group
        ]
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs))
    return next(iter(loader)).to_dict()


def mace_calc(path: Path):
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")


def predict_mace(path: Path, frames, batch: int = 50) -> list[tuple[float, np.ndarray]]:
    """Energies (eV, with the E0s) and forces of every frame, in batches."""
    calc = mace_calc(path)
    model = calc.models[0]
    out = []
    for k in range(0, len(frames), batch):
        group = frames[k : k + batch]
        res = model(_mace_batch(calc, group), compute_force=True, training=False)
        forces = res["forces"].detach().double().numpy()
        energy = res["energy"].detach().double().numpy()
        start = np.cumsum([0] + [len(a) for a in group])
        out += [(float(energy[i]), forces[start[i] : start[i + 1]]) for i in range(len(group))]
    return out


def errors(predicted, references) -> dict:
    """Energy and force errors (meV, meV/A) of ``predicted`` against ``references``."""
    de, df, frame_rmse = [], [], []
    for (e, f), (ref_e, ref_f) in zip(predicted, references, strict=True):
        de.append((e - ref_e) / len(f))
        d = f - ref_f
        df.append(d.ravel())
        frame_rmse.append(np.sqrt(np.mean(d**2)))
    de, df, frame_rmse = np.array(de), np.concatenate(df), np.array(frame_rmse)
    n = len(references[0][1])
    return {
        "frames": len(references),
        "F RMSE": 1000 * float(np.sqrt(np.mean(df**2))),
        "F MAE": 1000 * float(np.mean(np.abs(df))),
        "E MAE/atom": 1000 * float(np.mean(np.abs(de))),
        "E MAE/mol": 1000 * float(np.mean(np.abs(de))) * n,
        "F median frame": 1000 * float(np.median(frame_rmse)),
        "F worst frame": 1000 * float(frame_rmse.max()),
        "worst/median": float(frame_rmse.max() / np.median(frame_rmse)),
    }


def _rate(call, atoms: int, seconds: float) -> float:
    call()  # warm-up
    call()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        calls += 1
    return calls * atoms / (time.perf_counter() - start)


def speed_uenn(path: Path, frames, batch: int, seconds: float, compiled: bool = False) -> dict:
    """Atoms/s of ``energy_forces`` (eager), or (``compiled``) of the energy network under
    :func:`torch.compile` with forces by autograd, as ``uenn-geo md`` and the calculator run
    it (compilation before the timing)."""
    from torch_geometric.data import Batch, Data

    from uenn_geo.edges import edges_of
    from uenn_geo.models import load_model
    from uenn_geo.models.response import energy_response

    model = load_model(path).eval()
    network = torch.compile(model.atomic_energies, dynamic=True, fullgraph=True)

    def compiled_call(data, edges):
        species = model.species_index(data.z, data.num_nodes)
        edges = edges.chunked(data.num_nodes)

        def energy(x, e):
            return network(x, species, e).sum().reshape(1)

        with torch.no_grad():
            return energy_response(energy, data.pos, edges, species.new_zeros(data.num_nodes))

    out = {}
    for name, group in (("single", frames[:1]), (f"batch {batch}", frames[:batch])):
        data = Batch.from_data_list(
            [
                Data(
                    pos=torch.tensor(a.positions, dtype=model.dtype),
                    z=torch.tensor(a.numbers, dtype=torch.long),
                )
                for a in group
            ]
        )
        edges = edges_of(data, model.cutoff)
        n = data.num_nodes
        call = compiled_call if compiled else model.energy_forces
        out[name] = _rate(lambda d=data, e=edges, f=call: f(d, e), n, seconds)
    return out


def speed_mace(path: Path, frames, batch: int, seconds: float) -> dict:
    calc = mace_calc(path)
    model = calc.models[0]
    out = {}
    for name, group in (("single", frames[:1]), (f"batch {batch}", frames[:batch])):
        data = _mace_batch(calc, group)
        n = sum(len(a) for a in group)

        def call(d=data):
            return model(d, compute_force=True, training=False)

        out[name] = _rate(call, n, seconds)
    return out


def table(results: dict) -> str:
    cols = ["F RMSE", "F MAE", "E MAE/mol", "E MAE/atom", "F median frame", "F worst frame"]
    lines = [
        "| model | test file | epochs | " + " | ".join(cols) + " |",
        "|---|---|---:|" + "---:|" * len(cols),
    ]
    for model, r in results["models"].items():
        for test, e in r.get("errors", {}).items():
            epochs = r["train"].get("epochs") or r["train"].get("best_epoch", "")
            vals = " | ".join(f"{e[c]:.1f}" if c != "E MAE/atom" else f"{e[c]:.2f}" for c in cols)
            lines.append(f"| {model} | {test} | {epochs} | {vals} |")
    lines += ["", "| model | " + " | ".join(next(iter(results["speed"].values()))) + " |"]
    lines.append("|---|" + "---:|" * len(next(iter(results["speed"].values()))))
    for model, s in results["speed"].items():
        lines.append(f"| {model} (atoms/s) | " + " | ".join(f"{v:.0f}" for v in s.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-file", required=True)
    p.add_argument("--test-file", action="append", required=True, help="repeatable")
    p.add_argument("--E0s", required=True, help="isolated-atom file")
    p.add_argument("--energy-key", default="energy")
    p.add_argument("--forces-key", default="forces")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds, each model")
    p.add_argument("--val-frames", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32, help="molecules in the speed batch")
    p.add_argument("--speed-seconds", type=float, default=10.0)
    p.add_argument("--out", default="vs_mace")
    p.add_argument("--skip-train", action="store_true", help="use the models in --out")
    p.add_argument("--skip-mace", action="store_true")
    p.add_argument("--train-only", choices=["uenn-geo", "MACE"], help="train this one only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    use_mace = not args.skip_mace and have_mace()
    if not args.skip_mace and not use_mace:
        print("mace-torch is not installed (pip install mace-torch): MACE skipped", flush=True)
    results: dict = {"budget_s": args.budget, "threads": args.threads, "models": {}}
    train_path, val_path = split(args.train_file, args.val_frames, out)
    runners = {"uenn-geo": (train_uenn, out / "uenn", "model.pt", predict_uenn, speed_uenn)}
    if use_mace:
        runners["MACE"] = (train_mace, out / "mace", "mace.model", predict_mace, speed_mace)
    train_info = {}
    info_file = out / "train_info.json"
    if info_file.exists():
        train_info = json.loads(info_file.read_text())
    for name, (trainer, folder, _, _, _) in runners.items():
        if args.skip_train or args.train_only not in (None, name):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        try:
            train_info[name] = trainer(args, train_path, val_path, folder)
        except Exception as exc:  # MACE is optional: report and go on
            print(f"{name} training failed: {exc!r}", flush=True)
            train_info[name] = {"error": repr(exc)}
        info_file.write_text(json.dumps(train_info, indent=1))
    tests = {Path(f).name: read(f, index=":") for f in args.test_file}
    results["speed"] = {}
    refs = {t: _references(f, args.energy_key, args.forces_key) for t, f in tests.items()}
    for name, (_, folder, model_file, predict, speed) in runners.items():
        path = folder / model_file
        entry = {"train": train_info.get(name, {}), "errors": {}}
        results["models"][name] = entry
        if not path.exists():
            print(f"{name}: no model at {path}", flush=True)
            continue
        for test, frames in tests.items():
            start = time.perf_counter()
            entry["errors"][test] = errors(predict(path, frames), refs[test])
            print(f"{name} on {test}: {time.perf_counter() - start:.0f} s", flush=True)
        frames = next(iter(tests.values()))
        results["speed"][name] = speed(path, frames, args.batch, args.speed_seconds)
        if speed is speed_uenn:
            results["speed"][f"{name}, torch.compile"] = speed_uenn(
                path, frames, args.batch, args.speed_seconds, compiled=True
            )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
