"""Pieces every training recipe shares (``director``, ``anchors``, ``renderer``, ``videogen`` ``train``).

A run folder ``RUN`` holds ``config.yaml``, ``log.csv`` and ``checkpoints/step-NNNNNN`` folders; a checkpoint
folder is complete once its marker file (``state.json``, holding the step) is in it, and every checkpoint is
written under a temporary name and renamed (:func:`auteur.io.atomic_dir`), so a kill leaves the previous
checkpoints intact. The global RNG states are saved beside the weights so that a resumed run draws what an
uninterrupted one would (each package's bit-identical resume test depends on it). A saved LoRA state loads only
when every key fits the model (:func:`load_lora_state`), and a run folder that a failed start made is removed
again while it is empty (:func:`run_dir`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auteur.io import atomic_path, clean_stale_temporaries, ensure_writable_dir

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"


class SimulatedKill(RuntimeError):
    """Raised by ``train(..., stop_after=N)`` right after step N's checkpoint: a kill, for tests."""


def rng_state(cuda: bool = False) -> dict[str, Any]:
    """The global RNG states: ``torch`` (CPU), ``python`` and ``numpy``; with ``cuda``, also every CUDA
    device's state under ``cuda`` (only when CUDA is available)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (the CUDA states too when saved and CUDA is available)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_run_dir(out: str | Path) -> Path:
    """The run folder ``out`` (created, checked writable), cleared of temporaries a killed run left behind."""
    run = ensure_writable_dir(out)
    clean_stale_temporaries(run)
    clean_stale_temporaries(run / "checkpoints")
    return run


@contextlib.contextmanager
def run_dir(out: str | Path) -> Iterator[Path]:
    """:func:`prepare_run_dir` around the body of a training run: when the body raises, the folders this call
    created (``out`` and any missing parents) are removed again while they are still empty, so bad input that
    shows only once the data or the model loads leaves no empty run folder behind. A folder that holds anything
    (a checkpoint, a log) is kept, and so is one that existed before."""
    path = Path(out).absolute()
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    run = prepare_run_dir(out)
    try:
        yield run
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()  # only succeeds on an empty folder
            except OSError:
                break
        raise


def checkpoint_dir(run: Path, step: int) -> Path:
    """``RUN/checkpoints/step-NNNNNN``: zero-padded, so name order is step order."""
    return run / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(run: Path, marker: str = STATE_FILE) -> Path | None:
    """The newest complete ``RUN/checkpoints/step-*`` folder (one holding ``marker``), or None."""
    ckpts = sorted((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
    ckpts = [c for c in ckpts if (c / marker).is_file()]
    return ckpts[-1] if ckpts else None


def resume_checkpoint(run: Path, resume: str, error: type[Exception]) -> Path | None:
    """The checkpoint to resume from: the newest one with ``resume="auto"``, None otherwise; with
    ``resume="never"`` a run folder that already holds checkpoints raises ``error``."""
    if resume == "auto":
        return latest_checkpoint(run)
    if resume == "never" and latest_checkpoint(run) is not None:
        raise error(f"{run} already holds checkpoints; use resume=auto or another out=")
    return None


def write_train_state(
    folder: Path,
    step: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    rng: dict[str, Any] | None = None,
) -> None:
    """Write the optimizer (and scheduler, RNG states when given) and ``state.json`` (the step) into ``folder``,
    a temporary checkpoint folder: ``state.json`` marks the checkpoint complete."""
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    if scheduler is not None:
        torch.save(scheduler.state_dict(), folder / SCHEDULER_FILE)
    if rng is not None:
        torch.save(rng, folder / RNG_FILE)
    (folder / STATE_FILE).write_text(json.dumps({"step": step}) + "\n")


def read_step(ckpt: Path) -> int:
    """The step a checkpoint folder was written at (its ``state.json``)."""
    return json.loads((ckpt / STATE_FILE).read_text())["step"]


def prune_checkpoints(run: Path, keep: int = 2) -> None:
    """Delete all but the newest ``keep`` checkpoint folders of ``run``."""
    for old in sorted((run / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of an epoch: a ``torch.randperm`` of ``n`` fixed by ``(seed, epoch)``, so a resumed run
    replays it (anchors, videogen). ``director.data.epoch_order`` is another order (a Python ``random``
    shuffle), kept as it is: existing director runs resume on it."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def start_csv_log(path: Path, fields: list[str]) -> None:
    """Write the header of the CSV log ``path`` unless it exists (a resumed run appends to its log)."""
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(",".join(fields) + "\n")


def append_csv_row(path: Path, values: list[Any]) -> None:
    """Append one row to the CSV log ``path``."""
    with path.open("a", newline="") as f:
        csv.writer(f).writerow(values)


def check_run_request(data: list[str], out: str, error: type[Exception]) -> None:
    """Raise ``error`` (the package's AuteurError) unless ``data`` names existing CookGen folders and ``out`` is
    given: checked before anything is written."""
    if not data:
        raise error("no training data: give data=COOKGEN_DIR (a folder that `cookgen build` wrote)")
    if not out:
        raise error("no run folder: give out=RUN_DIR")
    for d in data:
        if not Path(d).is_dir():
            raise error(f"training data folder not found: {d}")


def model_folder_gaps(root: Path, parts: tuple[str, ...], weighted: tuple[str, ...]) -> list[str]:
    """What a local diffusers model folder lacks (an incomplete download), named for a one-line error: each
    subfolder of ``parts`` that is missing or empty (``"vae/"``), and ``"weights in X/"`` for each of ``weighted``
    that holds no ``.safetensors`` / ``.bin`` file. Checked before the libraries load it and log errors of their
    own."""
    gaps = [f"{p}/" for p in parts if not (root / p).is_dir() or not any((root / p).iterdir())]
    return gaps + [
        f"weights in {p}/"
        for p in weighted
        if f"{p}/" not in gaps and not any(f.suffix in (".safetensors", ".bin") for f in (root / p).iterdir())
    ]


def load_lora_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], where: str | Path, error: type[Exception]
) -> int:
    """Load a saved LoRA state (peft's adapter-name-free keys) into ``model``; returns the tensors loaded.

    Every LoRA tensor of the model must be set and every saved key used, else ``error`` (the package's
    AuteurError) is raised naming ``where``: a prefix or adapter-name mismatch would otherwise load nothing
    silently (``set_peft_model_state_dict`` only reports, never raises).
    """
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    missing = [k for k in getattr(result, "missing_keys", None) or [] if "lora_" in k]
    if unexpected or missing:
        first = (unexpected or missing)[0]
        raise error(
            f"checkpoint {where}: LoRA keys do not fit the model ({len(unexpected)} unexpected, "
            f"{len(missing)} missing, e.g. {first})"
        )
    log.debug("loaded %d LoRA tensors from %s", len(state), where)
    return len(state)


def due(step: int, every: int, max_steps: int) -> bool:
    """Whether a periodic action (log, validate, save) runs after ``step``: every ``every`` steps and at the end."""
    return step % every == 0 or step == max_steps


def save_or_stop(
    step: int, save_every: int, max_steps: int, save: Callable[[int], None], stop_after: int | None, bar: Any
) -> None:
    """The end of a training step: ``save(step)`` when due, then, for tests, a simulated kill (the progress
    ``bar`` closed, :class:`SimulatedKill` raised) once ``stop_after`` steps are done."""
    if due(step, save_every, max_steps):
        save(step)
    if stop_after is not None and step >= stop_after:
        bar.close()
        raise SimulatedKill(f"stopped after step {step}")
