"""Running a package's CLI under ``torchrun`` from tests: several processes on this CPU (gloo).

``torchrun --nproc_per_node 2 -m PACKAGE ...`` gives accelerate ``MULTI_CPU`` with real DistributedDataParallel
(``accelerate launch --cpu --num_processes 2`` stays one process on a CPU-only machine). Each process gets one
thread (two processes share the two cores of the CI machine).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"


def torchrun(
    package: str, args: list[str], nproc: int = 2, kill_after: int | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node NPROC -m PACKAGE ARGS`` from the repo root; ``kill_after``: every process
    SIGKILLs itself right after that step's checkpoint (``AUTEUR_KILL_AFTER_STEP``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("AUTEUR_KILL_AFTER_STEP", None)
    if kill_after is not None:
        env["AUTEUR_KILL_AFTER_STEP"] = str(kill_after)
    # --standalone: a c10d rendezvous on a port torchrun picks itself (no race with other runs for a chosen port)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), "-m", package, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    """Assert a torchrun exited 0, showing the end of its output when not."""
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])


def log_rows(run: Path, split: str = "train") -> list[dict[str, str]]:
    """The rows of ``RUN/log.csv`` for ``split``."""
    with (run / "log.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def trace(run: Path, rank: int) -> list[dict]:
    """The sample trace (``train.trace_samples=true``) of process ``rank``."""
    return [json.loads(line) for line in (run / "trace" / f"rank-{rank}.jsonl").read_text().splitlines()]


def check_sharding(run: Path, single: Path, world: int = 2) -> None:
    """Each process of ``run`` trained a distinct slice of every global batch, and together they trained what the
    single-process run ``single`` trained at that step (the same global batches)."""
    per_rank = [trace(run, r) for r in range(world)]
    alone = trace(single, 0)
    assert all(len(t) == len(alone) for t in per_rank)
    for i, whole in enumerate(alone):
        slices = [t[i] for t in per_rank]
        assert all(s["step"] == whole["step"] and s["micro"] == whole["micro"] for s in slices)
        positions = [p for s in slices for p in s["positions"]]
        assert sorted(positions) == list(range(len(whole["indices"]))), "every position of the batch exactly once"
        assert all(set(a["positions"]).isdisjoint(b["positions"]) for a in slices for b in slices if a is not b)
        got = {p: i for s in slices for p, i in zip(s["positions"], s["indices"])}
        assert [got[p] for p in range(len(whole["indices"]))] == whole["indices"]
