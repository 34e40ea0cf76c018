r"""Symmetry testing tools, for uenn-geo's own tests and for users' models.

Random group elements (Haar-random unitaries of any :math:`n`, random orthogonal matrices
with or without reflection, random permutations) and assertions that a function commutes
with them, with tolerances per dtype.

Example:
    >>> import torch
    >>> from uenn_geo.nn import EquivariantMLP
    >>> from uenn_geo.testing import assert_equivariant
    >>> mlp = EquivariantMLP([6, 50, 4], dtype=torch.complex128)
    >>> err = assert_equivariant(mlp, torch.randn(8, 5, 6, dtype=torch.complex128))
    >>> err < 1e-12
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from uenn_geo.group import (
    haar_unitary,
    random_group_element,
    random_orthogonal,
    random_permutation,
    random_rotations,
)

__all__ = [
    "TOLERANCES",
    "tolerance",
    "haar_unitary",
    "random_orthogonal",
    "random_group_element",
    "random_permutation",
    "random_rotations",
    "apply_group",
    "relative_error",
    "assert_equivariant",
    "assert_invariant",
    "assert_permutation_equivariant",
]

#: Relative tolerance of equivariance checks per dtype (max abs error / max abs value).
TOLERANCES: dict[torch.dtype, float] = {
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
    torch.float32: 1e-4,
    torch.complex64: 1e-4,
    torch.float64: 1e-10,
    torch.complex128: 1e-10,
}


def tolerance(dtype: torch.dtype) -> float:
    """The relative tolerance for ``dtype`` from :data:`TOLERANCES`."""
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerance known for dtype {dtype}; pass rtol explicitly")
    return TOLERANCES[dtype]


def apply_group(U: Tensor, x: Tensor, axis: int = -2, num_scalars: int = 0) -> Tensor:
    r"""Apply :math:`U` to the component axis ``axis`` of ``x``.

    The first ``n = U.shape[0]`` entries along ``axis`` are rotated; ``num_scalars`` trailing
    entries (scalar features, eq. 15) are left alone, i.e. :math:`U' = \mathrm{diag}(U, I_m)`.
    """
    xm = x.movedim(axis, -1)
    n = U.shape[0]
    if xm.shape[-1] != n + num_scalars:
        raise ValueError(
            f"axis {axis} of the tensor of shape {tuple(x.shape)} has {xm.shape[-1]} entries, "
            f"but U is {n}x{n} with num_scalars={num_scalars}"
        )
    rotated = xm[..., :n] @ U.to(xm.dtype).transpose(0, 1)
    if num_scalars:
        rotated = torch.cat([rotated, xm[..., n:]], dim=-1)
    return rotated.movedim(-1, axis)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|`` (absolute when ``expected`` is zero)."""
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _expand(spec: Any, count: int, name: str) -> list:
    if isinstance(spec, (tuple, list)):
        if len(spec) != count:
            raise ValueError(f"{name} has {len(spec)} entries for {count} tensors")
        return list(spec)
    return [spec] * count


