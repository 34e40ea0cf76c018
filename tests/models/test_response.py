import torch

from uenn_geo.edges import build_edges
from uenn_geo.models.response import energy_response

F64 = torch.float64


def pair_energy(pos, edges, batch, num_graphs):
    """E = sum over pairs of (r - 1.5)^2 (each pair twice in the full list, halved)."""
    r = edges.vectors(pos).norm(dim=1)
    per_edge = 0.5 * (r - 1.5).square()
    graph = batch[edges.index[0]]
    return pos.new_zeros(num_graphs).index_add(0, graph, per_edge)


def test_forces_are_minus_the_gradient():
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(6, 3, dtype=F64, generator=gen) * 3
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    edges = build_edges(pos, 2.5, batch=batch)
    out = energy_response(lambda x, e: pair_energy(x, e, batch, 2), pos, edges, batch)
    expected = torch.zeros_like(pos)
    for i, j in edges.index.T.tolist():  # F_i = sum_j (r_ij - 1.5) r_ij / r_ij
        d = pos[j] - pos[i]
        expected[i] += 2 * (d.norm() - 1.5) * d / d.norm()
    assert out["forces"].abs().max() > 1e-3
    assert torch.allclose(out["forces"], expected, atol=1e-12)
    assert out["energy"].shape == (2,) and not out["energy"].requires_grad
    assert out["stress"] is None


def test_stress_and_training_graph():
    cell = torch.tensor([[3.0, 0.0, 0.0], [0.3, 2.8, 0.0], [0.2, -0.1, 3.1]], dtype=F64)
    frac = torch.rand(4, 3, dtype=F64)
    batch = torch.zeros(4, dtype=torch.long)

    def energy_at(strain):
        deform = torch.eye(3, dtype=F64) + strain
        c = cell @ deform
        edges = build_edges(frac @ c, 2.5, cell=c.unsqueeze(0))
        return pair_energy(frac @ c, edges, batch, 1).item()

    pos = frac @ cell
    edges = build_edges(pos, 2.5, cell=cell.unsqueeze(0))
    out = energy_response(
        lambda x, e: pair_energy(x, e, batch, 1), pos, edges, batch, cell.unsqueeze(0)
    )
    h, volume = 1e-6, torch.linalg.det(cell).item()
    for a, b in [(0, 0), (1, 2), (2, 2), (0, 1)]:
        e = torch.zeros(3, 3, dtype=F64)
        e[a, b] = e[b, a] = h if a == b else h / 2
        fd = (energy_at(e) - energy_at(-e)) / (2 * h) / volume
        assert abs(out["stress"][0, a, b].item() - fd) < 1e-6 * (1 + abs(fd)), (a, b)
    assert out["stress"].abs().max() > 1e-3
    # training keeps the graph, so that a force loss reaches what made the energy.
    scale = torch.tensor(2.0, dtype=F64, requires_grad=True)
    trained = energy_response(
        lambda x, e: scale * pair_energy(x, e, batch, 1), pos, edges, batch, training=True
    )
    trained["forces"].square().sum().backward()
    assert scale.grad is not None and scale.grad.abs() > 0


def test_stress_of_a_batch_is_that_of_each_structure():
    """The virial is summed per structure: two cells in one batch give each its own stress
    (checked against the finite differences above through the single-structure path)."""
    gen = torch.Generator().manual_seed(2)
    cells = torch.stack(
        [
            torch.tensor([[3.0, 0.0, 0.0], [0.3, 2.8, 0.0], [0.2, -0.1, 3.1]], dtype=F64),
            torch.tensor([[3.4, 0.1, 0.0], [0.0, 3.0, 0.2], [-0.3, 0.0, 2.9]], dtype=F64),
        ]
    )
    positions = [torch.rand(4, 3, dtype=F64, generator=gen) @ c for c in cells]
    single = []
    for pos, cell in zip(positions, cells, strict=True):
        batch = torch.zeros(4, dtype=torch.long)
        edges = build_edges(pos, 2.5, cell=cell.unsqueeze(0))
        fn = lambda x, e, b=batch: pair_energy(x, e, b, 1)  # noqa: E731
        single.append(energy_response(fn, pos, edges, batch, cell.unsqueeze(0))["stress"][0])
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    pos = torch.cat(positions)
    edges = build_edges(pos, 2.5, batch=batch, cell=cells)
    out = energy_response(lambda x, e: pair_energy(x, e, batch, 2), pos, edges, batch, cells)
    assert not torch.allclose(single[0], single[1], atol=1e-3)
    torch.testing.assert_close(out["stress"], torch.stack(single), rtol=1e-12, atol=1e-12)


def test_compiled_response_traces_the_derivative_and_keeps_the_training_graph():
    """Under torch.compile the derivatives come from torch.func.grad, in one graph (fullgraph):
    the same energy, forces and stress, and a force loss reaches what made the energy."""
    cell = torch.tensor([[3.0, 0.0, 0.0], [0.3, 2.8, 0.0], [0.2, -0.1, 3.1]], dtype=F64)
    pos = torch.rand(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1)) @ cell
    batch = torch.zeros(4, dtype=torch.long)
    edges = build_edges(pos, 2.5, cell=cell.unsqueeze(0))
    scale = torch.tensor(2.0, dtype=F64, requires_grad=True)

    def loss(x):
        out = energy_response(
            lambda p, e: scale * pair_energy(p, e, batch, 1),
            x, edges, batch, cell.unsqueeze(0), training=True, traced=True,
        )  # fmt: skip
        return out, out["forces"].square().sum() + out["stress"].square().sum()

    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True)):
        out, value = fn(pos)
        (grad,) = torch.autograd.grad(value, scale)
        results.append((out, grad))
    (eager, g_eager), (traced, g_traced) = results
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(traced[key], eager[key], rtol=1e-12, atol=1e-12)
    assert g_eager.abs() > 1e-3
    torch.testing.assert_close(g_traced, g_eager, rtol=1e-12, atol=1e-12)
