r"""Learning the discrete Manakov flow map with a complex :math:`U(n)`-equivariant network.

The lattice (see :mod:`uenn_geo.data.manakov`) has :math:`L` sites on a ring, each holding
:math:`\psi_j \in \mathbb{C}^n`; its flow map commutes with any :math:`U \in U(n)` acting at
every site. Three models, trained on the same pairs :math:`(\psi(t), \psi(t + dt))` with
the same optimiser, batch, number of steps and (roughly) the same number of real
parameters, predict :math:`\psi(t + dt)`:

- ``unitary``: the paper's :class:`~uenn_geo.nn.EquivariantMLP` with **complex** weights,
  the :math:`L` sites being its :math:`M` vector channels; :math:`U(n)`-equivariant.
- ``orthogonal``: the same network with **real** weights on :math:`\mathbb{R}^{2n}`
  (real and imaginary parts stacked, input ``(batch, 2n, L)``); :math:`O(2n)`-equivariant.
- ``mlp``: a plain MLP on the flattened real and imaginary parts; no symmetry.

The two equivariant models are applied site by site (channel :math:`k` of the network for
site :math:`j` is site :math:`j + k`, weights shared over :math:`j`), which also makes them
commute with translations of the ring, another symmetry of the lattice. All three models are
residual, :math:`\hat\psi(t+dt) = \psi + dt\, f(\psi)`, start from the identity map (zero
last layer), train in single precision and are evaluated in double precision.

Run (about 4.5 minutes of CPU time with one thread; see ``docs/manakov.md``)::

    python examples/manakov_unitary.py --out runs/manakov

It prints a table (one-step relative error, error after 100 rollout steps, drift of the total
norm, one-step error on states rotated by Haar-random unitaries) for n = 2, 3, 8, then the
time-reversal lower bound that no :math:`O(2n)`-equivariant model can beat, and saves
``results.json``, ``manakov_rollout.png`` and ``manakov_errors.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from uenn_geo.data.manakov import (
    manakov_norm,
    manakov_pairs,
    manakov_step,
    manakov_trajectory,
)
from uenn_geo.files import atomic_write
from uenn_geo.nn import EquivariantMLP
from uenn_geo.testing import haar_unitary


@dataclass(frozen=True)
class Config:
    ns: tuple[int, ...] = (2, 3, 8)
    models: tuple[str, ...] = ("unitary", "orthogonal", "mlp")
    L: int = 8
    dt: float = 0.05
    g: float = 1.0
    amplitude: float = 1.0
    minor_scale: float = 0.3  # scale of components 2..n relative to component 1 (polarised)
    burn_in: float = 1.0
    train_trajectories: int = 256
    train_steps: int = 16
    test_trajectories: int = 64
    test_steps: int = 8
    rollout_trajectories: int = 16
    rollout_steps: int = 100
    hidden: int = 32  # hidden channels of the complex network; the others match its size
    iterations: int = 10000
    batch_size: int = 16
    lr: float = 5e-3
    precision: str = "single"  # training precision; evaluation is always in double
    seed: int = 0
    threads: int = 1
    out: str = "runs/manakov"


# --------------------------------------------------------------------------------------
# Models: each maps a complex state (B, n, L) to the predicted next state (B, n, L).
# --------------------------------------------------------------------------------------


def ring_stencil(z: Tensor) -> Tensor:
    r"""All cyclic shifts of the sites: ``out[b, j, :, k] = z[b, :, (j + k) % L]``.

    Shapes:
        :math:`(B, c, L) \to (B, L, c, L)`
    """
    L = z.shape[-1]
    idx = (torch.arange(L, device=z.device)[:, None] + torch.arange(L, device=z.device)) % L
    return z[..., idx].movedim(-2, 1)


class SiteEquivariantFlow(nn.Module):
    r"""Residual flow map from an :class:`EquivariantMLP` applied site by site.

    .. math::
        \hat\psi_j = \psi_j + dt \left( \sum_k a_k \psi_{j+k}
        + \mathrm{MLP}([\psi_{j}, \psi_{j+1}, \dots, \psi_{j+L-1}]) \right)

    The :math:`L` sites, cyclically shifted to start at :math:`j`, are the :math:`M = L`
    vector channels of the MLP, which outputs one vector (the update of site :math:`j`).
    With a complex ``dtype`` the map is :math:`U(n)`-equivariant; with a real ``dtype`` it acts
    on :math:`\mathbb{R}^{2n}` (real and imaginary parts stacked) and is
    :math:`O(2n)`-equivariant. Either way it commutes with translations of the ring.

    Shapes:
        :math:`(B, n, L) \to (B, n, L)` (complex)
    """

    def __init__(self, L: int, hidden: int, dt: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.dt = dt
        self.mlp = EquivariantMLP([L, hidden, hidden, 1], dtype=dtype)
        nn.init.zeros_(self.mlp.layers[-1].weight)  # start from the linear stencil alone
        self.stencil = nn.Parameter(torch.zeros(L, dtype=dtype))

    def forward(self, psi: Tensor) -> Tensor:
        real = not self.stencil.is_complex()
        z = torch.cat([psi.real, psi.imag], dim=-2) if real else psi
        s = ring_stencil(z)  # (B, L, c, L)
        update = (self.mlp(s)[..., 0] + s @ self.stencil).movedim(1, -1)  # (B, c, L)
        if real:
            n = psi.shape[-2]
            update = torch.complex(update[..., :n, :], update[..., n:, :])
        return psi + self.dt * update


class PlainFlow(nn.Module):
    r"""Residual plain MLP on the flattened real and imaginary parts (no symmetry).

    .. math::
        \hat\psi = \psi + dt\, \mathrm{MLP}([\mathrm{Re}\,\psi, \mathrm{Im}\,\psi])

    Shapes:
        :math:`(B, n, L) \to (B, n, L)` (complex)
    """

    def __init__(self, n: int, L: int, hidden: int, dt: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.dt = dt
        d = 2 * n * L
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden, dtype=dtype),
            nn.SiLU(),
            nn.Linear(hidden, hidden, dtype=dtype),
            nn.SiLU(),
            nn.Linear(hidden, d, dtype=dtype),
        )
        nn.init.zeros_(self.mlp[-1].weight)  # start from the identity map, as the others
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, psi: Tensor) -> Tensor:
        z = torch.view_as_real(psi.resolve_conj()).flatten(1)
        update = self.mlp(z).view(*psi.shape, 2)
        return psi + self.dt * torch.view_as_complex(update)


def num_real_parameters(model: nn.Module) -> int:
    """Number of real parameters (a complex one counts twice)."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())


