import math

import pytest
import torch

from uenn_geo.edges import Edges
from uenn_geo.neighbors import radius_graph
from uenn_geo.nn import kernels
from uenn_geo.nn.conv import VectorGaussianConv
from uenn_geo.testing import (
    assert_equivariant,
    assert_invariant,
    assert_permutation_equivariant,
    random_orthogonal,
    random_permutation,
)

F64 = torch.float64


@pytest.fixture(autouse=True, params=["kernel", "plain"])
def neighbour_sum_path(request, monkeypatch):
    """Every test of the layer runs twice: with the fused CPU kernel of the neighbour sums
    (uenn_geo.nn.kernels, taken where no gradient flows through them) and without it."""
    monkeypatch.setenv(kernels.ENV, "1" if request.param == "kernel" else "0")
    return request.param


def all_pairs(num: int) -> torch.Tensor:
    """Complete graph without self-loops: the layer's cutoff decides who counts."""
    i, j = torch.meshgrid(torch.arange(num), torch.arange(num), indexing="ij")
    keep = i != j
    return torch.stack([i[keep], j[keep]])


def cluster(num: int = 7, n: int = 3, spread: float = 2.0) -> torch.Tensor:
    return torch.randn(num, n, dtype=F64) * spread


def dense_radial(r: float, rs: torch.Tensor, eta: torch.Tensor, rc: float) -> torch.Tensor:
    """exp(-eta_b (r - rs_b)^2) f_c(r) with the quintic C2 cutoff, written out."""
    x = r / rc
    fc = 1 - 10 * x**3 + 15 * x**4 - 6 * x**5 if x < 1 else 0.0
    return torch.exp(-eta * (r - rs) ** 2) * fc


def delta_conv(num_basis: int, rc: float, output: str = "vector") -> VectorGaussianConv:
    conv = VectorGaussianConv(1, num_basis, num_basis, rc, output=output, dtype=F64)
    with torch.no_grad():
        for w in (conv.weight, conv.scalar_weight):
            if w is not None:
                w.copy_(torch.eye(num_basis, dtype=F64).unsqueeze(1))  # w_b1a = delta_ab
    return conv


def test_repr():
    conv = VectorGaussianConv(1, 16, num_basis=8, cutoff=5.0)
    assert (
        repr(conv) == "VectorGaussianConv(1 -> 16, num_basis=8, cutoff=5.0, output=vector, float32)"
    )
    conv = VectorGaussianConv(
        3, 4, 6, 4.0, vector_channels=2, output="both", act="softsign_residual", dtype=F64
    )
    assert repr(conv) == (
        "VectorGaussianConv(3 -> 4, vector_channels=2, num_basis=6, cutoff=4.0, output=both, "
        "act=SoftsignResidual(a=0.1), float64)"
    )
    assert conv.weight.shape == conv.scalar_weight.shape == (6, 5, 4)


def test_eq33_vector_descriptor_matches_dense_loop():
    # One node feature, w = delta, identity sigma: eq. 30 is the descriptor of eq. 33.
    rc, num_basis = 4.0, 6
    pos = cluster(9, spread=1.8)
    conv = delta_conv(num_basis, rc, output="both")
    out = conv(pos, all_pairs(9))
    rs, eta = conv.basis.rs, conv.basis.eta
    expected_d = torch.zeros(9, 3, num_basis, dtype=F64)
    expected_s = torch.zeros(9, num_basis, dtype=F64)
    for i in range(9):
        for j in range(9):
            if i == j:
                continue
            rij = pos[j] - pos[i]
            r = rij.norm().item()
            e = dense_radial(r, rs, eta, rc)
            expected_d[i] += (rij / r).unsqueeze(1) * e.unsqueeze(0)
            expected_s[i] += e  # eq. 29 with the same w
    assert (expected_d.abs() > 0).sum() > 0.5 * expected_d.numel()  # the cutoff bites, not all
    assert torch.allclose(out[:, :3], expected_d, atol=1e-13)
    assert torch.allclose(out[:, 3], expected_s, atol=1e-13)
    only_vec = delta_conv(num_basis, rc)(pos, all_pairs(9))
    assert torch.allclose(only_vec, expected_d, atol=1e-13)
    only_sca = delta_conv(num_basis, rc, output="scalar")(pos, all_pairs(9))
    assert torch.allclose(only_sca, expected_s, atol=1e-13)


