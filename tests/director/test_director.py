"""The director on a tiny backbone: model pieces, data, training and exact resume, planning, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from auteur.config import load_config
from auteur.plan import VisualSpace, load_plan
from director.backbone import BackboneConfig, DirectorError, load_backbone
from director.checkpoint import BLOCK_FILL, build_director, read_block_fill, save_checkpoint
from director.cli import main
from director.config import PRESETS, DirectorConfig
from director.data import (
    Episode,
    SequenceBuilder,
    collate,
    epoch_order,
    grouped_order,
    has_visual_targets,
    load_episodes,
    mean_embedding,
    windows,
)
from director.model import IMG_BEGIN, LossConfig, ModelConfig
from director.plan import Planner
from director.train import SimulatedKill, train, trained_tensors, validate_checkpoint

TINY_SPACE = VisualSpace("test/space", 32)


def tiny_director(seed: int = 0, **model_kw):
    cfg = load_config(DirectorConfig, "tiny", preset_dir=PRESETS)
    for k, v in model_kw.items():
        setattr(cfg.model, k, v)
    director, backbone, _ = build_director(cfg.backbone, cfg.model, TINY_SPACE, seed=seed)
    return director, backbone, cfg


def test_only_the_director_parts_train() -> None:
    director, backbone, cfg = tiny_director()
    trainable = {n for n, p in director.named_parameters() if p.requires_grad}
    assert trainable and all(
        "lora_" in n or n.split(".")[0] in {"image_embeds", "head", "projector"} for n in trainable
    )
    assert any("lora_A" in n for n in trainable) and "image_embeds" in trainable
    assert director._no_split_modules == ["LlamaDecoderLayer"]  # FSDP's wrapping unit, from the (peft-wrapped) LM
    assert backbone.tokenizer.convert_tokens_to_ids(IMG_BEGIN) == director.img_begin_id
    block = director.image_block_ids()
    assert block[0] == director.img_begin_id and block[1 : 1 + cfg.model.num_queries] == director.query_ids


def test_embed_places_queries_and_projected_states() -> None:
    director, _, cfg = tiny_director()
    text = director.tokenizer("Step 1. Stir", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([text + director.image_block_ids()])
    z = torch.randn(1, 32)
    emb = director.embed(ids, z)
    n = len(text)
    assert torch.equal(emb[0, :n], director.embedding_layer()(ids[:, :n])[0])  # text untouched
    assert torch.equal(emb[0, n], director.image_embeds[0])  # <|img|>
    assert torch.equal(emb[0, n + 1], director.image_embeds[2])  # <|q0|> (after <|img|>, <|/img|> in the table)
    assert torch.allclose(emb[0, -1], director.projector(z)[0, 0])  # <|vis|> carries proj(z)
    with pytest.raises(ValueError, match="slots"):
        director.embed(ids, None)


def test_sequences_label_text_but_not_the_prompt_or_image_block(tiny_cookgen) -> None:
    director, backbone, cfg = tiny_director()
    eps = load_episodes(tiny_cookgen[0], "train", None)
    assert {e.query for e in eps} == {"how to make Tuna Sandwich", "how to make Fried Egg", "how to make Pancakes"}
    ep = next(e for e in eps if e.query.endswith("Fried Egg"))
    b = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), "action_caption")
    s = b.episode_window(ep, 0, 3)
    ids, labels = s["input_ids"], s["labels"]
    text = backbone.tokenizer.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert "Recipe:" not in text and "Step 1. Heat oil in a pan." in text and text.rstrip().endswith("Done.")
    assert "Caption: A close-up shot" in text
    n_blocks = sum(i == director.img_begin_id for i in ids)
    assert n_blocks == 3 == len(s["targets"])
    assert all(lab == -100 for i, lab in zip(ids, labels) if i in director.image_block_ids())
    assert windows(eps, 3, 1) == [(e, s) for e, ep in enumerate(eps) for s in range(len(ep.steps) - 2)]
    assert windows(eps, 2, 2) == [
        (e, s) for e, ep in enumerate(eps) for s in ([0, 1] if len(ep.steps) == 3 else [0, 2])
    ]
    part = b.episode_window(ep, 1, 1)  # a window in the middle: no Done
    assert "Done" not in backbone.tokenizer.decode(part["input_ids"]) and "Step 2." in backbone.tokenizer.decode(
        part["input_ids"]
    )


def test_text_only_steps_get_the_planners_image_block_filled_and_unsupervised() -> None:
    director, backbone, cfg = tiny_director()
    b = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), "action_caption")
    text_only = Episode("how to make toast", [("Toast the bread.", "", None), ("Butter it.", "", None)])
    bare = b.episode_window(text_only, 0, 2)
    assert director.img_begin_id not in bare["input_ids"] and bare["targets"] == [] == bare["supervised"]
    fill = torch.full((32,), 0.5)
    filled = b.episode_window(text_only, 0, 2, fill)
    assert sum(i == director.img_begin_id for i in filled["input_ids"]) == 2
    assert filled["supervised"] == [False, False] and all(torch.equal(t, fill) for t in filled["targets"])
    assert not has_visual_targets(filled)
    # the block sits where the planner writes it: after the step's text, before the next "Step"
    text = backbone.tokenizer.decode(filled["input_ids"])
    assert text.index("Toast the bread.") < text.index(IMG_BEGIN) < text.index("Step 2.")
    # same labels as without the block: the text targets do not change, the block is never a label
    assert [t for t in filled["labels"] if t != -100] == [t for t in bare["labels"] if t != -100]
    z = torch.randn(32)
    seen = Episode("how to make eggs", [("Crack the eggs.", "A pan.", z), ("Stir.", "", None)])
    mixed = b.episode_window(seen, 0, 2, fill)
    assert mixed["supervised"] == [True, False] and has_visual_targets(mixed)
    assert torch.equal(mean_embedding([text_only, seen], 32), z) and torch.equal(
        mean_embedding([text_only], 32), torch.zeros(32)
    )
    # the loss regresses only the supervised block: a batch of filled blocks alone has no visual loss
    pad = backbone.tokenizer.pad_token_id
    only_filled = director.loss(collate([filled], pad), LossConfig())
    assert "cos" not in only_filled and torch.equal(
        only_filled["loss"], only_filled["text_loss"] * LossConfig().text_weight
    )
    batch = collate([filled, mixed], pad)
    assert batch["supervised"].tolist() == [False, False, True, False] and batch["targets"].shape == (4, 32)
    with torch.no_grad():
        parts = director.loss(batch, LossConfig())
        out = director.run(batch["input_ids"], batch["targets"], batch["attention_mask"], hidden=True)
        pred = director.predict_visual(out.hidden_states[-1], batch["input_ids"])[2]
    assert float(parts["cos"]) == pytest.approx(float(torch.cosine_similarity(pred, z, dim=0)), abs=1e-5)


def full_vocabulary_text_loss(director, batch) -> torch.Tensor:
    """The text loss as it was computed before it projected only the labelled positions: full-vocabulary logits at
    every position of the padded batch, mean cross-entropy over the labelled ones."""
    targets = batch["targets"]
    out = director.run(batch["input_ids"], targets if targets.numel() else None, batch["attention_mask"])
    logits = out.logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    )


def test_text_loss_on_labelled_positions_only_equals_the_full_vocabulary_loss(tiny_cookgen) -> None:
    director, backbone, cfg = tiny_director()
    eps = load_episodes(tiny_cookgen[0], "train", None)
    b = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), "action_caption")
    # windows of different lengths: right padding, so padded positions must stay out of the mean
    batch = collate([b.episode_window(eps[0], 0, 3), b.episode_window(eps[1], 0, 1)], backbone.tokenizer.pad_token_id)
    assert not batch["attention_mask"].all()
    parts = director.loss(batch, LossConfig())
    want = full_vocabulary_text_loss(director, batch)
    torch.testing.assert_close(parts["text_loss"], want, rtol=1e-5, atol=1e-6)
    # the same gradients reach the LoRA weights
    parts["text_loss"].backward()
    got = {n: p.grad.clone() for n, p in director.named_parameters() if "lora_" in n and p.grad is not None}
    director.zero_grad()
    full_vocabulary_text_loss(director, batch).backward()
    assert got and all(
        torch.allclose(got[n], p.grad, rtol=1e-4, atol=1e-7) for n, p in director.named_parameters() if n in got
    )


def test_loss_falls_when_overfitting_one_batch(tiny_cookgen) -> None:
    director, backbone, cfg = tiny_director()
    eps = load_episodes(tiny_cookgen[0], "train", None)
    b = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), "action_caption")
    batch = collate([b.episode_window(eps[0], 0, 3), b.episode_window(eps[1], 0, 3)], backbone.tokenizer.pad_token_id)
    director.train()
    opt = torch.optim.AdamW(director.trainable_parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        parts = director.loss(batch, LossConfig())
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        history.append({k: float(v) for k, v in parts.items()})
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] - 1.0
    assert last["cos"] > 0.8 > first["cos"] and last["mse"] < 0.5 * first["mse"]  # the head learns z
    assert last["text_loss"] < first["text_loss"]  # and the LoRA'd LM the text


def _train_cfg(data: list[Path], out: Path, **over) -> DirectorConfig:
    overrides = [f"data={','.join(map(str, data))}", f"out={out}"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(DirectorConfig, "tiny", overrides, preset_dir=PRESETS)


def test_validate_fills_text_only_blocks_with_the_checkpoints_own_fill(tiny_cookgen, tmp_path: Path) -> None:
    from cookgen.cli import main as cookgen
    from tests.cookgen.conftest import write_youcook2, yc_video

    final = train(_train_cfg(tiny_cookgen, tmp_path / "run", **{"train.max_steps": 2}), progress=False)
    train_mean = mean_embedding(load_episodes(tiny_cookgen[0], "train", None), 32)
    assert torch.equal(read_block_fill(final, 32), train_mean) and train_mean.abs().sum() > 0
    # text-only validation recipes (YouCook2-style) in a build with no training split
    ann = write_youcook2(
        tmp_path / "ann.json",
        {"v1": yc_video("validation", "201", [(0, 5, "chop the lettuce"), (6, 9, "add oil"), (10, 12, "toss it")])},
    )
    labels = tmp_path / "labels.csv"
    labels.write_text("201,salad\n")
    yc = tmp_path / "yc"
    assert cookgen(["build", "youcook2", "--annotations", str(ann), "--labels", str(labels), "--out", str(yc)]) == 0

    def scores(data: list[Path]) -> dict[str, float]:
        cfg = _train_cfg(data, tmp_path / "unused")
        cfg.checkpoint = str(final)
        return validate_checkpoint(cfg)

    own = scores([yc])
    assert own["visual_states"] == 0 and own["windows"] > 0
    # the same as when the training split is there to compute the fill from
    assert own["text_loss"] == pytest.approx(scores([tiny_cookgen[0], yc])["text_loss"], rel=1e-6)
    (final / BLOCK_FILL).unlink()  # an older checkpoint: the fill comes from the data, here none (zeros)
    assert scores([yc])["text_loss"] != pytest.approx(own["text_loss"], rel=1e-6)
    (final / BLOCK_FILL).write_bytes(b"not safetensors")
    with pytest.raises(DirectorError, match="not a valid block fill"):
        scores([yc])


def test_train_writes_checkpoints_logs_and_resumes_bit_identically(tiny_cookgen, tmp_path: Path) -> None:
    full = train(_train_cfg(tiny_cookgen, tmp_path / "a"), progress=False)
    assert (full / "director.json").is_file() and (full / "adapter_model.safetensors").is_file()
    meta = json.loads((full / "director.json").read_text())
    assert meta["space"]["dim"] == 32 and meta["base_model_id"].startswith("tiny-llama-random")
    assert {"text_loss", "cos", "l2"} <= set(meta["validation"])  # the val split was scored
    rows = (tmp_path / "a" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,split,loss") and any(",val," in r for r in rows)
    assert list((tmp_path / "a" / "tb").iterdir()) and (tmp_path / "a" / "config.yaml").is_file()
    # `director validate` rescores the val split with the saved checkpoint: the numbers training recorded
    cfg = _train_cfg(tiny_cookgen, tmp_path / "a")
    cfg.checkpoint = str(full)
    again = validate_checkpoint(cfg)
    assert again["visual_states"] > 0 and again["windows"] > 0
    for k in ("text_loss", "cos", "l2"):
        assert again[k] == pytest.approx(meta["validation"][k], rel=1e-4, abs=1e-6)

    with pytest.raises(SimulatedKill):
        train(_train_cfg(tiny_cookgen, tmp_path / "b"), stop_after=3, progress=False)
    assert not (tmp_path / "b" / "final").exists()
    resumed = train(_train_cfg(tiny_cookgen, tmp_path / "b"), progress=False)
    a, b = trained_tensors(full), trained_tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    # train.init_from starts from a trained director: with lr 0 its weights come out unchanged
    same = train(
        _train_cfg(tiny_cookgen, tmp_path / "d", **{"train.init_from": str(full), "train.lr": 0.0, "seed": 3}),
        progress=False,
    )
    d = trained_tensors(same)
    assert all(torch.equal(a[k], d[k]) for k in a)
    # it may add LoRA target modules (a bigger adapter grown from a smaller one): the old tensors load, the new
    # ones start at peft's init (B = 0); removing a module or changing anything else is refused
    grown = train(
        _train_cfg(
            tiny_cookgen,
            tmp_path / "g",
            **{"train.init_from": str(full), "train.lr": 0.0, "model.lora.target_modules": "[q_proj,v_proj,o_proj]"},
        ),
        progress=False,
    )
    g = trained_tensors(grown)
    assert all(torch.equal(a[k], g[k]) for k in a)
    added = [k for k in g if k not in a]
    assert added and all("o_proj" in k for k in added)
    assert all(not g[k].any() for k in added if "lora_B" in k)
    for bad in ({"model.lora.target_modules": "[q_proj]"}, {"model.lora.r": 8}):
        with pytest.raises(DirectorError, match="another model config"):
            train(_train_cfg(tiny_cookgen, tmp_path / "x", **{"train.init_from": str(full), **bad}), progress=False)
    # and a run that differs (another seed) does not match: the comparison can fail
    other = train(_train_cfg(tiny_cookgen, tmp_path / "c", seed=1), progress=False)
    c = trained_tensors(other)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_grouped_order_batches_similar_lengths_and_is_deterministic() -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(203)]  # 25 full batches of 8 and a short one of 3
    order = grouped_order(lengths, 8, seed=2, epoch=1, megabatch=4)
    assert sorted(order) == list(range(203))  # every sample once, as in epoch_order
    assert order == grouped_order(lengths, 8, seed=2, epoch=1, megabatch=4)  # a resumed run replays it
    assert order != grouped_order(lengths, 8, seed=2, epoch=2, megabatch=4)
    batches = [order[b : b + 8] for b in range(0, 200, 8)]
    padded = sum(8 * max(lengths[i] for i in b) for b in batches)
    plain = epoch_order(203, 2, 1)
    padded_plain = sum(8 * max(lengths[i] for i in plain[b : b + 8]) for b in range(0, 200, 8))
    assert padded < 0.8 * padded_plain  # less padding than the plain shuffle
    # each batch comes sorted out of one megabatch (32 samples): its lengths are a run of that sorted chunk
    assert all(lengths[b[0]] >= lengths[b[-1]] for b in batches)


def test_length_grouped_training_resumes_bit_identically(tiny_cookgen, tmp_path: Path) -> None:
    over = {"dataset.group_by_length": "true", "train.batch_size": 2}
    full = train(_train_cfg(tiny_cookgen, tmp_path / "a", **over), progress=False)
    with pytest.raises(SimulatedKill):
        train(_train_cfg(tiny_cookgen, tmp_path / "b", **over), stop_after=3, progress=False)
    resumed = train(_train_cfg(tiny_cookgen, tmp_path / "b", **over), progress=False)
    a, b = trained_tensors(full), trained_tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kv_cache_gives_the_same_plan_as_reencoding() -> None:
    director, backbone, cfg = tiny_director()
    planner = Planner(director, cfg.plan)
    with_cache = planner.plan("how to make pancakes", steps=2, seed=0)
    without = planner.plan("how to make pancakes", steps=2, seed=0, use_cache=False)
    assert [(s.action, s.caption) for s in with_cache.steps] == [(s.action, s.caption) for s in without.steps]
    torch.testing.assert_close(with_cache.embeddings, without.embeddings, rtol=1e-4, atol=1e-5)
    # each token encoded once (but those of a verbatim-repeated action, taken back and planned again)
    discarded = with_cache.stats.get("discarded_tokens", 0)
    assert with_cache.stats["forward_tokens"] == with_cache.stats["context_tokens"] + discarded
    assert without.stats["forward_tokens"] > 3 * without.stats["context_tokens"]


def test_an_initial_image_text_pair_is_trained_and_planned_in_one_format(tiny_cookgen, tmp_path: Path, capsys) -> None:
    director, backbone, cfg = tiny_director()
    b = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), "action_caption")
    z0, z1 = torch.randn(32), torch.randn(32)
    ep = Episode("how to make toast", [("Toast the bread.", "Bread in a toaster.", z1)])
    plain = b.episode_window(ep, 0, 1)
    given = b.episode_window(ep, 0, 1, initial=("Sliced bread on a board.", z0))
    text = backbone.tokenizer.decode(given["input_ids"])
    assert text.index("Recipe:") < text.index("Initial image: Sliced bread on a board.") < text.index(IMG_BEGIN)
    assert text.index(IMG_BEGIN) < text.index("Step 1.")
    # given, never trained: the same labels as without it, and the block's z fills its slots without a loss
    assert [t for t in given["labels"] if t != -100] == [t for t in plain["labels"] if t != -100]
    assert given["supervised"] == [False, True] and torch.equal(given["targets"][0], z0)
    # the planner feeds the same tokens, with the KV cache as when re-encoding, and the pair changes the plan
    planner = Planner(director, cfg.plan)
    initial = ("Sliced bread on a board.", z0)
    cached = planner.plan("how to make toast", steps=2, seed=0, initial=initial)
    encoded = planner.plan("how to make toast", steps=2, seed=0, initial=initial, use_cache=False)
    assert [(s.action, s.caption) for s in cached.steps] == [(s.action, s.caption) for s in encoded.steps]
    torch.testing.assert_close(cached.embeddings, encoded.embeddings, rtol=1e-4, atol=1e-5)
    without = planner.plan("how to make toast", steps=2, seed=0)
    assert not torch.allclose(cached.embeddings, without.embeddings)
    # training with dataset.initial_image: each recipe-starting window with a first embedding, once more given it
    cfg_off = _train_cfg(tiny_cookgen, tmp_path / "off")
    cfg_on = _train_cfg(tiny_cookgen, tmp_path / "on", **{"dataset.initial_image": "true"})
    from director.train import _load_samples, resolve_space

    space = resolve_space(cfg_on)
    off = _load_samples(cfg_off, b, space, "train", None)
    on = _load_samples(cfg_on, b, space, "train", None)
    firsts = len(load_episodes(tiny_cookgen[0], "train", None))  # every tiny recipe has a first keyframe
    assert len(on) == len(off) + firsts
    # the CLI: --image embeds the picture with the configured encoder into the director's space
    from PIL import Image

    img = tmp_path / "board.png"
    Image.new("RGB", (64, 48), (180, 140, 90)).save(img)
    out = tmp_path / "plan"
    argv = ["plan", "toast", "--preset", "tiny", "--steps", "2", "--out", str(out), "--image", str(img)]
    assert main([*argv, "--image-caption", "a board"]) == 0
    assert load_plan(out).provenance["initial_image"] == {"path": str(img), "caption": "a board"}
    capsys.readouterr()
    (tmp_path / "junk.png").write_text("not an image")
    for bad, needle in [(["--image", str(tmp_path / "no.png")], "no such image file"),
                        (["--image", str(tmp_path / "junk.png")], "not a readable image"),
                        (["--image-caption", "x"], "--image-caption goes with --image")]:  # fmt: skip
        assert main(["plan", "toast", "--preset", "tiny", "--out", str(tmp_path / "p2"), *bad]) == 2
        assert needle in capsys.readouterr().err and not (tmp_path / "p2").exists()


def test_merged_lora_plans_as_the_unmerged_adapter() -> None:
    director, _, cfg = tiny_director()
    with torch.no_grad():  # a non-zero adapter, so that merging changes the base weights
        for name, p in director.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.randint(10, 200, (1, 40))
    with torch.inference_mode():
        before = director.run(ids).logits
    base = next(p for n, p in director.lm.named_parameters() if "q_proj.base_layer.weight" in n)
    base_before = base.detach().clone()
    plain = Planner(director, cfg.plan).plan("how to make pancakes", steps=2, seed=0)
    cfg.plan.merge_lora = True
    merged_planner = Planner(director, cfg.plan)
    assert director.lora_merged and not torch.equal(base, base_before)  # the adapter now lives in the base weights
    with torch.inference_mode():
        after = director.run(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    merged = merged_planner.plan("how to make pancakes", steps=2, seed=0)
    assert [(s.action, s.caption) for s in merged.steps] == [(s.action, s.caption) for s in plain.steps]
    with pytest.raises(RuntimeError, match="merged"):  # a merged director is for inference only
        director.loss({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}, LossConfig())


def test_a_folded_adapter_is_peft_merge_without_peft(tmp_path: Path) -> None:
    """build_director(fold_lora=True), plan.merge_lora's path: the checkpoint's LoRA is added into fresh base
    weights (no peft wrapper); it computes what peft's merge_adapter computes and plans the same."""
    director, backbone, cfg = tiny_director()
    with torch.no_grad():  # a non-zero adapter, so that folding changes the base weights
        for name, p in director.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ckpt = save_checkpoint(director, tmp_path / "ckpt", backbone.model_id, TINY_SPACE)
    merged, _, _ = build_director(cfg.backbone, cfg.model, TINY_SPACE, ckpt)
    merged.merge_lora()
    folded, _, _ = build_director(cfg.backbone, cfg.model, TINY_SPACE, ckpt, fold_lora=True)
    assert folded.lora_merged and not folded.cfg.lora.enabled  # a plain LM underneath, inference only
    assert not any("lora_" in n for n, _ in folded.lm.named_parameters())
    base = {n: p for n, p in merged.base_lm().named_parameters() if "lora_" not in n}
    weights = dict(folded.lm.named_parameters())
    assert {n.replace(".base_layer", "") for n in base} == set(weights)
    for name, p in base.items():
        torch.testing.assert_close(weights[name.replace(".base_layer", "")], p, rtol=1e-5, atol=1e-6)
    ids = torch.randint(10, 200, (1, 40))
    with torch.inference_mode():
        torch.testing.assert_close(folded.run(ids).logits, merged.run(ids).logits, rtol=1e-4, atol=1e-4)
    plans = [Planner(d, replace(cfg.plan, merge_lora=True)).plan("how to make pancakes", steps=2, seed=0)
             for d in (merged, folded)]  # fmt: skip
    assert [(s.action, s.caption) for s in plans[0].steps] == [(s.action, s.caption) for s in plans[1].steps]
    with pytest.raises(RuntimeError, match="merged"):
        folded.loss({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}, LossConfig())
    # an adapter the plain sum does not cover (DoRA here) goes through peft's merge instead
    settings = json.loads((ckpt / "adapter_config.json").read_text())
    assert settings["target_modules"] == sorted(settings["target_modules"])  # not peft's per-process set order
    (ckpt / "adapter_config.json").write_text(json.dumps({**settings, "use_dora": True}))
    peft_path, _, _ = build_director(cfg.backbone, cfg.model, TINY_SPACE, ckpt, fold_lora=True)
    assert peft_path.cfg.lora.enabled and not peft_path.lora_merged