def _matched(build: Callable[[int], nn.Module], target: int) -> nn.Module:
    # The hidden width whose parameter count is closest to the target (bisection: the count
    # grows with the width).
    def count(h: int) -> int:
        return num_real_parameters(build(h))

    lo, hi = 1, 2
    while count(hi) < target:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return build(min((lo, hi), key=lambda h: abs(count(h) - target)))


def build_unitary(n: int, cfg: Config) -> nn.Module:
    return SiteEquivariantFlow(cfg.L, cfg.hidden, cfg.dt, torch.complex128)


def build_orthogonal(n: int, cfg: Config) -> nn.Module:
    target = num_real_parameters(build_unitary(n, cfg))
    return _matched(lambda h: SiteEquivariantFlow(cfg.L, h, cfg.dt, torch.float64), target)


def build_mlp(n: int, cfg: Config) -> nn.Module:
    target = num_real_parameters(build_unitary(n, cfg))
    return _matched(lambda h: PlainFlow(n, cfg.L, h, cfg.dt, torch.float64), target)


MODELS: dict[str, Callable[[int, Config], nn.Module]] = {
    "unitary": build_unitary,
    "orthogonal": build_orthogonal,
    "mlp": build_mlp,
}


# --------------------------------------------------------------------------------------
# Data, training, evaluation
# --------------------------------------------------------------------------------------