def test_eq33_periodic_shifts_match_image_loop():
    rc, num_basis = 3.5, 5
    cell = torch.tensor([[4.0, 0.0, 0.0], [0.6, 4.2, 0.0], [0.3, -0.4, 3.9]], dtype=F64)
    pos = torch.rand(4, 3, dtype=F64) @ cell
    edge_index, shifts = radius_graph(pos, rc, cell=cell.unsqueeze(0))
    conv = delta_conv(num_basis, rc)
    out = conv(pos, edge_index, shifts=shifts)
    expected = torch.zeros(4, 3, num_basis, dtype=F64)
    images = torch.cartesian_prod(*[torch.arange(-2, 3)] * 3).to(F64) @ cell
    for i in range(4):
        for j in range(4):
            for s in images:
                rij = pos[j] - pos[i] + s
                r = rij.norm().item()
                if r == 0 or r >= rc:
                    continue
                e = dense_radial(r, conv.basis.rs, conv.basis.eta, rc)
                expected[i] += (rij / r).unsqueeze(1) * e.unsqueeze(0)
    assert expected.abs().max() > 0.1
    assert torch.allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("edges_per_chunk, shuffle", [(None, False), (2, True)])
def test_general_layer_matches_dense_einsum(edges_per_chunk, shuffle):
    # Node features, vector features, rank-3 weights, an activation on each output; the
    # second case splits every neighbourhood over several chunks and shuffles the edges.
    rc, num, n = 4.5, 6, 3
    conv = VectorGaussianConv(
        3, 5, 4, rc, vector_channels=2, output="both", act="softsign_residual", dtype=F64
    )
    pos = cluster(num, n)
    v = torch.randn(num, 3, dtype=F64)
    x = torch.randn(num, n, 2, dtype=F64)
    edge_index = all_pairs(num)
    if shuffle:
        edge_index = edge_index[:, torch.randperm(edge_index.shape[1])]
    edges = Edges(edge_index, None, rc)
    if edges_per_chunk is not None:
        edges = edges.chunked(num, size=edges_per_chunk, max_padding=float("inf"))
        assert edges.chunk == edges_per_chunk
    out = conv(pos, edges, v, x)
    pre_d = torch.zeros(num, n, 5, dtype=F64)
    pre_s = torch.zeros(num, 5, dtype=F64)
    w, ws = conv.weight, conv.scalar_weight
    for i in range(num):
        for j in range(num):
            if i == j:
                continue
            rij = pos[j] - pos[i]
            r = rij.norm().item()
            e = dense_radial(r, conv.basis.rs, conv.basis.eta, rc)
            u = rij / r
            pre_d[i] += torch.einsum("k,b,d,bda->ka", u, e, v[j], w[:, :3])
            pre_d[i] += torch.einsum("b,kc,bca->ka", e, x[j], w[:, 3:])
            pre_s[i] += torch.einsum("b,d,bda->a", e, v[j], ws[:, :3])
            pre_s[i] += torch.einsum("b,c,bca->a", e, u @ x[j], ws[:, 3:])

    def sigma(u):  # eq. 13 on each column vector (a scalar is a 1-vector)
        return u / (1 + u.norm(dim=-2, keepdim=True)) + 0.1 * u

    assert torch.allclose(out[:, :n], sigma(pre_d), atol=1e-12)
    assert torch.allclose(out[:, n], sigma(pre_s.unsqueeze(1)).squeeze(1), atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        ("centre_vectors",),
        ("bond_vectors",),
        ("bond_vectors", "bond_cubes"),
        ("bond_vectors", "bond_cubes", "bond_quartics"),
    ],
)
def test_projected_vectors_match_dense_einsum(options):
    # centre_vectors: the centre's own vectors projected on each bond, p = r_hat . x_i;
    # bond_vectors: the neighbour's, q = r_hat . x_j. Vector rows get r_hat p, the scalar row
    # p^2, after the neighbour's columns; bond_cubes then r_hat q^2 and q^3 (order three),
    # bond_quartics r_hat q^3 and q^4 (order four).
    rc, num, n = 4.5, 6, 3
    conv = VectorGaussianConv(2, 4, 3, rc, vector_channels=2, output="both", dtype=F64,
                              **dict.fromkeys(options, True))  # fmt: skip
    powers = [k + 1 for k in range(len(options))]  # the extra columns: r_hat p^k
    assert conv.weight.shape == (3, 2 + 2 * (1 + len(powers)), 4)
    pos, v, x = cluster(num, n), torch.randn(num, 2, dtype=F64), torch.randn(num, n, 2, dtype=F64)
    out = conv(pos, all_pairs(num), v, x)
    pre_d = torch.zeros(num, n, 4, dtype=F64)
    pre_s = torch.zeros(num, 4, dtype=F64)
    w, ws = conv.weight, conv.scalar_weight
    for i in range(num):
        for j in range(num):
            if i == j:
                continue
            rij = pos[j] - pos[i]
            e = dense_radial(rij.norm().item(), conv.basis.rs, conv.basis.eta, rc)
            u = rij / rij.norm()
            p = u @ (x[i] if options[0] == "centre_vectors" else x[j])  # (F_v,)
            pre_d[i] += torch.einsum("k,b,d,bda->ka", u, e, v[j], w[:, :2])
            pre_d[i] += torch.einsum("b,kc,bca->ka", e, x[j], w[:, 2:4])
            pre_s[i] += torch.einsum("b,d,bda->a", e, v[j], ws[:, :2])
            pre_s[i] += torch.einsum("b,c,bca->a", e, u @ x[j], ws[:, 2:4])
            for col, k in enumerate(powers):
                cols = slice(4 + 2 * col, 6 + 2 * col)
                pre_d[i] += torch.einsum("k,b,c,bca->ka", u, e, p**k, w[:, cols])
                pre_s[i] += torch.einsum("b,c,bca->a", e, p ** (k + 1), ws[:, cols])
    assert pre_d.abs().max() > 0.1
    assert torch.allclose(out[:, :n], pre_d, atol=1e-12)
    assert torch.allclose(out[:, n], pre_s, atol=1e-12)
    U = random_orthogonal(n, reflection=True)
    err = assert_equivariant(
        lambda p, xx: conv(p, all_pairs(num), v, xx), (pos, x), U, axis=(-1, -2),
        out_axis=-2, out_num_scalars=1,
    )  # fmt: skip
    assert err < 1e-12
    option = options[-1]
    with pytest.raises(ValueError, match=f"{option} needs vector features"):
        VectorGaussianConv(2, 4, 3, rc, **{option: True})


