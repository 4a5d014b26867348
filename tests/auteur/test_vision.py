"""Tests for auteur.vision: the real EfficientNet-Lite0 weights on real photos, and tiny open_clip models."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auteur.errors import VisionError
from auteur.plan import VisualSpace
from auteur.vision import (
    EFFICIENTNET_MEAN,
    EFFICIENTNET_STD,
    VisionConfig,
    VisualEncoder,
    clear_cache,
    load_encoder,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TINY_JSON = Path(__file__).resolve().parents[2] / "auteur" / "model_configs" / "tiny_open_clip.json"
TINY = "tiny_open_clip"  # open_clip registers a config under its file stem

# ImageNet-1k class ids (names in comments) of foods, fruit, vegetables and edible seeds/fungi:
# 924 guacamole .. 969 eggnog (dishes, vegetables 936-945, fruit 948-957), 987 corn, 988 acorn, 989 hip,
# 990 buckeye, 991-997 edible-looking fungi, 998 ear (of corn).
FOOD_CLASSES = set(range(924, 970)) | set(range(987, 999))
LEMON = 951  # 'lemon'
BELL_PEPPER = 945  # 'bell pepper'


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing in this module may reach the network (no weight, config or tokenizer downloads)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    folder = SHARED / "images"
    if not folder.is_dir():
        pytest.skip(f"../shared/data not present: {folder} missing, real-photo tests skipped")
    paths = sorted(folder.glob("*/*.jpg"))
    if len(paths) < 5:
        pytest.skip(f"../shared/data not present: expected the food photos under {folder}")
    out = {}
    for p in paths:
        with Image.open(p) as im:
            out[p.stem] = im.convert("RGB")
    return out


@pytest.fixture(scope="module")
def effnet() -> VisualEncoder:
    return load_encoder(VisionConfig())


@pytest.fixture(scope="module")
def photo_emb(effnet, photos) -> torch.Tensor:
    return effnet.embed_images(list(photos.values()))


def synthetic_frames(n: int, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    """Smooth-ish random RGB frames, uint8 [n, h, w, 3]."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, h // 4, w // 4, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR)) for f in small])


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T


# ----------------------------------------------------------------------------------- efficientnet_lite0


def test_efficientnet_space_shape_and_range(effnet, photo_emb, photos):
    assert effnet.space == VisualSpace("efficientnet-lite0/imagenet/avgpool", 1280)
    assert photo_emb.shape == (len(photos), 1280)
    assert photo_emb.dtype == torch.float32 and photo_emb.device.type == "cpu"
    assert torch.isfinite(photo_emb).all()
    # average pool of ReLU6 activations
    assert photo_emb.min() >= 0 and photo_emb.max() <= 6
    assert not photo_emb.is_inference()


