"""Story-frame data from CookGen, the flow-matching training step, resume after a kill."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anchors.config import PRESETS, AnchorsConfig
from anchors.train import SimulatedKill, condition_mask, flow_matching_loss, train
from auteur.config import load_config


def test_story_samples_from_cookgen(tiny_cookgen, tiny_cfg):
    from anchors.captions import multi_event_caption
    from anchors.data import load_story_samples

    samples = load_story_samples([str(tiny_cookgen)], "train", tiny_cfg.dataset, 32, 32)
    # 4 + 3 steps, two frames per 1-s clip at 0.5 s intervals: 8 and 6 story frames; windows of 4, stride 2
    assert len(samples) == 3 + 2
    first = next(s for s in samples if "tuna" in s.story.title.lower())
    # a sample holds where its frames are, not their pixels: they are decoded when asked
    assert not any(isinstance(v, torch.Tensor) for v in vars(first).values())
    frames = first.frames()
    assert frames.shape == (4, 3, 32, 32) and frames.min() >= -1 and frames.max() <= 1
    assert len({s.key for s in samples}) == len(samples) and str(tiny_cookgen.resolve()) in first.key
    assert [(e.text, e.frames) for e in first.story.events] == [
        ("Drain the tuna.", 2),
        ("Mix tuna with mayonnaise.", 2),
    ]
    assert "(1) frames 1-2: Drain the tuna. (2) frames 3-4: Mix tuna with mayonnaise." in multi_event_caption(
        first.story
    )
    fps, interval, motion, w, h, n = first.conditions(frames).tolist()
    assert torch.equal(first.conditions(), first.conditions(frames))  # decoded again: the same pixels
    assert fps == pytest.approx(8.0) and interval == pytest.approx(4.0)  # 0.5 s at 8 fps
    assert (w, h, n) == (32, 32, 4) and motion > 0


def test_fed_frame_interval_is_the_spacing_of_the_sampled_frames(tiny_cookgen, tiny_cfg):
    from dataclasses import replace

    from anchors.data import load_story_samples

    # one frame per 1-s step clip (at 0.25 s of each): the frames are 1 s apart, not interval_seconds (0.5 s)
    cfg = replace(tiny_cfg.dataset, max_frames_per_step=1, num_frames=3, stride=1)
    samples = load_story_samples([str(tiny_cookgen)], "train", cfg, 32, 32)
    assert len(samples) == 2 + 1  # 4 and 3 steps: windows of 3 frames, stride 1
    for s in samples:
        assert s.times == pytest.approx([0.25 + k + int(s.source.rsplit("@", 1)[1]) for k in range(3)])
        fps, interval = s.fps, s.interval
        assert fps == pytest.approx(8.0) and interval == pytest.approx(8.0)  # 1 s at 8 fps
        assert [e.frames for e in s.story.events] == [1, 1, 1]
    # uneven spacing (two frames 0.3 s apart in step 1, then step 2's first frame 0.7 s later): the interval fed
    # is the window's own mean spacing in source frames
    cfg = replace(tiny_cfg.dataset, interval_seconds=0.3, num_frames=3, stride=1)
    first = load_story_samples([str(tiny_cookgen)], "train", cfg, 32, 32)[0]
    assert first.times == pytest.approx([0.15, 0.45, 1.15])
    assert float(first.conditions()[1]) == pytest.approx((1.15 - 0.15) / 2 * 8.0)


def test_condition_masks_per_stage():
    torch.manual_seed(0)
    assert all(condition_mask(4, "global", 1.0).sum() == 0 for _ in range(20))
    for _ in range(50):
        m = condition_mask(4, "continuation", 1.0)
        k = int(m.sum())
        assert 1 <= k <= 3 and torch.equal(m, torch.tensor([1.0] * k + [0.0] * (4 - k)))  # a prefix
        assert condition_mask(4, "multievent", 1.0).sum() < 4  # something is always generated


def test_training_steps_lower_the_loss_on_a_fixed_batch(tiny_anchors):
    net = copy.deepcopy(tiny_anchors.net).train()
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 4, 3, 32, 32, generator=g) * 2 - 1
    latents = tiny_anchors.encode_frames(frames)
    text = tiny_anchors.text(["Events: (1) frames 1-4: stir.", "Events: (1) frames 1-4: fry."])
    conds = torch.tensor([[30.0, 15.0, 20.0, 32.0, 32.0, 4.0]] * 2)
    mask = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    sigma, noise = torch.tensor([0.4, 0.7]), torch.randn(latents.shape, generator=g)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(flow_matching_loss(net, latents, text, conds, mask, sigma, noise))
    for _ in range(5):
        loss = flow_matching_loss(net, latents, text, conds, mask, sigma, noise)
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after = float(flow_matching_loss(net, latents, text, conds, mask, sigma, noise))
    assert after < 0.9 * before
    # the new input weights and the condition MLPs are trained (they leave zero)
    assert torch.count_nonzero(net.transformer.patch_embedding.extra.weight) > 0
    assert torch.count_nonzero(net.cond_embed.mlps["fps"][-1].weight) > 0


def _cfg(data: Path, out: Path, *extra: str) -> AnchorsConfig:
    over = [f"data={data}", f"out={out}", "train.max_steps=4", "train.save_every=2", "train.log_every=1", *extra]
    return load_config(AnchorsConfig, "tiny", over, preset_dir=PRESETS)


def test_resume_after_kill_is_bit_identical(tiny_cookgen, tmp_path):
    full = train(_cfg(tiny_cookgen, tmp_path / "full", "train.stage=continuation"), progress=False)
    with pytest.raises(SimulatedKill):
        train(_cfg(tiny_cookgen, tmp_path / "cut", "train.stage=continuation"), stop_after=2, progress=False)
    assert not (tmp_path / "cut" / "final").exists()
    resumed = train(_cfg(tiny_cookgen, tmp_path / "cut", "train.stage=continuation"), progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = load_file(str(tmp_path / "full" / "checkpoints" / "step-000002" / "model.safetensors"))
    assert any(not torch.equal(a[k], init[k]) for k in a)  # steps 3-4 changed the weights
    log = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    assert log[0] == "step,split,loss,lr,seconds" and [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4"]
    # the skeleton's checkpoint: anchors' files, the optimizer by name, every process's RNG state as safetensors
    ckpt = tmp_path / "cut" / "checkpoints" / "step-000004"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "anchors.json", "config.yaml", "model.safetensors", "optimizer.pt", "rng", "state.json"]  # fmt: skip


def _encoded(caplog) -> tuple[Path, int, int]:
    """(cache folder, entries encoded now, entries in all) from the last run's latent-cache log line."""
    import re

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("latent cache ")]
    folder, now, total = re.match(r"latent cache (\S+): (\d+) of (\d+) entries encoded now", lines[-1]).groups()
    return Path(folder), int(now), int(total)


