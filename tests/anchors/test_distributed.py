"""``anchors train`` under ``torchrun --nproc_per_node 2`` on this CPU: DDP and FSDP2 over gloo, bf16.

What a researcher's 8-GPU run relies on, checked with 2 processes and the tiny preset on the tiny CookGen build:
the learning rate per optimizer step is the single-process run's (with a warm-up, which a scheduler prepared by
accelerate ran through N times faster on N processes); each process trains a distinct slice of every global
batch, and each sample gets the same draws as in one process, so the two runs' losses agree; the processes split
the encoding of the latent cache, which a resumed run does not redo; one checkpoint is written per save (by the
main process); a run killed (SIGKILL) and resumed ends with the same weights as an unbroken one; the checkpoint
generates in one process; FSDP2 with bf16 trains (fp32 weights, a bf16 text encoder) and generates (slow).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anchors.cli import main
from anchors.config import PRESETS, AnchorsConfig
from anchors.train import train
from auteur.config import load_config
from auteur.plan import load_plan
from tests.distributed import check_ok, check_sharding, log_rows, torchrun

#: one optimizer step = one micro-batch of 2 samples (one per process); a warm-up over the first 3 steps
OVER = ["train.max_steps=6", "train.save_every=2", "train.warmup_steps=3", "train.log_every=1",
        "train.batch_size=2", "train.trace_samples=true", "train.caption_dropout=0.3", "seed=1"]  # fmt: skip
ENCODED = re.compile(r"latent cache (\S+): (\d+) of (\d+) entries encoded now \(per process: \[(\d+), (\d+)\]\)")


def _args(data: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--preset", "tiny", "--no-progress", f"data={data}", f"out={out}", *OVER, *more]


def _encoded(stderr: str) -> tuple[Path, int, int, list[int]]:
    """(cache folder, entries encoded now, entries in all, per process) from the main process's log line."""
    (folder, now, total, a, b), *others = ENCODED.findall(stderr)
    assert not others  # the main process reports for both
    return Path(folder), int(now), int(total), [int(a), int(b)]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tiny_cookgen, tmp_path_factory) -> dict:
    """The single-process run (in-process), an unbroken 2-process DDP run, and a 2-process run killed after step 2
    and resumed; with the torchruns' stderr."""
    root = tmp_path_factory.mktemp("anchors-ddp")
    train(load_config(AnchorsConfig, "tiny", _args(tiny_cookgen, root / "single")[4:], preset_dir=PRESETS),
          progress=False)  # fmt: skip
    ddp = torchrun("anchors", _args(tiny_cookgen, root / "ddp"))
    check_ok(ddp)
    killed = torchrun("anchors", _args(tiny_cookgen, root / "resumed"), kill_after=2)
    assert killed.returncode != 0 and not (root / "resumed" / "final").exists()
    resumed = torchrun("anchors", _args(tiny_cookgen, root / "resumed"))
    check_ok(resumed)
    return {"single": root / "single", "ddp": root / "ddp", "resumed": root / "resumed",
            "stderr": {"ddp": ddp.stderr, "killed": killed.stderr, "resumed": resumed.stderr}}  # fmt: skip


def test_two_processes_follow_the_single_process_schedule_and_share_each_batch(runs) -> None:
    single, ddp = log_rows(runs["single"]), log_rows(runs["ddp"])
    assert [r["step"] for r in ddp] == [str(s) for s in range(1, 7)]
    assert [r["lr"] for r in ddp] == [r["lr"] for r in single]  # the same learning rate at every optimizer step
    # a linear warm-up over 3 steps, then constant: not over 1.5 steps (a scheduler stepped by both processes)
    assert [float(r["lr"]) for r in ddp] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3, 1e-3])
    check_sharding(runs["ddp"], runs["single"])
    # each sample drew the same condition mask, caption dropout, noise level and noise in both runs, and the loss
    # weighs samples alike: the two runs differ only by float rounding of the gradient average
    assert [float(r["loss"]) for r in ddp] == pytest.approx([float(r["loss"]) for r in single], rel=1e-4)
    a, s = _weights(runs["ddp"]), _weights(runs["single"])
    assert a.keys() == s.keys() and all(torch.allclose(a[k], s[k], atol=1e-4) for k in a)


