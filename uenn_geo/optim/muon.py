r"""Muon for the weight matrices, Adam for the rest: one optimiser for the force fields.

:class:`torch.optim.Muon` takes matrices only, real ones; :class:`MuonAdam` serves a whole
model (matrices, stacks of them, vectors; real or complex) with one state for the
checkpoints."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["MuonAdam", "orthogonalise"]

#: The quintic Newton-Schulz iteration's coefficients of Jordan et al. (2024), as in
#: :class:`torch.optim.Muon`.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    r"""Approximately the nearest semi-orthogonal matrix :math:`U V^\top` to each matrix of
    ``g`` (over its last two dimensions; :math:`g = U S V^\dagger`) by ``steps`` quintic
    Newton-Schulz iterations, as in :class:`torch.optim.Muon`, batched over the leading
    dimensions."""
    a, b, c = NS_COEFFICIENTS
    shape = g.shape
    x = g.to(torch.complex64 if g.is_complex() else torch.float32).reshape(-1, *shape[-2:])
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mH.contiguous()  # the Gram matrix over the shorter side
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mH
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    if tall:
        x = x.mH
    x = x.reshape(shape)
    return x.to(g.dtype)


class MuonAdam(Optimizer):
    r"""Muon (momentum orthogonalised by Newton-Schulz; Jordan et al., 2024) for every
    parameter of two or more dimensions, and AdamW for the vectors (the scalar rows' biases).

    A matrix (a layer's :math:`W` or :math:`b` of eq. 15, a mixing matrix) is stepped as
    it is; a parameter of more dimensions as a stack of matrices, read by ``nd_as``:
    ``"rows"``, one matrix per index of its first dimension, from its middle dimensions
    (flattened) to its last (a graph layer's radial weights, species pairs x Gaussians x
    input channels x output channels, as one matrix per species pair, from the Gaussians
    times the input channels to the output channels: the linear map the layer applies to
    its expanded messages); ``"batch"``, one matrix per index of every dimension but the
    last two (one per species pair and Gaussian, from the input to the output channels).

    Muon's update of a :math:`A \times B` matrix is scaled by :math:`0.2\sqrt{\max(A, B)}`
    (Moonshot's rule, ``adjust_lr_fn="match_rms_adamw"`` of :class:`torch.optim.Muon`), so
    that one learning rate, tuned for Adam, serves both.

    Args:
        params: the model's parameters (one group).
        lr: the learning rate of both.
        weight_decay: decoupled weight decay of both.
        momentum: Muon's (Nesterov) momentum.
        betas, eps: Adam's.
        nd_as: how parameters of more than two dimensions are read as matrices,
            ``"rows"`` or ``"batch"`` (above).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        nd_as: str = "rows",
    ) -> None:
        if nd_as not in ("rows", "batch"):
            raise ValueError(f"nd_as must be 'rows' or 'batch', got {nd_as!r}")
        defaults = {
            "nd_as": nd_as,
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "betas": betas,
            "eps": eps,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (Optimizer's)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            self._muon([p for p in params if p.dim() >= 2], group)
            self._adam([p for p in params if p.dim() < 2], group)
        return loss

    def _muon(self, params: list[Tensor], group: dict) -> None:
        """Nesterov momentum, then one batched orthogonalisation for all matrices of a
        shape (small matrices: one call instead of one per parameter)."""
        if not params:
            return
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        mu = group["momentum"]
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, grads)
        updates = torch._foreach_add(grads, bufs, alpha=mu)
        by_shape: dict[tuple[int, int, bool], list[int]] = {}
        for i, u in enumerate(updates):
            # "rows" where a group lacks the key (a state dict from before it)
            shape = _matrix_shape(u, group.get("nd_as", "rows"))
            by_shape.setdefault((*shape, u.is_complex()), []).append(i)
        for (a, b, _), index in by_shape.items():
            stack = torch.cat([updates[i].reshape(-1, a, b) for i in index])
            ortho = orthogonalise(stack).split([updates[i].numel() // (a * b) for i in index])
            step = -group["lr"] * 0.2 * math.sqrt(max(a, b))
            for i, o in zip(index, ortho, strict=True):
                params[i].add_(o.view_as(params[i]), alpha=step)

    def _adam(self, params: list[Tensor], group: dict) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            # complex entries as (real, imaginary) pairs, as torch's Adam treats them
            grad, m, v, param = (_real(x) for x in (p.grad, m, v, p))
            m.lerp_(grad, 1.0 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            denom = (v / (1.0 - beta2**t)).sqrt_().add_(group["eps"])
            param.addcdiv_(m, denom, value=-group["lr"] / (1.0 - beta1**t))


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _matrix_shape(p: Tensor, nd_as: str = "rows") -> tuple[int, int]:
    """The shape of the matrices a parameter is read as: itself if it has two dimensions;
    else, ``nd_as="rows"``, one matrix per index of its first dimension, from the middle
    dimensions (flattened) to the last, or, ``"batch"``, one per index of the leading
    dimensions."""
    if p.dim() == 2 or nd_as == "batch":
        return (p.size(-2), p.size(-1))
    return (p[0].numel() // p.size(-1), p.size(-1))
