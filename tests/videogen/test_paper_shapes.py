"""Videogen's paper preset at real size on the meta device (:mod:`videogen.meta_check`).

Wan 2.1 I2V 14B 480P is built from its published config with no weights; videogen's own code (prompt encoding,
projector, the I2V condition of its pipeline, LoRA) runs through it. A changed dimension must fail with a
:class:`~auteur.meta_check.ShapeMismatch` naming both sides, before diffusers meets the tensor.
"""

from __future__ import annotations

import re

import pytest
import torch

from auteur.meta_check import META, Report, ShapeMismatch, build_on_meta, published
from videogen import meta_check
from videogen.errors import VideogenError
from videogen.projector import EmbeddingProjector
from videogen.wan import check_text_tokens


@pytest.fixture(scope="module")
def parts():
    return meta_check.build_paper_meta()


def test_paper_preset_fits_wan_i2v(parts):
    report = Report("videogen")
    meta_check.check_structure(parts, report)
    meta_check.add_training_lora(parts, report)
    meta_check.check_forward(parts, report, backward=False)  # the backward graph: tests/auteur (slow)
    assert report["input channels (latent, mask, condition)"] == (16, 4, 16)
    assert report["prompt_embeds"] == (1, 512, 4096)  # UMT5-XXL, exactly 512 tokens
    # 81 frames of 480x832 -> 21 latent frames of 60x104
    assert report["latents"] == (1, 16, 21, 60, 104)
    assert report["condition (pipeline)"] == (1, 20, 21, 60, 104)  # 4 mask + 16 first-frame latent channels
    assert report["transformer hidden_states"] == (1, 36, 21, 60, 104)
    assert report["transformer encoder_hidden_states_image"] == (1, 32, 1280)  # projector: [1, 768] -> 32 tokens
    assert report["transformer prediction"] == (1, 16, 21, 60, 104)
    assert report["loss"] == ()
    # 40 blocks: self- and cross-attention to_q/k/v/out, the image key/value projections in the cross-attention
    lora = {"to_q": 80, "to_k": 80, "to_v": 80, "to_out.0": 80, "add_k_proj": 40, "add_v_proj": 40}
    assert report["lora layers per target"] == str(lora)


@pytest.mark.parametrize(
    ("part", "key", "value", "message"),
    [
        ("transformer", "in_channels", 32,
         "the I2V input (16 latent + 4 mask + 16 condition channels) is 36, "
         "but WanTransformer3DModel's in_channels (patch_embedding input) is 32"),
        ("text_encoder", "d_model", 2048,
         "the text encoder's width (UMT5 d_model) is 2048, but Wan's text_dim is 4096"),
        ("vae", "z_dim", 8,
         "the I2V input (8 latent + 4 mask + 8 condition channels) is 20, "
         "but WanTransformer3DModel's in_channels (patch_embedding input) is 36"),
    ],
)  # fmt: skip
def test_a_changed_published_dimension_is_named(parts, monkeypatch, part, key, value, message):
    # the part built from the published config with one value changed, the rest as published
    entry = published("wan_i2v_14b_480p")[part]
    entry[key] = value
    monkeypatch.setattr(parts.pipe, part, build_on_meta(entry, parts.pipe.transformer.dtype))
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_structure(parts, Report("videogen"))


def test_a_text_to_video_transformer_is_refused():
    config = published("wan_i2v_14b_480p")
    config["transformer"].update(image_dim=None, added_kv_proj_dim=None, in_channels=16)
    with pytest.raises(ShapeMismatch, match=re.escape("takes no image embeddings (image_dim is null")):
        meta_check.check_paper_shapes(config)


def test_a_projector_of_another_width_is_named(parts, monkeypatch):
    with torch.device(META):
        monkeypatch.setattr(parts, "projector", EmbeddingProjector(768, 1024, 32, 1024))
    message = "the projector's token width (image_embeds) is 1024, but Wan's image_dim is 1280"
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_structure(parts, Report("videogen"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # diffusers would take all but the last 512 context tokens as image tokens: a silent mix-up
        ("wan.max_sequence_length=256", "wan.max_sequence_length=256: Wan I2V needs 512 text tokens"),
        ("frames=80", "Wan cannot generate 80 frames"),
    ],
)
def test_a_preset_that_does_not_fit_is_named(parts, monkeypatch, override, message):
    monkeypatch.setattr(parts, "cfg", meta_check.paper_config([override]))
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_structure(parts, Report("videogen"))


def test_text_tokens_guard():
    check_text_tokens(512, 1280)
    check_text_tokens(77, None)  # text-to-video: no image tokens to split off
    with pytest.raises(VideogenError, match="needs 512 text tokens"):
        check_text_tokens(226, 1280)
