"""The director on tiny RANDOM-weight vision-language models (Qwen2-VL, LLaVA) saved as local folders.

A VLM backbone is used text-only: the director feeds it ``inputs_embeds`` (text, query and projected visual
states), never pixels. These tests run the director's every use of the backbone on the VLM classes: the resized
embeddings, LoRA on the language model only, training, the nested decoder, the KV-cache plan, the adapter
saved and loaded. Random weights: what the plans say means nothing; the 7B models are not tested.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from auteur.config import load_config
from auteur.plan import VisualSpace
from director.backbone import BackboneConfig, load_backbone
from director.checkpoint import build_director, save_checkpoint
from director.config import PRESETS, DirectorConfig
from director.data import Episode, SequenceBuilder, collate
from director.model import LossConfig, lora_targets
from director.plan import Planner
from tests.director.test_backbone import VLM_CLASSES, save_tiny_vlm
from tests.director.test_director import full_vocabulary_text_loss

SPACE = VisualSpace("test/space", 32)
FAMILIES = list(VLM_CLASSES)


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, tmp_path_factory):
    """(family, folder, director config): a tiny VLM folder and the tiny preset pointed at it."""
    family = request.param
    folder = save_tiny_vlm(tmp_path_factory.mktemp("vlm") / f"tiny-{family}", family)
    overrides = ["backbone.kind=pretrained", f"backbone.name_or_path={folder}"]
    cfg = load_config(DirectorConfig, "tiny", overrides, preset_dir=PRESETS)
    return family, folder, cfg


def _director(cfg: DirectorConfig, checkpoint: Path | None = None):
    director, backbone, _ = build_director(cfg.backbone, cfg.model, SPACE, checkpoint=checkpoint, seed=0)
    return director, backbone


def _batch(director, backbone) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    steps = [("Drain the tuna.", "A can of tuna.", torch.randn(32, generator=g)) for _ in range(3)]
    eps = [
        Episode("how to make a tuna sandwich", steps),
        Episode("how to fry an egg", [("Crack the egg.", "An egg in a pan.", torch.randn(32, generator=g))] * 2),
    ]
    b = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), "action_caption")
    return collate([b.episode_window(eps[0], 0, 3), b.episode_window(eps[1], 0, 2)], backbone.tokenizer.pad_token_id)


def test_director_builds_on_a_vlm_with_lora_on_its_language_model_only(vlm) -> None:
    family, _, cfg = vlm
    director, backbone = _director(cfg)
    assert type(director.base_lm()).__name__ == VLM_CLASSES[family]
    assert len(backbone.tokenizer) == director.embedding_layer().weight.shape[0]  # resized for the image block
    assert director.base_lm().get_output_embeddings().weight.shape[0] == len(backbone.tokenizer)
    lora = [n for n, _ in director.lm.named_modules() if n.endswith(".lora_A")]
    layers = backbone.model.config.get_text_config().num_hidden_layers
    assert len(lora) == layers * len(cfg.model.lora.target_modules)  # q_proj, v_proj of each text layer
    assert all(".language_model." in n for n in lora)  # none in the vision tower (LLaVA's CLIP has q_proj, v_proj)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")  # peft reads a deprecated transformers property
def test_lora_targets_skip_the_vision_tower() -> None:
    """Qwen2.5-VL's vision MLP (like LLaVA's CLIP attention, tested above) has the paper preset's LoRA names."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert lora_targets(load_backbone(BackboneConfig(kind="tiny")).model, names) == names  # a causal LM: as given
    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    text.update(num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope)
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 32}
    vision.update(fullatt_block_indexes=[0], window_size=28, patch_size=14, spatial_merge_size=2)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    in_vision = [n for n, _ in Qwen2_5_VLForConditionalGeneration(config).named_modules() if "visual" in n]
    assert any(n.endswith(("gate_proj", "up_proj", "down_proj")) for n in in_vision)
    for extra in ([], ["lm_head"]):  # the output projection (outside the decoder) stays adaptable
        lm = Qwen2_5_VLForConditionalGeneration(config)
        peft = get_peft_model(lm, LoraConfig(r=2, target_modules=lora_targets(lm, names + extra)))
        adapted = [n for n, _ in peft.named_modules() if n.endswith(".lora_A")]
        assert len(adapted) == 2 * len(names) + len(extra)
        assert all(".language_model." in n or n.endswith("lm_head.lora_A") for n in adapted)


