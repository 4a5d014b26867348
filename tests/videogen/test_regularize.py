import pytest
import torch

from videogen.config import RegularizeConfig
from videogen.regularize import add_noise, random_mask, random_shuffle, regularize


def _z(rows=64, dim=400):
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(0)) * 3 + 1


def test_noise_std_is_half_the_embedding_std():
    z = _z()
    out = add_noise(z, 0.5, torch.Generator().manual_seed(1))
    ratio = (out - z).std(dim=1) / z.std(dim=1)
    assert ratio.mean().item() == pytest.approx(0.5, abs=0.02)


def test_mask_zeroes_a_quarter_of_each_row():
    z = _z()
    out = random_mask(z, 0.25, torch.Generator().manual_seed(2))
    zeroed = (out == 0) & (z != 0)
    assert (zeroed.sum(dim=1) == 100).all()
    assert torch.equal(out[~zeroed], z[~zeroed])
    # positions differ between rows (random, not a fixed pattern)
    assert not torch.equal(zeroed[0], zeroed[1])


def test_shuffle_is_a_permutation_of_a_quarter_of_each_row():
    z = _z()
    out = random_shuffle(z, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(out.sort(dim=1).values, z.sort(dim=1).values)
    moved = (out != z).sum(dim=1).float()
    assert (moved <= 100).all() and moved.mean() > 90  # ~k(1 - 1/k) entries move under a random permutation


def test_each_switch_off_is_identity_and_order_is_noise_mask_shuffle():
    z = _z(8, 40)
    off = RegularizeConfig(noise=False, mask=False, shuffle=False)
    assert torch.equal(regularize(z, off, torch.Generator().manual_seed(0)), z)
    only_mask = RegularizeConfig(noise=False, mask=True, shuffle=False)
    out = regularize(z, only_mask, torch.Generator().manual_seed(0))
    assert ((out == 0).sum(dim=1) == 10).all()
    full = regularize(z, RegularizeConfig(), torch.Generator().manual_seed(0))
    # masking precedes shuffling: the zeros survive (moved around), the noise made everything else differ
    assert ((full == 0).sum(dim=1) == 10).all() and ((full != z).float().mean() > 0.9)
    assert regularize(z[0], RegularizeConfig(), torch.Generator().manual_seed(0)).shape == (40,)
