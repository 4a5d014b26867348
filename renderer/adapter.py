"""The embedding adapter: the director's visual states as extra text tokens for FLUX.

FLUX.1 Redux conditions FLUX on an image by projecting image features into the T5 token space
(``ReduxImageEncoder``: Linear -> SiLU -> Linear) and concatenating them to ``prompt_embeds`` along the sequence
axis; ``FluxPriorReduxPipeline`` returns the longer ``prompt_embeds`` and the pipeline then builds ``txt_ids`` of
zeros for all of them (text tokens carry no RoPE position). VideoAuteur (§4.2) injects the director's predicted
visual state z_t the same way. A single embedding vector becomes ``num_tokens`` tokens here, so the adapter
expands it: LayerNorm -> Linear -> SiLU -> Linear to ``num_tokens * joint_attention_dim``.
"""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingAdapter(nn.Module):
    """Visual embeddings [B, dim] (or [B, G, dim] for G panels) -> tokens [B, G*M, joint_attention_dim]."""

    def __init__(self, dim: int, joint_attention_dim: int, num_tokens: int = 4, hidden: int = 256, zero_init=False):
        super().__init__()
        self.dim, self.joint_attention_dim, self.num_tokens = dim, joint_attention_dim, num_tokens
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.down = nn.Linear(hidden, num_tokens * joint_attention_dim)
        if zero_init:  # an untrained adapter then adds zero tokens: a pretrained FLUX starts unchanged
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: [B, dim] or [B, G, dim] -> [B, G*num_tokens, joint_attention_dim]."""
        if z.ndim == 2:
            z = z[:, None]
        if z.ndim != 3 or z.shape[-1] != self.dim:
            raise ValueError(f"adapter expects [B, {self.dim}] or [B, G, {self.dim}], got {tuple(z.shape)}")
        b, g, _ = z.shape
        tokens = self.down(self.act(self.up(self.norm(z))))
        return tokens.reshape(b, g * self.num_tokens, self.joint_attention_dim)


def append_tokens(prompt_embeds: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``prompt_embeds`` [B, L, C] + ``tokens`` [B, T, C] -> ([B, L+T, C], txt_ids [L+T, 3] of zeros).

    As FluxPriorReduxPipeline + FluxFillPipeline combine them: concatenated along the sequence, zero text ids.
    ValueError unless both are in the same token space (batch and width: FLUX's joint_attention_dim).
    """
    if prompt_embeds.ndim != 3 or tokens.ndim != 3 or tokens.shape[::2] != prompt_embeds.shape[::2]:
        raise ValueError(
            f"adapter tokens {list(tokens.shape)} do not fit prompt_embeds {list(prompt_embeds.shape)}: "
            "both must be [B, *, joint_attention_dim] with the same B and width (the T5 token width)"
        )
    embeds = torch.cat([prompt_embeds, tokens.to(prompt_embeds.dtype)], dim=1)
    txt_ids = torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=embeds.dtype)
    return embeds, txt_ids
