"""Floating-point dtypes by name: the one parser and printer of dtype names."""

from __future__ import annotations

import torch

__all__ = ["resolve_dtype", "dtype_name", "REAL_DTYPES"]

#: The dtypes of the force fields, by name.
REAL_DTYPES = ("float32", "float64")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float64`` -> ``"float64"``."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(
    dtype: str | torch.dtype | None, real: bool = True, default: torch.dtype | None = None
) -> torch.dtype:
    """A torch dtype from a dtype or its name (``"float64"`` and ``"torch.float64"`` alike).

    Args:
        dtype: a :class:`torch.dtype`, its name, or :obj:`None` for ``default`` (or torch's
            default dtype).
        real: require a real floating dtype (the force fields); complex is accepted otherwise.
        default: the dtype of :obj:`None`.

    Raises:
        ValueError: an unknown name, or a dtype of the wrong kind.
    """
    if dtype is None:
        return default if default is not None else torch.get_default_dtype()
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype name {dtype!r}; use e.g. 'float32' or 'float64'")
        dtype = resolved
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"expected a dtype or its name, got {type(dtype).__name__}")
    ok = dtype.is_floating_point or (not real and dtype.is_complex)
    if not ok:
        kind = "a real floating" if real else "a floating or complex"
        raise ValueError(f"expected {kind} dtype, got {dtype_name(dtype)}")
    return dtype
