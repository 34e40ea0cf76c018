"""Every snippet of README.md and docs/*.md runs as written.

The convention, for whoever edits the documentation:

* **```python blocks run.** The blocks of one markdown file run in order, in one namespace,
  in a fresh temporary working directory (so a block may use what an earlier block of the
  same file defined or wrote). Print what you compute, so that the snippet shows something.
* **```bash blocks are checked.** Each command (line continuations joined, ``&&`` chains
  split, comments dropped) must be well formed: a ``uenn-geo ...`` command must parse with
  ``uenn_geo.cli.build_parser()``, ``python examples/X.py ...`` must name a script whose
  ``parse_args`` accepts the options, ``python -m pytest PATH`` must name files that exist;
  ``pip``, ``ruff``, ``cd`` and plain ``python -m pytest`` lines are accepted as they are.
  Long jobs (the paper's experiment, training, benchmarks) are
  only parsed.
* **A ```bash block whose first line is ``# runs in seconds`` is also run**, in the same
  temporary directory as the file's python blocks and in document order (so it may use a
  file written by an earlier python block), each ``uenn-geo`` command as a subprocess with
  a time limit of :data:`COMMAND_TIMEOUT` seconds.
* **A block whose first line is ``# not run: <reason>``** (python or bash) is skipped, and
  the reason must be given. Keep such blocks few.
* Other fences (```text for program output, maths, tables) are not code and are ignored.

The whole file takes under a minute on 2 cores (about 40 s under load).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT = 120.0
RUN_MARKER = "# runs in seconds"
SKIP_MARKER = "# not run:"
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [f for f in files if f.is_file()]


def code_blocks(path: Path) -> list[tuple[str, int, str]]:
    """Fenced blocks of a markdown file: (language, first line number, code)."""
    blocks: list[tuple[str, int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, lang = m["fence"], m["info"].strip().split(" ")[0].lower()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(
                lines[i][len(m["indent"]) :] if lines[i].startswith(m["indent"]) else lines[i]
            )
            i += 1
        i += 1
        blocks.append((lang, start + 1, "\n".join(body) + "\n"))
    return blocks


def first_line(code: str) -> str:
    for line in code.splitlines():
        if line.strip():
            return line.strip()
    return ""


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments dropped, ``&&`` split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";"):
                if command:
                    commands.append(shlex.join(command))
                command = []
            else:
                command.append(word)
    return commands


def strip_env(words: list[str]) -> list[str]:
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    return words


_SCRIPTS: dict[Path, object] = {}


def load_script(path: Path) -> object:
    """The module of an example script (its ``parse_args`` checks the documented options)."""
    if path not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"docs_example_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _SCRIPTS[path] = module
    return _SCRIPTS[path]


def check_command(command: str, where: str) -> list[str] | None:
    """Checks one shell command; returns the argv of a ``uenn-geo`` command, else None."""
    from uenn_geo.cli import build_parser

    words = strip_env(shlex.split(command))
    program = words[0]
    if program == "uenn-geo":
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as err:
            pytest.fail(f"{where}: `{command}` does not parse (exit {err.code})")
        return words[1:]
    if program in ("python", "python3"):
        if words[1:3] == ["-m", "pytest"]:
            for arg in words[3:]:
                if not arg.startswith("-") and "/" in arg:
                    path = arg.split("::")[0]
                    assert (ROOT / path).exists(), f"{where}: `{command}`: no {path}"
            return None
        if words[1:2] == ["-m"]:
            return None
        script = words[1]
        assert (ROOT / script).is_file(), f"{where}: `{command}`: no {script}"
        parse = getattr(load_script(ROOT / script), "parse_args", None)
        if parse is not None:
            try:
                parse(words[2:])
            except SystemExit as err:
                pytest.fail(f"{where}: `{command}` does not parse (exit {err.code})")
        return None
    if program in ("pip", "ruff", "cd", "export", "ls", "cat"):
        return None
    pytest.fail(f"{where}: `{command}`: unknown program {program!r} (see this file's docstring)")


def run_uenn_geo(argv: list[str], cwd: Path, where: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = "import sys; from uenn_geo.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"{where}: `uenn-geo {shlex.join(argv)}` failed ({proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def test_blocks_found():
    """The parser finds the README's snippets (guards against a silent no-op)."""
    langs = [lang for lang, _, _ in code_blocks(ROOT / "README.md")]
    assert langs.count("python") >= 2 and langs.count("bash") >= 2


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_snippets_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    blocks = [b for b in code_blocks(path) if b[0] in ("python", "py", "bash", "sh", "shell")]
    if not blocks:
        pytest.skip("no code blocks")
    for lang, line, code in blocks:
        where = f"{path.relative_to(ROOT)}:{line}"
        head = first_line(code)
        if head.startswith(SKIP_MARKER):
            assert head[len(SKIP_MARKER) :].strip(), f"{where}: `{SKIP_MARKER}` needs a reason"
            continue
        if lang in ("python", "py"):
            try:
                exec(compile(code, where, "exec"), namespace)
            except Exception as err:
                raise AssertionError(f"{where}: the python block raised {err!r}") from err
            continue
        for command in shell_commands(code):
            argv = check_command(command, where)
            if head == RUN_MARKER and argv is not None:
                run_uenn_geo(argv, tmp_path, where)


def test_shell_commands_split():
    code = "pip install torch==2.13.0 && pip install -e . && uenn-geo paper \\\n    --full  # x\n"
    assert shell_commands(code) == [
        "pip install torch==2.13.0",
        "pip install -e .",
        "uenn-geo paper --full",
    ]
