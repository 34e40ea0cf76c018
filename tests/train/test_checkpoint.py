import pytest
import torch

from uenn_geo.data.lj import lennard_jones
from uenn_geo.data.paper import sample_paper_configurations
from uenn_geo.models import PaperForceModel
from uenn_geo.train import DenseForceData, TrainConfig, train
from uenn_geo.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION


@pytest.fixture
def run(tmp_path):
    pos = sample_paper_configurations(32, generator=torch.Generator().manual_seed(0))
    data = DenseForceData(pos.float(), lennard_jones(pos)[1].float())
    model = PaperForceModel(hidden=[8])
    model.fit_scales(data.pos, data.forces)
    cfg = TrainConfig(max_epochs=1, batch_size=8, progress=False)
    train(model, data, data, cfg, tmp_path)
    return model, data, cfg, tmp_path


def test_checkpoint_holds_the_state_of_the_run(run):
    model, data, cfg, out = run
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["version"] == CHECKPOINT_VERSION
    assert ckpt["epoch"] == 1 and ckpt["step"] == 4 and len(ckpt["history"]) == 1
    assert ckpt["train_config"]["batch_size"] == 8
    assert ckpt["best_epoch"] == 1 and ckpt["ema"]["updates"] == 4


def test_resume_rejects_a_foreign_file_and_another_version(run):
    model, data, cfg, out = run
    path = out / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    torch.save({**ckpt, "version": CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(ValueError, match="checkpoint version"):
        train(model, data, data, cfg, out)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a uenn-geo training checkpoint"):
        train(model, data, data, cfg, out)
    res = train(model, data, data, cfg, out, resume=False)  # starts afresh, overwrites
    assert res.epochs == 1
    assert torch.load(path, weights_only=False)["format"] == CHECKPOINT_FORMAT


def test_resume_may_change_the_limits(run):
    model, data, cfg, out = run
    res = train(model, data, data, TrainConfig(max_epochs=3, batch_size=8, progress=False), out)
    assert res.epochs == 3 and len(res.history) == 3
    assert [r["epoch"] for r in res.history] == [1, 2, 3]


def test_resume_refuses_another_identity_naming_what_changed(tmp_path):
    pos = sample_paper_configurations(16, generator=torch.Generator().manual_seed(0))
    data = DenseForceData(pos.float(), lennard_jones(pos)[1].float())
    model = PaperForceModel(hidden=[8])
    model.fit_scales(data.pos, data.forces)
    cfg = TrainConfig(max_epochs=1, batch_size=8, progress=False)
    identity = {"data": "sha1-a", "split": "0123"}
    train(model, data, data, cfg, tmp_path, identity=identity)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["identity"] == identity
    more = TrainConfig(max_epochs=2, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"another run: data changed .*--restart"):
        train(model, data, data, more, tmp_path, identity={**identity, "data": "sha1-b"})
    with pytest.raises(ValueError, match=r"another run: split changed"):
        train(model, data, data, more, tmp_path, identity={**identity, "split": "4567"})
    with pytest.raises(ValueError, match=r"another run: valid changed"):  # a key added
        train(model, data, data, more, tmp_path, identity={**identity, "valid": "sha1-c"})
    assert train(model, data, data, more, tmp_path, identity=identity).epochs == 2


def test_truncated_checkpoint_suggests_restart(run):
    model, data, cfg, out = run
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cannot be read \(damaged or truncated.*--restart"):
        train(model, data, data, cfg, out)


def test_rerunning_a_finished_run_says_how_to_continue(run):
    model, data, cfg, out = run
    with pytest.warns(UserWarning, match=r"already finished \(max_epochs.*--max-epochs.*--restart"):
        res = train(model, data, data, cfg, out)
    assert res.epochs == 1 and len(res.history) == 1


def test_a_damaged_weight_in_a_checkpoint_is_found(run):
    model, data, cfg, out = run
    path = out / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    name = next(iter(ckpt["model"]["state_dict"]))
    ckpt["model"]["state_dict"][name].view(-1)[0] += 1.0
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="SHA-256"):
        train(model, data, data, TrainConfig(max_epochs=2, batch_size=8, progress=False), out)


def test_a_checkpoint_from_before_the_binding_shift_resumes(tmp_path):
    # checkpoints written before 2026-12-04 lack an E0s model's binding_shift and hold its
    # E0s in the model's dtype: resuming keeps going, the shift at zero, the E0s exact
    from torch_geometric.data import Data

    from uenn_geo.models import UENNForceField, weights_sha256

    e0s = {1: -13.568422383046626, 8: -2035.5709809589698}
    gen = torch.Generator().manual_seed(0)
    data = []
    for _ in range(8):
        pos = torch.randn(3, 3, generator=gen) * 0.8
        data.append(Data(pos=pos, z=torch.tensor([8, 1, 1]), forces=torch.randn(3, 3)))
        data[-1].energy = torch.tensor([-2080.0], dtype=torch.float64)
    model = UENNForceField(
        cutoff=3.0, num_basis=4, hidden_channels=4, mlp_channels=[8], atomic_numbers=[1, 8],
        conservative=True, e0s=e0s, pair_term=False,
    )  # fmt: skip
    model.fit_scales(data)
    cfg = TrainConfig(max_epochs=1, batch_size=4, energy_weight=0.01, progress=False)
    train(model, data, data, cfg, tmp_path)
    path = tmp_path / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["model"]["state_dict"]
    del state["binding_shift"]
    state["energy_shift"] = state["energy_shift"].float()
    ckpt["model"]["sha256"] = weights_sha256(state)
    torch.save(ckpt, path)
    more = TrainConfig(max_epochs=2, batch_size=4, energy_weight=0.01, progress=False)
    res = train(model, data, data, more, tmp_path)
    assert res.epochs == 2
    assert model.energy_shift.tolist() == [e0s[1], e0s[8]]
    assert model.binding_shift.tolist() == [0.0, 0.0]
