import itertools

import pytest
import torch
from torch_geometric.data import Data

import uenn_geo
from uenn_geo.data.lj import lennard_jones
from uenn_geo.data.paper import sample_paper_configurations
from uenn_geo.models import PaperForceModel, load_model, save_model
from uenn_geo.models.paper import relative_vectors
from uenn_geo.testing import assert_equivariant, random_orthogonal, random_permutation


def _batch(pos):
    b, a = pos.shape[:2]
    return Data(pos=pos.reshape(b * a, 3), batch=torch.arange(b).repeat_interleave(a))


def test_relative_vectors_order():
    pos = torch.arange(12.0).reshape(1, 4, 3) ** 2
    rel = relative_vectors(pos)
    assert rel.shape == (1, 3, 6)
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for c, (i, j) in enumerate(pairs):
        torch.testing.assert_close(rel[0, :, c], pos[0, j] - pos[0, i])


@pytest.mark.parametrize("reflection", [True, False])
def test_rotation_equivariance_and_translation_invariance(reflection):
    model = PaperForceModel(dtype="float64")
    for layer in model.mlp.layers:
        torch.nn.init.normal_(layer.bias, std=0.3)
    pos = sample_paper_configurations(16)
    U = random_orthogonal(3, reflection=reflection)
    assert_equivariant(model.forward_dense, pos, U, axis=-1)
    shifted = pos + torch.randn(16, 1, 3, dtype=torch.float64)
    torch.testing.assert_close(model.forward_dense(shifted), model.forward_dense(pos))


def test_batch_interface_and_scales():
    pos = sample_paper_configurations(32)
    _, forces = lennard_jones(pos)
    model = PaperForceModel()
    model.fit_scales(pos, forces)
    assert model.force_scale.item() == pytest.approx(forces.std().item(), rel=1e-6)
    out = model(_batch(pos))
    assert out.shape == (128, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out.reshape(32, 4, 3), model.forward_dense(pos))


def test_remove_net_force():
    model = PaperForceModel(remove_net_force=True, dtype="float64")
    pos = sample_paper_configurations(8)
    f = model.forward_dense(pos)
    torch.testing.assert_close(f.sum(1), torch.zeros(8, 3, dtype=torch.float64))


def test_bad_input():
    model = PaperForceModel()
    with pytest.raises(ValueError, match=r"\[B \* 4, n\]"):
        model(Data(pos=torch.randn(6, 3)))
    with pytest.raises(ValueError, match="exactly 4 atoms"):
        model(Data(pos=torch.randn(8, 3), batch=torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])))
    with pytest.raises(ValueError, match=r"\(B, 4, n\)"):
        model.forward_dense(torch.randn(3, 5, 3))


def test_save_load_round_trip(tmp_path):
    model = PaperForceModel(hidden=[8, 8], residue=0.05, remove_net_force=True)
    pos = sample_paper_configurations(10)
    _, forces = lennard_jones(pos)
    model.fit_scales(pos, forces)
    save_model(model, tmp_path / "m.pt", metadata={"note": "x"})
    loaded = uenn_geo.load_model(tmp_path / "m.pt")
    assert loaded.config == model.config
    assert loaded.metadata == {"note": "x"}
    assert not loaded.training
    torch.testing.assert_close(loaded(_batch(pos)), model(_batch(pos)))
    assert not list(tmp_path.glob("*.tmp"))


def test_load_refuses_other_files(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a uenn-geo model file"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a uenn-geo model file"):
        load_model(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
    model = PaperForceModel(hidden=[8])
    save_model(model, tmp_path / "m.pt")
    rec = torch.load(tmp_path / "m.pt", weights_only=True)
    rec["version"] = 99
    torch.save(rec, tmp_path / "v.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_model(tmp_path / "v.pt")
    rec["version"] = 1
    rec["config"]["hidden"] = [9]
    torch.save(rec, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_model(tmp_path / "c.pt")


def test_symmetrized_model_is_permutation_equivariant(tmp_path):
    model = PaperForceModel(dtype="float64", remove_net_force=True)
    for layer in model.mlp.layers:
        torch.nn.init.normal_(layer.bias, std=0.3)
    pos = sample_paper_configurations(6)
    plain = model.forward_dense(pos)
    gen = torch.Generator().manual_seed(3)
    perm = random_permutation(4, generator=gen)
    while torch.equal(perm, torch.arange(4)):
        perm = random_permutation(4, generator=gen)
    # the network alone tells atoms apart by their slot
    assert (model.forward_dense(pos[:, perm]) - plain[:, perm]).abs().max() > 1e-3
    model.symmetrize = True
    assert model.config["symmetrize"]
    sym = model.forward_dense(pos)
    torch.testing.assert_close(model.forward_dense(pos[:, perm]), sym[:, perm])
    U = random_orthogonal(3, reflection=True)
    assert_equivariant(model.forward_dense, pos, U, axis=-1)
    # the average over the 24 orderings, written out
    model.symmetrize = False
    expected = torch.zeros_like(plain)
    for p in itertools.permutations(range(4)):
        p = torch.tensor(p)
        expected += model.forward_dense(pos[:, p])[:, torch.argsort(p)]
    torch.testing.assert_close(sym, expected / 24)
    model.symmetrize = True
    save_model(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.symmetrize
    torch.testing.assert_close(loaded.forward_dense(pos), sym)
    with pytest.raises(ValueError, match="at most 6"):
        PaperForceModel(num_atoms=7, symmetrize=True)


def test_models_saved_before_symmetrize_load_and_resume(tmp_path):
    from uenn_geo.train import DenseForceData, TrainConfig, train

    pos = sample_paper_configurations(64)
    data = DenseForceData(pos.float(), lennard_jones(pos)[1].float())
    model = PaperForceModel(hidden=[8])
    model.fit_scales(data.pos, data.forces)
    cfg = TrainConfig(max_epochs=1, batch_size=32, progress=False)
    train(model, data, data, cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del ckpt["model"]["config"]["symmetrize"]  # as written before the option existed
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    res = train(
        model, data, data, TrainConfig(max_epochs=2, batch_size=32, progress=False), tmp_path
    )
    assert res.epochs == 2
    record = torch.load(tmp_path / "model.pt", weights_only=False)
    del record["config"]["symmetrize"]
    torch.save(record, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").symmetrize is False
