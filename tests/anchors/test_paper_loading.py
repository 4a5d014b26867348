"""The `paper` preset's loading path (a local diffusers Wan 2.1 T2V folder, `model.pretrained`), run end to end.

No Wan weights exist offline, so the folder the paper preset loads is stood in for by a tiny random model saved
in the diffusers layout: it tests the loading path, not the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from anchors.cli import main
from anchors.config import PRESETS, AnchorsConfig
from auteur.config import load_config
from auteur.plan import load_plan

#: the paper preset kept tiny and CPU-friendly (its guidance 5.0, 512 text tokens and condition MLPs stay)
TINY_PAPER = [
    "model.height=32",
    "model.width=32",
    "generate.steps=2",
    "vision.backend=open_clip_json",  # the plan's embeddings (paper: EfficientNet-Lite0)
    "vision.model_json=tiny_open_clip",
    "vision.model_name=tiny_open_clip",
]
TEXT_LAYERS = 2  # UMT5 gives each layer its own relative-attention bias: with two, a T5 class would drop one


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory) -> Path:
    """A tiny random model saved in the diffusers layout: it tests the loading path, not the weights.

    The tiny preset's transformer, VAE and tokenizer with a tiny UMT5 text encoder (what Wan ships; the tiny
    preset builds a T5) in a ``WanPipeline`` written by ``save_pretrained`` as Wan2.1-T2V-1.3B-Diffusers is laid
    out: ``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``.
    """
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from anchors.model import _tiny_components

    cfg = load_config(AnchorsConfig, "tiny", preset_dir=PRESETS).model
    transformer, vae, text = _tiny_components(cfg)
    x = cfg.text
    torch.manual_seed(0)
    umt5 = UMT5EncoderModel(
        UMT5Config(vocab_size=len(text.tokenizer), d_model=x.d_model, d_kv=x.d_kv, d_ff=x.d_ff, num_layers=TEXT_LAYERS,
                   num_heads=x.num_heads, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    ).eval()  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    pipe = WanPipeline(
        tokenizer=text.tokenizer, text_encoder=umt5, vae=vae, transformer=transformer, scheduler=scheduler
    )
    folder = tmp_path_factory.mktemp("weights") / "Wan2.1-T2V-1.3B-Diffusers"
    pipe.save_pretrained(folder)
    return folder


def test_paper_model_loads_the_saved_components(wan_folder: Path):
    from transformers import UMT5EncoderModel

    from anchors.model import _tiny_components, build_anchors

    index = json.loads((wan_folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    cfg = load_config(AnchorsConfig, "paper", [f"model.pretrained={wan_folder}", *TINY_PAPER], preset_dir=PRESETS)
    anchors = build_anchors(cfg.model)
    assert anchors.model_id == str(wan_folder)
    encoder = anchors.text.encoder
    assert isinstance(encoder, UMT5EncoderModel) and encoder.config.num_layers == TEXT_LAYERS
    saved = UMT5EncoderModel.from_pretrained(wan_folder / "text_encoder").eval()
    prompts = ["Subjects: a cook. Events: (1) frame 1: Drain the tuna.", ""]
    ids = anchors.text.tokenizer(prompts, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = saved(**ids).last_hidden_state * ids["attention_mask"][..., None]
    assert torch.equal(anchors.text(prompts), ref)  # every layer's relative-attention bias loaded
    built, _, _ = _tiny_components(load_config(AnchorsConfig, "tiny", preset_dir=PRESETS).model)
    loaded = anchors.net.transformer.state_dict()
    for key, value in built.state_dict().items():  # the widened patch embedding keeps the original as `base`
        name = key.replace("patch_embedding.", "patch_embedding.base.")
        assert torch.equal(loaded[name], value), key
    assert anchors.net.transformer.dtype == anchors.vae.dtype == encoder.dtype == torch.float32


def test_paper_generate_from_the_saved_folder(wan_folder: Path, story_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "plan"
    argv = ["generate", "--story", story_file, "--preset", "paper", "--out", out, f"model.pretrained={wan_folder}"]
    rc = main([str(a) for a in [*argv, *TINY_PAPER]])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "4 story frames (0 given)" in stdout and "UNTRAINED" not in stdout
    plan = load_plan(out)
    assert len(plan.steps) == 4 and plan.embeddings.shape == (4, plan.space.dim)
    for s in plan.steps:
        with Image.open(out / s.keyframe) as im:
            assert im.size == (32, 32) and im.format == "PNG"
    prov = plan.provenance
    assert prov["preset"] == "paper" and prov["models"]["anchors_base"] == str(wan_folder)
    assert prov["models"]["anchors_trained"] is False
    assert (out / "latents.safetensors").is_file() and (out / "config.yaml").is_file()


def test_incomplete_folder_is_one_line(wan_folder: Path, story_file: Path, tmp_path: Path, capfd):
    # an interrupted download (the transformer's weights missing), then a text encoder of another kind: one line,
    # no traceback (capfd: what the libraries' handlers write to the process's stderr is seen too)
    broken = tmp_path / "partial"
    shutil.copytree(wan_folder, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    out = tmp_path / "plan"
    argv = ["generate", "--story", story_file, "--preset", "paper", "--out", out, f"model.pretrained={broken}"]
    capfd.readouterr()
    assert main([str(a) for a in [*argv, *TINY_PAPER]]) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: ") and "missing weights in transformer/" in err and err.count("\n") == 1, err
    shutil.copytree(wan_folder / "transformer", broken / "transformer", dirs_exist_ok=True)
    config = json.loads((broken / "text_encoder" / "config.json").read_text())
    (broken / "text_encoder" / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    assert main([str(a) for a in [*argv, *TINY_PAPER]]) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: ") and "a BertModel, not one of" in err and err.count("\n") == 1, err
    assert not out.exists()
