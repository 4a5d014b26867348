"""The `paper` preset's loading path (`FluxFillPipeline.from_pretrained(flux.model)`), run end to end.

No FLUX.1 Fill weights exist offline, so the folder the paper preset loads is stood in for by a tiny random
model saved in the diffusers layout: it tests the loading path, not the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from auteur.config import load_config
from auteur.plan import load_plan
from renderer.cli import main
from renderer.config import PRESETS, RenderConfig
from tests.renderer.conftest import make_plan, tiny_space

#: the paper preset kept tiny and CPU-friendly; its bf16 and cpu_offload stay as they are unless a test says
#: otherwise (without a GPU the offload is skipped), its adapter, LoRA and guidance too
TINY_PAPER = [
    "--size",
    "32x32",
    "flux.max_sequence_length=64",
    "flux.num_inference_steps=2",
    "vision.backend=open_clip_json",  # the plan's visual space (paper: ViT-L-14, no weights offline)
    "vision.model_json=tiny_open_clip",
    "vision.model_name=tiny_open_clip",
]


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory) -> Path:
    """A tiny random model saved in the diffusers layout: it tests the loading path, not the weights.

    The tiny preset's own components in a ``FluxFillPipeline``, written by ``save_pretrained`` as
    FLUX.1-Fill-dev's folder is laid out: ``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/``
    (CLIP), ``text_encoder_2/`` (T5), ``tokenizer/``, ``tokenizer_2/``, ``scheduler/``.
    """
    from diffusers import FluxFillPipeline

    from renderer.flux import _tiny_components

    cfg = load_config(RenderConfig, "tiny", preset_dir=PRESETS)
    folder = tmp_path_factory.mktemp("weights") / "FLUX.1-Fill-dev"
    FluxFillPipeline(**_tiny_components(cfg.flux)).save_pretrained(folder)
    return folder


def test_saved_folder_has_the_published_layout(flux_folder: Path):
    index = json.loads((flux_folder / "model_index.json").read_text())
    parts = {"transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"}
    assert index["_class_name"] == "FluxFillPipeline" and parts <= set(index)
    assert all((flux_folder / p).is_dir() for p in parts)
    assert (flux_folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (flux_folder / "text_encoder_2" / "model.safetensors").is_file()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_paper_pipeline_loads_the_saved_weights_in_the_configured_dtype(flux_folder: Path, dtype: str):
    from renderer.flux import _tiny_components, build_pipeline

    cfg = load_config(RenderConfig, "paper", [f"flux.model={flux_folder}", f"flux.dtype={dtype}"], preset_dir=PRESETS)
    assert cfg.flux.kind == "pretrained" and cfg.flux.cpu_offload  # the paper preset's, kept
    pipe = build_pipeline(cfg.flux)
    want = torch.bfloat16 if dtype == "bf16" else torch.float32
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert getattr(pipe, name).dtype == want, name
    assert pipe.model_id == str(flux_folder) and pipe.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    built = _tiny_components(load_config(RenderConfig, "tiny", preset_dir=PRESETS).flux)
    for name in ("transformer", "text_encoder_2"):  # every tensor as saved (rounded to the dtype)
        saved = built[name].state_dict()
        for key, value in getattr(pipe, name).state_dict().items():
            assert torch.equal(value, saved[key].to(want)), (name, key)


def test_paper_render_from_the_saved_folder(flux_folder: Path, tmp_path: Path, capsys):
    space = tiny_space()
    torch.manual_seed(0)
    plan_dir = make_plan(tmp_path / "plan", torch.randn(3, space.dim), space)
    argv = ["render", plan_dir, "--preset", "paper", f"flux.model={flux_folder}", "flux.dtype=fp32", *TINY_PAPER]
    rc = main([str(a) for a in [*argv, "--no-progress"]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "3 keyframes rendered" in out
    plan = load_plan(plan_dir)
    prov = plan.provenance["renderer"]
    assert prov["kind"] == "flux-fill" and prov["preset"] == "paper" and prov["model"] == str(flux_folder)
    assert prov["trained"] is False and "label" not in prov and prov["num_inference_steps"] == 2
    for s in plan.steps:
        with Image.open(plan_dir / s.keyframe) as im:
            assert im.size == (32, 32) and im.mode == "RGB" and im.format == "PNG"
        assert s.meta["render"]["model"] == str(flux_folder)
    assert [s.meta["render"]["context_steps"] for s in plan.steps] == [[], [1], [1, 2]]
    # the same renderer again: every keyframe kept
    assert main([str(a) for a in [*argv, "--no-progress"]]) == 0
    assert "0 keyframes rendered, 3 already there" in capsys.readouterr().out


def test_paper_train_then_render_with_its_checkpoint(flux_folder: Path, tiny_cookgen: Path, tmp_path: Path, capsys):
    from auteur.builds import build_space
    from renderer.flux import read_checkpoint_meta

    # README's GPU flow: `renderer train --config paper`, then `renderer render --preset paper --checkpoint`
    run = tmp_path / "run"
    train = ["train", "--config", "paper", f"data={tiny_cookgen}", f"out={run}", f"flux.model={flux_folder}",
             "flux.dtype=fp32", "flux.max_sequence_length=64", "width=32", "height=32", "train.max_steps=1",
             *TINY_PAPER[3:], "--no-progress"]  # fmt: skip
    assert main([str(a) for a in train]) == 0, capsys.readouterr().err
    final = run / "final"
    assert (final / "lora.safetensors").is_file() and (final / "adapter.safetensors").is_file()

    meta = read_checkpoint_meta(final)
    assert meta["base_model"] == str(flux_folder) and meta["lora"]["r"] == 64  # the paper preset's LoRA
    space = build_space(tiny_cookgen)
    torch.manual_seed(1)
    plan_dir = make_plan(tmp_path / "plan", torch.randn(2, space.dim), space, n=2)
    argv = ["render", plan_dir, "--preset", "paper", f"flux.model={flux_folder}", "flux.dtype=fp32", "--checkpoint",
            final, *TINY_PAPER, "--no-progress"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    prov = load_plan(plan_dir).provenance["renderer"]
    assert prov["trained"] is True and prov["checkpoint"] == str(final.resolve()) and prov["model"] == str(flux_folder)


def test_incomplete_folder_is_one_line_on_the_real_stderr(flux_folder: Path, tmp_path: Path, capfd):
    # an interrupted download: the transformer's weights missing. Named before diffusers logs errors of its own
    # (capfd: what the libraries' handlers write to the process's stderr is seen too)
    broken = tmp_path / "partial"
    shutil.copytree(flux_folder, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    space = tiny_space()
    plan_dir = make_plan(tmp_path / "plan", torch.zeros(3, space.dim), space)
    capfd.readouterr()
    argv = ["render", plan_dir, "--preset", "paper", f"flux.model={broken}", "flux.dtype=fp32", *TINY_PAPER]
    assert main([str(a) for a in [*argv, "--no-progress"]]) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: flux.model=") and "no weights in transformer/" in err and err.count("\n") == 1, err
    assert not (plan_dir / "keyframes").exists()
