r"""FIRE, the fast inertial relaxation engine, as the paper trains with it (appendix A)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["FIRE"]


def _real(t: Tensor) -> Tensor:
    r"""A real view of ``t``: complex entries become (real, imag) pairs, so that
    :math:`\mathbb{C}` is treated as :math:`\mathbb{R}^2`."""
    return torch.view_as_real(t) if t.is_complex() else t


def _flat(ts: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts]) if ts else torch.zeros(0)


class FIRE(Optimizer):
    r"""The fast inertial relaxation engine (FIRE) of Bitzek *et al.* (2006), written
    exactly as in appendix A of Ma & Chan.

    All parameters are one flattened vector :math:`\mathbf{x}` with velocity
    :math:`\mathbf{v}` and force :math:`\mathbf{F} = -\nabla L`. One call of
    :meth:`step` performs, in this order,

    .. math::
        1.\;& \mathbf{x} \leftarrow \mathbf{x} + \mathbf{v}\,\Delta t, \qquad
              \mathbf{v} \leftarrow \mathbf{v} + \frac{\mathbf{F}}{m}\,\Delta t \\
        2.\;& P = \mathbf{F} \cdot \mathbf{v} \\
        3.\;& \mathbf{v} \leftarrow (1-\alpha)\,\mathbf{v}
              + \alpha\,|\mathbf{v}|\,\frac{\mathbf{F}}{|\mathbf{F}|}, \qquad N \leftarrow N + 1 \\
        4.\;& \text{if } P > 0 \text{ and } N > N_{\min}:\;
              \Delta t \leftarrow \min(\Delta t\, f_{\text{inc}}, \Delta t_{\max}),\;
              \alpha \leftarrow \alpha\, f_\alpha \\
        5.\;& \text{if } P \le 0:\; \Delta t \leftarrow \Delta t\, f_{\text{dec}},\;
              \mathbf{v} \leftarrow \mathbf{0},\; \alpha \leftarrow \alpha_{\text{start}},\;
              N \leftarrow 0

    Precisely:

    * :math:`\mathbf{F}` is minus the ``.grad`` present on the parameters when :meth:`step`
      is called (or after ``closure`` has run), i.e. the force at :math:`\mathbf{x}` *before*
      the update of step 1; the same :math:`\mathbf{F}` is used in steps 1 to 3. A parameter
      whose ``.grad`` is ``None`` has zero force (it still moves with its velocity).
    * :math:`|\mathbf{v}|` in step 3 is the norm of the velocity after step 1.
    * Complex parameters are points of :math:`\mathbb{R}^2`: :math:`P = \mathrm{Re}
      \sum \overline{F}\, v` and norms are :math:`\sqrt{\sum |v|^2}`. PyTorch's ``.grad`` of a
      complex parameter is :math:`\partial L/\partial\,\mathrm{Re} +
      i\,\partial L/\partial\,\mathrm{Im}`, so :math:`F = -` ``.grad`` there too.
    * If :math:`|\mathbf{F}| = 0`, the term :math:`\mathbf{F}/|\mathbf{F}|` is taken as
      :math:`\mathbf{0}` (then :math:`P = 0` and step 5 applies).
    * The scalars :math:`\Delta t`, :math:`\alpha` and :math:`N` are python numbers kept in
      the (single) parameter group under ``"dt"``, ``"alpha"`` and ``"n_since_reset"``; the
      velocity is ``state[p]["velocity"]`` (same shape and dtype as ``p``). All of them go
      through :meth:`state_dict` / :meth:`load_state_dict`, so a resumed run is bit-identical.
      They are also readable as :attr:`dt`, :attr:`alpha` and :attr:`n_since_reset`.

    Only one parameter group is allowed (FIRE's scalars are global to the flattened
    vector); a second one raises :class:`ValueError`. Units: :math:`\Delta t` is in the same
    (arbitrary) time unit as :math:`m`; this is a training pseudo-dynamics, not physical MD.

    Args:
        params (iterable): parameters (or a single dict of them) to optimise.
        mass (float, optional): pseudo mass :math:`m`. (default: :obj:`0.1`)
        dt (float, optional): initial time step :math:`\Delta t`. (default: :obj:`0.001`)
        dt_max (float, optional): largest time step :math:`\Delta t_{\max}`.
            (default: :obj:`0.01`)
        n_min (int, optional): steps with :math:`P > 0` after a reset before
            :math:`\Delta t` may grow, :math:`N_{\min}`. (default: :obj:`5`)
        f_inc (float, optional): time step growth factor :math:`f_{\text{inc}} \ge 1`.
            (default: :obj:`1.1`)
        f_dec (float, optional): time step shrink factor :math:`0 < f_{\text{dec}} < 1`.
            (default: :obj:`0.5`)
        alpha_start (float, optional): mixing after a reset :math:`\alpha_{\text{start}}`,
            in :math:`[0, 1]`. (default: :obj:`0.1`)
        f_alpha (float, optional): mixing decay :math:`0 < f_\alpha \le 1`.
            (default: :obj:`0.99`)

    Example:
        >>> x = torch.nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))
        >>> opt = FIRE([x], dt=0.01, dt_max=0.1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = (x**2).sum()
        ...     loss.backward()
        ...     return loss
        >>> for _ in range(2000):
        ...     loss = opt.step(closure)
        >>> bool(loss < 1e-8)
        True
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        mass: float = 0.1,
        dt: float = 0.001,
        dt_max: float = 0.01,
        n_min: int = 5,
        f_inc: float = 1.1,
        f_dec: float = 0.5,
        alpha_start: float = 0.1,
        f_alpha: float = 0.99,
    ) -> None:
        _check_positive("mass", mass)
        _check_positive("dt", dt)
        _check_positive("dt_max", dt_max)
        if dt > dt_max:
            raise ValueError(f"Expected dt <= dt_max, got dt={dt} > dt_max={dt_max}")
        if isinstance(n_min, bool) or not isinstance(n_min, int) or n_min < 0:
            raise ValueError(f"Expected n_min to be a non-negative int, got {n_min!r}")
        if not (math.isfinite(f_inc) and f_inc >= 1.0):
            raise ValueError(f"Expected f_inc >= 1, got f_inc={f_inc}")
        if not (0.0 < f_dec < 1.0):
            raise ValueError(f"Expected 0 < f_dec < 1, got f_dec={f_dec}")
        if not (0.0 <= alpha_start <= 1.0):
            raise ValueError(f"Expected 0 <= alpha_start <= 1, got alpha_start={alpha_start}")
        if not (0.0 < f_alpha <= 1.0):
            raise ValueError(f"Expected 0 < f_alpha <= 1, got f_alpha={f_alpha}")
        defaults = dict(
            mass=float(mass),
            dt_max=float(dt_max),
            n_min=n_min,
            f_inc=float(f_inc),
            f_dec=float(f_dec),
            alpha_start=float(alpha_start),
            f_alpha=float(f_alpha),
            # FIRE's evolving scalars (global to the flattened parameter vector):
            dt=float(dt),
            alpha=float(alpha_start),
            n_since_reset=0,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        r"""Add the (only) parameter group; FIRE accepts exactly one."""
        if len(self.param_groups) > 0:
            raise ValueError(
                "FIRE treats all parameters as one vector and accepts exactly one parameter "
                f"group, got a second one (already have {len(self.param_groups)})"
            )
        super().add_param_group(param_group)

    @property
    def dt(self) -> float:
        r"""The current time step :math:`\Delta t`."""
        return self.param_groups[0]["dt"]

    @property
    def alpha(self) -> float:
        r"""The current mixing parameter :math:`\alpha`."""
        return self.param_groups[0]["alpha"]

    @property
    def n_since_reset(self) -> int:
        r"""The step counter :math:`N` (steps since the last :math:`P \le 0`)."""
        return self.param_groups[0]["n_since_reset"]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        r"""Load a state from :meth:`state_dict`. Velocities are copied, so stepping never
        writes into the tensors of ``state_dict``."""
        super().load_state_dict(state_dict)
        group = self.param_groups[0]
        for key in ("dt", "alpha", "n_since_reset"):
            if key not in group:
                raise ValueError(f"Expected key {key!r} in the FIRE state dict's param group")
        for p in group["params"]:
            state = self.state.get(p)
            if state and "velocity" in state:
                v = state["velocity"]
                if v.shape != p.shape:
                    raise ValueError(
                        f"Expected velocity of shape {tuple(p.shape)}, got {tuple(v.shape)}"
                    )
                state["velocity"] = v.to(dtype=p.dtype, device=p.device).clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        r"""Perform one FIRE step (steps 1-5 above).

        Args:
            closure (callable, optional): re-evaluates the model (zeroing and filling the
                ``.grad``) and returns the loss. (default: :obj:`None`)
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        group = self.param_groups[0]
        m, dt, alpha = group["mass"], group["dt"], group["alpha"]

        xs: list[Tensor] = []  # all parameters (real views)
        vs: list[Tensor] = []  # their velocities (real views)
        gs: list[Tensor] = []  # gradients = -F, of the parameters that have one
        vgs: list[Tensor] = []  # velocities of those parameters
        for p in group["params"]:
            state = self.state[p]
            if "velocity" not in state:
                state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            v = _real(state["velocity"])
            xs.append(_real(p))
            vs.append(v)
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise ValueError("FIRE does not support sparse gradients")
                gs.append(_real(p.grad.resolve_conj()))
                vgs.append(v)
        if not xs:
            return loss

        # 1. x += v dt;  v += F/m dt   (F = -grad)
        torch._foreach_add_(xs, vs, alpha=dt)
        if gs:
            torch._foreach_add_(vgs, gs, alpha=-dt / m)

        # 2. P = F . v, and the norms |v|, |F| for step 3 (one host sync)
        g_flat, v_flat = _flat(gs), _flat(vs)
        vg_flat = _flat(vgs) if len(vgs) < len(vs) else v_flat
        if gs:
            P_neg, v2, f2 = torch.stack(
                [torch.dot(g_flat, vg_flat), torch.dot(v_flat, v_flat), torch.dot(g_flat, g_flat)]
            ).tolist()
        else:
            P_neg, v2, f2 = 0.0, torch.dot(v_flat, v_flat).item(), 0.0
        P = -P_neg
        v_norm, f_norm = math.sqrt(v2), math.sqrt(f2)

        # 3. v = (1 - alpha) v + alpha |v| F/|F|;  N += 1   (F/|F| := 0 if |F| = 0)
        torch._foreach_mul_(vs, 1.0 - alpha)
        if f_norm > 0.0:
            torch._foreach_add_(vgs, gs, alpha=-alpha * v_norm / f_norm)
        group["n_since_reset"] += 1

        # 4. if P > 0 and N > N_min: dt = min(dt f_inc, dt_max); alpha *= f_alpha
        if P > 0.0 and group["n_since_reset"] > group["n_min"]:
            group["dt"] = min(dt * group["f_inc"], group["dt_max"])
            group["alpha"] = alpha * group["f_alpha"]

        # 5. if P <= 0: dt *= f_dec; v = 0; alpha = alpha_start; N = 0
        if P <= 0.0:
            group["dt"] = dt * group["f_dec"]
            torch._foreach_zero_(vs)
            group["alpha"] = group["alpha_start"]
            group["n_since_reset"] = 0

        return loss


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"Expected {name} to be a positive finite number, got {name}={value!r}")