def assert_equivariant(
    fn: Callable[..., Any],
    x: Tensor | Sequence[Tensor],
    U: Tensor | None = None,
    *,
    axis: int | Sequence[int | None] = -2,
    out_axis: int | Sequence[int | None] | None | str = "same",
    num_scalars: int | Sequence[int] = 0,
    out_num_scalars: int | Sequence[int] | None = None,
    rtol: float | None = None,
    generator: torch.Generator | None = None,
) -> float:
    r"""Assert :math:`f(Ux) = U f(x)` for a random (or given) group element :math:`U`.

    ``x`` is one tensor or a sequence of tensors (the positional arguments of ``fn``); the
    output may be a tensor or a tuple. ``axis`` / ``out_axis`` name the component axis of
    each input / output (:obj:`-2` for :obj:`(..., n, M)` features, :obj:`-1` for positions
    :obj:`[N, 3]`; outputs default to the first vector input's axis); :obj:`None` marks an
    invariant tensor, which is passed unchanged and must come out unchanged.
    Without ``U``, a Haar-random unitary is drawn for complex inputs and a random orthogonal
    matrix (possibly a reflection) for real ones.

    Returns:
        The largest relative error found; raises :class:`AssertionError` above ``rtol``
        (default: :data:`TOLERANCES` of the first input's dtype).
    """
    xs = _as_tuple(x)
    axes = _expand(axis, len(xs), "axis")
    scal = _expand(num_scalars, len(xs), "num_scalars")
    ref_i = next((i for i, a in enumerate(axes) if a is not None), None)
    if ref_i is None:
        raise ValueError("at least one input must carry vectors (axis not None)")
    ref = xs[ref_i]
    if U is None:
        n = ref.shape[axes[ref_i]] - scal[ref_i]
        U = random_group_element(n, ref.dtype, generator=generator, device=ref.device)
    rtol = tolerance(ref.dtype) if rtol is None else rtol
    x_rot = tuple(
        t if a is None else apply_group(U, t, a, s) for t, a, s in zip(xs, axes, scal, strict=True)
    )
    out = _as_tuple(fn(*xs))
    out_rot = _as_tuple(fn(*x_rot))
    o_axes = _expand(axes[ref_i] if out_axis == "same" else out_axis, len(out), "out_axis")
    o_scal = _expand(0 if out_num_scalars is None else out_num_scalars, len(out), "num_scalars")
    worst = 0.0
    for k, (y, y_rot, a, s) in enumerate(zip(out, out_rot, o_axes, o_scal, strict=True)):
        expected = y if a is None else apply_group(U, y, a, s)
        err = relative_error(y_rot, expected)
        worst = max(worst, err)
        if not err <= rtol:  # also catches NaN
            kind = "invariant" if a is None else "equivariant"
            raise AssertionError(
                f"output {k} is not {kind}: relative error {err:.3e} > rtol {rtol:.1e} "
                f"(dtype {y.dtype}, group element of size {U.shape[0]})"
            )
    return worst


def assert_invariant(fn: Callable[..., Any], x: Tensor | Sequence[Tensor], **kwargs: Any) -> float:
    """Assert :math:`f(Ux) = f(x)`: :func:`assert_equivariant` with every output invariant."""
    return assert_equivariant(fn, x, out_axis=None, **kwargs)


def assert_permutation_equivariant(
    fn: Callable[..., Any],
    x: Tensor | Sequence[Tensor],
    perm: Tensor | None = None,
    *,
    permute_inputs: bool | Sequence[bool] = True,
    invariant_outputs: bool | Sequence[bool] = False,
    rtol: float | None = None,
    generator: torch.Generator | None = None,
) -> float:
    r"""Assert :math:`f(Px) = P f(x)`: permuting the items (dim 0) permutes the output.

    ``x`` is one tensor or a sequence (the positional arguments of ``fn``); inputs whose
    ``permute_inputs`` entry is :obj:`False` (e.g. an edge list rebuilt inside ``fn``) are
    passed unchanged. Outputs are compared as ``fn(x[perm]) == fn(x)[perm]``, or unchanged
    where ``invariant_outputs`` is :obj:`True`. Without ``perm`` a random permutation is
    drawn; use :func:`random_permutation` with ``batch``/``groups`` to stay within graphs and
    species.

    Returns:
        The largest relative error; raises :class:`AssertionError` above ``rtol``.
    """
    xs = _as_tuple(x)
    flags = _expand(permute_inputs, len(xs), "permute_inputs")
    num = next(t.shape[0] for t, f in zip(xs, flags, strict=True) if f)
    if perm is None:
        perm = random_permutation(num, generator=generator)
    perm = perm.to(xs[0].device)
    x_perm = tuple(t[perm] if f else t for t, f in zip(xs, flags, strict=True))
    out = _as_tuple(fn(*xs))
    out_perm = _as_tuple(fn(*x_perm))
    inv = _expand(invariant_outputs, len(out), "invariant_outputs")
    worst = 0.0
    for k, (y, y_p, is_inv) in enumerate(zip(out, out_perm, inv, strict=True)):
        expected = y if is_inv else y[perm]
        tol = tolerance(y.dtype) if rtol is None else rtol
        err = relative_error(y_p, expected)
        worst = max(worst, err)
        if not err <= tol:
            raise AssertionError(
                f"output {k} does not follow the permutation: relative error {err:.3e} > "
                f"rtol {tol:.1e}"
            )
    return worst
