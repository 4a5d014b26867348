#!/usr/bin/env bash
# Every stage's tiny preset in bf16 on the GPU (train, resume, plan, render, generate), one line per check,
# under 5 minutes (scripts/gpu_smoke.py; the test suite runs the same checks on the CPU). Run from the repo root
# after `python3 tasks.py test` made .venv:  bash scripts/gpu_smoke.sh [--device cpu] [-v]
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 300 .venv/bin/python scripts/gpu_smoke.py "$@"
