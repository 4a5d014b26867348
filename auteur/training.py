"""The training skeleton the four trainers share (``director``, ``renderer``, ``videogen``, ``anchors`` ``train``).

A package supplies a :class:`TrainTask` (its model, its data, its loss and its checkpoint files); :func:`fit` runs
the loop the same way for all of them, in one process or several (``torchrun --nproc_per_node N -m PACKAGE
train ...`` or ``accelerate launch``):

- **processes**: accelerate sets up the process group and the device; ``train.strategy=ddp`` (the default) wraps
  the task's module in DistributedDataParallel, ``fsdp`` shards it with PyTorch FSDP2 (``fully_shard`` on the
  task's wrap units, then on the module), which runs on GPUs (NCCL) and on CPUs (gloo) alike;
- **data**: each optimizer step has one global batch of ``train.batch_size`` samples per micro-batch (a function of
  the seed and the step, so a resume replays it); process ``r`` of ``N`` takes positions ``r, r+N, ...`` of it,
  a distinct slice; ``train.grad_accum`` micro-batches make one optimizer step (gradients synchronised only on the
  last);
- **schedule**: the learning rate is a function of the optimizer step alone (:func:`lr_factor`), set on the
  optimizer before each step, so 1 and N processes follow the same schedule (a scheduler prepared by accelerate
  steps once per process);
- **precision**: ``bf16`` runs the forward under autocast (FSDP: its mixed-precision policy too) while every
  trainable parameter is kept in fp32, as diffusers' training scripts do; frozen weights stay as the task loaded
  them;
- **checkpoints**: ``RUN/checkpoints/step-NNNNNN`` holds the package's weight files written from the *full*
  trainable state (gathered from every shard under FSDP), ``optimizer.pt`` (the full optimizer state keyed by
  parameter name, so a checkpoint resumes under any strategy and process count), the RNG states of every process
  (``rng/rank-R.safetensors`` + ``.json``) and ``state.json`` (the step; written last: it marks the folder
  complete). Nothing in a checkpoint is unpickled: ``optimizer.pt`` loads with ``torch.load(weights_only=True)``,
  the rest is safetensors and JSON. The folder is written under a temporary name and renamed;
- **resume**: ``resume=auto`` continues from the newest complete checkpoint; ``log.csv`` is cut back to the
  checkpoint's step and TensorBoard purges the events after it, so a resumed run's logs hold each step once;
- **logging and validation**: ``RUN/log.csv`` and TensorBoard (``RUN/tb``) on the main process, a tqdm bar;
  validation runs on every process over a distinct share of the validation batches (every process runs the same
  number of forwards, as FSDP needs), the metrics summed over processes.

A run folder ``RUN`` holds ``config.yaml``, ``log.csv``, ``tb/``, ``checkpoints/`` and ``final/`` (the package's
checkpoint without optimizer or RNG state).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import os
import random
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from auteur.io import atomic_dir, atomic_path, clean_stale_temporaries, ensure_writable_dir

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_DIR = "rng"
LOG_FILE = "log.csv"
#: tests of several processes: every process kills itself (SIGKILL) right after this step's checkpoint
_KILL_ENV = "AUTEUR_KILL_AFTER_STEP"


class SimulatedKill(RuntimeError):
    """Raised by ``train(..., stop_after=N)`` right after step N's checkpoint: a kill, for tests."""