def make_data(n: int, cfg: Config) -> dict[str, Tensor]:
    """Train/test pairs and exact test trajectories, all from the same polarised ensemble."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + n)
    common = dict(
        n=n,
        L=cfg.L,
        dt=cfg.dt,
        g=cfg.g,
        amplitude=cfg.amplitude,
        component_scales=[1.0] + [cfg.minor_scale] * (n - 1),
        burn_in=cfg.burn_in,
        generator=gen,
    )
    x, y = manakov_pairs(cfg.train_trajectories, cfg.train_steps, **common)
    xt, yt = manakov_pairs(cfg.test_trajectories, cfg.test_steps, **common)
    psi0, _ = manakov_pairs(cfg.rollout_trajectories, 1, **common)
    traj = manakov_trajectory(psi0, cfg.dt, cfg.rollout_steps, g=cfg.g)
    # one Haar-random unitary per test pair, acting on every site
    U = torch.stack([haar_unitary(n, generator=gen) for _ in range(len(xt))])
    # backward step: complex conjugation reverses time, Phi_dt(conj x) = conj Phi_-dt(x)
    y_back = manakov_step(xt, -cfg.dt, g=cfg.g)
    return {"x": x, "y": y, "x_test": xt, "y_test": yt, "y_back": y_back, "traj": traj, "U": U}


def time_reversal_bound(data: dict[str, Tensor]) -> float:
    r"""Lower bound on the one-step error of any :math:`O(2n)`-equivariant model.

    Complex conjugation :math:`C` is a reflection of :math:`\mathbb{R}^{2n}`, so an
    :math:`O(2n)`-equivariant :math:`f` obeys :math:`f(C\psi) = C f(\psi)`, while the flow
    obeys :math:`\Phi_{dt}(C\psi) = C \Phi_{-dt}(\psi)`. On the test set together with its
    conjugate, the triangle inequality gives a mean relative error of at least
    :math:`\tfrac12 \langle \|\Phi_{dt}\psi - \Phi_{-dt}\psi\| / \|\psi\| \rangle`.
    """
    return 0.5 * relative_error(data["y_back"], data["y_test"]).mean().item()


def relative_error(pred: Tensor, target: Tensor) -> Tensor:
    r""":math:`\|\hat\psi - \psi\| / \|\psi\|` per state (norm over sites and components)."""
    return (pred - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1)


SINGLE = {torch.complex128: torch.complex64, torch.float64: torch.float32}
DOUBLE = {torch.complex64: torch.complex128, torch.float32: torch.float64}


def cast_(model: nn.Module, table: dict[torch.dtype, torch.dtype]) -> nn.Module:
    """Cast every parameter in place (complex stays complex, real stays real)."""
    for p in model.parameters():
        p.data = p.data.to(table.get(p.dtype, p.dtype))
    return model


def train(model: nn.Module, x: Tensor, y: Tensor, cfg: Config) -> list[float]:
    """Adam with cosine decay on the mean squared error, normalised by that of the identity.

    With ``cfg.precision == "single"`` the model and data are cast to complex64/float32 for
    training (about twice as fast on CPU) and the model is cast back to double afterwards.
    """
    if cfg.precision not in ("single", "double"):
        raise ValueError(f"precision must be 'single' or 'double', got {cfg.precision!r}")
    if cfg.precision == "single":
        cast_(model, SINGLE)
        x, y = x.to(torch.complex64), y.to(torch.complex64)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations)
    scale = (y - x).abs().square().mean()
    history = []
    for _ in range(cfg.iterations):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
        loss = (model(x[idx]) - y[idx]).abs().square().mean() / scale
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
    cast_(model, DOUBLE)
    return history


@torch.no_grad()
def evaluate(model: Callable[[Tensor], Tensor], data: dict[str, Tensor]) -> dict:
    xt, yt, U, traj = data["x_test"], data["y_test"], data["U"], data["traj"]
    one_step = relative_error(model(xt), yt)
    rotated = relative_error(model(U @ xt), U @ yt)
    conjugated = relative_error(model(xt.conj().resolve_conj()), data["y_back"].conj())
    psi, errors, drift = traj[0], [], []
    norm0 = manakov_norm(traj[0])
    for k in range(1, len(traj)):
        psi = model(psi)
        errors.append(relative_error(psi, traj[k]).mean().item())
        drift.append(((manakov_norm(psi) - norm0).abs() / norm0).mean().item())
    return {
        "one_step": one_step.mean().item(),
        "rotated": rotated.mean().item(),
        "rotated_minus_one_step_max": (rotated - one_step).abs().max().item(),
        # mean over the test set and its complex conjugate (time-reversed) copy
        "symmetrised": 0.5 * (one_step.mean() + conjugated.mean()).item(),
        "rollout": errors[-1],
        "norm_drift": drift[-1],
        "rollout_curve": errors,
        "drift_curve": drift,
    }


def run(cfg: Config) -> dict:
    """Train and evaluate every model for every n; returns the results as a dict."""
    torch.set_num_threads(cfg.threads)
    results = {"config": dataclasses.asdict(cfg), "runs": {}, "time_reversal_bound": {}}
    for n in cfg.ns:
        data = make_data(n, cfg)
        results["time_reversal_bound"][str(n)] = time_reversal_bound(data)
        res = {"identity": evaluate(lambda p: p, data)}
        res["identity"].update(params=0, train_time=0.0)
        for name in cfg.models:
            torch.manual_seed(cfg.seed)
            model = MODELS[name](n, cfg)
            start = time.perf_counter()
            history = train(model, data["x"], data["y"], cfg)
            elapsed = time.perf_counter() - start
            res[name] = evaluate(model, data)
            chunk = max(1, len(history) // 100)  # store 100 block means of the loss
            blocks = [history[i : i + chunk] for i in range(0, len(history), chunk)]
            curve = [sum(b) / len(b) for b in blocks]
            res[name].update(
                params=num_real_parameters(model), train_time=elapsed, loss_curve=curve
            )
            print(f"  n={n} {name:<10s} trained in {elapsed:5.1f} s", flush=True)
        results["runs"][str(n)] = res
    return results


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def format_table(results: dict) -> str:
    steps = f"{results['config']['rollout_steps']} steps"
    head = (
        f"| {'n':>2} | {'model':<10} | {'params':>6} | {'one-step':>8} | {'rotated':>8} "
        f"| {'max diff':>9} | {steps:>9} | {'norm drift':>10} | {'train s':>7} |"
    )
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for n, res in results["runs"].items():
        for name, r in res.items():
            lines.append(
                f"| {n:>2} | {name:<10} | {r['params']:>6d} | {r['one_step']:8.2e} "
                f"| {r['rotated']:8.2e} | {r['rotated_minus_one_step_max']:9.1e} "
                f"| {r['rollout']:9.2e} | {r['norm_drift']:10.2e} | {r['train_time']:7.1f} |"
            )
    lines.append("")
    for n, bound in results["time_reversal_bound"].items():
        line = f"n={n}: any O(2n)-equivariant model has error >= {bound:.2e} on test + conj(test)"
        if "orthogonal" in results["runs"][n]:
            line += f"; orthogonal there: {results['runs'][n]['orthogonal']['symmetrised']:.2e}"
        lines.append(line)
    return "\n".join(lines)


def save(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1)
    atomic_write(out / "results.json", lambda f: f.write(text), mode="w")

    runs = results["runs"]
    color = {"identity": "k", "unitary": "C0", "orthogonal": "C1", "mlp": "C2"}
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.5), squeeze=False)
    for col, (n, res) in enumerate(runs.items()):
        for name, r in res.items():
            steps = range(1, len(r["rollout_curve"]) + 1)
            style = dict(color=color.get(name), ls=":" if name == "identity" else "-")
            axes[0, col].semilogy(steps, r["rollout_curve"], label=name, **style)
            if name != "identity":  # the identity conserves the norm exactly
                axes[1, col].semilogy(steps, r["drift_curve"], **style)
        axes[0, col].set_title(f"n = {n}")
        axes[1, col].set_xlabel(f"rollout step (dt = {results['config']['dt']:g})")
    axes[0, 0].set_ylabel("relative error vs exact")
    axes[1, 0].set_ylabel("relative drift of total norm")
    axes[0, 0].legend()
    fig.tight_layout()
    atomic_write(out / "manakov_rollout.png", lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)

    names = [m for m in next(iter(runs.values())) if m != "identity"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / (2 * len(names))
    for k, res in enumerate(runs.values()):
        for i, name in enumerate(names):
            for j, key in enumerate(("one_step", "rotated")):
                label = f"{name}, {'rotated' if j else 'test'}" if k == 0 else None
                hatch = "//" if j else None
                pos = k + (2 * i + j + 0.5) * width - 0.4
                ax.bar(pos, res[name][key], width, label=label, hatch=hatch, color=color[name])
        label = "identity map" if k == 0 else None
        ax.hlines(res["identity"]["one_step"], k - 0.45, k + 0.45, "k", ":", label=label)
    ax.set_xticks(range(len(runs)), [f"n = {n}" for n in runs])
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1.0)
    ax.set_ylabel("one-step relative error")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    atomic_write(out / "manakov_errors.png", lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ns", type=int, nargs="+", default=list(d.ns))
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(d.models))
    for f in dataclasses.fields(Config):
        if f.name not in ("ns", "models"):
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    a = vars(p.parse_args(argv))
    a["ns"], a["models"] = tuple(a["ns"]), tuple(a["models"])
    return Config(**a)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    results = run(cfg)
    print(format_table(results))
    save(results, Path(cfg.out))
    print(f"saved results.json, manakov_rollout.png, manakov_errors.png to {cfg.out}")


if __name__ == "__main__":
    main()
