"""The fused CPU kernel of the neighbour sums (uenn_geo.nn.kernels) against the plain path."""

import os
import threading
import time

import numpy as np
import pytest
import torch

from uenn_geo.edges import Edges
from uenn_geo.models import UENNForceField
from uenn_geo.nn import VectorGaussianConv, kernels
from uenn_geo.testing import assert_equivariant, random_orthogonal

F64 = torch.float64


def graph(num=12, spread=2.5, dtype=F64, periodic=False, seed=0):
    """Random positions, every ordered pair (some beyond the cutoff), one zero-length pair,
    and image shifts when periodic."""
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(num, 3, generator=g, dtype=F64) * 2 - 1) * spread
    i, j = torch.meshgrid(torch.arange(num), torch.arange(num), indexing="ij")
    keep = i != j
    index = torch.stack([i[keep], j[keep]])
    index = torch.cat([index, torch.tensor([[3], [3]])], dim=1)  # a self-pair: contributes 0
    shifts = None
    if periodic:
        shifts = torch.randint(-1, 2, (index.shape[1], 3), generator=g).to(F64) * 3.0
        shifts[-1] = 0.0
    return pos.to(dtype), index, None if shifts is None else shifts.to(dtype)


def layer(dtype=F64, **kwargs):
    options = dict(vector_channels=4, output="both", dtype=dtype)
    options.update(kwargs)
    torch.manual_seed(1)
    return VectorGaussianConv(3, 5, 7, 4.0, **options)


def node_features(conv, num):
    """Random v (num, 3) and, where the layer has vector channels, x (num, 3, F_v)."""
    v = torch.randn(num, 3, dtype=conv.dtype)
    channels = conv.vector_channels
    return v, torch.randn(num, 3, channels, dtype=conv.dtype) if channels else None


def sums_both_ways(conv, pos, edges, v, x):
    with torch.no_grad():
        conv.kernel = True
        fused = conv.neighbour_sums(pos, edges, v, x)
        conv.kernel = False
        plain = conv.neighbour_sums(pos, edges, v, x)
    return fused, plain


def test_the_kernel_builds_here():
    # CI and the README's machines have a C++ compiler (torch.compile needs one too).
    assert kernels.available(), kernels._error


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"output": "vector"},
        {"output": "scalar"},
        {"vector_channels": 0},
        {"centre_vectors": True},
        {"bond_vectors": True},
        {"centre_vectors": True, "bond_vectors": True, "output": "scalar"},
        {"bond_cubes": True},
        {"centre_vectors": True, "bond_cubes": True},
        {"centre_vectors": True, "bond_vectors": True, "bond_cubes": True},
        {"bond_vectors": True, "bond_cubes": True, "output": "vector"},
    ],
)
@pytest.mark.parametrize("periodic", [False, True])
def test_equals_the_plain_path_float64(options, periodic):
    conv = layer(**options)
    pos, index, shifts = graph(periodic=periodic)
    v, x = node_features(conv, pos.shape[0])
    fused, plain = sums_both_ways(conv, pos, Edges(index, shifts, conv.cutoff), v, x)
    assert plain.abs().max() > 0.1
    assert torch.allclose(fused, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["chunked", "shuffled"])
def test_any_edge_order_and_chunk_layout(layout):
    # Chunks hold self-pairs as padding; a shuffled list has an atom's edges anywhere.
    conv = layer(bond_vectors=True)
    pos, index, shifts = graph(num=15)
    edges = Edges(index, shifts, conv.cutoff)
    if layout == "chunked":
        edges = edges.chunked(pos.shape[0], size=8, max_padding=float("inf"))
        assert edges.chunk == 8
    else:
        edges = Edges(index[:, torch.randperm(index.shape[1])], None, conv.cutoff)
    v, x = torch.randn(15, 3, dtype=F64), torch.randn(15, 3, 4, dtype=F64)
    fused, plain = sums_both_ways(conv, pos, edges, v, x)
    assert torch.allclose(fused, plain, rtol=0, atol=1e-12)


