"""``scripts/gpu_smoke.py`` on the CPU: the checks the GPU smoke run makes (every stage's tiny preset in bf16: train,
kill and resume, resume, plan, render, generate) pass here too, one line per check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_smoke_checks_pass_on_the_cpu(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--device", "cpu", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    lines = proc.stdout.splitlines()
    checks = [ln for ln in lines if ln.startswith(("ok ", "FAIL"))]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert lines[0] == "gpu_smoke on cpu" and lines[-1] == "all checks passed"
    names = [ln[5:40].strip() for ln in checks]
    assert names == [
        "cookgen build (tiny)",
        "director train bf16", "director train kill + resume", "director train resume", "director plan bf16",
        "renderer train bf16", "renderer train resume", "renderer render bf16",
        "videogen train bf16", "videogen train resume", "videogen generate bf16",
        "anchors train bf16", "anchors train resume", "anchors generate bf16",
    ]  # fmt: skip
    assert all(ln.startswith("ok ") for ln in checks)
    assert "max |w - unbroken| = 0.00e+00" in proc.stdout  # on the CPU the kill and resume is bit-identical
