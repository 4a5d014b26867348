"""A TEST SYSTEM for ``auteur compare`` tests: writes a Plan folder with small PNG keyframes, fast.

    python toy_system.py PROMPT --out DIR [--style flat|varied] [--steps N]

``flat`` draws every keyframe in nearly the same colour (high self-similarity); ``varied`` draws a different
colour and pattern per step. A prompt containing "FAIL" exits with code 3 (to test failure recording).
It is not a generator of anything meaningful: it exists to exercise the harness end to end.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from auteur.plan import Plan, Step, save_plan


def write_toy_plan(prompt: str, out: Path, style: str = "flat", n_steps: int = 3) -> None:
    """Write the toy plan for ``prompt`` into ``out``."""
    seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    steps = []
    for i in range(n_steps):
        if style == "flat":
            base = np.array([200, 120, 60]) + rng.integers(-5, 6, 3)
            arr = np.broadcast_to(base, (48, 48, 3)).astype(np.uint8).copy()
        else:
            arr = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            arr[: 8 * (i + 1)] = rng.integers(0, 256, 3)
        name = f"keyframes/{i + 1:02d}.png"
        (out / "keyframes").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(out / name)
        steps.append(Step(index=i + 1, action=f"step {i + 1} of {prompt}", keyframe=name))
    save_plan(Plan(query=prompt, steps=steps, provenance={"system": f"toy-{style} (test system)"}), out)


def varied_system(item, out: Path) -> None:
    """The same toy system as a Python callable (``NAME=py:tests.auteur.metrics.toy_system:varied_system``)."""
    if "FAIL" in item.prompt:
        raise RuntimeError("toy system: refusing a prompt with FAIL")
    write_toy_plan(item.prompt, out, "varied")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("prompt")
    p.add_argument("--out", required=True)
    p.add_argument("--style", default="flat", choices=["flat", "varied"])
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    if "FAIL" in a.prompt:
        print("toy system: refusing a prompt with FAIL", file=sys.stderr)
        return 3
    write_toy_plan(a.prompt, Path(a.out), a.style, a.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