@dataclass
class TrainLoop:
    """The loop settings every trainer shares (each package's ``TrainConfig`` extends it; its own defaults).

    ``batch_size`` counts the samples of one micro-batch over all processes (a multiple of the process count);
    an optimizer step takes ``grad_accum`` micro-batches. The learning rate warms up linearly over
    ``warmup_steps`` and then stays (``constant``) or follows a half cosine to zero at ``max_steps`` (``cosine``).
    ``eval_every`` 0 validates only at the end. ``strategy``: ``ddp`` (also one process) or ``fsdp`` (FSDP2
    sharding; several processes). ``trace_samples`` writes the sample indices each process trained on to
    ``RUN/trace/rank-R.jsonl`` (a data-order audit).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    max_steps: int = 100
    batch_size: int = 1
    grad_accum: int = 1
    grad_clip: float = 1.0
    log_every: int = 10
    save_every: int = 100
    eval_every: int = 0
    keep_checkpoints: int = 2
    strategy: Literal["ddp", "fsdp"] = "ddp"
    trace_samples: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)


def lr_factor(step: int, loop: TrainLoop) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based): linear warm-up over ``warmup_steps``,
    then 1 (``constant``) or a half cosine from 1 to 0 at ``max_steps`` (``cosine``)."""
    warm = loop.warmup_steps
    if step < warm:
        return (step + 1) / warm
    if loop.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, loop.max_steps - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class TrainTask:
    """What a package supplies to :func:`fit`: its model, data, loss and checkpoint files.

    Subclasses set :attr:`name` (the progress bar's label), :attr:`error` (the package's error type),
    :attr:`metrics` (the keys :meth:`forward` may return, in log order; ``loss`` first) and implement the
    methods that raise ``NotImplementedError``.
    """

    name: str = "train"
    error: type[Exception] = RuntimeError
    metrics: tuple[str, ...] = ("loss",)
    #: True: checkpoints hold the trainable parameters only (LoRA, adapters); False: the module's whole state
    trainable_only: bool = True

    def build(self, device: torch.device) -> nn.Module:
        """The module that holds every trainable parameter, on ``device`` (frozen parts the loss needs, such as a
        VAE, may live outside it, also on ``device``). Called once, before resuming and wrapping."""
        raise NotImplementedError

    def fsdp_units(self, module: nn.Module) -> list[nn.Module]:
        """Submodules FSDP shards as units of their own (e.g. transformer blocks); the rest goes with the root."""
        return []

    def num_samples(self) -> int:
        raise NotImplementedError

    def global_batch(self, step: int, micro: int, batch_size: int, seed: int) -> list[int]:
        """The sample indices of micro-batch ``micro`` of optimizer step ``step`` over all processes: by default
        consecutive slices of epoch permutations fixed by ``(seed, epoch)`` (:func:`epoch_order`), wrapping into
        the next epoch, so every micro-batch holds ``batch_size`` samples."""
        return cyclic_batch(self.num_samples(), step, micro, batch_size, seed, self.grad_accum)

    grad_accum: int = 1  # set by fit: the default global_batch counts micro-batches with it
    micro: int = 0  # set by fit before each micro-batch's global_batch and batch calls
    final_validation: dict[str, float] = {}  # set by fit before the final save_weights: the last validation

    def batch(self, indices: list[int], positions: list[int], step: int, device: torch.device) -> Any:
        """This process's share of a micro-batch: samples ``indices`` at ``positions`` of the global batch (draws
        seeded by position keep a sample's noise the same whatever the process count). :func:`fit` sets
        :attr:`micro` (the micro-batch within the step) before it calls :meth:`global_batch` and then this."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """The loss of a batch through ``model`` (the wrapped module: DDP/FSDP hooks run): a dict with ``loss``
        (a scalar to minimise) and any of :attr:`metrics`."""
        raise NotImplementedError

    def load_weights(self, folder: Path) -> None:
        """Load the weights of checkpoint ``folder`` (written by :meth:`save_weights`) into the built module."""
        raise NotImplementedError

    def save_weights(self, folder: Path, state: dict[str, torch.Tensor], step: int, final: bool) -> None:
        """Write the package's checkpoint files into the (temporary, existing) folder ``folder`` from ``state``:
        the full trainable parameters (or the whole state, see :attr:`trainable_only`) by their names in the
        built module, on the CPU. Main process only. ``final``: the run's last checkpoint (``RUN/final``)."""
        raise NotImplementedError

    def val_batches(self) -> int:
        """How many validation batches there are (0: no validation)."""
        return 0

    def val_batch(self, i: int, device: torch.device) -> Any:
        """Validation batch ``i`` on ``device``."""
        raise NotImplementedError


