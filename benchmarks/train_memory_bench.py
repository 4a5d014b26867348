"""Peak memory and time of one director training step, the text loss as the director computes it (the LM head
only at the labelled positions) against the full-vocabulary logits at every position it replaced, printed as
ratios. Each configuration runs in its own fresh process (peak RSS is per process); the baseline runs in the same
invocation, so the ratios compare like with like on a noisy machine.

    python benchmarks/train_memory_bench.py [--preset default] [--batch 4] [--length 1000] [--labelled 0.6]

One step = forward + backward of a micro-batch of ``--batch`` sequences of ``--length`` random tokens (a
sixteen-step CookGen window is ~1,000 tokens), the first ``1 - labelled`` of each sequence unlabelled (the query
and context), fp32 on the CPU, LoRA as the preset configures it. Also run: the same step with eager attention (the
``[B, heads, L, L]`` probabilities kept for backward), to show what the attention itself holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEP = """
import json, resource, sys, time
import torch
import torch.nn.functional as F
from auteur.plan import VisualSpace
from director.checkpoint import build_director, read_meta
from director.cli import resolve_config
from director.model import LossConfig

args = json.loads(sys.argv[1])
cfg = resolve_config(args["preset"], [])
meta = read_meta(cfg.checkpoint)
space = VisualSpace(meta["space"]["name"], int(meta["space"]["dim"]))
director, backbone, _ = build_director(cfg.backbone, cfg.model, space, checkpoint=None, seed=0)
if args["attention"] != "default":
    director.base_lm().set_attn_implementation(args["attention"])
director.train()
g = torch.Generator().manual_seed(0)
b, n = args["batch"], args["length"]
ids = torch.randint(100, 40000, (b, n), generator=g)
labels = ids.clone()
labels[:, : int(n * (1 - args["labelled"]))] = -100
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
         "targets": torch.zeros(0, space.dim), "supervised": torch.zeros(0, dtype=torch.bool)}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if args["loss"] == "labelled":
    loss = director.loss(batch, LossConfig())["text_loss"]
else:  # the replaced formula: full-vocabulary fp32 logits at every position
    logits = director.run(ids, None, batch["attention_mask"]).logits[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
loss.backward()
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gb = 2**20  # ru_maxrss is in KiB
print(json.dumps({"loss": float(loss), "seconds": seconds, "peak_gb": peak / gb, "step_gb": (peak - before) / gb}))
"""


def run(args: argparse.Namespace, loss: str, attention: str) -> dict[str, float]:
    spec = {"preset": args.preset, "batch": args.batch, "length": args.length, "labelled": args.labelled,
            "loss": loss, "attention": attention}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", STEP, json.dumps(spec)], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"error: the {loss}/{attention} step failed: {last}", file=sys.stderr)
        sys.exit(2)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default", help="director preset (its backbone and LoRA settings)")
    p.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    p.add_argument("--length", type=int, default=1000, help="tokens per sequence")
    p.add_argument("--labelled", type=float, default=0.6, help="fraction of each sequence with text labels")
    args = p.parse_args()
    if args.batch < 1 or args.length < 2 or not 0 < args.labelled <= 1:
        print("error: --batch must be >= 1, --length >= 2 and --labelled in (0, 1]", file=sys.stderr)
        sys.exit(2)
    base = run(args, "full", "default")
    new = run(args, "labelled", "default")
    eager = run(args, "labelled", "eager")
    print(f"director training step, batch {args.batch} x {args.length} tokens, {args.labelled:.0%} labelled, fp32")
    for name, r in (("full-vocabulary logits (baseline)", base), ("LM head at the labels only", new),
                    ("LM head at the labels, eager attention", eager)):  # fmt: skip
        print(f"  {name}: step peak +{r['step_gb']:.2f} GB (process {r['peak_gb']:.2f} GB), {r['seconds']:.1f} s, "
              f"loss {r['loss']:.4f}")  # fmt: skip
    print(
        f"labels only vs baseline: memory of the step {new['step_gb'] / base['step_gb']:.2f}x, "
        f"time {new['seconds'] / base['seconds']:.2f}x, same loss: {abs(new['loss'] - base['loss']) < 1e-4}"
    )


if __name__ == "__main__":
    main()
