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
    _assert_near_polar(g, out)


def _assert_near_polar(g, out):
    """``out``'s singular values lie in Muon's band and it points along U V^H of ``g``."""
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.5 and s.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    exact = u @ vh
    inner = (out.conj() * exact).sum((-2, -1)).real
    assert (inner / (out.norm(dim=(-2, -1)) * exact.norm(dim=(-2, -1))) > 0.9).all()


def test_orthogonalise_complex_matrices():
    """Complex matrices (U(n) models) go to U V^H of their SVD, not to a real part."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(4, 6, 10, dtype=torch.complex64, generator=gen)
    out = orthogonalise(g)
    assert out.dtype == torch.complex64
    _assert_near_polar(g, out)


def test_each_matrix_of_a_stack_is_normalised_alone():
    """Matrices of one stack whose sizes differ 10^4-fold all come out in Muon's band (a
    norm over the whole stack would leave the small one nearly unchanged)."""
    g = torch.randn(3, 12, 5, generator=torch.Generator().manual_seed(4))
    g = g * torch.tensor([1e-2, 1.0, 1e2]).view(3, 1, 1)
    s = torch.linalg.svdvals(orthogonalise(g))
    assert s.min() > 0.5 and s.max() < 1.25


def _reference_muon(params, grad_steps, lr, weight_decay, momentum, nd_as="rows"):
    """Muon written out per matrix (Jordan et al.): decoupled decay, Nesterov momentum, the
    quintic Newton-Schulz iteration on each matrix alone, the step scaled by
    0.2 sqrt(max(A, B)); parameters of more dimensions as matrices per ``nd_as``."""
    a, b, c = 3.4445, -4.7750, 2.0315
    params = [p.detach().clone().double() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for grads in grad_steps:
        for p, buf, g in zip(params, bufs, grads, strict=True):
            g = g.double()
            p.mul_(1 - lr * weight_decay)
            buf.mul_(momentum).add_(g)
            update = g + momentum * buf
            if update.dim() > 2 and nd_as == "rows":
                rows = update[0].numel() // update.shape[-1]
            else:
                rows = update.shape[-2]
            mats = update.reshape(-1, rows, update.shape[-1])
            out = []
            for m in mats:
                x = m / m.norm()
                if x.shape[0] > x.shape[1]:
                    x = x.T
                for _ in range(5):
                    gram = x @ x.T
                    x = a * x + (b * gram + c * gram @ gram) @ x
                out.append(x.T if m.shape[0] > m.shape[1] else x)
            scale = 0.2 * max(rows, update.shape[-1]) ** 0.5
            p.sub_(torch.stack(out).reshape(p.shape), alpha=lr * scale)
    return params


@pytest.mark.parametrize("nd_as", ["rows", "batch"])
def test_muon_steps_as_written_out_per_matrix(nd_as):
    """Against Muon written out per matrix, over several steps: matrices tall, wide and
    square, two of the same shape (each gets its own update), a 4-D parameter read as one
    matrix per index of its first dimension or per index of its first two."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(8, 5), (5, 8), (6, 6), (6, 6), (3, 4, 2, 5)]
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    grad_steps = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(4)]
    expected = _reference_muon(
        params, grad_steps, 0.05, weight_decay=0.1, momentum=0.9, nd_as=nd_as
    )
    opt = MuonAdam(params, lr=0.05, weight_decay=0.1, momentum=0.9, nd_as=nd_as)
    for grads in grad_steps:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.double(), e, rtol=1e-4, atol=1e-5)


def test_complex_matrices_step_through_the_optimiser():
    """A complex matrix parameter stays complex and moves by about Adam's step size."""
    w = nn.Parameter(torch.randn(6, 4, dtype=torch.complex64))
    before = w.detach().clone()
    opt = MuonAdam([w], lr=0.1)
    w.grad = torch.randn(6, 4, dtype=torch.complex64)
    opt.step()
    step = (w.detach() - before).abs()
    assert w.dtype == torch.complex64 and w.imag.abs().sum() > 0
    assert 0.2 * 0.1 * 0.5 < step.pow(2).mean().sqrt() < 0.2 * 0.1 * 1.5


def test_matrices_of_a_parameter():
    """A matrix is itself; a conv weight (species pairs, Gaussians, in, out) is one matrix per
    species pair, from the Gaussians times the input channels to the output channels."""
    assert _matrix_shape(torch.empty(32, 64)) == (32, 64)
    assert _matrix_shape(torch.empty(3, 16, 43, 32)) == (16 * 43, 32)
    assert _matrix_shape(torch.empty(4, 8, 5)) == (8, 5)
    assert _matrix_shape(torch.empty(3, 16, 43, 32), "batch") == (43, 32)
    assert _matrix_shape(torch.empty(32, 64), "batch") == (32, 64)


def test_the_two_readings_differ_and_a_bad_one_is_refused():
    """The readings give different steps for a 4-D parameter (the option is not ignored),
    a state dict from before the option (no ``nd_as``) steps as "rows", and a misspelt
    reading is refused."""
    gen = torch.Generator().manual_seed(8)
    start, grad = torch.randn(3, 4, 2, 5, generator=gen), torch.randn(3, 4, 2, 5, generator=gen)
    moved = {}
    for nd_as in ("rows", "batch", "old"):
        w = nn.Parameter(start.clone())
        opt = MuonAdam([w], lr=0.1, nd_as="batch" if nd_as == "old" else nd_as)
        if nd_as == "old":
            state = opt.state_dict()
            del state["param_groups"][0]["nd_as"]
            opt.load_state_dict(state)
        w.grad = grad.clone()
        opt.step()
        moved[nd_as] = w.detach() - start
    assert not torch.allclose(moved["rows"], moved["batch"], atol=1e-4)
    torch.testing.assert_close(moved["old"], moved["rows"])
    with pytest.raises(ValueError, match="nd_as"):
        MuonAdam([nn.Parameter(start)], nd_as="columns")


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
