"""The Frechet distance between Gaussians fitted to feature sets, and FID / FVD on top of it.

    d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

FID (Heusel et al., 2017) fits the Gaussians to Inception-v3 pool features (2048-d) of real and generated
images; FVD (Unterthiner et al., 2018) to I3D features (400-d logits) of real and generated clips. VideoAuteur
(Xiao et al., 2025) reports FID and FVD of its generated videos against the ground-truth clips.

``tr((S_1 S_2)^{1/2})`` is computed as the sum of the square roots of the eigenvalues of
``S_1^{1/2} S_2 S_1^{1/2}``, a symmetric positive semi-definite matrix with the same spectrum as ``S_1 S_2``;
this is exact, needs no complex arithmetic, and agrees with ``scipy.linalg.sqrtm`` (the pytorch-fid reference)
to float64 precision (``tests/auteur/metrics/test_formulas.py`` checks both).

No Inception-v3 or I3D weights exist offline: the feature extractors load from local paths and raise
:class:`~auteur.metrics.MetricSkipped` when none is given.

- Inception-v3: a torchvision ``inception_v3`` state dict (``inception_v3_google-0cc3c7bd.pth``). Note that the
  TF-ported weights of pytorch-fid give different absolute FID values; compare numbers only within one
  extractor.
- I3D: a TorchScript archive with the interface of the widely used ``i3d_torchscript.pt`` (StyleGAN-V / the
  original FVD port): ``model(videos, rescale=False, resize=False, return_features=True)`` with ``videos``
  float [B, 3, T, 224, 224] in [-1, 1] returns [B, 400].
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from auteur.metrics import MetricError, MetricSkipped

log = logging.getLogger(__name__)


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of a feature set [N, D], N >= 2."""
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2:
        raise MetricError(f"features must be [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise MetricError(f"a covariance needs at least 2 feature rows, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise MetricError("features contain NaN or inf")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); mu [D], sigma [D, D]."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise MetricError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    r1 = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_from_features(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to feature sets ``a`` [N, D] and ``b`` [M, D]."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


# ------------------------------------------------------------------------------------------ Inception-v3


class InceptionV3:
    """torchvision Inception-v3 from a local state dict: pool features [N, 2048] and class logits [N, 1000]."""

    def __init__(self, weights: str | Path | None, device: str = "cpu", batch_size: int = 16) -> None:
        if not weights:
            raise MetricSkipped("no Inception-v3 weights given (set metrics.inception_weights to a local .pth)")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MetricSkipped(f"Inception-v3 weights not found: {path}")
        from torchvision.models import inception_v3

        model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except Exception as e:  # a corrupt or foreign file: several exception types
            raise MetricError(f"cannot load Inception-v3 weights {path}: {str(e).splitlines()[0]}") from None
        self.model = model.to(device).eval()
        self.device, self.batch_size = device, batch_size

    def _preprocess(self, images: Sequence) -> torch.Tensor:
        from PIL import Image

        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        out = []
        for im in images:
            im = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8))
            im = im.convert("RGB").resize((299, 299), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.asarray(im, np.float32).copy()).permute(2, 0, 1) / 255.0
            out.append((x - mean) / std)
        return torch.stack(out)

    @torch.inference_mode()
    def features_and_logits(self, images: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool features [N, 2048] and logits [N, 1000] (float32, CPU) of PIL images or uint8 [H, W, 3] arrays."""
        feats, logits = [], []
        pooled: list[torch.Tensor] = []
        hook = self.model.avgpool.register_forward_hook(lambda _m, _i, o: pooled.append(o.flatten(1)))
        try:
            for s in range(0, len(images), self.batch_size):
                x = self._preprocess(images[s : s + self.batch_size]).to(self.device)
                logits.append(self.model(x).float().cpu())
                feats.append(pooled.pop().float().cpu())
        finally:
            hook.remove()
        if not feats:
            raise MetricError("no images given")
        return torch.cat(feats), torch.cat(logits)


# --------------------------------------------------------------------------------------------------- I3D


class I3D:
    """An I3D TorchScript archive (see the module docstring): clips [B, 3, T, 224, 224] in [-1, 1] -> [B, 400]."""

    def __init__(self, torchscript: str | Path | None, device: str = "cpu") -> None:
        if not torchscript:
            raise MetricSkipped("no I3D weights given (set metrics.i3d_torchscript to a local i3d_torchscript.pt)")
        path = Path(torchscript).expanduser()
        if not path.is_file():
            raise MetricSkipped(f"I3D TorchScript archive not found: {path}")
        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:
            raise MetricError(f"cannot load I3D TorchScript {path}: {str(e).splitlines()[0]}") from None
        self.device = device

    @torch.inference_mode()
    def features(self, clips: Sequence[np.ndarray]) -> torch.Tensor:
        """Features [N, 400] of clips, each uint8 [T, H, W, 3] (T >= 10); resized to 224 and scaled to [-1, 1]."""
        out = []
        for clip in clips:
            x = torch.from_numpy(np.asarray(clip, np.uint8)).permute(3, 0, 1, 2).float()  # [3, T, H, W]
            x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
            x = (x / 127.5 - 1.0)[None].to(self.device)
            out.append(self.model(x, rescale=False, resize=False, return_features=True).float().cpu())
        if not out:
            raise MetricError("no clips given")
        return torch.cat(out)