def cyclic_batch(n: int, step: int, micro: int, batch_size: int, seed: int, grad_accum: int = 1) -> list[int]:
    """``batch_size`` indices of ``range(n)`` for micro-batch ``micro`` of step ``step``: positions
    ``(step * grad_accum + micro) * batch_size ...`` of the concatenated epoch permutations (:func:`epoch_order`)."""
    start = (step * grad_accum + micro) * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, i = divmod(pos, n)
        out.append(epoch_order(n, seed, epoch)[i])
    return out


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of an epoch: a ``torch.randperm`` of ``n`` fixed by ``(seed, epoch)``, so a resumed run
    replays it. ``director.data.epoch_order`` is another order (a Python ``random`` shuffle), kept as it is: the
    shipped director was trained on it."""
    return list(_epoch_order(n, seed, epoch))


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def shard(items: list[int], rank: int, world: int) -> list[int]:
    """The positions of ``items`` process ``rank`` of ``world`` takes: ``rank, rank + world, ...``."""
    return list(range(rank, len(items), world))


# -- RNG states ------------------------------------------------------------------------------------------------


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


def write_rng_state(folder: Path, name: str, state: dict[str, Any]) -> None:
    """Write an :func:`rng_state` as ``NAME.safetensors`` (the tensors) + ``NAME.json`` (Python's and numpy's
    scalars): no pickle, so loading it runs no code."""
    from safetensors.torch import save_file

    version, internal, gauss = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    tensors = {"torch": state["torch"].contiguous(), "numpy_keys": torch.from_numpy(np.asarray(keys, np.int64))}
    for i, s in enumerate(state.get("cuda", [])):
        tensors[f"cuda.{i}"] = s.contiguous()
    save_file(tensors, str(folder / f"{name}.safetensors"))
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "cuda_devices": len(state.get("cuda", [])),
    }
    (folder / f"{name}.json").write_text(json.dumps(meta) + "\n")


def read_rng_state(folder: Path, name: str) -> dict[str, Any]:
    """What :func:`write_rng_state` wrote."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / f"{name}.safetensors"))
    meta = json.loads((folder / f"{name}.json").read_text())
    version, internal, gauss = meta["python"]
    kind, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    state = {
        "torch": tensors["torch"],
        "python": (version, tuple(internal), gauss),
        "numpy": (kind, keys, pos, has_gauss, cached),
    }
    if meta.get("cuda_devices"):
        state["cuda"] = [tensors[f"cuda.{i}"] for i in range(meta["cuda_devices"])]
    return state


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CUDA's with torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- run folders and checkpoints -------------------------------------------------------------------------------


def is_main_process() -> bool:
    """Whether this process is the main one of its launch (``RANK`` unset or 0: torchrun and accelerate launch set
    it), known before accelerate starts: only the main process writes shared files and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_run_dir(out: str | Path) -> Path:
    """The run folder ``out`` (created, checked writable), cleared of temporaries a killed run left behind (by the
    main process only: the others must not remove what it writes)."""
    run = ensure_writable_dir(out)
    if is_main_process():
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


def read_state(ckpt: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """A checkpoint folder's ``state.json`` (``step``, ``world_size``, ``strategy``)."""
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise error(f"checkpoint {ckpt}: unreadable {STATE_FILE} ({e})") from None
    return state


def read_step(ckpt: Path) -> int:
    """The step a checkpoint folder was written at (its ``state.json``)."""
    return int(read_state(ckpt)["step"])


