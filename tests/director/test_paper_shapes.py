"""The director's paper preset at real size on the meta device (:mod:`director.meta_check`).

Qwen2-VL-7B-Instruct is built from its published config with no weights; the director's own code (LoRA, query
tokens, regression head, visual projector, data collation, ``Director.loss``) runs through it. A changed
dimension must fail with a :class:`~auteur.meta_check.ShapeMismatch` naming both sides, before transformers
meets the tensor.
"""

from __future__ import annotations

import re

import pytest
import torch

from auteur.meta_check import META, Report, ShapeMismatch
from director import meta_check
from director.model import LossConfig, RegressionHead


@pytest.fixture(scope="module")
def director():
    return meta_check.build_paper_meta()


def test_paper_preset_fits_qwen2_vl_7b(director):
    report = Report("director")
    meta_check.check_structure(director, report)
    meta_check.check_loss(director, report, backward=False)  # the backward graph: tests/auteur (slow)
    assert report["hidden size"] == 3584
    assert report["image_embeds (query tokens)"] == (16 + 2, 3584)
    lora = {t: 28 for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    assert report["lora layers per target"] == str(lora)
    assert report["lora confined to"] == "base_model.model.model.language_model"  # not the vision tower
    b, length = report["batch input_ids"]
    assert report["LM inputs_embeds"] == (b, length, 3584)
    assert report["query states"] == (6, 16, 3584)  # 2 windows x 3 steps: 6 image blocks of 16 queries
    assert report["regression head output"] == (6, 768)  # CLIP ViT-L-14
    assert report["visual projector tokens"] == (6, 4, 3584)
    assert report["loss"] == ()


def test_a_head_for_another_hidden_size_is_named(director, monkeypatch):
    with torch.device(META):  # e.g. a head trained on a 4096-wide LM (LLaVA-NeXT-7B) on this 3584-wide one
        monkeypatch.setitem(director._modules, "head", RegressionHead("resampler", 4096, 2048, 768, 16))
    message = "the regression head's query width (resampler attention) is 4096, but the LM's hidden size is 3584"
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_structure(director, Report("director"))


def test_targets_of_another_visual_space_are_named(director):
    batch = meta_check.short_batch(director)
    batch["targets"] = torch.zeros(batch["targets"].shape[0], 1280)  # EfficientNet-Lite0 embeddings, say
    message = "the visual targets' width is 1280, but the director's visual space dim is 768"
    with pytest.raises(ShapeMismatch, match=re.escape(message)):
        meta_check.check_loss(director, Report("director"), batch=batch)
    # Director.loss itself refuses them before any layer sees them
    batch = {**batch, "targets": batch["targets"].to(META), "attention_mask": batch["attention_mask"].to(META)}
    with pytest.raises(
        ValueError,
        match=re.escape("the visual targets have shape [6, 1280], but this director's visual space is 768-d"),
    ):
        director.loss(batch, LossConfig())


def test_a_lora_target_only_in_the_vision_tower_is_named():
    # Qwen2-VL's vision attention is `qkv`: confined to the language model it matches nothing, and peft is silent
    with pytest.raises(ShapeMismatch, match=re.escape("LoRA target(s) qkv match no module of the language model")):
        meta_check.check_paper_shapes(overrides=["model.lora.target_modules=[q_proj,qkv]"], backward=False)
