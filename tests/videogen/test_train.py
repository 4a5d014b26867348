import pytest
import torch
from safetensors.torch import load_file

from auteur.config import load_config
from auteur.plan import load_plan
from tests.videogen.conftest import make_plan
from videogen.cli import main
from videogen.config import PRESETS, VideogenConfig
from videogen.train import FlowMatchingTrainer, SimulatedKill, load_samples, train


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


def test_train_resumes_to_the_same_weights_and_generate_uses_the_checkpoint(tiny_cookgen_clips, tmp_path):
    full = train(_cfg(tiny_cookgen_clips, tmp_path / "full"), progress=False)
    with pytest.raises(SimulatedKill):
        train(_cfg(tiny_cookgen_clips, tmp_path / "cut"), stop_after=3, progress=False)
    assert (tmp_path / "cut" / "checkpoints" / "step-000002").is_dir()
    resumed = train(_cfg(tiny_cookgen_clips, tmp_path / "cut"), progress=False)
    for f in ("lora.safetensors", "projector.safetensors"):
        a, b = load_file(str(full / f)), load_file(str(resumed / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the trained LoRA moved away from its zero init
    assert any(v.abs().sum() > 0 for k, v in load_file(str(full / "lora.safetensors")).items() if "lora_B" in k)

    plan = make_plan(tmp_path / "plan", dim=32)  # the tiny open_clip space has dim 32
    import json

    from safetensors.torch import save_file

    space = json.loads((full / "videogen.json").read_text())["space"]
    p = json.loads((plan / "plan.json").read_text())
    p["embedding_space"] = space
    (plan / "plan.json").write_text(json.dumps(p))
    save_file({"embeddings": torch.randn(3, space["dim"])}, str(plan / "embeddings.safetensors"),
              metadata={"space": space["name"], "dim": str(space["dim"])})  # fmt: skip
    assert main(["generate", str(plan), "--preset", "tiny", "--checkpoint", str(full), "--no-progress"]) == 0
    assert load_plan(plan).provenance["videogen"]["trained"] is True


def test_train_bad_inputs(tmp_path, capsys):
    assert main(["train", "--config", "tiny", f"data={tmp_path / 'none'}", f"out={tmp_path / 'r'}"]) == 2
    assert "training data folder not found" in capsys.readouterr().err
    assert main(["train", "--config", "tiny", "train.frames=8", f"data={tmp_path}", f"out={tmp_path / 'r'}"]) == 2
    assert "divisible by 4" in capsys.readouterr().err


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
