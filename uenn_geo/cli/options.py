"""Command-line options from dataclasses: one place for every default, and config files.

A command's settings are a dataclass; its parser reads every default from the dataclass, and
``--config FILE.yaml`` may hold any of the options (by their long names, with ``-`` or ``_``).
Values combine in this order: the dataclass defaults, then the file, then the options given
on the command line.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, fields
from typing import Any

__all__ = ["defaults_of", "read_config_file", "given_options", "resolve"]


def defaults_of(cls: type) -> dict[str, Any]:
    """The default of every field of the dataclass ``cls`` that has one."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def read_config_file(path: str | os.PathLike, cls: type) -> dict[str, Any]:
    """The settings in a YAML (or JSON) file, keyed by the fields of ``cls``.

    Raises:
        ValueError: the file is not a mapping, or holds keys that are not options, named
            with the list of known ones.
    """
    import yaml

    try:
        with open(path) as f:
            content = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config: no such file {os.fspath(path)!r}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"--config {os.fspath(path)}: not valid YAML: {err}") from err
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(f"--config {os.fspath(path)}: expected a mapping of options")
    known = {f.name for f in fields(cls)}
    values = {str(k).replace("-", "_"): v for k, v in content.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"--config {os.fspath(path)}: unknown option(s) {unknown}; known: {sorted(known)}"
        )
    return values


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options given on the command line (parsers built with ``SUPPRESS`` defaults)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def resolve(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass of ``args``: defaults, then ``--config``, then the given options."""
    values: dict[str, Any] = {}
    config = getattr(args, "config", None)
    if config is not None:
        values.update(read_config_file(config, cls))
    values.update(given_options(args, cls))
    return cls(**values)