def test_both_projections_centre_columns_first():
    rc, num, n = 4.5, 6, 3
    pos, v, x = cluster(num, n), torch.randn(num, 2, dtype=F64), torch.randn(num, n, 2, dtype=F64)
    both = VectorGaussianConv(2, 4, 3, rc, vector_channels=2, centre_vectors=True,
                              bond_vectors=True, dtype=F64)  # fmt: skip
    assert both.weight.shape == (3, 2 + 3 * 2, 4)
    out = both(pos, all_pairs(num), v, x)
    # zeroing the last columns' weights leaves the centre_vectors layer with the same weights
    centre = VectorGaussianConv(2, 4, 3, rc, vector_channels=2, centre_vectors=True, dtype=F64)
    with torch.no_grad():
        centre.weight.copy_(both.weight[:, :6])
        both.weight[:, 6:] = 0.0
    assert not torch.allclose(out, both(pos, all_pairs(num), v, x))
    assert torch.allclose(both(pos, all_pairs(num), v, x), centre(pos, all_pairs(num), v, x))


@pytest.mark.parametrize("edges_per_chunk", [1, 3, 32])
def test_edge_order_and_chunk_size_do_not_matter(edges_per_chunk):
    # Periodic neighbourhoods of 20+ edges per atom, shuffled, cut into chunks of any size.
    rc = 4.0
    conv = VectorGaussianConv(2, 4, 5, rc, vector_channels=2, output="both", dtype=F64)
    cell = torch.eye(3, dtype=F64) * 5.0
    pos = torch.rand(6, 3, dtype=F64) * 5.0
    v, x = torch.randn(6, 2, dtype=F64), torch.randn(6, 3, 2, dtype=F64)
    edge_index, shifts = radius_graph(pos, rc, cell=cell.unsqueeze(0))
    assert torch.bincount(edge_index[0]).min() > 5
    ref = conv(pos, edge_index, v, x, shifts)
    perm = torch.randperm(edge_index.shape[1])
    edges = Edges(edge_index[:, perm], shifts[perm], rc)
    out = conv(pos, edges.chunked(6, size=edges_per_chunk, max_padding=float("inf")), v, x)
    assert ref.abs().max() > 1e-2
    assert torch.allclose(out, ref, atol=1e-13)