def test_lookup_drafting_changes_the_speed_not_the_plan() -> None:
    director, backbone, cfg = tiny_director()
    cfg.plan.max_steps = 4
    plain = Planner(director, cfg.plan).plan("how to make pancakes", seed=0)
    cfg.plan.lookup_tokens = 4
    fast = Planner(director, cfg.plan).plan("how to make pancakes", seed=0)
    assert [(s.action, s.caption) for s in fast.steps] == [(s.action, s.caption) for s in plain.steps]
    torch.testing.assert_close(fast.embeddings, plain.embeddings, rtol=1e-4, atol=1e-5)
    assert fast.stats["decode_tokens"] == plain.stats["decode_tokens"]
    # drafts were tried and some verified, so fewer forwards decoded the same tokens
    assert fast.stats["accepted_draft_tokens"] > 0 and fast.stats["draft_tokens"] > fast.stats["accepted_draft_tokens"]
    assert fast.stats["decode_forwards"] < plain.stats["decode_forwards"]


def test_lookup_draft_proposes_what_followed_the_latest_match() -> None:
    from director.plan import lookup_draft

    assert lookup_draft([5, 6, 7, 8, 1, 5, 6, 9, 2, 5, 6], 3) == [9, 2, 5]  # latest match of the 2-gram (5, 6)
    assert lookup_draft([1, 2, 3, 4, 2], 2) == [3, 4]  # falls back to a 1-gram
    assert lookup_draft([1, 2, 3], 2) == [] and lookup_draft([1, 2, 1], 0) == []


