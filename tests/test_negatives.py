"""Synthetic negatives and the outlier-exposure loss (digitlab.negatives): fast, no training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitlab import negatives as ng

FASHION = Path("/usr/share/datasets/fashion-mnist")
SYNTHETIC = ("blank", "noise", "letters", "symbols", "scribbles")


@pytest.mark.parametrize("split", ["training", "benchmark"])
@pytest.mark.parametrize("kind", SYNTHETIC)
def test_pictures_are_deterministic_uint8_pictures(kind, split):
    a = ng.pictures(kind, 6, seed=3, split=split)
    b = ng.pictures(kind, 6, seed=3, split=split)
    assert len(a) == 6 and all(p.dtype == np.uint8 and p.ndim == 2 for p in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    if kind != "blank":  # blanks are alike by design
        c = ng.pictures(kind, 6, seed=4, split=split)
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("kind", ["letters", "symbols", "scribbles", "noise"])
def test_training_and_benchmark_differ(kind):
    a = ng.pictures(kind, 4, seed=0, split="training")
    b = ng.pictures(kind, 4, seed=0, split="benchmark")
    assert not any(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_font_splits_are_disjoint_and_not_empty():
    train, bench = ng.font_files("training"), ng.font_files("benchmark")
    assert train and bench
    assert not {p.name for p in train} & {p.name for p in bench}
    with pytest.raises(ValueError, match="split"):
        ng.font_files("test")


def test_digit_like_letters_are_left_out():
    assert ng.LETTERS and not set(ng.LETTERS) & ng.DIGIT_LIKE
    for c in "OolISZBgq":
        assert c not in ng.LETTERS


def test_a_font_draws_only_the_characters_it_has():
    """No .notdef boxes: a character missing from the font is never drawn with it."""
    font = next(p for p in ng.font_files("benchmark") if p.name == "LiberationSans-Regular.ttf")
    assert ng._charset(str(font), "A\u2605") == "A"  # Liberation has no BLACK STAR


@pytest.mark.parametrize("kind", ["letters", "symbols"])
def test_every_glyph_has_ink(kind):
    for p in ng.pictures(kind, 40, seed=1, split="benchmark"):
        assert (p > 128).sum() >= 15


def test_to_mnist_fast_fits_and_centres():
    pic = np.zeros((64, 64), np.uint8)
    pic[10:50, 30:36] = 255  # a tall bar, 40 x 6 px
    out = ng.to_mnist_fast(pic)
    rows, cols = np.nonzero(out)
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert rows.max() - rows.min() + 1 == 20  # longer side fit to 20
    m = out.astype(float)
    cy, cx = (m.sum(1) @ np.arange(28)) / m.sum(), (m.sum(0) @ np.arange(28)) / m.sum()
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    assert not ng.to_mnist_fast(np.zeros((40, 40), np.uint8)).any()
    small = np.arange(784, dtype=np.uint8).reshape(28, 28)
    assert np.array_equal(ng.to_mnist_fast(small), small)


def test_several_digits_use_disjoint_mnist_splits(mnist_dir):
    pics = ng.pictures("several_digits", 3, seed=0, split="benchmark", mnist_dir=mnist_dir)
    assert all(p.shape[0] == 34 and p.shape[1] >= 56 for p in pics)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_is_found_even_when_digitlab_data_dir_names_mnist(monkeypatch, mnist_dir):
    """$DIGITLAB_DATA_DIR names the MNIST folder; load_mnist took MNIST's files there for Fashion-MNIST's
    and failed its checksum. The negatives look for Fashion-MNIST in its own places first."""
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(mnist_dir))
    ng.load_fashion.cache_clear()
    train = ng.pictures("fashion", 3, split="training")
    test = ng.pictures("fashion", 3, split="benchmark")
    assert all(p.shape == (28, 28) for p in train + test)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_training_negatives_and_batches(mnist_dir):
    out = ng.training_negatives(100, seed=0, mnist_dir=mnist_dir)
    assert out.shape == (100, 28, 28) and out.dtype == np.uint8
    assert np.array_equal(out, ng.training_negatives(100, seed=0, mnist_dir=mnist_dir))
    a = ng.negative_batch(7, 16, mnist_dir, pool_size=100)
    assert a.shape == (16, 28, 28) and np.array_equal(a, ng.negative_batch(7, 16, mnist_dir, pool_size=100))
    assert not np.array_equal(a, ng.negative_batch(8, 16, mnist_dir, pool_size=100))


def test_oe_loss_is_cross_entropy_to_uniform():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    z = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)) * 3
    uniform = torch.full_like(z, 0.1)
    assert ng.oe_loss(z).item() == pytest.approx(F.cross_entropy(z, uniform).item(), rel=1e-5)
    # Its minimum, log(10), is at equal logits; a confident row costs more.
    assert ng.oe_loss(torch.zeros(3, 10)).item() == pytest.approx(np.log(10), rel=1e-6)
    assert ng.oe_loss(torch.tensor([[9.0] + [0.0] * 9])).item() > np.log(10) + 1
    assert ng.oe_loss(torch.zeros(0, 10)).item() == 0


def test_oe_loss_gradient_flattens_the_softmax():
    torch = pytest.importorskip("torch")

    z = torch.tensor([[4.0, 0.0, 0.0]], requires_grad=True)
    ng.oe_loss(z).backward()
    assert z.grad[0, 0] > 0 and (z.grad[0, 1:] < 0).all()  # descent lowers the top logit, raises the rest
