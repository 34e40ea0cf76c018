import copy

import pytest
import torch
from torch import nn

from uenn_geo.optim import MuonAdam, orthogonalise
from uenn_geo.optim.muon import _matrix_shape


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (7, 17, 32), (5, 1, 32), (3, 3)])
def test_orthogonalise_flattens_the_singular_values_and_keeps_the_directions(shape):
    """Newton-Schulz maps each matrix's singular values into Muon's band (about 0.7-1.2,
    from any spread) and keeps its singular vectors: close to U V^T of its SVD."""
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    g = g * torch.logspace(-1, 1, shape[-1])  # columns of sizes 100x apart
    out = orthogonalise(g)
    assert out.shape == g.shape
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.5 and s.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    exact = u @ vh
    cosine = (out * exact).sum((-2, -1)) / (out.norm(dim=(-2, -1)) * exact.norm(dim=(-2, -1)))
    assert (cosine > 0.9).all()


def test_orthogonalise_complex_matrices():
    """Complex matrices (U(n) models) go to U V^H of their SVD, not to a real part."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(4, 6, 10, dtype=torch.complex64, generator=gen)
    out = orthogonalise(g)
    assert out.dtype == torch.complex64
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.5 and s.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    exact = u @ vh
    inner = (out.conj() * exact).sum((-2, -1)).real
    assert (inner / (out.norm(dim=(-2, -1)) * exact.norm(dim=(-2, -1))) > 0.9).all()


def test_matrices_of_a_parameter():
    """A matrix is itself; a conv weight (species pairs, Gaussians, in, out) is one matrix per
    species pair, from the Gaussians times the input channels to the output channels."""
    assert _matrix_shape(torch.empty(32, 64)) == (32, 64)
    assert _matrix_shape(torch.empty(3, 16, 43, 32)) == (16 * 43, 32)
    assert _matrix_shape(torch.empty(4, 8, 5)) == (8, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_vectors_get_adamw_step_for_step(dtype):
    """Parameters of one dimension are stepped by Adam with decoupled weight decay, as
    torch's AdamW steps them (complex ones as pairs of reals, as torch's)."""
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(10, dtype=dtype))
    b = nn.Parameter(a.detach().clone())
    ours = MuonAdam([a], lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1)
    for _ in range(20):
        grad = torch.randn(10, dtype=dtype)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_muon_fits_a_linear_map_and_its_update_has_adams_size():
    """Least squares y = x W from zero, the learning rate falling linearly to zero (Muon's
    steps have a fixed size): the loss falls a hundredfold; one step
    moves a matrix by about lr * 0.2 per entry (root mean square), the size of Adam's first
    step, whatever the gradient's scale."""
    gen = torch.Generator().manual_seed(1)
    x, w_true = torch.randn(256, 16, generator=gen), torch.randn(16, 8, generator=gen)
    y = x @ w_true
    w = nn.Parameter(torch.zeros(16, 8))
    bias = nn.Parameter(torch.zeros(8))
    opt = MuonAdam([w, bias], lr=0.1)
    first = None
    for step in range(300):
        for group in opt.param_groups:
            group["lr"] = 0.1 * (1 - step / 300)
        loss = ((x @ w + bias - y) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        (loss * 1e4).backward()  # the gradient's scale does not matter
        before = w.detach().clone()
        opt.step()
        if step == 0:
            rms = (w.detach() - before).pow(2).mean().sqrt().item()
            assert 0.2 * 0.1 * 0.6 < rms < 0.2 * 0.1 * 1.3
    assert loss.item() < 0.01 * first


def test_state_dict_resumes_bit_identically():
    """Momentum and Adam's moments travel in the state dict: an optimiser loaded from one
    after three steps continues exactly as the original."""

    def make():
        torch.manual_seed(2)
        return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))

    def step(model, opt, k):
        gen = torch.Generator().manual_seed(k)
        x = torch.randn(32, 6, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()

    a = make()
    opt_a = MuonAdam(a.parameters(), lr=1e-2, weight_decay=0.01)
    for k in range(3):
        step(a, opt_a, k)
    b = make()
    b.load_state_dict(a.state_dict())
    opt_b = MuonAdam(b.parameters(), lr=1e-2, weight_decay=0.01)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as saved and read back
    for k in range(3, 6):
        step(a, opt_a, k)
        step(b, opt_b, k)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