def test_the_processes_split_the_encoding_and_a_resumed_run_encodes_nothing(runs) -> None:
    folder, now, total, split = _encoded(runs["stderr"]["ddp"])
    assert folder.parent == runs["ddp"] / "latents"  # the run's own cache (no dataset.cache_dir given)
    assert (now, total) == (6, 6) and split == [3, 3]  # 5 samples and the empty caption, shared out
    assert sorted(p.suffix for p in folder.iterdir()) == [".json"] + [".safetensors"] * 6  # no temporaries
    assert _encoded(runs["stderr"]["killed"])[1:] == (6, 6, [3, 3])
    assert _encoded(runs["stderr"]["resumed"])[1:] == (0, 6, [0, 0])  # read back what the killed run wrote


def test_one_checkpoint_per_save_and_an_exact_resume_after_a_kill(runs) -> None:
    ckpts = runs["ddp"] / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000004", "step-000006"]  # two kept, no temporaries
    last = ckpts / "step-000006"
    assert sorted(p.name for p in last.iterdir()) == [
        "anchors.json", "config.yaml", "model.safetensors", "optimizer.pt", "rng", "state.json"]  # fmt: skip
    assert json.loads((last / "state.json").read_text()) == {"step": 6, "world_size": 2, "strategy": "ddp"}
    assert sorted(p.name for p in (last / "rng").iterdir()) == [
        "rank-0.json", "rank-0.safetensors", "rank-1.json", "rank-1.safetensors"]  # fmt: skip
    a, b = _weights(runs["ddp"]), _weights(runs["resumed"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical after the kill
    # the resumed run's log holds every step once (the steps after the last checkpoint were cut, then redone)
    assert [r["step"] for r in log_rows(runs["resumed"])] == [str(s) for s in range(1, 7)]


def test_the_two_process_checkpoint_generates_in_one_process(runs, story_file, tmp_path, capsys) -> None:
    out = tmp_path / "plan"
    assert main(["generate", "--story", str(story_file), "--preset", str(runs["ddp"] / "final"), "--out", str(out),
                 "generate.embed=false"]) == 0  # fmt: skip
    plan = load_plan(out)
    assert len(plan.steps) == 4 and plan.provenance["models"]["anchors_trained"] is True
    meta = json.loads((runs["ddp"] / "final" / "anchors.json").read_text())
    assert meta["trained_on"]["steps"] == 6 and meta["stage"] == "multievent"


@pytest.mark.slow  # ~40 s more: one process in bf16 is tested by default (test_train.py)
def test_fsdp_in_bf16_trains_and_generates(tiny_cookgen, runs, story_file, tmp_path, capsys) -> None:
    """FSDP2 (the Wan blocks as units) with precision=bf16: autocast through the widened patch embedding and the
    condition embeddings, the text encoder in bf16; the checkpoint holds whole fp32 tensors (gathered from both
    shards) of the same names and shapes as DDP's, and generates in one process."""
    proc = torchrun("anchors", _args(tiny_cookgen, tmp_path / "fsdp", "train.strategy=fsdp", "precision=bf16"))
    check_ok(proc)
    assert "returned a view tensor" not in proc.stderr
    f, d = _weights(tmp_path / "fsdp"), _weights(runs["ddp"])
    assert f.keys() == d.keys() and all(f[k].shape == d[k].shape for k in f)
    assert all(v.dtype == torch.float32 for v in f.values())
    assert not all(torch.equal(f[k], d[k]) for k in f)  # it trained (in bf16, not as the fp32 run did)
    state = json.loads((tmp_path / "fsdp" / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["strategy"] == "fsdp"
    # a bf16 text encoder: another cache folder, its prompt embeddings stored in bf16
    folder, now, _, split = _encoded(proc.stderr)
    assert json.loads((folder / "settings.json").read_text())["dtype"] == {"vae": "float32", "text": "bfloat16"}
    assert now == 6 and split == [3, 3]
    entry = load_file(str(next(folder.glob("*.safetensors"))))
    assert entry["text"].dtype == torch.bfloat16
    # the schedule is DDP's; bf16 training tracks the fp32 run's loss closely
    fsdp_rows, ddp_rows = log_rows(tmp_path / "fsdp"), log_rows(runs["ddp"])
    assert [r["lr"] for r in fsdp_rows] == [r["lr"] for r in ddp_rows]
    assert [float(r["loss"]) for r in fsdp_rows] == pytest.approx([float(r["loss"]) for r in ddp_rows], rel=0.05)
    out = tmp_path / "plan"
    assert main(["generate", "--story", str(story_file), "--preset", str(tmp_path / "fsdp" / "final"),
                 "--out", str(out), "generate.embed=false"]) == 0  # fmt: skip
    assert len(load_plan(out).steps) == 4
