"""ViStoryBench's formulas (Zhuang et al., 2025, arXiv:2505.24862; code: github.com/ViStoryBench/vistorybench).

Onstage character count matching (OCCM), per shot, with E the number of characters the script puts on stage
and D the number detected in the generated shot::

    OCCM = 100 * exp(-|D - E| / (eps + E)),   eps = 1e-6

as in ``vistorybench/bench/content/cids_evaluator.py`` (``occm_scores.append(100 * np.exp(-float(abs(D - E)) /
(epsilon + E)))``); the story score is the mean over shots. A shot with E = 0 scores 100 when nothing is
detected and ~0 otherwise.

Copy-paste rate: how much a generated character looks like the one reference image the method was *given*
rather than like the character in general. With similarities s_0 to the given reference and s_1..s_k to the
character's other references, the rate of one generated image is the softmax weight of the given one at
temperature tau = 0.01::

    rate = exp(s_0 / tau) / sum_j exp(s_j / tau)

averaged over the character's generated images (:func:`copy_paste_softmax`; 1/(k+1) means no preference,
near 1 means a copy). The current official code replaced this by a chordal-distance form (same file:
``copy_rate = 0.5 * (1 + (d_gt - d_gr) / d_tr)`` with chordal distances ``d = sqrt(2 (1 - s))``, averaged over
images and other references, 0.5 when the references coincide); :func:`copy_paste_chordal` implements that
form so both can be reported, exactly as written there. Two quirks of that code are kept, not fixed: the
rate *grows* with the distance to the given reference, and its "0.5 when the references coincide" branch
(``d_tr < tau`` with ``tau = 1e-6``) can never fire because ``d_tr`` is clamped to at least ``sqrt(eps) = 1e-3``.

Style similarity: the mean pairwise cosine of CSD style embeddings of a story's shots ("self") and the mean
cosine between shots and the reference images ("cross"); CSD weights come from a local TorchScript archive
(:class:`CSDStyle`), otherwise the metric is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from auteur.metrics import MetricError, MetricSkipped
from auteur.metrics.consistency import cosine_matrix

OCCM_EPS = 1e-6
COPY_PASTE_TAU = 0.01


def occm(detected: int, expected: int, eps: float = OCCM_EPS) -> float:
    """Onstage character count matching of one shot: 100 * exp(-|D - E| / (eps + E))."""
    if detected < 0 or expected < 0:
        raise MetricError(f"character counts must be >= 0, got detected={detected}, expected={expected}")
    return 100.0 * math.exp(-abs(detected - expected) / (eps + expected))


def occm_story(detected: Sequence[int], expected: Sequence[int], eps: float = OCCM_EPS) -> float:
    """Mean OCCM over a story's shots (the two sequences are per shot, same length)."""
    if len(detected) != len(expected) or not detected:
        raise MetricError(f"need one detected and one expected count per shot, got {len(detected)} / {len(expected)}")
    return float(np.mean([occm(d, e, eps) for d, e in zip(detected, expected)]))


def copy_paste_softmax(sims: torch.Tensor, given: int = 0, tau: float = COPY_PASTE_TAU) -> float:
    """Copy-paste rate from similarities [G, R] of G generated images to R >= 2 references; ``given`` is the
    column of the reference the method was conditioned on. Mean over images of softmax(sims / tau)[given]."""
    if sims.ndim != 2 or sims.shape[1] < 2 or sims.shape[0] < 1:
        raise MetricError(f"copy-paste needs similarities [G >= 1, R >= 2], got shape {tuple(sims.shape)}")
    if not 0 <= given < sims.shape[1]:
        raise MetricError(f"given reference index {given} outside 0..{sims.shape[1] - 1}")
    return float(torch.softmax(sims.double() / tau, dim=1)[:, given].mean())


def copy_paste_chordal(sims: torch.Tensor, ref_sims: torch.Tensor, eps: float = 1e-6, tau: float = 1e-6) -> float:
    """The official code's chordal copy rate (see module docstring): ``sims`` [G, R] generated-to-reference
    cosines with column 0 the given reference, ``ref_sims`` [R, R] reference-to-reference cosines."""
    if sims.ndim != 2 or sims.shape[1] < 2 or ref_sims.shape != (sims.shape[1], sims.shape[1]):
        raise MetricError(
            f"need sims [G, R >= 2] and ref_sims [R, R], got {tuple(sims.shape)}, {tuple(ref_sims.shape)}"
        )
    s = sims.double().clamp(-1, 1)
    s_tr = ref_sims.double().clamp(-1, 1)[0, 1:]
    d_gt = torch.sqrt(torch.clamp(2 * (1 - s[:, 0]), min=eps))
    d_gr = torch.sqrt(torch.clamp(2 * (1 - s[:, 1:]), min=eps))
    d_tr = torch.sqrt(torch.clamp(2 * (1 - s_tr), min=eps))
    rate = 0.5 * (1 + (d_gt[:, None] - d_gr) / torch.clamp(d_tr, min=eps)[None])
    rate[:, d_tr < tau] = 0.5
    return float(rate.mean())


def style_similarity(shots: torch.Tensor, refs: torch.Tensor | None = None) -> dict[str, float]:
    """Style "self" (mean pairwise cosine of shot style embeddings [N, D], N >= 2) and, with references
    [R, D], "cross" (mean shot-to-reference cosine)."""
    from auteur.metrics.consistency import self_similarity

    out = {"self": self_similarity(shots)}
    if refs is not None and refs.shape[0] > 0:
        out["cross"] = float(cosine_matrix(shots, refs).mean())
    return out


class CSDStyle:
    """CSD style embeddings from a local TorchScript archive: ``model(x)`` with x [B, 3, 224, 224] (CLIP
    mean/std normalised) returns style embeddings [B, D]. Export the CSD ViT-L model (Somepalli et al.,
    2024) that ViStoryBench uses with ``torch.jit.trace`` to obtain one; none exists offline."""

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, torchscript: str | Path | None, device: str = "cpu") -> None:
        if not torchscript:
            raise MetricSkipped("no CSD style weights given (set metrics.csd_torchscript to a TorchScript archive)")
        path = Path(torchscript).expanduser()
        if not path.is_file():
            raise MetricSkipped(f"CSD TorchScript archive not found: {path}")
        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:
            raise MetricError(f"cannot load CSD TorchScript {path}: {str(e).splitlines()[0]}") from None
        self.device = device

    @torch.inference_mode()
    def embed(self, images: Sequence) -> torch.Tensor:
        """Style embeddings [N, D] (float32, CPU) of PIL images or uint8 [H, W, 3] arrays."""
        from PIL import Image

        from auteur.vision import resize_center_crop

        mean, std = torch.tensor(self.MEAN).view(3, 1, 1), torch.tensor(self.STD).view(3, 1, 1)
        xs = []
        for im in images:
            im = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8))
            crop = resize_center_crop(im.convert("RGB"), 224)
            xs.append((torch.from_numpy(np.asarray(crop, np.float32).copy()).permute(2, 0, 1) / 255 - mean) / std)
        return self.model(torch.stack(xs).to(self.device)).float().cpu()
