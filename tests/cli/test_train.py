"""``uenn-geo train`` on DFT-style files: keys, E0s, YAML config, tables (small slices of
rMD17 ethanol from ../shared/data)."""

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

import uenn_geo
from uenn_geo.cli import build_parser, main
from uenn_geo.cli.train import TrainJob, job_from_args
from uenn_geo.cli.train_job import FILE_MODEL

ETHANOL = Path(__file__).parents[2] / ".." / "shared" / "data" / "ethanol"
SMALL = {"num_blocks": 1, "hidden_channels": 4, "mlp_channels": [6], "num_basis": 6}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """24 training frames with the isolated atoms among them, 6 test frames."""
    if not (ETHANOL / "train.xyz").is_file():
        pytest.skip(f"the shared data set is not at {ETHANOL}")
    root = tmp_path_factory.mktemp("ethanol")
    isolated = ase.io.read(ETHANOL / "isolated_atoms.xyz", ":")
    frames = ase.io.read(ETHANOL / "train.xyz", ":24")
    for k, atoms in enumerate(frames):
        atoms.info["config_type"] = "MD" if k % 2 else "Other"
    ase.io.write(root / "train.xyz", isolated + frames, format="extxyz")
    ase.io.write(root / "test.xyz", ase.io.read(ETHANOL / "test.xyz", ":6"), format="extxyz")
    return root


def args(files, out, *extra):
    return [
        "train",
        "--train-file",
        str(files / "train.xyz"),
        "--test-file",
        str(files / "test.xyz"),
        "--out",
        str(out),
        "--root",
        str(files / "cache"),
        "--max-epochs",
        "2",
        "--batch-size",
        "8",
        "--model-kwargs",
        json.dumps(SMALL),
        "--no-progress",
        *extra,
    ]


