import pytest
import torch

from videogen.projector import EmbeddingProjector


def test_projector_shapes_and_gradients():
    torch.manual_seed(0)
    p = EmbeddingProjector(in_dim=8, out_dim=4, num_tokens=5, hidden=16)
    z = torch.randn(3, 8)
    out = p(z)
    assert out.shape == (3, 5, 4)
    out.sum().backward()
    assert p.mlp[0].weight.grad is not None and p.tokens.grad is not None
    # different embeddings give different tokens (the condition carries the embedding)
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        p(torch.randn(3, 7))
