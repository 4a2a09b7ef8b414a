"""Attribution maps (digitlab.explain) and their sanity checks (Adebayo et al., "Sanity Checks for
Saliency Maps", NeurIPS 2018): the map must depend on the trained weights, and the pixels it ranks first
must matter to the model more than random ones."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from digitlab import explain as ex
from digitlab.modelfile import DigitModel


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties share their mean rank)."""
    def ranks(v: np.ndarray) -> np.ndarray:
        v = v.ravel()
        r = np.empty(len(v))
        r[v.argsort(kind="mergesort")] = np.arange(len(v))
        _, inverse = np.unique(v, return_inverse=True)
        return (np.bincount(inverse, r) / np.bincount(inverse))[inverse]

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def randomized(model: DigitModel) -> DigitModel:
    """The same architecture with freshly initialised weights (Adebayo et al.'s full randomization)."""
    import torch

    from digitlab.model import build_torch

    torch.manual_seed(1234)
    weights = {k: v.detach().numpy().copy() for k, v in build_torch(model.arch).state_dict().items()}
    return DigitModel(model.arch, weights, model.metadata)


def attributions(model, images, method):
    """Maps for the predicted digit of each image; IG as one Captum batch (the same as one at a time)."""
    if method == "integrated-gradients":
        x = images.astype(np.float32) / 255
        return ex.integrated_gradients(model, x, model.predict(x).argmax(1))
    return np.stack([ex.explain(model, im, method)["attribution"] for im in images])


@pytest.mark.parametrize("method", ex.METHODS)
def test_map_changes_when_the_weights_are_randomized(trained_model, mnist, method):
    images = mnist.test_images[:30]
    trained = attributions(trained_model, images, method)
    random = attributions(randomized(trained_model), images, method)
    rho = np.array([spearman(a, b) for a, b in zip(trained, random, strict=True)])
    assert np.median(rho) < 0.5, f"rank correlations {np.round(rho, 2)}"


@pytest.mark.parametrize("method", ["occlusion", pytest.param("integrated-gradients", marks=pytest.mark.slow)])
def test_deleting_the_top_pixels_matters_more_than_random_ones(trained_model, mnist, method):
    """Delete (blacken) the 10% of ink pixels with the highest attribution, or a random 10%: the first
    must change the prediction at least 3x as often, over 200 test images."""
    images = mnist.test_images[:200]
    x = images.astype(np.float32) / 255
    before = trained_model.predict(x).argmax(1)
    maps = attributions(trained_model, images, method)
    rng = np.random.default_rng(0)
    top, rand = x.copy(), x.copy()
    for i in range(len(x)):
        ink = np.flatnonzero(x[i] > 0)
        k = max(1, round(0.1 * len(ink)))
        top[i].flat[ink[np.argsort(-maps[i].flat[ink], kind="stable")[:k]]] = 0
        rand[i].flat[rng.choice(ink, size=k, replace=False)] = 0
    changed_top = (trained_model.predict(top).argmax(1) != before).mean()
    changed_rand = (trained_model.predict(rand).argmax(1) != before).mean()
    assert changed_top >= 0.05 and changed_top >= 3 * changed_rand, (changed_top, changed_rand)


def test_explain_record_and_versus(trained_model, mnist):
    image = mnist.test_images[0]
    r = ex.explain(trained_model, image)
    assert r["method"] == "occlusion" and r["digit"] == int(mnist.test_labels[0]) == r["target"]
    assert r["attribution"].shape == (28, 28) and r["attribution"].dtype == np.float32
    assert r["versus"] is None
    v = ex.explain(trained_model, image, versus="runner-up")
    assert v["versus"] != v["digit"] and not np.allclose(v["attribution"], r["attribution"])
    other = ex.explain(trained_model, image, target=3)
    assert other["digit"] == r["digit"] and other["target"] == 3


def test_integrated_gradients_are_complete(trained_model, mnist):
    """Completeness (Sundararajan et al. 2017): the map sums to f(x) - f(black), within the 50-step error."""
    from digitlab.trust import logits

    x = mnist.test_images[:5].astype(np.float32) / 255
    z, z0 = logits(trained_model, x), logits(trained_model, np.zeros((1, 28, 28), np.float32))[0]
    t = z.argmax(1)
    total = ex.integrated_gradients(trained_model, x, t).sum(axis=(1, 2))
    np.testing.assert_allclose(total, z[np.arange(5), t] - z0[t], atol=0.05 * np.abs(z).max())
    one = ex.explain(trained_model, mnist.test_images[0], "integrated-gradients")["attribution"]
    np.testing.assert_allclose(one, ex.integrated_gradients(trained_model, x, t)[0], atol=1e-5)