def test_threads_split_atoms_not_edges():
    # A list sorted by centre is split among threads at the first edge of a centre: more
    # threads, the same sums; in the backward each thread adds into its own copy of the
    # scattered gradients (positions, node features), summed after.
    conv = layer(centre_vectors=True, bond_vectors=True).eval()
    pos, index, shifts = graph(num=100, spread=4.0, periodic=True)
    order = torch.argsort(index[0], stable=True)  # graph() appends a self-pair at the end
    index, shifts = index[:, order], shifts[order]
    assert index.shape[1] >= 8192  # the backward splits lists of 8192 edges or more
    assert kernels.available() and kernels._extension.openmp()  # built with threads here
    v, x = torch.randn(100, 3, dtype=F64), torch.randn(100, 3, 4, dtype=F64)
    threads = torch.get_num_threads()
    results = {}
    try:
        for name, num in (("one", 1), ("two", 2)):
            torch.set_num_threads(num)
            conv.kernel = True
            results[name] = gradients(conv, pos, index, shifts, v, x)
        conv.kernel = False
        plain = gradients(conv, pos, index, shifts, v, x)
    finally:
        torch.set_num_threads(threads)
    for name in ("one", "two"):
        sums, grads = results[name]
        assert torch.allclose(sums, plain[0], rtol=0, atol=1e-12)
        for got, want in zip(grads, plain[1], strict=True):
            assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_float32_to_round_off():
    conv = layer(dtype=torch.float32)
    pos, index, shifts = graph(dtype=torch.float32, periodic=True)
    v = torch.randn(pos.shape[0], 3)
    x = torch.randn(pos.shape[0], 3, 4)
    fused, plain = sums_both_ways(conv, pos, Edges(index, shifts, conv.cutoff), v, x)
    assert (fused - plain).abs().max() < 1e-5 * plain.abs().max()


@pytest.mark.parametrize("reflection", [False, True])
@pytest.mark.parametrize("cubes", [False, True])
def test_o3_equivariance_through_the_kernel(reflection, cubes):
    conv = layer(bond_vectors=True, bond_cubes=cubes, act="softsign_residual")
    conv.kernel = True
    pos, index, _ = graph()
    v, x = torch.randn(pos.shape[0], 3, dtype=F64), torch.randn(pos.shape[0], 3, 4, dtype=F64)
    U = random_orthogonal(3, reflection=reflection)
    with torch.no_grad():
        err = assert_equivariant(
            lambda p, vv, xx: conv(p, index, vv, xx),
            (pos, v, x),
            U,
            axis=(-1, None, -2),
            out_axis=-2,
            out_num_scalars=1,
        )
    assert err < 1e-12


def gradients(conv, pos, index, shifts, v, x):
    """The sums and the gradients of a fixed linear function of them in pos, v, x, shifts."""
    inputs = [t.clone().requires_grad_(True) for t in (pos, v, x, shifts) if t is not None]
    p, vv = inputs[:2]
    xx = inputs[2] if x is not None else None
    ss = inputs[-1] if shifts is not None else None
    h = conv.neighbour_sums(p, Edges(index, ss, conv.cutoff), vv, xx)
    weights = torch.sin(torch.arange(h.numel(), dtype=h.dtype)).view_as(h)
    return h.detach(), torch.autograd.grad((h * weights).sum(), inputs)


