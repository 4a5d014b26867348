"""The rolling-context canvas: reference keyframes and the panel to generate, side by side.

VideoAuteur §4.2 renders D(c_tiled, z_{t-1}, z_t, I_{t-3}, I_{t-2}) -> I_{t-1}, I_t: the history keyframes and
the frames to generate share one image, as In-Context-LoRA tiles its panels, so FLUX.1 Fill in-paints the masked
panels while attending to the visible ones. Panels are laid out left to right: the k context keyframes (oldest
first), then the panels to generate. The mask is white (255, "generate") exactly over the panels to generate and
black (0, "keep") over the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from auteur.vision import resize_center_crop


@dataclass
class Canvas:
    """A tiled canvas: ``image`` RGB [H, (k+g)*W], ``mask`` L [H, (k+g)*W] (255 over the g generated panels)."""

    image: Image.Image
    mask: Image.Image
    num_context: int
    num_generate: int
    panel_width: int
    panel_height: int

    def panel(self, image: Image.Image, i: int) -> Image.Image:
        """Panel ``i`` (0-based, left to right) cut out of an image of the canvas's size."""
        w = self.panel_width
        return image.crop((i * w, 0, (i + 1) * w, self.panel_height))

    def generated(self, image: Image.Image) -> list[Image.Image]:
        """The generated panels of a rendered canvas image."""
        return [self.panel(image, self.num_context + j) for j in range(self.num_generate)]


def fit_panel(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` as an RGB ``width`` x ``height`` panel: resized to cover it, centre-cropped."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    side = max(width, height)
    square = resize_center_crop(image, side)
    return square.crop(
        ((side - width) // 2, (side - height) // 2, (side - width) // 2 + width, (side - height) // 2 + height)
    )


def make_canvas(context: Sequence[Image.Image], num_generate: int, width: int, height: int) -> Canvas:
    """Tile ``context`` keyframes (oldest first) and ``num_generate`` blank panels of ``width`` x ``height``.

    The blank panels are black: FluxFillPipeline multiplies the image by (1 - mask) before encoding it, so what
    lies under the mask never reaches the model.
    """
    if num_generate < 1:
        raise ValueError("a canvas needs at least one panel to generate")
    k = len(context)
    total = k + num_generate
    image = Image.new("RGB", (total * width, height), (0, 0, 0))
    mask = Image.new("L", (total * width, height), 0)
    for i, frame in enumerate(context):
        image.paste(fit_panel(frame, width, height), (i * width, 0))
    mask.paste(255, (k * width, 0, total * width, height))
    return Canvas(image, mask, k, num_generate, width, height)


def tiled_caption(captions: Sequence[str]) -> str:
    """One prompt naming each panel in canvas order: ``"[SCENE-1] <c_1> [SCENE-2] <c_2> ..."``.

    In-Context-LoRA style: the text says which caption belongs to which panel, so the context panels' captions
    tell the model what it sees and the last ones what to draw.
    """
    return " ".join(f"[SCENE-{i}] {' '.join(c.split())}".rstrip() for i, c in enumerate(captions, start=1))