@pytest.mark.parametrize("edges_per_chunk, shuffle", [(32, False), (3, True), (1, True)])
def test_chunked_edges_give_the_same_layer(edges_per_chunk, shuffle):
    # Edges.chunked pads every neighbourhood with self-loops; the layer reads the chunks as
    # views and must agree with the plain list, values and gradients, in any edge order.
    rc = 4.0
    conv = VectorGaussianConv(2, 4, 5, rc, vector_channels=2, output="both", dtype=F64)
    cell = torch.eye(3, dtype=F64) * 3.5  # below the cutoff: atoms see their own images
    pos = (torch.rand(7, 3, dtype=F64) * 3.5).requires_grad_(True)
    v, x = torch.randn(7, 2, dtype=F64), torch.randn(7, 3, 2, dtype=F64)
    edge_index, shifts = radius_graph(pos, rc, cell=cell.unsqueeze(0))
    assert bool((edge_index[0] == edge_index[1]).any())  # (i, i) with a nonzero shift
    if shuffle:
        perm = torch.randperm(edge_index.shape[1])
        edge_index, shifts = edge_index[:, perm], shifts[perm]
    laid = Edges(edge_index, shifts, rc).chunked(7, edges_per_chunk, max_padding=float("inf"))
    padded, padded_shifts = laid.index, laid.shifts
    count = torch.bincount(edge_index[0], minlength=7)
    expected = int(((count + edges_per_chunk - 1) // edges_per_chunk).sum()) * edges_per_chunk
    assert padded.shape == (2, expected)
    centres = padded[0].view(-1, edges_per_chunk)
    assert bool((centres == centres[:, :1]).all())  # one centre per chunk
    pad = (padded[0] == padded[1]) & (padded_shifts == 0).all(dim=1)
    assert int((~pad).sum()) == edge_index.shape[1]  # every edge once, the rest padding
    ref = conv(pos, edge_index, v, x, shifts)
    out = conv(pos, laid, v, x)
    assert ref.abs().max() > 1e-2
    assert torch.allclose(out, ref, atol=1e-13)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), pos)
    (g_out,) = torch.autograd.grad(out.square().sum(), pos)
    assert torch.allclose(g_out, g_ref, atol=1e-12)


def test_chunked_layout_is_checked():
    conv = VectorGaussianConv(1, 4, 5, 4.0, dtype=F64)
    pos = cluster(6, 3)
    edge_index = all_pairs(6)  # 30 edges, 5 per atom: not chunks of 32
    with pytest.raises(ValueError, match="multiple of 32"):
        conv(pos, Edges(edge_index, None, 4.0, chunk=32))
    with pytest.raises(ValueError, match="share their centre"):
        conv(pos, Edges(edge_index[:, torch.arange(32) % 30], None, 4.0, chunk=32))
    with pytest.raises(ValueError, match="inside the Edges"):
        conv(pos, Edges(edge_index, None, 4.0), shifts=torch.zeros(30, 3, dtype=F64))
    padded = Edges(edge_index, None, 4.0).chunked(6, max_padding=float("inf"))
    assert padded.chunk == 32 and padded.num_edges == 6 * 32
    assert torch.allclose(conv(pos, padded), conv(pos, edge_index), atol=1e-13)
    # Sparse lists stay plain (padding would grow them more than max_padding).
    assert Edges(edge_index, None, 4.0).chunked(6).chunk == 0
    empty = Edges(torch.empty(2, 0, dtype=torch.long), None, 4.0).chunked(6)
    assert empty.index.shape == (2, 0)