@pytest.mark.parametrize(
    "options",
    [{}, {"output": "vector"}, {"output": "scalar"}, {"vector_channels": 0},
     {"centre_vectors": True, "bond_vectors": True},
     {"bond_cubes": True, "output": "vector"}, {"bond_cubes": True, "output": "scalar"},
     {"centre_vectors": True, "bond_vectors": True, "bond_cubes": True}],
)  # fmt: skip
@pytest.mark.parametrize("periodic", [False, True])
def test_backward_equals_the_plain_path(options, periodic):
    # Eval mode: the kernel's own backward gives the gradients of positions, image shifts and
    # node features (the forces and stress of an energy model).
    conv = layer(**options).eval()
    pos, index, shifts = graph(periodic=periodic)
    v, x = node_features(conv, pos.shape[0])
    conv.kernel = True
    fused, fused_grads = gradients(conv, pos, index, shifts, v, x)
    conv.kernel = False
    plain, plain_grads = gradients(conv, pos, index, shifts, v, x)
    assert torch.allclose(fused, plain, rtol=0, atol=1e-12)
    assert len(fused_grads) == len(plain_grads) == 2 + (x is not None) + periodic
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert want.abs().max() > 1e-3
        assert torch.allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize(
    "widths", [(1, 0, "both"), (9, 8, "both"), (17, 5, "both"), (2, 13, "both"), (1, 1, "scalar")]
)
def test_feature_widths_past_the_vector_length(widths, dtype):
    # The kernel reads v and x as rows padded to whole vectors (4 doubles or 8 floats with
    # AVX2, 8 or 16 with AVX-512) and writes each segment of feat as whole vectors: widths
    # below, at and past a vector, in every segment, forward and backward; the last case has
    # more Gaussians (6) than feature columns (4), the forward's other orientation.
    channels, vector_channels, output = widths
    torch.manual_seed(2)
    conv = VectorGaussianConv(
        channels, 5, 6, 4.0, vector_channels=vector_channels, output=output, dtype=dtype,
        centre_vectors=vector_channels > 0, bond_vectors=vector_channels > 0,
        bond_cubes=vector_channels > 0,
    ).eval()  # fmt: skip
    pos, index, shifts = graph(dtype=dtype, periodic=True)
    v = torch.randn(pos.shape[0], channels, dtype=dtype)
    x = torch.randn(pos.shape[0], 3, vector_channels, dtype=dtype) if vector_channels else None
    conv.kernel = True
    fused, fused_grads = gradients(conv, pos, index, shifts, v, x)
    conv.kernel = False
    plain, plain_grads = gradients(conv, pos, index, shifts, v, x)
    tol = 1e-12 if dtype == F64 else 1e-4  # float32: two orders of summation of ~100 terms
    assert (fused - plain).abs().max() <= tol * plain.abs().max()
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert want.abs().max() > 1e-3
        assert (got - want).abs().max() <= tol * want.abs().max()


def test_no_edges_gives_zero_sums_and_gradients():
    # An atom alone (the energy model's isolated-atom readout): nothing to sum, nothing to
    # differentiate; the gradients are zeros, not uninitialised memory.
    conv = layer().eval()
    conv.kernel = True
    pos = torch.randn(4, 3, dtype=F64)
    v, x = node_features(conv, 4)
    h, grads = gradients(conv, pos, torch.zeros(2, 0, dtype=torch.long), None, v, x)
    assert h.abs().max() == 0
    assert all(float(g.abs().max()) == 0 for g in grads)


def test_training_takes_the_plain_path(monkeypatch):
    # The kernel's backward is first order; a force loss differentiates the forces again, so
    # a layer in training mode with a gradient through its sums must not call it.
    conv = layer()
    conv.kernel = True
    pos, index, _ = graph()
    v, x = torch.randn(pos.shape[0], 3, dtype=F64), torch.randn(pos.shape[0], 3, 4, dtype=F64)

    def refuse(*args, **kwargs):
        raise AssertionError("the kernel was called in training mode on a graph with gradients")

    monkeypatch.setattr(kernels, "neighbour_sums", refuse)
    pos.requires_grad_(True)
    out = conv(pos, index, v, x)
    (grad,) = torch.autograd.grad(out.square().sum(), pos, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), pos)
    assert second.abs().max() > 0


def test_order_four_takes_the_plain_path(monkeypatch):
    # The kernel has no columns for bond_quartics: such a layer computes its sums in PyTorch,
    # in eval mode too, even where the kernel was decided on.
    conv = layer(bond_vectors=True, bond_cubes=True, bond_quartics=True).eval()
    conv.kernel = True
    pos, index, _ = graph()
    v, x = node_features(conv, pos.shape[0])

    def refuse(*args, **kwargs):
        raise AssertionError("the kernel was called for a layer with bond_quartics")

    monkeypatch.setattr(kernels, "neighbour_sums", refuse)
    with torch.no_grad():
        assert conv(pos, index, v, x).abs().max() > 0


def test_off_by_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "0")
    conv = layer()
    pos, index, _ = graph()
    with torch.no_grad():
        conv(
            pos,
            index,
            torch.randn(pos.shape[0], 3, dtype=F64),
            torch.randn(pos.shape[0], 3, 4, dtype=F64),
        )
    assert conv.kernel is False


