"""``renderer train`` under ``torchrun --nproc_per_node 2`` on this CPU (gloo): what an 8-GPU FLUX.1 Fill run needs.

With the tiny preset on the tiny CookGen build (2 videos of 3 keyframes: 4 (episode, step) pairs) and LoRA dropout
on, checked with 2 processes: the learning rate per optimizer step is the single-process run's; each process
renders a distinct slice of every global batch, with the noise of its positions (the first step's loss, taken
before any update, is the single-process one); one checkpoint per save, written by the main process; a run killed
(SIGKILL) after a checkpoint and resumed ends bit-identical to an unbroken one; the checkpoint renders in one
process. FSDP2 with a bf16 FLUX shards the transformer blocks, trains LoRA and adapter in fp32 (bit-identical to
DDP in fp32) and its checkpoint renders in bf16.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from auteur.config import load_config
from renderer.cli import main
from renderer.config import PRESETS, RenderConfig
from renderer.train import load_episodes, sample_plan, train
from tests.distributed import check_ok, check_sharding, log_rows, torchrun, trace
from tests.renderer.conftest import make_plan

#: one optimizer step = one micro-batch of 2 canvases (one per process); warm-up, then cosine
OVER = ["train.max_steps=4", "train.save_every=2", "train.batch_size=2", "train.warmup_steps=2",
        "train.schedule=cosine", "train.trace_samples=true", "lora.dropout=0.1", "seed=1"]  # fmt: skip
FILES = ("lora.safetensors", "adapter.safetensors")


def _args(data: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--preset", "tiny", "--no-progress", f"data={data}", f"out={out}", *OVER, *more]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{name}:{k}": v for name in FILES for k, v in load_file(str(folder / name)).items()}


@pytest.fixture(scope="module")
def runs(tiny_cookgen: Path, tmp_path_factory) -> dict[str, Path]:
    """The single-process run (in-process), an unbroken 2-process DDP run, and a 2-process run killed (SIGKILL)
    right after step 2's checkpoint and resumed."""
    root = tmp_path_factory.mktemp("ddp")
    train(load_config(RenderConfig, "tiny", _args(tiny_cookgen, root / "single")[4:], preset_dir=PRESETS),
          progress=False)  # fmt: skip
    ddp = torchrun("renderer", _args(tiny_cookgen, root / "ddp"))
    check_ok(ddp)
    # the main process reports, once
    assert ddp.stdout.splitlines().count(f"trained renderer -> {root / 'ddp' / 'final'}") == 1, ddp.stdout
    killed = torchrun("renderer", _args(tiny_cookgen, root / "resumed"), kill_after=2)
    assert killed.returncode != 0 and not (root / "resumed" / "final").exists()
    assert (root / "resumed" / "checkpoints" / "step-000002" / "state.json").is_file()
    check_ok(torchrun("renderer", _args(tiny_cookgen, root / "resumed")))
    return {"single": root / "single", "ddp": root / "ddp", "resumed": root / "resumed"}


def test_two_processes_follow_the_single_process_schedule_and_share_each_batch(runs, tiny_cookgen: Path) -> None:
    single, ddp = log_rows(runs["single"]), log_rows(runs["ddp"])
    assert [r["step"] for r in ddp] == ["1", "2", "3", "4"]
    assert [r["lr"] for r in ddp] == [r["lr"] for r in single]  # the same learning rate at every optimizer step
    # warm-up over 2 steps, then a half cosine to zero at step 4: a step counted twice (or per process) would show
    assert [float(r["lr"]) for r in ddp] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
    check_sharding(runs["ddp"], runs["single"])
    # step 1's loss comes before any update (LoRA B starts at zero, so dropout does not act yet): the same canvases
    # with the same noise and sigma per position give the single-process loss
    assert float(ddp[0]["loss"]) == pytest.approx(float(single[0]["loss"]), rel=1e-5)
    assert float(ddp[-1]["loss"]) != float(ddp[0]["loss"])  # and training moved on from there
    # the two processes' canvases differed in size at some step (context lengths 1 and 2): DDP took both
    cfg = load_config(RenderConfig, "tiny", _args(tiny_cookgen, runs["ddp"])[4:], preset_dir=PRESETS)
    episodes, _ = load_episodes(cfg.data)
    ks = [[k for _, _, k, _ in sample_plan(episodes, cfg, s)] for s in range(4)]
    assert any(a != b for a, b in ks), ks
    assert [t["step"] for t in trace(runs["ddp"], 1)] == [1, 2, 3, 4]


