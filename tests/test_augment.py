"""Training augmentation: affine warps and elastic distortion."""

from __future__ import annotations

import torch

from digitlab.augment import augment_batch


def test_elastic_distortion_is_smooth_and_seeded(mnist):
    x = torch.from_numpy(mnist.train_images[:64]).float().div(255).unsqueeze(1)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    affine, elastic = augment_batch(x, g()), augment_batch(x, g(), elastic=34)
    assert torch.equal(elastic, augment_batch(x, g(), elastic=34))  # a function of the seed
    assert elastic.shape == x.shape and 0 <= elastic.min() and elastic.max() <= 1
    change = (elastic - affine).abs().mean() / affine.mean()
    assert 0.1 < change < 1.5, change  # visibly different digits, not noise or blank images
    # A smooth warp moves ink (thinning some strokes, thickening others), it does not make or destroy
    # it: over the batch the total stays within 5%, and no digit loses most of its ink.
    assert abs(elastic.sum() / affine.sum() - 1) < 0.05
    assert (elastic.sum((1, 2, 3)) / affine.sum((1, 2, 3))).min() > 0.4


def test_affine_warp_is_small():
    """A centred square stays mostly where it was: +-10 deg, 0.9-1.1x, +-2 px move little ink."""
    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1
    y = augment_batch(x, torch.Generator().manual_seed(0))
    assert not torch.equal(x, y)
    overlap = (x * y).sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert overlap.min() > 0.4 and (y.sum((1, 2, 3)) / x.sum((1, 2, 3)) - 1).abs().max() < 0.25