def test_dft_file_with_isolated_atoms_and_test_file(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(files, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the 3 isolated atoms are E0s, not training structures; 10 % of 24 validate
    assert metrics["structures"] == {"train": 22, "val": 2, "test": 6}
    model = uenn_geo.load_model(out / "model.pt")
    assert model.has_energy and model.cutoff == 5.0  # defaults for molecules with energies
    # FILE_MODEL fills in what --model-kwargs leaves out, and the flags win
    assert model.config["species_pairs"] and model.config["separate_scalars"]
    assert model.config["num_blocks"] == 1 and not model.config["pair_term"]
    assert model.config["bond_vectors"]  # SMALL_MOLECULE_MODEL: 9 atoms a structure
    # eq. 8's directions for small molecules, the smooth ones for other files
    assert model.config["bias_delta"] == 0 < FILE_MODEL["bias_delta"]
    # the model predicts the isolated atoms' energies exactly (the E0s of the file, float64),
    # and atoms with neighbours get the binding shift refitted after training
    for atoms in ase.io.read(ETHANOL / "isolated_atoms.xyz", ":"):
        data = Data(pos=torch.zeros(1, 3), z=torch.tensor(atoms.numbers))
        assert model.energy_forces(data)["energy"].item() == atoms.get_potential_energy()
    present = model.species_index(torch.tensor([1, 6, 8]), 3)  # N: only an isolated atom
    assert bool((model.binding_shift[present] != 0).all())
    assert model.binding_shift.count_nonzero() == 3
    # ... and fitted before training too: the first validation's energies are right to a
    # fraction of the binding energy (-4.7 eV an atom; 4.8 eV/atom RMSE without the fit)
    header, first = (line.split(",") for line in (out / "log.csv").read_text().splitlines()[:2])
    assert float(first[header.index("val_energy_rmse_per_atom")]) < 0.2
    test = metrics["errors"]["test"]["all"]
    assert {"energy_rmse_per_atom", "energy_mae", "force_rmse", "force_rmse_worst"} <= set(test)
    # per config_type rows on the validation set when it holds several types
    table = capsys.readouterr().out
    assert "| test |" in table and "F RMSE meV/A" in table and "E MAE meV/atom" in table
    # the resolved configuration is saved beside the model
    assert "train_file" in (out / "config.yaml").read_text()


def test_yaml_config_and_flags_give_identical_runs(files, tmp_path):
    flags = ["--seed", "3", "--lr", "0.004", "--E0s", "average"]
    assert main(args(files, tmp_path / "a", *flags)) == 0
    config = tmp_path / "config.yaml"
    config.write_text("seed: 3\nlr: 0.004\nE0s: average\n".replace("E0s", "e0s"))
    assert main(args(files, tmp_path / "b", "--config", str(config))) == 0
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_file_order_and_unknown_keys(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: x.xyz\nbatch-size: 5\nlr: 0.01\n")
    job = job_from_args(build_parser().parse_args(["train", "--config", str(config)]))
    assert (job.data, job.batch_size, job.lr) == ("x.xyz", 5, 0.01)
    parsed = build_parser().parse_args(["train", "--config", str(config), "--lr", "0.02"])
    assert job_from_args(parsed).lr == 0.02  # the flag wins over the file
    assert job_from_args(parsed).time_limit == TrainJob(data="x").time_limit  # the default
    config.write_text("data: x.xyz\nlearning_rate: 0.01\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) ['learning_rate']" in err and "'lr'" in err


def test_bad_options_are_named(files, tmp_path, capsys):
    assert main(["train", "--data", "a.xyz", "--train-file", "b.xyz"]) == 2
    assert "exactly one of --data and --train-file" in capsys.readouterr().err
    bad = args(files, tmp_path / "r", "--E0s", "nonsense")
    assert main(bad) == 2
    assert "--E0s 'nonsense' is none of" in capsys.readouterr().err
    bad = args(files, tmp_path / "r", "--model-kwargs", '{"hiden_channels": 3}')
    assert main(bad) == 2
    assert "hiden_channels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "x", "--model-kwargs", "{bad"])


def test_config_type_weights_and_direct_mode(files, tmp_path):
    weights = json.dumps({"MD": 2.0, "Other": 0.5})
    out = tmp_path / "w"
    assert main(args(files, out, "--config-type-weights", weights, "--direct")) == 0
    model = uenn_geo.load_model(out / "model.pt")
    assert not model.has_energy
    metrics = json.loads((out / "metrics.json").read_text())
    assert "energy_rmse" not in metrics["errors"]["test"]["all"]


def test_eval_command(files, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(args(files, out)) == 0
    capsys.readouterr()
    report = tmp_path / "eval.json"
    command = ["eval", "--model", str(out / "model.pt"), "--file", str(files / "train.xyz")]
    assert main([*command, "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    tables = json.loads(report.read_text())["train"]
    assert set(tables) == {"all", "IsolatedAtom", "MD", "Other"} or set(tables) >= {"MD", "Other"}
    assert tables["all"]["structures"] == 24 + 4  # and the four isolated atoms
    assert "| train / MD |" in printed
    # isolated atoms: energies exact, no force error (the model has the E0s)
    if "isolated_atom" in tables:
        assert tables["isolated_atom"]["energy_mae"] < 1e-2
    # a committee of the model with itself is the model; with another member it is not
    report2 = tmp_path / "eval2.json"
    twice = ["eval", "--model", str(out / "model.pt"), str(out / "model.pt")]
    assert main([*twice, "--file", str(files / "train.xyz"), "--out", str(report2)]) == 0
    assert json.loads(report2.read_text())["train"] == tables
    other = uenn_geo.load_model(out / "model.pt")
    with torch.no_grad():
        other.energy_readout.weight.mul_(1.5)
    uenn_geo.save_model(other, tmp_path / "other.pt")
    mixed = ["eval", "--model", str(out / "model.pt"), str(tmp_path / "other.pt")]
    assert main([*mixed, "--file", str(files / "train.xyz"), "--out", str(report2)]) == 0
    assert json.loads(report2.read_text())["train"]["all"] != tables["all"]
    # per structure: the committee's spread beside each structure's errors
    import csv

    from uenn_geo.calculator import UENNCalculator

    rows_dir = tmp_path / "rows"
    assert main([*mixed, "--file", str(files / "train.xyz"), "--per-structure", str(rows_dir)]) == 0
    rows = list(csv.DictReader(open(rows_dir / "train.csv")))
    assert len(rows) == 28 and [int(r["index"]) for r in rows] == list(range(28))
    frames = ase.io.read(files / "train.xyz", index=":")
    members = [uenn_geo.load_model(out / "model.pt"), other]
    for k in (5, 13, 27):
        atoms = frames[k]
        ref = atoms.get_forces()
        comm = []
        for m in members:
            atoms.calc = UENNCalculator(m)
            comm.append(atoms.get_forces())
        comm = np.stack(comm)
        dev = np.sqrt(((comm - comm.mean(0)) ** 2).sum(-1).mean(0))
        err = comm.mean(0) - ref
        assert rows[k]["config_type"] == str(frames[k].info.get("config_type", ""))
        assert int(rows[k]["atoms"]) == len(atoms)
        np.testing.assert_allclose(float(rows[k]["force_dev_max"]), 1e3 * dev.max(), rtol=1e-4)
        np.testing.assert_allclose(float(rows[k]["force_dev_mean"]), 1e3 * dev.mean(), rtol=1e-4)
        rmse = 1e3 * np.sqrt((err**2).mean())
        np.testing.assert_allclose(float(rows[k]["force_rmse"]), rmse, rtol=1e-4, atol=1e-6)
        worst = 1e3 * np.linalg.norm(err, axis=1).max()
        np.testing.assert_allclose(float(rows[k]["force_max_error"]), worst, rtol=1e-4, atol=1e-6)
    assert all(float(r["energy_dev_per_atom"]) >= 0 for r in rows)
    assert main([*command, "--per-structure", str(rows_dir)]) == 0  # one model: no spread
    rows = list(csv.DictReader(open(rows_dir / "train.csv")))
    assert rows[0]["force_dev_max"] == "" and rows[0]["energy_error_per_atom"] != ""


def test_compile_policy():
    """auto compiles runs limited by time alone, of COMPILE_MIN_SECONDS or more, on small
    structures; yes and no decide; bad values are refused with the choices."""
    from uenn_geo.cli.train_job import _compile
    from uenn_geo.cli.train_settings import COMPILE_MAX_ATOMS, COMPILE_MIN_SECONDS

    small = COMPILE_MAX_ATOMS
    assert _compile(TrainJob(data="x", time_limit=COMPILE_MIN_SECONDS), small)
    assert not _compile(TrainJob(data="x", time_limit=COMPILE_MIN_SECONDS), small + 1)
    assert not _compile(TrainJob(data="x", time_limit=COMPILE_MIN_SECONDS - 1), small)
    assert not _compile(TrainJob(data="x", max_epochs=5), small)  # epochs: reproducible, eager
    assert _compile(TrainJob(data="x", max_epochs=5, compile="yes"), 10**4)
    assert not _compile(TrainJob(data="x", compile="no"), small)
    # larger structures with stored lists: packed into batches of one shape, compiled
    assert _compile(TrainJob(data="x", time_limit=COMPILE_MIN_SECONDS), small + 1, True)
    assert not _compile(TrainJob(data="x", time_limit=COMPILE_MIN_SECONDS - 1), small + 1, True)
    assert not _compile(TrainJob(data="x", compile=False), small)
    with pytest.raises(ValueError, match="auto, yes or no"):
        TrainJob(data="x", compile="always")


def test_species_the_model_leaves_out_are_refused_before_training(tmp_path):
    frames = [ase.Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])] * 6
    for k, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.rattle(0.02, seed=k)
        atoms.arrays["forces"] = np.zeros((3, 3))
        frames[k] = atoms
    ase.io.write(tmp_path / "w.xyz", frames)
    job = TrainJob(
        train_file=str(tmp_path / "w.xyz"), out=str(tmp_path / "run"), max_epochs=1,
        root=str(tmp_path / "cache"), model_kwargs={"atomic_numbers": [1]}, progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"atomic numbers \[8\].*leaves out"):
        uenn_geo.cli.train.run_training(job)


def test_energy_weight_defaults():
    """0.01 (MACE's ratio) for a model with an energy on data with energies, else 0; an
    explicit weight is kept."""
    from uenn_geo.cli.train_job import FILE_ENERGY_WEIGHT, _train_config
    from uenn_geo.models import UENNForceField

    energy, direct = UENNForceField(conservative=True), UENNForceField()
    assert FILE_ENERGY_WEIGHT == 0.01
    job = TrainJob(data="x", max_epochs=1)
    assert _train_config(job, energy, energies=True).energy_weight == FILE_ENERGY_WEIGHT
    assert _train_config(job, energy, energies=False).energy_weight == 0.0
    assert _train_config(job, direct, energies=True).energy_weight == 0.0
    job = TrainJob(data="x", max_epochs=1, energy_weight=2.0)
    assert _train_config(job, energy, energies=True).energy_weight == 2.0


def test_weight_decay_and_ema_decay_reach_the_optimiser():
    """``--weight-decay`` and ``--ema-decay`` pass to TrainConfig; ``--ema-decay 0`` turns the
    moving average off; out-of-range values are refused."""
    from uenn_geo.cli.train_job import _train_config
    from uenn_geo.models import UENNForceField

    model = UENNForceField(conservative=True)
    config = _train_config(TrainJob(data="x", max_epochs=1), model, energies=True)
    assert (config.weight_decay, config.ema_decay) == (0.0, 0.999)
    job = TrainJob(data="x", max_epochs=1, weight_decay=0.1, ema_decay=0.99)
    config = _train_config(job, model, energies=True)
    assert (config.weight_decay, config.ema_decay) == (0.1, 0.99)
    job = TrainJob(data="x", max_epochs=1, ema_decay=0.0)
    assert _train_config(job, model, energies=True).ema_decay is None
    for bad in ({"weight_decay": -1.0}, {"ema_decay": 1.0}):
        with pytest.raises(ValueError, match="--weight-decay must be >= 0"):
            TrainJob(data="x", max_epochs=1, **bad)


def test_lr_final_reaches_the_schedule():
    """``--lr-final`` (a fraction of ``--lr``) passes to TrainConfig; 0 or above 1 is refused."""
    from uenn_geo.cli.train_job import _train_config
    from uenn_geo.models import UENNForceField

    model = UENNForceField(conservative=True)
    config = _train_config(TrainJob(data="x", max_epochs=1), model, energies=True)
    assert config.lr_final == 1e-3
    job = TrainJob(data="x", max_epochs=1, lr_final=0.2)
    assert _train_config(job, model, energies=True).lr_final == 0.2
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="--lr-final is a fraction of --lr"):
            TrainJob(data="x", max_epochs=1, lr_final=bad)


def test_optimizer_flag_and_its_defaults():
    """``--optimizer`` reaches TrainConfig and builds that optimiser; files train with Muon
    by default, built-in sets with Adam; an unknown name is refused, and AMSGrad (Adam's)
    with Muon too."""
    from uenn_geo.cli.train_job import _train_config
    from uenn_geo.models import UENNForceField
    from uenn_geo.optim import MuonAdam
    from uenn_geo.train import TrainConfig
    from uenn_geo.train.loop import _make_optimizer

    model = UENNForceField(conservative=True)
    job = TrainJob(data="x", max_epochs=1)
    assert _train_config(job, model, energies=True, from_file=True).optimizer == "muon"
    assert _train_config(job, model, energies=True).optimizer == "adam"
    job = TrainJob(data="x", max_epochs=1, amsgrad=True)  # Adam's variant: Adam
    assert _train_config(job, model, energies=True, from_file=True).optimizer == "adam"
    args = build_parser().parse_args(["train", "--data", "x", "--optimizer", "adam"])
    config = _train_config(job_from_args(args), model, energies=True, from_file=True)
    assert config.optimizer == "adam"
    assert isinstance(_make_optimizer(model, config), torch.optim.AdamW)
    args = build_parser().parse_args(["train", "--data", "x", "--optimizer", "muon"])
    config = _train_config(job_from_args(args), model, energies=True)
    assert isinstance(_make_optimizer(model, config), MuonAdam)
    with pytest.raises(ValueError, match="--optimizer must be adam or muon"):
        TrainJob(data="x", max_epochs=1, optimizer="sgd")
    with pytest.raises(ValueError, match="amsgrad is Adam's"):
        TrainConfig(max_epochs=1, optimizer="muon", amsgrad=True)
    with pytest.raises(ValueError, match="--amsgrad is Adam's: give --optimizer adam"):
        TrainJob(data="x", max_epochs=1, optimizer="muon", amsgrad=True)
    schnet = TrainJob(data="x", max_epochs=1, model="schnet")  # measured with Adam
    assert _train_config(schnet, model, energies=True, from_file=True).optimizer == "adam"


def test_muon_reads_radial_weights_per_gaussian_for_one_element():
    """Files of one element train with Muon reading a graph layer's radial weights as one
    matrix per Gaussian, files of several elements (and built-in sets) as one per species
    pair; the reading reaches the optimiser."""
    from uenn_geo.cli.train_job import _train_config
    from uenn_geo.models import UENNForceField
    from uenn_geo.train import TrainConfig
    from uenn_geo.train.loop import _make_optimizer

    copper = UENNForceField(atomic_numbers=[29], conservative=True, species_pairs=True)
    ethanol = UENNForceField(atomic_numbers=[1, 6, 8], conservative=True, species_pairs=True)
    job = TrainJob(data="x", max_epochs=1)
    one = _train_config(job, copper, True, mean_atoms=30, from_file=True)
    several = _train_config(job, ethanol, True, mean_atoms=30, from_file=True)
    builtin = _train_config(job, copper, True, mean_atoms=30)
    assert (one.muon_nd_as, several.muon_nd_as, builtin.muon_nd_as) == ("batch", "rows", "rows")
    assert _make_optimizer(copper, one).param_groups[0]["nd_as"] == "batch"
    with pytest.raises(ValueError, match="muon_nd_as must be 'rows' or 'batch'"):
        TrainConfig(max_epochs=1, optimizer="muon", muon_nd_as="columns")


def test_grad_clip_and_amsgrad_reach_the_optimiser():
    """``--grad-clip`` and ``--amsgrad`` pass to TrainConfig (and AMSGrad to Adam); files
    are clipped by default, built-in sets not, ``--grad-clip 0`` turns it off; a negative
    clip is refused."""
    from uenn_geo.cli.train_job import FILE_GRAD_CLIP, _train_config
    from uenn_geo.models import UENNForceField
    from uenn_geo.train.loop import _make_optimizer

    model = UENNForceField(conservative=True)
    args = build_parser().parse_args(["train", "--data", "x", "--grad-clip", "5", "--amsgrad"])
    config = _train_config(job_from_args(args), model, energies=True)
    assert (config.grad_clip, config.amsgrad) == (5.0, True)
    assert _make_optimizer(model, config).defaults["amsgrad"]
    job = TrainJob(data="x", max_epochs=1)
    config = _train_config(job, model, energies=True)
    assert (config.grad_clip, config.amsgrad) == (None, False)
    assert not _make_optimizer(model, config).defaults["amsgrad"]
    assert _train_config(job, model, energies=True, from_file=True).grad_clip == FILE_GRAD_CLIP
    job = TrainJob(data="x", max_epochs=1, grad_clip=0.0)
    assert _train_config(job, model, energies=True, from_file=True).grad_clip is None
    with pytest.raises(ValueError, match="--grad-clip must be >= 0"):
        TrainJob(data="x", max_epochs=1, grad_clip=-1.0)


def test_in_memory_sets_get_their_neighbour_lists_once():
    """Small in-memory sets carry their lists (built once, as the model would build them);
    shifts only where a structure is periodic; over the limit the sets stay as they are."""
    from ase.build import bulk, molecule

    from uenn_geo.cli.train_job import _Sets, _with_edges
    from uenn_geo.edges import edges_of

    def graph(atoms):
        data = Data(pos=torch.tensor(atoms.positions), z=torch.tensor(atoms.numbers))
        if atoms.pbc.any():
            data.cell = torch.tensor(atoms.cell.array).unsqueeze(0)
            data.pbc = torch.tensor(atoms.pbc).unsqueeze(0)
        return data

    clusters = [graph(molecule("CH3CH2OH")), graph(molecule("H2O"))]
    mixed = [graph(molecule("H2O")), graph(bulk("Cu", cubic=True))]
    sets = _with_edges(_Sets(clusters, clusters[:1], {"t": mixed}), 3.0)
    for data in sets.train + sets.tests["t"]:
        assert data.edge_cutoff.tolist() == [3.0]
        built = edges_of(
            Data(**{k: data[k] for k in ("pos", "z", "cell", "pbc") if k in data}), 3.0
        )
        assert torch.equal(data.edge_index, built.index)
    assert "shifts" not in sets.train[0] and "shifts" in sets.tests["t"][0]
    assert sets.tests["t"][1].shifts.abs().sum() > 0  # the copper cell's images
    unchanged = _Sets(clusters, clusters[:1])
    assert _with_edges(unchanged, 3.0, limit=10) is unchanged


def test_compiled_steps_take_static_shapes_only_for_uniform_structures():
    """Frames of one molecule with lists of one length compile for their shape; a list of
    molecules of other sizes, other list lengths, or a set read from disk do not."""
    from ase.build import molecule

    from uenn_geo.cli.train_job import _Sets, _stacked, _uniform, _with_edges
    from uenn_geo.train.dense import StackedGraphs

    def frames(name, n, cutoff):
        atoms = molecule(name)
        rng = np.random.default_rng(0)
        graphs = [
            Data(
                pos=torch.tensor(atoms.positions + 0.05 * rng.standard_normal((len(atoms), 3))),
                z=torch.tensor(atoms.numbers),
            )
            for _ in range(n)
        ]
        return _with_edges(_Sets(graphs, graphs[:1], {}), cutoff).train

    assert _uniform(frames("CH3CH2OH", 5, 5.0))  # every pair within 5 A
    assert isinstance(_stacked(frames("CH3CH2OH", 5, 5.0)), StackedGraphs)  # batched by index
    assert not isinstance(_stacked(frames("CH3CH2OH", 5, 2.4)), StackedGraphs)
    assert not _uniform(frames("CH3CH2OH", 3, 5.0) + frames("H2O", 2, 5.0))
    assert not _uniform(frames("CH3CH2OH", 5, 2.4))  # lists of different lengths
    assert not _uniform([])
    assert not _uniform(tuple(frames("H2O", 2, 5.0)))  # not an in-memory list


def test_compiled_steps_on_structures_of_many_sizes_take_packed_batches():
    """Stored lists of structures of different sizes are packed and padded to one shape
    (chunked for the graph model); eager steps and unstored lists keep their batches."""
    from ase.build import molecule

    from uenn_geo.cli.train_job import _one_shape, _Sets, _with_edges
    from uenn_geo.models import SchNetForceField, UENNForceField
    from uenn_geo.train import TrainConfig
    from uenn_geo.train.packing import PackedGraphs

    graphs = []
    for name in ("CH3CH2OH", "H2O", "CH4"):
        atoms = molecule(name)
        graphs.append(Data(pos=torch.tensor(atoms.positions), z=torch.tensor(atoms.numbers)))
    model = UENNForceField(cutoff=5.0, atomic_numbers=[1, 6, 8], conservative=True)
    sets = _with_edges(_Sets(graphs, graphs[:1], {}), model.cutoff)
    cfg = TrainConfig(max_epochs=1, compile=True)
    packed, packed_cfg = _one_shape(sets, cfg, model)
    assert isinstance(packed.train, PackedGraphs) and packed.train.chunk
    assert packed_cfg.static_shapes
    plain, _ = _one_shape(sets, cfg, SchNetForceField(cutoff=5.0))
    assert isinstance(plain.train, PackedGraphs) and not plain.train.chunk
    eager, eager_cfg = _one_shape(sets, TrainConfig(max_epochs=1), model)
    assert eager.train is sets.train and not eager_cfg.static_shapes
    unstored = _Sets(graphs, graphs[:1], {})
    assert _one_shape(unstored, cfg, model)[0].train is graphs


def test_stage_two_by_default_for_files_of_several_compositions():
    """Files of structures of several compositions (clusters and cells of many sizes) train
    the graph model with energies in two stages (energy weight 1 for the last 20 %); one
    molecule's frames, built-in sets, direct or SchNet models, forces-only runs and
    ``--stage-two 0`` in one."""

    from uenn_geo.cli.train_job import _train_config
    from uenn_geo.cli.train_settings import STAGE_TWO, STAGE_TWO_ENERGY_WEIGHT
    from uenn_geo.models import UENNForceField

    job = TrainJob(data="x", max_epochs=1)
    assert (STAGE_TWO, STAGE_TWO_ENERGY_WEIGHT) == (0.8, 1.0)
    assert job.resolved_stage_two(True, 2, True) == (0.8, 1.0)
    assert job.resolved_stage_two(True, 1, True) == (0.0, 10.0)  # one molecule
    assert job.resolved_stage_two(False, 2, True) == (0.0, 10.0)  # a built-in set
    assert job.resolved_stage_two(True, 2, False) == (0.0, 1.0)  # no energies to weigh
    for kwargs in ({"stage_two": 0.0}, {"model": "schnet"}, {"energy_weight": 0.0}):
        assert TrainJob(data="x", max_epochs=1, **kwargs).resolved_stage_two(True, 2, True)[0] == 0
    given = TrainJob(data="x", max_epochs=1, stage_two=0.5, stage_two_energy_weight=3.0)
    assert given.resolved_stage_two(True, 1, True) == (0.5, 3.0)
    model = UENNForceField(conservative=True)
    cfg = _train_config(job, model, energies=True, from_file=True, compositions=2)
    assert (cfg.stage_two, cfg.stage_two_energy_weight) == (0.8, 1.0)
    assert _train_config(job, model, energies=True, from_file=True).stage_two is None
    with pytest.raises(ValueError, match="--stage-two must lie in"):
        TrainJob(data="x", max_epochs=1, stage_two=1.0)


def test_batch_size_default_follows_the_structures():
    """16 structures a step, 8 for files of structures of more than 20 atoms on average;
    built-in sets and explicit sizes keep theirs."""
    from uenn_geo.cli.train_settings import BATCH, COMPILE_MAX_ATOMS, SMALL_BATCH

    job = TrainJob(data="x", max_epochs=1)
    assert (BATCH, SMALL_BATCH) == (16, 8)
    assert job.resolved_batch_size(True, 9.0) == BATCH
    assert job.resolved_batch_size(True, COMPILE_MAX_ATOMS + 0.5) == SMALL_BATCH
    assert job.resolved_batch_size(False, 30.0) == BATCH  # a built-in set
    assert TrainJob(data="x", max_epochs=1, batch_size=5).resolved_batch_size(True, 30.0) == 5


class _FramesWithData(list):
    """Structures with an in-memory dataset's ``_data`` (their atomic numbers joined)."""

    @property
    def _data(self):
        return Data(z=torch.cat([frame.z for frame in self]))


def test_small_molecules_get_a_third_block_and_bond_couplings():
    """Files of at most COMPILE_MAX_ATOMS atoms a structure on average: FILE_MODEL plus
    SMALL_MOLECULE_MODEL; larger structures: FILE_MODEL (two blocks); flags win."""
    from types import SimpleNamespace

    from uenn_geo.cli.train_job import SMALL_MOLECULE_MODEL, _build_model
    from uenn_geo.cli.train_settings import COMPILE_MAX_ATOMS

    sets = SimpleNamespace(stats=None, from_file=True, train=_FramesWithData([Data(
        pos=torch.zeros(3, 3), z=torch.tensor([1, 6, 8]))]))  # fmt: skip
    job = TrainJob(train_file="x.xyz", max_epochs=1)
    small = _build_model(job, sets, False, 9.0)
    assert SMALL_MOLECULE_MODEL == {
        "num_blocks": 3, "bond_vectors": True, "bond_cubes": True, "bias_delta": 0.0,
        "r_min": 0.0, "avg_num_neighbors": None,
    }  # fmt: skip
    assert small.config["num_blocks"] == 3 and small.config["bond_vectors"]
    assert small.config["bond_cubes"]
    assert small.config["bias_delta"] == 0.0 and small.config["r_min"] == 0.0
    assert small.config["species_pairs"] and small.config["cutoff"] == 5.0
    large = _build_model(job, sets, False, COMPILE_MAX_ATOMS + 0.5)
    assert large.config["num_blocks"] == 2 and not large.config["bond_vectors"]
    assert not large.config["bond_cubes"]
    assert large.config["bias_delta"] == 0.3
    mine = TrainJob(train_file="x.xyz", max_epochs=1, model_kwargs={"num_blocks": 2})
    assert _build_model(mine, sets, False, 9.0).config["num_blocks"] == 2


def test_files_of_one_element_reach_further_in_the_first_layer():
    """Files of one element of larger structures: ONE_ELEMENT_MODEL (a first layer to 5.5 A
    over 32 Gaussians, the second to 5 A over 16, 4 channels passed); several elements,
    small structures or a given cutoff (by flag or model kwargs): the 5-A defaults with 16
    Gaussians."""
    from types import SimpleNamespace

    from uenn_geo.cli.train_job import _build_model
    from uenn_geo.cli.train_settings import COMPILE_MAX_ATOMS, ONE_ELEMENT_MODEL

    def sets(z):
        pos = torch.tensor([[0.0, 0.0, 0.0], [2.5, 0.0, 0.0], [0.0, 2.5, 0.0]])
        frame = Data(pos=pos, z=torch.tensor(z))
        return SimpleNamespace(stats=None, from_file=True, train=_FramesWithData([frame]))

    large = COMPILE_MAX_ATOMS + 0.5
    job = TrainJob(train_file="x.xyz", max_epochs=1)
    copper = _build_model(job, sets([29, 29, 29]), False, large).config
    assert ONE_ELEMENT_MODEL == {
        "cutoff": 5.5,
        "num_basis": 32,
        "interaction_cutoff": 5.0,
        "interaction_basis": 16,
        "interaction_channels": 4,
    }
    assert {k: copper[k] for k in ONE_ELEMENT_MODEL} == ONE_ELEMENT_MODEL
    assert copper["species_pairs"] and copper["num_blocks"] == 2  # FILE_MODEL beneath it
    for z, atoms, given in [
        ([29, 29, 28], large, {}),  # two elements
        ([29, 29, 29], 9.0, {}),  # small structures
        ([29, 29, 29], large, {"cutoff": 4.5}),  # --cutoff
        ([29, 29, 29], large, {"model_kwargs": {"cutoff": 4.5}}),
    ]:
        config = _build_model(TrainJob(train_file="x.xyz", max_epochs=1, **given), sets(z),
                              False, atoms).config  # fmt: skip
        assert config["interaction_cutoff"] is None and config["cutoff"] in (4.5, 5.0)
        assert config["interaction_channels"] == 8 and config["num_basis"] == 16
    mine = TrainJob(train_file="x.xyz", max_epochs=1, model_kwargs={"interaction_cutoff": 4.0})
    config = _build_model(mine, sets([29, 29, 29]), False, large).config
    assert (config["cutoff"], config["interaction_cutoff"]) == (5.0, 4.0)


def test_gaussians_and_neighbour_sums_follow_the_training_set():
    """Files: the first Gaussian centre and the mean neighbour count from the training set
    (tests/cli/test_data_stats.py); given values win; small molecules start the Gaussians
    at 0 and keep their neighbour sums as they are."""
    from types import SimpleNamespace

    from uenn_geo.cli.train_job import _build_model

    pair = Data(pos=torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.0, 3.0, 0.0]]))
    frames = [pair.clone() for _ in range(3)]
    for frame in frames:
        frame.z = torch.tensor([1, 6, 8])
    sets = SimpleNamespace(stats=None, from_file=True, train=_FramesWithData(frames))
    job = TrainJob(train_file="x.xyz", max_epochs=1)
    assert _build_model(job, sets, False, 30.0).config["r_min"] == pytest.approx(0.7)
    mine = TrainJob(train_file="x.xyz", max_epochs=1, model_kwargs={"r_min": 0.0})
    assert _build_model(mine, sets, False, 30.0).config["r_min"] == 0.0
    # small molecules (at most 20 atoms a structure) start at 0 (SMALL_MOLECULE_MODEL)
    assert _build_model(job, sets, False, 3.0).config["r_min"] == 0.0
    # every atom of pair has two neighbours within 5 A: sums over sqrt(2) in every layer
    model = _build_model(job, sets, False, 30.0)
    assert model.config["avg_num_neighbors"] == 2.0
    assert all(conv.sum_scale == pytest.approx(2**-0.5) for conv in model.convs)
    assert _build_model(job, sets, False, 3.0).config["avg_num_neighbors"] is None
    mine = TrainJob(train_file="x.xyz", max_epochs=1, model_kwargs={"avg_num_neighbors": 9})
    assert _build_model(mine, sets, False, 30.0).convs[1].sum_scale == pytest.approx(1 / 3)


def test_resume_keeps_the_defaults_the_run_started_with(files, tmp_path, monkeypatch, capsys):
    """A run interrupted and resumed after uenn-geo's defaults changed (model, batch size,
    loss weights, stage two) goes on with those it started with; a changed option is still
    refused."""
    from uenn_geo.cli import data_stats, train_job, train_settings

    out = tmp_path / "run"
    flags = args(files, out)
    at = flags.index("--batch-size")
    del flags[at : at + 2]  # the default batch size
    flags[flags.index("--max-epochs") + 1] = "1"
    assert main(flags) == 0
    first = torch.load(out / "checkpoint.pt", weights_only=False)
    assert first["model"]["config"]["bond_vectors"] and first["epoch"] == 1
    monkeypatch.setattr(train_job, "SMALL_MOLECULE_MODEL", {})
    monkeypatch.setattr(train_job, "FILE_ENERGY_WEIGHT", 0.5)
    monkeypatch.setattr(train_settings, "BATCH", 4)
    monkeypatch.setattr(data_stats, "compositions", lambda data: 2)  # stage two by default
    flags[flags.index("--max-epochs") + 1] = "2"
    assert main(flags) == 0
    assert "the model configuration the run started with" in capsys.readouterr().out
    resumed = torch.load(out / "checkpoint.pt", weights_only=False)
    assert resumed["epoch"] == 2 and resumed["model"]["config"] == first["model"]["config"]
    assert resumed["train_config"] == first["train_config"] | {"max_epochs": 2}
    assert main([*flags, "--lr", "0.01", "--max-epochs", "3"]) != 0  # another option
    assert "--lr changed" in capsys.readouterr().err
    assert first["train_config"]["optimizer"] == "muon"  # the default for files


def test_a_run_from_before_the_optimizer_option_resumes_with_adam(files, tmp_path, capsys):
    """A checkpoint written before ``--optimizer`` existed (its identity lacks the option,
    its run trained with Adam) resumes with Adam, though files now train with Muon; asked
    for Muon, it is refused."""
    out = tmp_path / "run"
    flags = args(files, out)
    flags[flags.index("--max-epochs") + 1] = "1"
    assert main([*flags, "--optimizer", "adam"]) == 0
    path = out / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    del ckpt["identity"]["--optimizer"]
    torch.save(ckpt, path)
    flags[flags.index("--max-epochs") + 1] = "2"
    assert main(flags) == 0
    resumed = torch.load(path, weights_only=False)
    assert resumed["epoch"] == 2 and resumed["train_config"]["optimizer"] == "adam"
    flags[flags.index("--max-epochs") + 1] = "3"
    assert main([*flags, "--optimizer", "muon"]) != 0  # not what the run trained with
    assert "--optimizer changed" in capsys.readouterr().err


def test_eval_job_takes_paths_and_lists():
    from uenn_geo.cli.eval import EvalJob

    assert EvalJob(model=Path("a.pt"), files=["x.xyz"]).model == "a.pt"
    assert EvalJob(model=[Path("a.pt"), "b.pt"], files=["x.xyz"]).model == ("a.pt", "b.pt")
    with pytest.raises(ValueError, match="--model"):
        EvalJob(model=[], files=["x.xyz"])


def test_distillation_example_splits_as_train_does(tmp_path):
    """examples/distill_committee.py holds out the validation frames that ``uenn-geo train
    --val-fraction X --split-seed S`` holds out, so a student never trains on them."""
    import importlib.util

    from uenn_geo.cli.train_job import _load_sets

    path = Path(__file__).parents[2] / "examples" / "distill_committee.py"
    spec = importlib.util.spec_from_file_location("distill_committee", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    file = tmp_path / "eth.xyz"
    ase.io.write(file, ase.io.read(ETHANOL / "train.xyz", ":24"))
    frames = ase.io.read(file, ":")
    for fraction, seed in ((0.25, 0), (0.1, 3)):
        job = TrainJob(train_file=str(file), val_fraction=fraction, split_seed=seed, max_epochs=1)
        sets = _load_sets(job)
        val, train = module.split(len(frames), fraction, seed)
        expected = np.stack([frames[i].positions for i in val])
        got = np.stack([sets.val[k].pos.numpy() for k in range(len(sets.val))])
        assert len(train) == len(sets.train)
        np.testing.assert_allclose(got, expected, atol=1e-6)
