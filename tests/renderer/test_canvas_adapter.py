"""Canvas tiling and masks (pixel-exact), caption tiling, embedding adapter shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from renderer.adapter import EmbeddingAdapter, append_tokens
from renderer.canvas import make_canvas, tiled_caption


def solid(rgb, size=(8, 6)) -> Image.Image:
    return Image.new("RGB", size, rgb)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_canvas_tiles_context_then_masked_panel(k):
    colours = [(10, 20, 30), (40, 50, 60), (70, 80, 90)][:k]
    c = make_canvas([solid(col) for col in colours], 1, 8, 6)
    img, mask = np.asarray(c.image), np.asarray(c.mask)
    assert img.shape == (6, 8 * (k + 1), 3) and mask.shape == (6, 8 * (k + 1))
    for i, col in enumerate(colours):
        assert (img[:, 8 * i : 8 * (i + 1)] == col).all()
        assert (mask[:, 8 * i : 8 * (i + 1)] == 0).all()
    assert (mask[:, 8 * k :] == 255).all() and (img[:, 8 * k :] == 0).all()
    assert c.panel(c.image, k).size == (8, 6) and len(c.generated(c.image)) == 1


def test_canvas_two_generated_panels_and_resizing():
    big = Image.new("RGB", (40, 20), (200, 0, 0))
    big.paste((0, 0, 200), (0, 0, 4, 20))  # a blue strip on the left, cropped away by the centre crop
    c = make_canvas([big], 2, 8, 8)
    img, mask = np.asarray(c.image), np.asarray(c.mask)
    assert img.shape == (8, 24, 3)
    assert (img[:, :8] == (200, 0, 0)).all()
    assert (mask[:, :8] == 0).all() and (mask[:, 8:] == 255).all()


def test_tiled_caption():
    assert (
        tiled_caption(["Bread  in\na toaster.", "Butter it."]) == "[SCENE-1] Bread in a toaster. [SCENE-2] Butter it."
    )
    assert tiled_caption(["x"]) == "[SCENE-1] x"


def test_adapter_shapes_and_tokens_appended():
    torch.manual_seed(0)
    a = EmbeddingAdapter(dim=12, joint_attention_dim=32, num_tokens=3, hidden=16)
    assert a(torch.randn(2, 12)).shape == (2, 3, 32)
    assert a(torch.randn(2, 2, 12)).shape == (2, 6, 32)
    with pytest.raises(ValueError):
        a(torch.randn(2, 11))
    embeds, ids = append_tokens(torch.zeros(2, 5, 32), a(torch.randn(2, 12)))
    assert embeds.shape == (2, 8, 32) and ids.shape == (8, 3) and not ids.any()
    assert embeds[:, 5:].abs().sum() > 0
    z = EmbeddingAdapter(12, 32, 3, 16, zero_init=True)(torch.randn(4, 12))
    assert z.shape == (4, 3, 32) and not z.any()


def test_adapter_trains():
    torch.manual_seed(0)
    a = EmbeddingAdapter(8, 16, 2, 16)
    x, target = torch.randn(4, 8), torch.randn(4, 2, 16)
    opt = torch.optim.Adam(a.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(a(x), target)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