def prune_checkpoints(run: Path, keep: int = 2) -> None:
    """Delete all but the newest ``keep`` checkpoint folders of ``run``."""
    for old in sorted((run / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_optimizer_file(path: Path, error: type[Exception]) -> dict[str, Any]:
    """An ``optimizer.pt`` loaded with ``weights_only=True`` (tensors, numbers, strings, lists, dicts only: a
    pickle that would run code is refused); any failure is ``error`` in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for a crafted pickle, RuntimeError / EOFError for a damaged file
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise error(f"checkpoint {path.parent}: {path.name} was refused ({type(e).__name__}: {first[:200]})") from None


# -- logs ------------------------------------------------------------------------------------------------------


def start_csv_log(path: Path, fields: list[str], resume_step: int | None = None) -> None:
    """Write the header of the CSV log ``path`` unless it exists; on a resume from step ``resume_step``, keep only
    the rows up to that step (a killed run logged steps after its last checkpoint, which the resumed run logs
    again)."""
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(",".join(fields) + "\n")
        return
    if resume_step is None:
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= resume_step]
    if len(kept) != len(rows):
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(kept)


def append_csv_row(path: Path, values: list[Any]) -> None:
    """Append one row to the CSV log ``path``."""
    with path.open("a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow(values)


def check_run_request(data: list[str], out: str, error: type[Exception], loop: Any = None) -> None:
    """Raise ``error`` (the package's AuteurError) unless ``data`` names CookGen builds, ``out`` is given and can be
    written (and no other run writes it), and the training ``loop`` (``train.*``) counts at least one step: checked
    before anything is written or loaded."""
    from auteur.builds import build_space
    from auteur.io import check_writable_place

    if not data:
        raise error("no training data: give data=COOKGEN_DIR (a folder that `cookgen build` wrote)")
    if not out:
        raise error("no run folder: give out=RUN_DIR")
    for d in data:
        if not Path(d).is_dir():
            raise error(f"training data folder not found: {d}")
        build_space(d)  # a CookGen build with a readable manifest
    if loop is not None and (loop.grad_accum < 1 or loop.max_steps < 1):
        raise error("train.grad_accum and train.max_steps must be at least 1")
    check_writable_place(out)


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
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    where: str | Path,
    error: type[Exception],
    allow_missing: bool = False,
) -> int:
    """Load a saved LoRA state (peft's adapter-name-free keys) into ``model``; returns the tensors loaded.

    Every saved key must be used and (unless ``allow_missing``: a model with LoRA on more modules than the saved
    state, as ``director train.init_from`` grows an adapter) every LoRA tensor of the model set, else ``error``
    (the package's AuteurError) is raised naming ``where``: a prefix or adapter-name mismatch would otherwise
    load nothing silently (``set_peft_model_state_dict`` only reports, never raises). The one LoRA loader of the
    director, renderer and videogen.
    """
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    missing = [] if allow_missing else [k for k in getattr(result, "missing_keys", None) or [] if "lora_" in k]
    if unexpected or missing:
        first = (unexpected or missing)[0]
        raise error(
            f"checkpoint {where}: LoRA keys do not fit the model ({len(unexpected)} unexpected, "
            f"{len(missing)} missing, e.g. {first})"
        )
    log.debug("loaded %d LoRA tensors from %s", len(state), where)
    return len(state)


def peft_state(state: dict[str, torch.Tensor], prefix: str = "", adapter: str = "default") -> dict[str, torch.Tensor]:
    """The LoRA tensors of a full state dict (names under ``prefix``) in peft's saved layout (no adapter name):
    ``a.lora_A.default.weight`` -> ``a.lora_A.weight``, as ``get_peft_model_state_dict`` writes them."""
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix) or "lora_" not in k:
            continue
        out[k[len(prefix) :].replace(f".{adapter}.", ".")] = v
    return dict(sorted(out.items()))


def due(step: int, every: int, max_steps: int) -> bool:
    """Whether a periodic action (log, validate, save) runs after ``step``: every ``every`` steps and at the end."""
    return (every > 0 and step % every == 0) or step == max_steps


# -- the loop --------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What :func:`fit` returns: the final checkpoint folder, the last step, the last logged training metrics
    and the final validation metrics (empty without validation)."""

    final: Path
    step: int
    train: dict[str, float]
    validation: dict[str, float]


def _autocast(device: torch.device, precision: str):
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _wrap(module: nn.Module, task: TrainTask, accelerator, strategy: str, precision: str) -> nn.Module:
    """``module`` as the training step calls it: itself (one process), DDP (accelerate) or FSDP2-sharded."""
    if accelerator.num_processes == 1:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        compute = torch.bfloat16 if precision == "bf16" else torch.float32
        # the forward's float inputs keep their dtype (a timestep or a scalar condition rounded to bf16 would be off
        # by ~0.2%): the computation is bf16 under autocast anyway
        policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32, cast_forward_inputs=False)
        # FSDP2 warns when a sharded module returns a view (diffusers' blocks and heads often end in a reshape), in
        # case an in-place op on it skips its backward hook; the trainers' losses read outputs out of place
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        for unit in task.fsdp_units(module):
            fully_shard(unit, mp_policy=policy)
        fully_shard(module, mp_policy=policy)
        return module
    return accelerator.prepare_model(module)


def full_state(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The full state of ``model`` (DDP- or FSDP-wrapped, or plain) by the unwrapped module's names, on the CPU:
    gathered from every shard under FSDP (a collective: every process calls it; the main process receives it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    options = StateDictOptions(
        full_state_dict=distributed, cpu_offload=distributed, ignore_frozen_params=trainable_only
    )
    state = get_model_state_dict(model, options=options)
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    options = StateDictOptions(full_state_dict=distributed, cpu_offload=distributed)
    return get_optimizer_state_dict(model, optimizer, options=options)


def _load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _no_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on micro-batches before the last of an accumulation (DDP and FSDP2)."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2

        @contextlib.contextmanager
        def off():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return off()
    return contextlib.nullcontext()


def fit(
    task: TrainTask,
    loop: TrainLoop,
    run: Path,
    *,
    seed: int,
    precision: str = "fp32",
    resume: str = "auto",
    config: Any = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``task`` as ``loop`` says in the run folder ``run`` (see the module docstring); returns the final
    checkpoint ``RUN/final`` and the last metrics. ``config`` (a dataclass) is saved as ``RUN/config.yaml``.
    ``stop_after``: tests stop the run right after that step's checkpoint (:class:`SimulatedKill`)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from auteur.config import save_config

    error = task.error
    if loop.threads:
        torch.set_num_threads(loop.threads)
    # precision is the preset's (autocast below), not accelerate's mixed_precision, which would autocast a second time
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
        raise error(
            f"accelerate's {accelerator.distributed_type.value} plugin is not supported: launch with a plain "
            "multi-GPU config (auteur/accelerate/multi_gpu.yaml) or torchrun, and set train.strategy=fsdp to shard"
        )
    main = accelerator.is_main_process
    if loop.batch_size % world:
        raise error(
            f"train.batch_size ({loop.batch_size}) must be a multiple of the number of processes ({world}): "
            "each process takes an equal share of every batch"
        )
    if loop.grad_accum < 1 or loop.max_steps < 1:
        raise error("train.grad_accum and train.max_steps must be at least 1")
    task.grad_accum = loop.grad_accum

    # 1. the model, on this process's device; the checkpoint's weights before wrapping
    ckpt = resume_checkpoint(run, resume, error)
    state = read_state(ckpt, error) if ckpt is not None else {}
    module = task.build(device)
    step = 0
    if ckpt is not None:
        task.load_weights(ckpt)
        step = int(state["step"])
    for p in module.parameters():  # trainable parameters in fp32, whatever the frozen weights' dtype
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    model = _wrap(module, task, accelerator, loop.strategy if world > 1 else "ddp", precision)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise error("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=loop.lr, weight_decay=loop.weight_decay)

    # 2. the state to resume: optimizer (any strategy), RNG states (per process; exact only at the same count)
    if rank:  # distinct dropout draws per process (the main one keeps what the task's seeded build left)
        seed_everything(seed * 1_000 + rank)
    if ckpt is not None:
        _load_optimizer_state(model, optimizer, load_optimizer_file(ckpt / OPTIMIZER_FILE, error))
        rng_name = f"rank-{rank}"
        if int(state.get("world_size", 1)) == world and (ckpt / RNG_DIR / f"{rng_name}.json").is_file():
            set_rng_state(read_rng_state(ckpt / RNG_DIR, rng_name))
        elif main:
            log.warning(
                "%s was written by %s process(es), this run has %d: the data order resumes exactly, "
                "dropout draws do not",
                ckpt,
                state.get("world_size", 1),
                world,
            )
        log.info("resumed from %s (step %d)", ckpt, step)
    if main and config is not None:
        save_config(config, run)
    log.info(
        "%s: %d samples, %d process(es) (%s), %d trainable parameters",
        task.name,
        task.num_samples(),
        world,
        loop.strategy if world > 1 else "single",
        sum(p.numel() for p in params),
    )

    # 3. logs (main process): the CSV cut back to the resumed step, TensorBoard purged after it
    fields = ["step", "split", *task.metrics, "lr", "seconds"]
    csv_path = run / LOG_FILE
    writer = None
    if main:
        start_csv_log(csv_path, fields, resume_step=step if ckpt is not None else None)
        with contextlib.suppress(ImportError):  # tensorboard is optional at run time; the CSV log is always written
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tb"), purge_step=step + 1 if ckpt is not None else None)
    trace = None
    if loop.trace_samples:
        (run / "trace").mkdir(exist_ok=True)
        trace = (run / "trace" / f"rank-{rank}.jsonl").open("a")

    def log_row(row: dict[str, Any]) -> None:
        if not main:
            return
        append_csv_row(csv_path, [row.get(k, "") for k in fields])
        if writer is not None:
            for k in (*task.metrics, "lr"):
                if row.get(k, "") != "":
                    writer.add_scalar(f"{row['split']}/{k}", float(row[k]), row["step"])

    def reduce(sums: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
        """Per-metric means over every process (a collective)."""
        keys = list(task.metrics)
        t = torch.tensor([[sums.get(k, 0.0), counts.get(k, 0)] for k in keys], dtype=torch.float64, device=device)
        if world > 1:
            torch.distributed.all_reduce(t)
        return {k: float(t[i, 0] / t[i, 1]) for i, k in enumerate(keys) if t[i, 1] > 0}

    def validate() -> dict[str, float]:
        n = task.val_batches()
        if n == 0:
            return {}
        model.eval()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        rounds = math.ceil(n / world)  # every process runs as many forwards (FSDP's collectives pair up)
        with torch.no_grad():
            for r in range(rounds):
                i = r * world + rank
                with _autocast(device, precision):
                    out = task.forward(model, task.val_batch(i if i < n else 0, device))
                if i >= n:
                    continue  # a padding forward: not counted
                for k, v in out.items():
                    if k in task.metrics:
                        sums[k] = sums.get(k, 0.0) + float(v)
                        counts[k] = counts.get(k, 0) + 1
        model.train()
        return reduce(sums, counts)

    def save(at: int, final: bool = False, extra: Callable[[Path], None] | None = None) -> Path:
        """Every process gathers; the main one writes (weights, and for a resumable checkpoint the optimizer and
        every process's RNG state)."""
        weights = full_state(model, task.trainable_only)
        opt_state = None if final else _optimizer_state(model, optimizer)
        rng = None
        if not final:
            mine = rng_state(cuda=True)
            if world > 1:
                gathered: list[Any] = [None] * world
                torch.distributed.all_gather_object(gathered, mine)
                rng = gathered
            else:
                rng = [mine]
        target = run / "final" if final else checkpoint_dir(run, at)
        if main:
            with atomic_dir(target) as tmp:
                task.save_weights(tmp, weights, at, final)
                if not final:
                    torch.save(opt_state, tmp / OPTIMIZER_FILE)
                    (tmp / RNG_DIR).mkdir()
                    for r, s in enumerate(rng):
                        write_rng_state(tmp / RNG_DIR, f"rank-{r}", s)
                    meta = {"step": at, "world_size": world, "strategy": loop.strategy if world > 1 else "single"}
                    (tmp / STATE_FILE).write_text(json.dumps(meta) + "\n")
                if extra is not None:
                    extra(tmp)
            if not final:
                prune_checkpoints(run, keep=max(1, loop.keep_checkpoints))
        accelerator.wait_for_everyone()
        return target

    # 4. the loop
    model.train()
    bar = tqdm(total=loop.max_steps, initial=step, desc=task.name, unit="step", disable=not (progress and main))
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    while step < loop.max_steps:
        lr = loop.lr * lr_factor(step, loop)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(loop.grad_accum):
            task.micro = micro
            indices = task.global_batch(step, micro, loop.batch_size, seed)
            positions = shard(indices, rank, world)
            if not positions:
                raise error(
                    f"a batch of {len(indices)} sample(s) cannot be shared by {world} processes: "
                    "the training data is too small for this many processes"
                )
            mine = [indices[p] for p in positions]
            if trace is not None:
                trace.write(json.dumps({"step": step + 1, "micro": micro, "positions": positions, "indices": mine}))
                trace.write("\n")
                trace.flush()
            batch = task.batch(mine, positions, step, device)
            with _no_sync(model, micro == loop.grad_accum - 1):
                with _autocast(device, precision):
                    out = task.forward(model, batch)
                (out["loss"] / loop.grad_accum).backward()
            for k, v in out.items():
                if k in task.metrics:
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
                    counts[k] = counts.get(k, 0) + 1
        if loop.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, loop.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update()
        if due(step, loop.log_every, loop.max_steps):
            last = reduce(sums, counts)  # means since the last log, over every process
            sums, counts = {}, {}
            log_row({**{k: f"{v:.6f}" for k, v in last.items()}, "step": step, "split": "train",
                     "lr": f"{lr:.6e}", "seconds": f"{time.perf_counter() - t0:.1f}"})  # fmt: skip
            if "loss" in last:
                bar.set_postfix(loss=f"{last['loss']:.4f}")
        if loop.eval_every and due(step, loop.eval_every, loop.max_steps) and step < loop.max_steps:
            val = validate()
            if val:
                log_row({**{k: f"{v:.6f}" for k, v in val.items()}, "step": step, "split": "val"})
        if due(step, loop.save_every, loop.max_steps):
            save(step)
        if _KILL_ENV in os.environ and step >= int(os.environ[_KILL_ENV]):
            accelerator.wait_for_everyone()
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill of every process, right after this checkpoint
        if stop_after is not None and step >= stop_after:
            bar.close()
            if trace is not None:
                trace.close()
            raise SimulatedKill(f"stopped after step {step}")
    bar.close()
    if trace is not None:
        trace.close()
    val = validate()
    if val:
        log_row({**{k: f"{v:.6f}" for k, v in val.items()}, "step": step, "split": "val"})
    task.final_validation = val  # save_weights(final=True) may record it
    final = save(step, final=True)
    if writer is not None:
        writer.close()
    return FitResult(final=final, step=step, train=last, validation=val)