def test_blank_input_has_nothing_to_explain(tiny_model_path):
    import digitlab

    model = digitlab.load(tiny_model_path)
    for method in ex.METHODS:
        r = ex.explain(model, np.zeros((28, 28), np.uint8), method)
        assert r["digit"] is None and r["attribution"] is None


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "saliency"}, "method"), ({"target": 10}, "target"), ({"target": True}, "target"),
    ({"versus": -1}, "versus"),
])
def test_bad_arguments(tiny_model_path, kwargs, message):
    import digitlab

    model = digitlab.load(tiny_model_path)
    bar = np.zeros((28, 28), np.uint8)
    bar[4:24, 12:16] = 255  # an MNIST-like "1"
    with pytest.raises(ValueError, match=message):
        ex.explain(model, bar, **kwargs)
    with pytest.raises(ValueError, match="28, 28"):
        ex.explain(model, np.zeros((27, 28), np.uint8))


def test_overlay_png(tmp_path, trained_model, mnist):
    from PIL import Image

    image = mnist.test_images[0]
    a = ex.explain(trained_model, image)["attribution"]
    path = ex.attribution_png(image, a, tmp_path / "map.png", scale=4)
    im = Image.open(path)
    assert im.size == (112, 112) and im.mode == "RGB"
    rgb = np.asarray(im).astype(int)
    strongest = np.unravel_index(np.argmax(a), a.shape)
    r, g, b = rgb[strongest[0] * 4, strongest[1] * 4]
    assert r > g + 60 and r > b + 60  # evidence for the digit is red
    assert not list(tmp_path.glob(".*.part"))


def test_occlusion_is_torch_free():
    code = ("import sys, numpy as np; from digitlab import explain, model, modelfile; "
            "cfg = model.ARCHITECTURES['small']; "
            "w = {k: np.random.default_rng(0).normal(0, .1, s).astype(np.float32) "
            "for k, (s, _) in model.param_shapes(cfg).items()}; "
            "m = modelfile.DigitModel(cfg, w, {}, backend='numpy'); "
            "img = np.zeros((28, 28), np.uint8); img[8:20, 12:16] = 255; "
            "r = explain.explain(m, img); assert r['attribution'].shape == (28, 28); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow  # CLI subprocesses
def test_cli_explain_never_replaces_what_the_user_has(tmp_path, tiny_model_path):
    """An existing map, a link or a device at --out is refused before any work (exit 2, one line); a
    link's target and the file are left as they were."""
    from PIL import Image, ImageDraw

    from tests.conftest import run_cli

    picture = tmp_path / "one.png"
    im = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(im).line([(100, 30), (100, 170)], fill=0, width=14)
    im.save(picture)
    out = tmp_path / "map.png"
    run_cli("explain", tiny_model_path, picture, "--out", out, check=True)
    before = out.read_bytes()
    again = run_cli("explain", tiny_model_path, picture, "--out", out)
    assert again.returncode == 2 and "map.png already exists" in again.stderr and "Traceback" not in again.stderr
    assert out.read_bytes() == before
    (tmp_path / "real.png").write_text("keep")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    linked = run_cli("explain", tiny_model_path, picture, "--out", tmp_path / "link.png", "--overwrite")
    assert linked.returncode == 2 and "is a link" in linked.stderr and "Traceback" not in linked.stderr
    assert (tmp_path / "real.png").read_text() == "keep" and (tmp_path / "link.png").is_symlink()
    assert run_cli("explain", tiny_model_path, picture, "--out", out, "--overwrite").returncode == 0


def test_integrated_gradients_passes_fit_the_budget(monkeypatch):
    """Captum's passes are cut to IG_BUDGET of activations (a model file may declare a net whose activations
    are megabytes an image: 50 steps at once were 2 GB and more), and the map is the same as in one pass."""
    import torch

    from digitlab.model import ArchConfig, build_torch, forward_bytes

    arch = ArchConfig(convs=[512], stem_kernel=1, pool_after=[], dense=4)  # 3.2 MB of activations an image
    torch.manual_seed(0)
    model = DigitModel(arch, {k: v.detach().numpy() for k, v in build_torch(arch).state_dict().items()}, {})
    sizes: list[int] = []
    net = model.to_torch()
    net.register_forward_hook(lambda module, inputs, output: sizes.append(inputs[0].shape[0]))
    ex._torch_twins[model] = net
    x = np.random.default_rng(0).random((28, 28), np.float32)
    attribution = ex.integrated_gradients(model, x, 3)
    assert sum(sizes) == ex.IG_STEPS and max(sizes) * 3 * forward_bytes(arch) <= ex.IG_BUDGET, sizes
    sizes.clear()
    monkeypatch.setattr(ex, "IG_BUDGET", 1 << 40)
    np.testing.assert_allclose(ex.integrated_gradients(model, x, 3), attribution, rtol=1e-4, atol=1e-6)
    assert sizes == [ex.IG_STEPS]