def test_the_latent_cache_is_written_once_and_a_partial_one_resumes(tiny_cookgen, tmp_path, caplog):
    caplog.set_level("INFO", logger="anchors.train")
    cache = f"dataset.cache_dir={tmp_path / 'cache'}"
    first = train(_cfg(tiny_cookgen, tmp_path / "a", cache, "train.max_steps=1"), progress=False)
    folder, now, total = _encoded(caplog)
    assert folder.parent == tmp_path / "cache" and (now, total) == (6, 6)  # 5 samples and the empty caption
    entries = sorted(folder.glob("*.safetensors"))
    assert len(entries) == 6 and (folder / "settings.json").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in entries}
    # another run on the same cache encodes nothing, and trains the same weights from what it reads back
    second = train(_cfg(tiny_cookgen, tmp_path / "b", cache, "train.max_steps=1"), progress=False)
    assert _encoded(caplog)[1:] == (0, 6) and {p: p.stat().st_mtime_ns for p in entries} == stamps
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a fill killed midway: one entry missing, one half-written temporary left; the next run encodes the one
    entries[2].unlink()
    (folder / f".{entries[3].name}.tmp-x").write_bytes(b"half")
    train(_cfg(tiny_cookgen, tmp_path / "c", cache, "train.max_steps=1"), progress=False)
    assert _encoded(caplog)[1:] == (1, 6) and entries[2].is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    # stage 1 trains on global captions: other prompt embeddings, another folder
    train(_cfg(tiny_cookgen, tmp_path / "d", cache, "train.max_steps=1", "train.stage=global"), progress=False)
    other, now, _ = _encoded(caplog)
    assert other.parent == folder.parent and other != folder and now == 6


