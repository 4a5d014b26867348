"""Keyframe consistency in a visual space.

- :func:`self_similarity`: the mean pairwise cosine of a plan's keyframe embeddings over all pairs i < j (the
  CLIP-I style self-similarity that story-generation papers report; ViStoryBench's CIDS "self" score is the
  same statistic over character crops).
- :func:`reference_similarity`: the mean cosine between every keyframe and every reference image (ViStoryBench's
  "cross" score shape: the mean of the [N, R] similarity matrix).

Both are in [-1, 1] (x 100 in the harness tables) and depend on the space: compare systems only in one space.
"""

from __future__ import annotations

import torch

from auteur.metrics import MetricError


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities [N, M] between rows of a [N, D] and b [M, D]."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise MetricError(f"embeddings must be [N, D] and [M, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return a @ b.T


def self_similarity(emb: torch.Tensor) -> float:
    """Mean cosine over the N(N-1)/2 pairs i < j of keyframe embeddings [N, D] (N >= 2)."""
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise MetricError(f"self-similarity needs at least 2 keyframe embeddings, got shape {tuple(emb.shape)}")
    sim = cosine_matrix(emb, emb)
    iu = torch.triu_indices(emb.shape[0], emb.shape[0], offset=1)
    return float(sim[iu[0], iu[1]].mean())


def reference_similarity(emb: torch.Tensor, refs: torch.Tensor) -> float:
    """Mean cosine between every keyframe [N, D] and every reference [R, D]."""
    if emb.shape[0] == 0 or refs.shape[0] == 0:
        raise MetricError("reference similarity needs at least one keyframe and one reference")
    return float(cosine_matrix(emb, refs).mean())