class CountingExtension:
    def __init__(self, extension):
        self.extension, self.calls = extension, 0

    def neighbour_sums(self, *args):
        self.calls += 1
        return self.extension.neighbour_sums(*args)


def test_compiled_direct_model_calls_the_kernel(monkeypatch):
    # attach() decides before torch.compile; the compiled network then calls the kernel as one
    # opaque operation (once per graph layer) and gives the eager plain path's forces.
    assert kernels.available()
    counter = CountingExtension(kernels._extension)
    monkeypatch.setattr(kernels, "_extension", counter)
    torch.manual_seed(0)
    model = UENNForceField(cutoff=4.0, num_blocks=2, atomic_numbers=[1, 8], dtype=F64).eval()
    pos, index, _ = graph(num=20, spread=3.0)
    species = torch.randint(0, 2, (20,))
    edges = Edges(index, None, 4.0).chunked(20, size=8, max_padding=float("inf"))
    with torch.no_grad():
        for conv in model.convs:
            conv.kernel = False
        plain = model.compute_forces(pos, species, edges)
        for conv in model.convs:
            conv.kernel = None
        assert kernels.attach(model)
        assert all(conv.kernel for conv in model.convs)
        compiled = torch.compile(model.compute_forces, fullgraph=True, dynamic=True)
        fused = compiled(pos, species, edges)
    assert counter.calls == len(model.convs) == 2
    assert plain.abs().max() > 1e-3
    assert torch.allclose(fused, plain, rtol=0, atol=1e-10)


def test_compiled_energy_model_forces_and_stress(monkeypatch):
    # The calculator path of an energy model: compiled, forces and stress from the kernel's
    # backward, against the eager plain path.
    from ase import Atoms

    from uenn_geo.calculator import UENNCalculator

    torch.manual_seed(0)
    model = UENNForceField(cutoff=4.0, atomic_numbers=[18], conservative=True, dtype=F64).eval()
    rng = torch.Generator().manual_seed(3)
    cell = torch.eye(3, dtype=F64) * 6.5
    pos = torch.rand(40, 3, generator=rng, dtype=F64) @ cell
    atoms = Atoms(["Ar"] * 40, positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    results = {}
    for name, env, compile in (("plain", "0", False), ("kernel", "1", True)):
        monkeypatch.setenv(kernels.ENV, env)
        for conv in model.convs:
            conv.kernel = None
        atoms.calc = UENNCalculator(model, compile=compile)
        results[name] = (atoms.get_forces(), atoms.get_stress(), atoms.get_potential_energy())
    assert all(conv.kernel for conv in model.convs)
    assert abs(results["plain"][0]).max() > 1e-3
    for got, want in zip(results["kernel"], results["plain"], strict=True):
        assert np.abs(got - want).max() < 1e-10


def test_a_second_derivative_in_eval_mode_says_how_to_get_it():
    conv = layer().eval()
    conv.kernel = True
    pos, index, _ = graph()
    v, x = torch.randn(pos.shape[0], 3, dtype=F64), torch.randn(pos.shape[0], 3, 4, dtype=F64)
    pos.requires_grad_(True)
    out = conv(pos, index, v, x)
    (grad,) = torch.autograd.grad(out.square().sum(), pos, create_graph=True)
    with pytest.raises(RuntimeError, match="plain_path"):
        torch.autograd.grad(grad.square().sum(), pos)
    with kernels.plain_path(conv):
        assert conv.kernel is False
        out = conv(pos, index, v, x)
        (grad,) = torch.autograd.grad(out.square().sum(), pos, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), pos)
    assert conv.kernel is True
    assert second.abs().max() > 0


def test_an_atom_outside_the_positions_is_refused_not_read():
    # The plain path raises an IndexError; the kernel must not read or write out of bounds.
    conv = layer(vector_channels=0)
    conv.kernel = True
    pos, _, _ = graph(num=4)
    v, _ = node_features(conv, 4)
    for bad in (4, 10**8, -1):
        index = torch.tensor([[0, 0, 1], [1, 2, bad]])
        with torch.no_grad(), pytest.raises(RuntimeError, match="outside 0..3"):
            conv(pos, index, v)


