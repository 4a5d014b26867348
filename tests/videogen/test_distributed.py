"""``videogen train`` under ``torchrun --nproc_per_node 2`` on this CPU (DDP over gloo), as a researcher's 8-GPU
paper run relies on it, with the tiny preset on the tiny CookGen build with clips: the learning rate per optimizer
step is the single-process run's; each process trains a distinct slice of every global batch, and a sample's
draws (noise, time, regularisers) do not depend on the process count; the two processes split the encoding of
the latent cache and a resumed run encodes nothing; one checkpoint per save, by the main process; a run killed
(SIGKILL) and resumed ends bit-identical to an unbroken one (LoRA dropout on, so the RNG restore matters); the
checkpoint generates in one process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from auteur.config import load_config
from auteur.plan import load_plan
from tests.distributed import check_ok, check_sharding, log_rows, torchrun
from tests.videogen.conftest import plan_for_checkpoint
from videogen.cli import main
from videogen.config import PRESETS, VideogenConfig
from videogen.train import load_samples, train

#: one optimizer step = one micro-batch of 2 clips (one per process); warm-up then cosine, so the learning rate
#: changes at every step; LoRA dropout draws from each process's global RNG
OVER = ["train.max_steps=4", "train.save_every=2", "train.log_every=1", "train.batch_size=2",
        "train.warmup_steps=2", "train.schedule=cosine", "lora.dropout=0.1", "train.trace_samples=true",
        "seed=1"]  # fmt: skip


def _args(data: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--preset", "tiny", "--no-progress", f"data={data}", f"out={out}", *OVER, *more]


def _encoded(run: Path, rank: int) -> list[list[str]]:
    """The keys process ``rank`` encoded into the latent cache, one list per (resumed) run."""
    lines = (run / "trace" / f"encoded-rank-{rank}.jsonl").read_text().splitlines()
    return [json.loads(line)["encoded"] for line in lines]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of a videogen checkpoint folder."""
    out = {f"lora.{k}": v for k, v in load_file(str(folder / "lora.safetensors")).items()}
    return out | {f"projector.{k}": v for k, v in load_file(str(folder / "projector.safetensors")).items()}


@pytest.fixture(scope="module")
def runs(tiny_cookgen_clips, tmp_path_factory) -> dict[str, Path]:
    """The single-process run (in-process), an unbroken 2-process DDP run, and a 2-process run killed after step 2
    and resumed."""
    root = tmp_path_factory.mktemp("vg-ddp")
    data = tiny_cookgen_clips
    train(load_config(VideogenConfig, "tiny", _args(data, root / "single")[4:], preset_dir=PRESETS), progress=False)
    check_ok(torchrun("videogen", _args(data, root / "ddp")))
    killed = torchrun("videogen", _args(data, root / "resumed"), kill_after=2)
    assert killed.returncode != 0 and not (root / "resumed" / "final").exists()
    check_ok(torchrun("videogen", _args(data, root / "resumed")))
    return {"single": root / "single", "ddp": root / "ddp", "resumed": root / "resumed"}


def test_two_processes_follow_the_single_process_schedule_and_draw_the_same_per_sample(runs) -> None:
    single, ddp = log_rows(runs["single"]), log_rows(runs["ddp"])
    assert [r["step"] for r in ddp] == ["1", "2", "3", "4"]
    assert [r["lr"] for r in ddp] == [r["lr"] for r in single]  # the same learning rate at every optimizer step
    lr = [float(r["lr"]) for r in ddp]
    assert lr[0] < lr[1] and lr[3] < lr[2]  # which warms up and decays within the run
    check_sharding(runs["ddp"], runs["single"])
    # step 1 trains the same weights on the same clips (LoRA B starts at zero: dropout cannot act yet); its loss is
    # the same only if every clip drew the same noise, time and regulariser corruption in both runs
    assert float(ddp[0]["loss"]) == pytest.approx(float(single[0]["loss"]), rel=1e-5)