@pytest.mark.parametrize("reflection", [False, True])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_equivariance(reflection, n):
    num, rc = 8, 5.0
    conv = VectorGaussianConv(
        2, 6, 5, rc, vector_channels=3, output="both", act="softsign_residual", dtype=F64
    )
    pos, v, x = cluster(num, n), torch.randn(num, 2, dtype=F64), torch.randn(num, n, 3, dtype=F64)
    edge_index = all_pairs(num)
    U = random_orthogonal(n, reflection=reflection)
    err = assert_equivariant(
        lambda p, vv, xx: conv(p, edge_index, vv, xx),
        (pos, v, x),
        U,
        axis=(-1, None, -2),
        out_axis=-2,
        out_num_scalars=1,
    )
    assert err < 1e-12
    # The output must actually depend on the direction: rotating it is not a no-op.
    out = conv(pos, edge_index, v, x)
    assert (out[:, :n].transpose(1, 2) @ U.T - out[:, :n].transpose(1, 2)).abs().max() > 1e-3


def test_translation_invariance():
    conv = VectorGaussianConv(1, 4, 5, 5.0, output="both", dtype=F64)
    pos = cluster(6)
    edge_index = all_pairs(6)
    out = conv(pos, edge_index)
    moved = conv(pos + torch.tensor([3.0, -7.0, 0.5], dtype=F64), edge_index)
    assert torch.allclose(out, moved, atol=1e-12)


def test_scalar_form_is_invariant():
    conv = VectorGaussianConv(2, 6, 5, 5.0, vector_channels=2, output="scalar", dtype=F64)
    num = 7
    pos, v, x = cluster(num), torch.randn(num, 2, dtype=F64), torch.randn(num, 3, 2, dtype=F64)
    edge_index = all_pairs(num)
    for reflection in (False, True):
        assert_invariant(
            lambda p, vv, xx: conv(p, edge_index, vv, xx),
            (pos, v, x),
            U=random_orthogonal(3, reflection=reflection),
            axis=(-1, None, -2),
        )


def test_permutation_equivariance():
    num, rc = 10, 4.0
    conv = VectorGaussianConv(2, 5, 6, rc, vector_channels=2, output="both", dtype=F64)
    batch = torch.tensor([0] * 4 + [1] * 6)
    pos = cluster(num)
    pos[batch == 1] += 20.0
    v, x = torch.randn(num, 2, dtype=F64), torch.randn(num, 3, 2, dtype=F64)

    def fn(p, vv, xx, b):
        edge_index, _ = radius_graph(p, rc, b)  # rebuilt for the permuted input
        return conv(p, edge_index, vv, xx)

    perm = random_permutation(num, batch=batch)
    assert not torch.equal(perm, torch.arange(num))
    err = assert_permutation_equivariant(fn, (pos, v, x, batch), perm)
    assert err < 1e-12


def test_isolated_atoms_and_self_loops_are_zero_not_nan():
    conv = VectorGaussianConv(1, 4, 5, 3.0, output="both", act="softsign_residual", dtype=F64)
    pos = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [11.0, 0.5, 0.0]], dtype=F64)
    pos.requires_grad_(True)
    # Atom 0 has no neighbour within the cutoff; the edges (0, 0), (1, 1) are self-loops.
    edge_index = torch.tensor([[0, 0, 1, 1, 2], [1, 0, 1, 2, 1]])
    out = conv(pos, edge_index)
    assert torch.equal(out[0], torch.zeros(4, 4, dtype=F64))
    assert out[1:].abs().max() > 1e-3
    ref = conv(pos, torch.tensor([[1, 2], [2, 1]]))
    assert torch.allclose(out, ref, atol=1e-14)  # the self-loops contribute nothing
    out.square().sum().backward()
    assert torch.isfinite(pos.grad).all()
    assert torch.isfinite(conv.weight.grad).all()
    # No edges at all, also for a single atom (no chunk to allocate).
    empty = conv(pos, torch.empty(2, 0, dtype=torch.long))
    assert torch.equal(empty, torch.zeros(3, 4, 4, dtype=F64))
    single = conv(pos[:1], torch.empty(2, 0, dtype=torch.long))
    assert torch.equal(single, torch.zeros(1, 4, 4, dtype=F64))