def test_compiled_energy_forces_with_func_grad_in_eval_mode():
    # energy_forces under torch.compile takes its derivatives with torch.func.grad inside the
    # graph, which cannot take the operator: such graphs keep the plain path even after the
    # layers chose the kernel, and give the eager forces.
    from torch_geometric.data import Data

    torch.manual_seed(0)
    model = UENNForceField(cutoff=4.0, atomic_numbers=[18], conservative=True, dtype=F64).eval()
    data = Data(pos=torch.rand(20, 3, dtype=F64) * 5, z=torch.full((20,), 18))
    assert kernels.attach(model)
    eager = model.energy_forces(data)
    compiled = torch.compile(model.energy_forces)(data)
    assert eager["forces"].abs().max() > 1e-3
    assert torch.allclose(compiled["forces"], eager["forces"], rtol=0, atol=1e-10)
    assert torch.allclose(compiled["energy"], eager["energy"], rtol=0, atol=1e-10)


def test_build_falls_back_to_one_thread_then_to_the_plain_path(monkeypatch):
    # A compiler without OpenMP builds the kernel without threads; no compiler at all leaves
    # the plain path with a warning that says how to skip the attempt.
    import torch.utils.cpp_extension as cpp

    calls = []

    def fake_load(name, sources, extra_cflags, extra_ldflags, verbose):
        calls.append((name, "-fopenmp" in extra_cflags))
        if "-fopenmp" in extra_cflags or fail_all:
            raise RuntimeError("g++: error: unsupported option '-fopenmp'")
        return "serial-extension"

    monkeypatch.setattr(cpp, "load", fake_load)
    for fail_all in (False, True):
        calls.clear()
        monkeypatch.setattr(kernels, "_extension", None)
        monkeypatch.setattr(kernels, "_error", None)
        if fail_all:
            with pytest.warns(RuntimeWarning, match=f"{kernels.ENV}=0"):
                assert kernels._load() is None
            assert "unsupported option" in kernels._error
        else:
            with pytest.warns(RuntimeWarning, match="without OpenMP"):
                assert kernels._load() == "serial-extension"
            assert kernels._error is None
        assert [openmp for _, openmp in calls] == [True, False]
        assert calls[1][0].endswith("_serial")


def test_inputs_of_the_wrong_shape_are_refused_not_read():
    # The operator is public: v with fewer rows than pos (the layer checks this itself) must
    # not be read past its end.
    kernels.available()
    pos = torch.randn(1000, 3, dtype=F64)
    index = torch.tensor([[0, 1], [1, 0]])
    rs, eta = torch.linspace(0, 4, 6, dtype=F64), torch.ones(6, dtype=F64)
    args = (rs, eta, 4.0, 1e-9, True, True, False, False, False)
    ext = kernels._extension
    with pytest.raises(RuntimeError, match="v must be"):
        ext.neighbour_sums(pos, index, None, torch.randn(2, 3, dtype=F64), None, *args)
    with pytest.raises(RuntimeError, match="x must be"):
        ext.neighbour_sums(pos, index, None, torch.randn(1000, 3, dtype=F64),
                           torch.randn(2, 3, 4, dtype=F64), *args)  # fmt: skip
    with pytest.raises(RuntimeError, match="shifts must be"):
        ext.neighbour_sums(pos, index, torch.zeros(1, 3, dtype=F64),
                           torch.randn(1000, 3, dtype=F64), None, *args)  # fmt: skip


def test_a_lock_left_by_a_killed_build_is_removed_not_waited_on(tmp_path):
    lock = tmp_path / "lock"
    kernels._wait_for_build(lock)  # no lock: returns at once
    kernels._wait_for_build(None)  # a torch that builds elsewhere
    lock.touch()
    old = time.time() - 2 * kernels.STALE_LOCK_SECONDS
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="did not finish"):
        kernels._wait_for_build(lock)
    assert not lock.exists()
    lock.touch()  # a live build: waited on until it lets go
    threading.Timer(0.3, lock.unlink).start()
    start = time.monotonic()
    kernels._wait_for_build(lock)
    assert not lock.exists() and time.monotonic() - start >= 0.25
