import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from auteur.config import load_config
from auteur.plan import load_plan
from tests.videogen.conftest import make_plan
from videogen.cli import main
from videogen.config import PRESETS, VideogenConfig
from videogen.train import FlowMatchingTrainer, SimulatedKill, load_samples, train
from videogen.wan import WanGenerator


def _cfg(data, out, *extra):
    return load_config(VideogenConfig, "tiny", [f"data={data}", f"out={out}", *extra], preset_dir=PRESETS)


def test_a_few_steps_lower_the_flow_matching_loss(tiny_cookgen_clips, tmp_path):
    cfg = _cfg(tiny_cookgen_clips, tmp_path / "run")
    samples, space = load_samples(cfg)
    assert len(samples) == 6 and samples[0]["video"].shape == (3, 9, 32, 32)
    model = FlowMatchingTrainer(cfg, space)
    n_lora = sum(p.numel() for p in model.transformer.parameters() if p.requires_grad)
    assert n_lora > 0 and all("lora" in n for n, p in model.transformer.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)

    def fixed_loss():
        with torch.no_grad():
            return float(model.loss(samples[:2], torch.Generator().manual_seed(123)))

    before = fixed_loss()
    for step in range(8):
        loss = model.loss(samples[:2], torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert fixed_loss() < before * 0.95


def test_train_resumes_to_the_same_weights_and_generate_uses_the_checkpoint(tiny_cookgen_clips, tmp_path, capsys):
    # LoRA dropout > 0 draws from the global RNG every step: a resume must restore the RNG states too
    full = train(_cfg(tiny_cookgen_clips, tmp_path / "full", "lora.dropout=0.1"), progress=False)
    with pytest.raises(SimulatedKill):
        train(_cfg(tiny_cookgen_clips, tmp_path / "cut", "lora.dropout=0.1"), stop_after=3, progress=False)
    ckpt = tmp_path / "cut" / "checkpoints" / "step-000002"
    assert {"lora.safetensors", "projector.safetensors", "optimizer.pt", "rng.pt", "state.json"} <= {
        f.name for f in ckpt.iterdir()
    }
    torch.manual_seed(123)  # a resumed process starts from another RNG state: resume must restore its own
    resumed = train(_cfg(tiny_cookgen_clips, tmp_path / "cut", "lora.dropout=0.1"), progress=False)
    for f in ("lora.safetensors", "projector.safetensors"):
        a, b = load_file(str(full / f)), load_file(str(resumed / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the trained LoRA moved away from its zero init
    assert any(v.abs().sum() > 0 for k, v in load_file(str(full / "lora.safetensors")).items() if "lora_B" in k)

    plan = make_plan(tmp_path / "plan", dim=32)  # the tiny open_clip space has dim 32
    space = json.loads((full / "videogen.json").read_text())["space"]
    p = json.loads((plan / "plan.json").read_text())
    p["embedding_space"] = space
    (plan / "plan.json").write_text(json.dumps(p))
    save_file({"embeddings": torch.randn(3, space["dim"])}, str(plan / "embeddings.safetensors"),
              metadata={"space": space["name"], "dim": str(space["dim"])})  # fmt: skip
    assert main(["generate", str(plan), "--preset", "tiny", "--checkpoint", str(full), "--no-progress"]) == 0
    assert load_plan(plan).provenance["videogen"]["trained"] is True
    # generation runs the LoRA in eval mode: its dropout does not act, whatever the global RNG holds
    cfg = load_config(VideogenConfig, "tiny", [f"checkpoint={full}"], preset_dir=PRESETS)
    gen = WanGenerator(cfg, load_plan(plan).space)
    clips = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        clips.append(gen.clip(Image.new("RGB", (32, 32), (200, 30, 30)), "a cook", torch.ones(space["dim"]), 9, 0))
    assert np.array_equal(*clips)
    # LoRA keys that do not fit (another prefix) would load nothing: an error, not a silent untrained model
    bad = tmp_path / "bad"
    shutil.copytree(full, bad)
    lora = load_file(str(bad / "lora.safetensors"))
    save_file({f"transformer.{k}": v for k, v in lora.items()}, str(bad / "lora.safetensors"))
    capsys.readouterr()
    assert main(["generate", str(plan), "--preset", "tiny", "--checkpoint", str(bad), "--no-progress"]) == 2
    assert "LoRA keys do not fit the model" in capsys.readouterr().err


def test_train_bad_inputs(tmp_path, capsys):
    assert main(["train", "--config", "tiny", f"data={tmp_path / 'none'}", f"out={tmp_path / 'r'}"]) == 2
    assert "training data folder not found" in capsys.readouterr().err
    assert main(["train", "--config", "tiny", "train.frames=8", f"data={tmp_path}", f"out={tmp_path / 'r'}"]) == 2
    assert "divisible by 4" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_train_bad_data_or_model_leaves_no_run_folder(tiny_cookgen_no_clips, tiny_cookgen_clips, tmp_path, capsys):
    # a CookGen build without clips: found when the samples load, before the run folder is made
    out = tmp_path / "runs" / "r"
    assert main(["train", "--config", "tiny", f"data={tiny_cookgen_no_clips}", f"out={out}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no steps with a clip, keyframe and embedding" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()
    # weights that are not there: found when the model loads; the run folders made for it are removed again
    argv = ["train", "--config", "tiny", f"data={tiny_cookgen_clips}", f"out={out}", "wan.source=pretrained",
            f"wan.model_id={tmp_path / 'no-wan'}", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "cannot load Wan from" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()  # a folder that was there before is kept
    assert main(argv) == 2 and sorted(tmp_path.iterdir()) == [tmp_path / "runs"]
    assert not any((tmp_path / "runs").iterdir())


def test_every_preset_loads_and_ablations_switch_only_the_regularisers():
    from auteur.config import list_presets

    names = list_presets(PRESETS)
    assert {"tiny", "default", "paper"} <= set(names)
    cfgs = {n: load_config(VideogenConfig, n, preset_dir=PRESETS) for n in names}
    assert cfgs["default"].backend == "animatic" and cfgs["tiny"].backend == "wan"
    rows = {
        n: (c.regularize.noise, c.regularize.mask, c.regularize.shuffle) for n, c in cfgs.items() if "ablation" in n
    }
    assert rows == {
        "ablation-none": (False, False, False),
        "ablation-noise": (True, False, False),
        "ablation-noise-mask": (True, True, False),
        "ablation-noise-mask-shuffle": (True, True, True),
    }
    for n in rows:
        assert cfgs[n].wan == cfgs["paper"].wan and cfgs[n].lora == cfgs["paper"].lora


def test_bf16_keeps_the_frozen_text_encoder_in_bf16_and_its_prompts_in_fp32(tiny_cookgen_clips, tmp_path):
    cfg = _cfg(tiny_cookgen_clips, tmp_path / "run", "precision=bf16")
    samples, space = load_samples(cfg)
    model = FlowMatchingTrainer(cfg, space)
    assert {p.dtype for p in model.text_encoder.parameters()} == {torch.bfloat16}
    assert model._prompts([samples[0]["caption"]]).dtype == torch.float32  # what the fp32 transformer reads
    assert all(p.dtype == torch.float32 for p in model.transformer.parameters() if p.requires_grad)