def test_coincident_atoms_have_finite_gradients():
    conv = VectorGaussianConv(1, 3, 4, 3.0, dtype=F64)
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    pos.requires_grad_(True)
    out = conv(pos, all_pairs(3))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(pos.grad).all()


def test_smooth_at_cutoff():
    rc = 4.0
    conv = VectorGaussianConv(1, 4, 5, rc, output="both", dtype=F64)
    edge_index = all_pairs(2)
    outs = []
    for r in (rc - 1e-3, rc, rc + 1e-3):
        pos = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], dtype=F64)
        outs.append(conv(pos, edge_index))
    assert outs[0].abs().max() < 1e-8  # (1 - x)^3 ~ 1e-9 just inside
    assert torch.equal(outs[1], torch.zeros_like(outs[1]))
    assert torch.equal(outs[2], torch.zeros_like(outs[2]))


def test_bond_vectors_smooth_at_cutoff_and_differentiable():
    # The order-two columns carry the radial functions' cutoff too: nothing jumps at r_c, and
    # the derivatives (forces; their derivatives in training) are right.
    rc = 4.0
    conv = VectorGaussianConv(1, 4, 5, rc, vector_channels=2, output="both", dtype=F64,
                              bond_vectors=True, centre_vectors=True, bond_cubes=True,
                              bond_quartics=True)  # fmt: skip
    x = torch.randn(2, 3, 2, dtype=F64)
    outs = []
    for r in (rc - 1e-3, rc, rc + 1e-3):
        pos = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], dtype=F64)
        outs.append(conv(pos, all_pairs(2), x=x))
    assert outs[0].abs().max() < 1e-7
    assert torch.equal(outs[1], torch.zeros_like(outs[1]))
    assert torch.equal(outs[2], torch.zeros_like(outs[2]))
    num = 4
    pos = cluster(num, spread=1.5).requires_grad_(True)
    xx = torch.randn(num, 3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, y: conv(p, all_pairs(num), x=y), (pos, xx))
    assert torch.autograd.gradgradcheck(
        lambda p, y: conv(p, all_pairs(num), x=y), (pos, xx), fast_mode=True
    )


def test_gradcheck():
    conv = VectorGaussianConv(
        2, 2, 3, 4.0, 1, "both", "softsign_residual", learnable_basis=True, dtype=F64
    )
    num = 4
    pos = cluster(num, spread=1.5).requires_grad_(True)
    v = torch.randn(num, 2, dtype=F64, requires_grad=True)
    x = torch.randn(num, 3, 1, dtype=F64, requires_grad=True)
    edge_index = all_pairs(num)
    shifts = (0.1 * torch.randn(edge_index.shape[1], 3, dtype=F64)).requires_grad_(True)
    names = [name for name, _ in conv.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in conv.parameters()]
    assert set(names) == {"weight", "scalar_weight", "basis.rs", "basis.log_eta"}

    def fn(p, vv, xx, s, *ps):
        return torch.func.functional_call(
            conv, dict(zip(names, ps, strict=True)), (p, edge_index, vv, xx, s)
        )

    # Every entry for the node inputs; random directions (fast mode) for all inputs at once.
    assert torch.autograd.gradcheck(lambda p, vv, xx: fn(p, vv, xx, shifts, *params), (pos, v, x))
    assert torch.autograd.gradcheck(fn, (pos, v, x, shifts, *params), fast_mode=True)


