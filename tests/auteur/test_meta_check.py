"""auteur.meta_check: the published configs file and the shared helpers of the meta-device shape checks.

Each stage's check runs in ``tests/<stage>/test_paper_shapes.py``; here the values of ``paper_shapes.json`` are
held against the sources installed in the environment where they exist there too, and the helpers are tested
at toy size.
"""

from __future__ import annotations

import inspect
import json
import re
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from torch import nn

from auteur import meta_check
from auteur.meta_check import (
    PAPER_SHAPES,
    ShapeMismatch,
    check_lora_targets,
    constructor_kwargs,
    expect,
    expect_shape,
    mask_values_unknown,
    published,
)

MODELS = ("flux_fill", "wan_i2v_14b_480p", "wan_t2v_1_3b", "qwen2_vl_7b_instruct")


def _entries():
    data = json.loads(PAPER_SHAPES.read_text())
    return [(m, part, entry) for m in MODELS for part, entry in data[m].items() if isinstance(entry, dict)]


@pytest.mark.parametrize(("model", "part", "entry"), _entries(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_entry_names_its_class_and_source(model, part, entry):
    assert entry["_source"].strip(), f"{model}.{part} names no source"
    assert entry["_class"].split(".")[0] in ("diffusers", "transformers")
    assert all(not k.startswith("_") for k in constructor_kwargs(entry))
    for key in entry.get("_unverified", {}):  # a note for each value that could not be read from a source
        assert key == "*" or key in entry, f"{model}.{part}: _unverified names {key!r}, which it does not set"


def test_the_values_agree_with_the_installed_sources():
    """Where the environment ships the same architecture (open_clip's configs, diffusers' and transformers'
    defaults documented as these models), the file says the same."""
    from diffusers import AutoencoderKLWan, FluxTransformer2DModel
    from transformers import Qwen2VLConfig

    def open_clip_config(name: str) -> dict:  # read beside the package, without importing open_clip (slow)
        folder = Path(find_spec("open_clip").submodule_search_locations[0]) / "model_configs"
        return json.loads((folder / f"{name}.json").read_text())

    assert published("clip_vit_l_14")["embed_dim"] == open_clip_config("ViT-L-14")["embed_dim"] == 768
    text = open_clip_config("ViT-L-14-quickgelu")["text_cfg"]
    clip = published("flux_fill")["text_encoder"]
    assert (clip["hidden_size"], clip["num_attention_heads"], clip["num_hidden_layers"]) == (
        text["width"], text["heads"], text["layers"])  # fmt: skip
    assert (clip["vocab_size"], clip["max_position_embeddings"], clip["intermediate_size"]) == (
        text["vocab_size"], text["context_length"], 4 * text["width"])  # fmt: skip
    defaults = {k: p.default for k, p in inspect.signature(AutoencoderKLWan.__init__).parameters.items()}
    for model in ("wan_i2v_14b_480p", "wan_t2v_1_3b"):  # the Wan 2.1 VAE is AutoencoderKLWan()'s defaults
        assert constructor_kwargs(published(model)["vae"]) == {
            k: defaults[k] for k in constructor_kwargs(published(model)["vae"])
        }
    flux = {k: p.default for k, p in inspect.signature(FluxTransformer2DModel.__init__).parameters.items()}
    fill = published("flux_fill")["transformer"]
    for key in ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                "joint_attention_dim", "pooled_projection_dim", "patch_size"):  # fmt: skip
        assert fill[key] == flux[key], key  # the FLUX.1 [dev] transformer; Fill changes only in/out channels
    assert tuple(fill["axes_dims_rope"]) == tuple(flux["axes_dims_rope"])
    vision = Qwen2VLConfig().vision_config  # documented as Qwen/Qwen2-VL-7B-Instruct's
    for key, value in published("qwen2_vl_7b_instruct")["model"]["vision_config"].items():
        assert getattr(vision, key) == value, key


def test_expect_names_both_sides():
    expect("x", 3, 3, "y")
    with pytest.raises(ShapeMismatch, match=re.escape("the adapter's width is 4000, but FLUX's joint dim is 4096")):
        expect("the adapter's width", 4000, 4096, "FLUX's joint dim")
    expect_shape("t", torch.zeros(2, 3), (2, None), "[2, *]")
    with pytest.raises(ShapeMismatch, match=re.escape("t has shape [2, 3], but [2, *, 4] is [2, *, 4]")):
        expect_shape("t", torch.zeros(2, 3), (2, None, 4), "[2, *, 4]")


def test_check_lora_targets_finds_missing_and_stray_targets():
    from peft import LoraConfig, inject_adapter_in_model

    model = nn.ModuleDict(
        {"text": nn.ModuleDict({"q_proj": nn.Linear(4, 4)}), "vision": nn.ModuleDict({"qkv": nn.Linear(4, 4)})}
    )
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj", "qkv"]), model)
    assert check_lora_targets(model, ["q_proj", "qkv"], "a toy") == {"q_proj": 1, "qkv": 1}
    with pytest.raises(ShapeMismatch, match=re.escape("LoRA target(s) v_proj match no module of a toy")):
        check_lora_targets(model, ["q_proj", "v_proj"], "a toy")
    with pytest.raises(ShapeMismatch, match=re.escape("LoRA was added outside text of a toy: vision.qkv")):
        check_lora_targets(model, ["q_proj"], "a toy", within="text")


def test_mask_values_unknown_only_on_meta_and_only_inside():
    from transformers import masking_utils

    original = masking_utils.is_tracing
    with mask_values_unknown():
        assert masking_utils.is_tracing(torch.ones(2, device="meta"))
        assert not masking_utils.is_tracing(torch.ones(2))
    assert masking_utils.is_tracing is original


def test_main_refuses_an_unknown_stage(capsys):
    assert meta_check.main(["renderer", "nope"]) == 2
    assert "unknown stage(s) nope" in capsys.readouterr().err


@pytest.mark.slow
def test_every_stage_with_its_backward_graph(capsys):
    """``python -m auteur.meta_check``: the four checks as a researcher runs them, backward graphs included."""
    assert meta_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("trainable tensors with gradients") == 4