def test_the_processes_split_the_encoding_and_a_resumed_run_encodes_nothing(runs, tiny_cookgen_clips) -> None:
    cfg = load_config(VideogenConfig, "tiny", [f"data={tiny_cookgen_clips}"], preset_dir=PRESETS)
    keys = {s.key for s in load_samples(cfg)[0]}
    first, second = _encoded(runs["ddp"], 0)[0], _encoded(runs["ddp"], 1)[0]
    assert len(first) == len(second) == 3 and set(first) | set(second) == keys  # each sample once, by one process
    assert [len(e) for e in _encoded(runs["resumed"], 0)] == [3, 0]  # the killed run encoded, the resumed did not
    assert [len(e) for e in _encoded(runs["resumed"], 1)] == [3, 0]
    # what the two processes wrote is what one process writes
    caches = {name: sorted((runs[name] / "cache").glob("*/*.safetensors")) for name in ("single", "ddp")}
    assert [f.name for f in caches["single"]] == [f.name for f in caches["ddp"]] and len(caches["ddp"]) == 6
    for a, b in zip(caches["single"], caches["ddp"]):
        x, y = load_file(str(a)), load_file(str(b))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_one_checkpoint_per_save_and_an_exact_resume_after_a_kill(runs) -> None:
    ckpts = sorted(p.name for p in (runs["ddp"] / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000004"]  # no temporaries, no per-process copies
    last = runs["ddp"] / "checkpoints" / "step-000004"
    assert json.loads((last / "state.json").read_text()) == {"step": 4, "world_size": 2, "strategy": "ddp"}
    assert sorted(p.name for p in last.iterdir()) == ["lora.safetensors", "optimizer.pt", "projector.safetensors",
                                                      "rng", "state.json", "videogen.json"]  # fmt: skip
    assert sorted(p.name for p in (last / "rng").iterdir()) == [
        "rank-0.json", "rank-0.safetensors", "rank-1.json", "rank-1.safetensors"]  # fmt: skip
    a, b = _tensors(runs["ddp"] / "final"), _tensors(runs["resumed"] / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical after the kill
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # and trained
    # the resumed run's log holds every step once (the steps after the last checkpoint were cut, then redone)
    assert [r["step"] for r in log_rows(runs["resumed"])] == ["1", "2", "3", "4"]
    # the single-process run drew other dropout masks (one RNG for both clips): the weights differ
    s = _tensors(runs["single"] / "final")
    assert s.keys() == a.keys() and not all(torch.equal(a[k], s[k]) for k in a)


def test_the_two_process_checkpoint_generates_in_one_process(runs, tmp_path: Path, capsys) -> None:
    final = runs["ddp"] / "final"
    plan = plan_for_checkpoint(tmp_path / "plan", final)
    assert main(["generate", str(plan), "--preset", "tiny", "--checkpoint", str(final), "--no-progress"]) == 0
    assert "2 clips (2 made" in capsys.readouterr().out
    assert load_plan(plan).provenance["videogen"]["trained"] is True


@pytest.mark.slow
def test_fsdp_in_bf16_with_recomputation_gathers_full_checkpoints_and_resumes_exactly(
    runs, tiny_cookgen_clips, tmp_path: Path
) -> None:
    """FSDP2 over gloo, bf16 base weights, gradient checkpointing (the paper preset's): the checkpoint holds whole
    tensors (gathered from both shards) of DDP's shapes, in fp32; a kill and resume ends bit-identical; runs that
    share ``train.cache_dir`` encode the build once between them."""
    more = ("train.strategy=fsdp", "precision=bf16", "train.gradient_checkpointing=true",
            f"train.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    check_ok(torchrun("videogen", _args(tiny_cookgen_clips, tmp_path / "fsdp", *more)))
    killed = torchrun("videogen", _args(tiny_cookgen_clips, tmp_path / "fsdp2", *more), kill_after=2)
    assert killed.returncode != 0
    check_ok(torchrun("videogen", _args(tiny_cookgen_clips, tmp_path / "fsdp2", *more)))
    f, g = _tensors(tmp_path / "fsdp" / "final"), _tensors(tmp_path / "fsdp2" / "final")
    d = _tensors(runs["ddp"] / "final")
    assert f.keys() == d.keys() and all(f[k].shape == d[k].shape for k in f)
    assert all(v.dtype == torch.float32 for v in f.values())
    assert all(torch.equal(f[k], g[k]) for k in f)
    state = json.loads((tmp_path / "fsdp" / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["strategy"] == "fsdp"
    assert [r["lr"] for r in log_rows(tmp_path / "fsdp")] == [r["lr"] for r in log_rows(runs["ddp"])]
    assert [len(e) for r in (0, 1) for e in _encoded(tmp_path / "fsdp", r)] == [3, 3]
    assert [len(e) for r in (0, 1) for e in _encoded(tmp_path / "fsdp2", r)] == [0, 0, 0, 0]
