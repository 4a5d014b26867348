"""The anchors paper preset at real size on the meta device (:mod:`anchors.meta_check`).

Wan 2.1 T2V 1.3B is built from its published config with no weights; StoryAnchors' own code (widened patch
embedding, condition embeddings, frame and text encoders, ``anchors.train.flow_matching_loss``) runs through it.
A changed dimension must fail with a :class:`~auteur.meta_check.ShapeMismatch` naming both sides, before
diffusers meets the tensor.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from anchors import meta_check
from anchors.config import PRESETS, AnchorsConfig, AnchorsError
from anchors.model import ConditionEmbedding, build_anchors
from auteur.config import load_config
from auteur.meta_check import META, Report, ShapeMismatch, build_on_meta, published


@pytest.fixture(scope="module")
def anchors():
    return meta_check.build_paper_meta()


def test_paper_preset_fits_wan_t2v(anchors):
    report = Report("anchors")
    meta_check.check_structure(anchors, report)
    meta_check.check_training_step(anchors, report, backward=False)  # the backward graph: tests/auteur (slow)
    assert report["patch embedding input (C, C+1)"] == (16, 17)
    assert report["single-conv patch embedding weight"] == (1536, 33, 1, 2, 2)  # [f, 2c+1, h, w] kernels
    assert report["temb width"] == 1536
    # model.max_frames story frames of 480x832, one latent frame each
    assert report["story latents"] == (1, 16, 16, 60, 104)
    assert report["prompt embeddings"] == (1, 512, 4096)
    assert report["transformer hidden_states"] == (1, 33, 16, 60, 104)
    assert report["condition embedding (added to temb)"] == (1, 1536)
    assert report["velocity prediction"] == (1, 16, 16, 60, 104)
    assert report["loss"] == ()


@pytest.mark.parametrize(
    ("part", "key", "value", "message"),
    [
        ("vae", "z_dim", 32, "the pretrained patch embedding's input channels is 16, but the VAE's z_dim is 32"),
        ("text_encoder", "d_model", 2048,
         "the text encoder's width (UMT5 d_model) is 2048, but Wan's text_dim is 4096"),
    ],
)  # fmt: skip
def test_a_changed_published_dimension_is_named(anchors, monkeypatch, part, key, value, message):
    # the part built from the published config with one value changed, the rest as published
    entry = published("wan_t2v_1_3b")[part]
    entry[key] = value
    built = build_on_meta(entry, torch.float32)
    if part == "text_encoder":  # a submodule: patched in _modules (monkeypatch.setattr restores __dict__ only)
        monkeypatch.setitem(anchors.text._modules, "encoder", built)
    else:
        monkeypatch.setattr(anchors, "vae", built)
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_structure(anchors, Report("anchors"))


def test_a_changed_transformer_fails_the_whole_check():
    config = published("wan_t2v_1_3b")
    config["transformer"]["in_channels"] = 32
    message = "the pretrained patch embedding's input channels is 32, but the VAE's z_dim is 16"
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_paper_shapes(config)


def test_a_patch_embedding_without_the_mask_channel_is_named(anchors, monkeypatch):
    pe = anchors.net.transformer.patch_embedding
    with torch.device(META):  # the new convolution for noisy ‖ condition only: the mask channel forgotten
        extra = nn.Conv3d(16, pe.base.out_channels, pe.base.kernel_size, pe.base.stride, bias=False)
    monkeypatch.setitem(pe._modules, "extra", extra)
    message = (
        "the widened patch embedding's input (16 pretrained + 16 new) is 32, "
        "but 2C+1 (noisy ‖ condition latents ‖ mask, C = 16) is 33"
    )
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_structure(anchors, Report("anchors"))


def test_a_condition_embedding_of_another_width_is_named(anchors, monkeypatch):
    with torch.device(META):
        monkeypatch.setitem(anchors.net._modules, "cond_embed", ConditionEmbedding(1024, 256, 1536))
    message = (
        "the fps condition embedding's width is 1024, but the timestep embedding's width (temb) it is added to is 1536"
    )
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_structure(anchors, Report("anchors"))


def test_a_preset_that_does_not_fit_is_named():
    with pytest.raises(
        ShapeMismatch, match=re.escape("model.height x model.width = 500x832 must be multiples of 16x16")
    ):
        meta_check.build_paper_meta(overrides=["model.height=500"])


def test_the_stage_guards_never_broadcast():
    """At tiny size on the CPU: the guards in StoryTransformer raise where torch would broadcast or fail obscurely."""
    net = build_anchors(load_config(AnchorsConfig, "tiny", preset_dir=PRESETS).model).net
    c, width = net.latent_channels, net.cond_embed.mlps["fps"][-1].out_features
    noisy = torch.zeros(1, c, 2, 4, 4)
    args = (noisy, noisy, torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 3, 32), torch.zeros(1, 6))
    assert net(*args).shape == noisy.shape
    net.cond_embed = ConditionEmbedding(1)  # [B, 1] + temb [B, width] would broadcast silently
    with pytest.raises(
        AnchorsError, match=re.escape(f"condition embedding [1, 1] does not match the timestep embedding [1, {width}]")
    ):
        net(*args)
    with pytest.raises(AnchorsError, match="must be \\[B, C, F, h, w\\]"):
        net(torch.zeros(1, c + 1, 2, 4, 4), *args[1:])
