"""``uenn-geo train --committee N``: N models trained side by side, and their committee.

Each member is an ordinary ``uenn-geo train`` run in its own process (``OUT/member<i>``, its
output in ``OUT/member<i>/train.log``) with seed ``seed + i``; all share the split of
``--split-seed`` (default ``--seed``), so that they hold out the same structures. On a CPU a
member takes one thread by default and as many run at once as there are cores: for a small
molecule a second thread does not make a run faster, a second core trains a second model in
the same time (docs/training.md, "A committee"). The committee
(:class:`~uenn_geo.models.committee.Committee`, the mean of the members' predictions) is then
evaluated on the validation and test structures; its tables, each member's and the settings
go to ``OUT/metrics.json`` and ``OUT/config.yaml``. Every tool takes the folder as one model
(:func:`~uenn_geo.models.committee.model_files`).

A member that fails stops the others; running the command again resumes each member from its
checkpoint (as ``uenn-geo train`` does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from uenn_geo.cli.train_job import _dump_yaml, _load_sets
from uenn_geo.cli.train_settings import TrainJob
from uenn_geo.files import RunLock, atomic_write, check_output_dir, sweep_temporaries, write_json

__all__ = ["run_committee", "member_jobs"]

#: Seconds a member has to stop after an interrupt before it is killed.
STOP_GRACE_SECONDS = 30.0


def member_jobs(job: TrainJob) -> list[TrainJob]:
    """The runs of ``job``'s committee: seeds ``seed + i``, one split, ``out/member<i>``."""
    split = job.resolved_split_seed
    return [
        replace(
            job,
            committee=1,
            seed=job.seed + i,
            split_seed=split,
            out=str(Path(job.out) / f"member{i}"),
            progress=False,
        )
        for i in range(job.committee)
    ]


def run_committee(job: TrainJob, threads: int | None = None) -> dict[str, Any]:
    """Train ``job.committee`` members side by side (``threads`` torch threads each, default
    1; as many at once as the CPUs allow), then evaluate their committee.

    Returns:
        The metrics (also in ``out/metrics.json``): the committee's error tables under
        ``"errors"``, each member's under ``"member_errors"``, the member folders under
        ``"members"``.

    Raises:
        ValueError: under ``torchrun`` (a committee starts its own processes), or bad input.
        ChildProcessError: a member failed (the end of its log in the message).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "--committee starts one process per member; run it without torchrun (or train "
            "the members under torchrun one by one and join them with --model A B ...)"
        )
    threads = 1 if threads is None else threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    out = check_output_dir(job.out)
    members = member_jobs(job)
    at_once = max(1, min(len(members), _cpus() // threads))
    with RunLock(out, "train"):
        sweep_temporaries(out)
        sets = _load_sets(members[0])  # the inputs checked, a cache filled once, here
        atomic_write(out / "config.yaml", lambda f: _dump_yaml(job.as_dict(), f), mode="w")
        print(
            f"training {len(members)} members, {at_once} at a time, {threads} thread(s) each: "
            f"{', '.join(m.out for m in members)} (output in member<i>/train.log)",
            flush=True,
        )
        _run_members(members, threads, at_once)
        return _evaluate(members, sets, out)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_members(members: list[TrainJob], threads: int, at_once: int) -> None:
    """Run every member, ``at_once`` at a time; when one fails, or this process is
    interrupted or terminated, stop the others (an interrupt, then a kill after
    :data:`STOP_GRACE_SECONDS`)."""
    waiting = list(enumerate(members))
    running: dict[int, tuple[subprocess.Popen, Path, float]] = {}

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the members are stopped below, not orphaned

    old = signal.signal(signal.SIGTERM, terminated)
    try:
        while waiting or running:
            while waiting and len(running) < at_once:
                i, member = waiting.pop(0)
                running[i] = _start(member, threads)
            time.sleep(1.0)
            for i, (proc, log, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[i]
                if proc.returncode != 0:
                    tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
                    raise ChildProcessError(
                        f"committee member {i} failed (exit status {proc.returncode}); the "
                        f"end of {log}:\n{tail}"
                    )
                print(f"member {i} done in {time.monotonic() - start:.0f} s", flush=True)
    finally:
        signal.signal(signal.SIGTERM, old)
        _stop([proc for proc, _, _ in running.values()])


def _stop(procs: list[subprocess.Popen]) -> None:
    """Interrupt the members (each saves and exits as after Ctrl-C), then kill stragglers."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start(member: TrainJob, threads: int) -> tuple[subprocess.Popen, Path, float]:
    """``uenn-geo train --config member<i>/member.yaml`` in a new process, importing the
    uenn_geo that this process runs (not one that the working directory may hold)."""
    folder = Path(member.out)
    folder.mkdir(parents=True, exist_ok=True)
    options = folder / "member.yaml"
    atomic_write(options, lambda f: _dump_yaml(member.as_dict(), f), mode="w")
    log = folder / "train.log"
    root = str(Path(__file__).resolve().parents[2])
    program = (
        f"import sys; sys.path.insert(0, {root!r}); from uenn_geo.cli import main; "
        "sys.argv[0] = 'uenn-geo'; sys.exit(main())"
    )
    command = [sys.executable, "-c", program, "train", "--config", str(options)]
    command += ["--threads", str(threads)]
    with open(log, "a") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
    return proc, log, time.monotonic()


def _evaluate(members: list[TrainJob], sets: Any, out: Path) -> dict[str, Any]:
    """The committee's tables on the members' (shared) validation set and the test sets,
    as ``uenn-geo train`` makes a model's."""
    from uenn_geo.data.transforms import CastFloats
    from uenn_geo.models import load_committee
    from uenn_geo.train import distributed
    from uenn_geo.train.metrics import format_table

    device = members[0].device or "cpu"  # where the members trained ("cuda": the first GPU)
    model = load_committee([Path(m.out) / "model.pt" for m in members], map_location=device)
    tables = {}
    for name, data in {"validation": sets.val, **sets.tests}.items():
        data.transform = CastFloats(model.dtype)
        tables[name] = distributed.error_table(model, data, 64)
    each = {}
    for m in members:
        with open(Path(m.out) / "metrics.json") as f:
            each[Path(m.out).name] = json.load(f)["errors"]
    metrics = {
        "committee": len(members),
        "members": [m.out for m in members],
        "structures": {"train": len(sets.train), "val": len(sets.val)}
        | {name: len(d) for name, d in sets.tests.items()},
        "errors": tables,
        "member_errors": each,
        "units": "meV/atom, meV per structure, meV/A, meV/A^3",
    }
    write_json(out / "metrics.json", metrics)
    metrics["table"] = format_table(tables)
    return metrics
