"""Each formula against a reference computation or hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from auteur.metrics import MetricError
from auteur.metrics.clip_t import clip_t_from_embeddings
from auteur.metrics.consistency import reference_similarity, self_similarity
from auteur.metrics.frechet import feature_stats, frechet_distance, frechet_distance_from_features
from auteur.metrics.inception_score import inception_score
from auteur.metrics.vistory import copy_paste_chordal, copy_paste_softmax, occm, occm_story, style_similarity


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's reference: scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_matches_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(200, 16))
    b = rng.normal(loc=0.3, scale=1.5, size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.5
    assert frechet_distance_from_features(a, b) == pytest.approx(_scipy_fid(a, b), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize(("n", "m"), [(3, 4), (5, 5), (10, 30)])
def test_frechet_with_fewer_samples_than_dimensions_matches_scipy_sqrtm(n, m):
    # N + M - 2 < D: computed in the span of the centred rows; the reference works on the full [D, D] matrices
    rng = np.random.default_rng(n * m)
    a = rng.normal(size=(n, 48)) ** 2
    b = rng.normal(loc=0.5, size=(m, 48)) ** 2
    ours = frechet_distance_from_features(a, b)
    # exact: tr (S_a S_b)^{1/2} = nuclear norm of Xa Xb' / sqrt((n-1)(m-1)), X the centred rows
    tr = scipy.linalg.svdvals((a - a.mean(0)) @ (b - b.mean(0)).T).sum() / math.sqrt((n - 1) * (m - 1))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    exact = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr
    assert ours == pytest.approx(exact, rel=1e-12)
    # the [D, D] routes lose ~1e-8 relative on these singular covariances (square roots of round-off eigenvalues)
    assert ours == pytest.approx(_scipy_fid(a, b), rel=1e-7)
    assert ours == pytest.approx(frechet_distance(*feature_stats(a), *feature_stats(b)), rel=1e-7)
    assert frechet_distance_from_features(a, a) == pytest.approx(0, abs=1e-9)
    with pytest.raises(MetricError):
        frechet_distance_from_features(a, b[:, :10])


def test_frechet_hand_computed():
    # 1-D: (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2) = 4 + 4 + 9 - 12 = 5
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(5)
    # identical Gaussians: 0; diagonal 2-D: |mu|^2 + sum (sqrt(a) - sqrt(b))^2 = 2 + (2-1)^2 + (3-1)^2 = 7
    s = np.diag([4.0, 9.0])
    assert frechet_distance(np.zeros(2), s, np.zeros(2), s) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(np.ones(2), s, np.zeros(2), np.eye(2)) == pytest.approx(7)


def test_feature_stats_errors():
    with pytest.raises(MetricError):
        feature_stats(np.zeros((1, 4)))
    with pytest.raises(MetricError):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_inception_score_hand_computed():
    # two confident, different classes: p(y) = (0.5, 0.5), KL = log 2 each -> IS = 2
    assert inception_score(np.eye(2))[0] == pytest.approx(2.0)
    # identical predictions: KL = 0 -> IS = 1
    assert inception_score(np.full((4, 3), 1 / 3))[0] == pytest.approx(1.0)
    # hand: p1 = (0.9, 0.1), p2 = (0.1, 0.9): p(y) = (0.5, 0.5); KL = 0.9 ln 1.8 + 0.1 ln 0.2
    kl = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    assert inception_score(np.array([[0.9, 0.1], [0.1, 0.9]]))[0] == pytest.approx(math.exp(kl), rel=1e-9)
    # splits: mean and std over chunks; [eye(2); uniform 2x2] -> chunks with IS 2 and 1
    m, s = inception_score(np.vstack([np.eye(2), np.full((2, 2), 0.5)]), splits=2)
    assert (m, s) == (pytest.approx(1.5), pytest.approx(0.5))
    # logits path equals the softmax path
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.5]])
    assert inception_score(logits, from_logits=True)[0] == pytest.approx(inception_score(logits.softmax(1))[0])
    with pytest.raises(MetricError):
        inception_score(np.array([[0.5, 0.6]]))


def test_occm_hand_computed():
    assert occm(2, 2) == pytest.approx(100.0)
    assert occm(1, 2) == pytest.approx(100 * math.exp(-0.5), rel=1e-5)
    assert occm(3, 1) == pytest.approx(100 * math.exp(-2), rel=1e-5)
    assert occm(0, 0) == 100.0 and occm(1, 0) < 1e-10
    assert occm_story([2, 1], [2, 2]) == pytest.approx((100 + 100 * math.exp(-0.5)) / 2, rel=1e-5)
    with pytest.raises(MetricError):
        occm_story([1], [1, 2])


def test_copy_paste_softmax_hand_computed():
    # one image, s = (0.80, 0.79): weight of the given reference = 1 / (1 + exp(-1)) at tau = 0.01
    sims = torch.tensor([[0.80, 0.79]], dtype=torch.float64)
    assert copy_paste_softmax(sims) == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6)
    # equal similarities to 3 references -> 1/3; more similar to another reference -> small
    assert copy_paste_softmax(torch.tensor([[0.5, 0.5, 0.5]])) == pytest.approx(1 / 3)
    assert copy_paste_softmax(torch.tensor([[0.5, 0.6]], dtype=torch.float64)) == pytest.approx(
        1 / (1 + math.exp(10)), rel=1e-6
    )
    # mean over images
    two = torch.tensor([[0.8, 0.79], [0.5, 0.5]], dtype=torch.float64)
    assert copy_paste_softmax(two) == pytest.approx((1 / (1 + math.exp(-1)) + 0.5) / 2, rel=1e-6)
    with pytest.raises(MetricError):
        copy_paste_softmax(torch.tensor([[0.5]]))


def test_copy_paste_chordal_hand_computed():
    # s_gt = 1 (a copy of the given reference): d_gt = sqrt(eps); s_gr = 0: d_gr = sqrt(2); s_tr = 0: d_tr = sqrt(2)
    sims = torch.tensor([[1.0, 0.0]])
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = 0.5 * (1 + (math.sqrt(1e-6) - math.sqrt(2)) / math.sqrt(2))
    assert copy_paste_chordal(sims, ref) == pytest.approx(expected, rel=1e-6)
    # a copy of the *other* reference: s_gt = 0, s_gr = 1
    other = 0.5 * (1 + (math.sqrt(2) - math.sqrt(1e-6)) / math.sqrt(2))
    assert copy_paste_chordal(torch.tensor([[0.0, 1.0]]), ref) == pytest.approx(other, rel=1e-6)


def test_consistency_hand_computed():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: 0, 1/sqrt2, 1/sqrt2
    assert self_similarity(e) == pytest.approx((2 / math.sqrt(2)) / 3, rel=1e-6)
    assert reference_similarity(e[:2], torch.tensor([[1.0, 0.0]])) == pytest.approx(0.5)
    assert style_similarity(e[:2], torch.tensor([[1.0, 0.0]])) == {
        "self": pytest.approx(0.0),
        "cross": pytest.approx(0.5),
    }
    with pytest.raises(MetricError):
        self_similarity(e[:1])


def test_clip_t_from_embeddings():
    img = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    txt = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    assert clip_t_from_embeddings(img, txt).tolist() == pytest.approx([100.0, 100 / math.sqrt(2)])