def test_efficientnet_deterministic_and_batch_independent(effnet, photo_emb, photos):
    images = list(photos.values())[:3]
    one_by_one = effnet.embed_images(images, batch_size=1)
    in_twos = effnet.embed_images(images, batch_size=2, progress=True)  # batches of 2 and 1
    torch.testing.assert_close(one_by_one, photo_emb[:3], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(in_twos, photo_emb[:3], atol=1e-4, rtol=1e-4)


def test_efficientnet_pil_and_ndarray_agree(effnet, photos):
    images = [im.resize((300, 200)) for im in list(photos.values())[:3]]
    frames = np.stack([np.asarray(im) for im in images])
    from_pil = effnet.embed_images(images)
    from_frames = effnet.embed_images(frames)
    from_frame_list = effnet.embed_images(list(frames))
    torch.testing.assert_close(from_pil, from_frames, atol=0, rtol=0)
    torch.testing.assert_close(from_pil, from_frame_list, atol=0, rtol=0)


def test_efficientnet_converts_modes(effnet, photos):
    rgb = next(iter(photos.values())).resize((260, 240))
    gray = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    emb = effnet.embed_images([gray, gray.convert("RGB"), rgba, rgb])
    torch.testing.assert_close(emb[0], emb[1], atol=0, rtol=0)
    torch.testing.assert_close(emb[2], emb[3], atol=0, rtol=0)
    assert not torch.allclose(emb[0], emb[3], atol=1e-3)


def test_efficientnet_separates_photos_and_matches_perturbed_copies(effnet, photo_emb, photos):
    sim = cosine(photo_emb, photo_emb)
    off_diagonal = sim[~torch.eye(len(photos), dtype=torch.bool)]
    assert off_diagonal.max() < 0.95  # different photos, different embeddings

    copies = []
    for im in photos.values():
        w, h = im.size
        crop = im.crop((w // 20, h // 25, w - w // 30, h - h // 20))  # ~8% off the borders, off-centre
        copies.append(crop.resize((int(crop.width * 0.7), int(crop.height * 0.7))))
    copy_emb = effnet.embed_images(copies)
    cross = cosine(copy_emb, photo_emb)  # [copy, original]
    assert (cross.argmax(dim=1) == torch.arange(len(photos))).all(), cross
    assert cross.diagonal().min() > 0.8


def test_efficientnet_weights_and_preprocessing_classify_food(effnet, photo_emb, photos):
    """The full classifier on our preprocessing recognises the photos: the weights are the real ones."""
    names = list(photos)
    with torch.inference_mode():
        logits = effnet.model(effnet.preprocess(list(photos.values())))  # [N, 1000]
        # the embedding is exactly the classifier's input (global average pool -> dropout (off) -> fc)
        torch.testing.assert_close(effnet.model._fc(photo_emb), logits, atol=1e-3, rtol=1e-4)
    probs = logits.softmax(-1)
    top5 = probs.topk(5).indices
    fruit, vegetable = names.index("fruit"), names.index("vegetable")  # lemons; red/yellow/orange peppers
    assert top5[fruit, 0] == LEMON and probs[fruit, LEMON] > 0.5
    assert top5[vegetable, 0] == BELL_PEPPER and probs[vegetable, BELL_PEPPER] > 0.5
    with_food = [n for n, row in zip(names, top5.tolist()) if FOOD_CLASSES & set(row)]
    assert len(with_food) >= len(names) - 2, with_food  # spice (pans, trays) is the one food-less top-5 here


def test_efficientnet_normalisation_matches_stem_batchnorm(effnet, photos):
    """The stem batch-norm's running statistics were learnt on correctly normalised images; ours must fit
    them much better than ImageNet mean/std or [0, 1] inputs do (per-channel KL, mean over live channels)."""
    x = effnet.preprocess(list(photos.values()))
    pixels = x * EFFICIENTNET_STD + EFFICIENTNET_MEAN  # back to 0..255
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    candidates = {"ours": x, "imagenet": (pixels / 255 - mean) / std, "unit": pixels / 255}
    bn = effnet.model._bn0
    live = bn.running_var > 1e-4
    rm, rv = bn.running_mean[live], bn.running_var[live]
    kl = {}
    with torch.inference_mode():
        for name, inp in candidates.items():
            y = effnet.model._conv_stem(inp)
            mu, var = y.mean((0, 2, 3))[live], y.var((0, 2, 3))[live]
            kl[name] = (0.5 * (torch.log(rv / var) + (var + (mu - rm) ** 2) / rv - 1)).mean().item()
    assert kl["ours"] < 0.3, kl
    assert kl["ours"] < 0.5 * min(kl["imagenet"], kl["unit"]), kl


def test_efficientnet_cached_and_normalize(effnet, photos):
    t0 = time.perf_counter()
    again = load_encoder(VisionConfig(batch_size=3))
    assert time.perf_counter() - t0 < 0.5
    assert again.model is effnet.model and again.batch_size == 3
    unit = load_encoder(VisionConfig(normalize=True))
    assert unit.space == VisualSpace("efficientnet-lite0/imagenet/avgpool/l2", 1280)
    images = list(photos.values())[:2]
    emb = unit.embed_images(images)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(emb, torch.nn.functional.normalize(effnet.embed_images(images), dim=-1))


def test_embeddings_usable_as_regression_targets(effnet):
    target = effnet.embed_images(synthetic_frames(2))
    pred = torch.zeros_like(target, requires_grad=True)
    torch.nn.functional.mse_loss(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_empty_inputs(effnet):
    assert effnet.embed_images([]).shape == (0, 1280)
    assert effnet.embed_images(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 1280)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 8, 8, 3), np.float32),  # not uint8
        np.zeros((8, 8, 3), np.uint8),  # one frame without the batch axis
        np.zeros((2, 8, 8, 4), np.uint8),  # RGBA frames
        Image.new("RGB", (8, 8)),  # a bare image, not a list
        ["not an image"],
        [np.zeros((8, 8), np.uint8)],
    ],
)
def test_bad_inputs_raise_vision_error(effnet, bad):
    with pytest.raises(VisionError):
        effnet.embed_images(bad)


def test_config_errors():
    with pytest.raises(VisionError, match="unknown vision backend"):
        load_encoder(VisionConfig(backend="resnet"))  # type: ignore[arg-type]
    with pytest.raises(VisionError, match="batch_size"):
        load_encoder(VisionConfig(batch_size=0))


def tiny_cfg(seed: int = 0, **kw) -> VisionConfig:
    return VisionConfig(backend="open_clip_json", model_json=str(TINY_JSON), seed=seed, **kw)


