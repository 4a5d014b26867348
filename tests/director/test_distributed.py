"""``director train`` under ``torchrun --nproc_per_node 2`` on this CPU: DDP and FSDP2 over gloo, bf16.

What a researcher's 8-GPU run relies on, checked with 2 processes and the tiny preset on mixed CookGen data (a
build with keyframe embeddings, a text-only YouCook2 build, caption-only lines): the learning rate per optimizer
step is the single-process run's; each process trains a distinct slice of every global batch; one checkpoint
is written (by the main process); a run killed (SIGKILL) and resumed ends with the same weights as an unbroken
one; the checkpoint plans in one process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auteur.config import load_config
from director.cli import main
from director.config import PRESETS, DirectorConfig
from director.train import train, trained_tensors
from tests.distributed import check_ok, check_sharding, log_rows, torchrun, trace

#: one optimizer step = one micro-batch of 2 samples (one per process); caption-only lines and text-only steps
#: share batches with visual windows, so the head and projector are unused on some processes at some steps
OVER = ["train.max_steps=6", "train.save_every=2", "train.eval_every=3", "train.batch_size=2",
        "dataset.caption_lines=3", "train.trace_samples=true", "seed=1"]  # fmt: skip


@pytest.fixture(scope="module")
def mixed_data(tiny_cookgen, tmp_path_factory) -> tuple[list[str], list[str]]:
    """(data folders, extra overrides): the visual build, a text-only YouCook2 build, a captions CSV."""
    from cookgen.cli import main as cookgen
    from tests.cookgen.conftest import write_youcook2, yc_video

    root = tmp_path_factory.mktemp("mixed")
    ann = write_youcook2(
        root / "ann.json",
        {
            "v1": yc_video("training", "201", [(0, 5, "chop the lettuce"), (6, 9, "add oil"), (10, 12, "toss it")]),
            "v2": yc_video("training", "202", [(0, 4, "boil the pasta"), (5, 8, "drain it"), (9, 12, "add sauce")]),
        },
    )
    (root / "labels.csv").write_text("201,salad\n202,pasta\n")
    yc = root / "yc"
    argv = ["build", "youcook2", "--annotations", str(ann), "--labels", str(root / "labels.csv"), "--out", str(yc)]
    assert cookgen(argv) == 0
    captions = root / "captions.csv"
    captions.write_text("text\nA hand stirs a pot of soup.\nA knife slices bread.\nOil shimmers in a pan.\n")
    data = [str(tiny_cookgen[0]), str(yc), str(tiny_cookgen[1])]
    return data, [f"dataset.captions_csv={captions}"]


def _args(data: list[str], extra: list[str], out: Path, *more: str) -> list[str]:
    return ["train", "--preset", "tiny", "--no-progress", f"data={','.join(data)}", f"out={out}", *OVER, *extra,
            *more]  # fmt: skip


@pytest.fixture(scope="module")
def runs(mixed_data, tmp_path_factory) -> dict[str, Path]:
    """The single-process run (in-process), an unbroken 2-process DDP run, and a 2-process run killed after step 2
    and resumed."""
    data, extra = mixed_data
    root = tmp_path_factory.mktemp("ddp")
    overrides = _args(data, extra, root / "single")[4:]
    train(load_config(DirectorConfig, "tiny", overrides, preset_dir=PRESETS), progress=False)
    check_ok(torchrun("director", _args(data, extra, root / "ddp")))
    killed = torchrun("director", _args(data, extra, root / "resumed"), kill_after=2)
    assert killed.returncode != 0 and not (root / "resumed" / "final").exists()
    check_ok(torchrun("director", _args(data, extra, root / "resumed")))
    return {"single": root / "single", "ddp": root / "ddp", "resumed": root / "resumed"}


def test_two_processes_follow_the_single_process_schedule_and_share_each_batch(runs, mixed_data) -> None:
    single, ddp = log_rows(runs["single"]), log_rows(runs["ddp"])
    assert [r["step"] for r in ddp] == [str(s) for s in range(1, 7)]
    assert [r["lr"] for r in ddp] == [r["lr"] for r in single]  # the same learning rate at every optimizer step
    assert float(ddp[-1]["lr"]) < float(ddp[1]["lr"])  # and it decays (cosine) within the run, not 2x faster
    check_sharding(runs["ddp"], runs["single"])
    # the batches were mixed: at some step one process held only text (caption-only line or text-only step)
    # while the other held a visual window -- the case DDP's reducer rejects when a parameter goes unused
    cfg = load_config(DirectorConfig, "tiny", _args(*mixed_data, runs["ddp"])[4:], preset_dir=PRESETS)
    from director.backbone import load_backbone
    from director.data import SequenceBuilder, has_visual_targets
    from director.model import Director
    from director.train import block_fill, resolve_space, training_samples

    space = resolve_space(cfg)
    backbone = load_backbone(cfg.backbone)
    director = Director(backbone.model, backbone.tokenizer, cfg.model, space.dim)
    builder = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), cfg.model.order, cfg.dataset.max_tokens)
    samples = training_samples(cfg, builder, space, block_fill(cfg, space))
    kinds = [
        tuple(any(has_visual_targets(samples[i]) for i in t["indices"]) for t in pair)
        for pair in zip(trace(runs["ddp"], 0), trace(runs["ddp"], 1))
    ]
    assert any(a != b for a, b in kinds)


def test_one_checkpoint_per_save_and_an_exact_resume_after_a_kill(runs) -> None:
    ckpts = sorted(p.name for p in (runs["ddp"] / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000006"]  # two kept; no temporaries, no per-process copies
    state = json.loads((runs["ddp"] / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state == {"step": 6, "world_size": 2, "strategy": "ddp"}
    assert sorted(p.name for p in (runs["ddp"] / "checkpoints" / "step-000006" / "rng").iterdir()) == [
        "rank-0.json", "rank-0.safetensors", "rank-1.json", "rank-1.safetensors"]  # fmt: skip
    a, b = trained_tensors(runs["ddp"] / "final"), trained_tensors(runs["resumed"] / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical after the kill
    # the resumed run's log holds every step once (the steps after the last checkpoint were cut, then redone)
    steps = [r["step"] for r in log_rows(runs["resumed"])]
    assert steps == [str(s) for s in range(1, 7)]
    # and it differs from the single-process run only by float rounding of the gradient average
    s = trained_tensors(runs["single"] / "final")
    assert not all(torch.equal(a[k], s[k]) for k in a)


def test_the_two_process_checkpoint_plans_in_one_process(runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "plan"
    code = main(["plan", "how to make pancakes", "--preset", str(runs["ddp"] / "final"), "--out", str(out),
                 "backbone.kind=tiny", "--steps", "2"])  # fmt: skip
    assert code == 0 and (out / "plan.json").is_file()
    assert len(json.loads((out / "plan.json").read_text())["steps"]) == 2


def test_fsdp_in_bf16_shards_gathers_full_checkpoints_and_resumes_exactly(mixed_data, runs, tmp_path: Path) -> None:
    """FSDP2 over gloo with a bf16 base model: the checkpoint holds whole tensors (gathered from both shards) of the
    same shapes as DDP's, trainable parameters in fp32; a kill and resume ends bit-identical."""
    data, extra = mixed_data
    more = ("train.strategy=fsdp", "precision=bf16", "backbone.dtype=bfloat16")
    check_ok(torchrun("director", _args(data, extra, tmp_path / "fsdp", *more)))
    killed = torchrun("director", _args(data, extra, tmp_path / "fsdp2", *more), kill_after=4)
    assert killed.returncode != 0
    check_ok(torchrun("director", _args(data, extra, tmp_path / "fsdp2", *more)))
    f, g = trained_tensors(tmp_path / "fsdp" / "final"), trained_tensors(tmp_path / "fsdp2" / "final")
    d = trained_tensors(runs["ddp"] / "final")
    assert f.keys() == d.keys() and all(f[k].shape == d[k].shape for k in f)
    assert all(v.dtype == torch.float32 for v in f.values())
    assert all(torch.equal(f[k], g[k]) for k in f)
    state = json.loads((tmp_path / "fsdp" / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["strategy"] == "fsdp"
    # the schedule is the same as DDP's; bf16 training tracks the fp32 run's loss closely
    assert [r["lr"] for r in log_rows(tmp_path / "fsdp")] == [r["lr"] for r in log_rows(runs["ddp"])]
    assert float(log_rows(tmp_path / "fsdp")[-1]["loss"]) == pytest.approx(
        float(log_rows(runs["ddp"])[-1]["loss"]), rel=0.05
    )


def test_a_batch_that_processes_cannot_share_is_one_line(mixed_data, tmp_path: Path) -> None:
    data, extra = mixed_data
    proc = torchrun("director", _args(data, extra, tmp_path / "odd", "train.batch_size=3"))
    assert proc.returncode != 0  # torchrun reports its children's exit code 2 as a failure of its own
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == ["error: train.batch_size (3) must be a multiple of the number of processes (2): each process "
                      "takes an equal share of every batch"] * 2  # fmt: skip
    assert "[rank0]: Traceback" not in proc.stderr and "/director/" not in proc.stderr  # no traceback of ours
    assert not (tmp_path / "odd").exists()  # nothing left behind