def test_second_derivatives():
    # Training a conservative model (forces = -dE/dr) differentiates the layer twice.
    conv = VectorGaussianConv(2, 2, 3, 4.0, 1, "both", "softsign_residual", dtype=F64)
    num = 3
    pos = cluster(num, spread=1.5).requires_grad_(True)
    v, x = torch.randn(num, 2, dtype=F64), torch.randn(num, 3, 1, dtype=F64)
    weight = conv.weight.detach().clone().requires_grad_(True)

    def fn(p, w):
        return torch.func.functional_call(conv, {"weight": w}, (p, all_pairs(num), v, x))

    assert torch.autograd.gradgradcheck(fn, (pos, weight), fast_mode=True)


def test_parameters_receive_gradients():
    conv = VectorGaussianConv(1, 3, 4, 4.0, output="both", learnable_basis=True, dtype=F64)
    conv(cluster(5, spread=1.5), all_pairs(5)).square().sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_bad_inputs():
    conv = VectorGaussianConv(2, 3, 4, 4.0, vector_channels=1, dtype=F64)
    pos, v, x = cluster(4), torch.randn(4, 2, dtype=F64), torch.randn(4, 3, 1, dtype=F64)
    ei = all_pairs(4)
    with pytest.raises(TypeError, match="float32"):
        conv(pos.float(), ei, v, x)
    with pytest.raises(ValueError, match=r"\(N, n\)"):
        conv(pos[0], ei, v, x)
    with pytest.raises(ValueError, match=r"\(2, E\)"):
        conv(pos, ei.T, v, x)
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        conv(pos, ei, v[:, :1], x)
    with pytest.raises(ValueError, match="vector features"):
        conv(pos, ei, v)
    with pytest.raises(ValueError, match="shifts"):
        conv(pos, ei, v, x, torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="output"):
        VectorGaussianConv(1, 3, 4, 4.0, output="tensor")
    with pytest.raises(ValueError, match="cutoff"):
        VectorGaussianConv(1, 3, 4, -1.0)
    with pytest.raises(TypeError, match="real floating"):
        VectorGaussianConv(1, 3, 4, 4.0, dtype=torch.complex128)


def test_float32_matches_float64():
    conv64 = VectorGaussianConv(1, 4, 5, 4.0, output="both", dtype=F64)
    conv32 = VectorGaussianConv(1, 4, 5, 4.0, output="both", dtype=torch.float32)
    conv32.load_state_dict({k: t.float() for k, t in conv64.state_dict().items()})
    pos = cluster(6, spread=1.5)
    out64 = conv64(pos, all_pairs(6))
    out32 = conv32(pos.float(), all_pairs(6))
    assert math.isclose(0.0, (out32.double() - out64).abs().max().item(), abs_tol=1e-5)


@pytest.mark.parametrize("output", ["vector", "scalar", "both"])
def test_centre_species_weights_are_one_layer_per_species(output):
    # A layer with weights per centre species gives each atom the output of a plain layer
    # holding that species' weight.
    torch.manual_seed(0)
    pos = torch.randn(7, 3, dtype=torch.float64) * 1.5
    species = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    v = torch.nn.functional.one_hot(species, 2).to(torch.float64)
    edge_index, _ = radius_graph(pos, 4.0)
    kwargs = {"num_basis": 5, "cutoff": 4.0, "output": output, "dtype": torch.float64}
    conv = VectorGaussianConv(2, 3, centre_species=2, **kwargs)
    out = conv(pos, edge_index, v, centre=species)
    for z in range(2):
        plain = VectorGaussianConv(2, 3, **kwargs)
        with torch.no_grad():
            for name in ("weight", "scalar_weight"):
                if getattr(conv, name) is not None:
                    getattr(plain, name).copy_(getattr(conv, name)[z])
        mask = species == z
        torch.testing.assert_close(out[mask], plain(pos, edge_index, v)[mask])
    assert_equivariant(
        lambda p: conv(p, edge_index, v, centre=species), pos, axis=-1,
        out_axis=None if output == "scalar" else -2,
        out_num_scalars=1 if output == "both" else 0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="centre"):
        conv(pos, edge_index, v)