def test_one_checkpoint_per_save_and_an_exact_resume_after_a_kill(runs) -> None:
    ckpts = sorted(p.name for p in (runs["ddp"] / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000004"]  # no temporaries, no per-process copies
    last = runs["ddp"] / "checkpoints" / "step-000004"
    assert json.loads((last / "state.json").read_text()) == {"step": 4, "world_size": 2, "strategy": "ddp"}
    assert sorted(p.name for p in (last / "rng").iterdir()) == [
        "rank-0.json", "rank-0.safetensors", "rank-1.json", "rank-1.safetensors"]  # fmt: skip
    a, b = _tensors(runs["ddp"] / "final"), _tensors(runs["resumed"] / "final")
    assert a.keys() == b.keys() and len(a) == 14 + 6  # 7 LoRA layers (A, B) + the adapter's 6 tensors
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical after the kill (dropout RNGs restored too)
    mid = _tensors(runs["resumed"] / "checkpoints" / "step-000002")
    assert any(not torch.equal(a[k], mid[k]) for k in a)  # steps 3-4 ran after the resume
    assert [r["step"] for r in log_rows(runs["resumed"])] == ["1", "2", "3", "4"]  # every step logged once


def test_the_two_process_checkpoint_renders_in_one_process(runs, tiny_cookgen: Path, tmp_path: Path, capsys) -> None:
    from auteur.builds import build_space
    from auteur.plan import load_plan

    final = runs["ddp"] / "final"
    assert {p.name for p in final.iterdir()} == {*FILES, "renderer.json", "config.yaml"}
    meta = json.loads((final / "renderer.json").read_text())
    assert meta["step"] == 4 and meta["trained_on"] == [str(tiny_cookgen)]
    space = build_space(tiny_cookgen)
    torch.manual_seed(0)
    plan = make_plan(tmp_path / "plan", torch.randn(2, space.dim), space, n=2)
    assert main(["render", str(plan), "--preset", "tiny", "--checkpoint", str(final), "--no-progress"]) == 0
    assert "2 keyframes rendered" in capsys.readouterr().out
    assert load_plan(plan).provenance["renderer"]["trained"] is True


def test_fsdp_with_a_bf16_flux_trains_fp32_lora_and_renders(runs, tiny_cookgen: Path, tmp_path: Path, capsys):
    """FSDP2 over gloo, FLUX in bf16 (the paper's precision): LoRA and adapter train as fp32 masters under bf16
    autocast, the checkpoint holds whole fp32 tensors of DDP's keys and shapes, and renders with a bf16 FLUX."""
    run = tmp_path / "fsdp"
    check_ok(torchrun("renderer", _args(tiny_cookgen, run, "train.strategy=fsdp", "flux.dtype=bf16")))
    assert json.loads((run / "checkpoints" / "step-000004" / "state.json").read_text())["strategy"] == "fsdp"
    got, ddp = _tensors(run / "final"), _tensors(runs["ddp"] / "final")
    assert got.keys() == ddp.keys() and all(got[k].shape == ddp[k].shape for k in got)
    assert all(v.dtype == torch.float32 for v in got.values())
    # fp32 masters, not bf16 weights widened on saving: the LoRA B matrices (zero at the start) hold values bf16
    # cannot represent
    lora_b = [v for k, v in got.items() if "lora_B" in k]
    assert all(v.abs().max() > 0 for v in lora_b)
    assert any(not torch.equal(v, v.bfloat16().float()) for v in lora_b)
    assert [r["lr"] for r in log_rows(run)] == [r["lr"] for r in log_rows(runs["ddp"])]
    assert float(log_rows(run)[0]["loss"]) == pytest.approx(float(log_rows(runs["ddp"])[0]["loss"]), rel=0.05)
    from auteur.builds import build_space

    space = build_space(tiny_cookgen)
    plan = make_plan(tmp_path / "plan", torch.zeros(2, space.dim), space, n=2)
    argv = ["render", str(plan), "--preset", "tiny", "flux.dtype=bf16", "--checkpoint", str(run / "final")]
    assert main([*argv, "--no-progress"]) == 0
    assert "2 keyframes rendered" in capsys.readouterr().out