def test_open_clip_json_random_init_is_seeded():
    frames = synthetic_frames(5)
    rng_before = torch.get_rng_state()
    a = load_encoder(tiny_cfg(seed=0))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    digest = hashlib.sha256(TINY_JSON.read_bytes()).hexdigest()[:8]
    assert a.space == VisualSpace(f"open_clip-random/{TINY}/cfg{digest}/seed0", 32)
    assert "random" in a.space.name
    emb_a = a.embed_images(frames, batch_size=2)
    assert emb_a.shape == (5, 32) and torch.isfinite(emb_a).all()
    assert emb_a.std(dim=0).min() > 0  # different frames, different rows

    clear_cache()  # really build the model again
    a2 = load_encoder(tiny_cfg(seed=0))
    assert a2.model is not a.model
    torch.testing.assert_close(a2.embed_images(frames), emb_a, atol=1e-6, rtol=1e-5)

    b = load_encoder(tiny_cfg(seed=1))
    assert b.space.name.endswith("/seed1") and b.space != a.space
    assert not torch.allclose(b.embed_images(frames), emb_a, atol=1e-3)
    assert load_encoder(tiny_cfg(seed=0)).model is a2.model  # cached
    assert load_encoder(tiny_cfg()).embed_images([]).shape == (0, 32)


def test_open_clip_json_errors(tmp_path):
    with pytest.raises(VisionError, match="model_json"):
        load_encoder(VisionConfig(backend="open_clip_json"))
    with pytest.raises(VisionError, match="not found"):
        load_encoder(VisionConfig(backend="open_clip_json", model_json=str(tmp_path / "nope.json")))
    with pytest.raises(VisionError, match="registers as"):
        load_encoder(tiny_cfg(model_name="ViT-L-14"))
    bad = tmp_path / "bad_arch.json"
    bad.write_text('{"embed_dim": 8}')
    with pytest.raises(VisionError, match="embed_dim, vision_cfg and text_cfg"):
        load_encoder(VisionConfig(backend="open_clip_json", model_json=str(bad)))


def test_open_clip_checkpoint_matches_json_model(tmp_path):
    frames = synthetic_frames(4, seed=3)
    rand = load_encoder(tiny_cfg(seed=7))
    ckpt = tmp_path / "tiny.pt"
    torch.save(rand.model.state_dict(), ckpt)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()

    enc = load_encoder(
        VisionConfig(backend="open_clip", model_name=TINY, checkpoint=str(ckpt), model_json=str(TINY_JSON))
    )
    assert enc.space == VisualSpace(f"open_clip/{TINY}/{sha[:12]}", 32)
    assert enc.model is not rand.model
    torch.testing.assert_close(enc.embed_images(frames), rand.embed_images(frames), atol=1e-6, rtol=1e-5)

    other = tmp_path / "other.pt"
    torch.save(load_encoder(tiny_cfg(seed=8)).model.state_dict(), other)
    enc2 = load_encoder(VisionConfig(backend="open_clip", model_name=TINY, checkpoint=str(other)))
    assert enc2.space.name.startswith(f"open_clip/{TINY}/") and enc2.space != enc.space
    assert not torch.allclose(enc2.embed_images(frames), enc.embed_images(frames), atol=1e-3)


def test_open_clip_missing_checkpoint(tmp_path):
    missing = tmp_path / "ViT-L-14.pt"
    with pytest.raises(VisionError, match="checkpoint not found: .*no CLIP weights can be downloaded here"):
        load_encoder(VisionConfig(backend="open_clip", model_name="ViT-L-14", checkpoint=str(missing)))
    # a pretrained *tag* is not a file either: never downloaded
    with pytest.raises(VisionError, match="checkpoint not found: openai"):
        load_encoder(VisionConfig(backend="open_clip", model_name="ViT-L-14", checkpoint="openai"))
    with pytest.raises(VisionError, match="needs vision.checkpoint"):
        load_encoder(VisionConfig(backend="open_clip", model_name="ViT-L-14"))
    with pytest.raises(VisionError, match="needs vision.model_name"):
        load_encoder(VisionConfig(backend="open_clip", checkpoint=str(missing)))
    with pytest.raises(VisionError, match="schemas are not supported"):
        load_encoder(VisionConfig(backend="open_clip", model_name="hf-hub:org/repo", checkpoint=str(missing)))


def test_open_clip_unknown_architecture_and_bad_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(VisionError, match="unknown open_clip architecture"):
        load_encoder(VisionConfig(backend="open_clip", model_name="No-Such-Net", checkpoint=str(junk)))
    with pytest.raises(VisionError, match="cannot load open_clip"):
        load_encoder(
            VisionConfig(backend="open_clip", model_name=TINY, checkpoint=str(junk), model_json=str(TINY_JSON))
        )
