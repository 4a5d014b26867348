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
    assert first.frames.shape == (4, 3, 32, 32) and first.frames.min() >= -1 and first.frames.max() <= 1
    assert [(e.text, e.frames) for e in first.story.events] == [
        ("Drain the tuna.", 2),
        ("Mix tuna with mayonnaise.", 2),
    ]
    assert "(1) frames 1-2: Drain the tuna. (2) frames 3-4: Mix tuna with mayonnaise." in multi_event_caption(
        first.story
    )
    fps, interval, motion, w, h, n = first.conditions.tolist()
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
        fps, interval = s.conditions[:2].tolist()
        assert fps == pytest.approx(8.0) and interval == pytest.approx(8.0)  # 1 s at 8 fps
        assert [e.frames for e in s.story.events] == [1, 1, 1]
    # uneven spacing (two frames 0.3 s apart in step 1, then step 2's first frame 0.7 s later): the interval fed
    # is the window's own mean spacing in source frames
    cfg = replace(tiny_cfg.dataset, interval_seconds=0.3, num_frames=3, stride=1)
    first = load_story_samples([str(tiny_cookgen)], "train", cfg, 32, 32)[0]
    assert first.times == pytest.approx([0.15, 0.45, 1.15])
    assert float(first.conditions[1]) == pytest.approx((1.15 - 0.15) / 2 * 8.0)


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
    assert log[0] == "step,loss,lr,seconds" and [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4"]
