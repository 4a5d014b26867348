"""The renderer's paper preset at real size on the meta device (:mod:`renderer.meta_check`).

FLUX.1 Fill [dev] is built from its published config with no weights; the renderer's own code (adapter, canvas,
LoRA, ``renderer.train.flow_matching_loss``) runs through it. A changed dimension must fail with a
:class:`~auteur.meta_check.ShapeMismatch` naming both sides, before diffusers meets the tensor.
"""

from __future__ import annotations

import re

import pytest
import torch

from auteur.meta_check import META, Report, ShapeMismatch, build_on_meta, published
from renderer import meta_check
from renderer.adapter import EmbeddingAdapter, append_tokens


@pytest.fixture(scope="module")
def renderer():
    return meta_check.build_paper_meta()


def test_paper_preset_fits_flux_fill(renderer):
    report = Report("renderer")
    meta_check.check_structure(renderer, report)
    meta_check.check_training_step(renderer, report, backward=False)  # the backward graph: tests/auteur (slow)
    assert report["fill channels (noisy, masked, mask)"] == (64, 64, 256) and report["in_channels"] == 384
    assert report["adapter tokens"] == (1, 4, 4096)  # one CLIP embedding -> 4 tokens of T5 width
    assert report["transformer encoder_hidden_states"] == (1, 512 + 4, 4096)
    assert report["transformer pooled_projections"] == (1, 768)
    # the widest training canvas: 3 context panels + the target, 512x512 each -> (2048/16) x (512/16) tokens
    assert report["canvas (W, H)"] == (2048, 512)
    assert report["transformer hidden_states"] == (1, 128 * 32, 384)
    assert report["transformer prediction"] == (1, 128 * 32, 64)
    assert report["loss"] == ()
    # 19 double blocks have to_q/k/v/out, 38 single blocks to_q/k/v (no to_out)
    assert report["lora layers per target"] == str({"to_q": 57, "to_k": 57, "to_v": 57, "to_out.0": 19})


@pytest.mark.parametrize(
    ("part", "key", "value", "message"),
    [
        ("text_encoder_2", "d_model", 4000,
         "the T5 encoder's width (text_encoder_2 d_model) is 4000, but FLUX's joint_attention_dim is 4096"),
        ("vae", "latent_channels", 8,
         "the Fill input (32 noisy + 32 masked-image + 256 mask channels) is 320, "
         "but FluxTransformer2DModel's in_channels (x_embedder input width) is 384"),
        ("transformer", "in_channels", 320,
         "the Fill input (64 noisy + 64 masked-image + 256 mask channels) is 384, "
         "but FluxTransformer2DModel's in_channels (x_embedder input width) is 320"),
        ("text_encoder", "hidden_size", 960,
         "the CLIP text encoder's pooled width is 960, but FLUX's pooled_projection_dim is 768"),
        # one output channel would broadcast silently against the 64-channel target in the MSE
        ("transformer", "out_channels", 1,
         "FLUX's output width (proj_out) is 1, but the packed latent width it predicts is 64"),
    ],
)  # fmt: skip
def test_a_changed_published_dimension_is_named(renderer, monkeypatch, part, key, value, message):
    # the part built from the published config with one value changed, the rest as published
    entry = published("flux_fill")[part]
    entry[key] = value
    monkeypatch.setattr(renderer.pipe, part, build_on_meta(entry, torch.bfloat16))
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_structure(renderer, Report("renderer"))


def test_a_changed_published_config_fails_the_whole_check():
    config = published("flux_fill")
    config["text_encoder_2"]["d_model"] = 4000
    with pytest.raises(ShapeMismatch, match=re.escape("text_encoder_2 d_model) is 4000")):
        meta_check.check_paper_shapes(config)


@pytest.mark.parametrize(
    ("dim", "joint", "message"),
    [
        (768, 4000, "the adapter's token width is 4000, but FLUX's joint_attention_dim is 4096"),
        (1280, 4096, "the adapter's input width is 1280, but the visual space (meta/open_clip/ViT-L-14) is 768"),
    ],
)
def test_an_adapter_of_another_size_is_named(renderer, monkeypatch, dim, joint, message):
    with torch.device(META):
        monkeypatch.setattr(renderer, "adapter", EmbeddingAdapter(dim, joint, 4, 3072))
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_structure(renderer, Report("renderer"))


def test_a_panel_size_that_does_not_fit_is_named(renderer, monkeypatch):
    monkeypatch.setattr(renderer, "cfg", meta_check.paper_config(["width=500"]))
    with pytest.raises(ShapeMismatch, match=re.escape("size 500x512 is not divisible by the model's patch size 16")):
        meta_check.check_structure(renderer, Report("renderer"))


def test_a_lora_target_flux_lacks_is_named():
    # peft only fails when no target matches at all: to_q matches, so to_qkv alone would be dropped silently
    message = "LoRA target(s) to_qkv match no module of FluxTransformer2DModel"
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_paper_shapes(overrides=["lora.target_modules=[to_q,to_qkv]"], backward=False)


def test_append_tokens_refuses_another_token_width():
    with pytest.raises(ValueError, match=re.escape("adapter tokens [1, 4, 8] do not fit prompt_embeds [1, 5, 6]")):
        append_tokens(torch.zeros(1, 5, 6), torch.zeros(1, 4, 8))
    embeds, ids = append_tokens(torch.zeros(2, 5, 6), torch.zeros(2, 4, 6))
    assert embeds.shape == (2, 9, 6) and ids.shape == (9, 3)