def test_director_on_a_vlm_trains_plans_and_round_trips(vlm, tmp_path) -> None:
    family, folder, cfg = vlm
    director, backbone = _director(cfg)
    batch = _batch(director, backbone)
    # 1. a few steps on one batch lower every part of the loss (the LoRA'd language model and the head learn)
    # the text loss projects only the labelled positions: the same as full-vocabulary logits everywhere
    torch.testing.assert_close(
        director.loss(batch, LossConfig())["text_loss"],
        full_vocabulary_text_loss(director, batch),
        rtol=1e-5,
        atol=1e-6,
    )
    director.train()
    opt = torch.optim.AdamW(director.trainable_parameters(), lr=3e-3)

    def step() -> dict[str, float]:
        opt.zero_grad()
        parts = director(batch, LossConfig())  # Director.forward: the loss, as training calls it
        parts["loss"].backward()
        return {k: float(v.detach()) for k, v in parts.items()}

    history = [opt.step(step) for _ in range(25)]
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] - 1.0
    assert (
        last["text_loss"] < first["text_loss"]
        and last["mse"] < 0.6 * first["mse"]
        and last["cos"] > 0.6 > first["cos"]
    )
    assert any(float(p.detach().abs().sum()) > 0 for n, p in director.lm.named_parameters() if "lora_B" in n)
    director.eval()
    # 2. a 2-step plan with the KV cache equals the plan that re-encodes the history at every token
    planner = Planner(director, cfg.plan)
    with_cache = planner.plan("how to make a tuna sandwich", steps=2, seed=0)
    without = planner.plan("how to make a tuna sandwich", steps=2, seed=0, use_cache=False)
    assert len(with_cache.steps) == 2 and with_cache.steps[0].action
    assert [(s.action, s.caption) for s in with_cache.steps] == [(s.action, s.caption) for s in without.steps]
    torch.testing.assert_close(with_cache.embeddings, without.embeddings, rtol=1e-4, atol=1e-5)
    st = with_cache.stats  # every token forwarded once: kept, or taken back (a re-planned repeat, a rejected draft)
    taken_back = st.get("discarded_tokens", 0) + st.get("draft_tokens", 0) - st.get("accepted_draft_tokens", 0)
    assert st["forward_tokens"] == st["context_tokens"] + taken_back
    assert without.stats["forward_tokens"] > 3 * without.stats["context_tokens"]
    # 3. the planner's decoder pass (the VLM's nested language model, then the output rows) plans the same
    director.output_vocab = list(range(len(backbone.tokenizer)))
    by_decoder = Planner(director, replace(cfg.plan, output_vocab="trained"))
    decoded = by_decoder.plan("how to make a tuna sandwich", steps=2, seed=0)
    assert [(s.action, s.caption) for s in decoded.steps] == [(s.action, s.caption) for s in with_cache.steps]
    torch.testing.assert_close(decoded.embeddings, with_cache.embeddings, rtol=1e-4, atol=1e-5)
    # 4. the adapter and the director's parts saved and loaded on a fresh VLM give the same plan
    ids = batch["input_ids"][:1, :24]
    saved = save_checkpoint(director, tmp_path / "ckpt", backbone.model_id, SPACE)
    assert (saved / "adapter_model.safetensors").is_file()
    again, _ = _director(cfg, checkpoint=saved)
    with torch.inference_mode():
        torch.testing.assert_close(again.run(ids).logits, director.run(ids).logits)
    replay = Planner(again, cfg.plan).plan("how to make a tuna sandwich", steps=2, seed=0)
    assert [(s.action, s.caption) for s in replay.steps] == [(s.action, s.caption) for s in with_cache.steps]
    torch.testing.assert_close(replay.embeddings, with_cache.embeddings, rtol=1e-4, atol=1e-5)
