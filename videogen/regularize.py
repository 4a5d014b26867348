"""Embedding regularisers for robust conditioning: ``z' = S(M(z + eps))`` (VideoAuteur §4.3, Table 7).

At inference the video model is conditioned on the *director's* embeddings, which are imperfect regressions
of the real keyframe embeddings it was trained on. Training on corrupted embeddings makes it tolerate that
gap. Three corruptions, applied in this order and each switchable by config (so Table 7's rows are presets):

- ``eps``: Gaussian noise with ``sigma = noise_scale x std(z)`` (0.5 in the paper), std taken per embedding row;
- ``M``: random masking, a ``mask_ratio`` (25%) of the entries of each row set to zero;
- ``S``: random shuffling, a ``shuffle_ratio`` (25%) of the entries of each row permuted among themselves.
"""

from __future__ import annotations

import torch

from videogen.config import RegularizeConfig


def add_noise(z: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z + eps`` with ``eps ~ N(0, (scale * std(z_row))^2)``; ``z``: [B, D] -> [B, D]."""
    std = z.float().std(dim=-1, keepdim=True)
    eps = torch.randn(z.shape, generator=generator, dtype=torch.float32, device=z.device)
    return (z.float() + eps * std * scale).to(z.dtype)


def _pick(rows: int, dim: int, ratio: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """[rows, k] indices: ``k = round(ratio * dim)`` distinct positions per row, chosen uniformly."""
    k = int(round(ratio * dim))
    scores = torch.rand(rows, dim, generator=generator, device=device)
    return scores.argsort(dim=-1)[:, :k]


def random_mask(z: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero ``round(ratio * D)`` entries of each row of ``z`` [B, D]."""
    idx = _pick(z.shape[0], z.shape[1], ratio, generator, z.device)
    return z.scatter(1, idx, torch.zeros_like(idx, dtype=z.dtype))


def random_shuffle(z: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Permute ``round(ratio * D)`` entries of each row of ``z`` [B, D] among themselves (the rest stay put)."""
    idx = _pick(z.shape[0], z.shape[1], ratio, generator, z.device)
    k = idx.shape[1]
    if k < 2:
        return z
    perm = torch.rand(z.shape[0], k, generator=generator, device=z.device).argsort(dim=-1)
    src = idx.gather(1, perm)
    return z.scatter(1, idx, z.gather(1, src))


def regularize(z: torch.Tensor, cfg: RegularizeConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """``S(M(z + eps))`` on embeddings ``z`` [B, D] (or [D]); each part only when switched on in ``cfg``."""
    squeeze = z.ndim == 1
    out = z[None] if squeeze else z
    if cfg.noise and cfg.noise_scale > 0:
        out = add_noise(out, cfg.noise_scale, generator)
    if cfg.mask and cfg.mask_ratio > 0:
        out = random_mask(out, cfg.mask_ratio, generator)
    if cfg.shuffle and cfg.shuffle_ratio > 0:
        out = random_shuffle(out, cfg.shuffle_ratio, generator)
    return out[0] if squeeze else out
