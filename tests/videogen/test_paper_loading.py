"""The `paper` preset's loading path (a local diffusers Wan 2.1 I2V folder, `wan.model_id`), run end to end.

No Wan weights exist offline, so the folder the paper preset loads is stood in for by a tiny random model saved
in the diffusers layout: it tests the loading path, not the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from auteur.config import load_config
from auteur.plan import load_plan
from auteur.video import decode_all, probe
from tests.videogen.conftest import make_plan
from videogen.cli import main
from videogen.config import PRESETS, VideogenConfig

#: the paper preset kept tiny and CPU-friendly (its guidance 5.0, flow shift 3.0 and 512 text tokens stay)
TINY_PAPER = ["--frames", "5", "wan.height=32", "wan.width=32", "wan.num_inference_steps=2", "precision=fp32"]


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory) -> Path:
    """A tiny random model saved in the diffusers layout: it tests the loading path, not the weights.

    The tiny preset's own components in a ``WanImageToVideoPipeline`` written by ``save_pretrained`` as
    diffusers' Wan converter writes Wan2.1-I2V-14B-480P-Diffusers: ``model_index.json``, ``transformer/``
    (sharded, with its index), ``vae/``, ``text_encoder/`` (UMT5, saved in bf16), ``tokenizer/``, ``scheduler/``
    (``UniPCMultistepScheduler``, flow prediction, flow shift 3.0), ``image_encoder/`` (CLIP vision) and
    ``image_processor/``.
    """
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from videogen.wan import build_components

    cfg = load_config(VideogenConfig, "tiny", preset_dir=PRESETS)
    comps = build_components(cfg.wan)
    comps["text_encoder"].to(torch.bfloat16)
    comps["scheduler"] = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    torch.manual_seed(0)
    d = cfg.wan.image_dim
    vision = CLIPVisionConfig(hidden_size=d, projection_dim=d, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, intermediate_size=16, patch_size=1)  # fmt: skip
    pipe = WanImageToVideoPipeline(
        image_encoder=CLIPVisionModelWithProjection(vision).eval().to(torch.bfloat16),
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
        **comps,
    )
    folder = tmp_path_factory.mktemp("weights") / "Wan2.1-I2V-14B-480P-Diffusers"
    pipe.save_pretrained(folder, max_shard_size="100KB")  # the 14B transformer comes in shards too
    return folder


def test_saved_folder_has_the_published_layout(wan_folder: Path):
    index = json.loads((wan_folder / "model_index.json").read_text())
    parts = ["transformer", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder", "image_processor"]
    assert index["_class_name"] == "WanImageToVideoPipeline" and all((wan_folder / p).is_dir() for p in parts)
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    assert (wan_folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((wan_folder / "transformer").glob("diffusion_pytorch_model-*.safetensors"))) > 1


def _space():
    from auteur.plan import VisualSpace

    return VisualSpace("test/random", 8)  # conftest's make_plan


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_paper_components_load_as_saved_in_the_configured_dtype(wan_folder: Path, precision: str):
    from diffusers import UniPCMultistepScheduler

    from videogen.wan import WanGenerator, build_components

    over = [f"wan.model_id={wan_folder}", f"precision={precision}", "wan.flow_shift=5.0"]
    cfg = load_config(VideogenConfig, "paper", over, preset_dir=PRESETS)
    gen = WanGenerator(cfg, space=_space())
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert gen.pipe.transformer.dtype == want and gen.text_encoder.dtype == want
    assert gen.pipe.vae.dtype == torch.float32  # decoding stays in float32
    # the folder's own scheduler (a UniPC config read into FlowMatchEuler lost its shift: 1.0, not 3.0)
    sched = gen.pipe.scheduler
    assert isinstance(sched, UniPCMultistepScheduler) and sched.config.flow_shift == 5.0
    assert sched.config.use_flow_sigmas and sched.config.prediction_type == "flow_prediction"
    built = build_components(load_config(VideogenConfig, "tiny", preset_dir=PRESETS).wan)
    # every tensor as saved (the text encoder was saved in bf16), in the dtype it loads in
    for name, stored in [("transformer", torch.float32), ("text_encoder", torch.bfloat16), ("vae", torch.float32)]:
        saved = built[name].state_dict()
        for key, value in gen.pipe.components[name].state_dict().items():
            assert torch.equal(value, saved[key].to(stored).to(value.dtype)), (name, key)


def test_paper_generate_from_the_saved_folder(wan_folder: Path, tmp_path: Path, capsys):
    plan_dir = make_plan(tmp_path / "plan", n=2)
    argv = ["generate", str(plan_dir), "--preset", "paper", f"wan.model_id={wan_folder}", *TINY_PAPER]
    rc = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "2 clips (2 made, 0 kept)" in out and "untrained projector" in out
    plan = load_plan(plan_dir)
    for s in plan.steps:
        info = probe(plan_dir / s.clip)
        assert info.num_frames == 5 and (info.width, info.height) == (32, 32)
        assert s.meta["videogen"]["label"] == f"generated by {wan_folder}" and s.meta["videogen"]["fps"] == 16
    long = np.stack([f for _, f in decode_all(plan_dir / "video.mp4")])
    assert long.shape == (10, 32, 32, 3)
    prov = plan.provenance["videogen"]
    assert prov["preset"] == "paper" and prov["model"] == str(wan_folder) and prov["trained"] is False
    assert (plan_dir / "video.vtt").is_file() and (plan_dir / "videogen.yaml").is_file()
    # the same run again keeps both clips; bf16 is another model: both made again
    assert main([*argv, "--no-progress"]) == 0 and "0 made, 2 kept" in capsys.readouterr().out
    assert main([*argv, "precision=bf16", "--no-progress"]) == 0 and "2 made, 0 kept" in capsys.readouterr().out


def test_incomplete_folder_is_one_line_on_the_real_stderr(wan_folder: Path, tmp_path: Path, capfd):
    # an interrupted download: one transformer shard missing, then all its weights (named before diffusers logs
    # errors of its own); capfd: what the libraries' handlers write to the process's stderr is seen too
    broken = tmp_path / "partial"
    shutil.copytree(wan_folder, broken)
    shards = sorted((broken / "transformer").glob("*.safetensors"))
    plan_dir = make_plan(tmp_path / "plan", n=2)
    argv = ["generate", str(plan_dir), "--preset", "paper", f"wan.model_id={broken}", *TINY_PAPER, "--no-progress"]
    for gone, message in [(shards[-1:], shards[-1].name), (shards, "no weights in transformer/")]:
        for shard in gone:
            shard.unlink(missing_ok=True)
        capfd.readouterr()
        assert main(argv) == 2
        err = capfd.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (plan_dir / "clips").exists()


def test_training_on_the_pretrained_folder_starts_the_same_lora_in_every_run_of_a_seed(wan_folder: Path):
    """The pretrained path builds nothing from a seed, so the LoRA's random A matrices need one of their own."""
    from videogen.train import build_model

    cfg = load_config(VideogenConfig, "paper", [f"wan.model_id={wan_folder}", "precision=fp32"], preset_dir=PRESETS)

    def lora(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)  # whatever the global random state before
        model = build_model(cfg, _space())
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    a, b = lora(1), lora(2)
    assert a and a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_paper_training_runs_from_the_saved_folder_in_bf16(wan_folder: Path, tiny_cookgen_clips: Path, tmp_path):
    """The paper preset (bf16, gradient checkpointing) trains from the folder, every part loaded onto the training
    device (``device_map``); the tiny transformer cast for bf16 training has the dtypes of the pretrained one."""
    from videogen.train import FrozenEncoders, build_model, load_samples, train

    over = [f"wan.model_id={wan_folder}", f"data={tiny_cookgen_clips}", f"out={tmp_path / 'run'}",
            "train.frames=5", "wan.height=32", "wan.width=32", "train.max_steps=2", "train.batch_size=2",
            "train.save_every=2"]  # fmt: skip
    cfg = load_config(VideogenConfig, "paper", over, preset_dir=PRESETS)
    assert cfg.precision == "bf16" and cfg.train.gradient_checkpointing
    _, space = load_samples(cfg)
    pretrained = build_model(cfg, space)
    tiny = build_model(load_config(VideogenConfig, "tiny", ["precision=bf16"], preset_dir=PRESETS), space)
    dtypes = {n: p.dtype for n, p in pretrained.named_parameters()}
    assert dtypes == {n: p.dtype for n, p in tiny.named_parameters()}
    assert {dtypes[n] for n, p in pretrained.named_parameters() if not p.requires_grad} == {torch.bfloat16,
                                                                                            torch.float32}  # fmt: skip
    assert {p.dtype for p in FrozenEncoders(cfg, torch.device("cpu")).text_encoder.parameters()} == {torch.bfloat16}
    final = train(cfg, progress=False)
    meta = json.loads((final / "videogen.json").read_text())
    assert meta["wan"]["model_id"] == str(wan_folder) and meta["precision"] == "bf16" and meta["step"] == 2
    settings = json.loads(next((tmp_path / "run" / "cache").glob("*/settings.json")).read_text())
    assert settings["model"] == {"source": "pretrained", "model_id": str(wan_folder.resolve())}
    assert settings["frames"] == 5 and settings["dtype"] == "torch.bfloat16"
