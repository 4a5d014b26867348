"""CLIP-T with a real open_clip model built tiny from a JSON config (random init: a test model only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from auteur.metrics import MetricError, MetricSkipped
from auteur.metrics.clip_t import ClipConfig, ClipScorer


@pytest.fixture
def tiny_clip_json(tmp_path):
    """The shipped tiny config but with open_clip's full BPE vocabulary (49408), so its tokenizer fits."""
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path / "tiny_clip_t_test.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_t_equals_100_cosine_of_the_model_embeddings(tiny_clip_json):
    scorer = ClipScorer(ClipConfig(model_json=tiny_clip_json, allow_random=True))
    assert scorer.random  # labelled as a meaningless test model
    images, texts = _images(3), ["a red apple", "slice the bread", "a chef cooking"]
    scores = scorer.score(images, texts)
    assert scores.shape == (3,)
    # recompute by hand through the open_clip model
    with torch.inference_mode():
        img = scorer.model.encode_image(scorer.encoder.preprocess(images)).float()
        txt = scorer.model.encode_text(scorer.tokenizer(texts)).float()
    manual = 100 * torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert torch.allclose(scores, manual, atol=1e-4)
    assert (scores.abs() <= 100 + 1e-4).all()
    # texts matter: swapping them changes the scores
    assert not torch.allclose(scorer.score(images, texts[::-1]), scores)


def test_clip_t_skips_without_weights_and_checks_vocab():
    with pytest.raises(MetricSkipped, match="no CLIP weights"):
        ClipScorer(ClipConfig())
    with pytest.raises(MetricSkipped, match="not found"):
        ClipScorer(ClipConfig(checkpoint="/nonexistent/clip.pt"))
    # the shipped tiny config has vocab 1000: the BPE tokenizer's ids do not fit, said clearly
    scorer = ClipScorer(ClipConfig(model_json="tiny_open_clip", allow_random=True))
    with pytest.raises(MetricError, match="embeddings"):
        scorer.score(_images(1), ["a cat"])