def test_each_sample_draws_by_its_place_in_the_step_not_by_the_process(tiny_cookgen, tmp_path):
    from anchors.train import AnchorsTask

    cfg = _cfg(tiny_cookgen, tmp_path / "run", "train.p_condition=1.0", "train.caption_dropout=0.5")
    task = AnchorsTask(cfg, tmp_path / "run", progress=False)
    net = task.build(torch.device("cpu"))
    assert next(net.parameters()).device.type == "cpu"
    task.global_batch(3, 0, 2, cfg.seed)  # micro-batch 0 of step 3
    whole = task.batch([4, 1], [0, 1], 3, torch.device("cpu"))  # one process: both samples
    share = task.batch([1], [1], 3, torch.device("cpu"))  # the second process's share: position 1
    for k in ("latents", "text", "conditions", "mask", "sigma", "noise"):
        assert torch.equal(whole[k][1:], share[k]), k
    assert not torch.equal(whole["noise"][0], share["noise"][0])  # position 0 draws its own
    # another step, or another micro-batch of the same step, draws anew
    later = task.batch([1], [1], 4, torch.device("cpu"))
    task.global_batch(3, 1, 2, cfg.seed)
    micro = task.batch([1], [1], 3, torch.device("cpu"))
    assert not torch.equal(later["noise"], share["noise"]) and not torch.equal(micro["noise"], share["noise"])
    # over many draws: masks follow the stage, some captions are dropped (the empty caption's embedding)
    draws = [task.batch([0], [p], s, torch.device("cpu")) for s in range(4) for p in range(8)]
    assert all(d["mask"].sum() < 4 for d in draws) and sum(d["mask"].sum() > 0 for d in draws) > len(draws) // 2
    dropped = [torch.equal(d["text"][0], task.empty.float()) for d in draws]
    assert 0 < sum(dropped) < len(dropped)


def test_prompt_embeddings_are_cached_without_their_padding(tiny_anchors):
    from anchors.train import pad_text, trim_text

    states = tiny_anchors.text(["", "Stir."])  # [2, 96, D]: zeros past each prompt
    for s in states:
        short = trim_text(s)
        assert short.shape[0] < 10 and torch.equal(pad_text(short, 96), s)


def test_a_bf16_run_trains_fp32_weights_and_generates(tiny_cookgen, story_file, tmp_path, capsys):
    """precision=bf16: the forwards run under autocast (the widened patch embedding and the condition embeddings
    included), the text encoder is bf16, the trained weights stay fp32, and the checkpoint generates."""
    from anchors.cli import main
    from auteur.plan import load_plan

    final = train(_cfg(tiny_cookgen, tmp_path / "run", "precision=bf16", "train.max_steps=2"), progress=False)
    weights = load_file(str(final / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values())
    (folder,) = (tmp_path / "run" / "latents").iterdir()
    entry = load_file(str(next(folder.glob("*.safetensors"))))
    assert entry["text"].dtype == torch.bfloat16 and entry["latents"].dtype == torch.float32
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(log) == 3 and all(float(r.split(",")[2]) > 0 for r in log[1:])  # finite losses
    out = tmp_path / "plan"
    argv = ["generate", "--story", str(story_file), "--preset", str(final), "--out", str(out), "generate.embed=false"]
    assert main(argv) == 0
    assert len(load_plan(out).steps) == 4


def test_stages_chain_with_init_from(tiny_cookgen, tmp_path):
    import json

    stage1 = train(_cfg(tiny_cookgen, tmp_path / "s1", "train.stage=global", "train.max_steps=2"), progress=False)
    # stage 2 from stage 1's final model; with lr 0 it keeps exactly what it started from
    cfg = _cfg(tiny_cookgen, tmp_path / "s2", f"train.init_from={stage1}", "train.lr=0", "train.max_steps=1")
    stage2 = train(cfg, progress=False)
    a, b = load_file(str(stage1 / "model.safetensors")), load_file(str(stage2 / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((stage2 / "anchors.json").read_text())
    assert meta["init_from"] == str(stage1) and meta["stage"] == "multievent" and meta["format"] == "anchors/1"
