#!/usr/bin/env python3
"""Every stage's tiny preset in bf16 on one device: train a few steps, resume, plan, render, generate.

    python scripts/gpu_smoke.py                 # on CUDA when there is a GPU (else it says so and uses the CPU)
    python scripts/gpu_smoke.py --device cpu    # the same checks on the CPU (the test suite runs this)
    bash scripts/gpu_smoke.sh                   # the same, with a 5-minute limit

It prints one line per check (``ok``/``FAIL``, the check, seconds, what it measured) and exits 1 when any
failed. The checks are those the CPU test suite makes on the paper path, run where the paper runs: a tiny CookGen
build (synthetic step clips); ``director train`` in bf16 (bf16 base model, fp32 trainable parameters); a kill
(SIGKILL after step 2's checkpoint) and resume to the same final step; ``director plan`` on the device in bf16;
``renderer train`` + ``renderer render`` (FLUX.1 Fill code, tiny), ``videogen train`` + ``videogen generate``
(Wan 2.1 I2V code, tiny), ``anchors train`` + ``anchors generate`` (Wan 2.1 T2V code, tiny), all bf16; with two
or more GPUs, a 2-process ``torchrun`` of ``director train`` (DDP) and of ``train.strategy=fsdp``. The models are
random (tiny presets): the checks are of the code path on the device, not of quality.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write_dishes(root: Path) -> None:
    """Two dishes of 4 synthetic step clips (1 s, 8 fps, 32x32) with actions and captions, as a clip folder."""
    import numpy as np
    import yaml

    from auteur.video import write_mp4

    dishes = {
        "Tuna_Sandwich": ["Drain the tuna.", "Mix tuna with mayonnaise.", "Spread it on bread.", "Close it."],
        "Pancakes": ["Whisk flour and milk.", "Pour batter into the pan.", "Flip the pancake.", "Serve them."],
    }
    for d, (name, actions) in enumerate(dishes.items()):
        rng = np.random.default_rng(d)
        folder = root / name
        folder.mkdir(parents=True)
        acts, caps = {}, {}
        for k, action in enumerate(actions, start=1):
            base = rng.integers(0, 200, size=3)
            frames = [np.broadcast_to((base + 6 * i) % 256, (32, 32, 3)).astype(np.uint8) for i in range(8)]
            write_mp4(frames, folder / f"{k}.mp4", fps=8)
            acts[str(k)] = action
            caps[str(k)] = f"A close-up shot of the cook's hands: {action.lower()}"
        (folder / "actions.yaml").write_text(yaml.safe_dump(acts))
        (folder / "captions.yaml").write_text(yaml.safe_dump(caps))


class Smoke:
    """Runs checks, printing one line each; remembers failures."""

    def __init__(self, work: Path, verbose: bool) -> None:
        self.work, self.verbose, self.failed = work, verbose, []

    def check(self, name: str, fn: Callable[[], str]) -> bool:
        out = io.StringIO()
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                note = fn()
            ok = True
        except BaseException as e:  # noqa: BLE001 - a check that fails is reported, the next one still runs
            ok, note = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if self.verbose:
                out.write(traceback.format_exc())
        print(f"{'ok  ' if ok else 'FAIL'} {name:<34} {time.perf_counter() - t0:6.1f} s  {note}", flush=True)
        if not ok:
            self.failed.append(name)
            tail = out.getvalue().strip().splitlines()[-12:]
            for line in tail:
                print(f"     | {line}", flush=True)
        return ok


def _cli(main: Callable[[list[str]], int], argv: list[str]) -> None:
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"exit {code}: {' '.join(argv[:2])}")


def _torchrun(args: list[str], env: dict[str, str] | None = None, nproc: int = 2) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", str(nproc), "-m", *args]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)


def run(device: str, work: Path, verbose: bool = False) -> int:
    """All checks on ``device`` in the folder ``work``; returns how many failed."""
    import torch

    from anchors.cli import main as anchors
    from cookgen.cli import main as cookgen
    from director.cli import main as director
    from director.train import trained_tensors
    from renderer.cli import main as renderer
    from videogen.cli import main as videogen

    smoke = Smoke(work, verbose)
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    print(
        f"gpu_smoke on {device}" + (f" ({torch.cuda.get_device_name(0)}, {gpus} GPU(s))" if gpus else ""), flush=True
    )
    data, plan = work / "cookgen", work / "plan"
    short = ["train.max_steps=4", "train.save_every=2", "train.log_every=1", "--no-progress"]

    def build() -> str:
        _write_dishes(work / "clips")
        argv = ["build", "steps", "--root", str(work / "clips"), "--out", str(data), "--split", "train"]
        _cli(cookgen, argv + ["--config", "tiny", "--no-progress", "filter.min_clip_seconds=0.5"])
        return "2 dishes, 8 steps"

    def trained(run: Path) -> str:
        """What a 4-step run left: its last checkpoint's step, the steps logged, the dtypes of what it trained."""
        from safetensors.torch import load_file

        state = json.loads((run / "checkpoints" / "step-000004" / "state.json").read_text())
        dtypes = {str(v.dtype).removeprefix("torch.") for f in (run / "final").glob("*.safetensors")
                  for v in load_file(str(f)).values() if v.is_floating_point()}  # fmt: skip
        if dtypes != {"float32"}:
            raise RuntimeError(f"trained tensors in {sorted(dtypes)}, not float32")
        return f"step {state['step']}, trained tensors float32"

    def resumed(run: Path, main: Callable[[list[str]], int], argv: list[str]) -> str:
        """Run ``argv`` again with one more step: it must resume from step 4 and log each step once."""
        import csv

        _cli(main, [*argv, "train.max_steps=5"])
        with (run / "log.csv").open() as f:
            steps = [r["step"] for r in csv.DictReader(f) if r["split"] == "train"]
        if steps != [str(i) for i in range(1, 6)]:
            raise RuntimeError(f"log steps after the resume: {steps}")
        return "resumed at step 4, ran step 5, each step logged once"

    def trainer(name: str, main: Callable[[list[str]], int], run: Path, extra: list[str], then=None) -> None:
        """Train 4 steps (``then``: checks of the 4-step result), then resume for a fifth."""
        argv = ["train", "--preset", "tiny", f"data={data}", f"out={run}", *extra, *short]
        if smoke.check(f"{name} train bf16", lambda: (_cli(main, argv), trained(run))[1]):
            if then is not None:
                then()
            smoke.check(f"{name} train resume", lambda: resumed(run, main, argv))

    def director_resume() -> str:
        args = ["director", "train", "--preset", "tiny", f"data={data}", f"out={work / 'director-kill'}",
                "precision=bf16", "backbone.dtype=bfloat16", *short]  # fmt: skip
        killed = _torchrun(args, {"AUTEUR_KILL_AFTER_STEP": "2"}, nproc=1)
        if killed.returncode == 0:
            raise RuntimeError("the run was not killed")
        resumed = _torchrun(args, nproc=1)
        if resumed.returncode != 0:
            raise RuntimeError(resumed.stderr.strip().splitlines()[-1])
        a, b = trained_tensors(work / "director" / "final"), trained_tensors(work / "director-kill" / "final")
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        return f"killed after step 2, resumed to step 4; max |w - unbroken| = {diff:.2e}"

    def director_plan() -> str:
        ckpt = work / "director" / "final"
        _cli(director, ["plan", "how to make pancakes", "--preset", str(ckpt), "--out", str(plan), "--steps", "3",
                        "backbone.kind=tiny", "backbone.dtype=bfloat16", f"backbone.device={device}"])  # fmt: skip
        steps = json.loads((plan / "plan.json").read_text())["steps"]
        return f"{len(steps)} steps planned"

    def renderer_render() -> str:
        _cli(renderer, ["render", str(plan), "--preset", "tiny", "--checkpoint", str(work / "renderer" / "final"),
                        "--size", "32x32", "flux.dtype=bf16", "flux.num_inference_steps=2"])  # fmt: skip
        steps = json.loads((plan / "plan.json").read_text())["steps"]
        return f"{sum(1 for s in steps if s.get('keyframe'))} keyframes"

    def videogen_generate() -> str:
        _cli(videogen, ["generate", str(plan), "--preset", "tiny", "--checkpoint", str(work / "videogen" / "final"),
                        "precision=bf16"])  # fmt: skip
        clips = sorted((plan / "clips").glob("*.mp4")) if (plan / "clips").is_dir() else []
        return f"{len(clips)} clips"

    def anchors_generate() -> str:
        story = work / "story.json"
        story.write_text(json.dumps({"title": "Pancakes", "events": ["Whisk flour and milk.", "Flip the pancake."]}))
        out = work / "anchors-plan"
        _cli(anchors, ["generate", "--story", str(story), "--preset", str(work / "anchors" / "final"),
                       "--out", str(out), "precision=bf16"])  # fmt: skip
        return f"{len(json.loads((out / 'plan.json').read_text())['steps'])} frames"

    def two_processes(strategy: str) -> Callable[[], str]:
        def fn() -> str:
            out = work / f"director-2gpu-{strategy}"
            proc = _torchrun(["director", "train", "--preset", "tiny", f"data={data}", f"out={out}",
                              "precision=bf16", "backbone.dtype=bfloat16", f"train.strategy={strategy}",
                              "train.batch_size=2", *short])  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.strip().splitlines()[-1])
            return json.loads((out / "checkpoints" / "step-000004" / "state.json").read_text())["strategy"]

        return fn

    if smoke.check("cookgen build (tiny)", build):
        trainer("director", director, work / "director", ["precision=bf16", "backbone.dtype=bfloat16"],
                then=lambda: smoke.check("director train kill + resume", director_resume))  # fmt: skip
        if (work / "director" / "final").is_dir():
            smoke.check("director plan bf16", director_plan)
        trainer("renderer", renderer, work / "renderer", ["flux.dtype=bf16"])
        if (work / "renderer" / "final").is_dir() and (plan / "plan.json").is_file():
            smoke.check("renderer render bf16", renderer_render)
        trainer("videogen", videogen, work / "videogen", ["precision=bf16"])
        if (work / "videogen" / "final").is_dir() and (plan / "plan.json").is_file():
            smoke.check("videogen generate bf16", videogen_generate)
        trainer("anchors", anchors, work / "anchors", ["precision=bf16"])
        if (work / "anchors" / "final").is_dir():
            smoke.check("anchors generate bf16", anchors_generate)
        if gpus >= 2:
            smoke.check("director train 2 GPUs (ddp)", two_processes("ddp"))
            smoke.check("director train 2 GPUs (fsdp)", two_processes("fsdp"))
    print(f"{len(smoke.failed)} failed" if smoke.failed else "all checks passed", flush=True)
    return len(smoke.failed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when a GPU is there, else cpu")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed after)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the traceback of a failing check")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA: every stage then stays on the CPU
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.device is None and device == "cpu":
        print("note: no GPU here: running the checks on the CPU", flush=True)
    import logging

    logging.disable(logging.WARNING)  # the libraries' info lines would bury the one line per check
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        return 1 if run(device, args.work, args.verbose) else 0
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        return 1 if run(device, Path(tmp), args.verbose) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
