"""The embedding projector: the director's visual embeddings into the video model's image-conditioning space.

Wan 2.1 I2V conditions on image tokens (``image_embeds``: CLIP ViT-H penultimate hidden states, [B, 257, 1280]
in the released model) through its image embedder and the extra key/value projections of its cross-attention.
VideoAuteur conditions the video model on the director's regressed visual states instead; the projector maps
each state ``z`` [dim] to ``num_tokens`` such tokens. It is trained with the LoRA (``videogen train``).
"""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingProjector(nn.Module):
    """``[B, in_dim] -> [B, num_tokens, out_dim]``: LayerNorm, MLP, then learned per-token offsets."""

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int = 4, hidden: int = 64):
        super().__init__()
        self.in_dim, self.out_dim, self.num_tokens = in_dim, out_dim, num_tokens
        # the director's spaces differ wildly in scale (raw pooled CNN features vs unit CLIP vectors)
        self.norm = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * out_dim))
        self.tokens = nn.Parameter(torch.zeros(num_tokens, out_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.in_dim:
            raise ValueError(f"projector expects embeddings [B, {self.in_dim}], got {tuple(z.shape)}")
        # in the parameters' dtype: fp32, or bf16 where FSDP's mixed precision casts them (layer_norm refuses a mix)
        out = self.mlp(self.norm(z.to(self.norm.weight.dtype))).view(z.shape[0], self.num_tokens, self.out_dim)
        return out + self.tokens
