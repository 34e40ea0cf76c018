"""Every name that an example script reads from :mod:`uenn_geo` exists.

The scripts of ``examples/`` run for minutes to hours, so the test suite does not run them;
``tests/test_docs.py`` checks only that their command lines parse. A refactor that moves or
renames a helper would then break an example silently (it happened: a helper moved to
:mod:`uenn_geo.cli.data_stats` and ``examples/training_step_speed.py`` failed on its first
use). This test reads each script's syntax tree, without running it, and resolves every
``from uenn_geo... import name``, every ``import uenn_geo...`` and every attribute read from
a :mod:`uenn_geo` module bound that way (``tj._load_sets`` after ``from uenn_geo.cli import
train_job as tj``), in any function of the script.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _module(name: str) -> ModuleType | None:
    """The :mod:`uenn_geo` module ``name``, or :obj:`None` where ``name`` is no module."""
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(name)


def unresolved(source: str) -> list[str]:
    """What ``source`` reads from :mod:`uenn_geo` that does not exist, as ``line: name``."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local name -> uenn_geo module it is bound to
    missing: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("uenn_geo"):
            parent = _module(node.module)
            if parent is None:
                missing.append(f"{node.lineno}: module {node.module}")
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if _module(full) is not None:
                    modules[alias.asname or alias.name] = full
                elif not hasattr(parent, alias.name):
                    missing.append(f"{node.lineno}: {full}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("uenn_geo"):
                    continue
                if _module(alias.name) is None:
                    missing.append(f"{node.lineno}: module {alias.name}")
                elif alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            name = modules[node.value.id]
            if not hasattr(importlib.import_module(name), node.attr):
                missing.append(f"{node.lineno}: {name}.{node.attr}")
    return missing


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_reads_only_names_that_exist(path: Path) -> None:
    assert unresolved(path.read_text(encoding="utf-8")) == []


def test_a_moved_helper_is_caught() -> None:
    source = (
        "from uenn_geo.cli import train_job as tj\n"
        "from uenn_geo.models import UENNForceField, NoSuchModel\n"
        "def main():\n"
        "    from uenn_geo.cli import data_stats\n"
        "    return tj._load_sets, tj.no_such_helper, data_stats.no_such_stat\n"
    )
    assert unresolved(source) == [
        "2: uenn_geo.models.NoSuchModel",
        "5: uenn_geo.cli.train_job.no_such_helper",
        "5: uenn_geo.cli.data_stats.no_such_stat",
    ]


def test_every_example_is_found() -> None:
    assert len(EXAMPLES) >= 10 and ROOT / "examples" / "training_step_speed.py" in EXAMPLES