def test_plan_lengths_and_continuation() -> None:
    director, backbone, cfg = tiny_director()
    planner = Planner(director, cfg.plan)
    free = planner.plan("how to make soup", seed=0)
    assert 1 <= len(free.steps) <= cfg.plan.max_steps
    three = planner.plan("how to make soup", steps=3, seed=0)
    assert len(three.steps) == 3 and three.embeddings.shape == (3, 32)
    keep = [("Boil water.", "A pot on the stove.", torch.ones(32)), ("Add noodles.", "", torch.zeros(32))]
    cont = planner.plan("how to make soup", steps=4, seed=0, keep=keep)
    assert [(s.action, s.caption, s.kept) for s in cont.steps[:2]] == [
        ("Boil water.", "A pot on the stove.", True),
        ("Add noodles.", "", True),
    ]
    assert torch.equal(cont.embeddings[0], torch.ones(32)) and len(cont.steps) == 4 and not cont.steps[2].kept


def test_cli_plan_writes_a_valid_plan_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "plan"
    # a key=value override may follow the options
    argv = ["plan", "how to cook a tuna sandwich", "--preset", "tiny", "--steps", "2", "--out", str(out)]
    assert main([*argv, "plan.max_steps=5"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "Plan: how to cook a tuna sandwich" in text and "\n1. " in text and "UNTRAINED" in captured.err
    plan = load_plan(out)
    assert len(plan.steps) == 2 and plan.embeddings.shape == (2, 32)
    assert plan.space.name.startswith("open_clip-random/") and plan.provenance["models"]["director_trained"] is False
    assert "max_steps: 5" in (out / "config.yaml").read_text()
    # continuation keeps the (hand-edited) first step
    data = json.loads((out / "plan.json").read_text())
    data["steps"][0]["action"] = "Open a can of tuna."
    (out / "plan.json").write_text(json.dumps(data))
    out2 = tmp_path / "plan2"
    assert (
        main(
            [
                "plan",
                "--continue",
                str(out),
                "--from-step",
                "1",
                "--steps",
                "3",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    plan2 = load_plan(out2)  # without --preset, the continued plan's own (tiny) director
    assert plan2.steps[0].action == "Open a can of tuna." and len(plan2.steps) == 3
    assert plan2.provenance["preset"] == "tiny"
    assert torch.equal(plan2.embeddings[0], plan.embeddings[0])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["plan", "   ", "--preset", "tiny"], "query is empty"),
        (["plan", "soup", "--preset", "tiny", "--steps", "0"], "--steps must be at least 1"),
        (["plan", "soup", "--preset", "galactic"], "unknown preset 'galactic'"),
        (["plan", "soup", "--preset", "tiny", "--from-step", "1"], "--continue"),
        (["plan", "soup", "--preset", "tiny", "plan.max_stepz=3"], "plan.max_stepz"),
        (["plan", "soup", "--preset", "tiny", "--out", "{mine}"], "is not a plan folder"),
        (["plan", "soup " * 600, "--preset", "tiny"], "characters long"),  # refused before any model loads
        (["plan", "zq" * 490, "--preset", "tiny"], "context"),  # 980 characters, 980 tiny-tokenizer tokens
        (["train", "--config", "tiny"], "no training data"),
        (["train", "--config", "tiny", "data={missing}", "out={out}"], "not found"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, capsys, argv, needle) -> None:
    out, mine = tmp_path / "out", tmp_path / "mine"
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    argv = [a.format(missing=tmp_path / "nope", out=out, mine=mine) for a in argv]
    argv += ["--out", str(out)] if argv[0] == "plan" and "--out" not in argv else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists() and (mine / "notes.txt").read_text() == "a user's file"


def test_incompatible_checkpoints_are_refused(tiny_cookgen, tmp_path: Path, capsys) -> None:
    final = train(_train_cfg(tiny_cookgen, tmp_path / "run", **{"train.max_steps": 1}), progress=False)
    meta_path = final / "director.json"
    meta = json.loads(meta_path.read_text())
    meta["base_model_id"] = "SomeOtherModel-7B"
    meta_path.write_text(json.dumps(meta))
    assert main(["plan", "soup", "--preset", str(final), "--out", str(tmp_path / "p")]) == 2
    assert "trained on base model SomeOtherModel-7B" in capsys.readouterr().err
    # on the real stderr (pytest captures logging in-process): exactly the one error line, after the model loaded
    run = subprocess.run(
        [sys.executable, "-m", "director.cli", "plan", "soup", "--preset", str(final), "--out", str(tmp_path / "p")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "SomeOtherModel-7B" in run.stderr, run.stderr
    meta["base_model_id"] = load_backbone(BackboneConfig(kind="tiny")).model_id
    meta["space"]["dim"] = 48  # claims another embedding dimension than its head has
    meta_path.write_text(json.dumps(meta))
    assert main(["plan", "soup", "--preset", str(final), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "size mismatch" in err and "48" in err, err  # it names the shapes
    meta["space"]["dim"] = 32
    meta_path.write_text(json.dumps(meta))
    extra = final / "director_extra.safetensors"
    extra.write_bytes(extra.read_bytes()[:1000])  # a truncated (half-copied) file
    assert main(["plan", "soup", "--preset", str(final), "--out", str(tmp_path / "p")]) == 2
    assert "does not fit this director (SafetensorError)" in capsys.readouterr().err
    extra.unlink()
    assert main(["plan", "soup", "--preset", str(final), "--out", str(tmp_path / "p")]) == 2
    assert "is incomplete: director_extra.safetensors not found" in capsys.readouterr().err
    assert main(["plan", "soup", "--preset", str(tmp_path / "nope" / "final"), "--out", str(tmp_path / "p")]) == 2
    assert "no such checkpoint folder or preset file" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_every_preset_loads() -> None:
    from auteur.config import list_presets

    names = list_presets(PRESETS)
    assert {"tiny", "default", "paper", "ablation-mse", "ablation-cos", "ablation-action-vis"} <= set(names)
    for name in names:
        cfg = load_config(DirectorConfig, name, preset_dir=PRESETS)
        assert isinstance(cfg.model, ModelConfig)
    assert load_config(DirectorConfig, "ablation-mse", preset_dir=PRESETS).loss.cos_weight == 0.0
    assert load_config(DirectorConfig, "ablation-caption-vis", preset_dir=PRESETS).model.order == "caption"


def _plan_tokens(planner: Planner, result) -> set[int]:
    return {t for s in result.steps for text in (s.action, s.caption) for t in planner._ids(" " + text)}


def test_decoder_pass_matches_the_full_pass() -> None:
    director, _, _ = tiny_director()
    ids = torch.randint(10, 200, (1, 30))
    with torch.inference_mode():
        full = director.run(ids, hidden=True)
        final, last_layer, _ = director.run_decoder(ids)
        head = director.base_lm().get_output_embeddings()
    torch.testing.assert_close(last_layer, full.hidden_states[-1])
    torch.testing.assert_close(head(final), full.logits, rtol=1e-5, atol=1e-5)


def test_trained_output_vocab_keeps_greedy_plans_and_bans_the_rest() -> None:
    director, _, cfg = tiny_director()
    cfg.plan.max_steps = 3
    cfg.plan.word_check = False  # the restriction alone: the word check may pick other (unrestricted) tokens
    full = Planner(director, cfg.plan).plan("how to make pancakes", seed=0)
    cfg.plan.output_vocab = "trained"
    with pytest.raises(DirectorError, match="output_vocab.json"):  # an untrained director records none
        Planner(director, cfg.plan)
    planner_full = Planner(director, replace(cfg.plan, output_vocab="full"))
    used = _plan_tokens(planner_full, full)
    # every token the greedy plan chose stays allowed (and a few hundred others): the same plan
    director.output_vocab = sorted(used | set(range(100, 140)))
    planner = Planner(director, cfg.plan)
    same = planner.plan("how to make pancakes", seed=0)
    assert [(s.action, s.caption) for s in same.steps] == [(s.action, s.caption) for s in full.steps]
    torch.testing.assert_close(same.embeddings, full.embeddings, rtol=1e-4, atol=1e-5)
    # without the plan's most used token, the plan must do without it; the query's own tokens stay allowed
    query_ids = set(planner._ids("Recipe: how to make pancakes"))
    banned = max(used - query_ids, key=lambda t: sum(planner._ids(" " + s.action).count(t) for s in full.steps))
    director.output_vocab = sorted((used | set(range(100, 140))) - {banned})
    other = Planner(director, cfg.plan).plan("how to make pancakes", seed=0)
    restricted = Planner(director, cfg.plan)
    allowed = set(restricted._output_head(["Recipe: how to make pancakes"]).index.tolist())
    assert banned not in allowed and query_ids - {banned} <= allowed | set(restricted.banned.tolist())
    assert other.stats["output_rows"] == len(allowed) < full.stats["output_rows"]
    for s in other.steps:
        assert banned not in planner._ids(s.action)


def test_training_records_the_label_vocabulary(tiny_cookgen, tmp_path: Path) -> None:
    from director.checkpoint import read_output_vocab
    from director.train import label_vocabulary, resolve_space, training_samples

    cfg = _train_cfg(tiny_cookgen, tmp_path / "a", **{"train.max_steps": 2, "train.save_every": 1})
    final = train(cfg, progress=False)
    director, backbone, _ = tiny_director()
    builder = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), cfg.model.order, cfg.dataset.max_tokens)
    expected = label_vocabulary(training_samples(cfg, builder, resolve_space(cfg), None))
    assert (
        set(read_output_vocab(final)) == expected
        and set(read_output_vocab(tmp_path / "a" / "checkpoints" / "step-000001")) == expected
    )
    prompt_only = set(backbone.tokenizer.encode("Recipe:", add_special_tokens=False))
    assert not prompt_only <= expected  # the prompt is never a label
    # a run started from this one keeps what it could write
    (tmp_path / "a" / "final" / "output_vocab.json").write_text(json.dumps({"token_ids": [5, 6, 7]}))
    cfg2 = _train_cfg(tiny_cookgen, tmp_path / "b", **{"train.max_steps": 1, "train.init_from": str(final)})
    assert set(read_output_vocab(train(cfg2, progress=False))) == expected | {5, 6, 7}
