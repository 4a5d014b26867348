"""CLIP-T: text-image alignment as 100 x the cosine of open_clip text and image embeddings.

VideoAuteur (Xiao et al., 2025) reports CLIP-T of generated keyframes against their captions; the score is the
cosine similarity of the L2-normalised image and text embeddings times 100 (no clipping at 0 and no 2.5
weight, unlike Hessel et al.'s CLIPScore).

Weights come from a local open_clip checkpoint (``clip.checkpoint`` with ``clip.model_name``, e.g. ViT-L-14);
none exist offline, so the harness skips CLIP-T unless one is given. ``allow_random=True`` with a model-config
JSON builds a randomly initialised open_clip model instead: for tests only, its scores mean nothing, and
:attr:`ClipScorer.random` says so (the harness labels the column).

The tokenizer is open_clip's own: for architectures without an ``hf_tokenizer_name`` it is the BPE
``SimpleTokenizer`` whose vocabulary ships inside the open_clip package (nothing is downloaded). Its ids go up
to 49407, so a model config must have ``text_cfg.vocab_size >= 49408`` (checked).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from auteur.errors import VisionError
from auteur.metrics import MetricError, MetricSkipped


@dataclass
class ClipConfig:
    """Which open_clip model scores CLIP-T (see the module docstring)."""

    model_name: str = "ViT-L-14"
    checkpoint: str | None = None
    model_json: str | None = None
    allow_random: bool = False
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 16


class ClipScorer:
    """Scores (image, text) pairs: ``score(images, texts)`` -> [N] float32 of 100 x cosine."""

    def __init__(self, cfg: ClipConfig) -> None:
        import open_clip

        from auteur.vision import VisionConfig, load_encoder

        if cfg.checkpoint:
            if not Path(cfg.checkpoint).expanduser().is_file():
                raise MetricSkipped(f"CLIP checkpoint not found: {cfg.checkpoint}")
            vcfg = VisionConfig(
                backend="open_clip", model_name=cfg.model_name, checkpoint=cfg.checkpoint, model_json=cfg.model_json
            )
            name = cfg.model_name.replace("/", "-")
        elif cfg.allow_random and cfg.model_json:
            vcfg = VisionConfig(backend="open_clip_json", model_json=cfg.model_json, seed=cfg.seed)
            name = None
        else:
            raise MetricSkipped("no CLIP weights given (set metrics.clip.checkpoint to a local open_clip checkpoint)")
        vcfg.device, vcfg.batch_size = cfg.device, cfg.batch_size
        try:
            self.encoder = load_encoder(vcfg)
        except VisionError as e:
            raise MetricError(f"CLIP-T: {e}") from None
        self.random = self.encoder.space.name.startswith("open_clip-random")
        if name is None:  # open_clip registered the JSON under its file stem
            name = self.encoder.space.name.split("/")[1]
        self.tokenizer = open_clip.get_tokenizer(name)
        self.model = self.encoder.model
        self.vocab = int(self.model.token_embedding.num_embeddings) if hasattr(self.model, "token_embedding") else None
        self.space = self.encoder.space

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings [N, D] (float32, CPU)."""
        ids = self.tokenizer(list(texts))
        if self.vocab is not None and int(ids.max()) >= self.vocab:
            raise MetricError(
                f"the tokenizer emits ids up to {int(ids.max())} but the text tower has {self.vocab} embeddings"
            )
        out = self.model.encode_text(ids.to(self.encoder.device)).float().cpu()
        return torch.nn.functional.normalize(out, dim=-1)

    def image_embeddings(self, images: Sequence) -> torch.Tensor:
        """L2-normalised image embeddings [N, D] (float32, CPU)."""
        return torch.nn.functional.normalize(self.encoder.embed_images(images), dim=-1)

    def score(self, images: Sequence, texts: Sequence[str]) -> torch.Tensor:
        """CLIP-T of each (image, text) pair: [N] = 100 x cos(image_i, text_i)."""
        if len(images) != len(texts):
            raise MetricError(f"{len(images)} images but {len(texts)} texts")
        if len(texts) == 0:
            raise MetricError("CLIP-T needs at least one (image, text) pair")
        return clip_t_from_embeddings(self.image_embeddings(images), self.text_embeddings(texts))


def clip_t_from_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """100 x row-wise cosine of image [N, D] and text [N, D] embeddings -> [N]."""
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise MetricError(f"embeddings must both be [N, D], got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    return 100.0 * torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