def test_radial_mlp_learns_functions_of_the_gaussians():
    # e -> e + W2 silu(W1 e): the plain layer at the start (W2 = 0), then a function of r
    # alone (equivariant), zero at r = 0 and from r_c on, and differentiable twice.
    rc, num, n = 4.0, 5, 3
    kw = {"vector_channels": 2, "output": "both", "dtype": F64}
    conv = VectorGaussianConv(2, 4, 5, rc, radial_hidden=6, **kw)
    plain = VectorGaussianConv(2, 4, 5, rc, **kw)
    plain.load_state_dict({k: v for k, v in conv.state_dict().items() if "radial" not in k})
    pos, v, x = cluster(num, n), torch.randn(num, 2, dtype=F64), torch.randn(num, n, 2, dtype=F64)
    start = conv(pos, all_pairs(num), v, x)  # (the plain layer may take the fused kernel)
    assert torch.allclose(start, plain(pos, all_pairs(num), v, x), rtol=0, atol=1e-14)
    with torch.no_grad():
        conv.radial[2].weight.uniform_(-1.0, 1.0)
    out = conv(pos, all_pairs(num), v, x)
    assert not torch.allclose(out, plain(pos, all_pairs(num), v, x))
    # the same as the plain layer fed the learned functions: sums of e' (x) feat
    r = (pos[1] - pos[0]).norm()
    e = dense_radial(r.item(), conv.basis.rs, conv.basis.eta, rc)
    learned = e + conv.radial(e)
    one = conv(pos[:2], torch.tensor([[0], [1]]), v[:2], x[:2])
    u = (pos[1] - pos[0]) / r
    want_s = torch.einsum("b,d,bda->a", learned, v[1], conv.scalar_weight[:, :2])
    want_s += torch.einsum("b,c,bca->a", learned, u @ x[1], conv.scalar_weight[:, 2:])
    assert torch.allclose(one[0, n], conv.act(want_s.view(1, 1, 4)).view(4), atol=1e-12)
    U = random_orthogonal(n, reflection=True)
    err = assert_equivariant(
        lambda p, xx: conv(p, all_pairs(num), v, xx), (pos, x), U, axis=(-1, -2),
        out_axis=-2, out_num_scalars=1,
    )  # fmt: skip
    assert err < 1e-12
    for r, small in ((rc - 1e-3, True), (rc, False), (rc + 1e-3, False)):
        two = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], dtype=F64)
        got = conv(two, all_pairs(2), v[:2], x[:2])
        assert got.abs().max() < 1e-7 if small else torch.equal(got, torch.zeros_like(got))
    p = cluster(4, spread=1.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: conv(q, all_pairs(4), v[:4], x[:4]), (p,))
    assert torch.autograd.gradgradcheck(
        lambda q: conv(q, all_pairs(4), v[:4], x[:4]), (p,), fast_mode=True
    )
    assert "radial_hidden=6" in repr(conv)
    with pytest.raises(ValueError, match="radial_hidden"):
        VectorGaussianConv(2, 4, 5, rc, radial_hidden=-1)


def test_sum_scale_multiplies_the_neighbour_sums():
    """sum_scale gamma: with the identity activation the layer is linear in the sums, so its
    output is gamma times that of the same weights without it, in both forms."""
    rc, pos = 3.0, cluster(6)
    x = torch.randn(6, 3, 2, dtype=F64)
    kw = {"vector_channels": 2, "output": "both", "bond_vectors": True, "dtype": F64}
    plain = VectorGaussianConv(2, 4, 5, rc, **kw)
    scaled = VectorGaussianConv(2, 4, 5, rc, sum_scale=0.25, **kw)
    scaled.load_state_dict(plain.state_dict())
    v = torch.randn(6, 2, dtype=F64)
    edges = all_pairs(6)
    torch.testing.assert_close(scaled(pos, edges, v, x), 0.25 * plain(pos, edges, v, x))
    assert "sum_scale=0.25" in repr(scaled) and "sum_scale" not in repr(plain)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="sum_scale must be a positive number"):
            VectorGaussianConv(2, 4, 5, rc, sum_scale=bad)
