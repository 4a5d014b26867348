"""``auteur run``: the whole pipeline in one command, each stage resumable.

    auteur run "how to cook a tuna sandwich" --out RUN [--bank BANK] [--preset default|tiny] [--director-preset P]
               [--renderer-preset P] [--videogen-preset P] [--seed S]

Stages, each run as its package's console script in a subprocess (stage packages never import each other;
``auteur`` is the core they all import), each skipped when its outputs already exist:

1. ``director plan QUERY --out RUN/plan``   -> RUN/plan/plan.json + embeddings   (skipped: plan.json exists)
2. ``renderer render RUN/plan``             -> a keyframe per step               (skipped: all keyframes exist)
3. ``videogen generate RUN/plan``           -> clips, RUN/plan/video.mp4 + .vtt  (skipped: video recorded;
   videogen itself also skips finished clips)
4. ``RUN/storyboard.html``                  (always rewritten; cheap)

``RUN/run.json`` records the query, the presets, the seed and what each stage did (written after every stage).
A rerun with another preset or seed for a stage redoes that stage and every stage after it, since their inputs
changed (the renderer with ``--force``; videogen redoes the clips whose inputs changed).

The default renderer retrieves keyframes from a frame bank (``cookgen bank CLIPS --out BANK``): ``--bank``,
else ``$AUTEUR_BANK``, else ``runs/bank`` when it is one. No bank ships with the package: the only real clips
offline (the VideoAuteur demos) carry no licence to redistribute.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auteur.bank import BANK_FILE, is_bank
from auteur.errors import AuteurError
from auteur.io import atomic_write_json, atomic_write_text, ensure_writable_dir, read_json_object, writer_lock
from auteur.text import MAX_QUERY_CHARS, printable

log = logging.getLogger(__name__)

PLAN_DIR = "plan"
RUN_FILE = "run.json"

#: ``--preset`` of ``auteur run``: the preset each stage gets unless overridden
RUN_PRESETS: dict[str, dict[str, str]] = {
    "default": {"director": "default", "renderer": "default", "videogen": "default"},
    "tiny": {"director": "tiny", "renderer": "tiny", "videogen": "tiny"},
}


class RunError(AuteurError):
    """A pipeline run that cannot start or whose stage failed."""


@dataclass
class StageCommands:
    """How each stage is launched: an argv prefix (``[python, -m, director.cli]``) and the module it needs.

    Tests and users may point a stage at another command (for example a renderer installed elsewhere).
    """

    director: list[str] = field(default_factory=lambda: [sys.executable, "-m", "director.cli"])
    renderer: list[str] = field(default_factory=lambda: [sys.executable, "-m", "renderer.cli"])
    videogen: list[str] = field(default_factory=lambda: [sys.executable, "-m", "videogen.cli"])

    def check(self, stage: str) -> list[str]:
        """The argv prefix of ``stage``; RunError when its package is not installed."""
        argv = list(getattr(self, stage))
        if len(argv) >= 3 and argv[1] == "-m":
            package = argv[2].split(".")[0]
            if importlib.util.find_spec(package) is None:
                raise RunError(
                    f"the {stage} stage needs the '{package}' package, which is not installed "
                    "(install the project with `pip install -e .`, or resume a run that already has this stage's "
                    "outputs)"
                )
        return argv


@dataclass
class RunConfig:
    query: str
    out: Path
    preset: str = "default"
    director_preset: str | None = None
    renderer_preset: str | None = None
    videogen_preset: str | None = None
    seed: int = 0
    steps: int | None = None
    bank: Path | None = None  # frame bank of the retrieval renderer (the default renderer preset)

    def stage_preset(self, stage: str) -> str:
        given = getattr(self, f"{stage}_preset")
        return given if given else RUN_PRESETS[self.preset][stage]


def default_bank() -> Path | None:
    """The frame bank the default renderer uses when ``--bank`` is not given: ``$AUTEUR_BANK``, else
    ``runs/bank`` when it is a bank; None otherwise."""
    env = os.environ.get("AUTEUR_BANK")
    if env:
        return Path(env).expanduser()
    return Path("runs/bank") if is_bank(Path("runs/bank")) else None


def _run_stage(stage: str, argv: list[str], log_file: Path, quiet: bool = False) -> float:
    """Run one stage's command. Its whole output (command, stdout, stderr) goes to ``log_file``; its stdout (the
    readable result, e.g. the plan) is echoed unless ``quiet``; a failure is one line naming the stage, the
    stage's own error and the log file."""
    log.debug("stage %s: %s", stage, " ".join(argv))
    t0 = time.perf_counter()
    # the stage runs in its own process group and is told to end when this process ends (kill -9 included):
    # a killed `auteur run` leaves no stage writing on; Ctrl-C or an error here ends the stage's whole group
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0, preexec_fn=_die_with_parent
    )
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        _end_group(proc)
        raise
    proc = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    atomic_write_text(log_file, f"$ {shlex.join(argv)}\n# exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode == 0 and proc.stdout and not quiet:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "no message")
        raise RunError(
            f"stage {stage} failed (exit {proc.returncode}): {why.removeprefix('error: ')} (full log: {log_file})"
        )
    return time.perf_counter() - t0


def _die_with_parent() -> None:
    """In a stage's child process, before it runs: SIGTERM when the parent dies (Linux ``prctl``; elsewhere
    the stage is ended by :func:`_end_group` only when the parent can still act)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def _end_group(proc: subprocess.Popen) -> None:
    """End a stage's process group: SIGTERM, then SIGKILL after 10 s."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _plan_done(plan_dir: Path) -> bool:
    return (plan_dir / "plan.json").is_file()


def _keyframes_done(plan_dir: Path) -> bool:
    from auteur.plan import load_plan

    plan = load_plan(plan_dir)
    return bool(plan.steps) and all(s.keyframe and (plan_dir / s.keyframe).is_file() for s in plan.steps)


def _video_done(plan_dir: Path) -> bool:
    from auteur.plan import load_plan

    plan = load_plan(plan_dir)
    video = plan.meta.get("video") or {}
    if not video.get("path") or not (plan_dir / video["path"]).is_file():
        return False
    return all(s.clip and (plan_dir / s.clip).is_file() for s in plan.steps)


def run(cfg: RunConfig, commands: StageCommands | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) the pipeline into ``cfg.out``; returns the run record (also written to run.json).
    ``quiet``: print nothing (the stages' output is kept only for a failing stage's one-line error)."""
    commands = commands or StageCommands()
    cfg.query = printable(cfg.query or "").strip()  # as the director reads it: no terminal control codes
    if not cfg.query:
        raise RunError('the query is empty: give what to make, e.g. "how to cook a tuna sandwich"')
    if len(cfg.query) > MAX_QUERY_CHARS:
        raise RunError(
            f"the query is {len(cfg.query)} characters long; a query names what to make in one sentence "
            f"(at most {MAX_QUERY_CHARS} characters)"
        )
    if cfg.steps is not None and cfg.steps < 1:
        raise RunError(f"--steps must be at least 1, got {cfg.steps}")
    if cfg.preset not in RUN_PRESETS:
        raise RunError(f"unknown run preset '{cfg.preset}' (known: {', '.join(RUN_PRESETS)})")
    for stage in ("director", "renderer", "videogen"):
        _check_stage_preset(stage, cfg.stage_preset(stage), getattr(commands, stage))
    old: dict[str, Any] = {}
    if (Path(cfg.out) / RUN_FILE).is_file():
        old = read_json_object(Path(cfg.out) / RUN_FILE, RunError)
        if old.get("query") != cfg.query:
            raise RunError(f"{cfg.out} holds a run for another query ({old.get('query')!r}); use another --out")
    if cfg.bank is not None and cfg.stage_preset("renderer") != "default":
        raise RunError(
            f"--bank is for the default (retrieval) renderer; this run's renderer preset is "
            f"'{cfg.stage_preset('renderer')}', which renders without a bank"
        )
    if cfg.stage_preset("renderer") == "default":
        cfg.bank = cfg.bank or default_bank()
        if cfg.bank is None:
            raise RunError(
                "the default renderer retrieves keyframes from a frame bank: build one with `cookgen bank "
                "CLIPS_DIR --out runs/bank` (e.g. from ../shared/data/videoauteur_demos; then it is found by itself) "
                "or pass --bank BANK"
            )
        if not is_bank(cfg.bank):
            raise RunError(
                f"--bank {cfg.bank} is not a frame bank (no {BANK_FILE}); build one with "
                f"`cookgen bank CLIPS_DIR --out {cfg.bank}`"
            )
    with writer_lock(cfg.out):  # one `auteur run` per run folder at a time
        out = ensure_writable_dir(cfg.out)
        return _run_stages(cfg, commands, quiet, old, out)


def _check_stage_preset(stage: str, preset: str, argv: list[str]) -> None:
    """RunError unless ``preset`` is one of the stage package's preset names or a path that exists (a YAML, a
    checkpoint folder): checked before the run folder is made, without importing the stage's package (it is
    found on the path, its ``presets/`` folder read). A stage run by another command checks its own."""
    package = argv[2].split(".")[0] if len(argv) >= 3 and argv[1] == "-m" else None
    spec = importlib.util.find_spec(package) if package else None
    if Path(preset).exists() or spec is None or not spec.submodule_search_locations:
        return
    names = sorted(p.stem for p in Path(list(spec.submodule_search_locations)[0], "presets").glob("*.yaml"))
    if names and preset not in names:
        raise RunError(f"--{stage}-preset {preset}: not a {stage} preset ({', '.join(names)}) nor an existing file")


def _run_stages(
    cfg: RunConfig, commands: StageCommands, quiet: bool, old: dict[str, Any], out: Path
) -> dict[str, Any]:
    from auteur.storyboard import write_storyboard

    plan_dir = out / PLAN_DIR
    record_path = out / RUN_FILE
    presets = {s: cfg.stage_preset(s) for s in ("director", "renderer", "videogen")}
    # the last run's stage entries stay until their stage is redone: they say what made the outputs there
    record: dict[str, Any] = {"query": cfg.query, "preset": cfg.preset, "presets": presets, "seed": cfg.seed,
                              "stages": dict(old.get("stages", {}))}  # fmt: skip

    say = (lambda *a: None) if quiet else print
    stages = [
        ("director", _plan_done, lambda: ["plan", "--preset", presets["director"], "--out", str(plan_dir),
                                          "--seed", str(cfg.seed)]
                                         + (["--steps", str(cfg.steps)] if cfg.steps else [])
                                         + ["--", cfg.query]),  # user text after "--": never read as an option
        ("renderer", _keyframes_done, lambda: ["render", str(plan_dir), "--preset", presets["renderer"], "--seed",
                                               str(cfg.seed), "--no-progress"]
                                              + (["--bank", str(cfg.bank)] if cfg.bank else [])),
        ("videogen", _video_done, lambda: ["generate", str(plan_dir), "--preset", presets["videogen"], "--seed",
                                           str(cfg.seed), "--no-progress"]),
    ]  # fmt: skip

    def made_by(stage: str) -> tuple[Any, Any]:  # (preset, seed) that made a stage's outputs in the last run
        entry = old.get("stages", {}).get(stage, {})
        return entry.get("preset", old.get("presets", {}).get(stage)), entry.get("seed", old.get("seed"))

    redo = False  # a stage whose preset or seed changed since the last run, and every stage after it, run again
    for stage, done, args in stages:
        if stage != "director" and not _plan_done(plan_dir):
            raise RunError(f"no plan in {plan_dir}: the director stage did not write one")
        now = (presets[stage], cfg.seed)
        redo = redo or (bool(old) and made_by(stage) != now and done(plan_dir))
        if done(plan_dir) and not redo:
            record["stages"][stage] = {"status": "skipped (outputs exist)", "preset": now[0], "seed": now[1]}
            say(f"[{stage}] skipped: outputs exist in {plan_dir}")
        else:
            # the director replaces its plan folder; videogen redoes the clips whose inputs, preset or seed changed
            # (each clip records a fingerprint of them); the renderer is told to redo every keyframe
            argv = commands.check(stage) + args() + (["--force"] if redo and stage == "renderer" else [])
            say(f"[{stage}] running" + (" again: a preset or the seed changed" if redo else ""))
            seconds = _run_stage(stage, argv, out / "logs" / f"{stage}.log", quiet)
            if not done(plan_dir):
                raise RunError(f"stage {stage} exited 0 but its outputs are missing in {plan_dir}")
            seconds = round(seconds, 2)
            record["stages"][stage] = {"status": "done", "seconds": seconds, "preset": now[0], "seed": now[1]}
        atomic_write_json(record_path, record)  # after every stage: a killed run knows what made what
    page = write_storyboard(out, plan_dir, run_info=record)
    record["storyboard"] = str(page)
    return record


def add_parser(sub) -> None:
    """Register ``auteur run`` on the subparsers of ``auteur``'s CLI."""
    from auteur.cliutil import examples

    r = sub.add_parser(
        "run",
        help="the whole pipeline: plan -> keyframes -> video, resumable",
        description="The whole pipeline: director plan -> renderer render -> videogen generate, then a storyboard\n"
        "page. Each stage is skipped when its outputs exist: rerun the same command to resume.",
        epilog=examples(
            "cookgen bank ../shared/data/videoauteur_demos --out runs/bank",
            'auteur run "how to cook a tuna sandwich" --out runs/tuna2 --bank runs/bank',
        ),
    )
    r.add_argument("query", help='what to plan, e.g. "how to cook a tuna sandwich"')
    r.add_argument("--out", required=True, type=Path, help="run folder: RUN/plan, RUN/storyboard.html, RUN/run.json")
    r.add_argument(
        "--preset",
        default="default",
        choices=sorted(RUN_PRESETS),
        help="the preset every stage gets unless overridden (default: default)",
    )
    r.add_argument("--director-preset", metavar="PRESET", help="the director's preset (`director presets`)")
    r.add_argument("--renderer-preset", metavar="PRESET", help="the renderer's preset (`renderer presets`)")
    r.add_argument("--videogen-preset", metavar="PRESET", help="videogen's preset (`videogen presets`)")
    r.add_argument("--seed", type=int, default=0, help="seed of every stage (default 0)")
    r.add_argument("--steps", type=int, help="number of plan steps (default: the director decides)")
    r.add_argument(
        "--bank",
        type=Path,
        help="frame bank for the default (retrieval) renderer: `cookgen bank` (default: $AUTEUR_BANK, else runs/bank)",
    )


def main_run(args) -> int:
    """``auteur run`` from parsed arguments."""
    cfg = RunConfig(
        query=args.query,
        out=args.out,
        preset=args.preset,
        director_preset=args.director_preset,
        renderer_preset=args.renderer_preset,
        videogen_preset=args.videogen_preset,
        seed=args.seed,
        steps=args.steps,
        bank=args.bank,
    )
    record = run(cfg)
    from auteur.plan import load_plan

    plan = load_plan(cfg.out / PLAN_DIR)
    video = plan.meta.get("video") or {}
    kind = " (an animatic)" if video.get("animatic") else ""
    print(f"video: {cfg.out / PLAN_DIR / video.get('path', '')}{kind}\nstoryboard: {record['storyboard']}")
    return 0
